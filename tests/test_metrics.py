"""Chapter 07's metrics, each against a reference: scikit-image, torchmetrics, SciPy, closed forms
and hand-made cases with known answers."""
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from course_lib import metrics
from course_lib import pretrained
from course_lib.data import mnist, shapes
from course_lib.judges import MnistClassifier, ShapesJudge

TOL = 1e-4


# ---------------------------------------------------------------------------------------------
# pictures: random and real
# ---------------------------------------------------------------------------------------------
def _pairs():
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(4, 3, 32, 32, generator=g)
    digits = mnist.load_mnist("test")[0][:4]                                    # [4, 1, 28, 28]
    pics = shapes.sample(4, seed=3)[0]                                         # [4, 3, 32, 32]
    out = []
    for x in (rand, digits, pics):
        noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        shifted = torch.roll(x, 1, dims=-1)
        out += [(x, noisy), (x, shifted)]
    return out


def _skimage_ssim(x, y):
    x, y = x.double().numpy(), y.double().numpy()
    return sk_ssim(x, y, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                   use_sample_covariance=False)


@pytest.mark.parametrize("i", range(6))
def test_psnr_matches_skimage_and_torchmetrics(i):
    x, y = _pairs()[i]
    ours = metrics.psnr(x, y)
    assert abs(ours - sk_psnr(x.double().numpy(), y.double().numpy(), data_range=1.0)) < TOL
    assert abs(ours - tm_psnr(y.double(), x.double(), data_range=1.0).item()) < TOL
    per = metrics.psnr(x, y, per_image=True)
    ref = [sk_psnr(a.double().numpy(), b.double().numpy(), data_range=1.0) for a, b in zip(x, y)]
    assert np.allclose(per.numpy(), ref, atol=TOL)


def test_psnr_identical_is_inf_and_known_value():
    x = torch.rand(2, 1, 8, 8)
    assert metrics.psnr(x, x) == math.inf
    assert abs(metrics.psnr(torch.zeros(10, dtype=torch.float64), torch.full((10,), 0.1, dtype=torch.float64)) - 20.0) < 1e-9      # MSE 0.01 -> 20 dB


@pytest.mark.parametrize("i", range(6))
def test_ssim_valid_matches_skimage(i):
    x, y = _pairs()[i]
    per = metrics.ssim(x, y, per_image=True)
    ref = np.array([_skimage_ssim(a, b) for a, b in zip(x, y)])
    assert np.abs(per.numpy() - ref).max() < TOL
    assert abs(metrics.ssim(x, y) - ref.mean()) < TOL


@pytest.mark.parametrize("i", range(6))
def test_ssim_reflect_matches_torchmetrics(i):
    x, y = _pairs()[i]
    ref = tm_ssim(y.double(), x.double(), data_range=1.0).item()
    assert abs(metrics.ssim(x, y, border="reflect") - ref) < TOL


def test_ssim_identity_and_2d_input():
    x = torch.rand(28, 28)
    assert abs(metrics.ssim(x, x) - 1.0) < 1e-12
    assert abs(metrics.ssim(x, 1 - x) - _skimage_ssim(x[None], 1 - x[None])) < TOL


# ---------------------------------------------------------------------------------------------
# Inception Score on hand-made tables
# ---------------------------------------------------------------------------------------------
def test_inception_score_known_tables():
    K = 10
    assert abs(metrics.inception_score(torch.full((50, K), 1 / K)) - 1.0) < 1e-12      # uninformative
    assert abs(metrics.inception_score(torch.eye(K).repeat(5, 1)) - K) < 1e-9           # confident, balanced
    collapsed = torch.zeros(50, K); collapsed[:, 3] = 1
    assert abs(metrics.inception_score(collapsed) - 1.0) < 1e-12                        # confident, one class
    # two pictures: [1, 0] and [.5, .5]; p(y) = [.75, .25]
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    kl1 = math.log(1 / 0.75)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert abs(metrics.inception_score(p) - math.exp((kl1 + kl2) / 2)) < 1e-12
    # half the classes, evenly: K/2
    assert abs(metrics.inception_score(torch.eye(K)[:4].repeat(3, 1)) - 4) < 1e-9


