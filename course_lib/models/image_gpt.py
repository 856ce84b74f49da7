"""Images as tokens (chapter 10 teaches it): one Transformer over caption tokens and image tokens.

Chapter 10's tokenizer (:mod:`course_lib.models.vq`) writes a Shapes picture as 8x8 integers. Put
those after a caption's word ids and a picture becomes the end of a sentence, which a language
model can write token by token (DALL·E 2021, Parti, LlamaGen). Put them *before* the caption and
the same model reads pictures (captioning). :class:`ImageGPT` is trained on both orders with one
next-token loss, so one set of weights draws and reads, the idea of today's unified models
(Chameleon, Janus, Show-o) in miniature:

====================  ======================================================================
draw (caption first)  ``<draw> w1 .. wC <image> i1 .. i64``   (the caption padded to C slots)
read (picture first)  ``<read> i1 .. i64 <text> w1 .. wC``
====================  ======================================================================

One vocabulary holds both kinds of token (:class:`TokenLayout`): the course's caption words, five
special tokens, then the ``codebook_size`` image codes. A token's position embedding depends on its
*slot* (which caption word, which grid cell), not on where it sits in the sequence, so an image
token means the same cell in both orders.

The same class with ``causal=False`` is chapter 10's masked model (MaskGIT, Chang et al. 2022):
every token sees every other, image tokens are hidden behind ``<mask>`` and predicted all at once
(:mod:`course_lib.models.maskgit`).

Generation with a **KV cache** (:func:`attend_with_cache`, :meth:`ImageGPT.step`): each new token's
keys and values are kept, so drawing 64 tokens costs 64 one-token passes instead of 64 passes over a
growing sequence; tested to give the uncached model's logits. Sampling one token
(:func:`sample_logits`): temperature, top-k, and classifier-free guidance on logits
(``uncond + w (cond - uncond)``, as Parti and LlamaGen do). The pipelines that use them are in
:mod:`course_lib.models.token_pipelines`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import arguments
from ..config import Config
from ..data import shapes
from .attention import (
    TransformerBlock,
    causal_mask,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)

SPECIALS = ("<draw>", "<read>", "<image>", "<text>", "<mask>")


# --------------------------------------------------------------------------------------------
# Config and vocabulary
# --------------------------------------------------------------------------------------------
@dataclass
class ImageGPTConfig(Config):
    """The shape of an :class:`ImageGPT` (``causal=False``: the masked model)."""

    d_model: int = 192
    n_heads: int = 6
    n_layers: int = 6
    mlp_ratio: int = 4
    dropout: float = 0.0
    grid: int = 8  # image tokens per side (the tokenizer's grid)
    codebook_size: int = 256  # image codes (the tokenizer's codebook)
    caption_slots: int = 10  # caption words + <eos>, padded: canonical captions have 7 or 8 words
    causal: bool = True  # False: bidirectional attention (MaskGIT)

    def __post_init__(self):
        self.d_model = arguments.positive_int(self.d_model, "d_model")
        self.n_heads = arguments.positive_int(self.n_heads, "n_heads")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        self.n_layers = arguments.positive_int(self.n_layers, "n_layers")
        self.mlp_ratio = arguments.positive_int(self.mlp_ratio, "mlp_ratio")
        self.dropout = arguments.real(self.dropout, "dropout", minimum=0.0, maximum=1.0)
        self.grid = arguments.positive_int(self.grid, "grid")
        self.codebook_size = arguments.integer(self.codebook_size, "codebook_size", minimum=2)
        self.caption_slots = arguments.integer(self.caption_slots, "caption_slots", minimum=2)
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be True or False, got {self.causal!r}")

    @property
    def image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def length(self) -> int:
        """Tokens in one sequence: the direction token, the caption slots, a separator, the
        image."""
        return 2 + self.caption_slots + self.image_tokens


class TokenLayout:
    """Where each kind of token lives in the shared vocabulary, and how sequences are laid out.

    Ids: the caption words of :func:`course_lib.data.shapes.canonical_vocabulary` with the word
    tokenizer's ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` (0 .. W-1), then :data:`SPECIALS`
    (W .. W+4), then the image codes (``image_offset`` + code). Position slots (:meth:`slots`): 0
    for the direction token, 1 .. C for caption slots, C + 1 for the separator, C + 2 .. for grid
    cells.
    """

    def __init__(self, config: ImageGPTConfig):
        self.config = config
        self.tokenizer = shapes.Tokenizer(
            shapes.canonical_vocabulary(), max_length=config.caption_slots
        )
        w = self.tokenizer.vocab_size
        self.draw, self.read, self.image, self.text, self.mask = range(w, w + len(SPECIALS))
        self.image_offset = w + len(SPECIALS)
        self.vocab_size = self.image_offset + config.codebook_size
        self.text_words = w

    # ---- captions -------------------------------------------------------------------------
    def encode_captions(self, prompts: list[str]) -> torch.Tensor:
        """Normalised prompts -> LongTensor [n, C]: word ids, ``<eos>``, then ``<pad>``. A word
        outside the vocabulary, or more than C - 1 words, raise ``ValueError`` naming what is
        allowed."""
        c = self.config.caption_slots
        rows = []
        for p in prompts:
            ids = self.tokenizer.encode(p, add_special=False)  # raises on unknown words
            if len(ids) > c - 1:
                raise ValueError(
                    f"prompt {p!r} has {len(ids)} words; this model reads at most {c - 1}"
                )
            rows.append(
                ids + [self.tokenizer.eos_id] + [self.tokenizer.pad_id] * (c - 1 - len(ids))
            )
        return torch.tensor(rows, dtype=torch.long).view(len(prompts), c)

    def decode_caption(self, ids) -> str:
        """Caption word ids (stops at ``<eos>``; ids outside the words are skipped) -> text."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode([i for i in ids if i < self.text_words])

    # ---- sequences ------------------------------------------------------------------------
    def slots(self, direction: str) -> torch.Tensor:
        """LongTensor [length]: the position slot of each sequence index for ``direction``."""
        c, g = self.config.caption_slots, self.config.image_tokens
        text, image = torch.arange(1, c + 1), torch.arange(c + 2, c + 2 + g)
        sep = torch.tensor([c + 1])
        if direction == "draw":
            return torch.cat([torch.tensor([0]), text, sep, image])
        if direction == "read":
            return torch.cat([torch.tensor([0]), image, sep, text])
        raise ValueError(f"direction must be 'draw' or 'read', got {direction!r}")

    def sequence(self, direction: str, captions: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Captions [n, C] (word ids) and image codes [n, G] (0 .. K-1) -> one sequence
        [n, length]."""
        n = captions.shape[0]
        image = codes.reshape(n, -1) + self.image_offset  # [n, G]
        col = lambda t: torch.full((n, 1), t, dtype=torch.long, device=captions.device)  # noqa: E731
        if direction == "draw":
            return torch.cat([col(self.draw), captions, col(self.image), image], 1)
        if direction == "read":
            return torch.cat([col(self.read), image, col(self.text), captions], 1)
        raise ValueError(f"direction must be 'draw' or 'read', got {direction!r}")

    def image_logits_only(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., vocab] -> [..., K]: the image codes' logits (what drawing samples from)."""
        return logits[..., self.image_offset :]

    def word_logits_only(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., vocab] -> [..., W]: the caption words' logits, ``<pad>``, ``<bos>`` and ``<unk>``
        at -inf (what reading picks from)."""
        out = logits[..., : self.text_words].clone()
        tok = self.tokenizer
        out[..., [tok.pad_id, tok.bos_id, tok.unk_id]] = float("-inf")
        return out


# --------------------------------------------------------------------------------------------
# The Transformer
# --------------------------------------------------------------------------------------------
def attend_with_cache(attn, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
    """Causal self-attention of new tokens ``x`` [n, l, d] given the keys and values of every
    earlier token in ``cache`` (chapter 10's exercise). ``attn``: a
    :class:`~course_lib.models.attention.MultiHeadAttention`. The new keys and values are appended
    to ``cache["k"]``, ``cache["v"]`` ([n, h, L, dh]); ``cache=None`` keeps nothing. Returns
    [n, l, d]: what the uncached layer gives for these positions."""
    q = split_heads(attn.q_proj(x), attn.n_heads)  # [n, h, l, dh]
    k = split_heads(attn.k_proj(x), attn.n_heads)
    v = split_heads(attn.v_proj(x), attn.n_heads)
    if cache is not None:
        if "k" in cache:
            k = torch.cat([cache["k"], k], 2)  # [n, h, L + l, dh]
            v = torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
    mask = causal_mask(q.shape[2], k.shape[2], device=x.device)  # new queries are the last
    out = scaled_dot_product_attention(q, k, v, mask)  # [n, h, l, dh]
    return attn.out_proj(merge_heads(out))  # [n, l, d]


class ImageGPT(nn.Module):
    """Decoder-only (``causal=True``) or bidirectional (``causal=False``) Transformer over a
    :class:`TokenLayout` sequence: token embedding + slot embedding, chapter 03's pre-norm
    :class:`~course_lib.models.attention.TransformerBlock` x ``n_layers``, LayerNorm, a linear head.
    ``ids [n, L] -> logits [n, L, vocab]``."""

    def __init__(self, config: "ImageGPTConfig | dict | None" = None):
        super().__init__()
        c = config if isinstance(config, ImageGPTConfig) else ImageGPTConfig.from_dict(config or {})
        self.config = c
        self.layout = TokenLayout(c)
        self.emb = nn.Embedding(self.layout.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.length, c.d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_heads, c.mlp_ratio, c.dropout)
            for _ in range(c.n_layers)
        )
        self.ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, self.layout.vocab_size, bias=False)
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def forward(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """ids [n, L] and their position slots [L] -> logits [n, L, vocab] (no cache)."""
        x = self.emb(ids) + self.pos(slots)  # [n, L, d]
        mask = causal_mask(ids.shape[1], device=ids.device) if self.config.causal else None
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.head(self.ln(x))  # [n, L, vocab]

    def step(
        self, ids: torch.Tensor, slots: torch.Tensor, caches: list[dict], attend=None
    ) -> torch.Tensor:
        """The next ``l`` tokens ids [n, l] at slots [l], given ``caches`` (one dict per layer,
        filled by earlier calls; start with ``[{} for _ in model.blocks]``) -> logits [n, l, vocab].
        ``attend``: the cached attention function (default :func:`attend_with_cache`; chapter 10
        passes the learner's)."""
        attend = attend_with_cache if attend is None else attend
        if not self.config.causal:
            raise ValueError("a KV cache needs causal attention; this model is bidirectional")
        x = self.emb(ids) + self.pos(slots)  # [n, l, d]
        for block, cache in zip(self.blocks, caches):
            x = x + attend(block.attn, block.ln1(x), cache)
            x = x + block.mlp(block.ln2(x))
        return self.head(self.ln(x))  # [n, l, vocab]


def build_image_gpt(config: "ImageGPTConfig | dict | None" = None) -> ImageGPT:
    """An untrained :class:`ImageGPT` (``config``: an :class:`ImageGPTConfig` or a partial dict)."""
    return ImageGPT(config)


# --------------------------------------------------------------------------------------------
# Sampling one token
# --------------------------------------------------------------------------------------------
def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep each row's ``k`` largest logits, set the rest to -inf (chapter 10's exercise).
    logits [n, V] -> [n, V]; ``k=None`` or ``k >= V`` keeps everything. Ties at the k-th value are
    kept."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [n, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of logits [n, V]: ``temperature=0`` takes the argmax; otherwise sample from
    ``softmax(top_k_filter(logits) / temperature)``. Returns LongTensor [n] (drawn on the CPU, so
    the same generator gives the same tokens on every device)."""
    logits = logits.float().cpu()
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(top_k_filter(logits, top_k) / temperature, -1)  # [n, V]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def sample_top_k(
    logits: torch.Tensor,
    k: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Chapter 10's exercise 2 with its arguments in the exercise's order: one token per row of
    logits [n, V] from the ``k`` most likely codes at ``temperature`` (:func:`sample_logits`). The
    reference the chapter's later cells use while the learner's own is unfinished."""
    return sample_logits(logits, temperature, k, generator)


def guide_logits(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: ``uncond + scale (cond - uncond)`` (scale 1, or no
    ``uncond``: the conditional logits). Computed on log-probabilities, as Parti and LlamaGen do."""
    if uncond is None or scale == 1.0:
        return cond
    cond, uncond = F.log_softmax(cond.float(), -1), F.log_softmax(uncond.float(), -1)
    return uncond + scale * (cond - uncond)


def check_sampling(temperature, top_k, vocab: int) -> tuple[float, int | None]:
    """``(temperature, top_k)`` checked: temperature a number >= 0, top_k None or 1 .. ``vocab``."""
    t = arguments.real(temperature, "temperature", minimum=0.0)
    k = None if top_k is None else arguments.integer(top_k, "top_k", minimum=1, maximum=vocab)
    return t, k


# --------------------------------------------------------------------------------------------
# Drawing and reading (the loops the pipelines call)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def draw_codes(
    model: ImageGPT,
    captions: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    callback=None,
    sampler=None,
    attend=None,
) -> torch.Tensor:
    """Write the image tokens after each caption, one grid cell at a time in raster order.

    captions [n, C] (word ids, :meth:`TokenLayout.encode_captions`) -> codes LongTensor [n, g, g].
    ``guidance_scale != 1`` also runs each sequence with the empty caption and guides the logits
    (:func:`guide_logits`). ``use_cache=False`` recomputes the whole sequence for each token (the
    slow way, for comparison). ``callback(i, codes [n, i + 1])`` runs after token ``i``.
    ``sampler(logits [n, K], generator) -> codes [n]`` replaces :func:`sample_logits`; ``attend``
    replaces :func:`attend_with_cache` (see :meth:`ImageGPT.step`).
    """
    lay, c = model.layout, model.config
    n = captions.shape[0]
    captions = captions.to(model.device)
    guide = guidance_scale != 1.0
    if guide:
        empty = lay.encode_captions([""]).to(model.device).expand(n, -1)
        captions = torch.cat([captions, empty])  # [2n, C]
    slots = lay.slots("draw").to(model.device)
    prefix = lay.sequence("draw", captions, captions.new_zeros(len(captions), 0))  # [m, C + 2]
    caches = [{} for _ in model.blocks]
    codes = []
    seq = prefix
    for i in range(c.image_tokens):
        if use_cache:
            fresh = seq if i == 0 else seq[:, -1:]
            logits = model.step(
                fresh, slots[seq.shape[1] - fresh.shape[1] : seq.shape[1]], caches, attend
            )
        else:
            logits = model(seq, slots[: seq.shape[1]])
        last = lay.image_logits_only(logits[:, -1])  # [m, K]
        last = guide_logits(last[:n], last[n:] if guide else None, guidance_scale)
        if sampler is None:
            tok = sample_logits(last, temperature, top_k, generator)  # [n]
        else:
            tok = sampler(last.float().cpu(), generator)
        tok = tok.to(model.device)
        codes.append(tok)
        nxt = (tok + lay.image_offset)[:, None]
        seq = torch.cat([seq, torch.cat([nxt, nxt]) if guide else nxt], 1)
        if callback is not None:
            callback(i, torch.stack(codes, 1).cpu())
    return torch.stack(codes, 1).view(n, c.grid, c.grid)


@torch.no_grad()
def read_codes(model: ImageGPT, codes: torch.Tensor) -> list[str]:
    """Write a caption after each picture's tokens: greedy, with a KV cache, over caption words.
    codes [n, g, g] -> one caption per picture."""
    lay, c = model.layout, model.config
    codes = codes.to(model.device).reshape(len(codes), -1)
    n = codes.shape[0]
    empty = codes.new_zeros(n, 0)
    seq = lay.sequence("read", empty, codes)  # [n, G + 2]
    slots = lay.slots("read").to(model.device)
    caches = [{} for _ in model.blocks]
    logits = model.step(seq, slots[: seq.shape[1]], caches)[:, -1]
    words = []
    for j in range(c.caption_slots):
        tok = lay.word_logits_only(logits).argmax(-1)  # [n]
        words.append(tok)
        if j + 1 < c.caption_slots:
            pos = seq.shape[1] + j
            logits = model.step(tok[:, None], slots[pos : pos + 1], caches)[:, -1]
    ids = torch.stack(words, 1).cpu()  # [n, C]
    return [lay.decode_caption(row) for row in ids]
