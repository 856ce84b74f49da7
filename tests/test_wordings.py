"""Chapter 06: free wordings of requests (seen and unseen vocabularies, canonical layouts)."""
import numpy as np
import pytest

from course_lib.data import shapes, wordings
from course_lib.models import planner


def test_seen_and_unseen_vocabularies_share_no_content_word():
    seen, unseen = wordings.content_words("seen"), wordings.content_words("unseen")
    assert seen and unseen
    assert not seen & unseen, sorted(seen & unseen)
    # and no request drawn from one vocabulary uses a content word of the other
    for vocab, other in (("seen", unseen), ("unseen", seen)):
        texts, _ = wordings.make_requests(400, seed=3, vocab=vocab)
        for t in texts:
            assert not set(shapes.split_words(t)) & other, t


def test_seen_vocabulary_is_broad():
    t = wordings.WORDS["seen"]
    for attr in ("size", "color", "shape", "where"):
        for value, options in t[attr].items():
            assert len(set(options)) >= 5, (attr, value)
    assert len(set(t["templates"])) >= 8
    assert "a {size} {color} {shape} {where}" in t["templates"]          # the canonical form is one of them
    for spec in shapes.all_specs("all"):                                  # every canonical word is seen
        assert shapes.WHERE[(spec.row, spec.col)] in t["where"][(spec.row, spec.col)]
        assert spec.color in t["color"][spec.color] and spec.shape in t["shape"][spec.shape]
    for vocab in wordings.VOCABULARIES:
        assert set(wordings.WORDS[vocab]["where"]) == set(shapes.WHERE)


def test_paraphrase_says_all_five_attributes():
    rng = np.random.default_rng(0)
    for vocab in wordings.VOCABULARIES:
        t = wordings.WORDS[vocab]
        for spec in shapes.all_specs("all")[::7]:
            text = wordings.paraphrase(spec, rng, vocab)
            for attr in ("size", "color", "shape"):
                assert any(w in text for w in t[attr][getattr(spec, attr)]), (text, attr)
            assert any(p in text for p in t["where"][(spec.row, spec.col)]), text
    assert wordings.paraphrase("a small red circle at the top", 3) == wordings.paraphrase(
        "a small red circle at the top", 3)
    with pytest.raises(ValueError, match="seen"):
        wordings.paraphrase("a small red circle at the top", 3, vocab="rare")


def test_canonical_layouts_are_valid_and_mirror_the_relation():
    assert wordings.canonical_layout("to the left of") == (("middle", "left"), ("middle", "right"))
    assert wordings.canonical_layout("above") == (("top", "center"), ("bottom", "center"))
    assert wordings.canonical_layout("below and to the right of") == (("bottom", "right"), ("top", "left"))
    for rel in shapes.RELATIONS.values():
        (ra, ca), (rb, cb) = wordings.canonical_layout(rel)
        a = shapes.ShapeSpec("large", "red", "circle", ra, ca)
        b = shapes.ShapeSpec("large", "blue", "square", rb, cb)
        assert shapes.scene_is_valid(a, b) and shapes.relation(a, b) == rel


def test_requests_match_their_scenes():
    for vocab in wordings.VOCABULARIES:
        for kind in wordings.REQUEST_KINDS:
            texts, scenes = wordings.make_requests(60, seed=1, vocab=vocab, kind=kind)
            for t, s in zip(texts, scenes):
                if kind == "none":
                    assert s is None
                else:
                    assert 1 <= len(s) <= 2
                    planner.parse_plan(planner.plan_to_json(s))          # every target is a drawable scene
    texts, scenes = wordings.make_requests(50, seed=2, vocab="seen", kind="relation")
    for t, (a, b) in zip(texts, scenes):
        assert shapes.relation(a, b) in shapes.RELATIONS.values()
    with pytest.raises(ValueError, match="kind"):
        wordings.make_requests(3, kind="poem")