def test_inception_score_entropy_identity_and_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(200, 10, generator=g)
    p = torch.softmax(logits.double(), 1)
    h_y = -(p.mean(0) * p.mean(0).log()).sum()
    h_y_x = -(p * p.log()).sum(1).mean()
    assert abs(metrics.inception_score(p) - math.exp(h_y - h_y_x)) < 1e-9
    for splits in (1, 4):
        metric = InceptionScore(feature=nn.Identity(), splits=splits)
        metric.update(logits)
        torch.manual_seed(123)
        tm_mean, _ = metric.compute()
        torch.manual_seed(123)
        perm = torch.randperm(len(logits))                                      # torchmetrics shuffles
        ours = metrics.inception_score_from_logits(logits[perm], splits=splits)
        assert abs(ours - tm_mean.item()) < TOL * max(1, ours)
    mean, std = metrics.inception_score(p, splits=4, return_std=True)
    per = [metrics.inception_score(c) for c in torch.chunk(p, 4)]
    assert abs(mean - np.mean(per)) < 1e-12 and abs(std - np.std(per)) < 1e-12


def test_wrong_inception_score_rewards_collapse():
    collapsed = torch.zeros(50, 10); collapsed[:, 1] = 1
    assert metrics.wrong_inception_score(collapsed) == 1.0 and metrics.inception_score(collapsed) == 1.0
    with pytest.raises(ValueError):
        metrics.inception_score(torch.randn(5, 3))                                     # logits, not probs


