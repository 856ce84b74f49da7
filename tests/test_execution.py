"""The helpers that store executed notebooks (course_lib.execution): code hashes, cleaned outputs,
the header's time line."""
import nbformat

from course_lib import execution


def _nb():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Title\n\n**Time**: full run about 3 minutes."),
                nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("print(x)")]
    return nb


def test_code_hash_follows_code_not_prose_or_outputs():
    a, b = _nb(), _nb()
    assert execution.code_hash(a) == execution.code_hash(b)
    b.cells[0].source += " More prose."
    b.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    assert execution.code_hash(a) == execution.code_hash(b)
    b.cells[1].source = "x = 2"
    assert execution.code_hash(a) != execution.code_hash(b)


def test_progress_bars_and_widgets_leave_nothing_behind():
    assert execution.clean_stream("\r 10%|#   | 1/10\r 100%|####| 10/10\r          \rdone\n") == "done\n"
    assert execution.clean_stream("a\nb\n") == "a\nb\n"
    assert execution.clean_stream("step 1\rstep 2\n") == "step 2\n"
    nb = _nb()
    nb.metadata["widgets"] = {"state": {}}
    nb.cells[2].outputs = [
        nbformat.v4.new_output("display_data", data={execution.WIDGET_MIME: {"model_id": "x"},
                                                     "text/plain": "interactive(...)"}),
        nbformat.v4.new_output("stream", name="stdout", text="\r 50%|##  | 1/2\r        \r"),
        nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    counts = execution.clean_outputs(nb)
    assert counts["widget_outputs_removed"] == 1 and "widgets" not in nb.metadata
    assert [o["text"] for o in nb.cells[2].outputs] == ["kept\n"]


def test_time_line_states_the_measured_time_rounded_up():
    rec = {"wall_seconds": 601.0, "cpu_seconds": 900.0, "threads": 2, "machine": "2 CPU cores, x86_64",
           "chapter": "05"}
    line = execution.time_line(rec, quick_minutes=2)
    assert line.startswith("**Time**: full run about 11 minutes on 2 CPU cores")
    assert "about 2 minutes" in line
    # the header speaks to the learner: how the chapter was stored is in docs/chapters.md
    assert "make execute" not in line and "x86_64" not in line and "CPU-minutes" not in line
    assert execution.TIME_LINE.search(_nb().cells[0].source)


def test_time_line_keeps_the_reading_time_the_header_stated():
    head = "**Time**: reading about 40 minutes. Running: about FULL_MINUTES minutes.\n\nMore."
    assert execution.reading_minutes(head) == 40
    assert execution.reading_minutes("**Time**: full run about 3 minutes.") is None
    rec = {"wall_seconds": 125.0, "cpu_seconds": 130.0, "threads": 2, "machine": "2 CPU cores", "chapter": "01"}
    new = execution.TIME_LINE.sub(execution.time_line(rec, 1, execution.reading_minutes(head)), head, count=1)
    assert new.startswith("**Time**: reading about 40 minutes; running: full run about 3 minutes")
    assert "FULL_MINUTES" not in new and new.endswith("\n\nMore.")


def test_bold_words_inside_the_time_statement_are_replaced_with_it():
    head = "**Time**: measured **20 minutes** wall;\nquick **2**.\n**Prerequisites**: chapter 04."
    rec = {"wall_seconds": 61.0, "cpu_seconds": 70.0, "threads": 1, "machine": "2 CPU cores", "chapter": "08"}
    new = execution.TIME_LINE.sub(execution.time_line(rec, 1), head, count=1)
    assert "20 minutes" not in new and new.endswith(".\n**Prerequisites**: chapter 04.")


def test_time_statement_is_replaced_whole():
    head = ("Intro.\n\n**Time**: full run about 18 minutes (measured on a laptop\nCPU); quick run about 2 "
            "minutes. **Prerequisites**: chapters 03 and 04.\n\nMore.")
    rec = {"wall_seconds": 61.0, "cpu_seconds": 70.0, "threads": 1, "machine": "2 CPU cores", "chapter": "05"}
    new = execution.TIME_LINE.sub(execution.time_line(rec, 1), head, count=1)
    assert "laptop" not in new and "18 minutes" not in new
    assert "full run about 2 minutes on 1 CPU core;" in new
    short = dict(rec, wall_seconds=40.0)
    assert "full run about 1 minute on" in execution.time_line(short, 1)
    assert new.endswith("minute. **Prerequisites**: chapters 03 and 04.\n\nMore.") or \
        "**Prerequisites**: chapters 03 and 04." in new


def test_quiet_loading_silences_the_hub_libraries_and_restores_them():
    import huggingface_hub.utils as hub
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from course_lib.progress import quiet_loading

    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
    assert not hub.are_progress_bars_disabled()
    with quiet_loading():
        assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled()
        assert hub.are_progress_bars_disabled()
        assert dlog.tqdm(range(3)).disable
    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
    assert not hub.are_progress_bars_disabled()
    dlog.disable_progress_bar()   # a setting the reader chose stays as it was
    try:
        with quiet_loading():
            pass
        assert not dlog.is_progress_bar_enabled()
    finally:
        dlog.enable_progress_bar()


def test_a_widget_is_stored_as_a_still_of_what_it_showed():
    """interact() draws into an Output widget inside a VBox; the stored notebook keeps that picture."""
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}
    state = {"box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
             "slider": {"model_name": "IntSliderModel", "state": {}},
             "out": {"model_name": "OutputModel", "state": {"outputs": [png]}}}
    nb = nbformat.v4.new_notebook()
    view = nbformat.v4.new_output("display_data", data={execution.WIDGET_MIME: {"model_id": "box"},
                                                        "text/plain": "interactive(...)"})
    lost = nbformat.v4.new_output("display_data", data={execution.WIDGET_MIME: {"model_id": "gone"}})
    nb.cells = [nbformat.v4.new_code_cell("interact(...)", outputs=[view, lost])]
    nb.metadata["widgets"] = {execution.WIDGET_STATE_MIME: {"state": state}}
    counts = execution.clean_outputs(nb)
    outs = nb.cells[0].outputs
    assert counts["widget_outputs_removed"] == 2 and counts["widget_stills"] == 1
    assert [o.output_type for o in outs] == ["stream", "display_data"] and "still" in outs[0].text
    assert outs[1].data["image/png"] == png["data"]["image/png"]
    assert "widgets" not in nb.metadata
    nbformat.validate(nb)


def test_a_progress_bar_sent_in_pieces_is_stored_as_its_last_line():
    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\rtrain: {k}%|") for k in (0, 50, 100)]
    done = nbformat.v4.new_output("stream", name="stderr", text="\n")
    printed = nbformat.v4.new_output("stream", name="stdout", text="trained\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("train()", outputs=[*bar, done, printed])]
    execution.clean_outputs(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [("stderr", "train: 100%|\n"),
                                                               ("stdout", "trained\n")]
