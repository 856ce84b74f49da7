"""Chapter 06: one test set for every role of a language model (course_lib.roles)."""
import numpy as np
import pytest
import torch

from course_lib import roles


def test_bootstrap_mean_covers_the_mean_and_narrows_with_more_requests():
    rng = np.random.default_rng(0)
    small = rng.random((30, 3)) < 0.4
    big = rng.random((600, 3)) < 0.4
    m, lo, hi = roles.bootstrap_mean(small)
    assert m == pytest.approx(small.mean()) and lo < m < hi
    m2, lo2, hi2 = roles.bootstrap_mean(big)
    assert hi2 - lo2 < (hi - lo) / 2 and lo2 < 0.4 < hi2
    assert roles.bootstrap_mean(small) == roles.bootstrap_mean(small)   # seeded
    assert roles.bootstrap_mean(np.ones((5, 2))) == (1.0, 1.0, 1.0)
    assert roles.bootstrap_mean(torch.tensor([True, False, True, True]))[0] == 0.75
    with pytest.raises(ValueError, match="0/1"):
        roles.bootstrap_mean(np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="n requests"):
        roles.bootstrap_mean(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="n_boot"):
        roles.bootstrap_mean(small, n_boot=10)


def test_paired_difference_separates_what_independent_intervals_do_not():
    rng = np.random.default_rng(1)
    a = rng.random((80, 3)) < 0.5
    b = a.copy()
    b[:8] = False                                   # b misses what a got on 8 requests, same noise
    d = roles.paired_difference(a, b)
    assert d[0] == pytest.approx(a.mean() - b.mean()) and d[1] > 0
    assert roles.difference_verdict(d) == "higher"
    ia, ib = roles.bootstrap_mean(a), roles.bootstrap_mean(b)
    assert ia[1] < ib[2]                            # the two intervals alone overlap
    assert roles.difference_verdict((-d[0], -d[2], -d[1])) == "lower"
    assert roles.difference_verdict(roles.paired_difference(a, a)).startswith("within noise")
    with pytest.raises(ValueError, match="same requests"):
        roles.paired_difference(a, b[:10])
    with pytest.raises(ValueError, match="low <= value"):
        roles.difference_verdict((0.5, 0.6, 0.7))


def test_risk_coverage_accepts_the_most_confident_first():
    conf = [0.9, 0.1, 0.8, 0.5]
    right = [[1, 1], [0, 0], [1, 0], [0, 0]]
    rc = roles.risk_coverage(conf, right)
    np.testing.assert_allclose(rc["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rc["accuracy"], [1.0, 0.75, 0.5, 0.375])
    np.testing.assert_allclose(rc["risk"], 1 - rc["accuracy"])
    np.testing.assert_allclose(rc["threshold"], [0.9, 0.8, 0.5, 0.1])
    assert roles.accuracy_at_coverage(conf, right, 0.5)[0] == 0.75
    assert roles.accuracy_at_coverage(conf, right, 1.0)[0] == 0.375
    assert roles.accuracy_at_coverage(conf, right, 0.01)[0] == 1.0    # at least one accepted
    with pytest.raises(ValueError, match="coverage must be in"):
        roles.accuracy_at_coverage(conf, right, 0)
    with pytest.raises(TypeError, match="coverage must be a number"):
        roles.accuracy_at_coverage(conf, right, "half")
    with pytest.raises(ValueError, match="finite numbers"):
        roles.risk_coverage(conf[:3], right)


def test_accuracy_at_coverage_interval_and_the_planners_curve_agree():
    from course_lib.models import planner

    rng = np.random.default_rng(2)
    conf = rng.random(200)
    right = rng.random(200) < conf                  # a confidence that means something
    ours = roles.risk_coverage(conf, right)
    theirs = planner.risk_coverage(conf, right)
    np.testing.assert_allclose(ours["accuracy"], theirs["precision"])
    top, lo, hi = roles.accuracy_at_coverage(conf, right, 0.25)
    full = roles.accuracy_at_coverage(conf, right, 1.0)
    assert lo <= top <= hi and top > full[0] and full[1] < full[0] < full[2]


def test_rewriter_answers_with_the_nearest_caption():
    captions = ["a small red circle in the top left", "a large blue square in the bottom right"]
    table = {captions[0]: [1.0, 0.0], captions[1]: [0.0, 1.0],
             "a tiny crimson ball up left": [0.9, 0.2], "huge navy box": [0.1, 0.7]}

    def embed(texts):
        return torch.tensor([table[t] for t in texts])

    rw = roles.NearestCaptionRewriter(embed, captions)
    out = rw.rewrite(["huge navy box", "a tiny crimson ball up left"])
    assert out["captions"] == [captions[1], captions[0]]
    assert out["similarity"][0] == pytest.approx(0.7 / np.hypot(0.1, 0.7), abs=1e-6)
    np.testing.assert_allclose(roles.familiarity(embed, captions, captions), [1.0, 1.0], atol=1e-6)
    idx, sim = roles.nearest_captions(torch.eye(3)[[0, 2]], torch.eye(3)[[2, 0]])
    assert idx.tolist() == [1, 0] and sim.tolist() == [1.0, 1.0]
    with pytest.raises(TypeError, match="list of strings"):
        rw.rewrite("huge navy box")
    with pytest.raises(ValueError, match="must not be empty"):
        rw.rewrite([])
    with pytest.raises(TypeError, match="embed must be"):
        roles.NearestCaptionRewriter("mpnet", captions)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        roles.nearest_captions(torch.zeros(2, 3), torch.zeros(2, 4))


def test_word_table_embedder_reads_unknown_words_as_unk():
    from course_lib.text_encoders import ShapesTextEncoder

    enc = ShapesTextEncoder(max_length=12)
    embed = roles.word_table_embedder(enc)
    v = embed(["a small red circle", "a wee vermilion orb"])
    assert v.shape == (2, 64)
    assert torch.allclose(embed(["a wee vermilion orb"]), embed(["a tiny scarlet ball"]), atol=1e-6)


def test_roles_figure_one_chart_with_legend_off_the_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    curves, at = {}, {}
    for name in ("conditioner: mpnet", "planner", "rewriter"):
        conf, right = rng.random(40), rng.random((40, 2)) < 0.5
        curves[name] = roles.risk_coverage(conf, right)
        at[name] = {c: roles.accuracy_at_coverage(conf, right, c, n_boot=200) for c in (0.5, 1.0)}
    fig = roles.roles_figure(curves, at, marks={"planner": 0.3}, chance=0.01, title="t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not ax.get_window_extent(renderer).overlaps(legend)
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 9
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["50%", "100%"]
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 9
    with pytest.raises(ValueError, match="same roles"):
        roles.roles_figure(curves, {"planner": at["planner"]})
    with pytest.raises(ValueError, match="marks names"):
        roles.roles_figure(curves, at, marks={"oracle": 0.5})
    plt.close("all")
