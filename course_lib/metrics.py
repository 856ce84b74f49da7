"""How good, how varied, how faithful, how fast: the metrics of chapter 07, written by hand.

Every function here is the lesson's own implementation; ``tests/test_metrics.py`` checks each one
against a reference (scikit-image, torchmetrics, SciPy, closed forms, hand-made tables).

* Pixel fidelity: :func:`psnr`, :func:`ssim` (for reconstructions: VAEs, autoencoders).
* Sample quality and diversity from a classifier: :func:`inception_score` (and
  :func:`wrong_inception_score`, a common mistake the chapter takes apart).
* Distribution distances on features: :func:`frechet_distance`, :func:`kernel_inception_distance`,
  and the same through torchmetrics' custom-``feature=`` path (:func:`fid_torchmetrics`,
  :func:`kid_torchmetrics`) on a *domain* feature network (the course's judges' penultimate layers).
  :func:`inception_fid` is the paper-standard Inception FID, only behind an explicit online switch.
* Fidelity and coverage separately: :func:`precision_recall` (Kynkaanniemi et al., 2019) and the
  memorisation check :func:`nearest_neighbours`.
* Alignment with a prompt: :func:`caption_accuracy` (the Shapes judge), :func:`clip_score` (the tiny
  CLIP of chapter 06, when shipped), :func:`caption_round_trip` (the captioner of chapter 03).
* Efficiency: :func:`latency`, :func:`peak_memory_bytes`, :func:`parameter_count`,
  :func:`size_on_disk`, :func:`efficiency` (written in :mod:`course_lib.efficiency`).

Features are ``[n, d]`` tensors or arrays; pictures are ``[n, C, H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# chapter 07 reads every measure from here, the efficiency ones too
from .efficiency import (  # noqa: F401
    efficiency,
    latency,
    parameter_count,
    peak_memory_bytes,
    size_on_disk,
)
from .runtime import get_device

ONLINE_ENV = "COURSE_ONLINE"


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (offline, or the model it needs is not shipped yet). The message
    says why and what would make it run; notebooks and the scoreboard print it and move on."""


