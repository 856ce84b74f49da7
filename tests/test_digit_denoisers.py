"""Chapter 04's digit denoisers: the flow-matching recipe (``flow-mnist``), resumable training,
and the one digit sampler with every kind of sampler it accepts."""
import math

import pytest
import torch

from course_lib import sampling
from course_lib.models import ddpm


def test_digit_flow_model_trains_and_samples():
    from course_lib import pretrained
    from course_lib.models import ddpm

    model, hist = ddpm.train_ddpm(config=ddpm.FLOW_CONFIG, steps=2, seed=0, progress=False, batch_size=8)
    assert model.config.prediction_type == "flow_prediction" and all(math.isfinite(v) for v in hist.losses)
    digits = ddpm.sample_digits(model, [3, 7], guidance_scale=2.0, num_inference_steps=2, seed=0)
    assert digits.shape == (2, 1, 28, 28) and 0 <= digits.min() and digits.max() <= 1
    again = ddpm.sample_digits(model, [3, 7], guidance_scale=2.0, num_inference_steps=2, seed=0)
    assert torch.equal(digits, again)
    row = ddpm.judge_digits(model, "euler", 1, n=10)
    assert set(row) >= {"mean_top_prob", "hist_entropy", "accuracy_guided"} and row["steps"] == 1
    assert len(row["histogram"]) == 10 and abs(sum(row["histogram"]) - 1) < 1e-3
    with pytest.raises(ValueError, match="euler"):
        ddpm.judge_digits(model, "heun", 1, n=10)
    assert "flow-mnist" in pretrained.known()
    assert pretrained.entry("flow-mnist").module == "course_lib.models.ddpm"


def test_digit_training_resumes_where_it_stopped(tmp_path):
    """A run stopped midway and called again ends with the weights of one uninterrupted run."""
    from course_lib.models import ddpm

    kw = dict(config=ddpm.FLOW_CONFIG, steps=5, seed=0, progress=False, batch_size=4, device="cpu")
    whole, _ = ddpm.train_ddpm(**kw)
    state = tmp_path / "run.pt"

    def stop(i, hist):
        if i == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ddpm.train_ddpm(state_file=state, save_every=2, callback=stop, **kw)
    assert state.exists()
    resumed, hist = ddpm.train_ddpm(state_file=state, save_every=2, **kw)
    assert hist.steps == 5 and len(hist.losses) == 5 and not state.exists()
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"run": {"seed": 1}}, state)
    with pytest.raises(ValueError, match="another run"):
        ddpm.train_ddpm(state_file=state, **kw)


def test_one_digit_sampler_accepts_what_the_prediction_type_allows():
    tiny = {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "attention_head_dim": 8}
    eps = ddpm.DigitDenoiser(tiny)
    velocity = ddpm.DigitDenoiser(dict(tiny, **ddpm.FLOW_CONFIG))
    kw = dict(num_inference_steps=2, seed=0)
    for model, names in ((eps, ("ddpm", "ddim", "dpm++", "unipc", "euler-a", "dpm++sde")),
                         (velocity, ("euler", "flow-euler"))):
        for name in names:
            x = ddpm.sample_digits(model, [1, 2], sampler=name, guidance_scale=2.0, **kw)
            assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all(), name
    # the hand-written Euler and diffusers' flow Euler visit the same times: the same digits
    a = ddpm.sample_digits(velocity, [1, 2], sampler="euler", **kw)
    b = ddpm.sample_digits(velocity, [1, 2], sampler="flow-euler", **kw)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="flow-matching"):
        ddpm.sample_digits(velocity, [1], sampler="ddim", **kw)
    with pytest.raises(ValueError, match="make_scheduler"):
        ddpm.sample_digits(eps, [1], sampler="euler", **kw)
    with pytest.raises(ValueError, match="scheduler"):
        ddpm.sample_digits(eps, [1], sampler=sampling.make_scheduler("flow-euler", velocity), **kw)
    with pytest.raises(TypeError, match="labels"):
        ddpm.sample_digits(eps, 5, **kw)
    with pytest.raises(TypeError, match="sampler"):
        ddpm.sample_digits(eps, [1], sampler=3, **kw)
