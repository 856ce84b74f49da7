"""The roles of a language model in text-to-image, on one test set (chapter 06).

A language model can help a picture model in three places, and chapter 06 asks all three the same
requests:

* as the **conditioner**: the picture model reads the request through it (the ladder's rungs,
  :mod:`course_lib.ladder`);
* as the **planner**: it turns the request into a checked scene spec, drawn from its canonical
  caption (:mod:`course_lib.models.planner`);
* as a **rewriter**, with no training at all: the request is replaced by the canonical caption
  nearest to it in a sentence encoder's space (:class:`NearestCaptionRewriter`), which chapter 05's
  model draws.

Each role answers with a confidence, so each can refuse what it is least sure of. A
**risk-coverage curve** (:func:`risk_coverage`) accepts requests from the most confident down and
reads how many of the accepted pictures are right; :func:`accuracy_at_coverage` reads it at one
coverage, so roles are compared at *matched* coverage, each with a 95% bootstrap interval.

Intervals: every request is drawn with several noise draws, so a result is a table ``right[n, k]``
(request, draw). :func:`bootstrap_mean` resamples requests, then draws within each request (both
sources of chance); :func:`paired_difference` resamples two systems' tables with the *same*
indices, since they answered the same requests from the same noise, which separates smaller
differences than two independent intervals do. :func:`roles_figure` draws the one chart.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

N_BOOT = 2000
LEVEL = 0.95
NOISE_VERDICT = "within noise (the 95% interval of the difference holds 0)"


def as_table(right) -> np.ndarray:
    """``right`` as a float array [n requests, k draws] of 0/1 (a 1-D array is one draw each)."""
    a = np.asarray(right.numpy() if isinstance(right, torch.Tensor) else right, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"right must be [n requests, k draws] (or [n]), got shape {a.shape}")
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError("right must hold only 0/1 (or False/True)")
    return a


def _resample(n: int, k: int, n_boot: int, seed: int):
    """Bootstrap indices: requests [n_boot, n] and, within each, draws [n_boot, n, k]."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    rng = np.random.default_rng([seed, 606])
    return rng.integers(0, n, (n_boot, n)), rng.integers(0, k, (n_boot, n, k))


