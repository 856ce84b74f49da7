"""How good a batch of generated pictures is, for comparing samplers and fast models (chapter 08).

* :func:`reference_set`: real pictures of the same targets (fresh Shapes renderings of the captions,
  or real MNIST test digits of the labels), to compare with;
* :func:`quality`: the judge's accuracy (all five Shapes attributes right, or the asked-for digit)
  and KID x 1000 on the judge's penultimate features against that reference, with
  :func:`course_lib.metrics.paired_kernel_distance`, the estimator for pictures paired target by
  target, with its jackknife standard error (:func:`paired_kid_jackknife`), so that two KIDs are
  compared only where their intervals separate them.

Chapter 07 defines KID and the judges (:mod:`course_lib.metrics`, :mod:`course_lib.judges`); this
module puts them together the way chapter 08's sweeps (:mod:`course_lib.samplers`) and its models
(:mod:`course_lib.models.fast`, :mod:`course_lib.models.reflow`) report quality.
"""

from __future__ import annotations

import numpy as np
import torch

from . import judges, metrics
from .data import mnist, shapes


def is_pipeline(model) -> bool:
    """A Shapes pipeline (it has a scheduler it can swap), as opposed to a digit model."""
    return hasattr(model, "scheduler") and hasattr(model, "with_scheduler")


def reference_set(model, targets, per_target: int = 8, seed: int = 1234) -> torch.Tensor:
    """Real pictures to measure KID against, ``per_target`` copies of the target list one after the
    other: fresh Shapes renderings of each caption, or, for digits, a real MNIST test digit of each
    asked-for label (drawn with replacement from the 50 per class)."""
    if is_pipeline(model):
        specs = [shapes.parse_caption(c) for c in targets] * per_target
        return shapes.render(specs, np.random.default_rng(seed))
    x, y = mnist.load_mnist("test")
    want = torch.as_tensor(targets)
    g = torch.Generator().manual_seed(seed)
    pools = {k: torch.nonzero(y == k).flatten() for k in range(10)}
    copies = []
    for _ in range(per_target):  # each copy: one real digit of each asked-for label
        copies.append(
            torch.stack(
                [
                    pools[int(k)][torch.randint(len(pools[int(k)]), (1,), generator=g)][0]
                    for k in want
                ]
            )
        )
    return x[torch.cat(copies)]


def paired_kid_jackknife(feats_real, feats_fake) -> tuple[float, float]:
    """``(value, standard error)`` of the paired KID with a jackknife over the targets.

    ``feats_fake`` [n, d]: features of one generated picture per target; ``feats_real`` [c * n, d]:
    c whole copies of real pictures of the same targets in the same order (both standardised
    already). The value is the mean over the copies of
    :func:`course_lib.metrics.paired_kernel_distance`; the jackknife recomputes it n times, each
    time without target i (in every copy), and the standard error is
    ``sqrt((n - 1) / n * sum((value_i - mean)^2))``. Needs n >= 4 targets. The leave-one-out
    values come from the same kernel matrices (drop row and column i from the off-diagonal sums),
    so this costs about what one estimate costs. The diagonal is set to 0 before any sum, not
    subtracted after: one large k(i, i) would otherwise cancel every digit of the other terms.
    """
    a, b = torch.as_tensor(feats_real).double(), torch.as_tensor(feats_fake).double()
    n = len(b)
    if b.dim() != 2 or a.dim() != 2 or a.shape[1] != b.shape[1] or n < 4 or len(a) % n:
        raise ValueError(
            "need fake features [n >= 4, d] and real features [c * n, d] (whole copies of the "
            f"targets), got {tuple(b.shape)} and {tuple(a.shape)}"
        )
    copies = len(a) // n
    full, loo = 0.0, torch.zeros(n, dtype=torch.float64)  # loo: [n] leave-one-out estimates
    def off_diagonal(k):  # [n, n] -> [n, n] with the pairs (i, i) set to 0
        return k.masked_fill(torch.eye(n, dtype=torch.bool), 0.0)

    kbb = off_diagonal(metrics.polynomial_kernel(b, b))  # [n, n], the same for every copy
    for j in range(copies):
        r = a[j * n : (j + 1) * n]  # [n, d] copy j
        for k, sign in (
            (off_diagonal(metrics.polynomial_kernel(r, r)), 1.0),
            (kbb, 1.0),
            (off_diagonal(metrics.polynomial_kernel(r, b)), -2.0),
        ):
            off = k.sum()  # all pairs (i, j), i != j
            full += sign * float(off) / (n * (n - 1)) / copies
            # without target i: drop row i and column i (the diagonal is already 0)
            without = off - k.sum(1) - k.sum(0)  # [n]
            loo += sign * without / ((n - 1) * (n - 2)) / copies
    se = float(((n - 1) / n * ((loo - loo.mean()) ** 2).sum()).sqrt())
    return full, se


def quality(model, images: torch.Tensor, targets, reference: torch.Tensor | None = None) -> dict:
    """``{"accuracy", "kid", "kid_se"}``: the judge's accuracy (Shapes: all five attributes right;
    digits: the asked-for digit) and KID x 1000 between the judge's penultimate features of
    ``images`` and of ``reference`` (real pictures; KID is unbiased at small n, unlike FID, so a
    few dozen pictures per point are enough to compare samplers). Features are standardised with
    the reference's per-feature mean and standard deviation first
    (:func:`course_lib.metrics.standardise_features`: a fixed affine map, so KID stays a distance
    between the two sets). ``kid_se``: the jackknife standard error of ``kid`` over
    the targets (:func:`paired_kid_jackknife`), NaN where the reference does not hold whole copies
    of the targets or there are fewer than 4 of them."""
    captions = len(targets) > 0 and isinstance(
        targets[0], str
    )  # Shapes captions, else digit labels
    if captions:
        judge = judges.load_shapes_judge()
        acc = judges.score_shapes(images, targets, judge)["all"]
    else:
        judge = judges.load_mnist_classifier()
        acc = judges.score_digits(images, torch.as_tensor(targets), judge)["accuracy"]
    out = {"accuracy": float(acc)}
    if reference is not None:
        fa, fb = metrics.extract_features(images, judge), metrics.extract_features(reference, judge)
        # standardise both with the real pictures' per-feature mean and spread: the judge's ReLU
        # features are unbounded, and KID's cubic kernel would otherwise be ruled by a few large
        # ones (a spread near 0, a feature real pictures never fire, counts as the average one)
        fb, fa = metrics.standardise_features(fb, fa)
        n = len(fa)
        if len(fb) % n == 0 and n >= 4:
            # the reference holds whole copies of the targets (reference_set): compare like with
            # like, one copy at a time, with the paired estimator (metrics.paired_kernel_distance),
            # and a jackknife over the targets for its standard error
            value, se = paired_kid_jackknife(fb, fa)
            vals, ses = [value], [se]
        elif len(fb) % n == 0:
            vals = [
                metrics.paired_kernel_distance(fb[j : j + n], fa, standardise=False)
                for j in range(0, len(fb), n)
            ]
            ses = [float("nan")]
        else:
            vals = [metrics.kernel_inception_distance(fa, fb, subsets=50, subset_size=n)]
            ses = [float("nan")]
        out["kid"] = 1000 * float(np.mean(vals))
        out["kid_se"] = 1000 * float(np.mean(ses))
    return out
