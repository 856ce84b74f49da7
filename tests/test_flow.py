"""Chapter 04: flow matching. The straight path and its velocity, the conversions to the other
parameterisations, and the hand-written Euler sampler against diffusers' FlowMatchEulerDiscreteScheduler."""
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from course_lib import diffusion, flow, sampling


def toy_velocity(x, timesteps):
    """A fixed, deterministic stand-in for a network (same output for both samplers)."""
    t = (timesteps.float() / 1000).view(-1, *([1] * (x.dim() - 1)))
    return 0.5 * x - 0.3 * torch.cos(3 * x + t)


def test_path_ends_at_data_and_noise_and_is_straight():
    x0, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert torch.equal(flow.interpolate(x0, eps, 0.0), x0)
    assert torch.equal(flow.interpolate(x0, eps, 1.0), eps)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    x_t = flow.interpolate(x0, eps, t)
    assert torch.allclose(x_t[2], (x0[2] + eps[2]) / 2)
    # the velocity is the derivative of the path, the same at every t
    h = 1e-3
    numeric = (flow.interpolate(x0.double(), eps.double(), t.double() + h)
               - flow.interpolate(x0.double(), eps.double(), t.double() - h)) / (2 * h)
    assert torch.allclose(numeric, flow.velocity_target(x0, eps).double(), atol=1e-8)


def test_flow_matching_loss_is_the_mse_to_the_velocity():
    x0 = torch.randn(16, 2)
    g = torch.Generator().manual_seed(0)
    loss, parts = flow.flow_matching_loss(lambda x, ts: torch.zeros_like(x), x0, generator=g, return_parts=True)
    eps = parts["target"] + x0
    assert torch.allclose(parts["x_t"], flow.interpolate(x0, eps, parts["t"]), atol=1e-6)
    assert math.isclose(loss.item(), (parts["target"] ** 2).mean().item(), rel_tol=1e-6)
    # a network that outputs the exact velocity has zero loss; the timesteps it gets are 1000 t
    seen = {}

    def oracle(x, ts):
        seen["ts"] = ts
        return parts["target"]
    g = torch.Generator().manual_seed(0)
    assert flow.flow_matching_loss(oracle, x0, generator=g).item() < 1e-12
    assert torch.allclose(seen["ts"], 1000 * parts["t"])


def test_diffusion_loss_with_flow_prediction_is_flow_matching():
    """Chapter 04's and chapter 05's training steps train flow matching when the config says so."""
    x0 = torch.randn(8, 1, 4, 4)
    net = lambda x, ts: 0.1 * x  # noqa: E731
    ac = diffusion.NoiseSchedule.make("linear").alphas_cumprod
    a = diffusion.diffusion_loss(net, x0, ac, "flow_prediction", generator=torch.Generator().manual_seed(3))
    b = flow.flow_matching_loss(net, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = diffusion.diffusion_loss(net, x0, ac, "flow_prediction", generator=torch.Generator().manual_seed(3),
                                 time_sampling="logit-normal")
    d = flow.flow_matching_loss(net, x0, generator=torch.Generator().manual_seed(3), time_sampling="logit-normal")
    assert torch.equal(c, d) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="flow matching"):
        diffusion.diffusion_loss(net, x0, ac, "epsilon", time_sampling="logit-normal")


def test_reflow_pairs_keep_their_noise():
    noise = torch.randn(10, 2)
    g = torch.Generator().manual_seed(0)
    x0 = flow.reflow_pairs(toy_velocity, noise, 4)
    assert torch.allclose(x0, flow.sample_euler(toy_velocity, noise, 4), atol=1e-6)
    loss, parts = flow.flow_matching_loss(lambda x, ts: x, x0, noise=noise, generator=g, return_parts=True)
    assert torch.allclose(parts["target"], noise - x0)


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    u = flow.sample_time(20000, g, "uniform")
    ln = flow.sample_time(20000, g, "logit-normal")
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(ln.median() - 0.5) < 0.01 and ((ln - 0.5).abs() < 0.25).float().mean() > 0.6
    with pytest.raises(ValueError, match="uniform"):
        flow.sample_time(4, g, "cosine")


