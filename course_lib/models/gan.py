"""Generative adversarial networks (chapter 01): the losses, the training step, a fully connected
pair, a DCGAN and a class-conditional DCGAN for 28x28 digits, and the registered checkpoints
``dcgan-mnist`` and ``cgan-mnist``. Chapter 07 scores these generators.

The game (Goodfellow et al., 2014). A discriminator ``D(x) = sigmoid(l(x))`` and a generator
``G(z)``:

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]

* ``discriminator_loss`` is ``-V`` (D maximises V): binary cross-entropy, real -> 1, fake -> 0.
* ``generator_loss_minimax`` is the generator's side of the same V: minimise ``E log(1 - D(G(z)))``.
  It *saturates*: early on D rejects fakes confidently, ``D(G(z)) ~ 0``, and the gradient vanishes.
* ``generator_loss_nonsaturating`` minimises ``-E log D(G(z))`` instead: same fixed point, strong
  gradient exactly when the generator is losing. This is what everybody trains with.

For a fixed G the best discriminator is ``D*(x) = p_data(x) / (p_data(x) + p_g(x))``
(:func:`optimal_discriminator`), and at that D the minimax value is ``2 JS(p_data || p_g) - log 4``.

Generators expose ``generate(n, labels=None, generator=None) -> FloatTensor[n, 1, 28, 28]`` in
[0, 1] (on the CPU), with noise drawn on the CPU from ``generator`` so samples do not depend on the
device.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import runtime
from ..data import mnist
from ..pretrained import TrainResult, register, run_recipe
from ..runtime import get_device
from ..training import fit, infinite_loader

N_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Losses. All take discriminator *logits* l (D = sigmoid(l)) and return a scalar (batch mean).
# log D = -softplus(-l),  log(1 - D) = -softplus(l): numerically safe forms of the same thing.
# --------------------------------------------------------------------------------------------
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log D(x)] - E[log(1 - D(G(z)))]``: D's loss, the negative of the value V it
    maximises."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """``E[log(1 - D(G(z)))]``, minimised by G: the original (saturating) minimax generator loss."""
    return -F.softplus(fake_logits).mean()


def generator_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log D(G(z))]``, minimised by G: the non-saturating loss used in practice."""
    return F.softplus(-fake_logits).mean()


GENERATOR_LOSSES = {
    "nonsaturating": generator_loss_nonsaturating,
    "minimax": generator_loss_minimax,
}


def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """``D*(x) = p_data(x) / (p_data(x) + p_g(x))``, the best D against a fixed generator."""
    return p_data / (p_data + p_g)


