"""Architecture diagrams drawn by code (matplotlib), one per chapter where a picture explains the
model better than prose: the GAN training loop (chapter 01), the VAE (chapter 02), the pre-norm
Transformer block (chapter 03), the diffusion process and its training step (chapter 04), the
text-conditioned U-Net inside its sampling pipeline (chapter 05).

Each function draws into a new figure (or the ``ax`` it is given) and returns the figure; nothing
is shown or saved here. Boxes are model parts, solid arrows the forward pass, dashed arrows where
gradients go.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

FONT = 11  # every label in the diagrams; small enough to fit, large enough to read
COLORS = {
    "model": "#cfe2f3",
    "data": "#e8e8e8",
    "loss": "#f4cccc",
    "op": "#fff2cc",
    "noise": "#d9ead3",
}


def _axes(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, kind="model", fontsize=FONT):
    """A rounded box centred at (x, y), w x h in axis units (0..100)."""
    if kind not in COLORS:
        raise ValueError(f"kind must be one of {sorted(COLORS)}, got {kind!r}")
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.6,rounding_size=2",
            fc=COLORS[kind],
            ec="#444444",
            lw=1.2,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(
    ax,
    start,
    end,
    text=None,
    dashed=False,
    color="#333333",
    offset=(0, 2.5),
    rad=0.0,
    fontsize=FONT - 1,
):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            lw=1.4,
            color=color,
            linestyle="--" if dashed else "-",
            connectionstyle=f"arc3,rad={rad}",
        )
    )
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def gan_loop(ax=None):
    """Chapter 01: one step of the game. Noise -> G -> fakes; D scores real and fake pictures; D's
    loss updates D only (fakes detached), then G's loss flows back through D into G."""
    fig, ax = _axes(ax, (11, 4.2))
    ax.set_ylim(9, 100)  # nothing is drawn below y = 10: no empty band at the bottom
    _box(ax, 8, 70, 12, 12, "noise\nz ~ N(0, I)", "noise")
    _box(ax, 30, 70, 12, 12, "generator\nG", "model")
    _box(ax, 52, 70, 13, 12, "fakes\nG(z)", "data")
    _box(ax, 52, 25, 13, 12, "real digits\nx", "data")
    _box(ax, 74, 47, 12, 14, "discriminator\nD", "model")
    _box(ax, 90, 72, 16, 16, "G's loss\n-log D(G(z))", "loss", fontsize=FONT - 1)
    _box(ax, 89, 22, 19, 20, "D's loss\n-log D(x)\n-log(1-D(G(z)))", "loss", fontsize=FONT - 2)
    _arrow(ax, (14.5, 70), (23.5, 70))
    _arrow(ax, (36.5, 70), (45, 70))
    _arrow(
        ax,
        (58.5, 67),
        (67.5, 51),
        "detached for D's step,\nattached for G's step",
        offset=(-12, -13),
    )
    _arrow(ax, (58.5, 28), (67.5, 43))
    _arrow(ax, (80.5, 52), (83, 66))
    _arrow(ax, (80.5, 42), (83, 30))
    _arrow(  # starts at the left edge of D's loss box, below its text
        ax,
        (78.5, 15),
        (73, 39),
        "1. opt_d.step()",
        dashed=True,
        color="#1f5fa8",
        offset=(-10, -9),
        rad=-0.3,
    )
    _arrow(
        ax,
        (87, 82),
        (30, 78),
        "2. opt_g.step(): gradients through D into G",
        dashed=True,
        color="#a61c1c",
        offset=(0, 6),
        rad=0.25,
    )
    ax.set_title(
        "one step of the GAN game: D learns first, then G learns to fool the updated D",
        fontsize=FONT + 1,
    )
    return fig


