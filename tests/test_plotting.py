"""The figure helpers every chapter uses (course_lib.plotting)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.plotting import (  # noqa: E402
    LiveGrid,
    grid_shape,
    plot_losses,
    show_images,
    smooth,
)


@pytest.mark.parametrize("n,ncols,want", [(9, 8, (2, 5)), (16, 8, (2, 8)), (3, 8, (1, 3)),
                                          (100, 10, (10, 10)), (17, 16, (2, 9)), (1, 4, (1, 1))])
def test_grid_has_no_empty_column(n, ncols, want):
    rows, cols = grid_shape(n, ncols)
    assert (rows, cols) == want
    assert cols <= ncols and rows * cols >= n and (rows - 1) * cols < n and rows * (cols - 1) < n


def test_grid_shape_rejects_nothing_to_show():
    with pytest.raises(ValueError):
        grid_shape(0, 8)


def test_show_images_layout_captions_and_readable_text():
    fig = show_images(torch.rand(9, 3, 32, 32), [f"a small red circle number {i}" for i in range(9)],
                      ncols=8, title="nine")
    try:
        axes = fig.axes
        assert len(axes) == 9
        cols = {round(ax.get_position().x0, 3) for ax in axes}
        assert len(cols) == 5                                             # 5 + 4, not 8 + 1
        assert min(ax.title.get_fontsize() for ax in axes) >= 9
        assert all(len(line) <= 20 for ax in axes for line in ax.get_title().splitlines())
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="captions"):
        show_images(torch.rand(3, 1, 28, 28), ["one", "two"])


def test_smooth_and_plot_losses():
    v = [1.0, 3.0, 5.0, 7.0]
    assert smooth(v, 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    ax = plot_losses({"loss": v}, window=2, title="t")
    assert ax.get_title() == "t" and len(ax.lines) == 2
    plt.close(ax.figure)


def test_loss_plot_on_a_log_axis_labels_plain_numbers():
    losses = (1.05 + 0.15 * torch.exp(-torch.arange(200) / 50)).tolist()      # less than one decade
    ax = plot_losses({"loss": losses}, logy=True)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    assert any(label for label in labels) and not any("times" in s or "^" in s for s in labels), labels
    plt.close(ax.figure)


def _picture_pixels(fig, dpi=100):
    """(smallest side of a picture, top of the highest picture, bottom of the title) in pixels."""
    if not hasattr(fig.canvas, "get_renderer"):  # a closed figure (LiveGrid closes its own)
        FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(r) for ax in fig.axes]
    title = fig._suptitle.get_window_extent(r).y0 if fig._suptitle is not None else None
    return min(min(b.width, b.height) for b in boxes), max(b.y1 for b in boxes), title


@pytest.mark.parametrize("ncols,size", [(16, 0.7), (16, 0.6), (10, 0.9), (8, 1.0)])
def test_a_titled_one_row_grid_keeps_its_pictures_large_and_under_the_title(ncols, size):
    fig = show_images(torch.rand(ncols, 1, 28, 28), ncols=ncols, size=size,
                      title="a title\nof two lines" if ncols == 10 else "DCGAN, step 250")
    try:
        side, top, title = _picture_pixels(fig)
        assert side >= 0.8 * size * 100           # the title takes no room from the pictures
        assert title is not None and title >= top  # and is drawn above them, not over them
    finally:
        plt.close(fig)


def test_live_grid_thumbnails_stay_legible():
    for size in (0.2, 0.7):
        live = LiveGrid(ncols=16, size=size)
        live.update(torch.rand(16, 1, 28, 28), title="DCGAN, step 250")
        live.update(torch.rand(16, 1, 28, 28), title="DCGAN, step 500")   # redrawn in place
        side, top, title = _picture_pixels(live.fig)
        assert side >= 45, f"a thumbnail {side:.0f} px tall at 100 dpi is a dot, not a digit"
        assert title >= top
        assert len(live.fig.axes) == 16


def test_loss_plot_smooths_without_lag_and_says_which_line_is_which():
    step = [0.0] * 50 + [1.0] * 50                     # the loss jumps between steps 49 and 50
    ax = plot_losses({"loss": step}, window=10)
    raw, smoothed = ax.lines
    x, y = smoothed.get_data()
    half = x[int(np.argmax(y >= 0.5))]                 # where the smoothed line is half way up
    assert abs(half - 49.5) <= 1, f"the smoothed line reaches the jump at step {half}, not 49.5"
    assert raw.get_xdata()[-1] == 99 and x[-1] <= 99
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["loss, raw (each step)", "loss, smoothed over 10 steps"]
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 9
    plt.close(ax.figure)
    ax = plot_losses({"d_loss": step, "g_loss": step[::-1]}, window=10)
    assert len(ax.lines) == 4                          # the style entries draw nothing
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["d_loss", "g_loss", "raw (each step)", "smoothed over 10 steps"]
    plt.close(ax.figure)
    ax = plot_losses({"loss": [3.0, 2.0, 1.0, 1.0]})    # a curve shorter than the window
    assert ax.get_legend().get_texts()[1].get_text() == "loss, smoothed over 2 steps"
    plt.close(ax.figure)
