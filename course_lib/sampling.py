"""The one sampling loop of the course, its guidance helper and its scheduler factory.

Every pipeline that samples a diffusion or flow model (chapter 05's :class:`ShapesPipeline`, the
latent, distilled and Transformer pipelines of chapters 05 and 08, the ones conditioned on
language models in chapter 06) and every measurement of chapter 08 runs
:func:`denoise_loop`; none writes a loop of its own. Chapter 04 writes DDPM and DDIM by hand
(:mod:`course_lib.diffusion`) to teach them; its tests check them against the schedulers used here.

* :func:`guide` is classifier-free guidance (Ho & Salimans 2022), the line chapter 05's exercise
  writes: ``uncond + w * (cond - uncond)``.
* :func:`guided` calls a network for both halves: one call on a batch of 2n (what diffusers'
  pipelines do), two calls of n, or one unguided call.
* :func:`make_scheduler` builds any of the course's samplers as a diffusers scheduler from a model's
  noise schedule and prediction type.

Timestep spacing (why ``"trailing"``): a sampler with n steps visits n of the T = 1000 training
timesteps. diffusers' DDIMScheduler defaults to "leading" spacing, ``0, k, 2k, ..., (n-1)k`` with
``k = T // n``: with 1 step it asks the network to denoise at t = 0, a nearly clean picture,
although it starts from pure noise; with 4 steps it starts at t = 750, where the training pictures
still had a visible signal. "Trailing" spacing counts back from t = T - 1 (``999, 999 - k, ...``),
so the first step always starts where pure noise is what the network was trained on (Lin et al.
2024, "Common diffusion noise schedules and sample steps are flawed", table 2). (DPM-Solver and
Euler default to other spacings; the course passes "trailing" to every sampler.) At 50+ steps the
spacings hardly differ; at 1-8 steps trailing is what makes them work.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from . import arguments, diffusion, flow

#: Deterministic samplers (probability-flow ODE solvers) and DDPM.
SAMPLERS = ("ddpm", "ddim", "dpm++", "unipc", "euler")
#: Stochastic counterparts of the ODE samplers (fresh noise every step, like DDPM).
STOCHASTIC_SAMPLERS = ("euler-a", "dpm++sde")
#: Samplers of flow-matching models (velocity prediction on the straight path, chapter 04).
FLOW_SAMPLERS = ("flow-euler",)
LABELS = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "dpm++": "DPM-Solver++(2M)",
    "unipc": "UniPC",
    "euler": "Euler",
    "euler-a": "Euler ancestral",
    "dpm++sde": "DPM-Solver++(2M) SDE",
    "flow-euler": "Flow Euler",
}
#: How the two passes of classifier-free guidance are run.
GUIDANCE_MODES = ("batched", "sequential", "off")


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------
def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``.

    ``scale`` 1 gives the conditional prediction, 0 the unconditional one, above 1 it pushes past
    the conditional prediction, away from the unconditional one (or from a negative prompt). Ho &
    Salimans (2022) write the same thing as ``(1 + w') cond - w' uncond``: their ``w'`` is
    ``scale - 1``. The algebra is the same whatever the network predicts (ε, v, x_0 or a flow
    velocity), because each is an affine function of the others at a fixed x_t and t.

    A chain of conditions (chapter 11's InstructPix2Pix): ``cond`` a list ``[c_1, ..., c_k]``, each
    adding a condition to the one before, and ``scale`` a list of k scales give
    ``uncond + sum_j scale_j * (c_j - c_{j-1})`` with ``c_0 = uncond``; with ``[e(I,∅), e(I,T)]``
    and ``[s_I, s_T]`` that is Brooks et al. (2023)'s two-scale guidance
    ``e(∅,∅) + s_I (e(I,∅) - e(∅,∅)) + s_T (e(I,T) - e(I,∅))``.
    """
    if isinstance(cond, (list, tuple)):
        if not isinstance(scale, (list, tuple)) or len(scale) != len(cond) or not cond:
            raise ValueError(
                "a chain of conditions takes one scale per condition: cond and scale lists of "
                f"equal, non-zero length, got {len(cond)} conditions and scale {scale!r}"
            )
        out, before = uncond, uncond
        for c, s in zip(cond, scale):
            out, before = out + s * (c - before), c
        return out
    return uncond + scale * (cond - uncond)