# ---------------------------------------------------------------------------------------------
# Frechet distance and KID
# ---------------------------------------------------------------------------------------------
def _scipy_fid(a, b):
    """The pytorch-fid reference formula (scipy.linalg.sqrtm)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _feature_sets(d=16, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)
    b = 0.8 * torch.randn(n + 50, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5
    return a, b


def test_frechet_distance_against_scipy_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _feature_sets()
    ours = metrics.frechet_distance(a, b)
    assert abs(ours - _scipy_fid(a, b)) < TOL * max(1, ours)

    class Identity(nn.Identity):
        num_features = a.shape[1]

    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(a.double(), real=True)
    fid.update(b.double(), real=False)
    assert abs(ours - fid.compute().item()) < TOL * max(1, ours)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert abs(metrics.frechet_distance_gaussians([1.0], [[4.0]], [3.0], [[9.0]]) - (4 + 1)) < 1e-12
    # diagonal covariances: sum over coordinates
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 1.0])
    want = 1.0 + ((v1.sqrt() - v2.sqrt()) ** 2).sum().item()
    assert abs(metrics.frechet_distance_gaussians(torch.zeros(3), torch.diag(v1), torch.tensor([1.0, 0, 0]),
                                            torch.diag(v2)) - want) < 1e-12
    # same set: 0; a shifted copy: the squared shift
    a, _ = _feature_sets()
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    shift = torch.linspace(-1, 1, a.shape[1])
    assert abs(metrics.frechet_distance(a, a + shift) - shift.pow(2).sum().item()) < 1e-6


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _feature_sets(n=120)
    b = b[:150]
    for subsets, size in ((1, 120), (5, 50)):
        kid = KernelInceptionDistance(feature=nn.Identity(), subsets=subsets, subset_size=size)
        kid.update(a.double(), real=True)
        kid.update(b.double(), real=False)
        torch.manual_seed(7)                                                    # torchmetrics' subsets
        tm_mean, _ = kid.compute()
        ours = metrics.kernel_inception_distance(a, b, subsets=subsets, subset_size=size, seed=7)
        assert abs(ours - tm_mean.item()) < TOL * max(1, abs(ours))
    # unbiased: near 0 for two samples of one distribution
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    assert abs(metrics.kernel_inception_distance(x, y, subsets=20, subset_size=100)) < 0.02


def test_kid_averages_the_estimator_it_is_given_over_the_same_subsets():
    """Chapter 07 passes the learner's estimator: same subsets, same mean as the library's."""
    a, b = _feature_sets(n=80)
    calls = []

    def mine(x, y):
        calls.append(len(x))
        return metrics.mmd2_unbiased(x, y)

    want = metrics.kernel_inception_distance(a, b, subsets=4, subset_size=30, seed=2)
    assert metrics.kernel_inception_distance(a, b, subsets=4, subset_size=30, seed=2, mmd=mine) == \
        pytest.approx(want, rel=1e-12)
    assert calls == [30] * 4
    with pytest.raises(ValueError, match="not both"):
        metrics.kernel_inception_distance(a, b, degree=2, mmd=mine)


def test_kid_on_whole_sets_is_one_estimate_not_reshuffled_copies():
    """Subsets as large as both sets are the same two sets reshuffled, and the unbiased estimate does
    not depend on the order: one estimate, standard deviation 0, the estimator called once."""
    a, b = _feature_sets(n=60)
    a, b = a[:40], b[:40]
    calls = []

    def mine(x, y):
        calls.append(len(x))
        return metrics.mmd2_unbiased(x, y)

    mean, std = metrics.kernel_inception_distance(a, b, subsets=50, subset_size=100, mmd=mine,
                                                  return_std=True)
    assert calls == [40] and std == 0.0
    assert mean == pytest.approx(metrics.mmd2_unbiased(a.double(), b.double()), rel=1e-12)
    # a larger second set still gets honest random subsets
    calls.clear()
    metrics.kernel_inception_distance(a, torch.cat([b, b[:5] + 1]), subsets=3, subset_size=40,
                                      mmd=mine)
    assert calls == [40] * 3
    with pytest.raises(ValueError, match="subsets"):
        metrics.kernel_inception_distance(a, b, subsets=0)


@pytest.mark.parametrize("net_cls,kind", [(MnistClassifier, "mnist"), (ShapesJudge, "shapes")])
def test_fid_kid_torchmetrics_feature_module_path(net_cls, kind):
    torch.manual_seed(0)
    net = net_cls().eval()                                                      # any weights will do
    if kind == "mnist":
        real, fake = mnist.load_mnist("test")[0][:200], mnist.load_mnist("train")[0][:180]
    else:
        real, fake = shapes.sample(200, seed=1)[0], shapes.sample(180, seed=2, split="heldout")[0]
    ours = metrics.domain_fid(real, fake, net)
    assert abs(ours - metrics.fid_torchmetrics(real, fake, net)) < TOL * max(1, ours)
    torch.manual_seed(5)
    tm_kid, _ = metrics.kid_torchmetrics(real, fake, net, subsets=3, subset_size=100)
    ours_kid = metrics.kernel_inception_distance(metrics.extract_features(real, net), metrics.extract_features(fake, net),
                                           subsets=3, subset_size=100, seed=5)
    assert abs(ours_kid - tm_kid) < TOL * max(1, abs(ours_kid))


def test_inception_fid_is_not_attempted_offline(monkeypatch):
    monkeypatch.delenv(metrics.ONLINE_ENV, raising=False)
    with pytest.raises(metrics.MetricUnavailable, match="online"):
        metrics.inception_fid(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28))


# ---------------------------------------------------------------------------------------------
# precision / recall and nearest neighbours
# ---------------------------------------------------------------------------------------------
def _brute_force_pr(real, fake, k):
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(x):
        return np.array([sorted(np.linalg.norm(x - p, axis=1))[k] for p in x])

    def inside(points, ref, r):
        return np.mean([any(np.linalg.norm(p - q) <= rq for q, rq in zip(ref, r)) for p in points])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_constructed_cases():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 5, generator=g)
    assert metrics.precision_recall(real, real.clone()) == (1.0, 1.0)                 # a copy of the real set
    collapsed = real[7].repeat(200, 1)                                          # one real point, 200 times
    p, r = metrics.precision_recall(real, collapsed)
    assert p == 1.0 and abs(r - 1 / 200) < 1e-12
    assert metrics.precision_recall(real, real + 100) == (0.0, 0.0)                   # disjoint
    # 1-D by hand: real 0..9 (k=1 radii 1), fake {0.5, 20} (k=1 radii 19.5)
    p, r = metrics.precision_recall(torch.arange(10.0)[:, None], torch.tensor([[0.5], [20.0]]), k=1)
    assert (p, r) == (0.5, 1.0)


def test_precision_recall_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(60, 3, generator=g)
    fake = 0.6 * torch.randn(50, 3, generator=g) + 0.7
    for k in (1, 3, 5):
        assert np.allclose(metrics.precision_recall(real, fake, k=k), _brute_force_pr(real, fake, k), atol=1e-12)


def test_nearest_neighbours_finds_copies():
    x = torch.rand(30, 1, 8, 8)
    idx = torch.randperm(30)[:10]
    d, j = metrics.nearest_neighbours(x[idx], x)
    assert d.abs().max() == 0 and torch.equal(j, idx)


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif("shapes-judge" not in pretrained.read_manifest()["models"], reason="judge not shipped")
def test_caption_accuracy_with_the_shapes_judge():
    images, caps = shapes.sample(64, seed=11, split="all")
    acc = metrics.caption_accuracy(images, caps)
    assert acc["all"] >= 0.98
    wrong = [caps[(i + 1) % len(caps)] for i in range(len(caps))]
    assert metrics.caption_accuracy(images, wrong)["all"] < 0.2


class _ToyClip:
    def __init__(self, img, txt):
        self.img, self.txt = img, txt

    def encode_image(self, images):
        return self.img

    def encode_text(self, captions):
        return self.txt


def test_clip_score_hand_made():
    e = torch.eye(3)
    assert abs(metrics.clip_score(torch.zeros(3, 3, 4, 4), ["a"] * 3, _ToyClip(e, 2 * e)) - 100) < 1e-9
    # cos = 1, 0, -1 -> 100, 0, 0 (clamped)
    img = torch.tensor([[1.0, 0], [1, 0], [1, 0]])
    txt = torch.tensor([[1.0, 0], [0, 1], [-1, 0]])
    assert abs(metrics.clip_score(torch.zeros(3, 3, 4, 4), ["a"] * 3, _ToyClip(img, txt)) - 100 / 3) < 1e-9
    if "shapes-clip" not in pretrained.read_manifest()["models"]:
        with pytest.raises(metrics.MetricUnavailable, match="shapes-clip"):
            metrics.clip_score(torch.zeros(1, 3, 32, 32), ["a small red circle in the center"])


def test_caption_round_trip_with_toy_captioners():
    specs = shapes.sample_specs(6, seed=2, split="all")
    caps = [shapes.caption(s) for s in specs]

    class Perfect:
        def caption(self, images):
            return caps

    class Babble:
        def caption(self, images):
            return ["blue blue blue"] * len(caps)

    imgs = torch.zeros(6, 3, 32, 32)
    assert metrics.caption_round_trip(imgs, caps, Perfect())["all"] == 1.0
    bad = metrics.caption_round_trip(imgs, caps, Babble())
    assert bad["all"] == 0.0 and bad["parsed"] == 0.0


# ---------------------------------------------------------------------------------------------
# efficiency
# ---------------------------------------------------------------------------------------------
def test_efficiency_measures():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05 if len(calls) == 1 else 0.01)                           # slow first call

    t = metrics.latency(slow, repeats=3, warmup=1)
    assert 0.009 < t < 0.04 and len(calls) == 4                                 # warm-up excluded
    lin = nn.Linear(10, 10)
    assert metrics.parameter_count(lin) == 110
    size = metrics.size_on_disk(lin)
    assert 440 <= size < 440 + 1024                                             # 110 float32 + header
    rep = metrics.efficiency(lin, lin, torch.zeros(4, 10), repeats=3, per=4)
    assert rep["parameters"] == 110 and rep["latency_s"] > 0 and rep["size_mb"] == size / 1e6


# ---------------------------------------------------------------------------------------------
# the scoreboard's plumbing (cheap: a fake generator that returns real test digits)
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif("mnist-classifier" not in pretrained.read_manifest()["models"], reason="judge not shipped")
def test_scoreboard_scores_a_digit_model_and_skips_unknown_names():
    from course_lib import scoreboard

    x, y = mnist.load_mnist("test")

    class Copycat(nn.Module):                                                 # conditional, real digits
        n_classes = 10

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def generate(self, n, labels=None, generator=None):
            idx = torch.cat([torch.nonzero(y == int(c))[0] for c in labels])
            return x[idx]

    ref = scoreboard.digits_reference("cpu")
    row = scoreboard.score_digit_model("copycat", Copycat(), ref, n=40, repeats=1, latency_batch=8)
    assert row["label_accuracy"] >= 0.9 and row["precision"] == 1.0 and row["parameters"] == 3
    assert row["fid"] >= 0 and row["ms_per_picture"] > 0
    assert "kid" in row and "paired_kid_x1000" not in row          # digits: the plain estimator
    assert row["_features"].shape == (40, ref.feats.shape[1])
    board = scoreboard.build(names=["no-such-model"], verbose=False)
    assert board.rows == [] and any("no-such-model" in n for n in board.notes)
    assert board.frame().empty


@pytest.mark.skipif("shapes-judge" not in pretrained.read_manifest()["models"], reason="judge not shipped")
def test_scoreboard_real_shapes_row_uses_the_generators_captions():
    """The real row is the FID floor only if it shows the caption mix the generators are asked for: a
    perfect renderer scored as a model must land near it, while an independent caption draw lands far
    above (an independent draw of captions once gave the real row an FID of 1980 against a
    generator's 824)."""
    from course_lib import scoreboard

    n = 96
    ref = scoreboard.shapes_reference(n, device="cpu")
    real = scoreboard.reference_row(ref, n)
    x = scoreboard.real_shapes_for(ref.captions[:n])
    assert metrics.caption_accuracy(x, ref.captions[:n], ref.net)["all"] == 1.0

    class Renderer:                                   # a "text-to-image model" that renders the truth
        def __call__(self, prompts, generator=None, output_type="pt"):
            seed = int(torch.randint(0, 2**31, (1,), generator=generator))
            return SimpleNamespace(images=shapes.render([shapes.parse_caption(p) for p in prompts], seed))

    row = scoreboard.score_text_model("renderer", Renderer(), ref, n, repeats=1, latency_batch=4)
    other, _ = shapes.sample(n, seed=5, split="train")
    independent = metrics.frechet_distance(ref.feats, metrics.extract_features(other, ref.net))
    assert row["caption_accuracy"] == 1.0
    assert abs(row["fid"] - real["fid"]) < 0.25 * independent, (row["fid"], real["fid"], independent)
    for r in (row, real):                                  # Shapes: the paired estimator, x1000
        assert "paired_kid_x1000" in r and "kid" not in r


def test_paired_kernel_distance_is_unbiased_on_paired_sets_where_plain_kid_is_not():
    """Two fresh draws of the same captions: the paired estimator is near 0, the plain unbiased KID
    (which counts the matched pairs in its cross term) is far below 0; a worse set scores higher."""
    torch.manual_seed(0)
    centres = torch.randn(40, 8) * 3                                      # 40 "captions"
    real = centres + 0.3 * torch.randn(40, 8)
    fresh = centres + 0.3 * torch.randn(40, 8)
    worse = centres + 1.5 * torch.randn(40, 8)
    paired = metrics.paired_kernel_distance(real, fresh)
    mu, sd = real.mean(0), real.std(0)
    plain = metrics.kernel_inception_distance((real - mu) / sd, (fresh - mu) / sd, subsets=1, subset_size=40)
    scale = metrics.paired_kernel_distance(real, worse)
    assert abs(paired) < 0.1 * scale, (paired, scale)
    assert plain < -0.5 * scale, (plain, scale)
    with pytest.raises(ValueError):
        metrics.paired_kernel_distance(real, fresh[:10])


def test_scoreboard_samples_a_flow_digit_model_with_euler_and_a_ddpm_one_with_ddim():
    from course_lib import flow, scoreboard
    from course_lib.models import ddpm

    tiny = {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "attention_head_dim": 8}
    for prediction_type, name in ((flow.PREDICTION_TYPE, "Euler-2"), ("epsilon", "DDIM-2")):
        model = ddpm.DigitDenoiser(dict(tiny, prediction_type=prediction_type))
        rows = scoreboard.samplers_for("digits", model, ddpm_steps=2)
        assert [r[0] for r in rows] == [f"digits, {name}", f"digits, {name}, class w=2"]
        x, labels = rows[1][1](4, torch.Generator().manual_seed(0))
        assert x.shape == (4, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
        assert labels.tolist() == [0, 1, 2, 3]


def test_scoreboard_scores_generators_only():
    from course_lib import scoreboard

    names = scoreboard.candidates()
    assert {"ddpm-mnist", "flow-mnist", "shapes-t2i", "shapes-maskgit"} <= set(names)
    assert not {"shapes-judge", "mnist-classifier", "shapes-clip", "shapes-vq", "shapes-planner",
                "shapes-autoencoder", "shapes-captioner"} & set(names)
    board = scoreboard.build(["shapes-judge"], verbose=False)
    assert not board.rows and any("not a generator" in n for n in board.notes)
