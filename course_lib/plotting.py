"""Plotting helpers every chapter uses: image grids with captions, loss curves, live updates.
Introduced in chapter 00."""

from __future__ import annotations

import math
import warnings

from matplotlib import ticker
import matplotlib.pyplot as plt
import numpy as np
import torch


def to_numpy_image(img) -> np.ndarray:
    """[C, H, W] or [H, W] tensor/array in [0, 1] -> [H, W, C] (or [H, W]) float array in [0, 1]."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return np.clip(img, 0, 1)


def grid_shape(n: int, ncols: int) -> tuple[int, int]:
    """``(rows, columns)`` for ``n`` pictures in at most ``ncols`` columns with no empty column and
    rows as full as they can be: 9 pictures in at most 8 columns are 2 rows of 5, not 8 + 1."""
    if n < 1 or ncols < 1:
        raise ValueError(f"need at least one picture and one column, got n={n}, ncols={ncols}")
    rows = math.ceil(n / ncols)
    return rows, math.ceil(n / rows)


TITLE_FONTSIZE = 11
TITLE_LINE_INCHES = 0.22  # one line of a grid's title at TITLE_FONTSIZE, with its spacing


def show_images(
    images,
    captions=None,
    ncols: int = 8,
    title: str | None = None,
    size: float = 1.3,
    fontsize: int = 9,
    wrap: int | None = None,
    fig=None,
):
    """Show a batch of pictures ([n, C, H, W] in [0, 1]) as a grid, each with its caption.

    At most ``ncols`` columns, balanced by :func:`grid_shape`. Captions wrap at ``wrap`` characters
    (default: what fits ``size`` inches at ``fontsize``). ``size`` is the inches each picture
    gets; a ``title`` gets a band of its own above the grid, so it never covers a picture. Returns
    the matplotlib figure (pass ``fig`` to redraw into an existing one, e.g. a live grid).
    """
    images = list(images)
    n = len(images)
    if captions is not None and len(captions) < n:
        raise ValueError(f"got {len(captions)} captions for {n} pictures")
    nrows, ncols = grid_shape(n, ncols) if n else (1, 1)
    wrap = wrap if wrap is not None else max(8, int(size * 130 / fontsize))
    extra = 0.35 * (2 if captions is not None else 0)
    # the title gets its own band above the grid (never drawn over the pictures)
    title_in = TITLE_LINE_INCHES * (str(title).count("\n") + 1) + 0.1 if title else 0.0
    height = nrows * (size + extra) + title_in
    if fig is None:
        fig = plt.figure(figsize=(ncols * size, height))
    else:
        fig.clear()
        fig.set_size_inches(ncols * size, height)
    for i, img in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        arr = to_numpy_image(img)
        ax.imshow(
            arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if captions is not None:
            text = str(captions[i])
            lines, line = [], ""
            for w in text.split():
                if len(line) + len(w) + 1 > wrap and line:
                    lines.append(line)
                    line = w
                else:
                    line = f"{line} {w}".strip()
            lines.append(line)
            ax.set_title("\n".join(lines), fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=TITLE_FONTSIZE, y=1.0, va="top")
    with warnings.catch_warnings():  # a grid too small for its captions: tight_layout gives up
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout(pad=0.3)
    return fig


def smooth(values, window: int = 25) -> np.ndarray:
    """Moving average with a window that shrinks at the start (no lag, no padding artefacts)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_losses(
    history, keys=None, window: int = 25, ax=None, title: str | None = None, logy: bool = False
):
    """Plot logged curves of a :class:`~course_lib.training.History` (or a dict name -> list),
    raw values faint and smoothed values solid. Returns the axes."""
    logs = history.logs if hasattr(history, "logs") else dict(history)
    keys = keys or list(logs)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    for k in keys:
        vals = logs[k]
        (line,) = ax.plot(vals, alpha=0.25)
        ax.plot(smooth(vals, window), color=line.get_color(), label=k)
    ax.set_xlabel("step")
    if logy:
        ax.set_yscale("log")
        # plain numbers ("0.05", "1.2") on the log axis, not 1.2x10^0 on a short range of losses
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(2, 0.4)))
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


class LiveGrid:
    """A sample grid that redraws in place while a model trains (in Jupyter; prints nothing
    headless).

    ``live = LiveGrid(); live.update(images, captions, title=f"step {s}")``. Each picture gets at
    least ``MIN_SIZE`` inches (a 28-pixel digit then shows about 50 pixels tall at 100 dpi, under
    the title's own band), whatever ``size`` asks. Call ``update`` once before training starts
    (step 0): the grid is then drawn above the training's progress bar, which can erase itself.
    """

    MIN_SIZE = 0.55

    def __init__(self, ncols: int = 8, size: float = 1.0):
        self.ncols, self.size = ncols, max(float(size), self.MIN_SIZE)
        self.fig = None
        self.handle = None

    def update(self, images, captions=None, title: str | None = None):
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover
            return
        self.fig = show_images(
            images, captions, ncols=self.ncols, size=self.size, title=title, fig=self.fig
        )
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        elif self.handle is not None:
            self.handle.update(self.fig)
        plt.close(self.fig)
