"""Chapter 06 contracts: the frozen text-encoder wrapper, the contrastive loss, the spec parser, the
canonical layouts, the request generator and layout composition."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import pretrained
from course_lib.data import shapes
from course_lib.models import llm_conditioning as L


# --------------------------------------------------------------------------------------------
# Frozen text encoder
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return L.FrozenTextEncoder("minilm", max_length=None)


def test_minilm_loads_offline_and_gives_token_states(minilm, monkeypatch):
    texts = ["a small red circle in the top left", "a crimson disc", "please draw a huge cobalt tile dead centre"]
    enc = minilm.encode(texts)
    n_tok = [len(minilm.tokenizer(t)["input_ids"]) for t in texts]
    assert enc.states.shape == (3, max(n_tok), L.MINILM_DIM)
    assert enc.mask.shape == (3, max(n_tok)) and enc.mask.sum(1).tolist() == n_tok
    assert enc.pooled.shape == (3, L.MINILM_DIM)
    # padding states are zero, pooled is the masked mean of the states
    assert torch.all(enc.states[1, n_tok[1]:] == 0)
    torch.testing.assert_close(enc.pooled[1], enc.states[1, :n_tok[1]].mean(0))
    # frozen, and not part of any state_dict
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert len(minilm.state_dict()) == 0


def test_fixed_length_batches_concatenate(minilm):
    enc = L.FrozenTextEncoder("minilm", max_length=16)
    a, b = enc.encode(["a red ball"]), enc.encode(["a big blue box on the right side"])
    assert a.states.shape == b.states.shape == (1, 16, L.MINILM_DIM)
    # same text, same states whatever the padding
    short = minilm.encode(["a red ball"])
    k = int(short.mask.sum())
    torch.testing.assert_close(a.states[0, :k], short.states[0, :k], atol=1e-5, rtol=1e-4)


def test_online_towers_refuse_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind in ("clip", "t5"):
        with pytest.raises(RuntimeError, match="offline"):
            L.FrozenTextEncoder(kind)
    with pytest.raises(ValueError, match="kind"):
        L.FrozenTextEncoder("bert-large")


# --------------------------------------------------------------------------------------------
# Contrastive loss
# --------------------------------------------------------------------------------------------
def _reference_info_nce(img, txt, scale):
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    n = len(img)
    total = 0.0
    for i in range(n):
        sims_i = torch.stack([scale * img[i] @ txt[j] for j in range(n)])      # picture i vs every text
        sims_t = torch.stack([scale * txt[i] @ img[j] for j in range(n)])      # text i vs every picture
        total += -(sims_i[i] - torch.logsumexp(sims_i, 0)) - (sims_t[i] - torch.logsumexp(sims_t, 0))
    return total / (2 * n)


def test_info_nce_matches_reference():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for scale in (1.0, 14.3):
        torch.testing.assert_close(L.info_nce_loss(img, txt, scale), _reference_info_nce(img, txt, scale),
                                   atol=1e-5, rtol=1e-5)
    # the library's cross-entropy both ways on the similarity matrix
    logits = 3.0 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(7)) + F.cross_entropy(logits.T, torch.arange(7)))
    torch.testing.assert_close(L.info_nce_loss(img, txt, 3.0), ref)


def test_info_nce_prefers_aligned_pairs_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=g, requires_grad=True)
    aligned = L.info_nce_loss(x, x.detach(), 20.0)
    shuffled = L.info_nce_loss(x, x.detach().roll(1, 0), 20.0)
    assert aligned < 0.01 < shuffled
    shuffled.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert L.info_nce_loss(torch.ones(4, 3), torch.ones(4, 3), 10.0).item() == pytest.approx(np.log(4), abs=1e-5)


def test_tiny_clip_shapes_and_retrieval_bookkeeping():
    torch.manual_seed(0)
    model = L.TinyCLIP()
    images, caps = shapes.sample(6, seed=3, split="all")
    caps = list(dict.fromkeys(caps))
    images = images[:len(caps)]
    assert model.encode_images(images).shape == (len(caps), 64)
    assert torch.allclose(model.encode_texts(caps).norm(dim=1), torch.ones(len(caps)))
    loss = model(images, caps)
    assert loss.ndim == 0 and torch.isfinite(loss)
    r = L.retrieval_accuracy(model, images, caps)
    assert 0 <= r["text_to_image_top1"] <= 1 and r["n"] == len(caps)
    s = L.clip_score(images, caps, model=model, reduction="none")
    assert s.shape == (len(caps),) and (s >= 0).all() and (s <= 100).all()


# --------------------------------------------------------------------------------------------
# The spec parser
# --------------------------------------------------------------------------------------------
GOOD = {"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]}


def test_parse_plan_accepts_dicts_json_and_fenced_json():
    spec = shapes.ShapeSpec("small", "red", "circle", "top", "left")
    assert L.parse_plan(GOOD) == [spec]
    assert L.parse_plan(json.dumps(GOOD)) == [spec]
    assert L.parse_plan("Sure! ```json\n" + json.dumps(GOOD) + "\n``` Enjoy.") == [spec]
    loud = {"objects": [{"size": " Small", "color": "RED", "shape": "circle", "row": "top", "col": "left"}]}
    assert L.parse_plan(loud) == [spec]
    two = {"objects": GOOD["objects"] + [{"size": "large", "color": "blue", "shape": "square",
                                          "row": "bottom", "col": "right"}]}
    assert len(L.parse_plan(two)) == 2
    assert L.plan_to_json(L.parse_plan(two)) == two


@pytest.mark.parametrize("bad,words", [
    ("no json here", "no JSON"),
    ("{'objects': []}", "not valid JSON"),
    ("__import__('os').system('echo hacked')", "no JSON"),
    ({"things": []}, '"objects"'),
    ({"objects": []}, "1 to 2"),
    ({"objects": GOOD["objects"] * 3}, "1 to 2"),
    ({"objects": ["a red circle"]}, "must be a JSON object"),
    ({"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top"}]}, "missing"),
    ({"objects": [dict(GOOD["objects"][0], texture="shiny")]}, "unexpected"),
    ({"objects": [dict(GOOD["objects"][0], color="pink")]}, "allowed color: red"),
    ({"objects": [dict(GOOD["objects"][0], shape="hexagon")]}, "allowed shape"),
    ({"objects": [dict(GOOD["objects"][0], row=2)]}, "allowed row"),
    ({"objects": GOOD["objects"] * 2}, "cannot be drawn together"),
    ({"objects": [dict(GOOD["objects"][0], size="large"),
                  dict(GOOD["objects"][0], size="large", col="center")]}, "overlap"),
])
def test_parse_plan_refuses_clearly(bad, words):
    with pytest.raises(L.PlanError, match=words.replace("(", r"\(")):
        L.parse_plan(bad)


def test_plan_error_is_a_value_error():
    assert issubclass(L.PlanError, ValueError)


# --------------------------------------------------------------------------------------------
# Layouts and requests
# --------------------------------------------------------------------------------------------
def test_canonical_layouts_are_valid_and_mirror_the_relation():
    assert L.canonical_layout("to the left of") == (("middle", "left"), ("middle", "right"))
    assert L.canonical_layout("above") == (("top", "center"), ("bottom", "center"))
    assert L.canonical_layout("below and to the right of") == (("bottom", "right"), ("top", "left"))
    for rel in shapes.RELATIONS.values():
        (ra, ca), (rb, cb) = L.canonical_layout(rel)
        a = shapes.ShapeSpec("large", "red", "circle", ra, ca)
        b = shapes.ShapeSpec("large", "blue", "square", rb, cb)
        assert shapes.scene_is_valid(a, b) and shapes.relation(a, b) == rel


def test_requests_match_their_scenes_and_keep_vocabularies_apart():
    def attribute_words(vocab):
        t = shapes.PARAPHRASE_WORDS[vocab]
        return {w for a in ("size", "color", "shape") for opts in t[a].values() for o in opts
                for w in shapes.split_words(o)}

    unseen_only = attribute_words("unseen") - attribute_words("seen") - {"-"}
    for kind in ("one", "one-noplace", "relation", "absolute", "none"):
        texts, scenes = L.make_requests(60, seed=1, vocab="seen", kind=kind)
        for t, s in zip(texts, scenes):
            assert not (set(shapes.split_words(t)) & unseen_only), t
            if kind == "none":
                assert s is None
            else:
                assert 1 <= len(s) <= 2
                L.parse_plan(L.plan_to_json(s))          # every target is a drawable scene
    texts, scenes = L.make_requests(50, seed=2, vocab="seen", kind="relation")
    for t, (a, b) in zip(texts, scenes):
        assert shapes.relation(a, b) in shapes.RELATIONS.values()
    for vocab in ("seen", "unseen"):
        for rel, options in L.RELATION_WORDS[vocab].items():
            other = "unseen" if vocab == "seen" else "seen"
            assert not set(options) & set(L.RELATION_WORDS[other][rel])


def _exact_renderer(captions):
    return shapes.render([shapes.parse_caption(c) for c in captions])        # no jitter


def test_compose_two_objects_equals_rendering_the_scene():
    scenes = [shapes.SceneSpec(shapes.ShapeSpec("small", "red", "circle", "top", "left"),
                               shapes.ShapeSpec("large", "blue", "square", "bottom", "right")),
              shapes.SceneSpec(shapes.ShapeSpec("small", "green", "triangle", "middle", "left"),
                               shapes.ShapeSpec("small", "yellow", "circle", "middle", "center"))]
    plans = [L.plan_to_json(s.objects) for s in scenes]
    got = L.draw_plans(plans, _exact_renderer)
    want = shapes.render_scenes(scenes, None)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    one = L.draw_plans([GOOD], _exact_renderer)
    torch.testing.assert_close(one[0], shapes.render(L.parse_plan(GOOD)[0]))


def test_compose_keeps_each_picture_inside_its_cell():
    a = shapes.ShapeSpec("small", "red", "circle", "top", "left")
    b = shapes.ShapeSpec("small", "blue", "circle", "bottom", "right")
    pics = torch.ones(2, 3, 32, 32)                       # two all-white "generated" pictures
    out = L.compose(pics, [a, b])
    inside = L.cell_mask(a) + L.cell_mask(b)
    assert torch.all(out[:, inside[0] == 0] == 0) and torch.all(out[:, inside[0] > 0] == 1)
    with pytest.raises(ValueError):
        L.compose(pics[:1], [a, b])
    y0, y1, x0, x1 = L.cell_box(shapes.ShapeSpec("large", "red", "circle", "middle", "center"))
    assert (y0, y1, x0, x1) == (8, 24, 8, 24)


def test_drawn_plans_are_judged_right():
    plans = [L.plan_to_json(s) for s in (
        [shapes.ShapeSpec("large", "orange", "triangle", "middle", "left"),
         shapes.ShapeSpec("small", "purple", "square", "middle", "right")],
        [shapes.ShapeSpec("small", "green", "circle", "bottom", "center")])]
    images = L.draw_plans(plans, L.renderer(seed=0))
    res = L.judge_scenes(images, plans)
    assert res["scene"] == 1.0 and res["object"] == 1.0


def test_planner_heads_output_shapes():
    heads = L.PlannerHeads(**L.PLANNER_CONFIG)
    out = heads(torch.randn(4, 9, L.MINILM_DIM), torch.ones(4, 9, dtype=torch.long))
    assert out["kind"].shape == (4, 3)
    assert out["color"].shape == (4, L.MAX_OBJECTS, 6) and out["row"].shape == (4, L.MAX_OBJECTS, 3)
    kind, attrs = L.plan_targets([None, [shapes.all_specs()[0]]])
    assert kind.tolist() == [0, 1] and attrs[0].eq(-100).all() and attrs[1, 1].eq(-100).all()
    assert torch.isfinite(L.planner_loss({k: v[:2] for k, v in out.items()}, kind, attrs))


# --------------------------------------------------------------------------------------------
# Shipped models (when shipped)
# --------------------------------------------------------------------------------------------
def _shipped(name):
    return name in pretrained.read_manifest()["models"]


@pytest.mark.skipif(not _shipped("shapes-planner"), reason="shapes-planner not shipped yet")
def test_shipped_planner_plans_and_refuses():
    planner = pretrained.load("shapes-planner", "cpu")
    plan = planner.plan("a small red ball in the top left corner")
    assert plan == {"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]}
    two = planner.plan("a small red ball to the left of a big blue box")
    assert [o["color"] for o in two["objects"]] == ["red", "blue"]
    assert [(o["row"], o["col"]) for o in two["objects"]] == [("middle", "left"), ("middle", "right")]
    with pytest.raises(L.PlanError):
        planner.plan("tell me a joke")
    L.parse_plan(plan)


@pytest.mark.skipif(not _shipped("shapes-clip"), reason="shapes-clip not shipped yet")
def test_shipped_clip_retrieves():
    model = pretrained.load("shapes-clip", "cpu")
    specs = shapes.all_specs("all")[::9]
    r = L.retrieval_accuracy(model, shapes.render(specs, 5), [shapes.caption(s) for s in specs])
    assert r["text_to_image_top1"] >= 0.9
