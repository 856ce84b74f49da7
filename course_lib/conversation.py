"""Editing a picture in a conversation (chapter 11, section 5).

A :class:`Conversation` holds a Shapes *scene*, a plan of one or two objects (chapter 06's
planner reads the first request and every "add ..."), and the picture drawn from it. Each turn
("now make it blue", "add a green square on the left", "make the circle small", "undo") is read
in two steps, as in the planner chapters:

1. **the words become an edit of the plan** (:func:`read_turn`): which object is meant ("it", "the
   circle", "the red one", "the one at the top") and which attribute changes to what, read with
   the course's word tables (:mod:`course_lib.data.wordings`: "crimson" is red, "ball" is a
   circle, "bigger" is large); a turn that is not an edit, or that the scene cannot hold, raises
   :class:`~course_lib.models.plan_checks.PlanError` saying why;
2. **the plan edit becomes a picture edit** (:func:`draw_edits`): only the changed object's cell
   box is repainted, by inpainting (:class:`course_lib.editing.InpaintPipeline`) with the new
   object's caption; a removed object's box is set to the black background; every pixel outside
   the box, and the other object's own pixels inside it, are kept exactly. "undo" restores the
   previous picture.

:func:`scripted_conversations` writes conversations with the scene each turn should give, and
:func:`play` runs many of them side by side (one inpainting batch per turn) and scores every turn.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import torch

from . import layout
from .data import shapes, wordings
from .models.plan_checks import PlanError

#: Words that start each kind of turn ("_" joins a phrase).
UNDO_WORDS = frozenset(("undo", "go_back", "take_that_back", "revert", "undo_that"))
REMOVE_WORDS = frozenset(("remove", "delete", "erase", "take_away", "get_rid_of"))
ADD_WORDS = frozenset(("add", "also_draw", "draw_another", "put_another", "include"))
CHANGE_WORDS = frozenset(
    ("make", "turn", "change", "paint", "colour", "color", "recolour", "recolor", "move", "put",
     "shift", "place", "set", "now", "swap", "shrink", "grow", "enlarge")
)
PRONOUNS = frozenset(("it", "that", "this", "them"))
QUESTION_WORDS = frozenset(("what", "which", "how", "why", "is", "are", "does", "do", "can"))
#: Words that say a size or a side without a table phrase ("move it left").
RELATIVE = {
    "bigger": ("size", "large"), "larger": ("size", "large"), "grow": ("size", "large"),
    "enlarge": ("size", "large"), "smaller": ("size", "small"), "shrink": ("size", "small"),
    "left": ("col", "left"), "right": ("col", "right"), "up": ("row", "top"),
    "higher": ("row", "top"), "down": ("row", "bottom"), "lower": ("row", "bottom"),
    "top": ("row", "top"), "bottom": ("row", "bottom"),
}
_PHRASE_VERBS = sorted(
    {w for s in (UNDO_WORDS, REMOVE_WORDS, ADD_WORDS, {"as_well"}) for w in s if "_" in w},
    key=len, reverse=True,
)
_TOKEN = re.compile(r"[a-z0-9_]+(?:-[a-z0-9]+)*")
TURN_KINDS = ("start", "color", "shape", "size", "place", "add", "remove", "undo")


def words(text: str) -> list[str]:
    """The words of a request, lower-cased, with phrasal verbs ("turn into") joined into one
    token, as the conversation editor and chapter 11's instruction check read them."""
    text = text.lower().replace("\u2019", "'")
    for p in _PHRASE_VERBS:
        text = re.sub(r"\b" + p.replace("_", r"\s+") + r"\b", p, text)
    return _TOKEN.findall(text)


@functools.lru_cache(maxsize=1)
def _phrase_table() -> tuple[tuple[tuple[str, ...], str, object], ...]:
    """(words, attribute, value) for every size, colour, shape and place phrase of both wordings,
    longest first (so "in the top left corner" wins over "top left")."""
    rows = set()
    for v in wordings.VOCABULARIES:
        t = wordings.WORDS[v]
        for attr in ("size", "color", "shape"):
            for value, phrases in t[attr].items():
                rows |= {(tuple(words(p)), attr, value) for p in phrases}
        for cell, phrases in t["where"].items():
            rows |= {(tuple(words(p)), "place", tuple(cell)) for p in phrases}
    for value in shapes.ATTRIBUTE_VALUES["color"]:
        rows.add(((value,), "color", value))
    for cell, phrase in shapes.WHERE.items():
        rows.add((tuple(words(phrase)), "place", cell))
    return tuple(sorted((r for r in rows if r[0]), key=lambda r: -len(r[0])))


