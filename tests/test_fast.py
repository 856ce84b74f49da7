"""Chapter 08, distillation: the DDIM algebra against diffusers, the progressive-distillation target,
the loop on a tiny model, and the shipped shapes-t2i-fast pipeline (API, determinism, hash, quality)."""
import numpy as np
import pytest
import torch

from course_lib import diffusion, pretrained
from course_lib.data import shapes
from course_lib.models import fast
from course_lib.models import text_to_image as t2i

AC = diffusion.NoiseSchedule.make("cosine", 1000).alphas_cumprod.float()


def _as(t, like):
    return fast.alpha_sigma(torch.as_tensor(t).reshape(-1).expand(len(like)), AC, like)


def test_trailing_grid_is_diffusers_ddim_trailing():
    sched = fast.make_scheduler(t2i.TextToImageConfig())
    for n in (1, 2, 4, 8):
        sched.set_timesteps(n)
        assert fast.trailing_grid(n) == sched.timesteps.tolist()
    assert set(fast.trailing_grid(1)) <= set(fast.trailing_grid(2)) <= set(fast.trailing_grid(4)) <= set(fast.trailing_grid(8))


def test_alpha_sigma_clean_end_and_values():
    x = torch.zeros(3, 3, 4, 4)
    a, s = fast.alpha_sigma(torch.tensor([-1, 0, 999]), AC, x)
    assert a.shape == (3, 1, 1, 1)
    assert a[0].item() == 1.0 and s[0].item() == 0.0
    assert torch.allclose(a[1:].flatten() ** 2 + s[1:].flatten() ** 2, torch.ones(2))
    assert torch.isclose(a[2].flatten() ** 2, AC[999:1000])


@pytest.mark.parametrize("t,prev", [(999, 499), (749, 499), (249, -1)])
def test_ddim_step_v_matches_diffusers(t, prev):
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 12, 16, 16, generator=g), torch.randn(2, 12, 16, 16, generator=g)
    sched = fast.make_scheduler(t2i.TextToImageConfig())
    n = 1000 // (t - prev)
    sched.set_timesteps(n)
    assert t in sched.timesteps.tolist()
    want = sched.step(v, torch.tensor(t), z).prev_sample
    a_t, s_t = _as(t, z)
    a_s, s_s = _as(prev, z)
    assert torch.allclose(fast.ddim_step_v(v, z, a_t, s_t, a_s, s_s), want, atol=1e-5)


def test_target_makes_one_step_land_where_two_teacher_steps_land():
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn(4, 3, 8, 8, generator=g)
    t, mid, end = 749, 624, 499
    a_t, s_t = _as(t, z_t)
    a_m, s_m = _as(mid, z_t)
    a_e, s_e = _as(end, z_t)
    # an arbitrary (wrong) teacher: two DDIM steps with random v's
    z_m = fast.ddim_step_v(torch.randn(z_t.shape, generator=g), z_t, a_t, s_t, a_m, s_m)
    z_e = fast.ddim_step_v(torch.randn(z_t.shape, generator=g), z_m, a_m, s_m, a_e, s_e)
    x_tilde = fast.distillation_target(z_t, z_e, a_t, s_t, a_e, s_e)
    assert x_tilde.shape == z_t.shape
    v = fast.v_from_x0(x_tilde, z_t, a_t, s_t)
    assert torch.allclose(fast.ddim_step_v(v, z_t, a_t, s_t, a_e, s_e), z_e, atol=1e-4)


def test_target_recovers_x0_from_an_exact_teacher():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    for t, mid, end in [(999, 749, 499), (499, 249, -1), (999, 499, -1)]:
        a_t, s_t = _as(t, x0)
        a_m, s_m = _as(mid, x0)
        a_e, s_e = _as(end, x0)
        z_t = a_t * x0 + s_t * eps
        # the exact teacher knows x0: its v at any point on the path is the one that predicts x0
        z_m = fast.ddim_step_v(fast.v_from_x0(x0, z_t, a_t, s_t), z_t, a_t, s_t, a_m, s_m)
        z_e = fast.ddim_step_v(fast.v_from_x0(x0, z_m, a_m, s_m), z_m, a_m, s_m, a_e, s_e)
        assert torch.allclose(fast.distillation_target(z_t, z_e, a_t, s_t, a_e, s_e), x0, atol=2e-3), (t, end)
    # at the clean end the target is the teacher's end point itself
    z = torch.randn(2, 3, 4, 4, generator=g)
    a_t, s_t = _as(499, z)
    one, zero = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    assert torch.allclose(fast.distillation_target(z, 3 * z, a_t, s_t, one, zero), 3 * z)


TINY = {"fold": 2, "text": {"dim": 16, "layers": 1, "heads": 2},
        "unet": {"block_out_channels": [8, 16], "attention_head_dim": 8, "norm_num_groups": 4}}


