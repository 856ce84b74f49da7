"""Probes: what a frozen text encoder's output carries (chapter 06).

:func:`conditioning_probe` trains small heads to read one object's five attributes off a frozen
encoder's token states (learned queries cross-attending, as a UNet's cross-attention does) or off
its single pooled vector (as a timestep-embedding input does), on requests in the seen wording, and
tests them on the unseen wording.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import runtime
from .data import shapes
from .data.wordings import make_requests, paraphrase
from .models.planner import PlannerHeads
from .runtime import get_device
from .text_encoders import MINILM_DIM, FrozenTextEncoder


class PooledHeads(nn.Module):
    """One vector per request (the pooled MiniLM sentence vector) -> one object's five
    attributes."""

    def __init__(self, d_text: int = MINILM_DIM, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(d_text), nn.Dropout(dropout), nn.Linear(d_text, hidden), nn.GELU()
        )
        self.heads = nn.ModuleDict(
            {a: nn.Linear(hidden, len(shapes.ATTRIBUTE_VALUES[a])) for a in shapes.ATTRIBUTES}
        )

    def forward(self, pooled):
        h = self.body(pooled)
        return {a: head(h) for a, head in self.heads.items()}


def conditioning_probe(
    encoder: FrozenTextEncoder,
    how: str = "tokens",
    n_train: int = 2000,
    steps: int = 400,
    n_test: int = 324,
    seed: int = 0,
    device=None,
    encoded: dict | None = None,
) -> dict:
    """Train small heads to read one object's attributes off a frozen encoder's output, on requests
    in the seen wording, and test them on unseen wording (``wordings.paraphrase(..., "unseen")``).
    ``how="tokens"``: learned queries cross-attend to the token states (:class:`PlannerHeads`);
    ``how="pooled"``: an MLP on the single pooled vector (:class:`PooledHeads`). ``encoded``: a dict
    that keeps the encoder's output between calls (pass the same one for both ``how``). Returns
    per-attribute accuracy, ``all`` and the number of test requests ``n``."""
    if how not in ("tokens", "pooled"):
        raise ValueError(f"how must be 'tokens' or 'pooled', got {how!r}")
    device = device or get_device()
    with runtime.seeded(seed):
        texts, scenes = make_requests(n_train, seed=seed, vocab="seen", kind="one")
        rng = np.random.default_rng([seed, 65])
        specs = shapes.all_specs("all")
        test_specs = [specs[i] for i in rng.permutation(len(specs))[:n_test]]
        test_texts = [paraphrase(s, rng, "unseen") for s in test_specs]
        y = shapes.spec_labels([s[0] for s in scenes])
        y_test = shapes.spec_labels(test_specs)
        encoded = {} if encoded is None else encoded
        key = (n_train, n_test, seed)
        if key not in encoded:
            encoded[key] = (encoder.encode(texts), encoder.encode(test_texts))
        enc, enc_test = encoded[key]
        heads = (
            PlannerHeads({"encoder": encoder.kind}) if how == "tokens" else PooledHeads(encoder.dim)
        )
        model = heads.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        g = torch.Generator().manual_seed(seed)

        def logits_of(m, e, idx):
            if how == "tokens":
                out = m(e.states[idx].to(device), e.mask[idx].to(device))
                return {a: out[a][:, 0] for a in shapes.ATTRIBUTES}
            return m(e.pooled[idx].to(device))

        for _ in range(steps):
            model.train()
            idx = torch.randint(0, len(texts), (min(128, len(texts)),), generator=g)
            out = logits_of(model, enc, idx)
            loss = sum(
                F.cross_entropy(out[a], y[idx, i].to(device))
                for i, a in enumerate(shapes.ATTRIBUTES)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = logits_of(model, enc_test, torch.arange(len(test_texts)))
            pred = torch.stack([out[a].argmax(1).cpu() for a in shapes.ATTRIBUTES], 1)
        correct = pred == y_test
        res = {a: correct[:, i].float().mean().item() for i, a in enumerate(shapes.ATTRIBUTES)}
        res["all"] = correct.all(1).float().mean().item()
        res["n"] = len(test_texts)
        return res
