"""Attention written by hand (chapter 03), reused by the text-to-image chapters (05, 06).

Everything here is checked against PyTorch's own kernels in ``tests/test_attention.py``:
:func:`scaled_dot_product_attention` against ``torch.nn.functional.scaled_dot_product_attention``
(same inputs, same masks, same outputs) and :class:`MultiHeadAttention` against
``torch.nn.MultiheadAttention`` after copying its weights
(:meth:`MultiHeadAttention.load_from_torch`).

Mask conventions (they differ between libraries, so every function says which it takes):

* an **allowed mask** is boolean, ``True`` where a query *may* attend to a key. This is the
  convention of ``F.scaled_dot_product_attention``'s boolean ``attn_mask``, of :func:`causal_mask`
  and of :func:`padding_mask`.
* a **key padding mask** in ``torch.nn.MultiheadAttention``'s convention is boolean ``True`` where a
  key is *padding* (to be ignored). :class:`MultiHeadAttention` takes it under the same name.
* a **float mask** is *added* to the scores: ``0`` where allowed, ``-inf`` (or a large negative
  number) where not.

The right way to mask is to push disallowed scores to ``-inf`` *before* the softmax, so that they
get exactly zero weight and the allowed weights still sum to one. Multiplying the scores by a 0/1
mask (a disallowed score becomes 0, and ``exp(0) = 1`` still gets weight), or zeroing weights after
the softmax (the row no longer sums to one) are the classic wrong formulas:
:func:`wrong_masked_attention` keeps them for the notebook to show.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def causal_mask(length: int, key_length: int | None = None, device=None) -> torch.Tensor:
    """BoolTensor[length, key_length]: ``True`` where query ``i`` may attend to key ``j``, i.e.
    ``j <= i``.

    With ``key_length > length`` the queries are the *last* ``length`` positions (as when
    generating with a cache); ``F.scaled_dot_product_attention(is_causal=True)`` instead aligns them
    to the first positions (top-left), so compare the two only on square masks.
    """
    key_length = length if key_length is None else key_length
    i = torch.arange(length, device=device).view(-1, 1) + (key_length - length)  # [Lq, 1]
    j = torch.arange(key_length, device=device).view(1, -1)  # [1, Lk]
    return j <= i  # [Lq, Lk]


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """From a tokenizer's ``attention_mask`` (LongTensor[n, L], 1 for a real token, 0 for padding)
    to an allowed mask BoolTensor[n, 1, 1, L] that broadcasts over heads and queries."""
    return attention_mask.bool()[:, None, None, :]


def to_additive(mask: torch.Tensor | None, dtype=torch.float32) -> torch.Tensor | None:
    """A boolean allowed mask as a float mask to add to scores: 0 where allowed, -inf where not.
    A float mask is returned unchanged."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------------
def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask): FloatTensor[..., Lq, Lk], each row sums to one.

    q: [..., Lq, d]; k: [..., Lk, d]; ``mask``: boolean allowed mask or float additive mask,
    broadcastable to [..., Lq, Lk]; ``is_causal``: also forbid keys after the query (top-left
    aligned, as ``F.scaled_dot_product_attention``).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # [..., Lq, Lk]
    if is_causal:
        lq, lk = scores.shape[-2:]
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # BEFORE the softmax
        else:
            scores = scores + mask
    return torch.softmax(scores, dim=-1)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
):
    """Attention by hand: ``softmax(q k^T / sqrt(d) + mask) v``.

    Same arguments as ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=...)``
    and the same output, FloatTensor[..., Lq, d_v]. With ``return_weights=True`` returns
    ``(output, weights [..., Lq, Lk])``.
    """
    w = attention_weights(q, k, mask, is_causal, scale)
    if dropout_p > 0:
        w = F.dropout(w, dropout_p)
    out = w @ v  # [..., Lq, d_v]
    return (out, w) if return_weights else out


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor):
    """Attention with a boolean ``allowed`` mask (True = may attend), returning
    ``(output [..., Lq, d_v], weights [..., Lq, Lk])``: the course's answer to chapter 03's first
    exercise, which the chapter uses when the learner's version does not pass its check yet."""
    return scaled_dot_product_attention(q, k, v, allowed, return_weights=True)