def minimax_value(d: torch.Tensor, p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """``V(D, G)`` for a discrete sample space: ``sum p_data log D + sum p_g log(1 - D)``."""
    return (p_data * torch.log(d)).sum() + (p_g * torch.log1p(-d)).sum()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) of two discrete distributions."""
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return (a[mask] * (a[mask] / b[mask]).log()).sum()

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (what the generators output, tanh) -> [0, 1] (pictures)."""
    return (x.clamp(-1, 1) + 1) / 2


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pictures -> [-1, 1] (what the discriminators see)."""
    return x * 2 - 1


class _GeneratorMixin:
    """``generate`` for every generator: noise on the CPU from ``generator``, pictures back on the
    CPU."""

    z_dim: int
    n_classes: int

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator)  # [n, z_dim]

    def _labels(self, n: int, labels) -> torch.Tensor | None:
        if not self.n_classes:
            if labels is not None:
                raise ValueError("this generator is unconditional: call generate(n) without labels")
            return None
        if labels is None:
            return torch.arange(n) % self.n_classes  # 0 1 2 ... 9 0 1 ...
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} labels for {n} pictures")
        return labels

    @torch.no_grad()
    def generate(
        self,
        n: int,
        labels=None,
        generator: torch.Generator | None = None,
        z: torch.Tensor | None = None,
        batch_size: int = 500,
        truncation: float = 1.0,
    ) -> torch.Tensor:
        """``n`` pictures [n, 1, 28, 28] in [0, 1] on the CPU. ``labels`` (conditional models only):
        an int or ``n`` ints, default 0..9 repeated. ``z`` overrides the noise (latent walks);
        ``truncation < 1`` shrinks the noise towards 0 (fewer odd samples, less variety)."""
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        z = (self.sample_noise(n, generator) if z is None else z) * truncation
        y = self._labels(n, labels)
        out = []
        for i in range(0, n, batch_size):
            zi = z[i : i + batch_size].to(dev)
            yi = None if y is None else y[i : i + batch_size].to(dev)
            out.append(to_unit(self(zi, yi)).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, 1, 28, 28)


class MLPGenerator(_GeneratorMixin, nn.Module):
    """A fully connected generator, as in the first GANs: noise -> 784 pixels (unconditional)."""

    def __init__(self, z_dim: int = 64, hidden: int = 256):
        super().__init__()
        self.z_dim, self.n_classes = z_dim, 0
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden, 28 * 28),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return self.net(z).view(-1, 1, 28, 28)  # [n, 1, 28, 28] in [-1, 1]


class MLPDiscriminator(nn.Module):
    """A fully connected discriminator: 784 pixels -> one logit."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.n_classes = 0
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 2 * hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        return self.net(x).squeeze(1)  # [n] logits


class DCGenerator(_GeneratorMixin, nn.Module):
    """DCGAN generator for 28x28: noise (and, if ``n_classes``, a label embedding) -> 7x7 -> 14 ->
    28.

    ``z [n, z_dim]`` -> Linear -> ``[n, 2w, 7, 7]`` -> ConvT -> ``[n, w, 14, 14]`` -> ConvT ->
    ``[n, 1, 28, 28]``, batch norm and ReLU between, tanh at the end.
    """

    def __init__(self, z_dim: int = 64, width: int = 64, n_classes: int = 0, embed_dim: int = 16):
        super().__init__()
        self.z_dim, self.n_classes, self.width = z_dim, n_classes, width
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        w = width
        self.fc = nn.Sequential(
            nn.Linear(z_dim + (embed_dim if n_classes else 0), 2 * w * 7 * 7, bias=False),
            nn.BatchNorm1d(2 * w * 7 * 7),
            nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),  # [n, w, 14, 14]
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
            nn.Tanh(),
        )  # [n, 1, 28, 28]
        self.config = dict(z_dim=z_dim, width=width, n_classes=n_classes)
        if embed_dim != 16:
            self.config["embed_dim"] = embed_dim

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            if labels is None:
                raise ValueError("conditional generator: pass labels")
            z = torch.cat([z, self.embed(labels)], 1)
        h = self.fc(z).view(-1, 2 * self.width, 7, 7)
        return self.net(h)


