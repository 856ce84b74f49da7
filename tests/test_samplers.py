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


def test_paired_kid_jackknife_matches_the_estimator_and_a_brute_force_jackknife():
    from course_lib import metrics, sample_quality

    g = torch.Generator().manual_seed(0)
    n, d, copies = 9, 5, 3
    fake = torch.randn(n, d, generator=g, dtype=torch.float64)
    real = torch.randn(copies * n, d, generator=g, dtype=torch.float64) + 0.3

    def est(r, f):
        m = len(f)
        return sum(metrics.paired_kernel_distance(r[j * m:(j + 1) * m], f, standardise=False)
                   for j in range(copies)) / copies

    value, se = sample_quality.paired_kid_jackknife(real, fake)
    assert abs(value - est(real, fake)) < 1e-10
    keep = [torch.tensor([k for k in range(n) if k != i]) for i in range(n)]
    loo = torch.tensor([est(torch.cat([real[j * n:(j + 1) * n][kk] for j in range(copies)]), fake[kk])
                        for kk in keep], dtype=torch.float64)
    want = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    assert abs(se - want) < 1e-10 and se > 0
    with pytest.raises(ValueError):
        sample_quality.paired_kid_jackknife(real[:-1], fake)             # not whole copies


def _row(sampler, steps, acc, kid, se, ms):
    return {"sampler": sampler, "steps": steps, "accuracy": acc, "kid": kid, "kid_se": se,
            "ms_per_picture": ms}


def test_matched_quality_needs_accuracy_and_kid_to_match():
    rows = [_row("ddpm", 1000, 1.0, 4.0, 2.0, 1000.0),
            _row("ddim", 2, 1.0, 800.0, 30.0, 2.0),        # accuracy saturates, KID far worse
            _row("ddim", 8, 0.97, 6.0, 2.0, 8.0),          # KID fine, accuracy 3 points below
            _row("ddpm", 16, 1.0, 9.0, 2.0, 16.0),         # gap 5 <= 2 * sqrt(8) = 5.66
            _row("ddpm", 32, 1.0, 4.5, 2.0, 32.0)]
    assert samplers.fastest_within(rows, 2.0, ("ddpm", 1000))["steps"] == 2
    best = samplers.matched_quality(rows, ("ddpm", 1000), points=2.0, z=2.0)
    assert (best["sampler"], best["steps"]) == ("ddpm", 16)
    assert best["speedup"] == pytest.approx(1000 / 16) and best["kid_gap"] == pytest.approx(5.0)
    assert best["kid_allowed"] == pytest.approx(2 * math.hypot(2, 2))
    tight = samplers.matched_quality(rows, ("ddpm", 1000), points=2.0, z=1.0)
    assert tight["steps"] == 32
    assert samplers.matched_quality(rows[:3], ("ddpm", 1000), points=2.0) is None
    nan = [rows[0], _row("ddim", 4, 1.0, 4.0, float("nan"), 4.0)]
    assert samplers.matched_quality(nan, ("ddpm", 1000)) is None, "an unknown SE never matches"
    with pytest.raises(ValueError):
        samplers.matched_quality(rows, ("ddpm", 1000), z=0)
    with pytest.raises(ValueError):
        samplers.matched_quality([{k: v for k, v in r.items() if k != "kid_se"} for r in rows])


def test_euler_step_v_is_diffusers_euler_and_drives_the_pipeline(pipe):
    sched = sampling.make_scheduler("euler", pipe)
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(x.shape, generator=g)
        sched.scale_model_input(x, t)
        want = sched.step(v, t, x).prev_sample
        got = samplers.euler_step_v(v, float(sched.sigmas[i]), float(sched.sigmas[i + 1]), x)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max())), i
        x = want
    caps = shapes.all_captions("train")[::90]
    ours = samplers.generate(pipe, caps, "euler", 3, scheduler=samplers.euler_scheduler(pipe))
    theirs = samplers.generate(pipe, caps, "euler", 3)
    assert (ours - theirs).abs().max() < 1e-4
    zero = samplers.euler_scheduler(pipe, lambda v, s, s_next, x: torch.zeros_like(x))
    assert samplers.generate(pipe, caps, "euler", 2, scheduler=zero).std() < 1e-6, "step_fn is used"
    with pytest.raises(TypeError):
        samplers.euler_scheduler(pipe, step_fn=3)


def test_sweep_rows_carry_a_kid_standard_error(pipe):
    caps = shapes.all_captions("train")[::45]                                          # 6 captions
    ref = samplers.reference_set(pipe, caps, per_target=2)
    q = samplers.quality(pipe, samplers.generate(pipe, caps, "ddim", 1), caps, ref)
    assert q["kid_se"] > 0 and math.isfinite(q["kid"])


@pytest.mark.parametrize("name", ["ddim", "dpm++", "euler"])
def test_one_step_pictures_are_finite_and_in_0_1(pipe, digits, name):
    """A single step from pure noise lands far from the data; the pictures every KID is computed
    on are still clamped to [0, 1], for a v-predicting and a noise-predicting model."""
    for model, targets in ((pipe, shapes.all_captions("train")[::90]), (digits, [0, 3, 7])):
        x = samplers.generate(model, targets, name, 1)
        assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, (name, x.min(), x.max())
