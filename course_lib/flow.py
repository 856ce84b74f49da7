"""Flow matching: straight paths from data to noise, a velocity to learn, Euler's method to sample
(chapter 04's last part; chapter 05 trains its Diffusion Transformer with it and chapter 09
straightens it further by reflow).

Conventions (those of Stable Diffusion 3 and of diffusers' ``FlowMatchEulerDiscreteScheduler``):
the time t runs from 0 (data) to 1 (noise), and a picture x_0 and a noise draw ε ~ N(0, I) are
joined by the straight line

    x_t = (1 - t) x_0 + t ε                       (Lipman et al. 2023; Liu et al. 2023)

whose velocity dx_t/dt = ε - x_0 does not depend on t. A network u(x_t, t) trained with the
mean squared error to ε - x_0 learns the average velocity of all lines through x_t (flow matching);
sampling integrates dx/dt = u(x, t) from t = 1 (pure noise) back to t = 0 with Euler steps
x <- x + (t_next - t) u(x, t). diffusers calls t "sigma" and gives the network
``timestep = 1000 t``; so does this module.

The other ways to parameterise a diffusion model are the same information (each formula is
checked in ``tests/test_flow.py``): with x_t and t known,

    x_0 = x_t - t u,    ε = x_t + (1 - t) u,    u = (ε - x_t) / (1 - t) = (x_t - x_0) / t,

and the variance-preserving point z = α x_0 + σ ε of chapter 04's DDPM (α² = ᾱ, σ² = 1 - ᾱ) is the
flow point x_t = z / (α + σ) at t = σ / (α + σ): the same noisy picture, rescaled. A v-prediction
network (v = α ε - σ x_0, Salimans & Ho 2022) therefore gives the velocity
u = (α + σ) v + (σ - α) z. What differs between the recipes is which of these the network outputs,
how the training times are spread, and how the sampler steps: not what can be learned.

Also here: :func:`shift_sigmas` (Esser et al. 2024's timestep shift) and :func:`reflow_pairs`.
This module is the maths alone and imports nothing of the course above :mod:`course_lib.arguments`.
The models trained with it live in :mod:`course_lib.models`: the 2-D toy of chapter 04 (two moons
to a Gaussian, :mod:`course_lib.models.toy2d`), the digit denoiser trained with flow matching
(``flow-mnist``, :mod:`course_lib.models.ddpm`), the Diffusion Transformer (:mod:`.models.dit`) and
reflow on it (:mod:`.models.reflow`).
"""

from __future__ import annotations

import torch

from . import arguments

PREDICTION_TYPE = (
    "flow_prediction"  # diffusers' name for a network that outputs the velocity ε - x_0
)
TIME_SAMPLINGS = ("uniform", "logit-normal")


# --------------------------------------------------------------------------------------------
# The path and its velocity
# --------------------------------------------------------------------------------------------
def _per_sample(t, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a number or a tensor [n]) shaped [n, 1, ...] to broadcast against ``like``
    [n, ...]."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """The straight path x_t = (1 - t) x_0 + t ε. ``t``: a number or a tensor [n] in [0, 1]."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a flow-matching network learns to output: dx_t/dt = ε - x_0 (the same at every t)."""
    return noise - x0