# --------------------------------------------------------------------------------------------
# the same noisy picture, four parameterisations
# --------------------------------------------------------------------------------------------
def test_velocity_gives_back_data_and_noise():
    x0, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.tensor([0.05, 0.4, 0.6, 0.95])
    x_t = flow.interpolate(x0, eps, t)
    u = flow.velocity_target(x0, eps)
    x0_hat, eps_hat = flow.x0_and_noise(u, x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)
    assert torch.allclose(flow.velocity_from(eps, x_t, t, "epsilon"), u, atol=1e-4)
    assert torch.allclose(flow.velocity_from(x0, x_t, t, "sample"), u, atol=1e-4)
    with pytest.raises(ValueError, match="epsilon"):
        flow.velocity_from(x0, x_t, t, "v_prediction")


@pytest.mark.parametrize("step", [1, 250, 500, 900, 999])
def test_variance_preserving_point_is_a_rescaled_flow_point_and_v_converts(step):
    """z = α x0 + σ ε (chapter 04's DDPM, cosine schedule) is the flow point at t = σ/(α+σ), scaled by
    α + σ; a v-prediction converts to the velocity and back."""
    ac = diffusion.NoiseSchedule.make("cosine").alphas_cumprod
    x0, eps = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    z = diffusion.q_sample(x0, step, eps, ac)
    t, scale = flow.flow_time(ac[step])
    assert torch.allclose(scale * z, flow.interpolate(x0, eps, t), atol=1e-10)
    v = diffusion.v_target(x0, eps, step, ac)
    u = flow.velocity_from_v(v, z, ac[step])
    assert torch.allclose(u, eps - x0, atol=1e-8)
    assert torch.allclose(flow.v_from_velocity(u, scale * z, t), v, atol=1e-8)


# --------------------------------------------------------------------------------------------
# the Euler sampler against diffusers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 1.0), (4, 1.0), (20, 1.0), (10, 3.0)])
def test_euler_sigmas_match_diffusers(steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sampling.set_timesteps(sched, steps)
    ours = flow.euler_sigmas(steps, shift)
    assert torch.allclose(ours.float(), sched.sigmas, atol=1e-6)
    assert torch.allclose(1000 * ours[:-1].float(), sched.timesteps, atol=1e-3)
    assert ours[0] == 1.0 and ours[-1] == 0.0


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_every_euler_step_is_a_real_step(steps):
    """n steps are n equal steps from 1 to 0 (the scheduler's own default grid, [1, 0.001, 0] at
    two steps, spends its second call on t = 0.001 -> 0)."""
    gaps = -flow.euler_sigmas(steps).diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / steps))
    sched = FlowMatchEulerDiscreteScheduler()
    sampling.set_timesteps(sched, steps)
    assert sched.sigmas[-2] == pytest.approx(1 / steps)
    sched.set_timesteps(steps)  # diffusers' default spacing: the last step is a sliver
    assert sched.sigmas[-2] == pytest.approx(0.001)


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (8, 1.0), (8, 3.0)])
def test_euler_sampler_matches_flow_match_euler_scheduler(steps, shift):
    noise = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    ours = flow.sample_euler(toy_velocity, noise, steps, shift=shift)
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sampling.set_timesteps(sched, steps)
    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(toy_velocity(x, t.expand(len(x))), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()


def test_euler_one_step_on_a_straight_flow_is_exact():
    """If every line shares one velocity (a single data point), one Euler step lands on the data."""
    target = torch.tensor([[0.3, -0.7]])
    noise = torch.randn(6, 2)
    exact = lambda x, ts: (x - target) / (ts / 1000).view(-1, 1)  # noqa: E731  (the velocity toward target)
    assert torch.allclose(flow.sample_euler(exact, noise, 1), target.expand(6, 2), atol=1e-5)


def test_shift_spends_steps_at_high_noise():
    s = flow.euler_sigmas(10, shift=3.0)
    plain = flow.euler_sigmas(10)
    assert (s[1:-1] > plain[1:-1]).all()
    assert torch.allclose(flow.shift_sigmas(plain, 1.0), plain)
    with pytest.raises(ValueError):
        flow.euler_sigmas(0)
    with pytest.raises(TypeError):
        flow.euler_sigmas(2.5)