def _f64(x) -> torch.Tensor:
    """A CPU float64 tensor from a tensor or array (metrics are computed in double precision)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


# =============================================================================================
# Pixel fidelity: PSNR and SSIM
# =============================================================================================
def psnr(x, y, data_range: float = 1.0, per_image: bool = False):
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    By default the whole tensor is one signal (as ``skimage.metrics.peak_signal_noise_ratio`` and
    ``torchmetrics.functional.peak_signal_noise_ratio`` do); ``per_image=True`` returns a
    ``FloatTensor[n]`` with one value per picture of ``[n, ...]`` inputs. Identical inputs give
    ``inf``.
    """
    x, y = _f64(x), _f64(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if per_image:
        mse = (x - y).pow(2).flatten(1).mean(1)  # [n]
        return (10 * torch.log10(data_range**2 / mse)).float()
    mse = (x - y).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian window SSIM smooths with (float64, length ``size``)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(t**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(
    x,
    y,
    data_range: float = 1.0,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    border: str = "valid",
    per_image: bool = False,
    return_map: bool = False,
):
    """Structural similarity (Wang et al., 2004), Gaussian-weighted.

    In every 11x11 Gaussian window (sigma 1.5) compare the two pictures' local means ``mu``,
    variances ``s^2`` and covariance ``s_xy``::

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``, then average the map over pixels,
    channels and pictures.

    ``border`` is where the two reference libraries differ:

    * ``"valid"`` (default, Wang et al.'s code and scikit-image): only windows that lie wholly
      inside the picture. Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, data_range=L)``.
    * ``"reflect"``: pad the picture by reflection and average over every pixel, as
      ``torchmetrics.functional.structural_similarity_index_measure`` does.

    Inputs ``[H, W]``, ``[C, H, W]`` or ``[n, C, H, W]``. Returns a float (``per_image``: ``[n]``;
    ``return_map``: also the SSIM map ``[n, C, h, w]``).
    """
    x, y = _f64(x), _f64(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    while x.dim() < 4:  # -> [n, C, H, W]
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    n, c, h, w = x.shape
    pad = (window_size - 1) // 2
    if border == "reflect":
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    elif border != "valid":
        raise ValueError(f"border must be 'valid' or 'reflect', got {border!r}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(
            f"pictures of {h}x{w} are smaller than the {window_size}x{window_size} window"
        )
    g = gaussian_window(window_size, sigma)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size)  # [C, 1, k, k]

    def blur(t):  # local weighted mean
        return F.conv2d(t, kernel, groups=c)  # 'valid' convolution

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0)
    var_y = (blur(y * y) - mu_y**2).clamp_min(0)
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    value = smap.flatten(1).mean(1).float() if per_image else smap.mean().item()
    return (value, smap.float()) if return_map else value


# =============================================================================================
# Inception Score
# =============================================================================================
def _check_probs(probs) -> torch.Tensor:
    p = _f64(probs)
    if p.dim() != 2:
        raise ValueError(f"probs must be [n, classes], got shape {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-4):
        raise ValueError(
            "each row of probs must be a probability distribution (>= 0, summing to 1); "
            "pass softmax(logits), not logits"
        )
    return p


def inception_score(probs, splits: int = 1, return_std: bool = False):
    """Inception Score (Salimans et al., 2016): ``IS = exp( E_x KL( p(y|x) || p(y) ) )``.

    ``probs``: ``[n, K]``, row ``i`` the classifier's ``p(y | x_i)``; ``p(y)`` is their mean (the
    label distribution of the whole sample). Equivalently ``IS = exp( H(y) - E_x H(y|x) )``: high
    when each picture is classified confidently (low ``H(y|x)``) *and* the labels are spread (high
    ``H(y)``). It ranges from 1 to K.

    ``splits``: the sample is cut into that many consecutive chunks (shuffle first if it is
    ordered), each scored with its own ``p(y)``; returns their mean (and, with ``return_std``, their
    standard deviation, as in the original code: ``np.std``, ``ddof=0``). ``0 log 0`` counts as 0.
    """
    p = _check_probs(probs)
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be between 1 and n={len(p)}, got {splits}")
    scores = []
    for chunk in torch.chunk(p, splits, dim=0):
        p_y = chunk.mean(0, keepdim=True)  # [1, K]
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, p_y.expand_as(chunk))).sum(1)  # [m]
        scores.append(math.exp(kl.mean().item()))
    mean = float(np.mean(scores))
    return (mean, float(np.std(scores))) if return_std else mean


def wrong_inception_score(probs) -> float:
    """A COMMON MISTAKE, kept so chapter 07 can show why it fails: ``exp( -E_x H(p(y|x)) )``.

    It is what remains of the Inception Score when the marginal term is dropped (the real one is
    ``exp(H(y) - E_x H(y|x))``): it rewards confident pictures only. A generator that draws the same
    perfectly recognisable ``1`` every time gets the maximum, 1.0, while its Inception Score is 1,
    the minimum. Never use it to rank models.
    """
    p = _check_probs(probs)
    entropy = -torch.xlogy(p, p).sum(1)  # H(p(y|x)), [n]
    return math.exp(-entropy.mean().item())


def inception_score_from_logits(logits, splits: int = 1, return_std: bool = False):
    """:func:`inception_score` of ``softmax(logits)``."""
    return inception_score(torch.softmax(_f64(logits), 1), splits=splits, return_std=return_std)


