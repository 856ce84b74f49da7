"""Parallel decoding of image tokens (chapter 10 teaches it): masked-token modelling, MaskGIT-style.

An autoregressive model writes a picture's 64 tokens in 64 passes. MaskGIT (Chang et al. 2022; Muse
after it) trains a *bidirectional* Transformer (:class:`~course_lib.models.image_gpt.ImageGPT` with
``causal=False``) to fill in hidden tokens:

* **training** (:func:`masked_loss`): hide a random fraction ``r = cos(pi u / 2)`` (u uniform) of
  each picture's tokens behind ``<mask>``, predict all of them at once, cross-entropy on the hidden
  ones;
* **decoding** (:func:`decode`): start with every token hidden; at each of a few steps predict all
  hidden tokens, sample them, *keep* the ones the model is most confident about and hide the rest
  again; the number still hidden after step ``s`` of ``S`` follows the same cosine,
  ``ceil(G cos(pi/2 (s+1)/S))``, so early steps commit few tokens and late steps many.

Confidence is the probability of the sampled token, plus Gumbel noise scaled by a temperature that
falls to zero over the steps (the paper's "choice temperature"), so early choices are not all taken
where the model is most certain (the background). Classifier-free guidance works as for the
autoregressive model: the caption dropped to the empty caption in training, guided logits in
decoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .image_gpt import ImageGPT, guide_logits, sample_logits, top_k_filter


def mask_schedule(fraction_done: torch.Tensor | float) -> torch.Tensor:
    """Fraction of image tokens hidden when ``fraction_done`` (0 .. 1) of decoding is done: the
    cosine ``cos(pi/2 x)``: 1 at the start, 0 at the end. Training draws ``x`` uniformly."""
    x = torch.as_tensor(fraction_done, dtype=torch.float32)
    return torch.cos(0.5 * math.pi * x)


def masked_inputs(
    model: ImageGPT,
    captions: torch.Tensor,
    codes: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch for the masked model: ``(ids [n, length], hidden [n, G] bool)``.

    Each picture hides ``ceil(r G)`` of its G tokens (at least one), ``r = mask_schedule(u)``,
    u uniform in [0, 1); the hidden ones become ``<mask>``."""
    lay = model.layout
    n, g = codes.shape[0], model.config.image_tokens
    r = mask_schedule(torch.rand(n, generator=generator))  # [n]
    count = torch.ceil(r * g).clamp(min=1)  # [n]
    rank = torch.rand(n, g, generator=generator).argsort(1).argsort(1)  # [n, G] a random order
    hidden = rank < count[:, None]  # [n, G]
    ids = lay.sequence("draw", captions, codes)  # [n, length]
    image = ids[:, -g:].masked_fill(hidden.to(ids.device), lay.mask)
    return torch.cat([ids[:, :-g], image], 1), hidden


def masked_loss(
    model: ImageGPT,
    captions: torch.Tensor,
    codes: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of the hidden image tokens given the caption and the visible tokens (nats per
    hidden token). captions [n, C], codes [n, G]."""
    lay, g = model.layout, model.config.image_tokens
    ids, hidden = masked_inputs(model, captions, codes, generator)
    ids, hidden = ids.to(model.device), hidden.to(model.device)
    logits = lay.image_logits_only(
        model(ids, lay.slots("draw").to(model.device))[:, -g:]
    )  # [n, G, K]
    target = codes.reshape(len(codes), -1).to(model.device)  # [n, G]
    return F.cross_entropy(logits[hidden], target[hidden])


@torch.no_grad()
def decode(
    model: ImageGPT,
    captions: torch.Tensor,
    steps: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 1.0,
    choice_temperature: float = 4.5,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Draw image tokens for captions [n, C] in ``steps`` parallel steps -> codes LongTensor
    [n, g, g].

    ``callback(s, codes [n, G], hidden [n, G])`` runs after step ``s`` (the figure of the chapter
    shows which tokens each step commits)."""
    lay, c = model.layout, model.config
    n, g = captions.shape[0], c.image_tokens
    captions = captions.to(model.device)
    guide = guidance_scale != 1.0
    if guide:
        captions = torch.cat([captions, lay.encode_captions([""]).to(model.device).expand(n, -1)])
    slots = lay.slots("draw").to(model.device)
    codes = torch.zeros(n, g, dtype=torch.long)  # [n, G] on the CPU
    hidden = torch.ones(n, g, dtype=torch.bool)
    for s in range(steps):
        image = (codes + lay.image_offset).masked_fill(hidden, lay.mask).to(model.device)
        image = torch.cat([image, image]) if guide else image
        ids = lay.sequence("draw", captions, image.new_zeros(len(image), 0))
        logits = model(torch.cat([ids, image], 1), slots)[:, -g:]  # [m, G, vocab]
        logits = lay.image_logits_only(logits).float().cpu()  # [m, G, K]
        logits = guide_logits(logits[:n], logits[n:] if guide else None, guidance_scale)
        logits = logits.reshape(n * g, -1)  # [n G, K]
        drawn = sample_logits(logits, temperature, top_k, generator)  # [n G]
        probs = torch.softmax(top_k_filter(logits, top_k), -1).gather(1, drawn[:, None])[:, 0]
        drawn, probs = drawn.view(n, g), probs.view(n, g)
        drawn = torch.where(hidden, drawn, codes)  # visible tokens stay
        # how many stay hidden after this step; committed tokens never come back
        left = int(math.ceil(g * float(mask_schedule((s + 1) / steps)))) if s + 1 < steps else 0
        t = choice_temperature * (1 - (s + 1) / steps)
        u = torch.rand(n, g, generator=generator).clamp(1e-9, 1 - 1e-9)
        confidence = probs.clamp_min(1e-12).log() + t * -torch.log(-torch.log(u))  # + Gumbel noise
        confidence = confidence.masked_fill(~hidden, float("inf"))  # never re-hide a kept token
        rank = confidence.argsort(1).argsort(1)  # 0 = least confident
        codes, hidden = drawn, rank < left
        if callback is not None:
            callback(s, codes.clone(), hidden.clone())
    return codes.view(n, c.grid, c.grid)
