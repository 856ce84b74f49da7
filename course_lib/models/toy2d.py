"""Chapter 04's 2-D toy: two moons to a Gaussian, learned by a DDPM and by flow matching.

A small MLP (:class:`ToyNet`) learns, in seconds on a CPU, either chapter 04's ε-prediction loss or
the flow-matching loss (:mod:`course_lib.flow`) on points of two interleaved half circles. The
chapter then draws the paths from the same noise points to the data (:func:`toy_trajectories`,
at the flow times :func:`path_times`), measures how much they bend (:func:`straightness`, Liu et
al.'s straightness integral), how often the straight lines between training pairs cross
(:func:`crossing_fraction`) and how close the paths' ends land to the data (:func:`distance_to`),
before and after one round of reflow (:func:`course_lib.flow.reflow_pairs`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import arguments, diffusion, flow, runtime, training


# --------------------------------------------------------------------------------------------
def two_moons(
    n: int, generator: torch.Generator | None = None, noise: float = 0.06
) -> torch.Tensor:
    """``n`` points [n, 2] of two interleaved half circles, scaled to about [-1.5, 1.5] x
    [-1, 1]."""
    n = arguments.positive_int(n, "n")
    upper = torch.rand(n, generator=generator) < 0.5
    a = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.4  # [n, 2]
    return pts + noise * torch.randn(pts.shape, generator=generator)


class ToyNet(nn.Module):
    """A small MLP for 2-D points: ``forward(x [n, 2], timesteps [n]) -> [n, 2]`` (a velocity for
    flow matching, ε for the DDPM). The time enters as a few sine/cosine features of
    timesteps / 1000."""

    def __init__(self, hidden: int = 128, layers: int = 3, frequencies: int = 8):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(frequencies) * math.pi)  # [f]
        dims = [2 + 2 * frequencies] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        tt = (timesteps.float() / 1000).reshape(-1, 1) * self.freqs  # [n, f]
        return self.net(torch.cat([x, tt.sin(), tt.cos()], 1))  # [n, 2]


def train_toy(
    objective: str = "flow",
    steps: int = 2000,
    pairs: tuple | None = None,
    batch_size: int = 256,
    lr: float = 2e-3,
    n_points: int = 20000,
    seed: int = 0,
    progress: bool = False,
):
    """Train a :class:`ToyNet` on two moons (seconds on a CPU) with the course's one training loop.

    ``objective``: ``"flow"`` (flow matching, fresh noise for every point) or ``"ddpm"`` (chapter
    04's ε-prediction loss, linear schedule, T = 1000). ``pairs``: ``(x0, noise)`` tensors [N, 2] to
    train flow matching on coupled pairs instead (reflow). Returns ``(model, history)``.
    """
    arguments.choice(objective, ("flow", "ddpm"), "objective")
    if pairs is not None and objective != "flow":
        raise ValueError("pairs (reflow) train flow matching: use objective='flow'")
    g = torch.Generator().manual_seed(seed)
    if pairs is None:
        data = torch.utils.data.TensorDataset(two_moons(n_points, g))
    else:
        data = torch.utils.data.TensorDataset(*pairs)
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod

    def loss_fn(m, batch):
        if objective == "ddpm":
            return diffusion.diffusion_loss(m, batch[0], ac, "epsilon", generator=g)
        noise = batch[1] if pairs is not None else None
        return flow.flow_matching_loss(m, batch[0], noise=noise, generator=g)

    with runtime.seeded(seed):  # the initial weights
        model = ToyNet()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
        hist = training.fit(
            training.make_step(model, loss_fn, opt, scheduler=sched),
            training.infinite_loader(data, batch_size, seed=seed),
            steps=steps,
            desc=f"toy {objective}",
            progress=progress,
        )
    return model.eval(), hist


def path_times(objective: str = "flow", num_inference_steps: int = 100) -> torch.Tensor:
    """The flow times t (1: noise, 0: data) of the points :func:`toy_trajectories` returns, float64
    [steps + 1]: the Euler grid (:func:`course_lib.flow.euler_sigmas`) for ``"flow"``; for
    ``"ddpm"``, the flow time t = σ / (α + σ) (:func:`course_lib.flow.flow_time`) of each DDIM
    timestep visited, then 0 for the clean end."""
    arguments.choice(objective, ("flow", "ddpm"), "objective")
    if objective == "flow":
        return flow.euler_sigmas(num_inference_steps)
    return flow.flow_time(_ddim_alphas_cumprod(num_inference_steps))[0]


def _ddim_alphas_cumprod(num_inference_steps: int) -> torch.Tensor:
    """ᾱ at each point of a toy DDIM path, float64 [steps + 1] (1 at the clean end)."""
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod
    visited = diffusion.inference_timesteps(len(ac), num_inference_steps)
    return torch.tensor([float(ac[t]) for t in visited] + [1.0], dtype=torch.float64)


@torch.no_grad()
def toy_trajectories(
    model: ToyNet,
    objective: str = "flow",
    n: int = 500,
    num_inference_steps: int = 100,
    seed: int = 0,
    flow_coordinates: bool = False,
) -> torch.Tensor:
    """Paths [steps + 1, n, 2] from the same ``n`` noise points (drawn with ``seed``) to the data:
    Euler steps on the learned flow (``"flow"``), or DDIM with η = 0 (``"ddpm"``), Euler's method on
    the DDPM's probability-flow ODE in its own variables (Song et al. 2021). ``flow_coordinates``:
    the DDPM's points z rescaled to z / (α + σ), where the straight path has the same noisy
    pictures (their times: :func:`path_times`)."""
    arguments.choice(objective, ("flow", "ddpm"), "objective")
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed))
    if objective == "flow":
        return torch.stack(
            flow.sample_euler(model, noise, num_inference_steps, return_trajectory=True)[1]
        )
    path = [noise]
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod
    diffusion.sample_ddim(
        model,
        (n, 2),
        ac,
        num_inference_steps,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda t, x, x0: path.append(x),
    )
    path = torch.stack(path)  # [steps + 1, n, 2]
    if flow_coordinates:
        scale = flow.flow_time(_ddim_alphas_cumprod(num_inference_steps))[1]  # [steps + 1]
        path = path * scale.view(-1, 1, 1).to(path.dtype)
    return path


def straightness(path: torch.Tensor, times, per_path: bool = False):
    """Liu et al. (2022)'s straightness of a flow, S = E ∫ ||(x_1 - x_0) - v(x_t, t)||² dt over
    t in [0, 1]: how far the velocity along each path strays from the path's average velocity,
    integrated over the whole path (0: straight lines at constant speed, the paths one Euler step
    follows exactly).

    ``path`` [k + 1, n, d]: points at the flow times ``times`` [k + 1] (from 1 to 0, as
    :func:`toy_trajectories` and :func:`path_times` give them). The velocity on each piece is its
    displacement over its time (for Euler steps: exactly the network's velocity there). Returns the
    mean over paths (a float), or with ``per_path`` the value of each path [n] (for an interval)."""
    if not torch.is_tensor(path) or path.dim() != 3 or len(path) < 2:
        raise ValueError("path must be a tensor [steps + 1, n, d] with at least two points")
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.shape != (len(path),):
        raise ValueError(
            f"times must have one value per point of the path ({len(path)}), got "
            f"shape {tuple(times.shape)}"
        )
    dt = times[1:] - times[:-1]  # [k]
    if not bool((dt < 0).all() or (dt > 0).all()):
        raise ValueError("times must run strictly one way (from 1 to 0 for these paths)")
    p = path.double()
    v = (p[1:] - p[:-1]) / dt.view(-1, 1, 1)  # [k, n, d] the velocity on each piece
    mean_v = (p[-1] - p[0]) / (times[-1] - times[0])  # [n, d] x_1 - x_0 over the whole time
    dev = ((v - mean_v) ** 2).sum(-1)  # [k, n]
    per = (dev * dt.abs().view(-1, 1)).sum(0) / (times[-1] - times[0]).abs()  # [n]
    return per.float() if per_path else float(per.mean())


def crossing_fraction(
    start: torch.Tensor, end: torch.Tensor, n_pairs: int = 20_000, seed: int = 0
) -> float:
    """How often the straight segments from ``start[i]`` to ``end[i]`` ([n, 2] each) cross one
    another: the share of ``n_pairs`` random pairs (i, j), i != j, drawn with ``seed``, whose two
    segments intersect (a proper crossing, not a shared end). Independent (data, noise) pairs
    cross often; the pairs of one reflow, far less: the lines chapter 04 draws."""
    if start.dim() != 2 or start.shape[1] != 2 or end.shape != start.shape:
        raise ValueError(
            f"start and end must be point sets [n, 2] of one shape, got {tuple(start.shape)} and "
            f"{tuple(end.shape)}"
        )
    n = len(start)
    if n < 2:
        raise ValueError(f"need at least 2 segments, got {n}")
    n_pairs = arguments.positive_int(n_pairs, "n_pairs")
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (n_pairs,), generator=g)  # [m]
    j = (i + torch.randint(1, n, (n_pairs,), generator=g)) % n  # [m], never i
    a, b, c, d = start[i].double(), end[i].double(), start[j].double(), end[j].double()

    def side(p, q, r):  # sign of the turn p -> q -> r, [m]
        return torch.sign(
            (q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0])
        )

    crosses = (side(a, b, c) * side(a, b, d) < 0) & (side(c, d, a) * side(c, d, b) < 0)
    return float(crosses.double().mean())


def distance_to(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance from each point [n, 2] to its nearest reference point [m, 2]
    (0: on the data)."""
    return float(torch.cdist(points, reference).min(1).values.mean())
