"""Chapter 08: the sampler factory, the sampling loops and the sweep, against diffusers and chapter 04."""
import math

import pytest
import torch

from course_lib import diffusion, pretrained, samplers, sampling
from course_lib.data import shapes
from course_lib.models import ddpm


@pytest.fixture(scope="module")
def pipe():
    return pretrained.load("shapes-t2i", "cpu")


@pytest.fixture(scope="module")
def digits():
    return pretrained.load("ddpm-mnist", "cpu")


CONFIGS = {"shapes-t2i": {"schedule": "cosine", "num_train_timesteps": 1000, "prediction_type": "v_prediction"},
           "ddpm-mnist": {"schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon"}}


@pytest.mark.parametrize("model", sorted(CONFIGS))
@pytest.mark.parametrize("name", sampling.SAMPLERS + sampling.STOCHASTIC_SAMPLERS)
def test_factory_reproduces_the_models_schedule(model, name):
    cfg = CONFIGS[model]
    s = sampling.make_scheduler(name, cfg)
    ours = diffusion.NoiseSchedule.make(cfg["schedule"], 1000).alphas_cumprod.float()
    assert torch.allclose(s.alphas_cumprod, ours, atol=1e-6)
    assert s.config.prediction_type == cfg["prediction_type"]
    if name in ("ddpm", "ddim"):
        assert s.config.clip_sample == (cfg["prediction_type"] == "epsilon" and name == "ddpm")
    s.set_timesteps(1)
    assert int(s.timesteps[0]) == 999, "trailing spacing: one step starts from pure noise at t = T - 1"
    s.set_timesteps(4)
    assert int(s.timesteps[0]) == 999 and len(s.timesteps) == 4


def test_factory_reads_a_pipeline_and_a_model(pipe, digits):
    assert sampling.schedule_of(pipe) == CONFIGS["shapes-t2i"]
    assert sampling.schedule_of(digits) == CONFIGS["ddpm-mnist"]
    with pytest.raises(ValueError):
        sampling.make_scheduler("heun", pipe)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_handwritten_ddim_eta_step_matches_diffusers_with_v_prediction(eta):
    """Chapter 04's ddim_step, with η, on the shapes-t2i schedule (cosine, v, trailing timesteps)."""
    cfg = CONFIGS["shapes-t2i"]
    sched = sampling.make_scheduler("ddim", cfg)
    n = 10
    sched.set_timesteps(n)
    ac = diffusion.NoiseSchedule.make("cosine").alphas_cumprod
    assert torch.allclose(ac.float(), sched.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    for t in sched.timesteps[:4]:
        out = torch.randn(x.shape, generator=g)
        z = torch.randn(x.shape, generator=g)
        theirs = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        prev = int(t) - 1000 // n                      # the step DDIMScheduler takes
        ours = diffusion.ddim_step(out, int(t), x, ac, prev, prediction_type="v_prediction", eta=eta, noise=z)
        # diffusers computes in float32, ours in float64: at t = 999 (ᾱ = 2e-9, η = 1) the coefficient
        # sqrt(1 - ᾱ_prev - σ²) cancels to ~0 and float32 rounding leaves up to ~1e-4 there
        assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), (eta, int(t))
        x = theirs


