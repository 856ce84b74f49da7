"""Checks for what a user passes to the course's pipelines and samplers (chapters 05, 06, 08, 09).

A wrong argument is answered at the door with a ``TypeError`` (wrong kind of thing) or a
``ValueError`` (right kind, wrong value) whose message names what is allowed, instead of a silent
fall-back or a crash deep inside a convolution. Every public pipeline calls these first.
"""

from __future__ import annotations

import math
import numbers
import re

import torch

_SPACES = re.compile(r"\s+")


def _kind(x) -> str:
    return type(x).__name__


def normalize_prompt(text: str) -> str:
    """Lower case, surrounding whitespace removed, runs of whitespace as one space, and one final
    full stop dropped ("A Red circle. " -> "a red circle"). Other punctuation is kept: a word
    tokenizer refuses it by naming its words, a pretrained language model reads it."""
    text = _SPACES.sub(" ", text.strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def prompts(prompt, name: str = "prompt", allow_empty_text: bool = True) -> list[str]:
    """``prompt`` as a list of normalised texts. Allowed: one string, or a non-empty list or tuple
    of strings. ``allow_empty_text=False`` also refuses texts that are empty after normalising."""
    if isinstance(prompt, str):
        items = [prompt]
    elif isinstance(prompt, (list, tuple)):
        if len(prompt) == 0:
            raise ValueError(
                f"{name} must be a string or a non-empty list of strings, got an empty "
                f"{_kind(prompt)}"
            )
        bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
        if bad:
            i = bad[0]
            raise TypeError(
                f"{name} must be a string or a list of strings, but item {i} is "
                f"{_kind(prompt[i])} ({prompt[i]!r})"
            )
        items = list(prompt)
    else:
        raise TypeError(
            f"{name} must be a string or a non-empty list of strings, got {_kind(prompt)}"
        )
    out = [normalize_prompt(p) for p in items]
    if not allow_empty_text and any(p == "" for p in out):
        raise ValueError(f"{name} must not contain empty texts (item {out.index('')})")
    return out


def integer(n, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``n`` as an int within ``[minimum, maximum]`` (bools and non-integral floats refused)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        elif isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point():
            n = int(n)
        else:
            rng = _range_text(minimum, maximum)
            raise TypeError(f"{name} must be an integer{rng}, got {_kind(n)} ({n!r})")
    n = int(n)
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {n}")
    return n


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def positive_int(n, name: str, maximum: int | None = None) -> int:
    """An integer >= 1 (and <= ``maximum``)."""
    return integer(n, name, 1, maximum)


def steps(n, maximum: int, name: str = "num_inference_steps") -> int:
    """A number of sampling steps: an integer from 1 to ``maximum``
    (the schedule's training steps)."""
    return integer(n, name, 1, maximum)


def real(x, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number within ``[minimum, maximum]``."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a finite number, got {_kind(x)} ({x!r})")
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(
                f"{name} must be a finite number, got a tensor of shape {tuple(x.shape)}"
            )
        x = x.item()
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number{_range_text(minimum, maximum)}, got {x}")
    if (minimum is not None and x < minimum) or (maximum is not None and x > maximum):
        raise ValueError(f"{name} must be a finite number{_range_text(minimum, maximum)}, got {x}")
    return x


def guidance(w, name: str = "guidance_scale") -> float:
    """A classifier-free guidance scale: a finite number >= 0 (1 = no guidance,
    0 = unconditional)."""
    return real(w, name, minimum=0.0)


def output_type(kind, allowed=("pil", "np", "pt")) -> str:
    """One of ``allowed``."""
    if not isinstance(kind, str) or kind not in allowed:
        raise ValueError(
            f"output_type must be one of {', '.join(repr(a) for a in allowed)}, got {kind!r}"
        )
    return kind


def generator(g, name: str = "generator"):
    """None or one ``torch.Generator`` (seed it: ``torch.Generator().manual_seed(0)``)."""
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or "
            f"None, got {_kind(g)}"
        )
    return g


def choice(value, allowed, name: str):
    """One of ``allowed`` (a ValueError lists them)."""
    if value not in tuple(allowed):
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"
        )
    return value
