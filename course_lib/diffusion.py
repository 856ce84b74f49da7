"""Diffusion from scratch: noise schedules, the forward process, and hand-written DDPM and DDIM
samplers (chapter 04; reused by chapters 05 and 08).

Everything here is the textbook algebra written out, so the notebook can check it against the
library the field uses: ``tests/test_diffusion.py`` compares :func:`ddpm_step` with
``diffusers.DDPMScheduler.step`` and :func:`ddim_step` with ``diffusers.DDIMScheduler.step`` (same
model output, same noise, same result).

Notation (Ho et al. 2020): ``betas[t]`` is the noise added at step ``t``; ``alphas = 1 - betas``;
``alphas_cumprod[t]`` (ᾱ_t) is their running product, so that in closed form

    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε,   ε ~ N(0, I).

The signal-to-noise ratio is SNR(t) = ᾱ_t / (1 - ᾱ_t). Timesteps are integers ``0 .. T-1`` as in
diffusers.

A network can be trained to predict ε ("epsilon"), x_0 ("sample") or v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0
("v_prediction", Salimans & Ho 2022); :func:`predicted_x0_and_eps` turns any of them into the
other two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import flow

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
def linear_betas(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """DDPM's linear schedule (diffusers ``beta_schedule="linear"``). float64 [T]."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (diffusers ``beta_schedule="squaredcos_cap_v2"``):
    ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), betas clipped at ``max_beta``. float64 [T]."""

    def abar(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


DIFFUSERS_SCHEDULE_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@dataclass
class NoiseSchedule:
    """A discrete noise schedule: ``betas``, ``alphas``, ``alphas_cumprod``
    (float64 tensors [T])."""

    betas: torch.Tensor
    name: str = "custom"

    @classmethod
    def make(cls, name: str = "linear", num_steps: int = 1000) -> "NoiseSchedule":
        """``"linear"`` or ``"cosine"``."""
        if name == "linear":
            return cls(linear_betas(num_steps), name)
        if name == "cosine":
            return cls(cosine_betas(num_steps), name)
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {name!r}")

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    def snr(self) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 - ᾱ_t), [T]."""
        ac = self.alphas_cumprod
        return ac / (1 - ac)

    def diffusers_kwargs(self) -> dict:
        """Keyword arguments that make a diffusers scheduler with this schedule."""
        if self.name in DIFFUSERS_SCHEDULE_NAMES and self.name != "custom":
            return {
                "num_train_timesteps": self.num_steps,
                "beta_schedule": DIFFUSERS_SCHEDULE_NAMES[self.name],
            }
        return {"num_train_timesteps": self.num_steps, "trained_betas": self.betas.tolist()}


def _gather(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against ``like`` ([n, ...]), in ``like``'s dtype and device."""
    t = torch.as_tensor(t, device=values.device)
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1))) if out.dim() else out