def test_sample_shapes_is_the_pipelines_loop(pipe):
    caps = shapes.all_captions("train")[:4]
    want = pipe(caps, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    got = samplers.sample_shapes(pipe, caps, None, 3, seed=0)
    assert torch.equal(got, want)
    seq = samplers.sample_shapes(pipe, caps, None, 3, seed=0, cfg="sequential")
    assert torch.allclose(seq, want, atol=1e-4), "two sequential passes = one batched pass of 2n"
    off = samplers.sample_shapes(pipe, caps, None, 3, seed=0, cfg="off")
    plain = pipe(caps, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images
    assert torch.allclose(off, plain, atol=1e-5)
    assert (off - want).abs().max() > 0.05, "guidance off must change the pictures"


def test_sample_digits_with_diffusers_ddim_matches_chapter_04(digits):
    """The diffusers loop with DDIM ("leading" spacing, as chapter 04) = the hand-written DDIM sampler."""
    labels = torch.tensor([0, 3, 7])
    sched = sampling.make_scheduler("ddim", digits, spacing="leading")
    ours = ddpm.sample_digits(digits, labels, sampler=sched, num_inference_steps=4, seed=0)
    ch04 = ddpm.sample_digits(digits, labels=labels, sampler="ddim", num_inference_steps=4, seed=0)
    assert torch.allclose(ours, ch04, atol=1e-4)
    w2 = ddpm.sample_digits(digits, labels, sampler=sched, num_inference_steps=4, guidance_scale=2.0,
                            seed=0)
    ch04_w2 = ddpm.sample_digits(digits, labels=labels, guidance_scale=2.0, sampler="ddim", num_inference_steps=4,
                                 seed=0)
    assert torch.allclose(w2, ch04_w2, atol=1e-4)
    uncond = ddpm.sample_digits(digits, None, 2, sampler=sched, num_inference_steps=4, seed=0)
    assert torch.allclose(uncond, ddpm.sample_digits(digits, n=2, sampler="ddim", num_inference_steps=4, seed=0),
                          atol=1e-4)


def test_paired_mmd_is_zero_for_identical_sets_and_grows_with_a_shift():
    from course_lib import metrics

    a = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def mmd(x, y):
        return metrics.paired_kernel_distance(x, y, standardise=False)
    assert abs(mmd(a, a)) < 1e-9
    assert mmd(a, a + 0.5) > mmd(a, a + 0.1) > 0


def test_tiny_sweep_returns_the_expected_rows(pipe):
    caps = shapes.all_captions("train")[::45]                                          # 6 captions
    rows = samplers.sweep(pipe, caps, samplers=("ddim", "dpm++"), steps=(1, 2), baseline_steps=4, repeats=1,
                          progress=False)
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 4), ("ddim", 1), ("ddim", 2), ("dpm++", 1),
                                                           ("dpm++", 2)]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and math.isfinite(r["kid"]) and r["ms_per_picture"] > 0 and r["n"] == 6
    one, two = rows[1], rows[2]
    assert two["kid"] < one["kid"], "two DDIM steps must look more real than one"
    best = samplers.fastest_within(rows, points=100, baseline=("ddpm", 4))
    assert best["ms_per_picture"] == min(r["ms_per_picture"] for r in rows[1:])
    table = samplers.format_table(rows, ("ddpm", 4))
    assert "DPM-Solver++" in table and len(table.splitlines()) == 6


def test_sweep_without_baseline_adds_only_the_asked_rows(pipe):
    caps = shapes.all_captions("train")[::90]                                          # 3 captions
    rows = samplers.sweep(pipe, caps, samplers=("dpm++sde",), steps=(2,), baseline_steps=None, repeats=1,
                          progress=False)
    assert [(r["sampler"], r["steps"]) for r in rows] == [("dpm++sde", 2)]


def test_euler_ancestral_is_ddpm_written_in_sigma(pipe):
    """The two stochastic samplers' bookkeeping differs (σ against ᾱ), the step is the same: with the
    same noise draws they give the same pictures (v-prediction, so DDPM does not clip x̂_0)."""
    caps = shapes.all_captions("train")[::60]                                          # 5 captions
    for k in (2, 8):
        a = samplers.generate(pipe, caps, "euler-a", k, seed=3)
        b = samplers.generate(pipe, caps, "ddpm", k, seed=3)
        assert (a - b).abs().max() < 2e-3, k
    ode = samplers.generate(pipe, caps, "euler", 8, seed=3)
    assert (ode - b).abs().max() > 0.05, "the ODE sampler must differ from the ancestral one"


def test_sde_solver_is_stochastic_and_seeded(pipe):
    caps = shapes.all_captions("train")[::90]
    a = samplers.generate(pipe, caps, "dpm++sde", 4, seed=0)
    assert torch.equal(a, samplers.generate(pipe, caps, "dpm++sde", 4, seed=0))
    assert not torch.allclose(a, samplers.generate(pipe, caps, "dpm++sde", 4, seed=1), atol=1e-3)
    ode = samplers.generate(pipe, caps, "dpm++", 4, seed=0)
    assert (a - ode).abs().max() > 0.05, "fresh noise every step must change the picture"


def test_cfg_cost_rows(pipe):
    caps = shapes.all_captions("train")[:4]
    rows = samplers.cfg_cost(pipe, caps, steps=2, repeats=1)
    assert [r["cfg"] for r in rows] == ["batched", "sequential", "off"]
    assert rows[2]["ratio_to_off"] == 1.0
    assert all(r["ms_per_picture"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows)