def sample_time(
    n: int,
    generator: torch.Generator | None = None,
    time_sampling: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Training times t [n] in (0, 1): ``"uniform"``, or ``"logit-normal"`` (t = sigmoid(m + s z),
    Esser et al. 2024: more training near t = 1/2, where predicting the velocity is hardest)."""
    arguments.choice(time_sampling, TIME_SAMPLINGS, "time_sampling")
    if time_sampling == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def flow_matching_loss(
    model_fn,
    x0: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    time_sampling: str = "uniform",
    num_train_timesteps: int = 1000,
    return_parts: bool = False,
):
    """One Monte Carlo estimate of the flow-matching loss E ||u(x_t, t) - (ε - x_0)||².

    ``model_fn(x_t, timesteps)`` gets ``timesteps = num_train_timesteps * t`` (floats, diffusers'
    convention). ``noise``: the ε paired with each x_0 (reflow passes the noise its pictures came
    from); by default fresh noise, independent of x_0.
    """
    n = x0.shape[0]
    t = sample_time(n, generator, time_sampling).to(x0.device, x0.dtype)  # [n]
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    x_t = interpolate(x0, noise, t)
    target = velocity_target(x0, noise)
    out = model_fn(x_t, t * num_train_timesteps)
    loss = ((out.float() - target.float()) ** 2).mean()
    return (loss, {"t": t, "x_t": x_t, "target": target, "output": out}) if return_parts else loss


# --------------------------------------------------------------------------------------------
# One noisy picture, four ways to describe what the network predicts
# --------------------------------------------------------------------------------------------
def x0_and_noise(velocity: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from a velocity at (x_t, t): x_0 = x_t - t u and ε = x_t + (1 - t) u."""
    tt = _per_sample(t, x_t)
    return x_t - tt * velocity, x_t + (1 - tt) * velocity


def velocity_from(
    prediction: torch.Tensor, x_t: torch.Tensor, t, prediction_type: str
) -> torch.Tensor:
    """The velocity from an ε-prediction, u = (ε - x_t)/(1 - t), or an x_0-prediction ("sample"),
    u = (x_t - x_0)/t. (Each divides by a quantity that vanishes at one end of the path: why a
    network that outputs the velocity itself is the better-conditioned choice.)"""
    arguments.choice(prediction_type, ("epsilon", "sample"), "prediction_type")
    tt = _per_sample(t, x_t)
    if prediction_type == "epsilon":
        return (prediction - x_t) / (1 - tt)
    return (x_t - prediction) / tt


def flow_time(alpha_prod) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a variance-preserving point with ᾱ = ``alpha_prod`` lies on the straight path:
    ``(t, scale)`` with t = σ/(α + σ) and x_t = scale · z, scale = 1/(α + σ)."""
    a = torch.as_tensor(alpha_prod, dtype=torch.float64)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    return sigma / (alpha + sigma), 1 / (alpha + sigma)


def velocity_from_v(v: torch.Tensor, z: torch.Tensor, alpha_prod) -> torch.Tensor:
    """The velocity ε - x_0 from a v-prediction v = α ε - σ x_0 at the variance-preserving point z:
    u = (α + σ) v + (σ - α) z."""
    a = _per_sample(torch.as_tensor(alpha_prod, dtype=torch.float64), z)
    alpha, sigma = a.sqrt().to(z.dtype), (1 - a).sqrt().to(z.dtype)
    return (alpha + sigma) * v + (sigma - alpha) * z


def v_from_velocity(velocity: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """The v-prediction target α ε - σ x_0 at the flow point (x_t, t), with α = (1 - t)/r,
    σ = t/r, r = sqrt((1 - t)² + t²) (the variance-preserving point with the same
    signal-to-noise)."""
    tt = _per_sample(t, x_t)
    r = ((1 - tt) ** 2 + tt**2).sqrt()
    x0, eps = x0_and_noise(velocity, x_t, t)
    return ((1 - tt) * eps - tt * x0) / r


# --------------------------------------------------------------------------------------------
# The Euler sampler, written by hand (tests compare it with FlowMatchEulerDiscreteScheduler)
# --------------------------------------------------------------------------------------------
def shift_sigmas(sigmas, shift: float = 1.0) -> torch.Tensor:
    """Esser et al. 2024's timestep shift t' = s t / (1 + (s - 1) t): s > 1 spends more of the steps
    at high noise (where the picture's layout is decided), s = 1 changes nothing."""
    shift = arguments.real(shift, "shift", minimum=1e-6)
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def euler_sigmas(
    num_inference_steps: int, shift: float = 1.0, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """The times an n-step Euler sampler visits, ending at 0 (float64 [n + 1]): n equal steps from
    t = 1 to t = 0, then shifted (:func:`shift_sigmas`). The same grid as
    ``FlowMatchEulerDiscreteScheduler(shift=shift)`` given ``sigmas = linspace(1, 1/n, n)`` (what
    :func:`course_lib.sampling.set_timesteps` passes, as diffusers' Flux pipeline does).

    Why not the scheduler's default grid: ``set_timesteps(n)`` alone spaces n times from 1 down to
    1/T and then appends 0, so its 2-step grid is [1, 0.001, 0]: the second network call only covers
    t = 0.001 -> 0 and "2 steps" draws the pictures of 1. ``num_train_timesteps`` (T) is checked as
    the largest step count."""
    n = arguments.steps(num_inference_steps, num_train_timesteps)
    return shift_sigmas(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), shift)


def euler_step(
    velocity: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """One Euler step along the learned flow: x_next = x + (t_next - t) u(x, t)."""
    return x + (sigma_next - sigma) * velocity


@torch.no_grad()
def sample_euler(
    model_fn,
    noise: torch.Tensor,
    num_inference_steps: int = 20,
    shift: float = 1.0,
    sigmas: torch.Tensor | None = None,
    num_train_timesteps: int = 1000,
    callback=None,
    return_trajectory: bool = False,
):
    """Integrate dx/dt = u(x, t) from ``noise`` at t = 1 to t = 0 with Euler steps.

    ``model_fn(x, timesteps) -> velocity`` gets ``timesteps = num_train_timesteps * t`` (a float
    tensor [n]). ``sigmas``: the times to visit, ending at 0 (default :func:`euler_sigmas`).
    ``callback(i, t, x)`` sees each new x. Returns x_0 (with ``return_trajectory``: also the list of
    every x, [steps + 1] tensors like ``noise``).
    """
    sigmas = (
        euler_sigmas(num_inference_steps, shift, num_train_timesteps) if sigmas is None else sigmas
    )
    x = noise
    path = [x]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        ts = torch.full(
            (x.shape[0],), s * num_train_timesteps, dtype=torch.float32, device=x.device
        )
        x = euler_step(model_fn(x, ts), x, s, s_next)
        if return_trajectory:
            path.append(x)
        if callback is not None:
            callback(i, s_next, x)
    return (x, path) if return_trajectory else x


@torch.no_grad()
def reflow_pairs(
    model_fn, noise: torch.Tensor, num_inference_steps: int = 100, **kw
) -> torch.Tensor:
    """Rectified flow's second round (Liu et al. 2023): the model's own outputs x̂_0 for ``noise``
    (Euler, ``num_inference_steps``). ``(x̂_0, noise)`` are the coupled pairs that
    :func:`flow_matching_loss` then trains on (``noise=``): the lines between them cross far less
    often, so the new flow is straighter and takes fewer steps (chapter 09 does the same with a
    text-to-image pipeline: its pictures for given starting noise)."""
    return sample_euler(model_fn, noise, num_inference_steps, **kw)