def vae(ax=None):
    """Chapter 02: encoder -> (mu, log sigma^2) -> z = mu + sigma * eps -> decoder -> Bernoulli
    logits; the loss is reconstruction + KL to the prior."""
    fig, ax = _axes(ax, (11, 4.2))
    _box(ax, 7, 60, 10, 14, "digit\nx", "data")
    _box(ax, 24, 60, 13, 16, "encoder\nq(z | x)", "model")
    _box(ax, 43, 60, 13, 18, "mean mu\nlog var =\nlog sigma^2", "op", fontsize=FONT - 1)
    _box(ax, 43, 20, 13, 12, "eps ~ N(0, I)", "noise")
    _box(ax, 62, 60, 14, 14, "z = mu +\nsigma * eps", "op")
    _box(ax, 80, 60, 13, 16, "decoder\np(x | z)", "model")
    _box(ax, 95, 60, 8, 14, "logits\n(784)", "data", fontsize=FONT - 1)
    _box(
        ax,
        72,
        20,
        22,
        16,
        "loss = reconstruction\n(BCE, summed over pixels)\n+ KL(q || N(0, I))",
        "loss",
        fontsize=FONT - 1,
    )
    _arrow(ax, (12.5, 60), (17, 60))
    _arrow(ax, (31, 60), (36, 60))
    _arrow(ax, (50, 60), (54.5, 60))
    _arrow(
        ax,
        (50, 22),
        (58, 52),
        "the randomness comes from outside:\ngradients reach mu and sigma",
        offset=(-30, -8),
    )
    _arrow(ax, (69.5, 60), (73, 60))
    _arrow(ax, (87, 60), (90.5, 60))
    _arrow(ax, (43, 50), (61, 28), "KL term", dashed=True, color="#a61c1c", offset=(-6, -3))
    _arrow(
        ax,
        (95, 52),
        (84, 28),
        "reconstruction term",
        dashed=True,
        color="#a61c1c",
        offset=(-11, -2),
    )
    ax.set_title(
        "a variational autoencoder: the reparameterised sample makes the ELBO differentiable",
        fontsize=FONT + 1,
    )
    return fig


def transformer_block(ax=None, heads: int = 4):
    """Chapter 03: the pre-norm block, ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``, with the
    attention split into ``heads`` heads and merged again."""
    fig, ax = _axes(ax, (11, 4.4))
    xs, row = [8, 22, 40, 58, 70, 84, 95], 62
    _box(ax, xs[0], row, 9, 12, "x\n[n, L, d]", "data", fontsize=FONT - 1)
    _box(ax, xs[1], row, 10, 12, "Layer\nNorm", "op")
    for i in range(heads):  # the heads, one above the other
        y = row + 21 - i * 42 / max(1, heads - 1) if heads > 1 else row
        _box(
            ax,
            xs[2],
            y,
            13,
            8,
            f"head {i}: softmax\n(q k^T/sqrt(dh)) v",
            "model",
            fontsize=FONT - 2,
        )
        _arrow(ax, (xs[1] + 5.5, row), (xs[2] - 7, y))
        _arrow(ax, (xs[2] + 7, y), (xs[3] - 6.5, row))
    _box(ax, xs[3], row, 11, 12, "merge heads\n+ out proj", "op", fontsize=FONT - 1)
    _box(ax, xs[4], row, 5, 8, "+", "op", fontsize=FONT + 4)
    _box(
        ax,
        xs[5],
        row,
        14,
        20,
        "LayerNorm\nMLP: Linear 4d\nGELU\nLinear d",
        "model",
        fontsize=FONT - 1,
    )
    _box(ax, xs[6], row, 5, 8, "+", "op", fontsize=FONT + 4)
    _arrow(ax, (xs[0] + 5, row), (xs[1] - 5.5, row))
    _arrow(ax, (xs[3] + 6, row), (xs[4] - 3, row))
    _arrow(ax, (xs[4] + 3, row), (xs[5] - 7.5, row))
    _arrow(ax, (xs[5] + 7.5, row), (xs[6] - 3, row))
    _arrow(
        ax,
        (xs[0], row - 7),
        (xs[4], row - 5),
        "residual: x + Attn(LN(x))",
        color="#1f5fa8",
        rad=0.45,
        offset=(0, -32),
    )
    _arrow(
        ax,
        (xs[4] + 1, row + 5),
        (xs[6] - 1, row + 5),
        "residual",
        color="#1f5fa8",
        rad=-0.6,
        offset=(0, 9),
    )
    ax.text(xs[2], 92, "split heads: [n, L, d] -> [n, h, L, d/h]", ha="center", fontsize=FONT - 1)
    ax.set_ylim(18, 100)
    ax.set_title(
        "the pre-norm Transformer block (GPT-2 and most models since): normalise, attend, "
        "add; normalise, MLP, add",
        fontsize=FONT + 1,
    )
    return fig


