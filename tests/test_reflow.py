"""Chapter 09: reflow. The pairs keep their noise and come from the teacher's own sampler; the
reflowed student starts from the teacher's weights, samples unguided with the same pipeline, and its
row of the few-step table holds what the chapter prints."""
import math

import pytest
import torch

from course_lib.models import dit, reflow

TINY = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "text": {"dim": 16, "heads": 2}}
CAPTIONS = ["a small red circle in the top left", "a large blue triangle at the bottom",
            "a small green square on the right"]
HELD = ["a large purple triangle in the center", "a small orange circle at the top"]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = dit.DiTModel(TINY)
    with torch.no_grad():                       # small random weights: a stand-in for a trained flow
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return model.eval()


def test_pairs_are_the_teachers_pictures_of_their_noise(teacher):
    x0, noise = reflow.make_pairs(teacher, CAPTIONS, steps=2, guidance_scale=3.0, seed=5)
    assert x0.shape == noise.shape == (3, 3, 32, 32)
    pipe = dit.make_pipeline(teacher)
    again = pipe(CAPTIONS, num_inference_steps=2, guidance_scale=3.0, latents=noise, output_type="pt").images
    assert torch.allclose(x0, again * 2 - 1, atol=1e-5)
    x0b, noise_b = reflow.make_pairs(teacher, CAPTIONS, steps=2, seed=5)
    assert torch.equal(noise, noise_b) and torch.equal(x0, x0b)


def test_reflow_trains_a_student_that_samples_unguided(teacher):
    student, hist, log = reflow.train_reflow(teacher, captions=CAPTIONS, steps=2, teacher_steps=2, batch_size=2)
    assert hist.steps == 2 and log["pairs"] == 3 and log["cpu_minutes"] >= 0
    assert student.config.guidance_scale == 1.0 and student.config.num_inference_steps == 1
    assert teacher.config.guidance_scale == 3.0                     # the teacher is left as it was
    changed = any(not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    assert changed
    with pytest.raises(ValueError, match="unknown|allowed"):
        reflow.train_reflow(teacher, captions=CAPTIONS, stepz=2)
    v_model = dit.build_backbone("dit", "v_prediction", TINY)
    with pytest.raises(ValueError, match="flow_prediction"):
        reflow.train_reflow(v_model, captions=CAPTIONS, steps=1)


def test_measure_gives_one_row_of_the_few_step_table(teacher):
    row = reflow.measure(dit.make_pipeline(teacher), 1, captions=CAPTIONS, heldout=HELD, timing_captions=2)
    assert row["network_passes_per_picture"] == 2                    # guided: two passes per step
    assert 0 <= row["train_all"] <= 1 and 0 <= row["heldout_all"] <= 1 and row["ms_per_picture"] > 0
    assert isinstance(row["kid_x1000"], float)
    four = CAPTIONS + HELD[:1]                       # >= 4 captions: the jackknife gives an SE
    row4 = reflow.measure(dit.make_pipeline(teacher), 1, captions=four, heldout=HELD, timing_captions=2)
    assert row4["kid_se_x1000"] > 0 and math.isfinite(row4["kid_x1000"]), row4
    one = reflow.measure(dit.make_pipeline(teacher), 2, guidance_scale=1.0, captions=CAPTIONS, heldout=HELD,
                         timing_captions=2)
    assert one["network_passes_per_picture"] == 2


def test_pair_loss_is_flow_matching_on_the_pairs_and_train_reflow_takes_another(teacher):
    from course_lib import flow

    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    seen = {}

    def model_fn(x, ts):
        seen["ts"] = ts
        return 0.5 * x
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want = flow.flow_matching_loss(model_fn, x0, noise=noise, generator=g1)
    got = reflow.pair_loss(model_fn, x0, noise, flow.sample_time(4, g2))
    assert torch.allclose(got, want) and got.dim() == 0
    assert seen["ts"].shape == (4,) and seen["ts"].max() <= 1000     # diffusers' timesteps: 1000 t
    calls = []

    def my_loss(model_fn, x0, noise, t):
        calls.append((x0.shape, noise.shape, t.shape))
        return reflow.pair_loss(model_fn, x0, noise, t)
    _, hist, _ = reflow.train_reflow(teacher, captions=CAPTIONS, steps=2, teacher_steps=2, batch_size=2,
                                     loss=my_loss)
    assert len(calls) == 2 and calls[0] == ((2, 3, 32, 32), (2, 3, 32, 32), (2,))
    _, same, _ = reflow.train_reflow(teacher, captions=CAPTIONS, steps=2, teacher_steps=2, batch_size=2)
    assert hist.losses == same.losses, "the default loss is pair_loss"
    with pytest.raises(TypeError, match="loss must be a function"):
        reflow.train_reflow(teacher, captions=CAPTIONS, steps=1, loss="mse")
