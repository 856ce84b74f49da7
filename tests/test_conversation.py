"""Chapter 11, section 5: a picture edited in a conversation. The words of each turn become a plan
edit (checked here on many wordings), the plan edit becomes an inpainting of one cell box (checked
on a tiny untrained pipeline: what must not change, does not)."""
import pytest
import torch
from conftest import tiny_t2i_pipeline

from course_lib import conversation as cv
from course_lib.data import shapes
from course_lib.models.plan_checks import PlanError

S = shapes.parse_caption
ONE = (S("a large red circle in the top left"),)
TWO = (S("a large red circle in the top left"), S("a small blue square on the right"))


class CaptionPlanner:
    """Stands in for shapes-planner: reads canonical captions only."""

    def plan(self, text):
        return {"objects": [S(text).as_dict()]}

    def plan_many(self, texts, errors="raise"):
        return [self.plan(t) for t in texts]


@pytest.mark.parametrize("text, scene, focus, want", [
    ("now make it blue", ONE, 0, "a large blue circle in the top left"),
    ("make it crimson", (S("a large blue circle in the top left"),), 0,
     "a large red circle in the top left"),
    ("turn the ball into a square", ONE, 0, "a large red square in the top left"),
    ("make the circle tiny", ONE, 0, "a small red circle in the top left"),
    ("make it smaller", ONE, 0, "a small red circle in the top left"),
    ("move it to the bottom right", ONE, 0, "a large red circle in the bottom right"),
    ("now move it at the top, at the left side", (S("a large red circle in the center"),), 0,
     "a large red circle in the top left"),
    ("move it down", ONE, 0, "a large red circle in the bottom left"),
    ("make the red one green", TWO, 1,
     "a large green circle in the top left and a small blue square on the right"),
    ("make the small one large", TWO, 0,
     "a large red circle in the top left and a large blue square on the right"),
    ("make it yellow", TWO, 1,
     "a large red circle in the top left and a small yellow square on the right"),
    ("make the circle a square", TWO, 1,
     "a large red square in the top left and a small blue square on the right"),
    ("remove the square", TWO, 1, "a large red circle in the top left"),
    ("get rid of the one in the top left", TWO, 1, "a small blue square on the right"),
    ("add a small green triangle at the bottom too", ONE, 0,
     "a large red circle in the top left and a small green triangle at the bottom"),
])
def test_read_turn_edits_the_plan_as_the_words_say(text, scene, focus, want):
    edit = cv.read_turn(scene, text, CaptionPlanner(), focus)
    assert cv.describe(edit.after) == want


@pytest.mark.parametrize("text, scene, words", [
    ("what colour is it?", ONE, "question"),
    ("draw a cat", ONE, "not an edit"),
    ("make it red", ONE, "nothing changes"),
    ("make the square blue", TWO, "already"),
    ("remove it", ONE, "empty"),
    ("add a small green triangle at the bottom", TWO, "already holds 2"),
    ("move the circle on the right", TWO, "one object per grid cell"),
    ("make it red and blue", ONE, "two new values"),
    ("   ", ONE, "must say"),
])
def test_read_turn_refuses_what_it_cannot_do_and_says_why(text, scene, words):
    with pytest.raises(ValueError, match=words):
        cv.read_turn(scene, text, CaptionPlanner(), 0)


def test_read_turn_asks_which_object_when_the_words_fit_both():
    scene = (S("a large red circle in the top left"), S("a large red square on the right"))
    with pytest.raises(PlanError, match="which object"):
        cv.read_turn(scene, "make the red one blue", CaptionPlanner(), None)
    with pytest.raises(TypeError):
        cv.read_turn(scene, 3, CaptionPlanner(), 0)


def test_scripted_turns_are_read_as_scripted():
    """The reader gets every scripted turn's plan right when the start is planned right (the
    scripts use the seen wording; this is the language half of the chapter's measurement)."""
    planner = CaptionPlanner()
    for s in cv.scripted_conversations(60, seed=3):
        scene, focus, undo = (S(s["request"]),), 0, []
        for text, want, kind in zip(s["turns"], s["scenes"][1:], s["kinds"]):
            e = cv.read_turn(scene, text, planner, focus)
            assert e.kind.split("+")[0] == kind, (text, e.kind)
            if e.kind == "undo":
                scene, focus = undo.pop()
            else:
                undo.append((scene, focus))
                scene, focus = e.after, e.focus
            assert cv.describe(scene) == cv.describe(want), text


def test_edit_mask_spares_the_other_object_and_covers_both_boxes():
    e = cv.read_turn(TWO, "move the circle to the bottom left", None, 0)
    m = cv.edit_mask(e)[0]
    assert m[7, 7] == 1 and m[25, 7] == 1  # the old and the new box
    assert m[16, 25] == 0 and m[0, 31] == 0  # the square's pixels, a far corner


@pytest.fixture(scope="module")
def pipe():
    return tiny_t2i_pipeline(3)


def test_a_conversation_keeps_what_it_does_not_change_and_undo_restores(pipe):
    talk = cv.Conversation(pipe, CaptionPlanner(), seed=1)
    first = talk.start("a large red circle in the top left").clone()
    talk.say("add a small blue square on the right")
    two = talk.picture.clone()
    box = layout_box(S("a large red circle in the top left"))
    assert torch.equal(two[:, box], first[:, box])  # the circle's pixels kept
    talk.say("make the square green")
    assert torch.equal(talk.picture[:, box], first[:, box])
    talk.say("undo")
    assert torch.equal(talk.picture, two)
    assert [h["kind"] for h in talk.history] == ["start", "add", "color", "undo"]
    fresh = cv.Conversation(pipe, CaptionPlanner())
    with pytest.raises(PlanError, match="start the conversation first"):
        fresh.say("make it blue")
    fresh.start("a small green square at the bottom")
    with pytest.raises(PlanError, match="nothing to undo"):
        fresh.say("undo")


def layout_box(spec):
    from course_lib import layout

    return layout.cell_mask(spec, margin=0.0).bool()[0]


def test_play_scores_every_turn(pipe):
    scripts = cv.scripted_conversations(3, turns=3, seed=0)
    res = cv.play(pipe, CaptionPlanner(), scripts, seed=0)
    assert res["pictures"].shape == (3, 4, 3, 32, 32)
    assert len(res["turns"]) == 9
    assert all(r["plan_right"] and r["kept"] for r in res["turns"])
    assert set(res["shares"]) == {"plan_right", "picture_right", "kept", "right"}