def diffusion_process(ax=None):
    """Chapter 04: the forward process adds noise step by step (or in one closed-form jump), the
    reverse process removes it; the row under the states gives each one's index in code (papers
    count 1..T with the clean picture at 0; diffusers and the course count 0..T-1, clean at -1);
    below, the training step: draw t and ε, noise x_0 in closed form, regress ε."""
    fig, ax = _axes(ax, (11, 5.2))
    row, xs = 62, {"x_0": 16, "x_1": 30, "x_{t-1}": 58, "x_t": 74, "x_T": 94}
    names = {"x_0": "clean\ndigit", "x_T": "pure\nnoise"}
    for key, x in xs.items():
        kind = "data" if key == "x_0" else "noise" if key == "x_T" else "op"
        label = f"${key}$" + (f"\n{names[key]}" if key in names else "")
        _box(ax, x, row, 9 if key in names else 7, 14 if key in names else 8, label, kind)
    for x in (44, 84):
        ax.text(x, row, "· · ·", ha="center", va="center", fontsize=FONT + 2)
    for a, b in [("x_0", "x_1"), ("x_{t-1}", "x_t")]:
        _arrow(ax, (xs[a] + 5, row + 2.5), (xs[b] - 4.5, row + 2.5))
        _arrow(ax, (xs[b] - 4.5, row - 2.5), (xs[a] + 5, row - 2.5), color="#a61c1c")
    ax.text(44, row + 6, r"$q(x_t \mid x_{t-1})$: add noise", ha="center", fontsize=FONT - 1)
    ax.text(
        44,
        row - 6,
        r"$p_\theta(x_{t-1} \mid x_t)$: remove it",
        ha="center",
        va="top",
        fontsize=FONT - 1,
        color="#a61c1c",
    )
    _arrow(ax, (xs["x_0"], row + 7.5), (xs["x_t"], row + 5.5), color="#1f5fa8", rad=-0.22)
    ax.text(
        45,
        92,
        r"closed form $q(x_t \mid x_0)$: one jump, $\sqrt{\bar\alpha_t}\,x_0 + "
        r"\sqrt{1-\bar\alpha_t}\,\varepsilon$",
        ha="center",
        fontsize=FONT - 1,
        color="#1f5fa8",
    )
    ax.text(0, 44, "index\nin code:", ha="left", va="center", fontsize=FONT - 1)
    for key, code in (
        ("x_0", "-1"),
        ("x_1", "0"),
        ("x_{t-1}", "t-2"),
        ("x_t", "t-1"),
        ("x_T", "T-1"),
    ):
        ax.text(xs[key], 44, code, ha="center", va="center", fontsize=FONT - 1, family="monospace")
    ty = 20
    ax.text(0, ty + 13, "training step:", ha="left", fontsize=FONT - 1)
    _box(ax, 9, ty, 12, 10, "t ~ uniform\nε ~ N(0, I)", "noise", fontsize=FONT - 1)
    _box(
        ax,
        34,
        ty,
        22,
        10,
        r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$",
        "op",
        fontsize=FONT - 1,
    )
    _box(ax, 60, ty, 14, 10, "network\n" + r"$\varepsilon_\theta(x_t, t)$", "model")
    _box(
        ax,
        87,
        ty,
        16,
        10,
        r"loss $\|\varepsilon - \varepsilon_\theta\|^2$",
        "loss",
        fontsize=FONT - 1,
    )
    _arrow(ax, (16, ty), (22, ty))
    _arrow(ax, (46, ty), (52, ty))
    _arrow(ax, (68, ty), (78, ty))
    _arrow(
        ax,
        (9, ty - 6.5),
        (85, ty - 6.5),
        "ε is the target",
        color="#444444",
        rad=0.12,
        offset=(0, -9.5),
    )
    ax.set_title(
        "diffusion: a fixed noising process forward, a learned denoiser backward", fontsize=FONT + 1
    )
    return fig


