"""Progress bars for every chapter: tqdm's text bars, on standard output.

Why not tqdm's notebook widgets (``tqdm.auto``)? A widget bar lives in the running kernel: once a
notebook is saved and opened again, its output only says "Error displaying widget: model not found".
A text bar is ordinary output: it redraws itself in place while it runs, and with ``leave=False``
(the course's default) it erases itself when it ends, so a saved notebook keeps nothing of it. The
course's pipelines use it too (``pipe.set_progress_bar_config(disable=True)`` silences one).
"""
from __future__ import annotations

import sys

from tqdm.std import tqdm as _tqdm


def progress_bar(iterable=None, total: int | None = None, desc: str | None = None, leave: bool = False,
                 disable: bool = False, **kwargs) -> _tqdm:
    """A tqdm text bar on standard output (``tqdm`` arguments pass through)."""
    kwargs.setdefault("ncols", 90)
    kwargs.setdefault("mininterval", 0.25)
    return _tqdm(iterable=iterable, total=total, desc=desc, leave=leave, disable=disable, file=sys.stdout,
                 **kwargs)
