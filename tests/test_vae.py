"""Chapter 02 contracts: the KL in closed form against Monte Carlo (and a wrong formula from the
tutorials failing the same test), the reparameterisation, the Bernoulli likelihood, the loss the
learner assembles (the negative ELBO), the VAE API, and the shipped models."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import pretrained
from course_lib.models import vae


def _gaussians(seed=0, n=6, d=4):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8
    return mu, logvar


def _matches_monte_carlo(kl_fn, n_samples=40_000, seed=1):
    """True when ``kl_fn`` agrees with the Monte Carlo estimate within 5 standard errors."""
    mu, logvar = _gaussians()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((n_samples, *mu.shape), generator=g, dtype=mu.dtype)
    z = mu + (0.5 * logvar).exp() * eps
    terms = vae.gaussian_log_prob(z, mu, logvar) - vae.gaussian_log_prob(z, 0 * mu, 0 * logvar)  # [S, n]
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n_samples)
    return bool(((kl_fn(mu, logvar) - mc).abs() <= 5 * se + 1e-9).all())


def test_closed_form_kl_matches_monte_carlo():
    assert _matches_monte_carlo(vae.gaussian_kl)


def test_wrong_kl_formula_fails_the_same_test():
    assert not _matches_monte_carlo(vae.gaussian_kl_wrong)
    mu, logvar = _gaussians()
    # as printed, logvar cancels: the 'KL' ignores the variance; it is 0.5 (sum mu^2 - d)
    torch.testing.assert_close(vae.gaussian_kl_wrong(mu, logvar), vae.gaussian_kl_wrong(mu, 0 * logvar))
    torch.testing.assert_close(vae.gaussian_kl_wrong(mu, logvar), 0.5 * (mu.pow(2).sum(1) - mu.shape[1]))
    small = torch.full((1, 4), 0.9)                    # sum mu^2 = 3.24 < d = 4: negative
    big = torch.tensor([[2.5, 0.0, 0.0, 0.0]])         # |mu_1| > 1 but sum mu^2 = 6.25 > 4: positive
    assert vae.gaussian_kl_wrong(small, 0 * small) < 0 < vae.gaussian_kl_wrong(big, 0 * big)


def test_kl_monte_carlo_function_agrees():
    mu, logvar = _gaussians()
    mc = vae.kl_monte_carlo(mu, logvar, n_samples=40_000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mc, vae.gaussian_kl(mu, logvar), atol=0.1, rtol=0.02)


def test_negative_elbo_loss_is_reconstruction_plus_beta_kl_per_picture():
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(5, 1, 28, 28, generator=g), torch.rand(5, 1, 28, 28, generator=g)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 5
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum() / 5
    for beta in (1.0, 4.0):
        loss, parts = vae.negative_elbo_loss(logits, x, mu, logvar, beta)
        torch.testing.assert_close(loss, rec + beta * kl)
        assert parts == pytest.approx({"rec": rec.item(), "kl": kl.item()}, rel=1e-5)


def test_kl_per_dimension_sums_to_the_mean_kl():
    mu, logvar = _gaussians(seed=4, n=9, d=5)
    per_dim = vae.kl_per_dimension(mu, logvar)
    assert per_dim.shape == (5,) and (per_dim > 0).all()
    torch.testing.assert_close(per_dim.sum(), vae.gaussian_kl(mu, logvar).mean())


def test_the_loss_a_vae_trains_with_can_be_replaced():
    """Chapter 02 trains with the learner's loss: VAE.loss and train_vae call the function given."""
    torch.manual_seed(0)
    m = vae.VAE(latent_dim=4, width=8, hidden=32)
    x = torch.rand(8, 1, 28, 28)
    seen = []

    def my_loss(logits, x_, mu, logvar, beta):
        seen.append((logits.shape, mu.shape, beta))
        return vae.negative_elbo_loss(logits, x_, mu, logvar, beta)

    loss, parts = m.loss(x, beta=2.0, generator=torch.Generator().manual_seed(0), loss_fn=my_loss)
    ref, _ = m.loss(x, beta=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, ref)
    assert seen == [((8, 1, 28, 28), (8, 4), 2.0)]
    vae.train_vae(m, steps=2, batch_size=8, train_data=(x, torch.zeros(8)), val_data=None,
                  progress=False, loss_fn=my_loss)
    assert len(seen) == 3