def text_to_image_unet(ax=None):
    """Chapter 05: the caption's words feed the U-Net's cross-attention (keys and values), the
    timestep (plus the pooled caption) is added in every ResNet block; the sampler calls the U-Net
    twice a step (with and without the caption), guides, steps, and repeats."""
    fig, ax = _axes(ax, (12, 6.2))
    # the text path (top) and the time path (left)
    _box(ax, 8, 90, 13, 8, 'caption\n"a red circle ..."', "data", fontsize=FONT - 1)
    _box(ax, 27, 90, 13, 8, "text encoder\n(Transformer)", "model", fontsize=FONT - 1)
    _box(ax, 50, 90, 18, 8, "word states [L, d]\n= keys and values", "op", fontsize=FONT - 1)
    _arrow(ax, (15, 90), (20, 90))
    _arrow(ax, (34, 90), (40.5, 90))
    _box(ax, 8, 62, 13, 8, "timestep t", "noise", fontsize=FONT - 1)
    _box(
        ax,
        8,
        44,
        13,
        12,
        "time embedding\nsinusoid + MLP\n+ pooled caption",
        "op",
        fontsize=FONT - 2,
    )
    _arrow(ax, (8, 57.5), (8, 51))
    _arrow(ax, (27, 85.5), (12, 51), "pooled", offset=(-1, 0))
    # the U-Net: down the left leg, across the middle, up the right leg
    left, right = 36, 70
    _box(ax, left, 68, 16, 8, "16x16 ResNet", "model", fontsize=FONT - 1)
    _box(ax, left, 48, 16, 10, "8x8 ResNet\n+ cross-attention", "model", fontsize=FONT - 1)
    _box(ax, 53, 28, 24, 8, "middle 8x8: ResNet, cross-attn", "model", fontsize=FONT - 1)
    _box(ax, right, 48, 16, 10, "8x8 ResNet\n+ cross-attention", "model", fontsize=FONT - 1)
    _box(ax, right, 68, 16, 8, "16x16 ResNet", "model", fontsize=FONT - 1)
    _arrow(ax, (left, 63.5), (left, 54.5))
    _arrow(ax, (left + 3, 42.5), (45, 32.5))
    _arrow(ax, (61, 32.5), (right - 3, 42.5))
    _arrow(ax, (right, 54.5), (right, 63.5))
    _arrow(
        ax,
        (left + 8.5, 68),
        (right - 8.5, 68),
        "skip",
        dashed=True,
        color="#666666",
        offset=(0, -6),
    )
    _arrow(
        ax,
        (left + 8.5, 48),
        (right - 8.5, 48),
        "skip",
        dashed=True,
        color="#666666",
        offset=(0, -6),
    )
    _arrow(ax, (50, 85.5), (left + 2, 53.5), color="#1f5fa8")
    _arrow(
        ax,
        (52, 85.5),
        (right - 2, 53.5),
        "cross-attention:\nqueries = positions",
        color="#1f5fa8",
        offset=(9, 3),
    )
    _arrow(
        ax, (14.5, 44), (27.5, 47), "added in every\nResNet block", color="#7f6000", offset=(0, -16)
    )
    # the picture in, the prediction out, the sampler around it
    _box(
        ax,
        36,
        8,
        20,
        8,
        "noisy picture x_t\n3x32x32, folded to 12x16x16",
        "data",
        fontsize=FONT - 2,
    )
    _arrow(ax, (30, 12.5), (left - 6, 63.5), color="#333333", rad=-0.25)
    _box(ax, 90, 68, 15, 8, "prediction v\n(unfolded)", "data", fontsize=FONT - 1)
    _arrow(ax, (right + 8.5, 68), (82, 68))
    _box(
        ax,
        88,
        36,
        20,
        14,
        "guidance, twice a step:\nv(empty) + w (v(caption)\n- v(empty))",
        "op",
        fontsize=FONT - 2,
    )
    _box(ax, 72, 8, 20, 8, "sampler step (DPM++)\nx_t -> x_t-1", "op", fontsize=FONT - 1)
    _arrow(ax, (90, 63.5), (89, 43.5))
    _arrow(ax, (86, 29), (80, 12.5))
    _arrow(ax, (61.5, 8), (46.5, 8), "repeat, 20 steps", offset=(0, 2))
    ax.set_title(
        "chapter 05's text-to-image model: a U-Net that listens to the words, inside "
        "its sampling loop",
        fontsize=FONT + 1,
    )
    return fig


DIAGRAMS = {
    "gan_loop": gan_loop,
    "vae": vae,
    "transformer_block": transformer_block,
    "diffusion_process": diffusion_process,
    "text_to_image_unet": text_to_image_unet,
}
