"""Chapter 05: the text encoder, the pipeline's call convention, save/load round trip, determinism,
and the bad-prompt error."""
import numpy as np
import pytest
import torch

from course_lib.data import shapes
from course_lib.models import text_to_image as t2i

TINY = {"fold": 2, "text": {"dim": 16, "layers": 1, "heads": 2},
        "unet": {"block_out_channels": [8, 16], "attention_head_dim": 8, "norm_num_groups": 4,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}}
PROMPTS = ["a small red circle in the top left", "a large blue triangle at the bottom"]



@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = t2i.TextToImageModel(TINY).eval()
    return t2i.make_pipeline(model, num_inference_steps=3, guidance_scale=2.0)


def test_text_encoder_shapes_and_padding():
    enc = t2i.ShapesTextEncoder(dim=16, heads=2).eval()
    tok = enc.tokenize(PROMPTS + [""])
    states, pooled = enc(tok["input_ids"], tok["attention_mask"])
    assert states.shape == (3, enc.config.max_length, 16) and pooled.shape == (3, 16)
    # the pooled vector ignores padding: the same caption padded longer gives the same vector
    tok2 = enc.tokenizer(PROMPTS[:1], max_length=enc.config.max_length)
    _, p2 = enc(tok2["input_ids"], tok2["attention_mask"])
    assert torch.allclose(p2[0], pooled[0], atol=1e-5)


def test_fold_is_lossless():
    x = torch.rand(2, 3, 32, 32)
    z = torch.nn.functional.pixel_unshuffle(x, 2)
    assert z.shape == (2, 12, 16, 16)
    assert torch.equal(torch.nn.functional.pixel_shuffle(z, 2), x)


def test_model_forward_shape():
    model = t2i.TextToImageModel(TINY)
    tok = model.text_encoder.tokenize(PROMPTS)
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([10, 500]), tok["input_ids"], tok["attention_mask"])
    assert out.shape == (2, 3, 32, 32)


def test_call_convention_and_output_types(pipe):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pt = pipe(PROMPTS, generator=g(), output_type="pt").images
    npy = pipe(PROMPTS, generator=g(), output_type="np").images
    pil = pipe(PROMPTS[0], generator=g(), output_type="pil").images
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert npy.shape == (2, 32, 32, 3)
    assert len(pil) == 1 and pil[0].size == (32, 32)
    assert np.allclose(npy, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_same_seed_same_pictures(pipe):
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(7), output_type="pt").images
    b = pipe(PROMPTS, generator=torch.Generator().manual_seed(7), output_type="pt").images
    c = pipe(PROMPTS, generator=torch.Generator().manual_seed(8), output_type="pt").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_guidance_scale_changes_output(pipe):
    a = pipe(PROMPTS, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe(PROMPTS, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert a.shape == b.shape and not torch.equal(a, b)


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = t2i.ShapesPipeline.from_pretrained(tmp_path)
    assert loaded.default_num_inference_steps == 3 and loaded.default_guidance_scale == 2.0
    assert type(loaded.scheduler) is type(pipe.scheduler)
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = loaded(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_prompt_names_allowed_words(pipe):
    with pytest.raises(ValueError) as err:
        pipe(["a small crimson circle in the top left"], num_inference_steps=1)
    msg = str(err.value)
    assert "crimson" in msg
    for word in ("red", "circle", "triangle", "left"):
        assert word in msg


def test_training_runs_and_loss_is_finite():
    model, hist, hp = t2i.train_text_to_image(TINY, steps=2, progress=False, n_train=64, batch_size=8)
    assert len(hist.losses) == 2 and all(np.isfinite(hist.losses))
    assert isinstance(t2i.make_pipeline(model), t2i.ShapesPipeline)


def test_shipped_checkpoint_loads_as_pipeline():
    from course_lib import pretrained

    assert "shapes-t2i" in pretrained.read_manifest()["models"], "shapes-t2i is registered but not shipped"
    pipe = pretrained.load("shapes-t2i", device="cpu")
    assert isinstance(pipe, t2i.ShapesPipeline)
    caps = shapes.all_captions("train")[:2]
    a = pipe(caps, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert a.shape == (2, 3, 32, 32)