def test_distill_loop_runs_and_configures_the_student():
    torch.manual_seed(0)
    teacher = t2i.TextToImageModel(TINY).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []
    student, log = fast.distill(teacher, device="cpu", progress=False, steps_guided=2, steps_per_round=1,
                             rounds=[2, 1], n_train=16, batch_size=4,
                             after_stage=lambda name, m: seen.append(name) or {"x": 1})
    assert [s["stage"] for s in log["stages"]] == ["guided", "4->2", "2->1"] == seen
    assert all(np.isfinite(s["final_loss"]) and s["x"] == 1 for s in log["stages"])
    assert student.config.sampler == "ddim" and student.config.num_inference_steps == 1
    assert student.config.guidance_scale == 1.0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "the teacher changed"
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items()), "the student did not learn"
    pipe = fast.make_fast_pipeline(student)
    assert pipe.default_num_inference_steps == 1 and pipe.default_guidance_scale == 1.0


# ---------------------------------------------------------------------------------------------
# The shipped student
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    assert fast.NAME in pretrained.read_manifest()["models"], "shapes-t2i-fast is registered but not shipped"
    return pretrained.load(fast.NAME, device="cpu")


CAPS = shapes.all_captions("train")[::30][:6]


def test_shipped_hash_and_record():
    rec = pretrained.verify(fast.NAME)
    q = rec["quality"]
    assert rec["config"]["sampler"] == "ddim" and rec["config"]["guidance_scale"] == 1.0
    assert q["distill_seconds"] > 0
    # chapter 08's target, on the recorded numbers: at 4 steps at most 5 points below the teacher at 50
    assert q["points_below_teacher_ddim50_at_4_steps"] <= 5
    rows = q["rows"]
    assert rows["student_1_step"]["unet_evals_per_picture"] == 1
    assert rows["teacher_default_dpm_20_steps"]["unet_evals_per_picture"] == 40


def test_shipped_pipeline_api(shipped):
    assert isinstance(shipped, t2i.ShapesPipeline)
    assert shipped.default_num_inference_steps == pretrained.info(fast.NAME)["config"]["num_inference_steps"]
    assert shipped.default_guidance_scale == 1.0
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pt = shipped(CAPS[:2], generator=g(), output_type="pt").images
    npy = shipped(CAPS[:2], generator=g(), output_type="np").images
    pil = shipped(CAPS[0], generator=g(), output_type="pil").images
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert npy.shape == (2, 32, 32, 3) and np.allclose(npy, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert len(pil) == 1 and pil[0].size == (32, 32)
    # one UNet pass per step: count the calls
    calls = []
    h = shipped.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        shipped(CAPS[:3], num_inference_steps=2, generator=g(), output_type="pt")
    finally:
        h.remove()
    assert calls == [3, 3]


def test_shipped_determinism(shipped):
    a = shipped(CAPS, generator=torch.Generator().manual_seed(5), output_type="pt").images
    b = shipped(CAPS, generator=torch.Generator().manual_seed(5), output_type="pt").images
    c = shipped(CAPS, generator=torch.Generator().manual_seed(6), output_type="pt").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_shipped_quick_accuracy(shipped):
    from course_lib.judges import score_shapes

    caps = shapes.all_captions("train")[::9]                          # 30 captions
    images = t2i.generate(shipped, caps, seed=0)                         # default: one step
    got = score_shapes(images, caps)["all"]
    recorded = pretrained.info(fast.NAME)["quality"]["rows"]["student_1_step"]["train_captions"]["all"]
    assert got >= recorded - 0.15, (got, recorded)


def test_measure_reports_kid_beside_fid_when_given_a_reference():
    """Chapter 08's distillation table: KID (unbiased at a few pictures) next to FID."""
    from course_lib import samplers

    pipe = pretrained.load("shapes-t2i-fast")
    caps = shapes.all_captions("train")[:4]
    row = fast.measure(pipe, 1, 1, n_train=4, n_heldout=2, timing_captions=2,
                       kid_reference=samplers.reference_set(pipe, caps, per_target=2))
    assert np.isfinite(row["judge_kid"]) and np.isfinite(row["judge_fid"])


def test_distill_uses_the_target_it_is_given():
    """Chapter 08 distils with the learner's own target: the same function gives the same student,
    a wrong one another."""
    calls = []

    def mine(*args):
        calls.append(args[0].shape[0])
        return fast.distillation_target(*args)

    def run(target):
        torch.manual_seed(0)
        teacher = t2i.TextToImageModel(TINY).eval()
        kw = dict(device="cpu", progress=False, steps_per_round=2, rounds=[2, 1], n_train=16,
                  batch_size=4)
        return fast.distill(teacher, target=target, **kw)[0].state_dict()

    default, yours = run(None), run(mine)
    assert calls and all(k == 2 for k in calls), "half of each batch of 4 is progressive (hold 0.5)"
    assert len(calls) == 4, "one target per optimiser step of each round"
    assert all(torch.equal(default[k], yours[k]) for k in default)
    wrong = run(lambda z_t, z_s, *_: torch.zeros_like(z_t))
    assert any(not torch.equal(default[k], wrong[k]) for k in default)
    with pytest.raises(TypeError):
        fast.distill(t2i.TextToImageModel(TINY), target="x0")