def concat_conditions(a, b):
    """Stack two conditionings of the same structure along the batch: tensors, tuples/lists of
    tensors, or dicts of tensors (``None`` entries stay ``None``)."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, (tuple, list)):
        return type(a)(concat_conditions(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    raise TypeError(
        "a conditioning must be a tensor, a tuple/list or a dict of tensors, got "
        f"{type(a).__name__}"
    )


def guided(
    net: Callable, x: torch.Tensor, t, cond, uncond=None, scale: float = 1.0, mode: str = "batched"
) -> torch.Tensor:
    """The network's guided prediction at ``x`` [n, ...] and timestep ``t``.

    ``net(x, t, conditioning)`` is the network. Unguided (``mode="off"``, ``scale == 1`` or no
    ``uncond``): one call on ``cond``. Otherwise :func:`guide` of the unconditional and conditional
    predictions, computed as one call on a batch of 2n (``"batched"``: [uncond, cond]) or as two
    calls of n (``"sequential"``: the same numbers up to float rounding, half the peak memory).
    ``t`` is a scalar tensor or one timestep per row [n] (then doubled for the batch of 2n).
    """
    arguments.choice(mode, GUIDANCE_MODES, "mode")
    if mode == "off" or uncond is None or scale == 1.0:
        return net(x, t, cond)
    if mode == "sequential":
        return guide(net(x, t, uncond), net(x, t, cond), scale)
    t2 = (
        torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and len(t) == len(x) else t
    )
    u, c = net(torch.cat([x, x]), t2, concat_conditions(uncond, cond)).chunk(2)
    return guide(u, c, scale)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def set_timesteps(scheduler, num_inference_steps: int) -> None:
    """``scheduler.set_timesteps`` as the course's loop calls it. A flow-matching Euler scheduler
    gets n equal steps from t = 1 to 0 (``sigmas = linspace(1, 1/n, n)``, then its terminal 0; the
    scheduler applies its shift), as diffusers' Flux pipeline passes them: the scheduler's own
    default ends its grid at t = 1/T before the jump to 0, so its "2 steps" are one step
    (:func:`course_lib.flow.euler_sigmas` is the same grid, written by hand). Other schedulers keep
    their ``timestep_spacing``."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        n = arguments.steps(num_inference_steps, scheduler.config.num_train_timesteps)
        sigmas = flow.euler_sigmas(n)[:-1]  # [n] from 1 to 1/n, unshifted (the scheduler shifts)
        scheduler.set_timesteps(sigmas=sigmas.tolist())
    else:
        scheduler.set_timesteps(num_inference_steps)


def denoise_loop(
    scheduler,
    net: Callable,
    latents: torch.Tensor,
    num_inference_steps: int,
    cond=None,
    uncond=None,
    guidance_scale: float = 1.0,
    mode: str = "batched",
    generator=None,
    callback_on_step_end: Callable | None = None,
    pipe=None,
    progress_bar=None,
) -> torch.Tensor:
    """The sampling loop every diffusers pipeline runs, once for the whole course.

    ``latents``: the starting noise [n, ...] (unit variance; scaled here by the scheduler's
    ``init_noise_sigma``). Each step: the scheduler's input scaling, the (guided) network
    prediction, ``scheduler.step``. Stochastic schedulers draw their fresh noise from ``generator``.
    ``callback_on_step_end(pipe, i, t, {"latents": x})`` runs after every step, as in diffusers; the
    dict it returns may replace ``"latents"``. ``progress_bar``: a factory like a pipeline's
    ``progress_bar(total=...)`` (None: no bar). Returns the final sample [n, ...].
    """
    set_timesteps(scheduler, num_inference_steps)
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at unit noise
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    kw = {"generator": generator} if takes_generator else {}
    bar = (
        progress_bar(total=len(scheduler.timesteps))
        if progress_bar is not None
        else contextlib.nullcontext()
    )
    with bar:
        for i, t in enumerate(scheduler.timesteps):
            out = guided(net, scale(x, t), t, cond, uncond, guidance_scale, mode)
            x = scheduler.step(out, t, x, **kw).prev_sample
            if callback_on_step_end is not None:
                returned = callback_on_step_end(pipe, i, t, {"latents": x}) or {}
                x = returned.get("latents", x)
            if progress_bar is not None:
                bar.update()
    return x