# =============================================================================================
# Frechet distance (FID) and kernel distance (KID) on features
# =============================================================================================
def gaussian_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` (divided by ``n - 1``) of features
    ``[n, d]``."""
    f = _f64(feats)
    if f.dim() != 2 or len(f) < 2:
        raise ValueError(f"features must be [n >= 2, d], got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at
    0)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance_gaussians(mu1, cov1, mu2, cov2) -> float:
    """Squared Frechet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``::

        d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2))

    The trace of ``(cov1 cov2)^(1/2)`` equals that of the symmetric
    ``(cov1^(1/2) cov2 cov1^(1/2))^(1/2)`` (same eigenvalues), which is what is computed: no complex
    numbers, no ``sqrtm`` round-off.
    """
    mu1, mu2, cov1, cov2 = (_f64(t) for t in (mu1, mu2, cov1, cov2))
    mu1, mu2 = mu1.reshape(-1), mu2.reshape(-1)
    cov1, cov2 = cov1.reshape(len(mu1), len(mu1)), cov2.reshape(len(mu2), len(mu2))
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_covmean
    return float(d2.clamp_min(0))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between two sets of features ``[n, d]``, ``[m, d]``: fit a Gaussian to each
    (mean, unbiased covariance) and return :func:`frechet_distance_gaussians`. On Inception-v3 pool
    features this is FID; on a judge's penultimate layer it is the course's domain FID."""
    return frechet_distance_gaussians(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def polynomial_kernel(
    a: torch.Tensor, b: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> torch.Tensor:
    """KID's kernel ``k(a, b) = (gamma a.b + coef)^degree``, ``gamma = 1/d`` by default."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef) ** degree


def mmd2_unbiased(a: torch.Tensor, b: torch.Tensor, **kernel) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy between samples ``a`` and ``b``
    of equal size ``m``: mean of ``k(a_i, a_j)`` and ``k(b_i, b_j)`` over ``i != j``, minus twice
    the mean of ``k(a_i, b_j)`` over all pairs (as Binkowski et al. and torchmetrics)."""
    m = len(a)
    kaa, kbb, kab = (
        polynomial_kernel(a, a, **kernel),
        polynomial_kernel(b, b, **kernel),
        polynomial_kernel(a, b, **kernel),
    )
    off = (kaa.sum() - kaa.diagonal().sum() + kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(off - 2 * kab.sum() / m**2)


def standardise_features(feats_real, *others) -> tuple[torch.Tensor, ...]:
    """``feats_real`` and each of ``others`` ([n, d] each) as float64, minus the real set's
    per-feature mean and divided by its per-feature spread: a fixed affine map, so a kernel distance
    on the result is still a distance between the sets (chapter 07; chapter 08's KIDs).

    A spread below the average spread over the d features counts as that average. A judge's ReLU
    feature that never fires on the real pictures has spread 0; dividing by about 0 turns one
    generated picture that fires it into a value near 1e6, which KID's cubic kernel raises to 1e18
    and more (one-step DDIM pictures of chapter 08 would score KIDs above 1e30)."""
    a = _f64(feats_real)
    if a.dim() != 2 or len(a) < 2:
        raise ValueError(f"real features must be [n >= 2, d], got {tuple(a.shape)}")
    sd = a.std(0)  # [d]
    scale = sd.clamp(min=float(sd.mean()) or 1.0)  # [d]; all spreads 0: no scaling
    mu = a.mean(0)  # [d]
    return tuple((_f64(x) - mu) / scale for x in (a, *others))


def paired_kernel_distance(feats_real, feats_fake, standardise: bool = True) -> float:
    """KID's squared MMD (cubic kernel) for two sets whose rows are **paired**: row i of both was
    asked for the same caption or label (chapter 07's Shapes scoreboard, chapter 08's sampler
    sweep).

    The plain unbiased KID counts the cross pairs (i, i) too; a matched pair is more alike than two
    random draws, so on two stratified samples of one distribution it is biased *below* 0 (we
    measured about -7.8e6 for real against real Shapes on raw judge features). Here every mean
    leaves out the pairs (i, i), so the expectation is 0 when both come from the same conditional
    distribution. ``standardise``: scale both by the real set's per-feature mean and spread first
    (:func:`standardise_features`: a fixed affine map, so still a distance between the two sets);
    the judges' ReLU features are unbounded and the cubic kernel would otherwise be ruled by a few
    large ones.
    """
    a, b = _f64(feats_real), _f64(feats_fake)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"paired sets need the same shape [n >= 2, d], got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if standardise:
        a, b = standardise_features(a, b)
    off = ~torch.eye(len(a), dtype=torch.bool)
    kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    return float(kaa[off].mean() + kbb[off].mean() - 2 * kab[off].mean())


def kernel_inception_distance(
    feats_a,
    feats_b,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
    return_std: bool = False,
    mmd=None,
):
    """Kernel Inception Distance (Binkowski et al., 2018): the unbiased squared MMD with the cubic
    polynomial kernel, averaged over ``subsets`` random subsets of ``subset_size`` from each set
    (capped at the smaller set's size). Unlike FID its estimate is unbiased: it is near 0, possibly
    negative, for two samples of the same distribution, whatever their size.

    Returns the mean (and the standard deviation over subsets with ``return_std``); ``seed`` fixes
    the subsets. ``mmd(a, b) -> float`` estimates one subset's squared MMD with the cubic kernel
    (default :func:`mmd2_unbiased`; chapter 07 passes the learner's own). When the subset size
    covers both whole sets, every "subset" would be the same two sets reshuffled, and the estimate
    does not depend on the order: it is computed once (standard deviation 0), whatever ``subsets``.
    """
    a, b = _f64(feats_a), _f64(feats_b)
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if mmd is not None and (degree, gamma, coef) != (3, None, 1.0):
        raise ValueError("give either mmd or the kernel's degree/gamma/coef, not both")
    if m == len(a) == len(b):  # the whole sets: one estimate, not reshuffled copies of it
        subsets = 1
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        ia = torch.randperm(len(a), generator=g)[:m]
        ib = torch.randperm(len(b), generator=g)[:m]
        if mmd is None:
            vals.append(mmd2_unbiased(a[ia], b[ib], degree=degree, gamma=gamma, coef=coef))
        else:
            vals.append(float(mmd(a[ia], b[ib])))
    mean = float(np.mean(vals))
    return (mean, float(np.std(vals))) if return_std else mean


# --------------------------------------------------------------------------------------------
# Domain feature networks and the torchmetrics path
# --------------------------------------------------------------------------------------------
class FeatureNet(nn.Module):
    """Wraps a network with a ``features(x)`` method (the course's judges) as the ``nn.Module``
    torchmetrics' ``FrechetInceptionDistance(feature=...)`` / ``KernelInceptionDistance`` expect:
    ``forward(pictures [n, C, H, W] in [0, 1]) -> [n, d]``, with ``num_features = d``."""

    def __init__(self, net: nn.Module, num_features: int | None = None):
        super().__init__()
        self.net = net.eval()
        if num_features is None:
            probe = domain_input_shape(net)
            with torch.no_grad():
                num_features = self.net.features(
                    torch.zeros(1, *probe, device=_device_of(net))
                ).shape[-1]
        self.num_features = int(num_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x.float().to(_device_of(self.net)))


def _device_of(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def domain_input_shape(net: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` a course judge reads: ``(1, 28, 28)`` for digits, ``(3, 32, 32)`` for
    Shapes."""
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return (1, 28, 28) if first.in_channels == 1 else (3, 32, 32)


def domain_feature_net(domain: str, device=None) -> nn.Module:
    """The shipped judge whose penultimate layer is the domain's feature space:
    ``"mnist"`` -> ``mnist-classifier``, ``"shapes"`` -> ``shapes-judge``. Raises
    :class:`MetricUnavailable` if it is not shipped."""
    from . import judges, pretrained

    loaders = {"mnist": judges.load_mnist_classifier, "shapes": judges.load_shapes_judge}
    if domain not in loaders:
        raise ValueError(f"domain must be one of {tuple(loaders)}, got {domain!r}")
    try:
        return loaders[domain](device)
    except pretrained.CheckpointError as exc:
        raise MetricUnavailable(f"the {domain} feature network is not available: {exc}") from exc


@torch.no_grad()
def extract_features(images: torch.Tensor, net: nn.Module, batch_size: int = 500) -> torch.Tensor:
    """``net.features`` of ``images`` in batches, in eval mode: ``FloatTensor[n, d]`` on the CPU."""
    net.eval()
    dev = _device_of(net)
    out = [
        net.features(images[i : i + batch_size].float().to(dev)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def domain_fid(real_images: torch.Tensor, fake_images: torch.Tensor, net: nn.Module) -> float:
    """FID on a domain feature network: :func:`frechet_distance` of ``net.features``."""
    return frechet_distance(extract_features(real_images, net), extract_features(fake_images, net))


def fid_torchmetrics(
    real_images: torch.Tensor, fake_images: torch.Tensor, net: nn.Module, batch_size: int = 500
) -> float:
    """The same domain FID through torchmetrics' ``FrechetInceptionDistance(feature=<module>)``."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=FeatureNet(net))
    for imgs, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(imgs), batch_size):
            metric.update(imgs[i : i + batch_size], real=real)
    return float(metric.compute())


