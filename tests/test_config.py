"""Typed configs: a misspelt key is an error that names the allowed ones, and every shipped model's
config reads back from the manifest's JSON to an equal config."""
import json

import pytest

from course_lib import pretrained
from course_lib.config import Config
from course_lib.models import ddpm, fast, latent
from course_lib.models import text_to_image as t2i


def test_unknown_keys_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        t2i.TextToImageConfig.from_dict({"fodl": 4})
    assert "'fodl'" in str(err.value) and "fold" in str(err.value) and "prediction_type" in str(err.value)
    with pytest.raises(ValueError, match="'dimm'.*allowed: kind, dim"):
        t2i.TextToImageConfig.from_dict({"text": {"dimm": 32}})
    with pytest.raises(ValueError, match="block_out_chanels"):
        t2i.TextToImageModel({"unet": {"block_out_chanels": [8, 16]}})
    with pytest.raises(ValueError, match="'stpes'"):
        t2i.train_text_to_image(steps=1, stpes=3)
    with pytest.raises(ValueError, match="'lrr'"):
        ddpm.train_ddpm(steps=1, lrr=0.1)
    with pytest.raises(ValueError, match="'roundz'"):
        fast.distill(None, roundz=[2, 1])
    with pytest.raises(ValueError, match="'blocks'.*allowed"):
        latent.build_autoencoder({"blocks": 3})
    with pytest.raises(ValueError, match="'schedul'"):
        ddpm.DigitDenoiser({"schedul": "cosine"})


def test_values_are_checked_too():
    with pytest.raises(ValueError, match="prediction_type.*'epsilon'"):
        t2i.TextToImageConfig(prediction_type="eps")
    with pytest.raises(ValueError, match="sampler"):
        t2i.TextToImageConfig(sampler="dpm")
    with pytest.raises(ValueError, match="fold must divide"):
        t2i.TextToImageConfig(fold=3)
    with pytest.raises(TypeError, match="dict"):
        t2i.TextToImageConfig.from_dict([("fold", 2)])


def test_nested_overrides_update_key_by_key():
    cfg = t2i.TextToImageConfig.from_dict({"text": {"dim": 32}}, unet={"attention_head_dim": 8})
    assert cfg.text.dim == 32 and cfg.text.max_length == 12
    assert cfg.unet.attention_head_dim == 8 and cfg.unet.block_out_channels == [32, 64]
    again = cfg.replace(fold=1)
    assert again.fold == 1 and again.text.dim == 32 and cfg.fold == 2


@pytest.mark.parametrize("name", ["shapes-t2i", "shapes-t2i-fast", "shapes-t2i-latent", "ddpm-mnist"])
def test_shipped_configs_round_trip_through_json(name):
    rec = pretrained.info(name)
    model = pretrained.load_module(name, device="cpu")
    assert isinstance(model.config, Config)
    assert json.loads(json.dumps(model.config.to_dict())) == rec["config"]
    assert type(model.config).from_dict(model.config.to_dict()) == model.config
