"""Chapters 08 and 09: KID on the judge's standardised features stays on its scale when generated
pictures fire a feature the real pictures never fire, and its jackknife keeps its digits."""
import math

import pytest
import torch

from course_lib import metrics, sample_quality


def _paired_sets(n=30, d=12, copies=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.rand(n, d, generator=g)                      # ReLU-like features >= 0
    real = torch.cat([centres + 0.3 * torch.rand(n, d, generator=g) for _ in range(copies)])
    fake = centres + 0.6 * torch.rand(n, d, generator=g)
    return real.double(), fake.double()


def test_a_feature_dead_on_the_real_pictures_does_not_blow_up_kid():
    """A ReLU feature that is 0 on every real picture (spread 0) and fires on a few generated ones
    adds a difference of the size of an ordinary feature, not one divided by about 0 and cubed."""
    real, fake = _paired_sets()
    base = sample_quality.paired_kid_jackknife(*metrics.standardise_features(real, fake))[0]
    real[:, 0] = 0.0                                                   # dead on the real pictures
    fake[:, 0] = 0.0
    fake[:3, 0] = 5.0                                                  # three pictures fire it
    std_real, std_fake = metrics.standardise_features(real, fake)
    assert torch.isfinite(std_fake).all() and std_fake.abs().max() < 50
    value, se = sample_quality.paired_kid_jackknife(std_real, std_fake)
    assert math.isfinite(value) and math.isfinite(se)
    assert abs(value) < 100 * max(abs(base), 1e-3), (value, base)
    paired = metrics.paired_kernel_distance(real[: len(fake)], fake)   # the same standardisation
    assert math.isfinite(paired) and abs(paired) < 100 * max(abs(base), 1e-3)
    ordinary = metrics.standardise_features(real, fake)[0][:, 1:]      # other features: unchanged
    mu, sd = real[:, 1:].mean(0), real[:, 1:].std(0)
    keep = sd >= real.std(0).mean()
    assert torch.allclose(ordinary[:, keep], ((real[:, 1:] - mu) / sd)[:, keep])
    with pytest.raises(ValueError):
        metrics.standardise_features(torch.zeros(5))


def test_paired_kid_jackknife_keeps_its_digits_when_one_pair_is_huge():
    """One generated picture far out on a feature where everything else is 0 only enters the
    excluded pairs (i, i): the estimate must equal the one without that feature, however large
    k(i, i) is (subtracting the diagonal after summing cancelled every other digit)."""
    real, fake = _paired_sets()
    value, se = sample_quality.paired_kid_jackknife(real, fake)
    real_x = torch.cat([real, torch.zeros(len(real), 1, dtype=torch.float64)], 1)
    fake_x = torch.cat([fake, torch.zeros(len(fake), 1, dtype=torch.float64)], 1)
    fake_x[4, -1] = 1e7
    d = real.shape[1]
    got, got_se = sample_quality.paired_kid_jackknife(real_x * math.sqrt((d + 1) / d), fake_x
                                                      * math.sqrt((d + 1) / d))
    assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (got, value)
    assert got_se == pytest.approx(se, rel=1e-9, abs=1e-12)


def test_quality_standardises_with_the_guarded_spread(monkeypatch):
    """The chapters' KID (sample_quality.quality) goes through the same standardisation: a feature
    dead on the real renderings and fired by a few generated pictures keeps KID x 1000 finite and on
    the scale of the live features."""
    from course_lib.data import shapes

    monkeypatch.setattr(sample_quality, "is_pipeline", lambda model: True)   # Shapes renderings
    captions = shapes.all_captions("train")[:30]
    reference = sample_quality.reference_set(object(), captions, per_target=2)
    images = sample_quality.reference_set(object(), captions, per_target=1, seed=5)
    real, fake = _paired_sets(n=30, copies=2)
    real[:, 0], fake[:, 0] = 0.0, 0.0
    fake[:3, 0] = 5.0
    real, fake = real.float().double(), fake.float().double()       # what the judge would give
    monkeypatch.setattr(metrics, "extract_features",                # [60, d] real, [30, d] fake
                        lambda x, net: (real if len(x) == len(real) else fake).float())
    q = sample_quality.quality(object(), images, captions, reference)
    want = sample_quality.paired_kid_jackknife(*metrics.standardise_features(real, fake))
    assert q["kid"] == pytest.approx(1000 * want[0], rel=1e-5)
    assert q["kid_se"] == pytest.approx(1000 * want[1], rel=1e-5)
    assert math.isfinite(q["kid"]) and abs(q["kid"]) < 1e4
