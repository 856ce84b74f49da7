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
  picture. :func:`fastest_within` answers the coarse question (the fastest sampler within a few
  points of DDPM-1000's accuracy); :func:`matched_quality` the one the chapter asks: the fastest
  sampler whose accuracy *and* KID match the baseline's (KID not worse by more than its standard
  errors allow).
* :func:`euler_step_v` is one Euler step of the probability-flow ODE in σ for a v-prediction
  network (the chapter's first exercise); :func:`euler_scheduler` puts any such step function into
  diffusers' Euler scheduler, so that it runs in the course's loop.

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
    "matched_quality",
    "euler_step_v",
    "euler_scheduler",
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


def matched_quality(
    rows: list[dict], baseline: tuple = ("ddpm", 1000), points: float = 2.0, z: float = 2.0
) -> dict | None:
    """The fastest row (baseline excluded) whose quality matches the baseline's: accuracy at most
    ``points`` percentage points below it, **and** KID not worse than the baseline's by more than
    ``z`` standard errors of the difference, ``kid - kid_base <= z * sqrt(se^2 + se_base^2)``
    (rows of :func:`sweep`, which carry ``kid`` and ``kid_se``). Returns that row with ``speedup``,
    ``delta_points``, ``kid_gap`` (its KID minus the baseline's) and ``kid_allowed`` (the largest
    gap that still matched), or None if no row qualifies.

    Accuracy alone saturates (chapter 08): a blurred picture with the right five attributes counts
    as right, so :func:`fastest_within` can pick a setting whose pictures are visibly worse."""
    arguments.real(points, "points", minimum=0.0)
    if arguments.real(z, "z") <= 0:
        raise ValueError(f"z must be > 0 (standard errors of the KID gap), got {z}")
    rows = with_ratios(rows, baseline)
    base = next(r for r in rows if (r["sampler"], r["steps"]) == tuple(baseline))
    if "kid_se" not in base:
        raise ValueError("matched_quality needs rows with 'kid' and 'kid_se' (a sweep's rows)")
    ok = []
    for r in rows:
        if r is base or r["delta_points"] < -points:
            continue
        allowed = z * float(np.hypot(r["kid_se"], base["kid_se"]))
        gap = r["kid"] - base["kid"]
        if gap <= allowed:  # NaN standard errors never match
            ok.append(dict(r, kid_gap=gap, kid_allowed=allowed))
    return min(ok, key=lambda r: r["ms_per_picture"]) if ok else None


def format_table(rows: list[dict], baseline: tuple = ("ddpm", 1000)) -> str:
    """A plain-text table of a sweep, with ratios against ``baseline`` (KID with its standard
    error where the rows have one)."""
    rows = with_ratios(rows, baseline)
    lines = [
        f"{'sampler':<18}{'steps':>6}{'accuracy':>10}{'Δ points':>10}{'KID x1000 ± SE':>18}"
        f"{'ms/picture':>12}{'speed-up':>10}"
    ]
    for r in rows:
        kid = f"{r['kid']:.1f}" if "kid" in r else "-"
        if np.isfinite(r.get("kid_se", float("nan"))):
            kid += f" ± {r['kid_se']:.1f}"
        lines.append(
            f"{sampling.LABELS.get(r['sampler'], r['sampler']):<18}{r['steps']:>6}"
            f"{100 * r['accuracy']:>9.1f}%{r['delta_points']:>+10.1f}{kid:>18}"
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



# --------------------------------------------------------------------------------------------
# One Euler step, and a scheduler that takes any step function
# --------------------------------------------------------------------------------------------
def euler_step_v(v_hat: torch.Tensor, sigma: float, sigma_next: float, x: torch.Tensor):
    """One Euler step of the probability-flow ODE in σ for a **v-prediction** network (chapter 08's
    exercise; ``diffusers.EulerDiscreteScheduler.step`` with ``prediction_type="v_prediction"``).

    ``x`` [n, ...] is the sample ``x0 + σ ε`` at noise level ``sigma``; the network saw
    ``sqrt(ᾱ) x`` with ``ᾱ = 1 / (σ² + 1)`` and predicted ``v_hat`` (same shape). Returns ``x`` at
    ``sigma_next`` (0: the end of sampling)."""
    a = 1.0 / (sigma**2 + 1)  # ᾱ at this noise level
    x_t = a**0.5 * x  # [n, ...] what the network was shown
    x0_hat = a**0.5 * x_t - (1 - a) ** 0.5 * v_hat  # [n, ...]
    eps_hat = (x - x0_hat) / sigma  # [n, ...] the ODE's slope dx/dσ
    return x + (sigma_next - sigma) * eps_hat


def euler_scheduler(model, step_fn=euler_step_v):
    """diffusers' Euler scheduler for ``model`` (:func:`course_lib.sampling.make_scheduler`
    ``("euler", model)``, which must be a v-prediction model) whose update is
    ``step_fn(v_hat, sigma, sigma_next, x)``, e.g. the learner's own Euler step: pass it as
    ``scheduler=`` to :func:`generate` and it runs in the course's one loop.

    The scheduler's own step still runs first (it keeps diffusers' step counter, which
    ``scale_model_input`` reads); its result is replaced by ``step_fn``'s."""
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    sched = sampling.make_scheduler("euler", model)
    if sched.config.prediction_type != "v_prediction":
        raise ValueError(
            f"euler_scheduler needs a v_prediction model, got {sched.config.prediction_type!r}"
        )
    own_step = sched.step

    def step(model_output, timestep, sample, **kw):
        out = own_step(model_output, timestep, sample, **kw)  # advances the step counter
        i = sched.step_index - 1
        sigma, sigma_next = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
        prev = step_fn(model_output, sigma, sigma_next, sample.float())
        return type(out)(prev_sample=prev.to(sample.dtype), pred_original_sample=None)

    sched.step = step
    return sched
