"""Chapter 04: the forward process, and the hand-written DDPM / DDIM samplers against diffusers."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from course_lib import diffusion



def toy_model(x, t):
    """A fixed, deterministic stand-in for a network (same output for both samplers)."""
    tt = t.float().view(-1, *([1] * (x.dim() - 1))) if torch.is_tensor(t) and t.dim() else float(t)
    return 0.3 * x + 0.1 * torch.sin(x * 3 + torch.as_tensor(tt) / 100)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_match_diffusers(name):
    ours = diffusion.NoiseSchedule.make(name, 1000)
    theirs = DDPMScheduler(**ours.diffusers_kwargs())
    assert torch.allclose(ours.betas.float(), theirs.betas, atol=1e-6)
    assert torch.allclose(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6)
    snr = ours.snr()
    assert (snr[1:] < snr[:-1]).all(), "SNR must fall with t"


def test_q_sample_matches_add_noise():
    s = diffusion.NoiseSchedule.make("linear")
    sched = DDPMScheduler(**s.diffusers_kwargs())
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 100, 500, 900, 999])
    ours = diffusion.q_sample(x0, t, noise, s.alphas_cumprod)
    assert torch.allclose(ours, sched.add_noise(x0, noise, t), atol=1e-5)


@pytest.mark.parametrize("t", [10, 200, 700])
def test_closed_form_matches_step_by_step_chain(t):
    """Same distribution: mean sqrt(ᾱ_t) x0 and variance 1 - ᾱ_t per pixel."""
    s = diffusion.NoiseSchedule.make("linear")
    x0 = torch.tensor([-1.0, -0.5, 0.0, 0.8]).repeat(20000, 1)            # [20000, 4]
    g = torch.Generator().manual_seed(0)
    chain = diffusion.forward_chain(x0.double(), t, s.betas, generator=g)
    closed = diffusion.q_sample(x0.double(), t, torch.randn(x0.shape, generator=g, dtype=torch.float64),
                                s.alphas_cumprod)
    a = float(s.alphas_cumprod[t])
    for x in (chain, closed):
        assert torch.allclose(x.mean(0), math.sqrt(a) * x0[0].double(), atol=0.03)
        assert torch.allclose(x.var(0), torch.full((4,), 1 - a, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions(pt):
    s = diffusion.NoiseSchedule.make("cosine")
    x0, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = 300
    x_t = diffusion.q_sample(x0, t, eps, s.alphas_cumprod)
    target = diffusion.training_target(x0, eps, t, s.alphas_cumprod, pt)
    x0_hat, eps_hat = diffusion.predicted_x0_and_eps(target, x_t, float(s.alphas_cumprod[t]), pt)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n_steps", [1000, 10])
def test_ddpm_step_matches_diffusers(pt, n_steps):
    s = diffusion.NoiseSchedule.make("linear")
    sched = DDPMScheduler(**s.diffusers_kwargs(), prediction_type=pt)
    sched.set_timesteps(n_steps)
    x = torch.randn(2, 1, 6, 6)
    for t in [int(sched.timesteps[0]), int(sched.timesteps[len(sched.timesteps) // 2]), 0]:
        out = toy_model(x, torch.tensor([t, t]))
        theirs = sched.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        prev_t = diffusion.previous_timestep(t, 1000, n_steps)
        ours = diffusion.ddpm_step(out, t, x, s.alphas_cumprod, prev_t=prev_t, prediction_type=pt,
                                   generator=torch.Generator().manual_seed(t))
        assert torch.allclose(ours, theirs, atol=1e-5), (t, (ours - theirs).abs().max())


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(pt, eta):
    s = diffusion.NoiseSchedule.make("cosine")
    sched = DDIMScheduler(**s.diffusers_kwargs(), prediction_type=pt, clip_sample=False)
    sched.set_timesteps(20)
    x = torch.randn(2, 3, 5, 5)
    for t in [int(v) for v in sched.timesteps[::7]] + [0]:
        out = toy_model(x, torch.tensor([t, t]))
        theirs = sched.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(1)).prev_sample
        ours = diffusion.ddim_step(out, t, x, s.alphas_cumprod, t - 1000 // 20, prediction_type=pt, eta=eta,
                                   generator=torch.Generator().manual_seed(1))
        assert torch.allclose(ours, theirs, atol=1e-5), (t, (ours - theirs).abs().max())


def _diffusers_loop(sched, shape, seed, n_steps, **step_kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    sched.set_timesteps(n_steps)
    for t in sched.timesteps:
        out = toy_model(x, torch.full((shape[0],), int(t)))
        x = sched.step(out, t, x, generator=g, **step_kw).prev_sample
    return x


def test_ddpm_sampler_matches_diffusers_loop():
    s = diffusion.NoiseSchedule.make("linear")
    shape = (3, 1, 6, 6)
    theirs = _diffusers_loop(DDPMScheduler(**s.diffusers_kwargs()), shape, 0, 50)
    ours = diffusion.sample_ddpm(toy_model, shape, s.alphas_cumprod, torch.Generator().manual_seed(0),
                                 num_inference_steps=50)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction"])
def test_ddim_sampler_matches_diffusers_loop(pt):
    s = diffusion.NoiseSchedule.make("cosine")
    shape = (3, 3, 4, 4)
    sched = DDIMScheduler(**s.diffusers_kwargs(), prediction_type=pt, clip_sample=False)
    theirs = _diffusers_loop(sched, shape, 3, 25)
    ours = diffusion.sample_ddim(toy_model, shape, s.alphas_cumprod, 25, torch.Generator().manual_seed(3),
                                 prediction_type=pt)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_min_snr_weight_is_bounded():
    s = diffusion.NoiseSchedule.make("cosine")
    t = torch.arange(0, 1000, 50)
    for pt in ("epsilon", "v_prediction"):
        w = diffusion.min_snr_weight(t, s.alphas_cumprod, 5.0, pt)
        assert (w > 0).all() and (w <= 1 + 1e-6).all()


def test_digit_denoiser_trains_and_samples():
    from course_lib.models import ddpm

    model, hist = ddpm.train_ddpm(config={"block_out_channels": [8, 16, 16], "norm_num_groups": 4,
                                          "attention_head_dim": 8}, steps=2, progress=False, batch_size=8)
    assert len(hist.losses) == 2 and all(math.isfinite(v) for v in hist.losses)
    x = ddpm.sample_digits(model, labels=[0, 1, 2], guidance_scale=2.0, num_inference_steps=3)
    assert x.shape == (3, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    x2 = ddpm.sample_digits(model, n=2, sampler="ddpm", num_inference_steps=4)
    assert x2.shape == (2, 1, 28, 28)


def test_train_ddpm_runs_the_loss_it_is_given():
    """Chapter 04 trains with the learner's loss: the same draws give the same run as the default."""
    from course_lib.models import ddpm

    small = dict(config={"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "attention_head_dim": 8},
                 steps=2, progress=False, batch_size=8)
    calls = []

    def mine(model_fn, x0, ac, generator):
        calls.append(x0.shape)
        return diffusion.diffusion_loss(model_fn, x0, ac, generator=generator)

    _, default = ddpm.train_ddpm(**small)
    _, given = ddpm.train_ddpm(loss=mine, **small)
    assert len(calls) == 2 and given.losses == default.losses
    with pytest.raises(TypeError, match="loss must be"):
        ddpm.train_ddpm(loss="mse", **small)
