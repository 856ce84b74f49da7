"""LoRA adapters (chapter 11): the layer against peft's, load/unload on the course pipeline, the ring
drawn by the renderer, the concept check, the shipped adapter's size and targets."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from course_lib import lora, personalisation as P, pretrained
from course_lib.data import shapes

peft = pytest.importorskip("peft")


def _peft_linear(base, r, alpha, A, B):
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = base

    m = peft.inject_adapter_in_model(
        peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], lora_dropout=0.0), Holder())
    with torch.no_grad():
        m.lin.lora_A["default"].weight.copy_(A)
        m.lin.lora_B["default"].weight.copy_(B)
    return m.lin


@pytest.mark.parametrize("r,alpha", [(1, 1.0), (2, 3.0), (4, 8.0)])
def test_hand_written_layer_equals_peft(r, alpha):
    g = torch.Generator().manual_seed(r)
    base = nn.Linear(8, 6)
    A, B = torch.randn(r, 8, generator=g), torch.randn(6, r, generator=g)
    x = torch.randn(5, 3, 8, generator=g)
    ours = lora.LoRALinear(base, r, alpha, A, B)
    theirs = _peft_linear(base, r, alpha, A, B)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert torch.allclose(ours(x) - base(x), alpha / r * x @ A.T @ B.T, atol=1e-5)
    fresh = lora.LoRALinear(nn.Linear(8, 6), r, alpha)  # B starts at zero: the base layer
    assert torch.equal(fresh(x), fresh.base(x))
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["lora_A.weight",
                                                                           "lora_B.weight"]


def test_layer_refuses_bad_input():
    with pytest.raises(TypeError, match="nn.Linear"):
        lora.LoRALinear(nn.Conv2d(3, 3, 1), 2, 2)
    with pytest.raises(ValueError, match="positive int"):
        lora.LoRALinear(nn.Linear(4, 4), 0, 1)
    with pytest.raises(ValueError, match="shape"):
        lora.LoRALinear(nn.Linear(4, 4), 2, 2, A=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="positive int"):
        lora.lora_config(r=-1)


# ---- the ring ------------------------------------------------------------------------------
def test_ring_is_an_extra_shape_that_changes_no_existing_render():
    assert "ring" in shapes.EXTRA_SHAPES and "ring" not in shapes.SHAPES
    assert shapes.ATTRIBUTE_VALUES["shape"] == ("circle", "square", "triangle")
    specs = shapes.sample_specs(12, seed=5)
    for s in ("circle", "square", "triangle"):
        same = [shapes.ShapeSpec(**{**x.as_dict(), "shape": s}) for x in specs]
        assert torch.equal(shapes.render(same, 3), shapes.render_as(specs, s, 3))
    with pytest.raises(ValueError, match="ring"):
        shapes.ShapeSpec("small", "red", "ring", "top", "left")
    with pytest.raises(ValueError, match="allowed"):
        shapes.render_geometry(["star"], [shapes.Geometry(8, 16, 16, (1, 1, 1))])
    with pytest.raises(ValueError, match="shape must be one of"):
        shapes.render_as(specs, "star")


def test_ring_has_its_hole_and_the_discs_outline():
    g = shapes.Geometry(12.0, 16.0, 16.0, (1.0, 1.0, 1.0))
    ring, disc = shapes.render_geometry(["ring", "circle"], [g, g])[:, 0]
    assert ring[16, 16] == 0 and disc[16, 16] == 1          # the hole
    assert ring[16, 11] == 1 and ring[16, 20] == 1           # the band (radius 3 to 6)
    assert torch.equal(ring > 0, (disc > 0) & (ring > 0))   # inside the disc's outline
    hole = (shapes.RING_HOLE * 6) ** 2 * np.pi  # the hole's area in pixels
    assert abs((disc - ring).sum().item() - hole) < 1.0


def test_concept_data_is_reproducible_and_distinct():
    x, caps, specs = P.concept_data(32, seed=3)
    assert x.shape == (32, 3, 32, 32) and len(set(caps)) == 32
    assert all(" ring " in c for c in caps)
    x2, caps2, _ = P.concept_data(32, seed=3)
    assert torch.equal(x, x2) and caps == caps2
    with pytest.raises(ValueError, match="n must be"):
        P.concept_data(200)


# ---- the concept check ---------------------------------------------------------------------
def test_check_accepts_the_renderers_ring_and_rejects_the_old_shapes():
    specs = P.concept_specs()[::3]  # 36 of the 108 combinations
    rings = shapes.render_as(specs, "ring", 1)
    res = P.concept_check(rings, specs, "ring")
    assert res["shape"] == 1.0 and res["all"] == 1.0
    noisy = (rings + 0.05 * torch.randn(rings.shape, generator=torch.Generator().manual_seed(0)))
    assert P.concept_check(noisy.clamp(0, 1), specs, "ring")["all"] >= 0.95
    for old in shapes.SHAPES:
        res = P.concept_check(shapes.render_as(specs, old, 1), specs, "ring")
        assert res["shape"] == 0.0 and res["all"] == 0.0, old
    wrong_place = [shapes.ShapeSpec(**{**s.as_dict(), "row": "top" if s.row != "top" else "bottom"})
                   for s in specs]
    assert P.concept_check(rings, wrong_place, "ring")["all"] == 0.0


def test_check_refuses_bad_input():
    specs = P.concept_specs()[:2]
    with pytest.raises(ValueError, match="concept"):
        P.concept_check(torch.zeros(2, 3, 32, 32), specs, "star")
    with pytest.raises(ValueError, match="specs"):
        P.concept_check(torch.zeros(2, 3, 32, 32), specs[:1])
    with pytest.raises(ValueError, match="images"):
        P.read_shapes(torch.zeros(2, 32, 32))
    assert P.read_shapes(torch.zeros(1, 3, 32, 32))[0] == ["none"]


# ---- the course pipeline: load_lora_weights / unload_lora_weights --------------------------
@pytest.fixture(scope="module")
def pipe():
    if "shapes-t2i" not in pretrained.read_manifest()["models"]:
        pytest.skip("shapes-t2i not shipped")
    p = pretrained.load("shapes-t2i", "cpu")
    p.set_progress_bar_config(disable=True)
    return p


def _random_adapter(pipe, seed=0):
    adapter = P.ConceptAdapter(P.AdapterConfig(), pretrained.info("shapes-t2i")["config"])
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in adapter.state_dict().items()}


def _draw(pipe, prompts):
    return pipe(prompts, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def test_load_then_unload_gives_the_base_model_back_exactly(pipe, tmp_path):
    before = _draw(pipe, ["a large red circle in the center"])
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    state = _random_adapter(pipe)
    from safetensors.torch import save_file

    path = tmp_path / "adapter.safetensors"
    save_file(state, str(path))
    pipe.load_lora_weights(str(path))
    try:
        assert "ring" in pipe.tokenizer.stoi
        adapted = _draw(pipe, ["a large red circle in the center"])
        assert not torch.equal(adapted, before)
        _draw(pipe, ["a large red ring in the center"])
        with pytest.raises(ValueError, match="already holds an adapter"):
            pipe.load_lora_weights(state)
    finally:
        pipe.unload_lora_weights()
    assert torch.equal(_draw(pipe, ["a large red circle in the center"]), before)
    assert set(pipe.unet.state_dict()) == set(weights)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(ValueError, match="unknown word 'ring'"):
        pipe(["a large red ring in the center"], num_inference_steps=1)


def test_hand_written_layers_draw_what_peft_draws(pipe):
    state = _random_adapter(pipe, seed=1)
    pipe.load_lora_weights(state)
    try:
        via_peft = _draw(pipe, ["a small blue ring at the top"])
    finally:
        pipe.unload_lora_weights()
    lora.add_words(pipe.text_encoder, {"ring": state["text_encoder.added_words.ring"]})
    try:
        with lora.apply_lora_layers(pipe.unet, state, 4, 4.0):
            ours = _draw(pipe, ["a small blue ring at the top"])
    finally:
        lora.remove_words(pipe.text_encoder)
    assert (ours - via_peft).abs().max() < 1e-4


def test_loading_refuses_bad_input(pipe, tmp_path):
    with pytest.raises(TypeError, match="path or a state dict"):
        pipe.load_lora_weights(3)
    with pytest.raises(ValueError, match="safetensors"):
        pipe.load_lora_weights(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="an adapter holds"):
        pipe.load_lora_weights({"unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="one lower-case word"):
        lora.add_words(pipe.text_encoder, {"two words": torch.zeros(64)})
    with pytest.raises(ValueError, match="already in the vocabulary"):
        lora.add_words(pipe.text_encoder, {"circle": torch.zeros(64)})
    assert lora.added_words(pipe.text_encoder) == []


# ---- the shipped adapter -------------------------------------------------------------------
def _shipped():
    return P.NAME in pretrained.read_manifest()["models"]


@pytest.mark.skipif(not _shipped(), reason="adapter not shipped yet")
def test_shipped_adapter_is_small_and_loads_as_a_pipeline():
    rec = pretrained.info(P.NAME)
    base = pretrained.info("shapes-t2i")
    assert rec["bytes"] * 20 <= base["bytes"], (rec["bytes"], base["bytes"])
    assert rec["config"]["base_sha256"] == base["sha256"]
    q = rec["quality"]
    assert q["lora"]["trained_parameters"] < q["full"]["trained_parameters"] / 20
    from safetensors.torch import load_file

    state = load_file(str(pretrained.checkpoint_dir() / rec["file"]))
    assert all(k.startswith(("unet.", "text_encoder.added_words.")) for k in state)
    assert any(".to_k.lora_A.weight" in k for k in state)
    pipe = pretrained.load(P.NAME, "cpu")
    assert "ring" in pipe.tokenizer.stoi and pipe.unet.peft_config


@pytest.mark.skipif(not _shipped(), reason="adapter not shipped yet")
def test_shipped_adapter_meets_its_targets():
    q = pretrained.info(P.NAME)["quality"]
    assert q["shipped"] == "lora_prior"
    assert all(q["lora_prior"][k] == v for k, v in q["adapter"].items())
    assert q["adapter"]["concept_all"]["share"] >= 0.8
    assert q["adapter"]["forgetting_points"] <= 2.0


def test_older_diffusers_path_draws_the_same(pipe, monkeypatch):
    """Without diffusers' ``load_lora_adapter`` / ``unload_lora`` (before 0.31) the adapter goes in
    through peft directly, with the same result."""
    from diffusers.loaders.peft import PeftAdapterMixin

    state = _random_adapter(pipe, seed=2)
    before = _draw(pipe, ["a small green triangle on the left"])
    pipe.load_lora_weights(state)
    try:
        want = _draw(pipe, ["a small green ring on the left"])
    finally:
        pipe.unload_lora_weights()
    monkeypatch.delattr(PeftAdapterMixin, "load_lora_adapter")
    monkeypatch.delattr(PeftAdapterMixin, "unload_lora")
    pipe.load_lora_weights(state)
    try:
        got = _draw(pipe, ["a small green ring on the left"])
    finally:
        pipe.unload_lora_weights()
    assert torch.equal(got, want)
    assert torch.equal(_draw(pipe, ["a small green triangle on the left"]), before)
