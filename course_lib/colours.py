"""What a pretrained text encoder knows about colour (chapter 06).

matplotlib ships two tables of colour names with their RGB: the XKCD colour survey (949 names that
people typed for colours they were shown, ``matplotlib.colors.XKCD_COLORS``) and the 148 CSS4 names.
:func:`colour_names` reads both. :func:`colour_probe` measures world knowledge directly: a small
head maps a frozen encoder's embedding of a colour *name* to its RGB, trained on some names and
tested on held-out names, scored by the colour difference ΔE (CIE76: the distance in CIELAB, where 1
is about the smallest difference a person notices and 2-10 is "similar at a glance") against a
baseline that predicts the mean colour of the training names.

The tables, the colour maths and the Shapes words (:func:`nearest_shapes_colour` names the Shapes
colour nearest to any RGB in Lab, so colour names far from all six are the colours Shapes cannot
draw) live in :mod:`course_lib.data.colour_names`; they are importable from here too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import runtime
from .data.colour_names import (
    CRUDE_WORDS,
    OTHER_COLOUR_WORDS,
    PALE_CHROMA,
    colour_names,
    delta_e,
    lch,
    nearest_shapes_colour,
    other_colour_names,
    rgb_to_lab,
    shapes_colour_names,
    shapes_colour_of,
    shapes_palette,
)

__all__ = [
    "CRUDE_WORDS",
    "OTHER_COLOUR_WORDS",
    "PALE_CHROMA",
    "colour_names",
    "delta_e",
    "lch",
    "nearest_shapes_colour",
    "other_colour_names",
    "rgb_to_lab",
    "shapes_colour_names",
    "shapes_colour_of",
    "shapes_palette",
    "hue_figure",
    "name_split",
    "fit_colour_head",
    "name_features",
    "colour_probe",
]


def hue_figure(exclude: tuple = (), marked: dict | None = None):
    """Every XKCD and CSS4 colour name on the CIELAB hue circle (angle: hue, radius: chroma), drawn
    in its own colour: large where :func:`shapes_colour_of` takes it for a Shapes colour, small
    where it does not. The six Shapes colours are the labelled stars. ``marked``: ``{word: rgb}``
    drawn as labelled crosses (the unseen colour words). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    names = colour_names()
    rgb = np.array([c for _, c in names])
    _, chroma, hue = lch(rgb)
    taken = np.array([shapes_colour_of(n, c) is not None for n, c in names])
    fig = plt.figure(figsize=(6.2, 6.2))
    ax = fig.add_subplot(projection="polar")
    ax.set_facecolor("0.92")
    for keep, size in ((False, 6), (True, 22)):
        k = taken == keep
        ax.scatter(
            np.radians(hue[k]),
            chroma[k],
            s=size,
            c=rgb[k],
            edgecolors="none" if not keep else "k",
            linewidths=0.2,
            label="a Shapes colour" if keep else "not clearly one",
        )
    palette_names, palette = shapes_palette()
    _, pc, ph = lch(palette)
    ax.scatter(np.radians(ph), pc, marker="*", s=260, c=palette, edgecolors="k", linewidths=0.8)
    for n, c, h in zip(palette_names, pc, ph):
        ax.annotate(
            n,
            (np.radians(h), c),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=9,
            weight="bold",
        )
    for word, colour in (marked or {}).items():
        _, c, h = (float(v) for v in lch(np.asarray(colour)))
        ax.scatter(
            [np.radians(h)], [c], marker="X", s=60, c=[colour], edgecolors="k", linewidths=0.8
        )
        ax.annotate(
            word, (np.radians(h), c), xytext=(4, -10), textcoords="offset points", fontsize=7
        )
    ax.set_rlabel_position(100)
    ax.set_yticks([30, 60, 90], ["chroma 30", "60", "90"], fontsize=7)
    ax.set_xticks(
        np.radians(np.arange(0, 360, 45)), [f"{d}°" for d in range(0, 360, 45)], fontsize=7
    )
    ax.legend(loc="lower left", bbox_to_anchor=(-0.12, -0.12), fontsize=8, framealpha=0.9)
    ax.set_title("colour names on the CIELAB hue circle", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# The colour probe
# --------------------------------------------------------------------------------------------
def name_split(
    names: list[str], test_fraction: float = 0.3, seed: int = 0, how: str = "names"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a random split of ``names``. ``how="names"``: any name may be held
    out ("dark red" held out while "red" trains); ``how="words"``: the test names are single words
    that no training name contains (held out: "cerulean"; "cerulean blue" is then not trained on
    either), so only what the encoder knows about the word itself can place it."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if how not in ("names", "words"):
        raise ValueError(f"how must be 'names' or 'words', got {how!r}")
    rng = np.random.default_rng(seed)
    if how == "names":
        order = rng.permutation(len(names))
        k = int(round(len(names) * test_fraction))
        return np.sort(order[k:]), np.sort(order[:k])
    single = [i for i, n in enumerate(names) if len(n.split()) == 1]
    pick = rng.permutation(single)[: int(round(len(single) * test_fraction))]
    held = {names[i] for i in pick}
    train = [i for i, n in enumerate(names) if not set(n.split()) & held]
    return np.array(train), np.sort(pick)


class ColourHead(nn.Module):
    """A small MLP: a name's embedding [n, d] -> its RGB [n, 3] in [0, 1]."""

    def __init__(self, d: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d),
            nn.Dropout(dropout),
            nn.Linear(d, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.net(x)


def fit_colour_head(
    features: torch.Tensor,
    rgb: torch.Tensor,
    steps: int = 600,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> ColourHead:
    """Train a :class:`ColourHead` on (features [n, d], rgb [n, 3]): squared error in RGB, full
    batch, AdamW."""
    with runtime.seeded(seed):
        head = ColourHead(features.shape[1])
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            head.train()
            loss = ((head(features) - rgb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return head.eval()


@torch.no_grad()
def name_features(encoder, names: list[str], template: str = "{}") -> torch.Tensor:
    """One vector per colour name [n, d]: the encoder's pooled vector of
    ``template.format(name)``."""
    return encoder.encode([template.format(n) for n in names]).pooled.float()


def colour_probe(
    encoder,
    names=None,
    test_fraction: float = 0.3,
    seed: int = 0,
    steps: int = 600,
    features: torch.Tensor | None = None,
    how: str = "names",
) -> dict:
    """Predict held-out colour names' RGB from ``encoder``'s embedding of the name.

    ``names``: ``[(name, rgb), ...]`` (default :func:`colour_names`). Returns ΔE on the held-out
    names for the probe and for the mean-colour baseline (mean and median), the predictions and the
    split. ``features`` (optional, [n, d]) replaces the encoder's embeddings (e.g. random vectors as
    a control). ``how``: the split (:func:`name_split`)."""
    names = colour_names() if names is None else list(names)
    words = [n for n, _ in names]
    rgb = torch.tensor(np.array([c for _, c in names]), dtype=torch.float32)
    x = name_features(encoder, words) if features is None else features.float()
    tr, te = name_split(words, test_fraction, seed, how)
    head = fit_colour_head(x[tr], rgb[tr], steps=steps, seed=seed)
    with torch.no_grad():
        pred = head(x[te]).numpy()
    mean = rgb[tr].mean(0).numpy()
    de = delta_e(pred, rgb[te].numpy())
    de_base = delta_e(np.broadcast_to(mean, pred.shape), rgb[te].numpy())
    return {
        "delta_e": float(de.mean()),
        "delta_e_median": float(np.median(de)),
        "baseline_delta_e": float(de_base.mean()),
        "baseline_delta_e_median": float(np.median(de_base)),
        "n_train": len(tr),
        "n_test": len(te),
        "test_names": [words[i] for i in te],
        "predicted": pred,
        "true": rgb[te].numpy(),
        "per_name_delta_e": de,
    }


def paired_delta_e_difference(result_a: dict, result_b: dict, z: float = 1.96) -> tuple:
    """``(mean, low, high)``: the mean per-name ΔE of probe ``a`` minus that of probe ``b``, with
    its 95% interval (normal approximation over the held-out names). Both must be
    :func:`colour_probe` results on the same held-out names (same names, seed and ``how``), so
    each name's difficulty cancels; an interval that contains 0 does not separate the two."""
    if result_a["test_names"] != result_b["test_names"]:
        raise ValueError("the two probes must hold out the same names (same names, seed and how)")
    d = np.asarray(result_a["per_name_delta_e"], dtype=np.float64) - np.asarray(
        result_b["per_name_delta_e"], dtype=np.float64
    )  # [n_test]
    if len(d) < 2:
        raise ValueError(f"need at least 2 held-out names, got {len(d)}")
    half = z * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)
