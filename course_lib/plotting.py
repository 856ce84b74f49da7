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


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters at spaces."""
    lines, line = [], ""
    for w in text.split():
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


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
    wrapped = [_wrap(str(c), wrap) for c in captions[:n]] if captions is not None else []
    # each picture's band for its caption: as many text lines as the longest caption needs
    lines = max((w.count("\n") + 1 for w in wrapped), default=0)
    extra = 0.15 + lines * fontsize * 1.6 / 72 if lines else 0.0
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
            ax.set_title(wrapped[i], fontsize=fontsize)
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
    history, keys=None, window: int = 25, ax=None, title: str | None = None, logy: bool = False,
    ylabel: str | None = None,
):
    """Plot logged curves of a :class:`~course_lib.training.History` (or a dict name -> list),
    raw values faint and smoothed values solid. Returns the axes.

    The smoothed line is :func:`smooth`'s mean over ``window`` steps (at most half the curve),
    drawn at the centre of its window, so it does not lag behind the raw one. The legend says
    which line is which. The y axis is labelled ``ylabel`` (by default the curve's name, or
    "value" for several); with ``logy`` only whole decades and, on a short range, a few steps
    between them carry numbers."""
    from matplotlib.lines import Line2D

    logs = history.logs if hasattr(history, "logs") else dict(history)
    keys = keys or list(logs)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    handles, spans, lows, highs = [], set(), [], []
    for k in keys:
        vals = np.asarray(logs[k], dtype=np.float64)
        if np.isfinite(vals).any():
            lows.append(np.nanmin(vals[vals > 0]) if (vals > 0).any() else np.nan)
            highs.append(np.nanmax(vals))
        w = int(max(1, min(window, len(vals) // 2)))  # a short curve keeps a visible shape
        spans.add(w)
        steps = np.arange(len(vals))
        centre = (np.maximum(0, steps - w + 1) + steps) / 2  # middle of each mean's window
        (raw,) = ax.plot(steps, vals, alpha=0.25)
        (smoothed,) = ax.plot(centre, smooth(vals, w), color=raw.get_color())
        if len(keys) == 1:
            raw.set_label(f"{k}, raw (each step)")
            smoothed.set_label(f"{k}, smoothed over {w} steps")
            handles += [raw, smoothed]
        else:
            smoothed.set_label(k)
            handles.append(smoothed)
    if len(keys) > 1:  # one entry per curve, then what the two line styles mean
        w = f"{spans.pop()} steps" if len(spans) == 1 else f"up to {window} steps"
        handles += [Line2D([], [], color="gray", alpha=0.35, label="raw (each step)"),
                    Line2D([], [], color="gray", label=f"smoothed over {w}")]
    ax.set_xlabel("step")
    if logy:
        ax.set_yscale("log")
        # plain numbers ("0.05", "1.2") on the log axis, not 1.2x10^0 on a short range of losses
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        decades = np.log10(np.nanmax(highs) / np.nanmin(lows)) if lows and highs else 0.0
        if decades > 3.0:  # many decades: the decades alone, minor ticks unlabelled
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        else:  # a few decades: label 2x and 5x between them too
            ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    name = keys[0] if len(keys) == 1 else "value"
    ax.set_ylabel((ylabel or name) + (" (log scale)" if logy else ""))
    ax.legend(handles=handles, fontsize=9)
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


def place_labels(ax, xs, ys, labels, fontsize: int = 9, marker_points: float = 6.0, **text_kw):
    """Write ``labels[i]`` beside the point ``(xs[i], ys[i])`` of ``ax`` so that no two labels
    overlap, no label covers a point, and every label stays inside the axes (chapter 07's
    scoreboard). Each label tries places around its point, ring after ring further out, and takes
    the first free one; a label that had to move away gets a thin line to its point. Call it once
    the axes' limits, scales and the figure's layout are final. Returns the text artists.
    """
    xs, ys, labels = list(xs), list(ys), [str(t) for t in labels]
    if not len(xs) == len(ys) == len(labels):
        raise ValueError(
            f"xs, ys and labels need the same length, got {len(xs)}, {len(ys)}, {len(labels)}"
        )
    if fontsize < 9:
        raise ValueError(f"fontsize must be at least 9 (readable), got {fontsize}")
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0  # pixels per point
    xv, yv = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    bad = ~np.isfinite(xv) | ~np.isfinite(yv)
    bad |= (xv <= 0) if ax.get_xscale() == "log" else False
    bad |= (yv <= 0) if ax.get_yscale() == "log" else False
    if bad.any():
        raise ValueError("every point must be finite on the axes (on a log axis: above 0)")
    pts = ax.transData.transform(np.column_stack([xv, yv])) if xs else []  # [n, 2] pixels
    frame = ax.get_window_extent(renderer)
    r_mark = marker_points * px
    taken = [(x - r_mark, y - r_mark, x + r_mark, y + r_mark) for x, y in pts]  # the markers

    def free(box):
        inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1]
        inside = inside and box[3] <= frame.y1
        return inside and not any(
            box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken
        )

    angles = np.deg2rad([45, 135, -45, -135, 0, 180, 90, -90, 22, 158, -22, -158, 68, 112, -68])
    rings = [r_mark + 2 * px + k * 0.9 * fontsize * px for k in range(12)]
    artists = []
    for (x, y), text in zip(pts, labels):
        probe = ax.text(0, 0, text, fontsize=fontsize, transform=None, **text_kw)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 3 * px, ext.height + px  # a small gap between neighbours
        box, ring = None, 0
        for ring, r in enumerate(rings):
            for a in angles:  # the box's nearest corner or edge sits r away from the point
                dx, dy = r * math.cos(a), r * math.sin(a)
                x0 = x + dx if dx > 1e-6 else (x + dx - w if dx < -1e-6 else x - w / 2)
                y0 = y + dy if dy > 1e-6 else (y + dy - h if dy < -1e-6 else y - h / 2)
                if free((x0, y0, x0 + w, y0 + h)):
                    box = (x0, y0, x0 + w, y0 + h)
                    break
            if box is not None:
                break
        if box is None:  # nowhere free: the first place, overlapping
            box, ring = (x + rings[0], y + rings[0], x + rings[0] + w, y + rings[0] + h), 0
        taken.append(box)
        to_data = ax.transData.inverted()
        x_text, y_text = to_data.transform((box[0], box[1]))
        artists.append(
            ax.text(x_text, y_text, text, ha="left", va="bottom", fontsize=fontsize,
                    clip_on=False, **text_kw)
        )
        if ring > 0:  # moved away from its point: a thin line from the label to it
            nearest = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
            ax.annotate("", to_data.transform((x, y)), xytext=to_data.transform(nearest),
                        arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4"},
                        annotation_clip=False)
    return artists
