"""Autoencoders and variational autoencoders (chapter 02): a plain autoencoder, a VAE and a
conditional VAE for 28x28 digits with a Bernoulli decoder, the Gaussian KL in closed form and by
Monte Carlo, and the registered checkpoints ``vae-mnist`` (latent 16) and ``cvae-mnist``.
Chapters 07 and 08 reuse the models (scores; a latent space to diffuse in).

The ELBO (Kingma & Welling, 2014), for one picture x with encoder q(z|x) = N(mu, diag sigma^2),
prior p(z) = N(0, I) and decoder p(x|z) = prod Bernoulli(x_i; sigmoid(logit_i)):

    log p(x) >= ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))

``KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)`` (:func:`gaussian_kl`). Everything is in
nats per picture (sums over pixels and latent dimensions, means over pictures).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import runtime
from ..data import mnist
from ..pretrained import TrainResult, register
from ..runtime import get_device
from ..training import fit, infinite_loader, make_step

N_CLASSES = 10
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# The math
# --------------------------------------------------------------------------------------------
def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``z = mu + sigma * eps`` with ``eps ~ N(0, I)``, ``sigma = exp(logvar / 2)``: a sample of
    N(mu, sigma^2) that gradients flow through (to mu and logvar). ``eps`` is drawn on the CPU from
    ``generator``."""
    eps = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` in closed form, summed over the last dimension:
    ``1/2 sum (mu^2 + exp(logvar) - 1 - logvar)``. Shape ``mu.shape[:-1]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_kl_wrong(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A WRONG formula that circulates in VAE tutorials,
    ``-0.5 * sum(1 + logvar - mu**2 - logvar)``, kept so chapter 02 can show the Monte Carlo test
    catching it. The last term must be ``exp(logvar)`` (the variance), not ``logvar``. As printed,
    the log-variance cancels: the value is ``0.5 * (sum mu^2 - d)``, which ignores the encoder's
    variance and is negative whenever ``sum mu^2 < d`` (a KL never is)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag exp(logvar))`` summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def kl_monte_carlo(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of the same KL: the mean over ``z ~ q`` of ``log q(z) - log p(z)``.
    Unbiased, with standard error ~ 1/sqrt(n_samples). Shape ``mu.shape[:-1]``."""
    eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + torch.exp(0.5 * logvar) * eps  # [S, ..., d]
    log_q = gaussian_log_prob(z, mu, logvar)
    log_p = gaussian_log_prob(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    return (log_q - log_p).mean(0)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-log p(x|z)`` of a Bernoulli decoder, summed over pixels: binary cross-entropy with logits
    (x may be intensities in [0, 1]). Shape [n]."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The closed-form KL of each latent dimension, averaged over the batch: FloatTensor[d] for
    ``mu, logvar: [n, d]``; it sums to the mean of :func:`gaussian_kl`. Dimensions near 0 carry no
    information about the picture (the encoder leaves them at the prior: "inactive" units)."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)  # [d]


def negative_elbo_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
):
    """Chapter 02's central step: the VAE's training loss for one reparameterised sample per
    picture, ``mean_n [ rec_n + beta * KL_n ]`` in nats per picture, with ``rec_n`` the Bernoulli
    negative log-likelihood summed over pixels (:func:`bernoulli_nll`) and ``KL_n`` the closed-form
    Gaussian KL summed over latent dimensions (:func:`gaussian_kl`). ``beta = 1`` is the negative
    ELBO.

    logits, x: [n, 1, 28, 28]; mu, logvar: [n, d]. Returns ``(loss, {"rec": float, "kl": float})``
    (a :func:`course_lib.training.make_step` loss)."""
    rec = bernoulli_nll(logits, x)  # [n]
    kl = gaussian_kl(mu, logvar)  # [n]
    return (rec + beta * kl).mean(), {"rec": rec.mean().item(), "kl": kl.mean().item()}


def one_hot(labels: torch.Tensor, n_classes: int = N_CLASSES) -> torch.Tensor:
    return F.one_hot(labels.long(), n_classes).float()


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class ConvEncoder(nn.Module):
    """28x28 picture (and optional one-hot label) -> ``out_dim`` numbers.
    ``[n,1,28,28]`` -> conv s2 -> ``[n,w,14,14]`` -> conv s2 -> ``[n,2w,7,7]``
    -> Linear -> hidden -> out."""

    def __init__(
        self,
        out_dim: int,
        width: int = 32,
        hidden: int = 256,
        n_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        w = width
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.fc = nn.Sequential(
            nn.Linear(2 * w * 49 + n_classes, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
        )
        self.n_classes = n_classes

    def forward(self, x, labels=None):
        h = self.conv(x)
        if self.n_classes:
            h = torch.cat([h, one_hot(labels, self.n_classes)], 1)
        return self.fc(h)


class ConvDecoder(nn.Module):
    """``z`` (and optional one-hot label) -> Bernoulli logits ``[n, 1, 28, 28]`` (mirror of the
    encoder)."""

    def __init__(
        self,
        in_dim: int,
        width: int = 32,
        hidden: int = 256,
        n_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        w = self.width = width
        self.n_classes = n_classes
        self.fc = nn.Sequential(
            nn.Linear(in_dim + n_classes, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * w * 49),
            nn.SiLU(),
            nn.Dropout(dropout),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.SiLU(),  # [n, w, 14, 14]
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
        )  # [n, 1, 28, 28]

    def forward(self, z, labels=None):
        if self.n_classes:
            z = torch.cat([z, one_hot(labels, self.n_classes)], 1)
        return self.deconv(self.fc(z).view(-1, 2 * self.width, 7, 7))


class Autoencoder(nn.Module):
    """The image -> code -> image autoencoder: a deterministic code, trained to reconstruct. Same
    encoder/decoder as the VAE."""

    def __init__(self, latent_dim: int = 16, width: int = 32, hidden: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, width, hidden)
        self.decoder = ConvDecoder(latent_dim, width, hidden)

    def encode(self, x):
        return self.encoder(x)  # [n, latent]

    def decode(self, z):
        return self.decoder(z)  # logits [n, 1, 28, 28]

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x):
        return bernoulli_nll(self(x), x).mean()


class VAE(nn.Module):
    """Variational autoencoder with a Gaussian encoder and a Bernoulli decoder; conditional
    (a CVAE: both encoder and decoder see a one-hot label) when ``n_classes > 0``.

    ``encode(x) -> (mu, logvar)``, ``decode(z) -> logits`` (same shape as x), ``elbo(x) -> [n]``
    nats, ``sample(n, labels=None, generator=None) -> [n, 1, 28, 28]`` in [0, 1]: the decoder's
    Bernoulli *means* for ``z ~ N(0, I)``, on the CPU (not draws of the Bernoulli pixels, which
    would be speckled black and white).
    """

    def __init__(
        self,
        latent_dim: int = 16,
        width: int = 32,
        hidden: int = 256,
        n_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.latent_dim, self.n_classes = latent_dim, n_classes
        self.config = dict(
            latent_dim=latent_dim, width=width, hidden=hidden, n_classes=n_classes, dropout=dropout
        )
        self.encoder = ConvEncoder(2 * latent_dim, width, hidden, n_classes, dropout)
        self.decoder = ConvDecoder(latent_dim, width, hidden, n_classes, dropout)

    def _need(self, labels):
        if self.n_classes and labels is None:
            raise ValueError("conditional VAE: pass labels")
        if not self.n_classes and labels is not None:
            raise ValueError("unconditional VAE: do not pass labels")
        return labels

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """``(mu, logvar)``, each [n, latent_dim]."""
        mu, logvar = self.encoder(x, self._need(labels)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits [n, 1, 28, 28]; ``sigmoid`` gives pixel means."""
        return self.decoder(z, self._need(labels))

    def forward(self, x, labels=None, generator=None, reparameterize_fn=None):
        """``(logits, mu, logvar)`` for one reparameterised sample per picture.
        ``reparameterize_fn(mu, logvar, generator)`` draws it (default :func:`reparameterize`;
        chapter 02 passes the learner's own)."""
        mu, logvar = self.encode(x, labels)
        z = (reparameterize_fn or reparameterize)(mu, logvar, generator)
        return self.decode(z, labels), mu, logvar

    def elbo_terms(self, x, labels=None, n_samples: int = 1, generator=None):
        """``(reconstruction NLL [n], KL [n])``, the NLL averaged over ``n_samples`` draws of z."""
        mu, logvar = self.encode(x, labels)
        rec = 0.0
        for _ in range(n_samples):
            rec = rec + bernoulli_nll(self.decode(reparameterize(mu, logvar, generator), labels), x)
        return rec / n_samples, gaussian_kl(mu, logvar)

    def elbo(self, x, labels=None, n_samples: int = 1, generator=None) -> torch.Tensor:
        """The evidence lower bound per picture [n], in nats (higher is better)."""
        rec, kl = self.elbo_terms(x, labels, n_samples, generator)
        return -(rec + kl)

    def loss(
        self,
        x,
        labels=None,
        beta: float = 1.0,
        generator=None,
        loss_fn=None,
        reparameterize_fn=None,
    ):
        """Training loss ``mean(rec + beta * KL)`` and its parts (a ``make_step`` loss), for one
        reparameterised sample per picture (drawn by ``reparameterize_fn``, see :meth:`forward`).
        ``loss_fn(logits, x, mu, logvar, beta)`` assembles it (default :func:`negative_elbo_loss`;
        chapter 02 passes the learner's own)."""
        logits, mu, logvar = self(x, labels, generator, reparameterize_fn)
        return (loss_fn or negative_elbo_loss)(logits, x, mu, logvar, beta)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        generator: torch.Generator | None = None,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` pictures from the prior: ``z ~ N(0, I)`` (drawn on the CPU), decoded to pixel means
        in [0, 1], on the CPU. Conditional models take ``labels`` (an int or n ints; default 0..9
        repeated)."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator) if z is None else z
        y = None
        if self.n_classes:
            y = (
                torch.arange(n) % self.n_classes
                if labels is None
                else torch.as_tensor(labels).long().reshape(-1)
            )
            y = y.expand(n) if y.numel() == 1 else y
            y = y.to(dev)
        elif labels is not None:
            raise ValueError("unconditional VAE: call sample(n) without labels")
        out = torch.sigmoid(self.decode(z.to(dev), y)).float().cpu()
        self.train(was)
        return out

    generate = sample  # the same interface as the GAN generators

    @torch.no_grad()
    def reconstruct(self, x, labels=None) -> torch.Tensor:
        """Decode the encoder's mean code: pixel means in [0, 1]."""
        mu, _ = self.encode(x, labels)
        return torch.sigmoid(self.decode(mu, labels))


