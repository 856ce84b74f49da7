"""Efficiency (chapter 07): what a model costs to run and to ship: latency per call and per
picture, peak memory while it runs, parameters, and size on disk as the course ships models
(safetensors). Chapter 07's scoreboard puts these next to the quality measures of
:mod:`course_lib.metrics`, which imports them from here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.nn as nn

from .runtime import count_parameters, peak_memory, time_fn


def latency(fn, *args, repeats: int = 5, warmup: int = 1, device=None, **kwargs) -> float:
    """Median wall-clock seconds of ``fn(*args, **kwargs)`` over ``repeats`` runs, after ``warmup``
    untimed runs (first calls pay for allocation and lazy initialisation)."""
    return time_fn(fn, *args, repeats=repeats, warmup=warmup, device=device, **kwargs)["median_s"]


def peak_memory_bytes(fn, *args, device=None, **kwargs) -> int:
    """Peak memory while ``fn`` runs, above the level when it started
    (:func:`course_lib.runtime.peak_memory`: CUDA bytes allocated, or on the CPU the process's
    resident set size sampled by a background thread)."""
    with peak_memory(device) as mem:
        fn(*args, **kwargs)
    return int(mem["peak_bytes"])


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of a module (or of the ``unet``/``text_encoder``/... of a pipeline)."""
    if isinstance(model, nn.Module):
        return count_parameters(model)
    modules = _pipeline_modules(model)
    if not modules:
        raise TypeError(f"cannot count parameters of {type(model).__name__}")
    return sum(count_parameters(m) for m in modules)


def _pipeline_modules(obj) -> list[nn.Module]:
    comps = getattr(obj, "components", None)
    if isinstance(comps, dict):
        return [m for m in comps.values() if isinstance(m, nn.Module)]
    return (
        [v for v in vars(obj).values() if isinstance(v, nn.Module)]
        if hasattr(obj, "__dict__")
        else []
    )


def size_on_disk(obj) -> int:
    """Bytes on disk: of a file or a folder (summed), or of a module's ``state_dict`` saved as
    safetensors (what the course ships)."""
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        return (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else p.stat().st_size
        )
    from safetensors.torch import save_file

    modules = [obj] if isinstance(obj, nn.Module) else _pipeline_modules(obj)
    state = {
        f"{i}.{k}": v.detach().cpu().contiguous()
        for i, m in enumerate(modules)
        for k, v in m.state_dict().items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(state, str(path))
        return path.stat().st_size


def efficiency(model, fn, *args, repeats: int = 5, warmup: int = 1, per: int = 1, **kwargs) -> dict:
    """Latency (median s per call and per item, ``per`` items a call), peak memory, parameters and
    size on disk of ``model`` when running ``fn(*args, **kwargs)``."""
    mem = peak_memory_bytes(fn, *args, **kwargs)  # first: also the warm-up of the timing
    t = latency(fn, *args, repeats=repeats, warmup=max(0, warmup - 1), **kwargs)
    return {
        "latency_s": t,
        "latency_per_item_ms": 1000 * t / per,
        "peak_memory_mb": mem / 2**20,
        "parameters": parameter_count(model),
        "size_mb": size_on_disk(model) / 1e6,
    }
