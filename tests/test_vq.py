"""Chapter 10, images as tokens: the VQ tokenizer's shapes, the nearest-code quantisation and its
straight-through gradient, codebook usage, dead-code restarts, argument checks, the typed configs and a
quick training run."""
import math

import pytest
import torch

from course_lib import pretrained
from course_lib.data import shapes
from course_lib.models import vq

TINY = {"width": 8, "code_dim": 4, "codebook_size": 16, "res_blocks": 1}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return vq.build_vq(TINY).eval()


@pytest.fixture(scope="module")
def pictures():
    return shapes.sample(4, seed=7)[0]                                      # [4, 3, 32, 32] in [0, 1]


@pytest.mark.parametrize("grid", [8, 4])
def test_encode_decode_shapes(grid, pictures):
    torch.manual_seed(0)
    model = vq.build_vq(dict(TINY, grid=grid)).eval()
    ids = model.encode(pictures)
    assert ids.shape == (4, grid, grid) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < 16
    y = model.decode(ids)
    assert y.shape == (4, 3, 32, 32) and y.min() >= 0 and y.max() <= 1
    assert model.config.tokens == grid * grid


def test_forward_and_round_trip(tiny, pictures):
    out = tiny(pictures)
    assert out.reconstruction.shape == pictures.shape
    assert out.z.shape == out.q.shape == (4, 4, 8, 8) and out.ids.shape == (4, 8, 8)
    assert torch.isfinite(out.loss)
    expect = out.recon_loss + out.codebook_loss + tiny.config.beta * out.commitment_loss
    assert torch.allclose(out.loss, expect)
    # the forward pass decodes exactly the codes that encode() chooses
    assert torch.equal(out.ids, tiny.encode(pictures))
    assert torch.allclose(out.reconstruction, tiny.decode(out.ids), atol=1e-6)
    rec, ids = vq.round_trip(tiny, pictures, batch_size=3)
    assert rec.shape == pictures.shape and torch.equal(ids, out.ids)


def test_quantize_picks_the_nearest_code():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(32, 6, generator=g)                              # [K, d]
    # well separated: vectors near known codes
    true = torch.randint(0, 32, (5, 7), generator=g)                        # [5, 7]
    z = codebook[true] + 0.01 * torch.randn(5, 7, 6, generator=g)           # [5, 7, 6]
    q, ids = vq.quantize(z, codebook)
    assert ids.shape == (5, 7) and q.shape == z.shape
    assert torch.equal(ids, true)
    assert torch.equal(ids.flatten(), torch.cdist(z.reshape(-1, 6), codebook).argmin(1))
    assert torch.allclose(q, codebook[ids])
    # random vectors: the same choices as torch.cdist, and the chosen distance is the minimum
    z = torch.randn(200, 6, generator=g)
    q, ids = vq.quantize(z, codebook)
    d = torch.cdist(z, codebook)                                            # [200, 32]
    assert torch.equal(ids, d.argmin(1))
    assert torch.allclose(d.gather(1, ids[:, None]).squeeze(1), d.min(1).values, atol=1e-5)


def test_straight_through_gradient(tiny, pictures):
    # the function: whatever the loss of q, z receives exactly q's gradient
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(8, 3, generator=g)
    z = torch.randn(4, 5, 3, generator=g, requires_grad=True)
    q, _ = vq.quantize(z, codebook)
    q.retain_grad()
    w = torch.randn(4, 5, 3, generator=g)
    ((q * w).sum() + q.pow(2).sum()).backward()
    assert torch.allclose(z.grad, q.grad) and z.grad.abs().sum() > 0
    # the model: the reconstruction loss's gradient w.r.t. the encoder output equals the one w.r.t. q
    out = tiny(pictures)
    gz, gq = torch.autograd.grad(out.recon_loss, [out.z, out.q])
    assert torch.allclose(gz, gq) and gq.abs().sum() > 0


def test_codebook_loss_moves_only_the_chosen_codes(tiny, pictures):
    tiny.zero_grad()
    out = tiny(pictures)
    out.codebook_loss.backward()
    moved = tiny.codebook.weight.grad.abs().sum(1) > 0                      # [K]
    chosen = torch.zeros(16, dtype=torch.bool)
    chosen[out.ids.unique()] = True
    assert torch.equal(moved, chosen)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tiny.encoder.parameters())
    tiny.zero_grad()


def test_codebook_usage_known_cases():
    u = vq.codebook_usage(torch.tensor([[0, 0], [1, 1]]), 4)
    assert u["perplexity"] == pytest.approx(2.0) and u["used_codes"] == 2
    assert u["used_fraction"] == 0.5 and u["dead_codes"] == 2 and u["tokens"] == 4
    u = vq.codebook_usage(torch.arange(8).repeat(3), 8)                    # every code equally often
    assert u["perplexity"] == pytest.approx(8.0) and u["dead_codes"] == 0
    u = vq.codebook_usage(torch.tensor([3, 3, 3, 1]), 4)                   # 3/4, 1/4
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert u["perplexity"] == pytest.approx(math.exp(h), abs=1e-3)
    with pytest.raises(ValueError, match="from 0 to 3"):
        vq.codebook_usage(torch.tensor([4]), 4)


