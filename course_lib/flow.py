"""Flow matching: straight paths from data to noise, a velocity to learn, Euler's method to sample
(chapter 04's last part; chapter 05 trains its Diffusion Transformer with it and chapter 08
straightens it further by reflow).

Conventions (those of Stable Diffusion 3 and of diffusers' ``FlowMatchEulerDiscreteScheduler``):
the time t runs from 0 (data) to 1 (noise), and a picture x_0 and a noise draw ε ~ N(0, I) are
joined by the straight line

    x_t = (1 - t) x_0 + t ε                       (Lipman et al. 2023; Liu et al. 2023)

whose velocity dx_t/dt = ε - x_0 does not depend on t. A network u(x_t, t) trained with the
mean squared error to ε - x_0 learns the average velocity of all lines through x_t (flow matching);
sampling integrates dx/dt = u(x, t) from t = 1 (pure noise) back to t = 0 with Euler steps
x <- x + (t_next - t) u(x, t). diffusers calls t "sigma" and gives the network ``timestep = 1000 t``;
so does this module.

The other ways to parameterise a diffusion model are the same information (each formula is
checked in ``tests/test_flow.py``): with x_t and t known,

    x_0 = x_t - t u,    ε = x_t + (1 - t) u,    u = (ε - x_t) / (1 - t) = (x_t - x_0) / t,

and the variance-preserving point z = α x_0 + σ ε of chapter 04's DDPM (α² = ᾱ, σ² = 1 - ᾱ) is the
flow point x_t = z / (α + σ) at t = σ / (α + σ): the same noisy picture, rescaled. A v-prediction
network (v = α ε - σ x_0, Salimans & Ho 2022) therefore gives the velocity u = (α + σ) v + (σ - α) z.
What differs between the recipes is which of these the network outputs, how the training times are
spread, and how the sampler steps: not what can be learned.

Also here: :func:`shift_sigmas` (Esser et al. 2024's timestep shift), the 2-D toy of the chapter
(two moons to a Gaussian, trajectories of the DDPM probability-flow ODE against flow matching, before
and after one reflow) and the digits comparison (flow matching against DDPM/DDIM on MNIST-5k with
chapter 04's network and budget; shipped as ``flow-mnist``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import arguments, diffusion, pretrained, runtime, samplers, sampling, training

PREDICTION_TYPE = "flow_prediction"        # diffusers' name for a network that outputs the velocity ε - x_0
TIME_SAMPLINGS = ("uniform", "logit-normal")


# --------------------------------------------------------------------------------------------
# The path and its velocity
# --------------------------------------------------------------------------------------------
def _per_sample(t, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a number or a tensor [n]) shaped [n, 1, ...] to broadcast against ``like`` [n, ...]."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """The straight path x_t = (1 - t) x_0 + t ε. ``t``: a number or a tensor [n] in [0, 1]."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a flow-matching network learns to output: dx_t/dt = ε - x_0 (the same at every t)."""
    return noise - x0


