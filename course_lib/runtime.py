"""Runtime helpers every chapter uses: device choice, seeding, quick mode and budgets, timing and
peak memory. Taught in chapter 00; the timer and memory helpers are the tools of chapters 07 and 08.
"""
from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

QUICK_ENV = "COURSE_QUICK"


def get_device(prefer: str | None = None) -> torch.device:
    """The best device available: ``cuda``, then ``mps``, then ``cpu``.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces one, e.g. ``"cpu"``.
    """
    prefer = prefer or os.environ.get("COURSE_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same,
    for code that takes an explicit generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def is_quick() -> bool:
    """True when ``COURSE_QUICK`` is set to something other than ``0``/``false``/empty (CI does)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def budget(full, quick):
    """The one function that decides budgets: ``full`` normally, ``quick`` under ``COURSE_QUICK=1``.

    Notebooks never branch on the variable themselves: ``steps = budget(full=3000, quick=20)``.
    """
    return quick if is_quick() else full


@dataclass
class Timer:
    """Wall-clock timer, usable as a context manager::

        with Timer() as t:
            work()
        print(t.seconds)
    """

    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so that timings measure the work and not its launch."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1, device=None, **kwargs) -> dict:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns ``{"median_s", "min_s", "times_s"}``; the median is what chapter 07 reports as latency.
    """
    for _ in range(warmup):
        fn(*args, **kwargs)
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "times_s": times}


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports kB


@contextlib.contextmanager
def peak_memory(device: torch.device | str | None = None):
    """Measure peak memory of the block. Yields a dict filled on exit with ``peak_bytes`` and ``kind``.

    On CUDA it is the peak of tensors allocated inside the block (``torch.cuda.max_memory_allocated``
    after a reset). On the CPU it is the growth of the process's peak resident set size, which only
    rises when the block needs more than the process ever had: run the measured thing first in a
    fresh process, or compare blocks of growing size.
    """
    device = torch.device(device) if device is not None else get_device()
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(peak_bytes=int(torch.cuda.max_memory_allocated(device) - base), kind="cuda allocated")
    else:
        before = _rss_peak_bytes()
        yield out
        out.update(peak_bytes=max(0, _rss_peak_bytes() - before), kind="cpu peak RSS growth")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe() -> str:
    """One line about this runtime: torch version, device, threads, quick mode."""
    dev = get_device()
    return (f"torch {torch.__version__} | device {dev} | CPU threads {torch.get_num_threads()} | "
            f"quick mode {'ON' if is_quick() else 'off'}")