def mentions(text: str) -> list[tuple[int, str, object]]:
    """The attribute values a turn names, in order: ``(position, attribute, value)``, attribute one
    of size, color, shape, place (value (row, col)), row, col. Longest phrases first; a bare side
    word ("left", "up") or a comparative ("bigger") counts where no phrase covers it."""
    toks = words(text)
    used = [False] * len(toks)
    found = []
    for phrase, attr, value in _phrase_table():
        k = len(phrase)
        for i in range(len(toks) - k + 1):
            if tuple(toks[i : i + k]) == phrase and not any(used[i : i + k]):
                found.append((i, attr, value))
                used[i : i + k] = [True] * k
    for i, tok in enumerate(toks):
        if not used[i] and tok in RELATIVE:
            found.append((i, *RELATIVE[tok]))
    return sorted(found, key=lambda m: m[0])


def _matches(spec: shapes.ShapeSpec, attr: str, value) -> bool:
    if attr == "place":
        return (spec.row, spec.col) == tuple(value)
    return getattr(spec, attr) == value


def _apply(spec: shapes.ShapeSpec, attr: str, value) -> shapes.ShapeSpec:
    if attr == "place":
        return dataclasses.replace(spec, row=value[0], col=value[1])
    return dataclasses.replace(spec, **{attr: value})


def describe(scene) -> str:
    """The scene in words: its objects' canonical captions."""
    return " and ".join(shapes.caption(s) for s in scene) or "an empty picture"


@dataclasses.dataclass(frozen=True)
class Edit:
    """What one turn does to the plan: ``kind`` (one of :data:`TURN_KINDS`), the scene ``before``
    and ``after`` (tuples of ShapeSpec), the ``changed`` object (index into ``after``; None for
    remove and undo), the ``erased`` object (index into ``before`` whose box is cleared or
    repainted; None for add and undo) and ``focus``, the object "it" names on the next turn."""

    kind: str
    before: tuple
    after: tuple
    changed: int | None
    erased: int | None
    focus: int | None


def _check_cells(scene) -> None:
    """Raise PlanError unless the scene can be drawn: one or two objects, in different cells and
    not so close that their boxes overlap (:func:`course_lib.data.shapes.scene_is_valid`)."""
    if len(scene) == 2 and not shapes.scene_is_valid(*scene):
        a, b = (shapes.WHERE[(s.row, s.col)] for s in scene)
        where = f"both {a}" if a == b else f"too close, {a} and {b}"
        raise PlanError(f"the two objects would be {where}: a scene holds one object per grid "
                        "cell, and two large ones not side by side")


def _referent(scene, found, pronoun: bool, focus: int | None) -> tuple[int, int]:
    """(object index, number of leading mentions that describe it)."""
    best, score, tied = None, 0, False
    for j, spec in enumerate(scene):
        k = 0
        while k < len(found) and _matches(spec, found[k][1], found[k][2]):
            k += 1
        if k > score:
            best, score, tied = j, k, False
        elif k == score and k > 0:
            tied = True
    if tied:
        raise PlanError(f"which object do you mean? The picture shows {describe(scene)}")
    if best is not None and not pronoun:
        return best, score
    if pronoun or len(scene) == 1:
        j = focus if focus is not None and focus < len(scene) else len(scene) - 1
        return j, 0
    raise PlanError(
        f"say which object to change (it, or the circle, the red one, ...): the picture shows "
        f"{describe(scene)}"
    )


