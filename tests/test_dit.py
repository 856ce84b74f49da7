"""Chapter 05: the Diffusion Transformer. Output shape, conditioning on the caption, adaLN-Zero's
identity start, the config, and the pipeline: call convention, determinism, save/load."""
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from course_lib import flow, runtime
from course_lib.models import dit
from course_lib.models import text_to_image as t2i

TINY = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, "text": {"dim": 16, "heads": 2}}
PROMPTS = ["a small red circle in the top left", "a large blue triangle at the bottom"]


def perturbed(model, scale=0.05, seed=0):
    """The model with small random weights added everywhere (a stand-in for a trained one: the
    adaLN-Zero start outputs 0 whatever the input)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(dit.DiTModel(TINY))


def encode(model, prompts):
    tok = model.text_encoder.tokenize(prompts)
    return tok["input_ids"], tok["attention_mask"]


def test_output_shape_and_patches(model):
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([10.0, 900.0]), *encode(model, PROMPTS))
    assert out.shape == (2, 3, 32, 32)
    tokens = model.transformer.pos_embed(torch.nn.functional.pixel_unshuffle(x, 2))
    assert tokens.shape == (2, 64, 16)              # 8 x 8 patches of 4 x 4 pixels, width 2 heads x 8
    assert model.config.width == 16


def test_a_changed_caption_changes_the_output(model):
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([500.0, 500.0])
    a = model(x, t, *encode(model, PROMPTS))
    b = model(x, t, *encode(model, ["a small red circle in the top right", PROMPTS[1]]))
    assert (a[0] - b[0]).abs().max() > 1e-4, "the caption must reach the output"
    assert torch.allclose(a[1], b[1], atol=1e-6), "pictures in a batch must not see each other's captions"
    c = model(x, torch.tensor([100.0, 500.0]), *encode(model, PROMPTS))
    assert (a[0] - c[0]).abs().max() > 1e-4, "the timestep must reach the output"


def test_adaln_zero_starts_as_identity():
    torch.manual_seed(0)
    m = dit.DiTModel(TINY).eval()
    tf = m.transformer
    ids, mask = encode(m, PROMPTS)
    states, pooled = m.encode(ids, mask)
    hidden = tf.pos_embed(torch.randn(2, 12, 16, 16))                    # [2, 64, d]
    context = tf.context_embedder(states)                                  # [2, L, d]
    temb = tf.time_text_embed(torch.tensor([300.0, 700.0]), pooled)        # [2, d]
    for block in tf.transformer_blocks:
        out_context, out_hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        assert torch.equal(out_hidden, hidden)
        if out_context is not None:
            assert torch.equal(out_context, context)
    assert torch.equal(m(torch.randn(2, 3, 32, 32), torch.tensor([1.0, 999.0]), ids, mask), torch.zeros(2, 3, 32, 32))
    # ...and it still learns: the gates get a gradient at the start
    out = m(torch.randn(2, 3, 32, 32), torch.tensor([1.0, 999.0]), ids, mask)
    (out - 1).square().mean().backward()
    assert tf.proj_out.weight.grad.abs().sum() > 0


def test_config_refuses_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="num_layers"):
        dit.DiTConfig.from_dict({"num_layer": 2})
    with pytest.raises(ValueError, match="flow_prediction"):
        dit.DiTConfig.from_dict({"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="flow-euler"):
        dit.DiTConfig.from_dict({"sampler": "ddim"})                     # a flow model samples with a flow sampler
    cfg = dit.DiTConfig.from_dict(TINY)
    assert dit.DiTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.text.dim == 16 and cfg.width == 16


def test_training_runs_with_flow_matching_and_v_prediction():
    for pt in ("flow_prediction", "v_prediction"):
        m, hist, _ = dit.train_dit(dit.build_backbone("dit", pt, TINY), steps=2, n_train=32, batch_size=8)
        assert hist.steps == 2 and all(np.isfinite(hist.losses))
        assert m.config.prediction_type == pt


def test_flow_loss_reaches_the_transformer_as_1000_t():
    """Flow matching gives the network timesteps = 1000 t, floats in (0, 1000)."""
    seen = []
    m = dit.DiTModel(TINY)
    m.transformer.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["timestep"]), with_kwargs=True)
    dit.train_dit(m, steps=1, n_train=16, batch_size=16)
    assert seen[0].dtype.is_floating_point and 0 < seen[0].min() and seen[0].max() < 1000


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(model):
    return dit.make_pipeline(model, num_inference_steps=3, guidance_scale=2.0)


def test_pipeline_convention(pipe, model):
    assert pipe.transformer is model.transformer and pipe.backbone is model.transformer
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    pt = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    npy = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="np").images
    pil = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0)).images
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert np.allclose(npy, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert len(pil) == 1 and pil[0].size == (32, 32)


def test_pipeline_is_deterministic_and_equals_the_hand_written_sampler(pipe, model):
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="pt").images
    b = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="pt").images
    c = pipe(PROMPTS, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same pictures as chapter 04's hand-written Euler sampler with the guided network
    tok = model.text_encoder.tokenize(PROMPTS + ["", ""])
    states, pooled = model.encode(tok["input_ids"], tok["attention_mask"])

    def velocity(x, ts):
        u, c = model.denoise(torch.cat([x, x]), torch.cat([ts, ts]), states[[2, 3, 0, 1]], pooled[[2, 3, 0, 1]]).chunk(2)
        return u + 2.0 * (c - u)
    noise = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hand = (flow.sample_euler(velocity, noise, 3).clamp(-1, 1) + 1) / 2
    assert torch.allclose(a, hand, atol=1e-5)
    d = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="pt", guidance_scale=1.0).images
    assert not torch.allclose(a, d, atol=1e-4)


def test_pipeline_save_and_load(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    again = dit.ShapesDiTPipeline.from_pretrained(tmp_path)
    assert again.default_num_inference_steps == 3 and again.fold == 2
    generic = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(generic).__name__ == "ShapesDiTPipeline"
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = again(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kw,error", [({"num_inference_steps": 0}, ValueError),
                                      ({"num_inference_steps": 2.5}, TypeError),
                                      ({"guidance_scale": float("nan")}, ValueError),
                                      ({"output_type": "jpeg"}, ValueError),
                                      ({"generator": 0}, TypeError)])
def test_pipeline_bad_arguments_name_what_is_allowed(pipe, kw, error):
    with pytest.raises(error):
        pipe(PROMPTS, **kw)


def test_pipeline_bad_prompts(pipe):
    with pytest.raises(TypeError, match="string"):
        pipe([1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        pipe([])
    with pytest.raises(ValueError):
        pipe("a small crimson circle in the top left")               # not a word of the vocabulary


def test_table_cell_initial_weights_follow_the_seed(monkeypatch):
    """The table's runs start from weights drawn under ``seed`` (the same as chapter 05's run of
    the same recipe for seed 0), so several seeds per cell are several initialisations."""
    started = []

    class Stop(Exception):
        pass

    def fake_train(model, steps, seed, **kw):
        started.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        raise Stop

    monkeypatch.setattr(dit, "train_dit", fake_train)
    for seed in (0, 0, 1):
        torch.manual_seed(123 + len(started))        # the caller's stream must not matter
        with pytest.raises(Stop):
            dit.table_cell("unet", "v_prediction", 1.0, 1.0, seed=seed)
    assert torch.equal(started[0], started[1]) and not torch.equal(started[0], started[2])
    with runtime.seeded(0):
        ours = t2i.TextToImageModel(None)
    assert torch.equal(started[0], torch.cat([p.detach().flatten() for p in ours.parameters()]))


def test_table_runs_are_kept_per_seed_and_averaged():
    """The run of a table cell for each starting seed is kept under ``runs``; the cell shows their
    mean, and a seed run again replaces its own entry instead of adding one."""
    cell = {"cpu_seconds_per_step": 0.5}
    row = dict(train_steps=10, train_cpu_minutes=1.0, sampler="S", trained_on="here")
    dit._add_run(cell, 0, dict(row, train_all=0.8, heldout_all=0.6))
    dit._add_run(cell, 1, dict(row, train_all=0.9, heldout_all=0.7))
    assert cell["n_runs"] == 2 and cell["train_all"] == pytest.approx(0.85)
    dit._add_run(cell, 1, dict(row, train_all=1.0, heldout_all=0.7))
    assert cell["n_runs"] == 2 and cell["train_all"] == pytest.approx(0.9)
    assert cell["runs"]["0"]["heldout_all"] == 0.6 and cell["cpu_seconds_per_step"] == 0.5
