"""Progress bars for every chapter: tqdm's text bars, on standard output.

Why not tqdm's notebook widgets (``tqdm.auto``)? A widget bar lives in the running kernel: once a
notebook is saved and opened again, its output only says "Error displaying widget: model not found".
A text bar is ordinary output: it redraws itself in place while it runs, and with ``leave=False``
(the course's default) it erases itself when it ends, so a saved notebook keeps nothing of it. The
course's pipelines use it too (``pipe.set_progress_bar_config(disable=True)`` silences one).
Loading a model from the Hub draws the libraries' own bars (tqdm.auto: widgets in a notebook);
:func:`quiet_loading` silences those for the duration of a load (chapter 04's Hub cell uses it).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm.std import tqdm as _tqdm


def progress_bar(
    iterable=None,
    total: int | None = None,
    desc: str | None = None,
    leave: bool = False,
    disable: bool = False,
    **kwargs,
) -> _tqdm:
    """A tqdm text bar on standard output (``tqdm`` arguments pass through)."""
    kwargs.setdefault("ncols", 90)
    kwargs.setdefault("mininterval", 0.25)
    return _tqdm(
        iterable=iterable,
        total=total,
        desc=desc,
        leave=leave,
        disable=disable,
        file=sys.stdout,
        **kwargs,
    )


@contextmanager
def quiet_loading():
    """Within the block, no progress bars from diffusers, transformers or huggingface_hub (their
    "Loading pipeline components" and download bars, notebook widgets by default); on leaving it,
    each library's setting is what it was before. Used around ``from_pretrained`` in chapter 04."""
    import huggingface_hub.utils as hub
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    were_on = [lib.is_progress_bar_enabled() for lib in libraries]
    hub_was_off = hub.are_progress_bars_disabled()
    for lib in libraries:
        lib.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        for lib, on in zip(libraries, were_on):
            if on:
                lib.enable_progress_bar()
        if not hub_was_off:
            hub.enable_progress_bars()