class MinibatchStd(nn.Module):
    """Append one channel holding the batch's mean per-feature standard deviation (Karras et al.
    2018). A collapsed generator makes near-identical fakes, so this number gives it away."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        std = h.float().std(0, unbiased=False).mean().to(h.dtype)  # scalar
        return torch.cat([h, std.expand(h.shape[0], 1, *h.shape[2:])], 1)


class DCDiscriminator(nn.Module):
    """DCGAN discriminator for 28x28 with spectral norm: 28 -> 14 -> 7 -> one logit.

    ``n_classes > 0`` makes it a projection discriminator (Miyato & Koyama 2018):
    ``l(x, y) = psi(h(x)) + <embed(y), h(x)>``. ``minibatch_std`` adds :class:`MinibatchStd`.
    """

    def __init__(
        self,
        width: int = 64,
        n_classes: int = 0,
        minibatch_std: bool = False,
        extra_conv: bool = True,
    ):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = width
        self.n_classes, self.minibatch_std = n_classes, minibatch_std
        self.body = nn.Sequential(
            sn(nn.Conv2d(1, w, 4, 2, 1)),
            nn.LeakyReLU(0.2),  # [n, w, 14, 14]
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)),
            nn.LeakyReLU(0.2),
        )  # [n, 2w, 7, 7]
        self.mbstd = MinibatchStd() if minibatch_std else None
        c = 2 * w + (1 if minibatch_std else 0)
        self.head = (
            nn.Sequential(sn(nn.Conv2d(c, 2 * w, 3, 1, 1)), nn.LeakyReLU(0.2), nn.Flatten())
            if extra_conv or minibatch_std
            else nn.Flatten()
        )  # [n, 2w*49]
        self.out = sn(nn.Linear(2 * w * 49, 1))
        self.embed = sn(nn.Embedding(n_classes, 2 * w * 49)) if n_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = self.head(h)  # [n, f]
        logit = self.out(h).squeeze(1)  # [n]
        if self.n_classes:
            if labels is None:
                raise ValueError("conditional discriminator: pass labels")
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


class GAN(nn.Module):
    """A generator and its discriminator in one module (one checkpoint). ``generate`` is the
    generator's; ``g_ema`` (when present) is the exponential moving average of the generator's
    weights, the one that samples."""

    def __init__(
        self,
        z_dim: int = 64,
        g_width: int = 64,
        d_width: int = 64,
        n_classes: int = 0,
        minibatch_std: bool = False,
        ema: bool = True,
        extra_conv: bool = True,
    ):
        super().__init__()
        self.config = dict(
            z_dim=z_dim,
            g_width=g_width,
            d_width=d_width,
            n_classes=n_classes,
            minibatch_std=minibatch_std,
            ema=ema,
            extra_conv=extra_conv,
        )
        self.G = DCGenerator(z_dim, g_width, n_classes)
        self.D = DCDiscriminator(d_width, n_classes, minibatch_std, extra_conv)
        self.g_ema = copy.deepcopy(self.G).requires_grad_(False) if ema else None

    @property
    def sampler(self) -> DCGenerator:
        """The generator that samples: the EMA copy when there is one."""
        return self.g_ema if self.g_ema is not None else self.G

    @property
    def z_dim(self) -> int:
        return self.G.z_dim

    @property
    def n_classes(self) -> int:
        return self.G.n_classes

    def generate(
        self, n: int, labels=None, generator: torch.Generator | None = None, **kw
    ) -> torch.Tensor:
        return self.sampler.generate(n, labels, generator, **kw)


class WarmEMA:
    """Exponential moving average of a generator's weights whose decay warms up,
    ``min(decay, (1 + t) / (10 + t))``, so the average does not drag the untrained start along for
    thousands of steps (``course_lib.training.EMA`` has a fixed decay). Buffers (batch-norm
    statistics) are copied, then recomputed at the end by :func:`recalibrate_batchnorm`."""

    def __init__(self, model: nn.Module, decay: float = 0.999, target: nn.Module | None = None):
        self.module = target if target is not None else copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay, self.t = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        self.t += 1
        for pe, pm in zip(self.module.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(self.module.buffers(), model.buffers()):
            be.copy_(bm)


# --------------------------------------------------------------------------------------------
# Training. One step of the game = one discriminator update, then one generator update
# (chapter 01's central exercise writes :func:`gan_step`; its check compares with this one).
# --------------------------------------------------------------------------------------------
def gan_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    d_loss_fn=discriminator_loss,
    g_loss_fn=generator_loss_nonsaturating,
) -> dict:
    """One round of the game on a batch, in place.

    ``real``: [n, 1, 28, 28] in [-1, 1] (what D sees); ``z``: [n, z_dim] noise on the models'
    device;
    ``labels``: [n] for conditional models (the fakes are asked for the real batch's labels), else
    None.

    1. ``fake = G(z)``, once.
    2. Discriminator: ``d_loss_fn(D(real), D(fake.detach()))``; ``detach`` stops this loss at the
       fakes, so D's update computes no gradient for G. Step ``opt_d`` only.
    3. Generator: ``g_loss_fn(D(fake))`` through the *just updated* D, not detached. Step ``opt_g``
       only (the gradients this leaves in D are cleared by D's next ``zero_grad``).

    Returns ``{"d_loss", "g_loss", "d_real": mean D(x), "d_fake": mean D(G(z))}`` (D before its
    update).
    """
    fake = G(z, labels)  # [n, 1, 28, 28]
    real_logits, fake_logits = D(real, labels), D(fake.detach(), labels)  # [n], [n]
    d_loss = d_loss_fn(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    g_loss = g_loss_fn(D(fake, labels))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return {
        "d_loss": d_loss.item(),
        "g_loss": g_loss.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


def generator_update(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    g_loss_fn=generator_loss_nonsaturating,
) -> float:
    """A generator update alone (the second half of :func:`gan_step`, on fresh fakes): chapter 01's
    mode-collapse run trains G several times per discriminator update."""
    g_loss = g_loss_fn(D(G(z, labels), labels))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return g_loss.item()


def make_gan_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    g_loss="nonsaturating",
    g_steps: int = 1,
    ema: WarmEMA | None = None,
    device=None,
    noise_generator: torch.Generator | None = None,
    update=None,
    d_loss=discriminator_loss,
):
    """A ``step_fn(batch, step) -> dict`` for :func:`course_lib.training.fit`.

    ``batch`` is ``(images in [0, 1], labels)``. ``update`` is the step of the game (default
    :func:`gan_step`; chapter 01 passes the learner's own), called as
    ``update(G, D, opt_g, opt_d, real, z, labels, d_loss_fn=d_loss, g_loss_fn=...)``. ``g_loss``: a
    name in :data:`GENERATOR_LOSSES` or a function of D's logits; ``d_loss``: a function of
    ``(real_logits, fake_logits)``. ``g_steps > 1`` adds generator-only updates
    (:func:`generator_update`). Logged: ``d_loss``, ``g_loss``, ``d_real``, ``d_fake``.
    """
    if isinstance(g_loss, str):
        if g_loss not in GENERATOR_LOSSES:
            raise ValueError(
                f"g_loss must be one of {sorted(GENERATOR_LOSSES)} or a function, got {g_loss!r}"
            )
        g_loss = GENERATOR_LOSSES[g_loss]
    if not callable(g_loss) or not callable(d_loss):
        raise TypeError("g_loss and d_loss must be functions of the discriminator's logits")
    if not isinstance(g_steps, int) or g_steps < 1:
        raise ValueError(f"g_steps must be a positive int, got {g_steps!r}")
    update = gan_step if update is None else update
    device = device if device is not None else next(G.parameters()).device
    conditional = bool(getattr(G, "n_classes", 0))

    def noise(n):
        return torch.randn(n, G.z_dim, generator=noise_generator).to(device)  # [n, z_dim]

    def step_fn(batch, step):
        x, y = batch
        x = to_signed(x.to(device))  # [n, 1, 28, 28]
        y = y.to(device) if conditional else None
        n = x.shape[0]
        G.train()
        D.train()
        logs = update(G, D, opt_g, opt_d, x, noise(n), y, d_loss_fn=d_loss, g_loss_fn=g_loss)
        for _ in range(g_steps - 1):
            logs["g_loss"] = generator_update(G, D, opt_g, noise(n), y, g_loss)
        if ema is not None:
            ema.update(G)
        return logs

    return step_fn


@torch.no_grad()
def recalibrate_batchnorm(
    G: nn.Module, n_batches: int = 20, batch_size: int = 256, seed: int = 0
) -> None:
    """Recompute a generator's batch-norm running statistics from its own current weights (the
    running averages of a trained or EMA-averaged generator lag behind its weights)."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    dev = next(G.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was = G.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train()
    for i in range(n_batches):
        z = torch.randn(batch_size, G.z_dim, generator=g).to(dev)
        y = (torch.arange(batch_size) % G.n_classes).to(dev) if G.n_classes else None
        G(z, y)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    G.train(was)


def train_gan(
    gan: GAN,
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int = 64,
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas=(0.5, 0.999),
    g_loss: str = "nonsaturating",
    g_steps: int = 1,
    ema_decay: float = 0.999,
    seed: int = 0,
    data=None,
    callback=None,
    callback_every: int = 0,
    progress: bool = True,
    desc: str = "GAN",
    update=None,
    d_loss=discriminator_loss,
):
    """Train ``gan`` in place on MNIST-5k train (or ``data=(x, y)``); returns the :class:`History`.

    ``update``, ``d_loss``, ``g_loss``: the step of the game and its losses (default
    :func:`gan_step` with the library's losses; see :func:`make_gan_step`). ``callback(step, gan)``
    every ``callback_every`` steps (a live sample grid)."""
    device = next(gan.parameters()).device
    x, y = data if data is not None else mnist.load_mnist("train")
    loader = infinite_loader(torch.utils.data.TensorDataset(x, y), batch_size, seed=seed)
    opt_g = torch.optim.Adam(gan.G.parameters(), lr=lr_g, betas=betas)
    opt_d = torch.optim.Adam(gan.D.parameters(), lr=lr_d, betas=betas)
    ema = WarmEMA(gan.G, ema_decay, target=gan.g_ema) if gan.g_ema is not None else None
    step_fn = make_gan_step(
        gan.G,
        gan.D,
        opt_g,
        opt_d,
        g_loss=g_loss,
        g_steps=g_steps,
        ema=ema,
        device=device,
        noise_generator=torch.Generator().manual_seed(seed + 1),
        update=update,
        d_loss=d_loss,
    )

    def cb(step, history):
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            _sync_ema(gan, ema)
            callback(step + 1, gan)

    hist = fit(
        step_fn, loader, steps=steps, minutes=minutes, desc=desc, progress=progress, callback=cb
    )
    _sync_ema(gan, ema)
    return hist


def _sync_ema(gan: GAN, ema: WarmEMA | None) -> None:
    if ema is not None:
        recalibrate_batchnorm(gan.g_ema)


# --------------------------------------------------------------------------------------------
# Quality (the judge) and the shipped checkpoints
# --------------------------------------------------------------------------------------------
def evaluate_unconditional(model, n: int = 1000, seed: int = 1234) -> dict:
    """The judge on ``n`` samples: mean top-class probability, class-histogram entropy (nats;
    ln 10 = 2.303 is perfectly balanced), the histogram itself."""
    from ..judges import score_digits

    s = score_digits(model.generate(n, generator=torch.Generator().manual_seed(seed)))
    return {
        "mean_top_prob": round(s["mean_top_prob"], 4),
        "hist_entropy": round(s["hist_entropy"], 4),
        "hist_entropy_over_ln10": round(s["hist_entropy"] / math.log(10), 4),
        "histogram": [round(h, 3) for h in s["histogram"]],
        "n": n,
        "seed": seed,
    }


def evaluate_conditional(model, n_per_class: int = 100, seed: int = 1234) -> dict:
    """The judge on ``n_per_class`` samples of each digit: how often it reads the requested
    digit."""
    from ..judges import score_digits

    labels = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    s = score_digits(
        model.generate(len(labels), labels, generator=torch.Generator().manual_seed(seed)), labels
    )
    per_class = [(s["predicted"][labels == c] == c).float().mean().item() for c in range(N_CLASSES)]
    return {
        "accuracy": round(s["accuracy"], 4),
        "mean_top_prob": round(s["mean_top_prob"], 4),
        "per_class_accuracy": [round(a, 3) for a in per_class],
        "n": len(labels),
        "seed": seed,
    }


def evaluate_gan(model) -> dict:
    """Judge a generator (or a :class:`GAN`): conditional ones by accuracy, others by confidence and
    balance."""
    return evaluate_conditional(model) if model.n_classes else evaluate_unconditional(model)


#: The recipes of the shipped checkpoints (the notebook's full run uses the same ones). ``train``
#: goes to :func:`train_gan`; the step of the game is :func:`gan_step`.
RECIPES = {
    "dcgan-mnist": dict(
        model=dict(z_dim=64, g_width=32, d_width=32, n_classes=0, extra_conv=False),
        train=dict(lr_g=5e-4, lr_d=5e-4, ema_decay=0.9995),
        steps=20000,
    ),
    "cgan-mnist": dict(
        model=dict(z_dim=64, g_width=32, d_width=32, n_classes=10, extra_conv=False),
        train=dict(lr_g=5e-4, lr_d=5e-4, ema_decay=0.999),
        steps=7000,
    ),
}


def evaluate_shipped(G) -> dict:
    """What the manifest records for a shipped generator: :func:`evaluate_gan`, and the same samples
    with the noise shrunk by 0.7 (the truncation trick), for comparison."""
    quality = evaluate_gan(G)
    if G.n_classes:
        t = evaluate_conditional(_Truncated(G, 0.7))
        quality["truncation_0.7"] = {"accuracy": t["accuracy"], "mean_top_prob": t["mean_top_prob"]}
    else:
        t = evaluate_unconditional(_Truncated(G, 0.7))
        quality["truncation_0.7"] = {
            k: t[k] for k in ("mean_top_prob", "hist_entropy", "hist_entropy_over_ln10")
        }
    return quality


def _train_registered(name: str, seed: int = 0, quick: bool = False) -> TrainResult:
    """Train a recipe; what ships is the sampling generator alone (the EMA copy), a few MB."""
    recipe = RECIPES[name]
    steps = 20 if quick else recipe["steps"]

    def train():
        with runtime.seeded(seed):
            model = GAN(**recipe["model"]).to(get_device())
            hist = train_gan(model, steps=steps, seed=seed, desc=name, **recipe["train"])
            return model.sampler.eval(), hist

    def notes(hist, extra):
        t = recipe["train"]
        return (
            f"{hist.steps} steps of gan_step, batch 64, Adam lr {t['lr_g']} (G) / {t['lr_d']} (D), "
            f"betas (0.5, 0.999), non-saturating loss, spectral-norm discriminator; ships the EMA "
            f"({t['ema_decay']}, warmed up) generator only, batch-norm statistics recomputed"
        )

    return run_recipe(train, evaluate_shipped, notes=notes)


class _Truncated:
    """A generator seen through ``generate(..., truncation=t)`` (for measuring the truncation
    trick)."""

    def __init__(self, G, truncation: float):
        self.G, self.truncation, self.n_classes = G, truncation, G.n_classes

    def generate(self, n, labels=None, generator=None):
        return self.G.generate(n, labels, generator, truncation=self.truncation)


def build_generator(cfg: dict) -> DCGenerator:
    return DCGenerator(**cfg)


register(
    "dcgan-mnist",
    role="generator",
    domain="digits",
    build=build_generator,
    train=lambda seed=0, quick=False: _train_registered("dcgan-mnist", seed, quick),
    evaluate=evaluate_gan,
    chapter="01",
    description="DCGAN generator on MNIST-5k (unconditional)",
)
register(
    "cgan-mnist",
    role="generator",
    domain="digits",
    build=build_generator,
    train=lambda seed=0, quick=False: _train_registered("cgan-mnist", seed, quick),
    evaluate=evaluate_gan,
    chapter="01",
    description="class-conditional DCGAN generator on MNIST-5k",
)
