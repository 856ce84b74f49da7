"""The architecture diagrams of chapters 01-05 (course_lib.diagrams): each draws, with readable text."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_lib import diagrams  # noqa: E402


@pytest.mark.parametrize("name", sorted(diagrams.DIAGRAMS))
def test_diagram_draws_with_readable_text(name):
    fig = diagrams.DIAGRAMS[name]()
    try:
        texts = [t for ax in fig.axes for t in ax.texts] + [ax.title for ax in fig.axes]
        labels = [t for t in texts if t.get_text().strip()]
        assert len(labels) >= 8, "a diagram names its parts"
        assert min(t.get_fontsize() for t in labels) >= 9, "no tiny figure text"
        fig.canvas.draw()
        width = fig.get_size_inches()[0] * fig.dpi
        renderer = fig.canvas.get_renderer()
        for t in labels:                                  # nothing runs off the figure's sides
            box = t.get_window_extent(renderer)
            assert box.x0 >= -1 and box.x1 <= width + 1, (name, t.get_text())
        boxes = [p.get_window_extent(renderer) for ax in fig.axes for p in ax.patches
                 if type(p).__name__ == "FancyBboxPatch"]
        for t in fig.axes[0].texts:                       # a box's label stays inside its box
            b = t.get_window_extent(renderer)
            cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
            for p in boxes:
                if p.x0 <= cx <= p.x1 and p.y0 <= cy <= p.y1:
                    assert p.x0 - 1 <= b.x0 and b.x1 <= p.x1 + 1 and p.y0 - 1 <= b.y0 and \
                        b.y1 <= p.y1 + 1, (name, t.get_text())
    finally:
        plt.close(fig)


def test_diagram_into_given_axes_and_bad_kind():
    fig, ax = plt.subplots()
    assert diagrams.gan_loop(ax=ax) is fig
    with pytest.raises(ValueError, match="kind"):
        diagrams._box(ax, 50, 50, 10, 10, "x", kind="cloud")
    plt.close(fig)