def read_turn(scene, text: str, planner=None, focus: int | None = None) -> Edit:
    """The plan edit a turn asks for (see the module docstring). ``scene``: the current objects
    (ShapeSpec); ``planner``: what reads an "add ..." description (anything with ``plan(text) ->
    {"objects": [...]}``, chapter 06's ``shapes-planner``); ``focus``: the object "it" names.
    "undo" returns ``kind="undo"`` with ``after=None`` (the caller keeps the history)."""
    if not isinstance(text, str):
        raise TypeError(f"a turn is a string, got {type(text).__name__}")
    scene = tuple(scene)
    toks = words(text)
    if not toks:
        raise ValueError("a turn must say what to change, e.g. 'make it blue' or 'undo'")
    if text.strip().endswith("?") or toks[0] in QUESTION_WORDS:
        raise PlanError(f"{text!r} is a question, not an edit; edits: change a colour, shape, "
                        "size or place, add an object, remove one, or undo")
    if set(toks) & UNDO_WORDS:
        return Edit("undo", scene, None, None, None, None)
    found = mentions(text)
    pronoun = bool(set(toks) & PRONOUNS)
    if set(toks) & ADD_WORDS:
        if len(scene) >= wordings.MAX_OBJECTS:
            raise PlanError(f"the scene already holds {len(scene)} objects, the most it can: "
                            "remove one first")
        if planner is None:
            raise TypeError("reading an 'add' turn needs a planner (chapter 06's shapes-planner)")
        verb = next(i for i, t in enumerate(toks) if t in ADD_WORDS)
        rest = [t for t in toks[verb + 1 :] if t not in ("too", "also", "please", "as_well")]
        description = " ".join(rest).replace("_", " ")
        objs = layout.as_specs({"objects": planner.plan(wordings.with_article(description))
                                ["objects"]})
        if len(objs) != 1:
            raise PlanError(f"add one object at a time; {description!r} reads as {len(objs)}")
        after = scene + (objs[0],)
        _check_cells(after)
        return Edit("add", scene, after, len(after) - 1, None, len(after) - 1)
    if not scene:
        raise PlanError("the picture is empty: start with a request, or add an object")
    if set(toks) & REMOVE_WORDS:
        j, _ = _referent(scene, found, pronoun, focus)
        if len(scene) == 1:
            raise PlanError("the picture would be empty: a scene holds one or two objects")
        after = scene[:j] + scene[j + 1 :]
        return Edit("remove", scene, after, None, j, 0)
    if not (set(toks) & CHANGE_WORDS) and not pronoun:
        raise PlanError(f"{text!r} is not an edit of this picture; edits: change a colour, shape, "
                        "size or place ('make it blue'), add an object, remove one, or undo")
    j, k = _referent(scene, found, pronoun, focus)
    changes = found[k:]
    if not changes:
        raise PlanError(f"say what to change: it is already {shapes.caption(scene[j])[2:]}")
    new, kinds = scene[j], []
    for _, attr, value in changes:
        kind = "place" if attr in ("place", "row", "col") else attr
        if kind in kinds and attr not in ("row", "col"):
            raise PlanError(f"two new values for the {kind}: say one")
        kinds.append(kind)
        new = _apply(new, attr, value)
    if new == scene[j]:
        raise PlanError(f"nothing changes: it is already {shapes.caption(new)[2:]}")
    after = scene[:j] + (new,) + scene[j + 1 :]
    _check_cells(after)
    kind = kinds[0] if len(set(kinds)) == 1 else "+".join(dict.fromkeys(kinds))
    return Edit(kind, scene, after, j, j, j)