def wrong_masked_attention(q, k, v, mask: torch.Tensor, how: str = "multiply"):
    """Two classic WRONG ways to mask, kept to be shown next to the right one (chapter 03).

    ``how="multiply"``: ``softmax(scores * mask)``: masked scores become 0, and ``exp(0)`` still
    gets weight, so padding leaks in. ``how="after"``: ``softmax(scores) * mask``: masked weights
    are zero but the rows no longer sum to one. ``mask``: boolean allowed mask.
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    m = mask.to(scores.dtype)
    if how == "multiply":
        w = torch.softmax(scores * m, dim=-1)
    elif how == "after":
        w = torch.softmax(scores, dim=-1) * m
    else:
        raise ValueError("how must be 'multiply' or 'after'")
    return w @ v, w


# --------------------------------------------------------------------------------------------
# Multi-head attention (self- and cross-)
# --------------------------------------------------------------------------------------------
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n, L, d_model] -> [n, h, L, d_model / h]: head ``i`` gets channels ``i*dh : (i+1)*dh``
    (the layout of ``torch.nn.MultiheadAttention``), so each head attends in its own subspace."""
    n, length, d_model = x.shape
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    return x.view(n, length, n_heads, d_model // n_heads).transpose(1, 2)  # [n, h, L, dh]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[n, h, L, dh] -> [n, L, h * dh]: the inverse of :func:`split_heads` (heads side by side)."""
    n, h, length, dh = x.shape
    return x.transpose(1, 2).reshape(n, length, h * dh)  # [n, L, d_model]


class MultiHeadAttention(nn.Module):
    """Multi-head attention, batch first, written with :func:`scaled_dot_product_attention`.

    ``query``: [n, Lq, d_model]; ``key``/``value``: [n, Lk, kdim] (default: the query, i.e.
    self-attention). Cross-attention is the same module with keys and values from another sequence
    (``kdim``/``vdim`` may differ from ``d_model``). Projections are named as in
    ``torch.nn.MultiheadAttention`` so weights copy over (:meth:`load_from_torch`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.kdim, self.vdim = kdim or d_model, vdim or d_model
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(self.kdim, d_model, bias=bias)
        self.v_proj = nn.Linear(self.vdim, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.last_weights: torch.Tensor | None = None  # [n, h, Lq, Lk] when kept

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        keep_weights: bool = False,
    ):
        """Returns ``(output [n, Lq, d_model], weights [n, h, Lq, Lk] or None)``.

        ``key_padding_mask``: BoolTensor[n, Lk], ``True`` at padding keys
        (``nn.MultiheadAttention``'s convention). ``attn_mask``: boolean *allowed* mask or float
        additive mask, broadcastable to [n, h, Lq, Lk]. ``is_causal``: forbid later keys.
        ``keep_weights``: store the weights in ``self.last_weights`` (for attention-map figures).
        """
        key = query if key is None else key
        value = key if value is None else value
        q = split_heads(self.q_proj(query), self.n_heads)  # [n, h, Lq, dh]
        k = split_heads(self.k_proj(key), self.n_heads)  # [n, h, Lk, dh]
        v = split_heads(self.v_proj(value), self.n_heads)  # [n, h, Lk, dh]
        mask = None
        if attn_mask is not None:
            mask = to_additive(attn_mask, q.dtype)
        if key_padding_mask is not None:
            pad = to_additive(~key_padding_mask.bool()[:, None, None, :], q.dtype)  # [n, 1, 1, Lk]
            mask = pad if mask is None else mask + pad
        out, w = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            return_weights=True,
        )
        out = self.out_proj(merge_heads(out))  # [n, Lq, d_model]
        if keep_weights:
            self.last_weights = w.detach()
        return out, (w if need_weights else None)

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (``batch_first`` or not) into this
        one."""
        if mha.embed_dim != self.d_model or mha.num_heads != self.n_heads:
            raise ValueError("embed_dim and num_heads must match")
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3, dim=0)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv)):
            lin.weight.copy_(w)
        if mha.in_proj_bias is not None:
            for lin, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                lin.bias.copy_(b)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            self.out_proj.bias.copy_(mha.out_proj.bias)
        return self