def _boot_means(a: np.ndarray, rows, draws) -> np.ndarray:
    """Mean of ``a`` [n, k] in every resample: [n_boot]."""
    return a[rows[..., None], draws].mean(axis=(1, 2))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_mean(
    right, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """``(share right, low, high)``: the mean of ``right`` [n requests, k draws] with its
    ``level`` bootstrap interval over requests and noise draws (percentile method)."""
    a = as_table(right)
    rows, draws = _resample(*a.shape, n_boot, seed)
    lo, hi = _interval(_boot_means(a, rows, draws), level)
    m = float(a.mean())
    return m, min(lo, m), max(hi, m)


def paired_difference(
    a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)`` for two systems that answered the same requests with the
    same noise draws (``a``, ``b``: [n, k] in the same order), resampled together."""
    a, b = as_table(a), as_table(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be the same requests and draws: {a.shape}, {b.shape}")
    rows, draws = _resample(*a.shape, n_boot, seed)
    lo, hi = _interval(_boot_means(a, rows, draws) - _boot_means(b, rows, draws), level)
    d = float(a.mean() - b.mean())
    return d, min(lo, d), max(hi, d)


def difference_verdict(diff: tuple) -> str:
    """Read a :func:`paired_difference`: "higher" or "lower" when its interval excludes 0."""
    if len(diff) != 3 or not diff[1] <= diff[0] <= diff[2]:
        raise ValueError(f"diff must be (value, low, high) with low <= value <= high, got {diff}")
    if diff[1] > 0:
        return "higher"
    if diff[2] < 0:
        return "lower"
    return NOISE_VERDICT


# --------------------------------------------------------------------------------------------
# Risk and coverage
# --------------------------------------------------------------------------------------------
def _order(confidence, n: int) -> np.ndarray:
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.shape != (n,) or not np.isfinite(conf).all():
        raise ValueError(f"confidence must be {n} finite numbers, one per request")
    return np.argsort(-conf, kind="stable")  # ties: in the order given


def risk_coverage(confidence, right) -> dict:
    """Accept the requests from the most confident down: for each number accepted, the coverage
    (share accepted), the accuracy (share of the accepted pictures right, over all draws), the risk
    (1 - accuracy) and the confidence of the last accepted. ``confidence``: [n]; ``right``:
    [n, k] or [n]. Arrays of length n, by falling confidence."""
    a = as_table(right)
    n = len(a)
    order = _order(confidence, n)
    per = a.mean(1)[order]  # [n] share right per request
    k = np.arange(1, n + 1)
    acc = np.cumsum(per) / k
    return {
        "coverage": k / n,
        "accuracy": acc,
        "risk": 1 - acc,
        "threshold": np.asarray(confidence, dtype=np.float64)[order],
    }


def _accepted(coverage: float, n: int) -> int:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)):
        raise TypeError(f"coverage must be a number in (0, 1], got {coverage!r}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    return max(1, math.ceil(coverage * n - 1e-9))


def accuracy_at_coverage(
    confidence, right, coverage: float, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """``(accuracy, low, high)`` of the ``coverage`` share of requests a role is most confident
    about, with a bootstrap interval: each resample of requests (and of draws within them) accepts
    its own most confident ``coverage`` share, as the role would on another test set."""
    a = as_table(right)
    n, k = a.shape
    order = _order(confidence, n)
    m = _accepted(coverage, n)
    value = float(a[order[:m]].mean())
    rows, draws = _resample(n, k, n_boot, seed)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # 0 = most confident
    per = a[rows[..., None], draws].mean(2)  # [n_boot, n] share right per resampled request
    keep = np.argsort(rank[rows], axis=1, kind="stable")[:, :m]  # [n_boot, m]
    boots = np.take_along_axis(per, keep, axis=1).mean(1)
    lo, hi = _interval(boots, level)
    return value, min(lo, value), max(hi, value)


# --------------------------------------------------------------------------------------------
# The zero-training rewriter
# --------------------------------------------------------------------------------------------
def nearest_captions(queries: torch.Tensor, captions: torch.Tensor):
    """For each query vector [n, d], the index of its nearest caption vector [m, d] by cosine
    similarity, and that similarity: ``(index [n], similarity [n])``."""
    if queries.ndim != 2 or captions.ndim != 2 or queries.shape[1] != captions.shape[1]:
        raise ValueError(
            f"queries and captions must be [n, d] and [m, d], got {tuple(queries.shape)} and "
            f"{tuple(captions.shape)}"
        )
    sim = F.normalize(queries.float(), dim=-1) @ F.normalize(captions.float(), dim=-1).T  # [n, m]
    best = sim.max(1)
    return best.indices, best.values


def pooled_embedder(encoder, batch_size: int = 256):
    """``texts -> [n, d]``: a frozen sentence encoder's pooled vector
    (:meth:`course_lib.text_encoders.FrozenTextEncoder.encode`; mean over tokens for MiniLM and
    mpnet, the way they were trained as sentence encoders)."""
    return lambda texts: encoder.encode(list(texts), batch_size=batch_size).pooled


def word_table_embedder(text_encoder):
    """``texts -> [n, d]``: a learned word table's pooled vector (chapter 05's
    :class:`~course_lib.text_encoders.ShapesTextEncoder`), a word outside the table read as
    ``<unk>``."""

    @torch.no_grad()
    def embed(texts):
        tok = text_encoder.tokenizer(list(texts), unknown="unk")  # [n, L]
        dev = next(text_encoder.parameters()).device
        return text_encoder(tok["input_ids"].to(dev), tok["attention_mask"].to(dev))[1].cpu()

    return embed


def _check_requests(requests) -> list[str]:
    if isinstance(requests, str) or not all(isinstance(r, str) for r in requests):
        raise TypeError("requests must be a list of strings")
    requests = list(requests)
    if not requests:
        raise ValueError("requests must not be empty")
    return requests


class NearestCaptionRewriter:
    """A request -> the canonical caption nearest to it in ``embed``'s space (no training).

    ``embed``: ``texts -> Tensor[n, d]`` (e.g. :func:`pooled_embedder` of mpnet); ``captions``: the
    canonical captions it may answer with (their vectors are computed once). :meth:`rewrite` returns
    ``{"captions": [...], "similarity": array [n]}``; the similarity is its confidence.
    """

    def __init__(self, embed, captions: list[str]):
        if not callable(embed):
            raise TypeError("embed must be a function texts -> Tensor[n, d]")
        self.embed = embed
        self.captions = _check_requests(captions)
        self.caption_vectors = embed(self.captions)  # [m, d]

    def rewrite(self, requests: list[str]) -> dict:
        idx, sim = nearest_captions(self.embed(_check_requests(requests)), self.caption_vectors)
        return {"captions": [self.captions[int(i)] for i in idx], "similarity": sim.numpy()}


def familiarity(embed, requests: list[str], captions: list[str]) -> np.ndarray:
    """A label-free confidence for a conditioner: the cosine similarity, in the space of the
    encoder it reads (``embed``), between each request and its nearest training caption; how close
    the request is to text the model learned from. [n]."""
    _, sim = nearest_captions(embed(_check_requests(requests)), embed(_check_requests(captions)))
    return sim.numpy()


# --------------------------------------------------------------------------------------------
# The chart
# --------------------------------------------------------------------------------------------
def roles_figure(
    curves: dict,
    at: dict,
    marks: dict | None = None,
    chance: float | None = None,
    title: str | None = None,
):
    """One figure, two panels. Left: the risk-coverage curve of every role (``curves``:
    ``{name: risk_coverage(...)}``), accuracy of the accepted against coverage; ``marks``:
    ``{name: coverage}`` rings a role's own operating point (the planner's calibrated threshold).
    Right: each role's accuracy at the matched coverages of ``at`` (``{name: {coverage: (acc, low,
    high)}}``) with its 95% interval. ``chance``: a dashed line. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if not curves or set(at) != set(curves):
        raise ValueError("curves and at must name the same roles, at least one")
    marks = marks or {}
    unknown = [name for name in marks if name not in curves]
    if unknown:
        raise ValueError(f"marks names roles without a curve: {', '.join(unknown)}")
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11.5, 4.6), layout="constrained", gridspec_kw={"width_ratios": [1.2, 1]}
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(curves)
    coverages = sorted({c for v in at.values() for c in v})
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        c = colours[i % len(colours)]
        rc = curves[name]
        left.plot(rc["coverage"], rc["accuracy"], color=c, lw=1.6, label=name)
        if name in marks:
            j = _accepted(marks[name], len(rc["coverage"])) - 1
            left.plot(rc["coverage"][j], rc["accuracy"][j], "o", ms=9, mfc="none", mec=c, mew=2)
        pts = [at[name][cov] for cov in coverages if cov in at[name]]
        xs = [k + (i - (len(names) - 1) / 2) * width for k, cov in enumerate(coverages)
              if cov in at[name]]
        ys = np.array([p[0] for p in pts])
        err = np.clip(np.array([[p[0] - p[1], p[2] - p[0]] for p in pts]).T, 0, None)
        right.errorbar(xs, ys, yerr=err, fmt="o", color=c, capsize=3, ms=5)
    for ax in (left, right):
        if chance is not None:
            ax.axhline(chance, ls="--", c="gray", lw=1)
        ax.set_ylim(-0.04, 1.04)
        ax.tick_params(labelsize=9)
        ax.set_ylabel("share of accepted pictures right", fontsize=10)
    left.set_xlim(0, 1.02)
    left.set_xlabel("coverage (share of requests accepted, most confident first)", fontsize=10)
    left.set_title("risk-coverage curves (ring: the planner's own threshold)", fontsize=10)
    right.set_xticks(range(len(coverages)), [f"{c:.0%}" for c in coverages])
    right.set_xlim(-0.6, len(coverages) - 0.4)
    right.set_xlabel("matched coverage", fontsize=10)
    right.set_title("at matched coverage, 95% bootstrap intervals", fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
