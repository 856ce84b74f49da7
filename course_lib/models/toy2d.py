"""Chapter 04's 2-D toy: two moons to a Gaussian, learned by a DDPM and by flow matching.

A small MLP (:class:`ToyNet`) learns, in seconds on a CPU, either chapter 04's ε-prediction loss or
the flow-matching loss (:mod:`course_lib.flow`) on points of two interleaved half circles. The
chapter then draws the paths from the same noise points to the data (:func:`toy_trajectories`),
measures how much they bend (:func:`straightness`) and how close their ends land to the data
(:func:`distance_to`), before and after one round of reflow (:func:`course_lib.flow.reflow_pairs`).
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
    pictures."""
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
        visited = diffusion.inference_timesteps(len(ac), num_inference_steps)
        abar = torch.tensor([float(ac[t]) for t in visited] + [1.0], dtype=torch.float64)
        path = path * flow.flow_time(abar)[1].view(-1, 1, 1).to(path.dtype)
    return path


def straightness(path: torch.Tensor) -> float:
    """How far a set of paths [steps + 1, n, d] bends: the mean of (length along the path) /
    (distance from its start to its end). 1 is a straight line; the more above 1, the more Euler
    steps it needs."""
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)  # [n]
    chord = (path[-1] - path[0]).norm(dim=-1).clamp(min=1e-8)  # [n]
    return float((length / chord).mean())


def distance_to(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance from each point [n, 2] to its nearest reference point [m, 2]
    (0: on the data)."""
    return float(torch.cdist(points, reference).min(1).values.mean())
