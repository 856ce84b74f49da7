"""Language models and a captioner on Shapes captions (chapter 03), built from
:mod:`course_lib.models.attention`.

* :class:`LSTMLanguageModel`: the recurrent baseline.
* :class:`TinyGPT`: a decoder-only Transformer with causal self-attention.
* :class:`ShapesCaptioner`: image -> caption, a small CNN encoder whose 8x8 feature map becomes 64
  "image tokens", read by a Transformer decoder through cross-attention. Shipped as
  ``shapes-captioner``: ``pretrained.load("shapes-captioner").caption(images) -> list[str]``.

Both language models map ``ids [n, L] -> logits [n, L, vocab]`` so :func:`lm_loss`,
:func:`perplexity` and :func:`generate` serve both.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import shapes
from ..pretrained import TrainResult, register
from ..runtime import get_device
from ..training import fit, infinite_loader, make_step
from .attention import LearnedPositions, TransformerBlock, causal_mask, sinusoidal_positions_2d


# --------------------------------------------------------------------------------------------
# Text: corpora and tokenizers
# --------------------------------------------------------------------------------------------
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([^\sa-z0-9<>-])")


def join_words(words: list[str]) -> str:
    """Words and punctuation tokens back to text as the corpus writes it: a space between words,
    none before a punctuation mark (``["middle", ",", "a"] -> "middle, a"``)."""
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(words))


class TextTokenizer(shapes.Tokenizer):
    """:class:`~course_lib.data.shapes.Tokenizer` for texts with punctuation (chapter 03's corpus of
    captions and paraphrases): ``decode`` puts a comma back without a space before it, so
    ``decode(encode(text)) == text`` for every text of :func:`caption_corpus`."""

    def decode(self, ids) -> str:
        return join_words(super().decode(ids).split())


def paraphrase_tokenizer(max_length: int = 16) -> TextTokenizer:
    """Word tokenizer over the canonical words and the ``seen`` paraphrase words."""
    words = sorted(set(shapes.canonical_vocabulary()) | set(shapes.paraphrase_vocabulary("seen")))
    return TextTokenizer(words, max_length=max_length)


def caption_corpus(
    n: int, seed: int = 0, split: str = "train", paraphrased: float = 0.75
) -> list[str]:
    """``n`` texts about Shapes pictures of ``split``: a fraction ``paraphrased`` are free ``seen``
    paraphrases, the rest canonical captions. Reproducible from ``seed``."""
    specs = shapes.sample_specs(n, seed=seed, split=split)
    rng = np.random.default_rng([seed, 7])
    return [
        shapes.paraphrase(s, rng, "seen") if rng.random() < paraphrased else shapes.caption(s)
        for s in specs
    ]


def corpus_distribution(split: str = "train", paraphrased: float = 0.75) -> dict:
    """The exact probability of every text :func:`caption_corpus` can produce (a spec uniform over
    the split, then a canonical caption or a uniformly drawn ``seen`` paraphrase): ``{text: p}``."""
    table = shapes.PARAPHRASE_WORDS["seen"]
    specs = shapes.all_specs(split)
    probs: dict = collections.defaultdict(float)
    for s in specs:
        variants = [
            shapes.with_article(tpl.format(size=sz, color=c, shape=sh, where=wh))
            for tpl in table["templates"]
            for sz in table["size"][s.size]
            for c in table["color"][s.color]
            for sh in table["shape"][s.shape]
            for wh in table["where"][(s.row, s.col)]
        ]
        for v in variants:
            probs[v] += paraphrased / len(variants) / len(specs)
        probs[shapes.caption(s)] += (1 - paraphrased) / len(specs)
    return dict(probs)


def best_possible_perplexity(
    tokenizer: shapes.Tokenizer, texts: list[str], split: str = "train", paraphrased: float = 0.75
) -> float:
    """Perplexity of the generator itself on ``texts`` (per predicted token, as :func:`perplexity`):
    no language model can do better on average."""
    probs = corpus_distribution(split, paraphrased)
    nats = -sum(np.log(probs[t]) for t in texts)
    tokens = int(tokenizer(texts)["attention_mask"][:, 1:].sum())
    return float(np.exp(nats / tokens))


# --------------------------------------------------------------------------------------------
# Language models
# --------------------------------------------------------------------------------------------
class LSTMLanguageModel(nn.Module):
    """Embedding -> LSTM -> linear: ``ids [n, L] -> logits [n, L, vocab]``."""

    def __init__(
        self,
        vocab_size: int,
        d_emb: int = 64,
        hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_emb)
        self.lstm = nn.LSTM(
            d_emb, hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, _ = self.lstm(self.drop(self.emb(ids)))  # [n, L, hidden]
        return self.head(self.drop(h))  # [n, L, vocab]


def gpt2_init(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialisation, for ``model.apply(gpt2_init)``: embeddings and linear weights drawn
    from N(0, std^2), biases zero (LayerNorms keep scale 1, shift 0). With PyTorch's default
    N(0, 1) embedding, a tied output layer starts with logits of size ~sqrt(d_model) and a first
    loss far above ln(vocab_size)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class TinyGPT(nn.Module):
    """A decoder-only Transformer: token embedding + learned positions, ``n_layers`` pre-norm blocks
    with causal self-attention, a final LayerNorm and a linear head tied to the embedding;
    initialised as GPT-2 (:func:`gpt2_init`). ``ids [n, L] -> logits [n, L, vocab]``.

    ``block(d_model, n_heads, dropout=...)`` makes each block (default
    :class:`~course_lib.models.attention.TransformerBlock`; chapter 03 passes the learner's own). A
    block is called as ``block(x, attn_mask=..., key_padding_mask=..., keep_weights=...)`` and keeps
    its self-attention as ``block.attn``."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        max_len: int = 16,
        dropout: float = 0.1,
        block=None,
    ):
        super().__init__()
        block = TransformerBlock if block is None else block
        if not callable(block):
            raise TypeError(f"block must be a class or function that makes a block, got {block!r}")
        self.max_len = max_len
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = LearnedPositions(d_model, max_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            block(d_model, n_heads, dropout=dropout) for _ in range(n_layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.emb.weight  # weight tying
        self.apply(gpt2_init)  # small logits at the start: a first loss near ln(vocab_size)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        keep_weights: bool = False,
    ) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence of {L} tokens, this model takes at most {self.max_len}")
        x = self.drop(self.pos(self.emb(ids)))  # [n, L, d]
        mask = causal_mask(L, device=ids.device)  # [L, L], True = may attend
        pad = None if attention_mask is None else ~attention_mask.bool()  # [n, L], True = padding
        for block in self.blocks:
            x = block(x, attn_mask=mask, key_padding_mask=pad, keep_weights=keep_weights)
        return self.head(self.ln(x))  # [n, L, vocab]

    def attention_maps(self) -> list[torch.Tensor]:
        """Self-attention weights of the last ``keep_weights=True`` forward: one [n, h, L, L] per
        layer."""
        return [b.attn.last_weights for b in self.blocks]


def lm_loss(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy (nats per predicted token), ignoring padding.

    ids, attention_mask: [n, L] as a :class:`~course_lib.data.shapes.Tokenizer` returns them (the
    first token is ``<bos>``, which is never predicted). ``reduction="sum"`` gives total nats.
    """
    logits = model(ids[:, :-1], attention_mask[:, :-1])  # [n, L-1, V]
    targets = ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )


@torch.no_grad()
def perplexity(
    model: nn.Module, tokenizer: shapes.Tokenizer, texts: list[str], batch_size: int = 512
) -> float:
    """exp(mean nats per predicted token) over ``texts`` (``<eos>`` included, ``<bos>`` not)."""
    model.eval()
    dev = next(model.parameters()).device
    nats, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size])
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        nats += lm_loss(model, ids, mask, reduction="sum").item()
        count += int(mask[:, 1:].sum())
    return float(np.exp(nats / max(1, count)))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: shapes.Tokenizer,
    n: int = 8,
    temperature: float = 1.0,
    max_length: int | None = None,
    generator: torch.Generator | None = None,
    prefix: str | None = None,
) -> list[str]:
    """Sample ``n`` texts token by token from ``<bos>`` (and an optional word ``prefix``).
    ``temperature=0`` is greedy."""
    model.eval()
    dev = next(model.parameters()).device
    max_length = max_length or tokenizer.max_length
    start = [tokenizer.bos_id] + (tokenizer.encode(prefix, add_special=False) if prefix else [])
    ids = torch.tensor([start] * n, dtype=torch.long, device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    while ids.shape[1] < max_length and not done.all():
        logits = model(ids)[:, -1].float().cpu()  # [n, V]
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(
                torch.softmax(logits / temperature, -1), 1, generator=generator
            )[:, 0]
        nxt = nxt.to(dev).masked_fill(done, tokenizer.pad_id)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == tokenizer.eos_id
    return [tokenizer.decode(row) for row in ids]


def train_language_model(
    model: nn.Module,
    tokenizer: shapes.Tokenizer,
    texts: list[str],
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    desc: str = "lm",
    progress: bool = True,
):
    """Train any ``ids -> logits`` model on ``texts`` with :func:`lm_loss` and the course loop.
    Returns the :class:`~course_lib.training.History`."""
    dev = next(model.parameters()).device
    enc = tokenizer(texts)
    data = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"])
    loader = infinite_loader(data, batch_size, seed=seed)
    total = steps if steps is not None else 10_000
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total + 1, pct_start=0.1)
        if steps is not None
        else None
    )

    def loss_fn(m, batch):
        ids, mask = (t.to(dev) for t in batch)
        return lm_loss(m, ids, mask)

    return fit(
        make_step(model, loss_fn, opt, scheduler=sched, grad_clip=1.0),
        loader,
        steps=steps,
        minutes=minutes,
        desc=desc,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# The captioner
# --------------------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """[n, 3, 32, 32] in [0, 1] -> image tokens [n, 64, d_model]: a small CNN down to an 8x8 grid,
    each cell one token, with a fixed 2-D sinusoidal position added."""

    def __init__(self, d_model: int = 64, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1),
            nn.GELU(),  # [n, w, 16, 16]
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GELU(),  # [n, 2w, 8, 8]
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.GELU(),  # [n, 2w, 8, 8]
            nn.Conv2d(2 * w, d_model, 1),  # [n, d, 8, 8]
        )
        self.register_buffer("pos", sinusoidal_positions_2d(8, 8, d_model), persistent=False)
        self.ln = nn.LayerNorm(d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images.clamp(0, 1))  # [n, d, 8, 8]
        tokens = h.flatten(2).transpose(1, 2)  # [n, 64, d], row by row
        return self.ln(tokens + self.pos)


class ShapesCaptioner(nn.Module):
    """Image -> canonical caption: :class:`ImageEncoder` + a Transformer decoder whose blocks have
    causal self-attention over the words so far and cross-attention to the 64 image tokens.

    ``caption(images [n, 3, 32, 32] in [0, 1]) -> list[str]`` decodes greedily.
    """

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        width: int = 32,
        max_len: int = 12,
    ):
        super().__init__()
        self.tokenizer = shapes.Tokenizer(max_length=max_len)  # canonical words only
        self.max_len = max_len
        self.encoder = ImageEncoder(d_model, width)
        self.emb = nn.Embedding(self.tokenizer.vocab_size, d_model)
        self.pos = LearnedPositions(d_model, max_len)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_context=d_model) for _ in range(n_layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.tokenizer.vocab_size)

    def decode_logits(
        self, ids: torch.Tensor, context: torch.Tensor, keep_weights: bool = False
    ) -> torch.Tensor:
        """ids [n, L] (words so far, from ``<bos>``), context [n, 64, d] -> logits [n, L, vocab]."""
        L = ids.shape[1]
        x = self.pos(self.emb(ids))
        mask = causal_mask(L, device=ids.device)
        for block in self.blocks:
            x = block(x, attn_mask=mask, context=context, keep_weights=keep_weights)
        return self.head(self.ln(x))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(ids, self.encoder(images))

    def loss(self, images, ids, attention_mask) -> torch.Tensor:
        """Next-word cross-entropy of the captions given the pictures (padding ignored)."""
        logits = self(images, ids[:, :-1])
        targets = ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )

    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, keep_weights: bool = False) -> torch.Tensor:
        """Greedy decoding: LongTensor[n, <= max_len] starting with ``<bos>``."""
        dev = next(self.parameters()).device
        context = self.encoder(images.to(dev))
        n = images.shape[0]
        tok = self.tokenizer
        ids = torch.full((n, 1), tok.bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        while ids.shape[1] < self.max_len and not done.all():
            nxt = self.decode_logits(ids, context)[:, -1].argmax(-1).masked_fill(done, tok.pad_id)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == tok.eos_id
        if keep_weights:  # one more pass over the finished words, keeping the attention weights
            self.decode_logits(ids, context, keep_weights=True)
        return ids

    @torch.no_grad()
    def caption(self, images: torch.Tensor, batch_size: int = 500) -> list[str]:
        """Canonical captions of pictures [n, 3, 32, 32] in [0, 1] (greedy decoding)."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            out += [self.tokenizer.decode(r) for r in self.generate_ids(images[i : i + batch_size])]
        self.train(was)
        return out

    def attention_maps(self) -> dict:
        """Weights of the last ``keep_weights=True`` pass: ``{"self": [n, h, L, L] per layer,
        "cross": [n, h, L, 64] per layer}`` (reshape the last axis to 8x8 to see where a word
        looks)."""
        return {
            "self": [b.attn.last_weights for b in self.blocks],
            "cross": [b.cross.last_weights for b in self.blocks],
        }


def caption_accuracy(predicted: list[str], targets: list[str]) -> dict:
    """Exact match, per-attribute accuracy (a caption that does not parse counts wrong everywhere)
    and the fraction of predictions that are valid canonical captions."""
    want = [shapes.parse_caption(t) for t in targets]
    got = []
    for p in predicted:
        try:
            got.append(shapes.parse_caption(p))
        except ValueError:
            got.append(None)
    out = {
        "exact": float(np.mean([p == t for p, t in zip(predicted, targets)])),
        "valid": float(np.mean([g is not None for g in got])),
    }
    for a in shapes.ATTRIBUTES:
        out[a] = float(
            np.mean([g is not None and getattr(g, a) == getattr(w, a) for g, w in zip(got, want)])
        )
    return out


def heldout_confusions(predicted: list[str], targets: list[str], top: int = 3) -> dict:
    """For each held-out (color, shape) pair: what "color shape" the captioner said, most common
    first (fractions)."""
    said = collections.defaultdict(collections.Counter)
    for p, t in zip(predicted, targets):
        ts = shapes.parse_caption(t)
        try:
            ps = shapes.parse_caption(p)
            key = f"{ps.color} {ps.shape}"
        except ValueError:
            key = "(not a caption)"
        said[f"{ts.color} {ts.shape}"][key] += 1
    return {
        pair: {k: round(v / sum(c.values()), 3) for k, v in c.most_common(top)}
        for pair, c in sorted(said.items())
    }


def evaluate_captioner(model: ShapesCaptioner, n: int = 2000, seed: int = 10_000) -> dict:
    """Quality on fresh pictures (seeds never used in training): the ``train`` split (pairs seen in
    training) and the ``heldout`` split (the three (color, shape) pairs it never saw)."""
    out = {"n": n, "seed": seed}
    for split in ("train", "heldout"):
        images, caps = shapes.sample(n, seed=seed, split=split)
        pred = model.caption(images)
        acc = caption_accuracy(pred, caps)
        out[split] = {k: round(v, 4) for k, v in acc.items()}
        if split == "heldout":
            out["heldout_said"] = heldout_confusions(pred, caps)
    out["exact_match"] = out["train"]["exact"]
    out["heldout_exact_match"] = out["heldout"]["exact"]
    return out


CAPTIONER_CONFIG = {"d_model": 64, "n_heads": 4, "n_layers": 2, "width": 32, "max_len": 12}


def train_captioner(
    seed: int = 0,
    quick: bool = False,
    steps: int | None = None,
    n_train: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    config: dict | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train a :class:`ShapesCaptioner` on the ``train`` split (held-out pairs never seen), with
    the course loop; pictures get random pixel noise so the captioner also reads generated ones."""
    from ..judges import add_noise_augmentation

    device = get_device()
    config = dict(config or CAPTIONER_CONFIG)
    steps = steps or (20 if quick else 1200)
    n_train = n_train or (512 if quick else 20_000)
    model = ShapesCaptioner(**config).to(device)
    images, caps = shapes.sample(n_train, seed=seed + 1, split="train")
    enc = model.tokenizer(caps)
    data = torch.utils.data.TensorDataset(images, enc["input_ids"], enc["attention_mask"])
    loader = infinite_loader(data, batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps + 1, pct_start=0.15
    )
    g = torch.Generator().manual_seed(seed)

    def loss_fn(m, batch):
        x, ids, mask = batch
        x = add_noise_augmentation(x, max_sigma=0.08, generator=g)
        return m.loss(x.to(device), ids.to(device), mask.to(device))

    hist = fit(
        make_step(model, loss_fn, opt, scheduler=sched, grad_clip=1.0),
        loader,
        steps=steps,
        desc="shapes-captioner",
        progress=progress,
    )
    model.eval()
    quality = evaluate_captioner(model) if evaluate else {}
    return TrainResult(
        model,
        config,
        quality,
        notes=f"{steps} steps, batch {batch_size}, {n_train} training pictures of the "
        f"train split + pixel noise; {hist.seconds:.0f} s of training loop",
    )


register(
    "shapes-captioner",
    role="judge",
    domain="shapes",
    build=lambda cfg: ShapesCaptioner(**cfg),
    train=train_captioner,
    evaluate=evaluate_captioner,
    chapter="03",
    description="Shapes picture -> canonical caption (CNN encoder + Transformer decoder with "
    "cross-attention); .caption(images) -> list[str]",
)