def edit_mask(edit: Edit, margin: float = 1.0) -> torch.Tensor | None:
    """FloatTensor [1, 32, 32]: 1 where the edit repaints (the erased object's and the changed
    object's cell boxes), 0 elsewhere and on every kept object's own pixels; None for undo."""
    if edit.kind == "undo":
        return None
    m = torch.zeros(1, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    if edit.erased is not None:
        m = torch.maximum(m, layout.cell_mask(edit.before[edit.erased], margin))
    if edit.changed is not None:
        m = torch.maximum(m, layout.cell_mask(edit.after[edit.changed], margin))
    for i, spec in enumerate(edit.after):
        if i != edit.changed:  # the objects that stay keep their pixels
            m = m * (1 - layout.cell_mask(spec, margin=0.0))
    return m


@torch.no_grad()
def draw_edits(inpaint, pictures: torch.Tensor, edits: list[Edit], previous=None,
               generator: torch.Generator | None = None, **kw) -> torch.Tensor:
    """New pictures [n, 3, 32, 32] for ``edits`` of ``pictures`` [n, 3, 32, 32], all inpainted
    in one call of ``inpaint`` (an :class:`~course_lib.editing.InpaintPipeline`): each changed
    object drawn from its caption in its box; a removed object's box set to black; "undo" takes
    ``previous[i]`` (the picture before the last edit). ``kw`` goes to the pipeline."""
    out = pictures.clone()
    todo = [i for i, e in enumerate(edits) if e.changed is not None]
    for i, e in enumerate(edits):
        if e.kind == "undo":
            if previous is None or previous[i] is None:
                raise PlanError("nothing to undo")
            out[i] = previous[i]
        elif e.changed is None:  # removed: the background is black
            out[i] = pictures[i] * (1 - edit_mask(e))
    if todo:
        masks = torch.stack([edit_mask(edits[i]) for i in todo])  # [k, 1, 32, 32]
        prompts = [shapes.caption(edits[i].after[edits[i].changed]) for i in todo]
        drawn = inpaint(prompts, image=pictures[todo], mask_image=masks, output_type="pt",
                        generator=generator, **kw).images  # [k, 3, 32, 32]
        out[todo] = drawn
    return out


class Conversation:
    """A picture edited turn by turn (chapter 11). ``Conversation(pipe, planner)``, then
    ``start("a large red circle in the top left")`` and ``say("now make it blue")``; each returns
    the new picture [3, 32, 32]; ``scene`` (the plan), ``picture`` and ``history`` (one entry per
    turn: text, edit, picture) follow. ``pipe``: a text-to-image pipeline such as
    ``pretrained.load("shapes-t2i")``; ``planner``: chapter 06's ``shapes-planner``."""

    def __init__(self, pipe, planner, seed: int = 0, **inpaint_kw):
        from .editing import InpaintPipeline

        self.pipe, self.planner, self.seed, self.kw = pipe, planner, int(seed), inpaint_kw
        self.inpaint = InpaintPipeline.from_pipe(pipe)
        self.scene, self.picture, self.focus = (), None, None
        self.history: list[dict] = []
        self._undo: list[tuple] = []

    def start(self, request: str) -> torch.Tensor:
        plan = self.planner.plan(request)
        scene = tuple(layout.as_specs(plan))
        generate = layout.pipeline_generator(self.pipe, seed=self.seed)
        self.scene, self.focus = scene, len(scene) - 1
        self.picture = layout.draw_plans([list(scene)], generate)[0]
        self._undo = []
        self.history = [{"text": request, "kind": "start", "scene": scene,
                         "picture": self.picture}]
        return self.picture

    def say(self, text: str) -> torch.Tensor:
        if self.picture is None:
            raise PlanError("start the conversation first: conversation.start('a red circle ...')")
        edit = read_turn(self.scene, text, self.planner, self.focus)
        gen = torch.Generator().manual_seed(self.seed + len(self.history))
        if edit.kind == "undo":
            if not self._undo:
                raise PlanError("nothing to undo")
            self.scene, self.focus, self.picture = self._undo.pop()
        else:
            new = draw_edits(self.inpaint, self.picture[None], [edit], generator=gen,
                             **self.kw)[0]
            self._undo.append((self.scene, self.focus, self.picture))
            self.scene, self.focus, self.picture = edit.after, edit.focus, new
        self.history.append({"text": text, "kind": edit.kind, "scene": self.scene,
                             "picture": self.picture})
        return self.picture


# --------------------------------------------------------------------------------------------
# Scripted conversations, and many of them played side by side
# --------------------------------------------------------------------------------------------
_TEMPLATES = {
    "color": ("now make {ref} {value}", "make {ref} {value}", "paint {ref} {value}",
              "change {ref} to {value}", "turn {ref} {value}", "color {ref} {value}"),
    "shape": ("make {ref} a {value}", "turn {ref} into a {value}", "change {ref} into a {value}",
              "now make {ref} a {value} instead"),
    "size": ("make {ref} {value}", "now make {ref} {value}", "make {ref} {comparative}"),
    "place": ("move {ref} {value}", "put {ref} {value}", "now move {ref} {value}",
              "shift {ref} {value}"),
    "add": ("add a {value}", "also draw a {value}", "add a {value} too"),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}"),
    "undo": ("undo", "undo that", "go back", "take that back"),
}


