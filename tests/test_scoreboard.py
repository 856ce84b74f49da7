"""Chapter 07's scoreboard figure and the label placement it uses (no model is loaded)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import scoreboard  # noqa: E402
from course_lib.plotting import place_labels  # noqa: E402


def _board(n_models=14):
    """Rows like build()'s: a real row per domain, most Shapes models piled on one point."""
    rows = [{"model": "real digits", "domain": "digits", "fid": 20.0, "kid": 1.0,
             "precision": 0.9, "recall": 0.9},
            {"model": "real Shapes", "domain": "shapes", "fid": 200.0, "paired_kid_x1000": 5.0,
             "precision": 1.0, "recall": 1.0}]
    for i in range(n_models):
        shapes = i > 2
        rows.append({"model": f"model {i}", "domain": "shapes" if shapes else "digits",
                     "fid": 100.0 + 50 * i, "precision": 1.0 if shapes else 0.8,
                     "recall": 1.0 if shapes else 0.8, "ms_per_picture": 10.0 + (i % 3),
                     "size_mb": 4.0, "_features": torch.zeros(3, 2)})
    return scoreboard.Scoreboard(rows, [])


def _label_boxes(ax, renderer):
    return [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]


def test_frame_keeps_two_kid_columns_and_hides_private_keys():
    df = _board().frame()
    assert "kid" in df.columns and "paired_kid_x1000" in df.columns
    assert "_features" not in df.columns
    assert list(df.columns) == [c for c in scoreboard.COLUMNS if c in df.columns]


def test_scoreboard_plot_labels_do_not_overlap_and_legends_sit_outside():
    fig = scoreboard.plot(_board())
    renderer = fig.canvas.get_renderer()
    panels = fig.axes[:3]
    for ax in panels[1:]:
        boxes = _label_boxes(ax, renderer)
        assert len(boxes) == 14, "every model gets its number"
        frame = ax.get_window_extent(renderer)
        for i, a in enumerate(boxes):
            assert frame.x0 - 1 <= a.x0 and a.x1 <= frame.x1 + 1
            assert frame.y0 - 1 <= a.y0 and a.y1 <= frame.y1 + 1
            assert not any(a.overlaps(b) for b in boxes[i + 1:]), "two labels overlap"
    for ax in panels:
        legend = ax.get_legend()
        if legend is not None:
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    sizes = [t.get_fontsize() for ax in panels for t in ax.texts + ax.get_yticklabels()]
    sizes += [t.get_fontsize() for ax in panels if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert min(sizes) >= 9, "every text at 9 pt or more"
    plt.close(fig)


def test_place_labels_keeps_labels_apart_inside_the_axes():
    fig, ax = plt.subplots(figsize=(4, 3))
    xs, ys = np.full(12, 0.5), np.full(12, 0.5)                 # twelve points on one spot
    ax.scatter(xs, ys)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    arts = place_labels(ax, xs, ys, [f"L{i}" for i in range(12)])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in arts]
    assert len(boxes) == 12
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:])
    plt.close(fig)


def test_place_labels_refuses_bad_input():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="same length"):
        place_labels(ax, [0.5], [0.5, 0.6], ["a"])
    with pytest.raises(ValueError, match="at least 9"):
        place_labels(ax, [0.5], [0.5], ["a"], fontsize=7)
    ax.set_yscale("log")
    with pytest.raises(ValueError, match="finite"):
        place_labels(ax, [0.5], [0.0], ["a"])
    assert place_labels(ax, [], [], []) == []
    plt.close(fig)


@pytest.mark.skipif(not {"shapes-gpt", "shapes-judge"} <= set(scoreboard.pretrained.read_manifest()["models"]),
                    reason="shapes-gpt or the judge not shipped")
def test_a_steps_setting_skips_a_pipeline_without_steps():
    """The token model has no denoising steps: it is scored with its own call, not dropped."""
    board = scoreboard.build(["shapes-gpt"], n_shapes=4, text_kwargs={"num_inference_steps": 2},
                             latency_batch=2, repeats=1, verbose=False, device="cpu")
    assert [r["model"] for r in board.rows] == ["real Shapes (same captions, fresh pictures)",
                                                "shapes-gpt"], board.notes
    assert set(board.references) == {"shapes"} and board.rows[1]["_features"].shape[0] == 4