def kid_torchmetrics(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    net: nn.Module,
    subsets: int = 100,
    subset_size: int = 1000,
    batch_size: int = 500,
):
    """KID through torchmetrics' ``KernelInceptionDistance(feature=<module>)``: ``(mean, std)``.
    (torchmetrics draws its subsets from torch's global random generator.)"""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    m = min(subset_size, len(real_images), len(fake_images))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "saves all features"
        metric = KernelInceptionDistance(feature=FeatureNet(net), subsets=subsets, subset_size=m)
    for imgs, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(imgs), batch_size):
            metric.update(imgs[i : i + batch_size], real=real)
    mean, std = metric.compute()
    return float(mean), float(std)


# --------------------------------------------------------------------------------------------
# Inception FID: the paper standard, online only
# --------------------------------------------------------------------------------------------
def online_allowed() -> bool:
    """:func:`course_lib.runtime.online`: true only with ``COURSE_ONLINE=1`` (and no
    ``HF_HUB_OFFLINE=1``), the explicit switch for anything that downloads (Inception weights).
    Offline (the default) nothing is attempted."""
    from .runtime import online

    return online()


def inception_fid(
    real_images: torch.Tensor, fake_images: torch.Tensor, batch_size: int = 50, device=None
) -> float:
    """Paper-standard FID on Inception-v3 pool features (2048-d), through torchmetrics, which needs
    ``torch-fidelity`` and downloads the FID Inception weights (~100 MB) on first use.

    Runs only when :func:`online_allowed` (``COURSE_ONLINE=1``); otherwise raises
    :class:`MetricUnavailable` before touching the network. Grey pictures are repeated to 3
    channels; torchmetrics resizes to 299x299.
    """
    if not online_allowed():
        raise MetricUnavailable(
            f"Inception FID needs to download the Inception-v3 weights; it runs only "
            f"online, with {ONLINE_ENV}=1 (offline the course uses domain FID)"
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise MetricUnavailable(
            "Inception FID needs torch-fidelity: pip install torch-fidelity"
        ) from exc
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = device if device is not None else get_device()
    metric = FrechetInceptionDistance(feature=2048, normalize=True).to(device)
    for imgs, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(imgs), batch_size):
            x = imgs[i : i + batch_size].float().clamp(0, 1)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            metric.update(x.to(device), real=real)
    return float(metric.compute())