def _word(rng, attr: str, value, plain: float) -> str:
    if rng.random() < plain:
        return value if attr != "place" else shapes.WHERE[value]
    table = wordings.WORDS["seen"]["where" if attr == "place" else attr]
    return str(rng.choice(table[value]))


def _reference(rng, scene, j: int, focus: int, plain: float) -> str:
    """Words that pick out object ``j`` of ``scene`` unambiguously ("it", "the circle", ...)."""
    spec = scene[j]
    others = [s for i, s in enumerate(scene) if i != j]
    if j == focus and rng.random() < 0.5:
        return "it"
    for attr in rng.permutation(["shape", "color", "size"]):
        if all(getattr(o, attr) != getattr(spec, attr) for o in others):
            word = _word(rng, attr, getattr(spec, attr), plain)
            return f"the {word}" if attr == "shape" else f"the {word} one"
    return f"the one {shapes.WHERE[(spec.row, spec.col)]}"


def scripted_conversations(n: int = 50, turns: int = 4, seed: int = 0,
                           plain: float = 0.5) -> list[dict]:
    """``n`` conversations: ``{"request", "turns" (texts), "scenes" (the scene each turn should
    give, the start first), "kinds"}``, each a canonical one-object request and then ``turns``
    edits drawn at random among recolour, reshape, resize, move, add (when the scene has one
    object), remove (when it has two) and undo. Values are named plainly with probability
    ``plain``, otherwise by a synonym of the course's seen wording ("crimson", "ball"); objects are
    referred to as "it" (the one last edited) or by an attribute that tells them apart."""
    rng = np.random.default_rng(seed)
    pool = shapes.all_specs("train")
    out = []
    while len(out) < n:
        first = pool[rng.integers(len(pool))]
        scene, focus, undo = (first,), 0, []
        script = {"request": shapes.caption(first), "turns": [], "scenes": [scene], "kinds": []}
        for _ in range(4 * turns):
            if len(script["turns"]) == turns:
                break
            kinds = ["color", "shape", "size", "place"] + (["add"] if len(scene) == 1 else [
                "remove"]) + (["undo"] if undo else [])
            kind = str(rng.choice(kinds))
            tpl = str(rng.choice(_TEMPLATES[kind]))
            if kind == "undo":
                scene, focus = undo.pop()
                text = tpl
            elif kind == "add":
                free = [s for s in pool if (s.row, s.col) != (scene[0].row, scene[0].col)]
                new = free[rng.integers(len(free))]
                undo.append((scene, focus))
                scene, focus = scene + (new,), len(scene)
                text = tpl.format(value=shapes.caption(new)[2:])
            else:
                j = int(rng.integers(len(scene)))
                ref = _reference(rng, scene, j, focus, plain)
                if kind == "remove":
                    undo.append((scene, focus))
                    scene, focus = scene[:j] + scene[j + 1 :], 0
                    text = tpl.format(ref=ref)
                else:
                    attr = kind
                    if kind == "place":
                        taken = {(s.row, s.col) for s in scene}
                        cells = [c for c in shapes.WHERE if c not in taken]
                        value = cells[rng.integers(len(cells))]
                    else:
                        vals = [v for v in shapes.ATTRIBUTE_VALUES[kind] if v != getattr(
                            scene[j], kind)]
                        value = vals[rng.integers(len(vals))]
                    new = _apply(scene[j], attr, value)
                    if (new.color, new.shape) in shapes.HELDOUT_PAIRS:
                        continue  # keep to pairs the model was trained on
                    undo.append((scene, focus))
                    scene, focus = scene[:j] + (new,) + scene[j + 1 :], j
                    comparative = "bigger" if value == "large" else "smaller"
                    text = tpl.format(ref=ref, value=_word(rng, attr, value, plain),
                                      comparative=comparative)
            if len(scene) == 2 and not shapes.scene_is_valid(*scene):
                scene, focus = undo.pop()  # a scene the planner cannot hold: draw another turn
                continue
            script["turns"].append(text)
            script["scenes"].append(scene)
            script["kinds"].append(kind)
        if len(script["turns"]) == turns:
            out.append(script)
    return out