def sample_time(n: int, generator: torch.Generator | None = None, time_sampling: str = "uniform",
                mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training times t [n] in (0, 1): ``"uniform"``, or ``"logit-normal"`` (t = sigmoid(m + s z), Esser
    et al. 2024: more training near t = 1/2, where predicting the velocity is hardest)."""
    arguments.choice(time_sampling, TIME_SAMPLINGS, "time_sampling")
    if time_sampling == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def flow_matching_loss(model_fn, x0: torch.Tensor, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, time_sampling: str = "uniform",
                       num_train_timesteps: int = 1000, return_parts: bool = False):
    """One Monte Carlo estimate of the flow-matching loss E ||u(x_t, t) - (ε - x_0)||².

    ``model_fn(x_t, timesteps)`` gets ``timesteps = num_train_timesteps * t`` (floats, diffusers'
    convention). ``noise``: the ε paired with each x_0 (reflow passes the noise its pictures came
    from); by default fresh noise, independent of x_0.
    """
    n = x0.shape[0]
    t = sample_time(n, generator, time_sampling).to(x0.device, x0.dtype)          # [n]
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


def velocity_from(prediction: torch.Tensor, x_t: torch.Tensor, t, prediction_type: str) -> torch.Tensor:
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
    σ = t/r, r = sqrt((1 - t)² + t²) (the variance-preserving point with the same signal-to-noise)."""
    tt = _per_sample(t, x_t)
    r = ((1 - tt) ** 2 + tt ** 2).sqrt()
    x0, eps = x0_and_noise(velocity, x_t, t)
    return ((1 - tt) * eps - tt * x0) / r


# --------------------------------------------------------------------------------------------
# The Euler sampler, written by hand (tests compare it with FlowMatchEulerDiscreteScheduler)
# --------------------------------------------------------------------------------------------
def shift_sigmas(sigmas, shift: float = 1.0) -> torch.Tensor:
    """Esser et al. 2024's timestep shift t' = s t / (1 + (s - 1) t): s > 1 spends more of the steps at
    high noise (where the picture's layout is decided), s = 1 changes nothing."""
    shift = arguments.real(shift, "shift", minimum=1e-6)
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def euler_sigmas(num_inference_steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The times an n-step Euler sampler visits, then 0 (float64 [n + 1]); the same as
    ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(n)``: n evenly spaced times from 1
    down to 1/T (T = ``num_train_timesteps``), shifted, then 0. (diffusers shifts the smallest time
    1/T once when the scheduler is made and once more in ``set_timesteps``; so does this.)"""
    n = arguments.steps(num_inference_steps, num_train_timesteps)
    t_min = float(shift_sigmas(1.0 / num_train_timesteps, shift))
    sigmas = shift_sigmas(torch.linspace(1.0, t_min, n, dtype=torch.float64), shift)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def euler_step(velocity: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step along the learned flow: x_next = x + (t_next - t) u(x, t)."""
    return x + (sigma_next - sigma) * velocity


@torch.no_grad()
def sample_euler(model_fn, noise: torch.Tensor, num_inference_steps: int = 20, shift: float = 1.0,
                 sigmas: torch.Tensor | None = None, num_train_timesteps: int = 1000, callback=None,
                 return_trajectory: bool = False):
    """Integrate dx/dt = u(x, t) from ``noise`` at t = 1 to t = 0 with Euler steps.

    ``model_fn(x, timesteps) -> velocity`` gets ``timesteps = num_train_timesteps * t`` (a float tensor
    [n]). ``sigmas``: the times to visit, ending at 0 (default :func:`euler_sigmas`).
    ``callback(i, t, x)`` sees each new x. Returns x_0 (with ``return_trajectory``: also the list of
    every x, [steps + 1] tensors like ``noise``).
    """
    sigmas = euler_sigmas(num_inference_steps, shift, num_train_timesteps) if sigmas is None else sigmas
    x = noise
    path = [x]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        ts = torch.full((x.shape[0],), s * num_train_timesteps, dtype=torch.float32, device=x.device)
        x = euler_step(model_fn(x, ts), x, s, s_next)
        if return_trajectory:
            path.append(x)
        if callback is not None:
            callback(i, s_next, x)
    return (x, path) if return_trajectory else x


@torch.no_grad()
def reflow_pairs(model_fn, noise: torch.Tensor, num_inference_steps: int = 100, **kw) -> torch.Tensor:
    """Rectified flow's second round (Liu et al. 2023): the model's own outputs x̂_0 for ``noise``
    (Euler, ``num_inference_steps``). ``(x̂_0, noise)`` are the coupled pairs that
    :func:`flow_matching_loss` then trains on (``noise=``): the lines between them no longer cross, so
    the new flow is straighter and takes fewer steps (chapter 08 does the same with a text-to-image
    pipeline: its pictures for given starting noise)."""
    return sample_euler(model_fn, noise, num_inference_steps, **kw)


# --------------------------------------------------------------------------------------------
# The 2-D toy: two moons to a Gaussian
# --------------------------------------------------------------------------------------------
def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.06) -> torch.Tensor:
    """``n`` points [n, 2] of two interleaved half circles, scaled to about [-1.5, 1.5] x [-1, 1]."""
    n = arguments.positive_int(n, "n")
    upper = torch.rand(n, generator=generator) < 0.5
    a = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.4                                 # [n, 2]
    return pts + noise * torch.randn(pts.shape, generator=generator)


class ToyNet(nn.Module):
    """A small MLP for 2-D points: ``forward(x [n, 2], timesteps [n]) -> [n, 2]`` (a velocity for flow
    matching, ε for the DDPM). The time enters as a few sine/cosine features of timesteps / 1000."""

    def __init__(self, hidden: int = 128, layers: int = 3, frequencies: int = 8):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(frequencies) * math.pi)  # [f]
        dims = [2 + 2 * frequencies] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        tt = (timesteps.float() / 1000).reshape(-1, 1) * self.freqs                 # [n, f]
        return self.net(torch.cat([x, tt.sin(), tt.cos()], 1))                     # [n, 2]


