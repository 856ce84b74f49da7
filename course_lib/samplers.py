"""Fast sampling, measured (chapter 08): what each of the field's samplers costs and what it gives.

The samplers themselves are diffusers schedulers built by the course's one factory,
:func:`course_lib.sampling.make_scheduler` (DDPM, DDIM, DPM-Solver++, UniPC, Euler and the
stochastic Euler ancestral and DPM-Solver++ SDE), and they all run in the course's one loop,
:func:`course_lib.sampling.denoise_loop` (see its module for why every sampler starts at t = T - 1).

* :func:`sample_shapes` is a Shapes pipeline's own call with another scheduler and with the two
  classifier-free-guidance passes batched (the pipeline's way), sequential or off: the cost of
  guidance, measured by :func:`cfg_cost`.
* digits (``ddpm-mnist``) are sampled by the course's one digit sampler,
  :func:`course_lib.models.ddpm.sample_digits`, with any scheduler.
* :func:`sweep` measures, per (sampler, steps): the judge's accuracy, KID on the judge's features
  (a quality measure that keeps falling after the accuracy has saturated) and wall milliseconds per
  picture. :func:`fastest_within` answers the chapter's question: which sampler is the fastest one
  that stays within a few points of DDPM's 1000 steps?

The quality measures a sweep reports (the judge's accuracy, KID on its features against real
pictures of the same targets) are :mod:`course_lib.sample_quality`'s, which chapter 08's models use
too; ``reference_set`` and ``quality`` are importable from here as well.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import arguments, sampling
from .models import ddpm
from .pipelines import quiet
from .progress import progress_bar
from .runtime import synchronize
from .sample_quality import is_pipeline, quality, reference_set

__all__ = [
    "sample_shapes",
    "generate",
    "timed_generate",
    "warm_up",
    "sweep",
    "with_ratios",
    "fastest_within",
    "format_table",
    "cfg_cost",
    "reference_set",
    "quality",
]

#: How the two guidance passes run (the pipeline's ``guidance_mode``).
CFG_MODES = sampling.GUIDANCE_MODES


@torch.no_grad()
def sample_shapes(
    pipe,
    captions: list[str],
    scheduler=None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    cfg: str = "batched",
) -> torch.Tensor:
    """Pictures [n, 3, 32, 32] in [0, 1] for ``captions``: exactly ``pipe(captions, generator=
    torch.Generator().manual_seed(seed), output_type="pt", guidance_mode=cfg)`` with ``scheduler``
    (default: the pipeline's own) in place of the pipeline's scheduler.

    ``cfg``: ``"batched"`` (one network call on a batch of 2n, unconditional + conditional, the
    pipeline's way), ``"sequential"`` (two calls of n each, the same result up to float rounding) or
    ``"off"`` (one call on the conditional half only; guidance_scale ignored).
    """
    arguments.choice(cfg, CFG_MODES, "cfg")
    p = pipe.with_scheduler(scheduler) if scheduler is not None else pipe
    with quiet(p):
        return p(
            list(captions),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            guidance_mode=cfg,
        ).images


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def generate(
    model,
    targets,
    sampler: str,
    steps: int,
    guidance_scale: float | None = None,
    seed: int = 0,
    cfg: str = "batched",
    scheduler=None,
) -> torch.Tensor:
    """Pictures from ``model`` (a ShapesPipeline: ``targets`` are captions; a DigitDenoiser:
    labels)."""
    scheduler = scheduler if scheduler is not None else sampling.make_scheduler(sampler, model)
    if is_pipeline(model):
        return sample_shapes(model, list(targets), scheduler, steps, guidance_scale, seed, cfg)
    return ddpm.sample_digits(
        model,
        targets,
        sampler=scheduler,
        num_inference_steps=steps,
        guidance_scale=1.0 if guidance_scale is None else guidance_scale,
        seed=seed,
        cfg=cfg,
    )


def timed_generate(
    model, targets, sampler: str, steps: int, repeats: int = 3, repeat_below_s: float = 3.0, **kw
) -> tuple[torch.Tensor, dict]:
    """Generate once (timed); if that took under ``repeat_below_s`` seconds, time ``repeats - 1``
    more identical runs and report the median. Returns
    ``(images, {"ms_per_picture", "runs", "seconds"})``. Warm-up (first-call costs) is the caller's
    job: :func:`sweep` does one tiny run per sampler first."""
    sched = sampling.make_scheduler(sampler, model)
    times = []
    t0 = time.perf_counter()
    images = generate(model, targets, sampler, steps, scheduler=sched, **kw)
    synchronize()
    times.append(time.perf_counter() - t0)
    if times[0] < repeat_below_s:
        for _ in range(repeats - 1):
            t0 = time.perf_counter()
            generate(model, targets, sampler, steps, scheduler=sched, **kw)
            synchronize()
            times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return images, {
        "ms_per_picture": 1000 * med / len(targets),
        "runs": len(times),
        "seconds": float(sum(times)),
    }


def warm_up(model, targets, samplers=sampling.SAMPLERS, **kw) -> None:
    """One untimed 2-step run per sampler on two targets (first-call allocations, lazy imports)."""
    for s in samplers:
        generate(model, list(targets)[:2], s, 2, **kw)


def sweep(
    model,
    targets,
    samplers=sampling.SAMPLERS,
    steps=(1, 2, 4, 8, 16, 32, 50),
    baseline_steps: int | None = 1000,
    guidance_scale: float | None = None,
    seed: int = 0,
    repeats: int = 3,
    repeat_below_s: float = 3.0,
    reference: torch.Tensor | None = None,
    progress: bool = True,
) -> list[dict]:
    """Measure every (sampler, steps) on ``targets`` plus DDPM at ``baseline_steps`` (the baseline).

    ``model``: a ShapesPipeline (``targets`` = captions) or a DigitDenoiser (``targets`` = labels).
    Returns rows ``{"sampler", "steps", "accuracy", "kid", "ms_per_picture", "runs", "n"}``, the
    baseline first, then by sampler and steps. ``reference`` (real pictures, default
    :func:`reference_set`) is what KID compares with. Same seed, so every sampler starts from the
    same noise. ``baseline_steps=None`` skips the baseline (to add samplers to an earlier sweep).
    """
    targets = list(targets) if is_pipeline(model) else torch.as_tensor(targets)
    reference = reference if reference is not None else reference_set(model, targets)
    kw = {"guidance_scale": guidance_scale, "seed": seed}
    warm_up(model, targets, samplers, **kw)
    plan = ([("ddpm", baseline_steps)] if baseline_steps else []) + [
        (s, k) for s in samplers for k in steps
    ]
    rows = []
    for s, k in progress_bar(plan, desc="sampler sweep", disable=not progress):
        images, t = timed_generate(
            model, targets, s, k, repeats=repeats, repeat_below_s=repeat_below_s, **kw
        )
        rows.append(
            {
                "sampler": s,
                "steps": int(k),
                **quality(model, images, targets, reference),
                "ms_per_picture": t["ms_per_picture"],
                "runs": t["runs"],
                "n": len(targets),
            }
        )
    return rows


def with_ratios(rows: list[dict], baseline: tuple = ("ddpm", 1000)) -> list[dict]:
    """Rows with ``speedup`` (baseline ms / row ms) and ``delta_points`` (accuracy minus the
    baseline's, in percentage points) against the row ``baseline`` = (sampler, steps)."""
    base = next(r for r in rows if (r["sampler"], r["steps"]) == tuple(baseline))
    return [
        dict(
            r,
            speedup=base["ms_per_picture"] / r["ms_per_picture"],
            delta_points=100 * (r["accuracy"] - base["accuracy"]),
        )
        for r in rows
    ]


def fastest_within(rows: list[dict], points: float = 2.0, baseline: tuple = ("ddpm", 1000)) -> dict:
    """The fastest row (lowest ms per picture, baseline excluded) whose accuracy is at most
    ``points`` percentage points below the baseline's, with its ``speedup``; None if no row
    qualifies."""
    rows = with_ratios(rows, baseline)
    ok = [
        r
        for r in rows
        if (r["sampler"], r["steps"]) != tuple(baseline) and r["delta_points"] >= -points
    ]
    return min(ok, key=lambda r: r["ms_per_picture"]) if ok else None


def format_table(rows: list[dict], baseline: tuple = ("ddpm", 1000)) -> str:
    """A plain-text table of a sweep, with ratios against ``baseline``."""
    rows = with_ratios(rows, baseline)
    lines = [
        f"{'sampler':<18}{'steps':>6}{'accuracy':>10}{'Δ points':>10}{'KID x1000':>11}"
        f"{'ms/picture':>12}{'speed-up':>10}"
    ]
    for r in rows:
        kid = f"{r['kid']:.1f}" if "kid" in r else "-"
        lines.append(
            f"{sampling.LABELS.get(r['sampler'], r['sampler']):<18}{r['steps']:>6}"
            f"{100 * r['accuracy']:>9.1f}%{r['delta_points']:>+10.1f}{kid:>11}"
            f"{r['ms_per_picture']:>12.2f}{r['speedup']:>9.1f}x"
        )
    return "\n".join(lines)


def cfg_cost(
    pipe,
    captions: list[str],
    sampler: str = "dpm++",
    steps: int = 20,
    repeats: int = 3,
    guidance_scale: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Classifier-free guidance's price on ``shapes-t2i``: ms per picture with guidance off
    (one pass), the two passes batched as 2n, and the two passes one after the other, measured
    round-robin in one run (median of ``repeats`` each), with the judge's accuracy of each. Rows
    ``{"cfg", "ms_per_picture", "accuracy", "ratio_to_off"}``."""
    sched = sampling.make_scheduler(sampler, pipe)
    kw = dict(scheduler=sched, num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed)
    for mode in CFG_MODES:  # warm-up
        sample_shapes(pipe, captions[:2], cfg=mode, **dict(kw, num_inference_steps=2))
    times = {m: [] for m in CFG_MODES}
    images = {}
    for _ in range(repeats):
        for mode in CFG_MODES:
            t0 = time.perf_counter()
            images[mode] = sample_shapes(pipe, captions, cfg=mode, **kw)
            times[mode].append(time.perf_counter() - t0)
    off = float(np.median(times["off"]))
    rows = []
    for mode in CFG_MODES:
        med = float(np.median(times[mode]))
        rows.append(
            {
                "cfg": mode,
                "ms_per_picture": 1000 * med / len(captions),
                "accuracy": quality(pipe, images[mode], captions)["accuracy"],
                "ratio_to_off": med / off,
            }
        )
    return rows
