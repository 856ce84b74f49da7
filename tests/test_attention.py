"""Chapter 03's hand-written attention against PyTorch's own kernels."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.models import attention as attn



def _qkv(n=2, h=3, lq=5, lk=7, d=8, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h, lq, d, generator=g), torch.randn(n, h, lk, d, generator=g),
            torch.randn(n, h, lk, dv, generator=g))


def test_sdpa_matches_torch_without_mask():
    q, k, v = _qkv()
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v))


def test_sdpa_matches_torch_with_boolean_padding_mask():
    q, k, v = _qkv()
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])          # tokenizer convention
    mask = attn.padding_mask(attention_mask)                                # [n, 1, 1, Lk], True = allowed
    assert mask.shape == (2, 1, 1, 7) and mask.dtype == torch.bool
    ours, w = attn.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.all(w[1, :, :, 4:] == 0)                                # padding gets exactly 0
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))


def test_sdpa_matches_torch_with_float_mask_and_scale():
    q, k, v = _qkv()
    mask = torch.randn(5, 7)
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, mask, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3))


@pytest.mark.parametrize("lq,lk", [(6, 6), (4, 7)])
def test_is_causal_matches_torch(lq, lk):
    q, k, v = _qkv(lq=lq, lk=lk)
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_mask_and_padding_together_match_torch():
    q, k, v = _qkv(lq=7, lk=7)
    pad = attn.padding_mask(torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    both = attn.causal_mask(7) & pad                                        # [n, 1, 7, 7]
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, both),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=both))
    # the causal mask as an argument equals is_causal
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, attn.causal_mask(7)),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_mask_contract():
    m = attn.causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert torch.equal(m, torch.ones(4, 4, dtype=torch.bool).tril())
    # with more keys than queries the queries are the last positions (generation with a cache)
    assert torch.equal(attn.causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_additive_mask_equals_boolean_mask():
    q, k, v = _qkv()
    mask = attn.padding_mask(torch.tensor([[1] * 7, [1] * 3 + [0] * 4]))
    add = attn.to_additive(mask)
    assert add.dtype == torch.float32 and torch.isinf(add[1, 0, 0, 3:]).all() and add[0].eq(0).all()
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, add),
                               attn.scaled_dot_product_attention(q, k, v, mask))


def test_future_tokens_do_not_change_causal_outputs():
    q, k, v = _qkv(lq=6, lk=6)
    out = attn.scaled_dot_product_attention(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 4:, :] += 5
    v2[..., 4:, :] -= 3
    out2 = attn.scaled_dot_product_attention(q, k2, v2, is_causal=True)
    torch.testing.assert_close(out[..., :4, :], out2[..., :4, :])
    assert not torch.allclose(out[..., 4:, :], out2[..., 4:, :])


def test_wrong_masks_are_wrong():
    q, k, v = _qkv()
    mask = attn.padding_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3]))
    right = attn.scaled_dot_product_attention(q, k, v, mask)
    wrong_mul, w_mul = attn.wrong_masked_attention(q, k, v, mask, "multiply")
    wrong_after, w_after = attn.wrong_masked_attention(q, k, v, mask, "after")
    assert (w_mul[1, :, :, 4:] > 0).all()                  # padding still gets weight
    assert (w_after.sum(-1)[1] < 1 - 1e-3).all()          # rows no longer sum to one
    assert not torch.allclose(wrong_mul, right) and not torch.allclose(wrong_after, right)
    with pytest.raises(ValueError):
        attn.wrong_masked_attention(q, k, v, mask, "sideways")


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_matches_torch_multiheadattention(batch_first):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first)
    ours = attn.MultiHeadAttention(16, 4).load_from_torch(mha)
    x = torch.randn(2, 7, 16)
    kpm = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])          # True = padding (torch)
    xt = x if batch_first else x.transpose(0, 1)
    # nn.MultiheadAttention's boolean attn_mask is True where NOT allowed: the opposite of ours
    ref, ref_w = mha(xt, xt, xt, key_padding_mask=kpm, attn_mask=~attn.causal_mask(7),
                     average_attn_weights=False)
    ref = ref if batch_first else ref.transpose(0, 1)
    out, w = ours(x, key_padding_mask=kpm, attn_mask=attn.causal_mask(7), need_weights=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, ref_w)
    out_c, _ = ours(x, key_padding_mask=kpm, is_causal=True)
    torch.testing.assert_close(out_c, ref)


def test_cross_attention_matches_torch_with_different_kdim():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 2, kdim=10, vdim=12, batch_first=True)
    ours = attn.MultiHeadAttention(16, 2, kdim=10, vdim=12).load_from_torch(mha)
    x, kk, vv = torch.randn(3, 5, 16), torch.randn(3, 9, 10), torch.randn(3, 9, 12)
    ref, _ = mha(x, kk, vv)
    out, _ = ours(x, kk, vv)
    torch.testing.assert_close(out, ref)


def test_cross_attention_shapes_and_context_mask():
    torch.manual_seed(0)
    ca = attn.CrossAttention(16, 24, 4)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 24)
    ctx_mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    out, w = ca(x, ctx, ctx_mask, need_weights=True)
    assert out.shape == (2, 5, 16) and w.shape == (2, 4, 5, 9)
    assert torch.all(w[1, ..., 6:] == 0)
    # what sits in masked context positions does not matter
    ctx2 = ctx.clone()
    ctx2[1, 6:] = 100.0
    torch.testing.assert_close(ca(x, ctx2, ctx_mask)[0], out)


def test_multihead_rejects_bad_heads():
    with pytest.raises(ValueError):
        attn.MultiHeadAttention(10, 3)


def test_sinusoidal_positions():
    pe = attn.sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    torch.testing.assert_close(pe[:, 0], torch.sin(torch.arange(50.0)))
    torch.testing.assert_close(pe[:, 1], torch.cos(torch.arange(50.0)))
    torch.testing.assert_close(pe[7, 2 * 3], torch.tensor(math.sin(7 / 10_000 ** (6 / 16))))
    assert pe.abs().max() <= 1
    # every position is distinct
    assert torch.cdist(pe, pe).add(torch.eye(50) * 10).min() > 0.1
    with pytest.raises(ValueError):
        attn.sinusoidal_positions(4, 3)
    pe2 = attn.sinusoidal_positions_2d(8, 8, 32)
    assert pe2.shape == (64, 32)
    torch.testing.assert_close(pe2[9, :16], attn.sinusoidal_positions(8, 16)[1])   # row 1
    torch.testing.assert_close(pe2[9, 16:], attn.sinusoidal_positions(8, 16)[1])   # col 1


def test_position_modules_add():
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(attn.SinusoidalPositions(8)(x)[0], attn.sinusoidal_positions(5, 8))
    lp = attn.LearnedPositions(8, max_len=10)
    assert lp(x).shape == (2, 5, 8) and lp.emb.requires_grad


def test_transformer_block_is_causal_and_keeps_weights():
    torch.manual_seed(0)
    blk = attn.TransformerBlock(16, 4, d_context=12).eval()
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 4, 12)
    out = blk(x, attn_mask=attn.causal_mask(6), context=ctx, keep_weights=True)
    assert out.shape == x.shape
    assert blk.attn.last_weights.shape == (2, 4, 6, 6) and blk.cross.last_weights.shape == (2, 4, 6, 4)
    assert torch.all(blk.attn.last_weights.triu(1) == 0)
    x2 = x.clone()
    x2[:, 4:] += 1
    out2 = blk(x2, attn_mask=attn.causal_mask(6), context=ctx)
    torch.testing.assert_close(out[:, :4], out2[:, :4])


def test_split_and_merge_heads_follow_torchs_layout():
    x = torch.randn(2, 5, 12)
    s = attn.split_heads(x, 3)
    assert s.shape == (2, 3, 5, 4)
    torch.testing.assert_close(s[:, 2], x[..., 8:12])                   # head i: channels i*dh..
    torch.testing.assert_close(attn.merge_heads(s), x)
    with pytest.raises(ValueError, match="divisible"):
        attn.split_heads(x, 5)


@pytest.mark.parametrize("masked", [False, True])
def test_transformer_block_equals_torch_encoder_layer_norm_first(masked):
    """The library's pre-norm block (the one chapter 03's learner writes) computes what
    nn.TransformerEncoderLayer(norm_first=True, activation="gelu") computes, weights copied."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=64, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
    blk = attn.load_encoder_layer(attn.TransformerBlock(16, 4), layer)
    x = torch.randn(3, 6, 16)
    if masked:
        causal = attn.causal_mask(6)
        pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 5 + [True]])
        want = layer(x, src_mask=~causal, src_key_padding_mask=pad)        # torch: True = forbidden
        got = blk(x, attn_mask=causal, key_padding_mask=pad)               # ours: True = allowed
    else:
        want, got = layer(x), blk(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_load_encoder_layer_refuses_post_norm_and_other_modules():
    post = torch.nn.TransformerEncoderLayer(16, 4, 64, 0.0, "gelu", batch_first=True, norm_first=False)
    with pytest.raises(ValueError, match="post-norm"):
        attn.load_encoder_layer(attn.TransformerBlock(16, 4), post)
    with pytest.raises(TypeError):
        attn.load_encoder_layer(attn.TransformerBlock(16, 4), torch.nn.Linear(16, 16))


def test_masked_attention_returns_output_and_weights():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen) for _ in range(3))
    allowed = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])[:, None, None, :]
    out, w = attn.masked_attention(q, k, v, allowed)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    assert torch.all(w[1, ..., 2:] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