def train_toy(objective: str = "flow", steps: int = 2000, pairs: tuple | None = None, batch_size: int = 256,
              lr: float = 2e-3, n_points: int = 20000, seed: int = 0, progress: bool = False):
    """Train a :class:`ToyNet` on two moons (seconds on a CPU) with the course's one training loop.

    ``objective``: ``"flow"`` (flow matching, fresh noise for every point) or ``"ddpm"`` (chapter
    04's ε-prediction loss, linear schedule, T = 1000). ``pairs``: ``(x0, noise)`` tensors [N, 2] to
    train flow matching on coupled pairs instead (reflow). Returns ``(model, history)``.
    """
    arguments.choice(objective, ("flow", "ddpm"), "objective")
    if pairs is not None and objective != "flow":
        raise ValueError("pairs (reflow) train flow matching: use objective='flow'")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyNet()
    if pairs is None:
        data = torch.utils.data.TensorDataset(two_moons(n_points, g))
    else:
        data = torch.utils.data.TensorDataset(*pairs)
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod

    def loss_fn(m, batch):
        if objective == "ddpm":
            return diffusion.diffusion_loss(m, batch[0], ac, "epsilon", generator=g)
        return flow_matching_loss(m, batch[0], noise=batch[1] if pairs is not None else None, generator=g)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
    hist = training.fit(training.make_step(model, loss_fn, opt, scheduler=sched),
                        training.infinite_loader(data, batch_size, seed=seed), steps=steps,
                        desc=f"toy {objective}", progress=progress)
    return model.eval(), hist


@torch.no_grad()
def toy_trajectories(model: ToyNet, objective: str = "flow", n: int = 500, num_inference_steps: int = 100,
                     seed: int = 0, flow_coordinates: bool = False) -> torch.Tensor:
    """Paths [steps + 1, n, 2] from the same ``n`` noise points (drawn with ``seed``) to the data:
    Euler steps on the learned flow (``"flow"``), or DDIM with η = 0 (``"ddpm"``), Euler's method on
    the DDPM's probability-flow ODE in its own variables (Song et al. 2021). ``flow_coordinates``: the
    DDPM's points z rescaled to z / (α + σ), where the straight path has the same noisy pictures."""
    arguments.choice(objective, ("flow", "ddpm"), "objective")
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed))
    if objective == "flow":
        return torch.stack(sample_euler(model, noise, num_inference_steps, return_trajectory=True)[1])
    path = [noise]
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod
    diffusion.sample_ddim(model, (n, 2), ac, num_inference_steps, generator=torch.Generator().manual_seed(seed),
                          callback=lambda t, x, x0: path.append(x))
    path = torch.stack(path)                                                # [steps + 1, n, 2]
    if flow_coordinates:
        visited = diffusion.inference_timesteps(len(ac), num_inference_steps)
        abar = torch.tensor([float(ac[t]) for t in visited] + [1.0], dtype=torch.float64)
        path = path * flow_time(abar)[1].view(-1, 1, 1).to(path.dtype)
    return path


def straightness(path: torch.Tensor) -> float:
    """How far a set of paths [steps + 1, n, d] bends: the mean of (length along the path) / (distance
    from its start to its end). 1 is a straight line; the more above 1, the more Euler steps it needs."""
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)                     # [n]
    chord = (path[-1] - path[0]).norm(dim=-1).clamp(min=1e-8)               # [n]
    return float((length / chord).mean())


