"""A tiny CLIP on Shapes (chapter 06; its score is reused by chapter 07).

:class:`TinyCLIP`: an image tower (a small CNN) and a text tower (chapter 03's Transformer block
over the canonical Shapes words) trained with the symmetric InfoNCE loss (:func:`info_nce_loss`) so
that a picture and its caption land close together in one 64-d space. Text-to-image retrieval
(:func:`retrieval_accuracy`, :func:`retrieve`) and the CLIP score (:func:`clip_score`, Hessel et al.
2021) come with it. Shipped as ``shapes-clip``.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import runtime
from ..data import shapes
from ..pretrained import TrainResult, register
from ..runtime import get_device
from ..training import fit, make_step
from .attention import TransformerBlock

#: The shipped model's shape.
CLIP_CONFIG = {"dim": 64, "width": 32, "d_text": 64, "layers": 1}


def info_nce_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric contrastive loss. ``image_emb``, ``text_emb``: [n, d], row i of each is a
    matching pair; both L2-normalised here. logits = scale * cos; cross-entropy of each picture
    against all texts and of each text against all pictures, averaged."""
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = torch.as_tensor(logit_scale) * img @ txt.T  # [n, n]
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class ImageTower(nn.Module):
    """A small CNN: [n, 3, 32, 32] in [0, 1] -> [n, dim]. The first layer already halves the size:
    full-resolution convolutions are most of a small CNN's time on a CPU."""

    def __init__(self, dim: int = 64, width: int = 32, hidden: int = 128):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1),
            nn.ReLU(),  # 16x16 (no full-size layer: speed)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # 8x8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * w * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x):
        return self.net(x.clamp(0, 1))


class TextTower(nn.Module):
    """Word embeddings + learned positions + Transformer blocks (chapter 03's), masked mean pool,
    projection: token ids [n, L] -> [n, dim]. Its tokenizer is the canonical Shapes vocabulary."""

    def __init__(
        self,
        dim: int = 64,
        d_model: int = 64,
        n_heads: int = 4,
        layers: int = 1,
        max_length: int = 12,
    ):
        super().__init__()
        self.tokenizer = shapes.Tokenizer(max_length=max_length)
        self.embed = nn.Embedding(len(self.tokenizer), d_model)
        self.pos = nn.Parameter(torch.randn(max_length, d_model) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, dim)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        pad = attention_mask == 0
        for blk in self.blocks:
            h = blk(h, key_padding_mask=pad)
        h = self.norm(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.proj((h * m).sum(1) / m.sum(1).clamp(min=1))


class TinyCLIP(nn.Module):
    """Image tower + text tower in one embedding space, with a learned temperature."""

    def __init__(self, dim: int = 64, width: int = 32, d_text: int = 64, layers: int = 1):
        super().__init__()
        self.image_tower = ImageTower(dim, width)
        self.text_tower = TextTower(dim, d_text, layers=layers)
        self.logit_scale_log = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.logit_scale_log.exp().clamp(max=100)

    @property
    def device(self):
        return next(self.parameters()).device

    def tokenize(self, texts):
        tok = self.text_tower.tokenizer(list(texts))
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    def encode_images(self, images, batch_size: int = 512) -> torch.Tensor:
        """L2-normalised picture embeddings [n, dim]."""
        out = [
            self.image_tower(images[i : i + batch_size].to(self.device))
            for i in range(0, len(images), batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)

    def encode_texts(self, texts) -> torch.Tensor:
        """L2-normalised caption embeddings [n, dim] (canonical Shapes words; others raise
        ValueError)."""
        ids, mask = self.tokenize(texts)
        return F.normalize(self.text_tower(ids, mask), dim=-1)

    def forward(self, images, texts):
        """The contrastive loss of a batch of matching (picture, caption) pairs."""
        return info_nce_loss(
            self.image_tower(images.to(self.device)),
            self.text_tower(*self.tokenize(texts)),
            self.logit_scale,
        )


@torch.no_grad()
def retrieval_accuracy(model: TinyCLIP, images: torch.Tensor, captions: list[str]) -> dict:
    """Top-1 retrieval among ``n`` matching pairs (picture i goes with caption i, all captions
    distinct): text-to-image (each caption finds its picture among all n) and image-to-text."""
    model.eval()
    sim = model.encode_texts(captions) @ model.encode_images(images).T  # [n texts, n images]
    target = torch.arange(len(captions), device=sim.device)
    return {
        "text_to_image_top1": (sim.argmax(1) == target).float().mean().item(),
        "image_to_text_top1": (sim.argmax(0) == target).float().mean().item(),
        "n": len(captions),
    }


@torch.no_grad()
def retrieve(model: TinyCLIP, query: str, images: torch.Tensor, k: int = 5):
    """The ``k`` pictures that match a caption best: (indices [k], cosine similarities [k])."""
    model.eval()
    sim = (model.encode_texts([query]) @ model.encode_images(images).T)[0]
    top = sim.topk(min(k, len(images)))
    return top.indices.cpu(), top.values.cpu()


@torch.no_grad()
def clip_score(
    images: torch.Tensor,
    captions: list[str],
    model: TinyCLIP | None = None,
    reduction: str = "mean",
):
    """CLIP score (Hessel et al. 2021, torchmetrics' scale): ``100 * max(cos(image, caption), 0)``
    with the shipped ``shapes-clip``. ``reduction="none"`` gives one score per pair [n]."""
    model = model if model is not None else load_shapes_clip()
    model.eval()
    cos = (model.encode_images(images) * model.encode_texts(captions)).sum(-1)
    s = 100 * cos.clamp(min=0).cpu()
    return s if reduction == "none" else s.mean().item()


def load_shapes_clip(device=None) -> TinyCLIP:
    """The shipped ``shapes-clip``, loaded once per device."""
    return _load_once(str(device if device is not None else get_device()))


@functools.lru_cache(maxsize=4)
def _load_once(device: str) -> TinyCLIP:
    from .. import pretrained

    return pretrained.load("shapes-clip", device)


def clip_training_pool(renders_per_caption: int, seed: int = 0):
    """Every canonical caption (324) rendered ``renders_per_caption`` times with fresh jitter:
    pictures [324 * r, 3, 32, 32], caption index of each [324 * r]."""
    specs = shapes.all_specs("all")
    rng = np.random.default_rng([seed, 60])
    images = shapes.render([s for _ in range(renders_per_caption) for s in specs], rng)
    index = torch.arange(len(specs)).repeat(renders_per_caption)
    return images, index


def train_clip(
    steps: int = 1500,
    batch_size: int = 128,
    renders_per_caption: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    device=None,
    config: dict | None = None,
    progress: bool = True,
    contrastive_loss=info_nce_loss,
):
    """Train a :class:`TinyCLIP` on all 324 canonical captions. Each batch holds ``batch_size``
    *different* captions (a repeated caption in a batch would be a false negative for InfoNCE),
    each with one of its pictures, plus pixel noise (generated pictures are grainy).
    ``contrastive_loss(image_emb, text_emb, logit_scale)``: the loss (default
    :func:`info_nce_loss`; chapter 06 passes the learner's own). Returns ``(model, history)``."""
    if not callable(contrastive_loss):
        raise TypeError(
            "contrastive_loss must be a function (image_emb, text_emb, logit_scale) -> loss, "
            f"got {type(contrastive_loss).__name__}"
        )
    from ..judges import add_noise_augmentation

    device = device or get_device()
    with runtime.seeded(seed):
        config = dict(CLIP_CONFIG, **(config or {}))
        model = TinyCLIP(**config).to(device)
        images, index = clip_training_pool(renders_per_caption, seed)
        captions = shapes.all_captions("all")
        n_caps = len(captions)
        ids_all, mask_all = model.tokenize(captions)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 3 / steps)
        )

        def batches():
            while True:
                cap = torch.randperm(n_caps, generator=g)[:batch_size]  # [b], all different
                render = torch.randint(0, renders_per_caption, (len(cap),), generator=g)  # [b]
                pick = cap + n_caps * render
                yield images[pick], cap

        def loss_fn(m, batch):
            x, cap = batch
            x = add_noise_augmentation(x, generator=g).to(device)
            cap = cap.to(device)
            loss = contrastive_loss(
                m.image_tower(x), m.text_tower(ids_all[cap], mask_all[cap]), m.logit_scale
            )
            return loss, {"scale": m.logit_scale.item()}

        hist = fit(
            make_step(model, loss_fn, opt, scheduler=sched),
            batches(),
            steps=steps,
            desc="shapes-clip",
            progress=progress,
        )
        model.eval()
        return model, hist