def test_dead_code_restart_reseeds_from_encoder_outputs():
    torch.manual_seed(0)
    model = vq.build_vq(TINY)
    before = model.codebook.weight.detach().clone()
    counts = torch.zeros(16, dtype=torch.long)
    counts[[0, 5]] = 3                                                      # only codes 0 and 5 were used
    z = torch.randn(2, 4, 8, 8)                                             # [n, d, g, g]
    n = vq.restart_dead_codes(model, counts, z, torch.Generator().manual_seed(0))
    w = model.codebook.weight.detach()
    assert n == 14
    assert torch.equal(w[[0, 5]], before[[0, 5]])
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 4)                         # [128, d]
    for k in set(range(16)) - {0, 5}:
        assert (vectors == w[k]).all(1).any(), k                           # each re-seeded code is an encoder vector
    assert vq.restart_dead_codes(model, torch.ones(16, dtype=torch.long), z) == 0


def test_bad_pictures_raise_naming_what_is_allowed(tiny, pictures):
    with pytest.raises(ValueError, match=r"\[n, 3, 32, 32\].*x\[None\]"):
        tiny.encode(pictures[0])
    with pytest.raises(ValueError, match=r"\[n, 3, 32, 32\]"):
        tiny.encode(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\[0, 1\].*to_image_range"):
        tiny.encode(pictures * 2 - 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny.encode(pictures.tolist())
    with pytest.raises(TypeError, match="float"):
        tiny(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_bad_ids_raise_naming_what_is_allowed(tiny):
    with pytest.raises(ValueError, match="from 0 to 15"):
        tiny.decode(torch.full((1, 8, 8), 16))
    with pytest.raises(ValueError, match="from 0 to 15"):
        tiny.decode(torch.full((1, 8, 8), -1))
    with pytest.raises(ValueError, match=r"\[n, 8, 8\]"):
        tiny.decode(torch.zeros(2, 4, 4, dtype=torch.long))               # a 4x4 model's tokens
    with pytest.raises(ValueError, match=r"ids\[None\]"):
        tiny.decode(torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        tiny.decode(torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match="LongTensor"):
        tiny.decode([[0] * 8] * 8)
    assert tiny.decode(torch.zeros(1, 8, 8, dtype=torch.int32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="same d"):
        vq.quantize(torch.randn(3, 5), torch.randn(8, 4))


def test_configs_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="gird.*allowed: grid, codebook_size"):
        vq.VQConfig.from_dict({"gird": 8})
    with pytest.raises(ValueError, match="grid must be one of 4, 8, 16"):
        vq.VQConfig(grid=5)
    with pytest.raises(ValueError, match="codebook_size"):
        vq.VQConfig(codebook_size=1)
    with pytest.raises(ValueError, match="width must be an even"):
        vq.build_vq({"width": 7})
    with pytest.raises(ValueError, match="stepz.*allowed: steps"):
        vq.VQTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="restart_evry"):
        vq.train_vq(steps=1, restart_evry=5)
    cfg = vq.VQConfig(grid=4, codebook_size=64)
    assert vq.VQConfig.from_dict(cfg.to_dict()) == cfg
    assert vq.build_vq(cfg.to_dict()).config == cfg


def test_quick_train_runs_and_is_judged():
    model, hist, settings = vq.train_vq(steps=4, config=TINY, n_train=32, batch_size=8, restart_every=2,
                                        progress=False, device="cpu",
                                        eval_fn=lambda m, step: vq.codebook_usage(m.encode(
                                            shapes.sample(8, seed=3)[0]), 16), eval_every=2)
    assert hist.steps == 4 and all(math.isfinite(v) for v in hist.losses)
    assert settings["restarted_codes"] > 0 and [s for s, _ in hist.evals] == [2, 4]
    q = vq.evaluate_vq(model, n=8)
    for split in ("train", "heldout"):
        for key in ("all_agreement", "all_vs_caption", "originals_vs_caption"):
            assert 0 <= q[split][key] <= 1
        assert set(q[split]["attribute_agreement"]) == set(shapes.ATTRIBUTES)
    assert q["train"]["originals_vs_caption"] == 1.0                        # the judge reads real pictures
    assert q["codebook"]["codebook_size"] == 16 and q["tokens_per_picture"] == 64
    assert q["bits_per_picture"] == 64 * 4


def test_registered_for_chapter_09():
    assert "course_lib.models.vq" in pretrained.ENTRY_MODULES
    assert "shapes-vq" in pretrained.known()
    entry = pretrained._entry("shapes-vq")
    assert entry.chapter == "10" and entry.build is vq.build_vq and entry.evaluate is vq.evaluate_vq
    model = entry.build(vq.VQConfig().to_dict())
    assert model.config == vq.VQConfig() and model.config.grid == 8


def test_state_dict_round_trip(tiny, pictures):
    other = vq.build_vq(tiny.config.to_dict()).eval()
    other.load_state_dict(tiny.state_dict())
    assert torch.equal(other.encode(pictures), tiny.encode(pictures))