# --------------------------------------------------------------------------------------------
# The forward process
# --------------------------------------------------------------------------------------------
def q_sample(
    x0: torch.Tensor, t, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Closed form of the forward process: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε.

    ``t``: an int or LongTensor[n] (one timestep per picture). Same as diffusers'
    ``scheduler.add_noise(x0, noise, t)``.
    """
    a = _gather(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def forward_chain(
    x0: torch.Tensor,
    t: int,
    betas: torch.Tensor,
    generator: torch.Generator | None = None,
    return_all: bool = False,
):
    """The forward process run step by step: x_s = sqrt(1 - β_s) x_{s-1} + sqrt(β_s) ε_s
    for s = 0..t.

    Returns x_t (or the list [x_0, x_1', ..., x_t] with ``return_all``); statistically the same as
    :func:`q_sample` at ``t``, which is what the notebook and the tests check.
    """
    x = x0
    xs = [x0]
    for s in range(t + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        b = float(betas[s])
        x = math.sqrt(1 - b) * x + math.sqrt(b) * eps
        if return_all:
            xs.append(x)
    return xs if return_all else x


# --------------------------------------------------------------------------------------------
# What the network predicts
# --------------------------------------------------------------------------------------------
def v_target(
    x0: torch.Tensor, noise: torch.Tensor, t, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (diffusers ``get_velocity``)."""
    a = _gather(alphas_cumprod, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """What a network trained with ``prediction_type`` must output for (x_0, ε, t)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return v_target(x0, noise, t, alphas_cumprod)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predicted_x0_and_eps(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_prod_t, prediction_type: str = "epsilon"
):
    """(x̂_0, ε̂) from a network's output at a point with ᾱ_t = ``alpha_prod_t`` (a number or a
    tensor broadcastable to ``x_t``)."""
    a = torch.as_tensor(alpha_prod_t, dtype=x_t.dtype, device=x_t.device)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - sb * eps) / sa
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - sa * x0) / sb
    elif prediction_type == "v_prediction":
        x0 = sa * x_t - sb * model_output
        eps = sa * model_output + sb * x_t
    else:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    return x0, eps


def min_snr_weight(
    t, alphas_cumprod: torch.Tensor, gamma: float = 5.0, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for a per-picture MSE on ``prediction_type``'s
    target: min(SNR, γ)/SNR for ε, min(SNR, γ) for x_0, min(SNR, γ)/(SNR + 1) for v."""
    a = alphas_cumprod[torch.as_tensor(t, device=alphas_cumprod.device)]
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        w = clipped / snr
    elif prediction_type == "sample":
        w = clipped
    else:
        w = clipped / (snr + 1)
    return w.float()


def diffusion_loss(
    model_fn,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    min_snr_gamma: float | None = None,
    return_parts: bool = False,
    time_sampling: str = "uniform",
):
    """One Monte Carlo estimate of the denoising loss: draw t and ε, noise x_0 in closed form, ask
    ``model_fn(x_t, t)`` for ``prediction_type``'s target, return the (optionally Min-SNR-weighted)
    mean squared error. ``"flow_prediction"`` is flow matching
    (:func:`course_lib.flow.flow_matching_loss`: the straight path, times in [0, 1], no
    ``alphas_cumprod``; ``time_sampling`` "uniform" or "logit-normal",
    :func:`course_lib.flow.sample_time`); the other types draw the step uniformly."""
    if prediction_type == flow.PREDICTION_TYPE:
        return flow.flow_matching_loss(
            model_fn,
            x0,
            generator=generator,
            time_sampling=time_sampling,
            return_parts=return_parts,
        )
    if time_sampling != "uniform":
        raise ValueError(
            f"time_sampling {time_sampling!r} is for flow matching (prediction_type "
            f"'flow_prediction'); {prediction_type!r} draws its steps uniformly: use 'uniform'"
        )
    n = x0.shape[0]
    T = len(alphas_cumprod)
    t = torch.randint(0, T, (n,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    target = training_target(x0, noise, t, alphas_cumprod, prediction_type)
    out = model_fn(x_t, t)
    per = ((out.float() - target.float()) ** 2).flatten(1).mean(1)  # [n]
    if min_snr_gamma is not None:
        per = per * min_snr_weight(
            t.cpu(), alphas_cumprod.cpu(), min_snr_gamma, prediction_type
        ).to(per.device)
    loss = per.mean()
    return (loss, {"t": t, "x_t": x_t, "target": target, "output": out}) if return_parts else loss


# --------------------------------------------------------------------------------------------
# Reverse steps, written by hand
# --------------------------------------------------------------------------------------------
def previous_timestep(t: int, num_train_steps: int, num_inference_steps: int | None = None) -> int:
    """The timestep a sampler steps to from ``t``: ``t - T // n`` (diffusers' "leading" spacing)."""
    n = num_inference_steps or num_train_steps
    return t - num_train_steps // n


def ddpm_step(
    model_output: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prev_t: int | None = None,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    clip_range: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_x0: bool = False,
):
    """One ancestral DDPM step x_t -> x_{prev_t} (Ho et al. eq. 6-7;
    ``variance_type="fixed_small"``).

    1. x̂_0 from the network's output (clipped to [-1, 1] when ``clip_sample``);
    2. the mean of the posterior q(x_prev | x_t, x̂_0):
       μ = sqrt(ᾱ_prev) β_t / (1 - ᾱ_t) · x̂_0 + sqrt(α_t) (1 - ᾱ_prev) / (1 - ᾱ_t) · x_t;
    3. plus σ z with σ² = (1 - ᾱ_prev) / (1 - ᾱ_t) · β_t, except at t = 0.

    Here α_t = ᾱ_t / ᾱ_prev and β_t = 1 - α_t, so skipping steps (``prev_t < t - 1``) works too.
    ``noise`` (z) is drawn from ``generator`` when not given, exactly as diffusers does.
    """
    prev_t = t - 1 if prev_t is None else prev_t
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    x0, _ = predicted_x0_and_eps(model_output, x_t, a_t, prediction_type)
    if clip_sample:
        x0 = x0.clamp(-clip_range, clip_range)
    mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + (
        math.sqrt(alpha_t) * (1 - a_prev) / (1 - a_t)
    ) * x_t
    if t > 0:
        if noise is None:
            noise = torch.randn(
                model_output.shape,
                generator=generator,
                dtype=model_output.dtype,
                device=generator.device if generator is not None else model_output.device,
            ).to(model_output.device)
        var = max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
        mean = mean + math.sqrt(var) * noise
    return (mean, x0) if return_x0 else mean


def ddim_step(
    model_output: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prev_t: int,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    clip_sample: bool = False,
    clip_range: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_x0: bool = False,
):
    """One DDIM step x_t -> x_{prev_t} (Song et al. 2021, eq. 12):

        x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε̂ + σ z,
        σ = η sqrt((1 - ᾱ_prev)/(1 - ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_prev).

    η = 0 is deterministic (an ODE solver); η = 1 is DDPM's noise. ``prev_t < 0`` means ᾱ_prev = 1.
    With v-prediction keep ``clip_sample=False`` (clipping x̂_0 early ruins the pictures).
    """
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
    x0, eps = predicted_x0_and_eps(model_output, x_t, a_t, prediction_type)
    if clip_sample:
        x0 = x0.clamp(-clip_range, clip_range)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * math.sqrt(max(var, 0.0))
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(
                model_output.shape,
                generator=generator,
                dtype=model_output.dtype,
                device=generator.device if generator is not None else model_output.device,
            ).to(model_output.device)
        x_prev = x_prev + std * noise
    return (x_prev, x0) if return_x0 else x_prev


def inference_timesteps(num_train_steps: int, num_inference_steps: int) -> list[int]:
    """Descending timesteps a sampler visits ("leading" spacing, as diffusers' default):
    ``[(n-1)k, ..., k, 0]`` with ``k = T // n``."""
    k = num_train_steps // num_inference_steps
    return [i * k for i in reversed(range(num_inference_steps))]


@torch.no_grad()
def sample_ddpm(
    model_fn,
    shape,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None,
    num_inference_steps: int | None = None,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    device=None,
    callback=None,
) -> torch.Tensor:
    """Ancestral sampling from pure noise with :func:`ddpm_step` (all T steps by default).

    ``model_fn(x_t, t) -> output`` (``t`` a LongTensor[n]). ``callback(t, x_t, x0_hat)`` sees each
    step. Returns x_0 in the model's range (for the course: [-1, 1]).
    """
    T = len(alphas_cumprod)

    def step(out, t, x, prev_t):
        return ddpm_step(
            out,
            t,
            x,
            alphas_cumprod,
            prev_t=prev_t,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            generator=generator,
            return_x0=True,
        )

    return _reverse_loop(
        model_fn,
        step,
        shape,
        inference_timesteps(T, num_inference_steps or T),
        generator,
        device,
        callback,
    )


@torch.no_grad()
def sample_ddim(
    model_fn,
    shape,
    alphas_cumprod: torch.Tensor,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    clip_sample: bool = False,
    device=None,
    callback=None,
) -> torch.Tensor:
    """DDIM sampling with :func:`ddim_step` over ``num_inference_steps`` evenly spaced timesteps."""
    T = len(alphas_cumprod)

    def step(out, t, x, prev_t):
        return ddim_step(
            out,
            t,
            x,
            alphas_cumprod,
            prev_t,
            prediction_type=prediction_type,
            eta=eta,
            clip_sample=clip_sample,
            generator=generator,
            return_x0=True,
        )

    return _reverse_loop(
        model_fn,
        step,
        shape,
        inference_timesteps(T, num_inference_steps),
        generator,
        device,
        callback,
    )


def _reverse_loop(model_fn, step, shape, steps, generator, device, callback) -> torch.Tensor:
    """The loop both hand-written samplers share: pure noise, then
    ``step(out, t, x, prev_t) -> (x_prev, x0_hat)`` at each timestep of ``steps`` (descending; the
    last step goes to index -1)."""
    device = device or "cpu"
    x = torch.randn(shape, generator=generator).to(device)  # [n, c, h, w]
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        x, x0 = step(model_fn(x, tt), t, x, prev_t)
        if callback is not None:
            callback(t, x, x0)
    return x


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] pictures -> [-1, 1], the range the diffusion models work in."""
    return x01 * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model outputs -> [0, 1] pictures (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)