def evaluate_clip(model: TinyCLIP, seed: int = 10_000) -> dict:
    """Top-1 retrieval over the 324 canonical captions, one fresh picture each (``seed`` unseen in
    training), without and with pixel noise."""
    from ..judges import add_noise_augmentation

    specs = shapes.all_specs("all")
    images = shapes.render(specs, np.random.default_rng([seed, 61]))
    caps = [shapes.caption(s) for s in specs]
    clean = retrieval_accuracy(model, images, caps)
    noisy = retrieval_accuracy(
        model, add_noise_augmentation(images, generator=torch.Generator().manual_seed(seed)), caps
    )
    return {
        "text_to_image_top1": round(clean["text_to_image_top1"], 4),
        "image_to_text_top1": round(clean["image_to_text_top1"], 4),
        "text_to_image_top1_noisy": round(noisy["text_to_image_top1"], 4),
        "n": len(caps),
        "seed": seed,
    }


def _train_clip_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps = 20 if quick else 800
    t0 = time.perf_counter()
    model, hist = train_clip(steps=steps, seed=seed, config=CLIP_CONFIG)
    secs = time.perf_counter() - t0
    q = evaluate_clip(model)
    q["train_steps"] = hist.steps
    q["train_loop_seconds"] = round(secs, 1)
    return TrainResult(
        model,
        dict(CLIP_CONFIG),
        q,
        notes=f"{hist.steps} steps, batch 128 distinct captions of all 324, 16 renders each, "
        "pixel noise, AdamW one-cycle lr 2e-3, symmetric InfoNCE with a learned temperature",
    )


register(
    "shapes-clip",
    role="judge",
    domain="shapes",
    build=lambda cfg: TinyCLIP(**cfg),
    train=_train_clip_registered,
    evaluate=evaluate_clip,
    chapter="06",
    description="tiny CLIP on Shapes: CNN image tower + word Transformer text tower, InfoNCE",
)
