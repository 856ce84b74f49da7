"""Chapter 06: the colour probe (Lab conversion, colour names, the mean-colour baseline)."""
import numpy as np
import pytest
import torch

from course_lib import colours
from course_lib.data import shapes


def test_rgb_to_lab_matches_scikit_image():
    skcolor = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(0).random((200, 3))
    np.testing.assert_allclose(colours.rgb_to_lab(rgb), skcolor.rgb2lab(rgb), atol=1e-2)
    np.testing.assert_allclose(colours.rgb_to_lab([1.0, 1.0, 1.0]), [100, 0, 0], atol=1e-2)
    assert colours.delta_e([0.9, 0.1, 0.1], [0.9, 0.1, 0.1]) == 0
    assert colours.delta_e([0, 0, 0], [1, 1, 1]) == pytest.approx(100, abs=0.01)


def test_colour_names_come_from_xkcd_and_css4():
    names = colours.colour_names()
    words = [n for n, _ in names]
    assert len(words) == len(set(words)) > 900
    assert "cerulean" in words and "dark slate blue" in words
    assert all(0 <= c <= 1 for _, rgb in names for c in rgb)
    with pytest.raises(ValueError, match="xkcd"):
        colours.colour_names(("pantone",))
    idx, d1, d2 = colours.nearest_shapes_colour(np.array([shapes.COLORS["green"], shapes.COLORS["orange"]]))
    assert [colours.shapes_palette()[0][i] for i in idx] == ["green", "orange"] and np.allclose(d1, 0)
    assert (d2 > d1).all()


def test_word_split_holds_out_words_no_training_name_contains():
    words = [n for n, _ in colours.colour_names()]
    tr, te = colours.name_split(words, 0.3, seed=0, how="words")
    held = {words[i] for i in te}
    assert all(len(w.split()) == 1 for w in held)
    assert not any(set(words[i].split()) & held for i in tr)
    tr, te = colours.name_split(words, 0.3, seed=0)
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == len(words)


def test_probe_beats_the_mean_colour_baseline_only_with_informative_features():
    names = colours.colour_names()
    rgb = torch.tensor(np.array([c for _, c in names]), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    informative = torch.cat([rgb, 0.05 * torch.randn(len(rgb), 13, generator=g)], 1)     # the answer, noisy
    good = colours.colour_probe(None, names, features=informative, steps=300)
    noise = colours.colour_probe(None, names, features=torch.randn(len(rgb), 16, generator=g), steps=300)
    assert good["baseline_delta_e"] == noise["baseline_delta_e"]                 # same split, same baseline
    mean = rgb[[i for i, (n, _) in enumerate(names) if n not in good["test_names"]]].mean(0).numpy()
    base = colours.delta_e(np.broadcast_to(mean, good["true"].shape), good["true"])
    assert good["baseline_delta_e"] == pytest.approx(float(base.mean()), rel=1e-4)
    assert good["delta_e"] < 0.5 * good["baseline_delta_e"]
    assert noise["delta_e"] > 0.9 * noise["baseline_delta_e"]


def test_paired_difference_compares_two_probes_name_by_name():
    names = colours.colour_names()
    rgb = torch.tensor(np.array([c for _, c in names]), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    informative = torch.cat([rgb, 0.05 * torch.randn(len(rgb), 13, generator=g)], 1)
    good = colours.colour_probe(None, names, features=informative, steps=200)
    noise = colours.colour_probe(None, names, features=torch.randn(len(rgb), 16, generator=g),
                                 steps=200)
    d, lo, hi = colours.paired_delta_e_difference(noise, good)
    assert d == pytest.approx(noise["delta_e"] - good["delta_e"], rel=1e-6) and 0 < lo < d < hi
    same = colours.paired_delta_e_difference(good, good)
    assert same == (0.0, 0.0, 0.0)
    words = colours.colour_probe(None, names, features=informative, steps=5, how="words")
    with pytest.raises(ValueError, match="same names"):
        colours.paired_delta_e_difference(good, words)


def test_shapes_colour_of_names_a_hue_and_refuses_other_colours():
    for c, rgb in shapes.COLORS.items():
        assert colours.shapes_colour_of(c, rgb) == c
    table = dict(colours.colour_names())
    want = {"navy": "blue", "scarlet": "red", "tangerine": "orange", "violet": "purple", "lemon": "yellow",
            "emerald": "green", "brown": None, "pink": None, "grey": None, "orange red": None,
            "brownish red": None, "beige": None, "olive": None, "teal": None, "mauve": None}
    for name, colour in want.items():
        assert colours.shapes_colour_of(name, table[name]) == colour, name
    groups = colours.shapes_colour_names()
    assert set(groups) == set(shapes.ATTRIBUTE_VALUES["color"]) and all(len(v) >= 10 for v in groups.values())
    assert "mint green" in groups["green"] and "mint green" not in colours.shapes_colour_names(("mint",))["green"]