def distance_to(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance from each point [n, 2] to its nearest reference point [m, 2] (0: on the data)."""
    return float(torch.cdist(points, reference).min(1).values.mean())


# --------------------------------------------------------------------------------------------
# Digits: flow matching against DDPM/DDIM, chapter 04's network and training budget
# --------------------------------------------------------------------------------------------
DIGITS_CONFIG = {"prediction_type": PREDICTION_TYPE}     # chapter 04's DigitDenoiser, trained on velocities
DIGIT_SAMPLERS = ("euler", "ddim", "dpm++", "ddpm")


@torch.no_grad()
def sample_digits(model, labels=None, n: int = 64, guidance_scale: float = 1.0, num_inference_steps: int = 20,
                  seed: int = 0, shift: float = 1.0) -> torch.Tensor:
    """Digits [n, 1, 28, 28] in [0, 1] from a flow-matching ``DigitDenoiser`` with the hand-written
    Euler sampler (``labels``: one digit each, else ``n`` unconditional ones; classifier-free guidance
    as chapter 04's DDPM). The noise is ``torch.randn`` of a generator seeded with ``seed``, as there."""
    from .models import ddpm

    model.eval()
    dev = next(model.parameters()).device
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = len(labels)
    noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).to(dev)
    x = sample_euler(ddpm.model_fn(model, labels, guidance_scale), noise, num_inference_steps, shift=shift)
    return diffusion.to_image_range(x.float()).cpu()


def judge_digits(model, sampler: str = "euler", num_inference_steps: int = 20, n: int = 500,
                 guidance_scale: float = 2.0) -> dict:
    """The mnist-classifier's view of a digit model at one sampler and number of steps: ``n``
    unconditional digits (mean top-class probability; entropy of the histogram of classes, ln 10 =
    2.303 when balanced) and ``n`` class-conditional ones, n/10 of each digit with guidance
    ``guidance_scale`` (accuracy); ``histogram``: the share of unconditional digits called each class.
    ``sampler``: ``"euler"`` (a flow-matching model, the hand-written
    sampler) or, for an ε-model such as ``ddpm-mnist``, one of diffusers' schedulers with trailing
    timesteps (``"ddim"``, ``"dpm++"``, ``"ddpm"``: :func:`course_lib.sampling.make_scheduler`)."""
    from .judges import score_digits

    arguments.choice(sampler, DIGIT_SAMPLERS, "sampler")
    steps = arguments.positive_int(num_inference_steps, "num_inference_steps")
    labels = torch.arange(10).repeat_interleave(max(1, n // 10))

    def draw(y, w, seed):
        if sampler == "euler":
            return sample_digits(model, y, n, w, steps, seed)
        return samplers.sample_digits(model, y, sampling.make_scheduler(sampler, model), steps, w, seed, n=n)

    uncond = score_digits(draw(None, 1.0, 0))
    cond = score_digits(draw(labels, guidance_scale, 1), labels)
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"sampler": sampler, "steps": steps, "mean_top_prob": r(uncond["mean_top_prob"]),
            "hist_entropy": r(uncond["hist_entropy"]), "histogram": [r(h) for h in uncond["histogram"]],
            "accuracy_guided": r(cond["accuracy"]),
            "mean_top_prob_guided": r(cond["mean_top_prob"]), "n": n}


def digits_per_steps(models: dict, steps=(1, 2, 4, 8, 16, 32), n: int = 500) -> list[dict]:
    """:func:`judge_digits` for each ``name -> (model, sampler)`` at each number of steps: the rows
    of chapter 04's figure (quality per number of sampling steps)."""
    rows = []
    for name, (model, sampler) in models.items():
        for s in steps:
            rows.append({"model": name, **judge_digits(model, sampler, s, n)})
    return rows


DIGIT_SWEEP_STEPS = (1, 2, 4, 8, 16, 32)


def evaluate_digits(model, n: int = 300, steps=DIGIT_SWEEP_STEPS) -> dict:
    """``flow-mnist``'s recorded quality: :func:`judge_digits` per number of Euler steps, and, measured
    in the same run with the same judge and pictures, ``ddpm-mnist`` with DDIM (trailing timesteps)."""
    ddpm_model = pretrained.load("ddpm-mnist", next(model.parameters()).device)
    rows = digits_per_steps({"flow-mnist": (model, "euler"), "ddpm-mnist": (ddpm_model, "ddim")}, steps, n)
    keys = ("mean_top_prob", "hist_entropy", "accuracy_guided")
    pick = lambda name: {r["steps"]: {k: r[k] for k in keys} for r in rows if r["model"] == name}  # noqa: E731
    return {"per_steps_euler": pick("flow-mnist"), "ddpm_mnist_per_steps_ddim": pick("ddpm-mnist"), "n": n,
            "guidance_scale": 2.0}


def _build_digit_model(config: dict):
    from .models.ddpm import DigitDenoiser

    return DigitDenoiser(config)


def train_digits(seed: int = 0, quick: bool = False) -> pretrained.TrainResult:
    """``flow-mnist``: chapter 04's DDPM recipe (``ddpm-mnist``: network, data, steps, batch, optimiser,
    EMA, class dropout) with the flow-matching loss instead of the ε loss. ``quick``: 20 steps."""
    from .models import ddpm

    hp = ddpm.DDPMTrainConfig()
    steps = 20 if quick else hp.steps
    evaluate = (lambda m: evaluate_digits(m, n=20, steps=(1, 4))) if quick else evaluate_digits
    # a long run on a CPU: resumable (stopped, the same command continues from the last saved step)
    state = None if quick else runtime.cache_dir() / "resume" / f"flow-mnist-seed{seed}.pt"
    return pretrained.run_recipe(
        lambda: ddpm.train_ddpm(config=DIGITS_CONFIG, steps=steps, seed=seed, progress=False, state_file=state),
        evaluate,
        notes=lambda h, _: (f"{h.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr}, EMA {hp.ema_decay}, "
                            f"class dropout {hp.class_dropout}: ddpm-mnist's recipe with the flow-matching loss "
                            f"(uniform t, velocity target ε - x0); resumable, train_loop_seconds counts every "
                            f"session"))


pretrained.register("flow-mnist", build=_build_digit_model, train=train_digits, evaluate=evaluate_digits,
                    chapter="04", description="Flow matching on MNIST-5k: ddpm-mnist's UNet2DModel and budget, "
                                              "velocity loss, Euler sampler; class-conditional with CFG")
