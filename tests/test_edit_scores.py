"""Chapter 07's editing rows: chapter 11's editors scored on one judge and one request set."""
import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

from course_lib import edit_scores, pretrained, scoreboard  # noqa: E402


def test_every_editor_gets_its_rows_with_intervals_around_the_share():
    board = edit_scores.build(per_kind=2, n_concept=2, n_old=2, latency_batch=2, repeats=1,
                              device="cpu", verbose=False)
    assert board["notes"] == []
    rows = board["rows"]
    assert [(r["model"].split(",")[0], r["task"]) for r in rows] == [
        ("shapes-t2i + SDEdit", "recolour"), ("shapes-edit", "every edit"),
        ("shapes-edit", "recolour"), ("shapes-t2i-lora-ring", "a new shape (ring)")]
    # two requests of each of four kinds of edit; of them, two recolour; two "leave it" controls
    assert [r["n"] for r in rows] == [2, 8, 2, 2]
    for r in rows:
        for key in ("right", "kept"):
            assert 0 <= r[f"{key}_low"] <= r[key] <= r[f"{key}_high"] <= 1, (r["model"], key)
        assert r["ms_per_edit"] > 0 and r["size_mb"] > 0
    # the adapter's file is its own, far smaller than the model it changes
    assert rows[3]["size_mb"] < rows[0]["size_mb"] / 20
    df = edit_scores.frame(board)
    assert list(df.columns) == list(edit_scores.COLUMNS) and len(df) == 4
    fig = edit_scores.plot(board)
    assert len(fig.axes) == 2 and all(len(ax.patches) == 4 for ax in fig.axes)
    plt.close(fig)


def test_a_model_that_is_not_shipped_is_a_note_not_an_error(monkeypatch):
    real = pretrained.read_manifest

    def without_edit():
        m = real()
        return {**m, "models": {k: v for k, v in m["models"].items() if k != "shapes-edit"}}

    monkeypatch.setattr(pretrained, "read_manifest", without_edit)
    board = edit_scores.build(per_kind=1, n_concept=1, n_old=1, latency_batch=1, repeats=1,
                              device="cpu", verbose=False)
    assert [n.split(":")[0] for n in board["notes"]] == ["shapes-edit"]
    assert "shapes-edit" not in {r["model"] for r in board["rows"]}
    assert not math.isnan(board["rows"][0]["right"])


def test_the_main_scoreboard_sends_the_editor_to_the_editing_rows():
    board = scoreboard.build(["shapes-edit"], n_shapes=2, latency_batch=1, repeats=1,
                             verbose=False, device="cpu")
    assert board.rows == []
    assert board.notes == ["shapes-edit: an editor (it starts from a picture), scored in the "
                           "editing rows (course_lib.edit_scores)"]
    assert scoreboard.is_editor(pretrained.load("shapes-edit", "cpu"))
    assert not scoreboard.is_editor(pretrained.load("shapes-t2i", "cpu"))
