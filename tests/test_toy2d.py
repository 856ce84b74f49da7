"""Chapter 04's 2-D toy: two moons to a Gaussian, a DDPM against flow matching, and one reflow."""
import math

import pytest
import torch

from course_lib import flow
from course_lib.models import toy2d


def test_two_moons_and_toy_net():
    pts = toy2d.two_moons(1000, torch.Generator().manual_seed(0))
    assert pts.shape == (1000, 2) and pts.abs().max() < 2.5
    net = toy2d.ToyNet()
    assert net(pts[:5], torch.full((5,), 500.0)).shape == (5, 2)


def test_straightness_of_straight_and_bent_paths():
    s = torch.linspace(0, 1, 11).view(-1, 1, 1)
    a, b = torch.randn(1, 7, 2), torch.randn(1, 7, 2)
    assert abs(toy2d.straightness(a + s * (b - a)) - 1.0) < 1e-5
    corner = torch.cat([a, torch.cat([b[..., :1], a[..., 1:]], -1), b])            # along x, then along y
    assert toy2d.straightness(corner) > 1.0


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_toy_trains_and_draws_paths(objective):
    model, hist = toy2d.train_toy(objective, steps=20, n_points=512, batch_size=64)
    assert hist.steps == 20 and math.isfinite(hist.last())
    path = toy2d.toy_trajectories(model, objective, n=16, num_inference_steps=5)
    assert path.shape == (6, 16, 2)
    start = torch.randn((16, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(path[0], start)
    if objective == "ddpm":
        rescaled = toy2d.toy_trajectories(model, objective, n=16, num_inference_steps=5, flow_coordinates=True)
        assert torch.allclose(rescaled[-1], path[-1]) and not torch.allclose(rescaled[2], path[2])


def test_reflow_pairs_train_a_straighter_toy_flow():
    """One reflow on the toy: paths closer to straight lines than the first flow's (seconds)."""
    first, _ = toy2d.train_toy("flow", steps=400, n_points=4000)
    noise = torch.randn((4000, 2), generator=torch.Generator().manual_seed(1))
    pairs = (flow.reflow_pairs(first, noise, 50), noise)
    second, _ = toy2d.train_toy("flow", steps=400, pairs=pairs)
    s1 = toy2d.straightness(toy2d.toy_trajectories(first, "flow", n=300, num_inference_steps=50))
    s2 = toy2d.straightness(toy2d.toy_trajectories(second, "flow", n=300, num_inference_steps=50))
    assert s2 < s1 - 0.1, (s1, s2)
    with pytest.raises(ValueError, match="flow"):
        toy2d.train_toy("ddpm", steps=1, pairs=pairs)
