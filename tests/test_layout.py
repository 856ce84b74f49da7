"""Chapter 06: layout composition (plans drawn object by object and judged)."""
import pytest
import torch

from course_lib import layout
from course_lib.data import shapes
from course_lib.models import planner

GOOD = {"objects": [{"size": "small", "color": "red", "shape": "circle", "row": "top", "col": "left"}]}


def _exact_renderer(captions):
    return shapes.render([shapes.parse_caption(c) for c in captions])        # no jitter


def test_compose_two_objects_equals_rendering_the_scene():
    scenes = [shapes.SceneSpec(shapes.ShapeSpec("small", "red", "circle", "top", "left"),
                               shapes.ShapeSpec("large", "blue", "square", "bottom", "right")),
              shapes.SceneSpec(shapes.ShapeSpec("small", "green", "triangle", "middle", "left"),
                               shapes.ShapeSpec("small", "yellow", "circle", "middle", "center"))]
    plans = [planner.plan_to_json(s.objects) for s in scenes]
    got = layout.draw_plans(plans, _exact_renderer)
    want = shapes.render_scenes(scenes, None)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    one = layout.draw_plans([GOOD], _exact_renderer)
    torch.testing.assert_close(one[0], shapes.render(planner.parse_plan(GOOD)[0]))


def test_compose_keeps_each_picture_inside_its_cell():
    a = shapes.ShapeSpec("small", "red", "circle", "top", "left")
    b = shapes.ShapeSpec("small", "blue", "circle", "bottom", "right")
    pics = torch.ones(2, 3, 32, 32)                       # two all-white "generated" pictures
    out = layout.compose(pics, [a, b])
    inside = layout.cell_mask(a) + layout.cell_mask(b)
    assert torch.all(out[:, inside[0] == 0] == 0) and torch.all(out[:, inside[0] > 0] == 1)
    with pytest.raises(ValueError):
        layout.compose(pics[:1], [a, b])
    y0, y1, x0, x1 = layout.cell_box(shapes.ShapeSpec("large", "red", "circle", "middle", "center"))
    assert (y0, y1, x0, x1) == (8, 24, 8, 24)


def test_drawn_plans_are_judged_right():
    plans = [planner.plan_to_json(s) for s in (
        [shapes.ShapeSpec("large", "orange", "triangle", "middle", "left"),
         shapes.ShapeSpec("small", "purple", "square", "middle", "right")],
        [shapes.ShapeSpec("small", "green", "circle", "bottom", "center")])]
    images = layout.draw_plans(plans, layout.renderer(seed=0))
    res = layout.judge_scenes(images, plans)
    assert res["scene"] == 1.0 and res["object"] == 1.0
