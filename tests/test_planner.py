"""Chapter 06: the scene-spec parser and the planner."""
import json

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
    heads = planner.PlannerHeads(**planner.PLANNER_CONFIG)
    out = heads(torch.randn(4, 9, text_encoders.MINILM_DIM), torch.ones(4, 9, dtype=torch.long))
    assert out["kind"].shape == (4, 3)
    assert out["color"].shape == (4, wordings.MAX_OBJECTS, 6) and out["row"].shape == (4, wordings.MAX_OBJECTS, 3)
    kind, attrs = planner.plan_targets([None, [shapes.all_specs()[0]]])
    assert kind.tolist() == [0, 1] and attrs[0].eq(-100).all() and attrs[1, 1].eq(-100).all()
    assert torch.isfinite(planner.planner_loss({k: v[:2] for k, v in out.items()}, kind, attrs))


def _shipped(name):
    return name in pretrained.read_manifest()["models"]


@pytest.mark.skipif(not _shipped("shapes-planner"), reason="shapes-planner not shipped yet")
def test_shipped_planner_plans_and_refuses():
    shipped = pretrained.load("shapes-planner", "cpu")
    plan = shipped.plan("a small red ball in the top left corner")
    assert plan == {"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]}
    two = shipped.plan("a small red ball to the left of a big blue box")
    assert [o["color"] for o in two["objects"]] == ["red", "blue"]
    assert [(o["row"], o["col"]) for o in two["objects"]] == [("middle", "left"), ("middle", "right")]
    with pytest.raises(planner.PlanError):
        shipped.plan("tell me a joke")
    planner.parse_plan(plan)