def _same_scene(a, b) -> bool:
    return a is not None and sorted(map(shapes.caption, a)) == sorted(map(shapes.caption, b))


@torch.no_grad()
def play(pipe, planner, scripts: list[dict], seed: int = 0, judge=None, **inpaint_kw) -> dict:
    """Play ``scripts`` (:func:`scripted_conversations`) side by side, one inpainting batch per
    turn, and score every turn: ``plan_right`` (the scene read from the words is the scripted
    one), ``picture_right`` (the shapes-judge reads every object of the scripted scene in its
    box), ``kept`` (every object the turn did not touch has exactly its pixels from before) and
    ``right`` (all three). Returns ``{"turns": [one dict per turn], "pictures": [n, turns + 1, 3,
    32, 32], "shares": {measure: share over all turns}}``. A turn whose words cannot be read keeps
    the picture and scene (and counts as wrong)."""
    from .editing import InpaintPipeline

    inpaint = InpaintPipeline.from_pipe(pipe)
    n = len(scripts)
    plans = planner.plan_many([s["request"] for s in scripts], errors="return")
    scenes = [() if isinstance(p, Exception) else tuple(layout.as_specs(p)) for p in plans]
    generate = layout.pipeline_generator(pipe, seed=seed)
    drawable = [i for i in range(n) if scenes[i]]
    pictures = torch.zeros(n, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    if drawable:
        pictures[drawable] = layout.draw_plans([list(scenes[i]) for i in drawable], generate)
    frames, rows = [pictures.clone()], []
    focus = [len(s) - 1 for s in scenes]
    undo: list[list] = [[] for _ in range(n)]
    for t in range(len(scripts[0]["turns"])):
        edits, errors = [], []
        for i, s in enumerate(scripts):
            try:
                e = read_turn(scenes[i], s["turns"][t], planner, focus[i])
                if e.kind == "undo" and not undo[i]:
                    raise PlanError("nothing to undo")
                edits.append(e)
                errors.append(None)
            except PlanError as exc:
                edits.append(None)
                errors.append(str(exc))
        live = [i for i, e in enumerate(edits) if e is not None]
        new = pictures.clone()
        if live:
            prev = [undo[i][-1][2] if edits[i].kind == "undo" else None for i in live]
            gen = torch.Generator().manual_seed(seed + 1 + t)
            new[live] = draw_edits(inpaint, pictures[live], [edits[i] for i in live], prev,
                                   generator=gen, **inpaint_kw)
        for i in live:
            e = edits[i]
            if e.kind == "undo":
                scenes[i], focus[i], _ = undo[i].pop()
            else:
                undo[i].append((scenes[i], focus[i], pictures[i].clone()))
                scenes[i], focus[i] = e.after, e.focus
        expected = [s["scenes"][t + 1] for s in scripts]
        judged = layout.judge_scenes(new, [list(x) for x in expected], judge)
        for i, s in enumerate(scripts):
            kept = True
            for spec in set(s["scenes"][t]) & set(expected[i]):  # objects the turn left alone
                box = layout.cell_mask(spec, margin=0.0).bool()[0]
                kept &= bool((new[i][:, box] == pictures[i][:, box]).all())
            plan_ok = edits[i] is not None and _same_scene(scenes[i], expected[i])
            pic_ok = bool(judged["scene_right"][i])
            rows.append({"conversation": i, "turn": t + 1, "text": s["turns"][t],
                         "kind": s["kinds"][t], "plan_right": plan_ok, "picture_right": pic_ok,
                         "kept": kept, "right": plan_ok and pic_ok and kept,
                         "error": errors[i]})
        pictures = new
        frames.append(pictures.clone())
    shares = {k: float(np.mean([r[k] for r in rows])) for k in
              ("plan_right", "picture_right", "kept", "right")}
    return {"turns": rows, "pictures": torch.stack(frames, 1), "shares": shares}