def test_training_captions_mix_canonical_and_seen_wording():
    caps = shapes.all_captions("train")
    out = wordings.training_captions(caps, np.random.default_rng(0), p_canonical=0.25)
    same = np.mean([a == b for a, b in zip(caps, out)])
    assert 0.15 < same < 0.4
    unseen = wordings.content_words("unseen")
    assert not any(set(shapes.split_words(t)) & unseen for t in out)
    many = wordings.training_captions(caps * 20, np.random.default_rng(1), per_caption=4)
    assert len(set(many)) <= 5 * len(caps)                 # a bank of 4 wordings per caption, plus the caption


def test_colour_words_are_clearly_one_shapes_colour_and_unseen_ones_stay_unseen():
    from course_lib import colours

    table = dict(colours.colour_names())
    for vocab, words in (("seen", wordings.SEEN_CORE_COLOURS), ("unseen", wordings.UNSEEN_COLOURS)):
        for colour, options in words.items():
            assert len(options) >= 4, (vocab, colour)
            for w in options:
                name = wordings._UNSEEN_SPELLINGS.get(w, w)
                if name in table:                                           # checked by its RGB
                    assert colours.shapes_colour_of(name, table[name]) == colour, (vocab, w)
    seen = wordings.WORDS["seen"]["color"]
    assert sum(len(v) for v in seen.values()) > 250                       # the XKCD and CSS4 names
    assert {"fire engine red", "kelly green", "navy", "lemon", "violet", "tangerine"} <= set().union(*seen.values())
    unseen_words = [w for ws in wordings.UNSEEN_COLOURS.values() for w in ws] + ["vermillion", "perrywinkle"]
    for names in seen.values():                                           # "mint green", "butterscotch" are out
        assert not any(u in w for n in names for w in n.split() for u in unseen_words), names


def test_split_vocabulary_holds_words_out_of_training():
    kept, held = wordings.split_vocabulary("seen", 0.25, seed=0)
    for key in ("size", "color", "shape", "where"):
        for value in kept[key]:
            assert kept[key][value] and held[key][value], (key, value)
            assert not set(kept[key][value]) & set(held[key][value])
            assert key == "where" or value in kept[key][value]               # the canonical word is kept
    # a held-out colour name's distinctive words (in fewer than three names) are in no kept name
    for colour, names in held["color"].items():
        everything = [w for n in wordings.WORDS["seen"]["color"][colour] for w in n.split()]
        kept_words = {w for n in kept["color"][colour] for w in n.split()}
        rare = {w for n in names for w in n.split() if everything.count(w) < 3}
        assert rare and not rare & kept_words, (colour, rare & kept_words)
    texts, scenes = wordings.make_requests(50, seed=0, vocab=held)
    assert len(texts) == 50 and any(s is None for s in scenes) and any(s for s in scenes)
    again = wordings.split_vocabulary("seen", 0.25, seed=0)[1]
    assert wordings.make_requests(20, seed=1, vocab=again) == wordings.make_requests(20, seed=1, vocab=held)
    with pytest.raises(ValueError, match="fraction"):
        wordings.split_vocabulary("seen", 1.5)
    with pytest.raises(ValueError, match="split_vocabulary"):
        wordings.make_requests(3, vocab={"size": {}})


def test_seen_non_scene_words_are_broad_and_name_no_shapes_colour():
    from course_lib import colours

    t = wordings.WORDS["seen"]
    table = dict(colours.colour_names())
    assert len(t["not_colors"]) > 100 and len(t["not_nouns"]) >= 40 and len(t["questions"]) >= 8
    assert {"salmon pink", "dark taupe", "battleship grey", "pink", "brown"} <= set(t["not_colors"])
    for name in t["not_colors"]:
        if name in table:                                         # the XKCD / CSS4 names: never a Shapes colour
            assert colours.shapes_colour_of(name, table[name]) is None, name
        assert not set(name.split()) & set(shapes.ATTRIBUTE_VALUES["color"]), name
    assert "brownish red" not in t["not_colors"] and "purplish pink" not in t["not_colors"]
    names = colours.other_colour_names(exclude=("pink",))
    assert names and not any("pink" in n for n in names)