# --------------------------------------------------------------------------------------------
# Training and measuring
# --------------------------------------------------------------------------------------------
def random_shift(x: torch.Tensor, max_shift: int = 1, generator=None) -> torch.Tensor:
    """Shift each picture by up to ``max_shift`` pixels in x and y (zero fill): augmentation that
    keeps the digits real and stops a model memorising 4,500 of them."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [n, w]
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def negative_elbo(
    model: VAE,
    x: torch.Tensor,
    labels=None,
    n_samples: int = 10,
    seed: int = 0,
    batch_size: int = 500,
) -> dict:
    """Mean negative ELBO (nats per picture) on ``x`` and its two parts, ``n_samples`` z per
    picture."""
    model.eval()
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    recs, kls = [], []
    for i in range(0, len(x), batch_size):
        xi = x[i : i + batch_size].to(dev)
        yi = None if labels is None else labels[i : i + batch_size].to(dev)
        rec, kl = model.elbo_terms(xi, yi, n_samples, g)
        recs.append(rec.cpu())
        kls.append(kl.cpu())
    rec, kl = torch.cat(recs).mean().item(), torch.cat(kls).mean().item()
    return {"neg_elbo": rec + kl, "rec": rec, "kl": kl}


def train_vae(
    model: VAE,
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    beta: float = 1.0,
    max_shift: int = 1,
    val_every: int = 200,
    seed: int = 0,
    train_data=None,
    val_data=None,
    progress: bool = True,
    desc: str = "VAE",
    callback=None,
    loss_fn=None,
    reparameterize_fn=None,
):
    """Train in place with AdamW, a one-cycle learning rate (warm-up to ``lr``, then cosine decay),
    shift augmentation, and a validation split checked every ``val_every`` steps: the weights kept
    are those of the best validation negative ELBO. ``loss_fn`` assembles the loss and
    ``reparameterize_fn`` draws z (see :meth:`VAE.loss`; defaults :func:`negative_elbo_loss` and
    :func:`reparameterize`; chapter 02 passes the learner's own).

    Returns the :class:`History`; ``history.evals`` holds ``(step, {"val_neg_elbo", ...})``."""
    device = next(model.parameters()).device
    if train_data is None:
        x, y = mnist.load_mnist("train")
        train_data, val_data = split_validation(x, y)
    xt, yt = train_data
    loader = infinite_loader(torch.utils.data.TensorDataset(xt, yt), batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = steps if steps is not None else 10**9
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=max(0.05, 3 / total)
        )
        if steps is not None and steps >= 20
        else None
    )  # short runs: constant lr
    g = torch.Generator().manual_seed(seed + 1)
    cond = bool(model.n_classes)

    def batch_loss(m, batch):
        xb, yb = batch
        xb = random_shift(xb, max_shift, g).to(device)
        yb = yb.to(device) if cond else None
        return m.loss(
            xb, yb, beta=beta, generator=g, loss_fn=loss_fn, reparameterize_fn=reparameterize_fn
        )

    best = {"val": math.inf, "state": None, "step": 0}

    def eval_fn(step):
        if val_data is None:
            return {}
        xv, yv = val_data
        r = negative_elbo(model, xv, yv if cond else None, n_samples=1, seed=0)
        if r["neg_elbo"] < best["val"]:
            best.update(val=r["neg_elbo"], state=copy.deepcopy(model.state_dict()), step=step)
        model.train()
        return {"val_neg_elbo": r["neg_elbo"], "val_rec": r["rec"], "val_kl": r["kl"]}

    hist = fit(
        make_step(model, batch_loss, opt, scheduler=sched),
        loader,
        steps=steps,
        minutes=minutes,
        eval_fn=eval_fn,
        eval_every=val_every,
        desc=desc,
        progress=progress,
        callback=callback,
    )
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    hist.best_step = best["step"]
    model.eval()
    return hist


def split_validation(x, y, n_val_per_class: int = 25, seed: int = 0):
    """Hold out ``n_val_per_class`` training digits per class for early stopping (the test split
    stays untouched until the end)."""
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(y), dtype=torch.bool)
    for c in range(N_CLASSES):
        idx = torch.nonzero(y == c).squeeze(1)
        val[idx[torch.randperm(len(idx), generator=g)[:n_val_per_class]]] = True
    return (x[~val], y[~val]), (x[val], y[val])


def evaluate_vae(model: VAE) -> dict:
    """Negative ELBO (nats per picture, 10 z per picture) on the 500-digit test split; for a
    conditional model also how often the judge reads the requested digit off its samples."""
    x, y = mnist.load_mnist("test")
    r = negative_elbo(model, x, y if model.n_classes else None, n_samples=10, seed=0)
    out = {
        "test_neg_elbo": round(r["neg_elbo"], 2),
        "test_rec": round(r["rec"], 2),
        "test_kl": round(r["kl"], 2),
        "n_test": len(y),
    }
    from ..judges import score_digits

    g = torch.Generator().manual_seed(1234)
    if model.n_classes:
        labels = torch.arange(N_CLASSES).repeat_interleave(100)
        s = score_digits(model.sample(len(labels), labels, generator=g), labels)
        out["judge_accuracy"] = round(s["accuracy"], 4)
    else:
        s = score_digits(model.sample(1000, generator=g))
        out["hist_entropy"] = round(s["hist_entropy"], 4)
    out["judge_mean_top_prob"] = round(s["mean_top_prob"], 4)
    return out


RECIPES = {
    "vae-mnist": dict(
        model=dict(latent_dim=16, width=32, hidden=512, n_classes=0), steps=3500, lr=3e-3
    ),
    "cvae-mnist": dict(
        model=dict(latent_dim=16, width=32, hidden=512, n_classes=10), steps=3500, lr=3e-3
    ),
}


def _train_registered(name: str, seed: int = 0, quick: bool = False) -> TrainResult:
    recipe = RECIPES[name]
    with runtime.seeded(seed):
        model = VAE(**recipe["model"]).to(get_device())
        steps = 20 if quick else recipe["steps"]
        hist = train_vae(model, steps=steps, seed=seed, desc=name, lr=recipe["lr"])
        # Shipped in float16 (half the bytes); measured after the round trip, as `load` returns it.
        model = model.half()
        quality = evaluate_vae(copy.deepcopy(model).float())
        quality.update(
            steps=hist.steps, best_step=hist.best_step, train_seconds_loop=round(hist.seconds, 1)
        )
        return TrainResult(
            model,
            model.config,
            quality,
            notes=f"{hist.steps} steps, batch 64, AdamW one-cycle (max lr "
            f"{recipe['lr']}), 1-pixel shift augmentation, kept the best of "
            f"every 200 steps on 250 held-out training digits "
            f"(step {hist.best_step}); weights stored in float16",
        )


register(
    "vae-mnist",
    role="generator",
    domain="digits",
    build=lambda cfg: VAE(**cfg),
    train=lambda seed=0, quick=False: _train_registered("vae-mnist", seed, quick),
    evaluate=evaluate_vae,
    chapter="02",
    description="VAE on MNIST-5k, latent 16, Bernoulli decoder",
)
register(
    "cvae-mnist",
    role="generator",
    domain="digits",
    build=lambda cfg: VAE(**cfg),
    train=lambda seed=0, quick=False: _train_registered("cvae-mnist", seed, quick),
    evaluate=evaluate_vae,
    chapter="02",
    description="conditional VAE on MNIST-5k, latent 16",
)
