"""Chapter 06: the scene-spec parser and the planner."""
import json
import math

import pytest
import torch

from course_lib import pretrained, text_encoders
from course_lib.data import shapes, wordings
from course_lib.models import planner


GOOD = {"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]}


def test_parse_plan_accepts_dicts_json_and_fenced_json():
    spec = shapes.ShapeSpec("small", "red", "circle", "top", "left")
    assert planner.parse_plan(GOOD) == [spec]
    assert planner.parse_plan(json.dumps(GOOD)) == [spec]
    assert planner.parse_plan("Sure! ```json\n" + json.dumps(GOOD) + "\n``` Enjoy.") == [spec]
    loud = {"objects": [{"size": " Small", "color": "RED", "shape": "circle", "row": "top", "col": "left"}]}
    assert planner.parse_plan(loud) == [spec]
    two = {"objects": GOOD["objects"] + [{"size": "large", "color": "blue", "shape": "square",
                                          "row": "bottom", "col": "right"}]}
    assert len(planner.parse_plan(two)) == 2
    assert planner.plan_to_json(planner.parse_plan(two)) == two


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
    with pytest.raises(planner.PlanError, match=words.replace("(", r"\(")):
        planner.parse_plan(bad)


def test_plan_error_is_a_value_error():
    assert issubclass(planner.PlanError, ValueError)


def test_planner_heads_output_shapes():
    for encoder in ("minilm", "mpnet"):
        heads = planner.PlannerHeads({"encoder": encoder})
        d = text_encoders.DIMS[encoder]
        out = heads(torch.randn(4, 9, d), torch.ones(4, 9, dtype=torch.long))
        assert out["kind"].shape == (4, 3)
        assert out["color"].shape == (4, wordings.MAX_OBJECTS, 6) and out["row"].shape == (4, wordings.MAX_OBJECTS, 3)
    kind, attrs = planner.plan_targets([None, [shapes.all_specs()[0]]])
    assert kind.tolist() == [0, 1] and attrs[0].eq(-100).all() and attrs[1, 1].eq(-100).all()
    assert torch.isfinite(planner.planner_loss({k: v[:2] for k, v in out.items()}, kind, attrs))


def test_planner_config_refuses_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="allowed: encoder"):
        planner.PlannerConfig.from_dict({"encodr": "mpnet"})
    cfg = planner.PlannerConfig(threshold=0.37)
    assert planner.PlannerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="encoder must be one of"):
        planner.PlannerHeads({"encoder": "bert"})


# --------------------------------------------------------------------------------------------
# Calibration: the threshold comes from held-out seen wording
# --------------------------------------------------------------------------------------------
def test_calibrated_threshold_is_the_lowest_that_reaches_the_target():
    conf = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    right = [1, 1, 1, 1, 0, 1, 0, 0]
    assert planner.calibrate_threshold(conf, right, 1.0, min_accepted=1) == 0.8
    assert planner.calibrate_threshold(conf, right, 5 / 6, min_accepted=1) == 0.6
    assert planner.calibrate_threshold(conf, right, 0.5, min_accepted=1) == 0.4
    assert planner.calibrate_threshold(conf, right, 1.0, min_accepted=5) == 1.0   # never enough: refuse all
    # ties: a threshold accepts every answer at that confidence, so it cannot split them
    assert planner.calibrate_threshold([0.9, 0.9, 0.9], [1, 0, 1], 1.0, min_accepted=1) == 1.0
    curve = planner.risk_coverage(conf, right)
    assert curve["coverage"][-1] == 1 and curve["precision"][0] == 1 and curve["precision"][-1] == 5 / 8


class _FixedHeads(torch.nn.Module):
    """Heads that always say one object, the small red circle at the top left, with probability p."""

    def __init__(self, p, kind=1):
        super().__init__()
        self.config = planner.PlannerConfig(encoder="minilm", threshold=0.5)
        self.p, self.kind, self.w = p, kind, torch.nn.Parameter(torch.zeros(1))

    def forward(self, states, mask):
        n = len(states)

        def logits(k, pick):
            x = torch.full((n, k), -30.0)
            x[:, pick] = 0.0
            return x

        out = {"kind": logits(3, self.kind)}
        for a in shapes.ATTRIBUTES:
            vals = shapes.ATTRIBUTE_VALUES[a]
            x = torch.full((n, planner.MAX_OBJECTS, len(vals)), math.log((1 - self.p) / (len(vals) - 1)))
            x[:, :, 0] = math.log(self.p)
            out[a] = x
        return out


class _NoEncoder:
    def encode(self, texts, batch_size=256):
        n = len(texts)
        return text_encoders.TextEncoding(torch.zeros(n, 3, 384), torch.ones(n, 3, dtype=torch.long),
                                          torch.zeros(n, 384))


def test_planner_refuses_below_its_threshold_and_names_what_it_could_not_read():
    sure = planner.Planner(_FixedHeads(0.99), _NoEncoder())
    plan = sure.plan("anything")
    assert plan["objects"] == [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]
    assert plan["confidence"] == pytest.approx(0.99 ** 5, abs=1e-3)
    unsure = planner.Planner(_FixedHeads(0.8), _NoEncoder())                   # 0.8 ** 5 = 0.33 < 0.5
    with pytest.raises(planner.PlanError, match="confidence 0.33 is below 0.50"):
        unsure.plan("anything")
    with pytest.raises(planner.PlanError, match="not look like a Shapes scene"):
        planner.Planner(_FixedHeads(0.99, kind=0), _NoEncoder()).plan("tell me a joke")
    with pytest.raises(TypeError):
        sure.plan(["a list"])
    got = unsure.plan_many(["a", "b"], errors="return")
    assert all(isinstance(g, planner.PlanError) for g in got)
    scores = planner.plan_scores(unsure, ["a", "b"], [None, [shapes.all_specs()[0]]])
    assert scores["coverage"] == 0 and scores["exact_match"] == 0.5           # refusing a non-scene is right


def _shipped(name):
    return name in pretrained.read_manifest()["models"]


@pytest.mark.skipif(not _shipped("shapes-planner"), reason="shapes-planner not shipped yet")
def test_shipped_planner_plans_and_refuses():
    shipped = pretrained.load("shapes-planner", "cpu")
    plan = shipped.plan("a small red ball in the top left corner")
    assert plan["objects"] == [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]
    assert 0 < plan["confidence"] <= 1
    two = shipped.plan("a small red ball to the left of a big blue box")
    assert [o["color"] for o in two["objects"]] == ["red", "blue"]
    assert [(o["row"], o["col"]) for o in two["objects"]] == [("middle", "left"), ("middle", "right")]
    for text in ("tell me a joke", "a big brown horse at the top", "a small red circle, a blue box and a green "
                 "pyramid", "is there a red ball on the left?"):
        with pytest.raises(planner.PlanError):
            shipped.plan(text)
    planner.parse_plan({"objects": plan["objects"]})
    q = pretrained.info("shapes-planner")["quality"]
    assert 0 < q["threshold"] < 1 and q["non_scene_refused"] >= 0.95