def test_kl_properties():
    z = torch.zeros(3, 5)
    torch.testing.assert_close(vae.gaussian_kl(z, z), torch.zeros(3))
    mu, logvar = _gaussians(seed=5)
    assert (vae.gaussian_kl(mu, logvar) > 0).all()
    assert vae.gaussian_kl(mu, logvar).shape == (6,)


def test_reparameterize_statistics_and_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    z = vae.reparameterize(mu.expand(50_000, 2), logvar.expand(50_000, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.05, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_bernoulli_nll():
    x = torch.rand(3, 1, 28, 28)
    logits = torch.randn(3, 1, 28, 28)
    p = torch.sigmoid(logits.double())
    want = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(vae.bernoulli_nll(logits, x).double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n_classes", [0, 10])
def test_vae_api(n_classes):
    torch.manual_seed(0)
    m = vae.VAE(latent_dim=16, width=8, hidden=32, n_classes=n_classes)
    x = torch.rand(5, 1, 28, 28)
    y = torch.arange(5) if n_classes else None
    mu, logvar = m.encode(x, y)
    assert mu.shape == logvar.shape == (5, 16)
    logits = m.decode(mu, y)
    assert logits.shape == x.shape
    e = m.elbo(x, y)
    assert e.shape == (5,) and torch.isfinite(e).all() and (e < 0).all()
    rec, kl = m.elbo_terms(x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.elbo(x, y, generator=torch.Generator().manual_seed(0)), -(rec + kl))
    s = m.sample(4, labels=(3 if n_classes else None), generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 28, 28) and s.device.type == "cpu" and 0 <= s.min() and s.max() <= 1
    torch.testing.assert_close(s, m.sample(4, labels=(3 if n_classes else None),
                                           generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        m.encode(x, None if n_classes else torch.arange(5))


def test_random_shift_and_autoencoder():
    x = torch.zeros(2, 1, 28, 28); x[:, :, 10:18, 10:18] = 1
    s = vae.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert s.shape == x.shape and torch.allclose(s.sum((1, 2, 3)), x.sum((1, 2, 3)))
    torch.testing.assert_close(vae.random_shift(x, 0), x)
    ae = vae.Autoencoder(latent_dim=4, width=8, hidden=16)
    assert ae.encode(x).shape == (2, 4) and ae(x).shape == x.shape and ae.loss(x).ndim == 0


def test_train_vae_few_steps():
    torch.manual_seed(0)
    m = vae.VAE(latent_dim=4, width=8, hidden=32)
    x, y = torch.rand(64, 1, 28, 28).round(), torch.arange(64) % 10
    h = vae.train_vae(m, steps=6, batch_size=16, train_data=(x, y), val_data=(x[:16], y[:16]),
                      val_every=3, progress=False)
    assert h.steps == 6 and len(h.evals) == 2 and {"rec", "kl", "loss"} <= set(h.logs)
    r = vae.negative_elbo(m, x[:16], n_samples=2)
    assert set(r) == {"neg_elbo", "rec", "kl"} and abs(r["neg_elbo"] - r["rec"] - r["kl"]) < 1e-3


def test_registered():
    names = pretrained.known()
    assert "vae-mnist" in names and "cvae-mnist" in names


@pytest.mark.parametrize("name", ["vae-mnist", "cvae-mnist"])
def test_shipped_checkpoint(name):
    shipped = pretrained.read_manifest()["models"]
    assert name in shipped, f"{name} is registered but not shipped: python -m course_lib.pretrained train {name}"
    rec = shipped[name]
    assert rec["bytes"] < 8e6 and rec["config"]["latent_dim"] == 16
    m = pretrained.load(name, device="cpu")
    from course_lib.data import mnist
    x, y = mnist.load_mnist("test")
    r = vae.negative_elbo(m, x[:100], y[:100] if m.n_classes else None, n_samples=2)
    assert r["neg_elbo"] < 130                                   # a trained model, not a random one
    assert rec["quality"]["test_neg_elbo"] <= 100                # chapter 02's bar, as recorded
