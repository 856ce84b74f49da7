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


def test_straightness_integral_of_straight_and_bent_paths():
    """Liu et al.'s S = E ∫ ||(x_1 - x_0) - v||² dt: 0 for straight lines at constant speed."""
    times = torch.linspace(1, 0, 11, dtype=torch.float64)
    a, b = torch.randn(1, 7, 2), torch.randn(1, 7, 2)
    line = a + (1 - times.float()).view(-1, 1, 1) * (b - a)  # [11, 7, 2] from a (t = 1) to b
    assert toy2d.straightness(line, times) < 1e-10
    # along x for the first half of the time, then along y: v = 2 (dx, 0), then 2 (0, dy)
    corner = torch.cat([a, torch.cat([b[..., :1], a[..., 1:]], -1), b])  # [3, 7, 2]
    d = (b - a)[0].double()  # [7, 2]
    want = float((d**2).sum(-1).mean())  # |(2dx, 0) - (dx, dy)|² = dx² + dy² on each half
    assert abs(toy2d.straightness(corner, [1.0, 0.5, 0.0]) - want) < 1e-5
    per = toy2d.straightness(corner, [1.0, 0.5, 0.0], per_path=True)
    assert per.shape == (7,) and abs(float(per.mean()) - want) < 1e-5
    # a straight line at uneven speed is not straight in S's sense either, and tiny moves count
    # for little (the integral weighs each path by how far it goes, not by a ratio)
    uneven = a + torch.tensor([0.0, 0.9, 1.0]).view(-1, 1, 1) * (b - a)
    assert toy2d.straightness(uneven, [1.0, 0.5, 0.0]) > 0.1 * want
    assert toy2d.straightness(line * 1e-3, times) < 1e-12
    with pytest.raises(ValueError, match="times"):
        toy2d.straightness(line, times[:-1])
    with pytest.raises(ValueError, match="one way"):
        toy2d.straightness(corner, [1.0, 0.0, 0.5])


def test_path_times_match_the_samplers():
    assert torch.allclose(toy2d.path_times("flow", 4), flow.euler_sigmas(4))
    t = toy2d.path_times("ddpm", 5)
    assert t.shape == (6,) and t[-1] == 0 and bool((t[1:] < t[:-1]).all()) and t[0] > 0.9


def test_crossing_fraction():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, generator=gen)
    parallel = torch.stack([x, torch.zeros(200)], 1), torch.stack([x, torch.ones(200)], 1)
    assert toy2d.crossing_fraction(*parallel) == 0.0  # vertical segments never cross
    # start on one line, end on a parallel line, in reversed order: every pair crosses
    flipped = torch.stack([1 - x, torch.ones(200)], 1)
    assert toy2d.crossing_fraction(parallel[0], flipped) == 1.0
    rand_pairs = torch.randn(500, 2, generator=gen), torch.randn(500, 2, generator=gen)
    assert 0.05 < toy2d.crossing_fraction(*rand_pairs, n_pairs=5000) < 0.6
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        toy2d.crossing_fraction(torch.zeros(5, 3), torch.zeros(5, 3))


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_toy_trains_and_draws_paths(objective):
    model, hist = toy2d.train_toy(objective, steps=20, n_points=512, batch_size=64)
    assert hist.steps == 20 and math.isfinite(hist.last())
    path = toy2d.toy_trajectories(model, objective, n=16, num_inference_steps=5)
    assert path.shape == (6, 16, 2)
    start = torch.randn((16, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(path[0], start)
    if objective == "ddpm":
        rescaled = toy2d.toy_trajectories(model, objective, n=16, num_inference_steps=5,
                                          flow_coordinates=True)
        assert torch.allclose(rescaled[-1], path[-1]) and not torch.allclose(rescaled[2], path[2])


def test_reflow_pairs_train_a_straighter_toy_flow():
    """One reflow on the toy: paths closer to straight lines than the first flow's (seconds)."""
    first, _ = toy2d.train_toy("flow", steps=400, n_points=4000)
    noise = torch.randn((4000, 2), generator=torch.Generator().manual_seed(1))
    pairs = (flow.reflow_pairs(first, noise, 50), noise)
    second, _ = toy2d.train_toy("flow", steps=400, pairs=pairs)
    times = toy2d.path_times("flow", 50)
    s1, s2 = (toy2d.straightness(toy2d.toy_trajectories(m, "flow", n=300, num_inference_steps=50),
                                 times) for m in (first, second))
    assert s2 < 0.5 * s1, (s1, s2)
    moons = toy2d.two_moons(4000, torch.Generator().manual_seed(2))
    before = toy2d.crossing_fraction(moons, noise)  # independent pairs
    after = toy2d.crossing_fraction(pairs[0], noise)
    assert after < 0.5 * before, (before, after)
    with pytest.raises(ValueError, match="flow"):
        toy2d.train_toy("ddpm", steps=1, pairs=pairs)