# --------------------------------------------------------------------------------------------
# The scheduler factory
# --------------------------------------------------------------------------------------------
def schedule_of(model) -> dict:
    """``{"schedule", "num_train_timesteps", "prediction_type"}`` of a model: a config (a
    :class:`course_lib.config.Config` or a dict), a module with a ``config``, or a pipeline (read
    off its scheduler)."""
    if hasattr(model, "scheduler") and hasattr(model.scheduler, "config"):  # a pipeline
        sc = model.scheduler.config
        if "beta_schedule" not in sc:  # a flow-matching scheduler
            return {
                "schedule": "flow",
                "num_train_timesteps": sc.num_train_timesteps,
                "prediction_type": "flow",
            }
        names = {v: k for k, v in diffusion.DIFFUSERS_SCHEDULE_NAMES.items()}
        return {
            "schedule": names[sc.beta_schedule],
            "num_train_timesteps": sc.num_train_timesteps,
            "prediction_type": sc.prediction_type,
        }
    cfg = getattr(model, "config", model)
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, dict):
        raise TypeError(f"cannot read a noise schedule off {type(model).__name__}")
    return {
        "schedule": cfg.get("schedule", "linear"),
        "num_train_timesteps": int(cfg.get("num_train_timesteps", 1000)),
        "prediction_type": cfg.get("prediction_type", "epsilon"),
    }


def make_scheduler(name: str, model, spacing: str = "trailing", shift: float = 1.0):
    """A diffusers scheduler for sampler ``name`` with ``model``'s schedule and prediction type
    (``model``: anything :func:`schedule_of` reads).

    * ``"ddpm"``: ancestral sampling (Ho et al. 2020); x̂_0 clipped to [-1, 1] only for an ε-network
      (as chapter 04's sampler; a v-network's x̂_0 must not be clipped).
    * ``"ddim"``: η = 0, deterministic (Song et al. 2021), a first-order solver of the
      probability-flow ODE; ``clip_sample=False`` (the default ``True`` ruins v-prediction samples).
    * ``"dpm++"``: DPM-Solver++ 2nd-order multistep (Lu et al. 2022), first order on the last step.
    * ``"unipc"``: UniPC, bh2 predictor-corrector on x̂_0 (Zhao et al. 2023).
    * ``"euler"``: Euler's method on the probability-flow ODE in σ (Karras et al. 2022).
    * ``"euler-a"``: Euler ancestral: DDPM's ancestral step written in σ, so the same pictures up to
      float rounding where DDPM does not clip x̂_0 (a v-network such as ``shapes-t2i``;
      ``tests/test_samplers.py`` checks it). For an ε-network "ddpm" clips and the two differ.
    * ``"dpm++sde"``: DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic 2nd-order solver.
    * ``"flow-euler"``: Euler on a flow-matching model's velocity (chapter 04; diffusers'
      ``FlowMatchEulerDiscreteScheduler``, ``shift`` as in Stable Diffusion 3).

    ``spacing="trailing"`` (the default; see the module docstring) starts every sampler at
    t = T - 1.
    """
    allowed = SAMPLERS + STOCHASTIC_SAMPLERS + FLOW_SAMPLERS
    arguments.choice(name, allowed, "sampler")
    arguments.choice(spacing, ("trailing", "leading", "linspace"), "spacing")
    cfg = schedule_of(model)
    if name in FLOW_SAMPLERS or cfg["prediction_type"] in ("flow", "flow_prediction"):
        if name not in FLOW_SAMPLERS:
            raise ValueError(f"a flow-matching model samples with {FLOW_SAMPLERS}, got {name!r}")
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=cfg["num_train_timesteps"], shift=shift
        )
    kw = dict(
        diffusion.NoiseSchedule.make(
            cfg["schedule"], cfg["num_train_timesteps"]
        ).diffusers_kwargs(),
        prediction_type=cfg["prediction_type"],
        timestep_spacing=spacing,
    )
    if name == "ddpm":
        return DDPMScheduler(
            **kw, clip_sample=cfg["prediction_type"] == "epsilon", variance_type="fixed_small"
        )
    if name == "ddim":
        return DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2)
    if name == "unipc":
        return UniPCMultistepScheduler(**kw, solver_order=2, predict_x0=True, solver_type="bh2")
    if name == "euler":
        return EulerDiscreteScheduler(**kw)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler(**kw)
    return DPMSolverMultistepScheduler(
        **kw, algorithm_type="sde-dpmsolver++", solver_order=2
    )  # dpm++sde
