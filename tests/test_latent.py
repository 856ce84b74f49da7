"""Chapter 09, latent diffusion: the autoencoder's round trip (shapes, the shipped one's quality), the
latent pipeline's call convention, determinism and save/load, and the autoencoder pairing check."""
import numpy as np
import pytest
import torch

from course_lib import diffusion, pretrained
from course_lib.data import shapes
from course_lib.judges import score_shapes
from course_lib.metrics import psnr
from course_lib.models import latent
from course_lib.models import text_to_image as t2i

TINY_AE = {"block_out_channels": [8, 8, 8], "norm_num_groups": 4}
TINY = {"text": {"dim": 16, "layers": 1, "heads": 2},
        "unet": {"block_out_channels": [8, 16], "attention_head_dim": 8, "norm_num_groups": 4}}
PROMPTS = ["a small red circle in the top left", "a large blue triangle at the bottom"]


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return latent.build_autoencoder(TINY_AE).eval()


@pytest.fixture(scope="module")
def pipe(tiny_vae):
    torch.manual_seed(0)
    model = latent.build_latent_model(TINY).eval()
    return latent.make_pipeline(model, tiny_vae, num_inference_steps=3, guidance_scale=2.0)


@pytest.fixture(scope="module")
def shipped_vae():
    return pretrained.load("shapes-autoencoder", "cpu")


def test_autoencoder_shapes(tiny_vae):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = latent.encode(tiny_vae, x)
        y = latent.decode(tiny_vae, z)
    assert z.shape == (3, 4, 8, 8)                     # 3072 numbers -> 256: 12x fewer
    assert y.shape == (3, 3, 32, 32)
    assert latent.round_trip(tiny_vae, torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_scaling_and_shift_factors_are_applied(tiny_vae):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    vae = latent.build_autoencoder(dict(TINY_AE, scaling_factor=2.0, shift_factor=0.5)).eval()
    vae.load_state_dict(tiny_vae.state_dict())
    with torch.no_grad():
        raw = tiny_vae.encode(x).latent_dist.mode()
        assert torch.allclose(latent.encode(vae, x), (raw - 0.5) * 2.0, atol=1e-6)
        assert torch.allclose(latent.decode(vae, latent.encode(vae, x)), latent.decode(tiny_vae, raw), atol=1e-5)


def test_shipped_autoencoder_round_trip(shipped_vae):
    rec = pretrained.info("shapes-autoencoder")["quality"]
    x, caps = shapes.sample(64, seed=2024, split="train")          # pictures it never saw
    y = latent.round_trip(shipped_vae, x)
    acc = score_shapes(y, caps)["all"]
    p = psnr(y, x)
    # floors: the recorded quality on 1000 fresh pictures with a margin for 64 pictures
    assert acc >= rec["train"]["judge_all_reconstructions"] - 0.1, (acc, rec["train"])
    assert p >= rec["train"]["psnr_db"] - 2.0, (p, rec["train"])
    assert acc >= 0.9 and p >= 30.0, (acc, p)                    # measured: 0.98 and 39 dB on these 64
    # the normalised latents have about unit scale (what the diffusion model's noise assumes)
    z = latent.encode(shipped_vae, diffusion.to_model_range(x))
    assert 0.7 < z.std().item() < 1.3 and abs(z.mean().item()) < 0.3


def test_pipeline_call_convention_and_determinism(pipe):
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    again = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(out, again)
    other = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert not torch.allclose(out, other)
    arr = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 32, 32, 3)
    assert np.allclose(arr, out.permute(0, 2, 3, 1).numpy())
    pil = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (32, 32)
    lat = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert lat.shape == (2, 4, 8, 8)
    assert torch.allclose(diffusion.to_image_range(latent.decode(pipe.vae, lat)), out, atol=1e-5)
    with pytest.raises(ValueError):
        pipe(PROMPTS, output_type="jpeg")


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = latent.LatentShapesPipeline.from_pretrained(tmp_path)
    assert loaded.default_num_inference_steps == 3 and loaded.default_guidance_scale == 2.0
    assert type(loaded.scheduler) is type(pipe.scheduler)
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = loaded(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)


def test_latent_training_runs_on_encoded_latents(tiny_vae):
    model, hist, hp = latent.train_latent_text_to_image(tiny_vae, TINY, steps=6, n_train=64, batch_size=8,
                                                   warmup=1, progress=False)
    assert hist.steps == 6 and np.isfinite(hist.losses).all()
    assert hp["encode_seconds"] >= 0
    assert isinstance(model, t2i.TextToImageModel) and model.config.in_channels == 4


def test_shipped_latent_model_is_paired_with_its_autoencoder():
    rec = pretrained.info("shapes-t2i-latent")
    assert rec["config"]["autoencoder_sha256"] == pretrained.info("shapes-autoencoder")["sha256"]
    model = pretrained.load_module("shapes-t2i-latent", "cpu")
    model.config = model.config.replace(autoencoder_sha256="0" * 64)
    with pytest.raises(pretrained.CheckpointError, match="train shapes-t2i-latent"):
        latent._finalize_latent(model)


def test_shipped_latent_pipeline_draws_what_is_asked():
    pipe = pretrained.load("shapes-t2i-latent", "cpu")
    assert isinstance(pipe, latent.LatentShapesPipeline)
    caps = shapes.all_captions("train")[::34]                            # 8 captions
    imgs = pipe(caps, generator=torch.Generator().manual_seed(0), output_type="pt").images
    got = score_shapes(imgs, caps)["all"]
    want = pretrained.info("shapes-t2i-latent")["quality"]["train_captions"]["all"]
    assert got >= min(want, 1.0) - 0.25, (got, want)