class CrossAttention(MultiHeadAttention):
    """Queries from one sequence (text tokens, or a picture's pixels in chapter 05), keys and values
    from another (image regions, or a caption's token states):
    ``forward(x, context, context_mask)``.

    x: [n, Lq, d_model]; context: [n, Lc, d_context]; ``context_mask``: LongTensor/BoolTensor[n,
    Lc], 1/True for a real context token (a tokenizer's ``attention_mask``).
    """

    def __init__(
        self, d_model: int, d_context: int, n_heads: int, bias: bool = True, dropout: float = 0.0
    ):
        super().__init__(
            d_model, n_heads, kdim=d_context, vdim=d_context, bias=bias, dropout=dropout
        )

    def forward(
        self, x, context, context_mask=None, need_weights: bool = False, keep_weights: bool = False
    ):
        pad = None if context_mask is None else ~context_mask.bool()
        return super().forward(
            x,
            context,
            context,
            key_padding_mask=pad,
            need_weights=need_weights,
            keep_weights=keep_weights,
        )


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------
def sinusoidal_positions(length: int, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """FloatTensor[length, dim], the fixed encoding of "Attention is all you need":
    ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(p / base^(2i/dim))``."""
    if dim % 2:
        raise ValueError("dim must be even")
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # [L, 1]
    freq = torch.exp(
        -math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32) / dim
    )  # [dim/2]
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class SinusoidalPositions(nn.Module):
    """Adds the fixed sinusoidal encoding to x: [n, L, d]."""

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class LearnedPositions(nn.Module):
    """Adds a learned vector per position to x: [n, L, d] (what GPT-2 does)."""

    def __init__(self, dim: int, max_len: int = 64):
        super().__init__()
        self.emb = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.emb[: x.shape[1]]


def sinusoidal_positions_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """FloatTensor[height * width, dim] for a grid read row by row: half the channels encode the
    row, half the column (how an image's regions get positions before a Transformer sees them)."""
    if dim % 4:
        raise ValueError("dim must be a multiple of 4")
    rows = sinusoidal_positions(height, dim // 2)  # [H, d/2]
    cols = sinusoidal_positions(width, dim // 2)  # [W, d/2]
    return torch.cat(
        [rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)],
        dim=-1,
    ).reshape(height * width, dim)


# --------------------------------------------------------------------------------------------
# A Transformer block (pre-norm), with optional cross-attention
# --------------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """Pre-norm block (chapter 03 has the learner write its ``forward``): ``x + SelfAttn(LN(x))``,
    then (if ``d_context``) ``x + CrossAttn(LN(x), context)``, then ``x + MLP(LN(x))``.
    x: [n, L, d_model] -> [n, L, d_model].

    Without cross-attention it computes what ``nn.TransformerEncoderLayer(d_model, n_heads,
    mlp_ratio * d_model, activation="gelu", norm_first=True, batch_first=True)`` computes (checked
    in ``tests/test_attention.py`` after :func:`load_encoder_layer` copies the weights); note the
    mask conventions: ``attn_mask`` here is an *allowed* mask, torch's ``src_mask`` a *forbidden*
    one.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        d_context: int | None = None,
    ):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)
        self.cross = None
        if d_context is not None:
            self.ln_cross = nn.LayerNorm(d_model)
            self.cross = CrossAttention(d_model, d_context, n_heads, dropout=dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x,
        attn_mask=None,
        key_padding_mask=None,
        is_causal: bool = False,
        context=None,
        context_mask=None,
        keep_weights: bool = False,
    ):
        h, _ = self.attn(
            self.ln1(x),
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            keep_weights=keep_weights,
        )
        x = x + h  # residual around attention
        if self.cross is not None and context is not None:
            h, _ = self.cross(self.ln_cross(x), context, context_mask, keep_weights=keep_weights)
            x = x + h
        return x + self.mlp(self.ln2(x))  # residual around the MLP


@torch.no_grad()
def load_encoder_layer(block: nn.Module, layer: nn.TransformerEncoderLayer) -> nn.Module:
    """Copy a ``torch.nn.TransformerEncoderLayer``'s weights into a pre-norm block with the parts
    ``ln1``, ``attn`` (a :class:`MultiHeadAttention`), ``ln2`` and ``mlp`` (Linear, GELU, Linear,
    ...): :class:`TransformerBlock`, or the block the learner writes in chapter 03. Returns
    ``block``."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise TypeError(
            f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}"
        )
    if not layer.norm_first:
        raise ValueError(
            "layer is post-norm (norm_first=False); a pre-norm block computes something else"
        )
    for ours, theirs in (
        (block.ln1, layer.norm1),
        (block.ln2, layer.norm2),
        (block.mlp[0], layer.linear1),
        (block.mlp[2], layer.linear2),
    ):
        if ours.weight.shape != theirs.weight.shape:
            raise ValueError(
                f"shapes differ: {tuple(ours.weight.shape)} vs {tuple(theirs.weight.shape)}"
            )
        ours.weight.copy_(theirs.weight)
        ours.bias.copy_(theirs.bias)
    block.attn.load_from_torch(layer.self_attn)
    return block