# =============================================================================================
# Precision and recall (k-NN manifolds), nearest neighbours
# =============================================================================================
def pairwise_distances(a, b, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distances ``[len(a), len(b)]`` in float64, computed exactly (no ``a.b`` expansion,
    so a point's distance to its copy is exactly 0)."""
    a, b = _f64(a).flatten(1), _f64(b).flatten(1)
    return (
        torch.cat(
            [
                torch.cdist(a[i : i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
                for i in range(0, len(a), chunk)
            ]
        )
        if len(a)
        else torch.zeros(0, len(b), dtype=torch.float64)
    )


def knn_radii(feats, k: int = 3) -> torch.Tensor:
    """Distance from each point to its ``k``-th nearest *other* point of the same set ``[n]``."""
    d = pairwise_distances(feats, feats)
    if k >= len(d):
        raise ValueError(f"k={k} needs more than {k} points, got {len(d)}")
    return d.kthvalue(k + 1, dim=1).values  # index 0 is the point itself


def manifold_fraction(points, ref, ref_radii: torch.Tensor) -> float:
    """Fraction of ``points`` inside the estimated manifold of ``ref``: the union of balls around
    each ref point with its k-NN radius (``d(p, ref_j) <= r_j`` for some ``j``)."""
    d = pairwise_distances(points, ref)  # [n_points, n_ref]
    return (d <= ref_radii[None, :]).any(1).double().mean().item()


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    The real manifold is the union of balls around each real feature vector, radius its distance
    to its ``k``-th nearest real neighbour; likewise the fake manifold.

    * precision = fraction of fake samples inside the real manifold (are the pictures realistic?)
    * recall    = fraction of real samples inside the fake manifold (is the data's variety covered?)
    """
    real, fake = _f64(real_feats), _f64(fake_feats)
    precision = manifold_fraction(fake, real, knn_radii(real, k))
    recall = manifold_fraction(real, fake, knn_radii(fake, k))
    return precision, recall


def nearest_neighbours(queries, references) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the distance to its nearest reference and that reference's index
    (``([n], [n])``): the memorisation check. Pictures or features, any shape ``[n, ...]``."""
    d = pairwise_distances(queries, references)
    dist, idx = d.min(1)
    return dist, idx


# =============================================================================================
# Alignment: caption accuracy, CLIP score, captioner round trip
# =============================================================================================
def caption_accuracy(images: torch.Tensor, captions, judge=None) -> dict:
    """How often the Shapes judge reads each asked-for attribute off text-to-image pictures:
    ``{"size", "color", "shape", "row", "col", "all"}`` (``all``: every attribute right)."""
    from .judges import score_shapes

    if judge is None:
        judge = domain_feature_net("shapes")
    res = score_shapes(images, captions, judge)
    return {k: v for k, v in res.items() if k != "correct"}


def _shipped(name: str) -> bool:
    from . import pretrained

    try:
        return name in pretrained.known() and name in pretrained.read_manifest()["models"]
    except Exception:  # a broken entry module elsewhere must not break evaluation
        return False


def _load_optional(name: str, chapter: str):
    from . import pretrained

    if not _shipped(name):
        raise MetricUnavailable(
            f"{name!r} (chapter {chapter}) is not shipped yet; "
            f"make it with: python -m course_lib.pretrained train {name}"
        )
    return pretrained.load(name)


def _call_first(obj, names, *args):
    for n in names:
        fn = getattr(obj, n, None)
        if callable(fn):
            return fn(*args)
    raise MetricUnavailable(f"{type(obj).__name__} has none of the methods {names}")


@torch.no_grad()
def clip_score(images: torch.Tensor, captions, model=None) -> float:
    """CLIP score as torchmetrics reports it: the mean over pairs of ``100 * max(cos(E_image,
    E_text), 0)``, with the tiny CLIP ``shapes-clip`` of chapter 06. Hessel et al. (2021) define
    CLIP-S with a weight of 2.5 instead of 100 (``2.5 * max(cos, 0)``): the same ranking, on a
    different scale, so say which one a number uses.

    ``model`` needs ``encode_images(images) -> [n, d]`` and ``encode_texts(list[str]) -> [n, d]``
    (as chapter 06's ``TinyCLIP``; ``encode_image``/``encode_text`` or ``get_image_features``/
    ``get_text_features`` work too). Without ``model``, ``shapes-clip`` is loaded if shipped;
    otherwise :class:`MetricUnavailable` says so.
    """
    model = model if model is not None else _load_optional("shapes-clip", "06")
    captions = [captions] if isinstance(captions, str) else list(captions)
    dev = _device_of(model) if isinstance(model, nn.Module) else torch.device("cpu")
    if isinstance(model, nn.Module):
        model.eval()
    img = _call_first(
        model, ("encode_images", "encode_image", "get_image_features"), images.float().to(dev)
    )
    txt = _call_first(model, ("encode_texts", "encode_text", "get_text_features"), captions)
    cos = F.cosine_similarity(_f64(img), _f64(txt), dim=-1)
    return float((100 * cos).clamp_min(0).mean())


@torch.no_grad()
def caption_round_trip(images: torch.Tensor, captions, captioner=None, judge=None) -> dict:
    """Caption the generated pictures with chapter 03's ``shapes-captioner`` and compare with the
    prompts, attribute by attribute: ``{"size", ..., "all", "parsed"}`` (``parsed``: fraction of
    captions that are well-formed Shapes captions; unparsable ones count as wrong).

    ``captioner`` needs ``caption(images) -> list[str]`` (or ``generate_captions`` / ``describe``).
    """
    from .data import shapes

    captioner = captioner if captioner is not None else _load_optional("shapes-captioner", "03")
    dev = _device_of(captioner) if isinstance(captioner, nn.Module) else torch.device("cpu")
    got = _call_first(
        captioner, ("caption", "generate_captions", "describe"), images.float().to(dev)
    )
    want = [c if isinstance(c, shapes.ShapeSpec) else shapes.parse_caption(c) for c in captions]
    rows, parsed = [], 0
    for text, spec in zip(got, want):
        try:
            g = shapes.parse_caption(text)
            parsed += 1
            rows.append([getattr(g, a) == getattr(spec, a) for a in shapes.ATTRIBUTES])
        except ValueError:
            rows.append([False] * len(shapes.ATTRIBUTES))
    ok = torch.tensor(rows, dtype=torch.bool).view(-1, len(shapes.ATTRIBUTES))
    out = {a: ok[:, i].float().mean().item() for i, a in enumerate(shapes.ATTRIBUTES)}
    out["all"] = ok.all(1).float().mean().item()
    out["parsed"] = parsed / max(1, len(want))
    return out
