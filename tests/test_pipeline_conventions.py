"""Every shipped Shapes pipeline answers bad calls with a clear error, and supports what a diffusers user
reaches for: num_images_per_prompt, negative_prompt, callback_on_step_end, a progress bar that
set_progress_bar_config silences, and loading a saved folder with the generic DiffusionPipeline."""
import math

import pytest
import torch
from diffusers import DiffusionPipeline

from course_lib import pretrained

PIPELINES = ["shapes-t2i", "shapes-t2i-latent", "shapes-t2i-fast"]
P = ["a small red circle in the top left", "a large blue triangle at the bottom"]


@pytest.fixture(scope="module", params=PIPELINES)
def pipe(request):
    return pretrained.load(request.param, device="cpu")


def run(pipe, prompt=P, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw).images


BAD_CALLS = [
    # (keyword arguments, error type, words the message must contain)
    ({"num_inference_steps": 0}, ValueError, ["num_inference_steps", "1 to 1000"]),
    ({"num_inference_steps": -3}, ValueError, ["num_inference_steps", "1 to 1000"]),
    ({"num_inference_steps": 5000}, ValueError, ["num_inference_steps", "1 to 1000", "5000"]),
    ({"num_inference_steps": 2.5}, TypeError, ["num_inference_steps", "integer"]),
    ({"guidance_scale": math.nan}, ValueError, ["guidance_scale", "finite"]),
    ({"guidance_scale": math.inf}, ValueError, ["guidance_scale", "finite"]),
    ({"guidance_scale": -1.0}, ValueError, ["guidance_scale", ">= 0"]),
    ({"guidance_scale": "3"}, TypeError, ["guidance_scale", "number"]),
    ({"prompt": []}, ValueError, ["prompt", "non-empty list"]),
    ({"prompt": [1, 2]}, TypeError, ["prompt", "list of strings", "int"]),
    ({"prompt": None}, TypeError, ["prompt", "string"]),
    ({"prompt": P[0] + ", please"}, ValueError, ["','", "vocabulary", "circle"]),
    ({"prompt": "a small crimson circle in the top left"}, ValueError, ["crimson", "red", "triangle"]),
    ({"prompt": "a small red circle in the top left " * 3}, ValueError, ["at most"]),
    ({"output_type": "jpeg"}, ValueError, ["output_type", "'pil'", "'np'", "'pt'"]),
    ({"generator": 0}, TypeError, ["generator", "torch.Generator"]),
    ({"num_images_per_prompt": 0}, ValueError, ["num_images_per_prompt"]),
    ({"negative_prompt": ["a", "b", "c"]}, ValueError, ["negative_prompt", "one per prompt"]),
    ({"negative_prompt": 7}, TypeError, ["negative_prompt"]),
    ({"latents": torch.zeros(2, 3)}, ValueError, ["latents", "shape"]),
    ({"guidance_mode": "twice"}, ValueError, ["guidance_mode", "batched"]),
    ({"callback_on_step_end": "print"}, TypeError, ["callback_on_step_end", "callable"]),
]


@pytest.mark.parametrize("kwargs,error,words", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_calls_are_answered_clearly(pipe, kwargs, error, words):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", P)
    out_type = kwargs.pop("output_type", "pt")
    gen = kwargs.pop("generator", torch.Generator().manual_seed(0))
    with pytest.raises(error) as err:
        pipe(prompt, output_type=out_type, generator=gen, **{"num_inference_steps": 2, **kwargs})
    msg = str(err.value)
    for w in words:
        assert w in msg, (w, msg)


def test_case_whitespace_and_a_full_stop_are_normalised(pipe):
    messy = ["  A Small RED circle in   the top left. ", "a LARGE blue triangle at the bottom"]
    assert torch.equal(run(pipe, messy), run(pipe))


def test_num_images_per_prompt(pipe):
    out = run(pipe, P, num_images_per_prompt=3)
    assert out.shape == (6, 3, 32, 32)
    assert not torch.equal(out[0], out[1]), "each picture of a prompt starts from its own noise"
    same = run(pipe, [P[0]] * 3 + [P[1]] * 3)
    assert torch.equal(out, same), "k pictures per prompt = each prompt repeated k times in a row"


def test_negative_prompt(pipe):
    base = run(pipe)
    assert torch.equal(run(pipe, negative_prompt=""), base), "the empty negative prompt is plain guidance"
    if pipe.default_guidance_scale == 1.0:          # a distilled student: guidance is in its weights
        assert torch.equal(run(pipe, negative_prompt="a large red square in the center"), base)
        return
    away = run(pipe, negative_prompt="a large red square in the center")
    assert (away - base).abs().max() > 0.05
    both = run(pipe, negative_prompt=["a large red square in the center"] * 2)
    assert torch.equal(both, away), "one negative prompt applies to every prompt"


def test_callback_on_step_end(pipe):
    seen = []

    def cb(p, i, t, kwargs):
        seen.append((i, int(t), tuple(kwargs["latents"].shape)))
        return kwargs

    run(pipe, num_inference_steps=3, callback_on_step_end=cb)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] > seen[1][1] > seen[2][1]
    zeroed = run(pipe, num_inference_steps=3,
                 callback_on_step_end=lambda p, i, t, kw: {"latents": torch.zeros_like(kw["latents"])})
    assert not torch.equal(zeroed, run(pipe, num_inference_steps=3)), "a returned latents must be used"


def test_progress_bar_and_silencing_it(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    run(pipe, num_inference_steps=2)
    got = capsys.readouterr()
    assert "/2 [" in got.out + got.err, "a bar over the 2 steps"
    pipe.set_progress_bar_config(disable=True)
    try:
        run(pipe, num_inference_steps=2)
        got = capsys.readouterr()
        assert "/2 [" not in got.out + got.err
    finally:
        pipe.set_progress_bar_config(disable=False)


def test_generic_diffusion_pipeline_loads_a_saved_folder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is type(pipe)
    assert loaded.default_num_inference_steps == pipe.default_num_inference_steps
    assert torch.allclose(run(loaded), run(pipe), atol=1e-6)
