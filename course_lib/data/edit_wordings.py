"""Edit instructions and the (source, instruction, target) triplets chapter 11's instruction editor
learns from (InstructPix2Pix in miniature, Brooks et al. 2023).

A triplet is a one-object Shapes picture, an instruction in words, and the same picture with the
asked change made: a new colour ("paint it crimson"), a new shape ("turn it into a box"), the other
size ("make it bigger") or another cell of the 3x3 grid ("move it to the top left"); or a "leave
it" control ("keep it the same") whose target is the source itself. The target keeps everything
the instruction does not change, down to the jitter the source was drawn with
(:func:`edited_geometry`): the same offset from the cell centre, the same place within the size
range, the same colour offset.

Two wordings that share no sentence form and no synonym:

* ``"seen"``, for training: the sentence forms of :data:`TEMPLATES` ``["seen"]`` filled with words
  from the part of the course's seen vocabulary that :func:`course_lib.data.wordings.
  split_vocabulary` keeps;
* ``"heldout"``, for measuring only: other sentence forms (:data:`TEMPLATES` ``["heldout"]``) and
  the synonyms that ``split_vocabulary`` holds out ("jade green", "sphere", "down low"), never
  the canonical word.

:func:`make_triplets` draws triplets reproducibly; :func:`instruction_bank` fixes a bank of
wordings per asked value so a frozen text encoder encodes a few thousand texts once.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch

from . import shapes, wordings

# fmt: off
#: What an instruction asks: one attribute changed, or nothing ("keep", the controls).
EDIT_KINDS = ("color", "shape", "size", "place", "keep")
WORDINGS = ("seen", "heldout")
#: Share of each kind among training triplets (place has the most values to learn).
KIND_SHARES = {"color": 0.2, "shape": 0.2, "size": 0.15, "place": 0.3, "keep": 0.15}

#: Sentence forms per kind. ``{value}`` is a word for the new colour / shape / size / place;
#: size forms without ``{value}`` are comparatives (:data:`COMPARATIVES`).
TEMPLATES = {
    "seen": {
        "color": [
            "make it {value}", "paint it {value}", "turn it {value}",
            "change the colour to {value}", "now make it {value}", "colour it {value}",
            "recolour it {value}",
            "change it to {value}", "make the shape {value}",
        ],
        "shape": [
            "make it a {value}", "turn it into a {value}", "change it into a {value}",
            "now make it a {value} instead", "change the shape to a {value}",
            "make the object a {value}", "swap it for a {value}",
        ],
        "size": [
            "make it {value}", "change the size to {value}", "now make it {value}",
            "make the object {value}", "set the size to {value}",
        ],
        "place": [
            "move it {value}", "put it {value}", "now move it {value}", "shift it {value}",
            "place it {value}", "move the object {value}", "put the shape {value}",
        ],
        "keep": [
            "leave it as it is", "keep it the same", "don't change anything", "leave it alone",
            "keep it as it is", "leave the picture as it is", "keep everything the same",
            "no changes, leave it",
        ],
    },
    "heldout": {
        "color": [
            "could you recolor it {value}", "i'd like it {value}", "give it a {value} colour",
            "switch its colour to {value}", "repaint it {value}",
        ],
        "shape": [
            "could you reshape it into a {value}", "i'd like a {value} there instead",
            "replace it with a {value}", "transform it into a {value}",
        ],
        "size": [
            "could you resize it to {value}", "i'd like it {value}", "rescale it to {value}",
            "let it be {value}",
        ],
        "place": [
            "could you relocate it {value}", "i'd like it {value}", "drag it {value}",
            "reposition it {value}",
        ],
        "keep": [
            "please do nothing to it", "leave the image untouched", "keep it exactly like this",
            "leave it unchanged",
        ],
    },
}
#: Comparative size instructions (no value word), by the size they ask for.
COMPARATIVES = {
    "seen": {"large": ["make it bigger", "enlarge it", "now make it bigger"],
             "small": ["make it smaller", "shrink it", "now make it smaller"]},
    "heldout": {"large": ["could you make it larger", "let it grow"],
                "small": ["could you make it tinier", "i'd like it smaller"]},
}
#: Share of size instructions written as a comparative.
P_COMPARATIVE = 0.3
# fmt: on


@functools.lru_cache(maxsize=4)
def value_words(wording: str = "seen", fraction: float = 0.25, seed: int = 0) -> dict:
    """``{attribute: {value: [words]}}`` for size, color, shape and place (keyed by (row, col))
    in ``wording``: the seen vocabulary's words that :func:`course_lib.data.wordings.
    split_vocabulary` keeps ("seen") or holds out ("heldout")."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    kept, held = wordings.split_vocabulary("seen", fraction, seed)
    table = kept if wording == "seen" else held
    out = {a: {v: list(ws) for v, ws in table[a].items()} for a in ("size", "color", "shape")}
    out["place"] = {tuple(cell): list(ws) for cell, ws in table["where"].items()}
    return out


@dataclass(frozen=True)
class EditRequest:
    """What an instruction asks: ``kind`` (one of :data:`EDIT_KINDS`) and the new ``value`` (a
    colour, shape or size name, a (row, col) cell, or None for "keep")."""

    kind: str
    value: object = None

    def __post_init__(self):
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"kind must be one of {EDIT_KINDS}, got {self.kind!r}")

    def apply(self, spec: shapes.ShapeSpec) -> shapes.ShapeSpec:
        """The spec after the edit."""
        if self.kind == "keep":
            return spec
        if self.kind == "place":
            return dataclasses.replace(spec, row=self.value[0], col=self.value[1])
        return dataclasses.replace(spec, **{self.kind: self.value})


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def instruction(request: EditRequest, rng: np.random.Generator, wording: str = "seen") -> str:
    """One wording of ``request`` in ``wording`` ("seen" or "heldout")."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    forms = TEMPLATES[wording][request.kind]
    if request.kind == "keep":
        return _pick(rng, forms)
    if request.kind == "size" and rng.random() < P_COMPARATIVE:
        return _pick(rng, COMPARATIVES[wording][request.value])
    words = value_words(wording)[request.kind][request.value]
    return wordings.with_article(_pick(rng, forms).format(value=_pick(rng, words)))


#: The plainest wording of each kind: a seen sentence form with the value's own name.
PLAIN_FORMS = {"color": "make it {value}", "shape": "turn it into a {value}",
               "size": "make it {value}", "place": "put it {value}", "keep": "leave it as it is"}


def plain_instruction(request: EditRequest) -> str:
    """``request`` in the plainest seen wording: "make it red", "turn it into a circle", "make it
    small", "put it in the top left", "leave it as it is" (the value's own name, never a
    synonym)."""
    if request.kind == "place":
        if request.value not in shapes.WHERE:
            raise ValueError(f"a move needs a cell from {list(shapes.WHERE)}, got "
                             f"{request.value!r}")
        return PLAIN_FORMS["place"].format(value=shapes.WHERE[tuple(request.value)])
    return wordings.with_article(PLAIN_FORMS[request.kind].format(value=request.value))


def requests_for(kind: str) -> list[EditRequest]:
    """Every request of one kind (one per value; "keep" has one)."""
    if kind == "keep":
        return [EditRequest("keep")]
    if kind == "place":
        return [EditRequest("place", cell) for cell in shapes.WHERE]
    return [EditRequest(kind, v) for v in shapes.ATTRIBUTE_VALUES[kind]]


def instruction_bank(per_request: int = 48, seed: int = 0, wording: str = "seen") -> dict:
    """``{request: [wordings]}``: ``per_request`` wordings of every request, drawn once (distinct
    where the wording allows), so training draws its texts from a fixed set."""
    rng = np.random.default_rng([seed, 1101, WORDINGS.index(wording)])
    bank = {}
    for kind in EDIT_KINDS:
        for req in requests_for(kind):
            texts = dict.fromkeys(instruction(req, rng, wording) for _ in range(per_request))
            bank[req] = list(texts)
    return bank


# --------------------------------------------------------------------------------------------
# Triplets
# --------------------------------------------------------------------------------------------
def edited_geometry(geom: shapes.Geometry, before: shapes.ShapeSpec,
                    after: shapes.ShapeSpec) -> shapes.Geometry:
    """The drawn values of ``after`` with ``before``'s jitter: the same offset from the cell centre,
    the same fraction of the size range, the same colour offset from the palette colour."""
    lo0, hi0 = shapes.SIZES[before.size]
    lo1, hi1 = shapes.SIZES[after.size]
    side = lo1 + (geom.side - lo0) * (hi1 - lo1) / (hi0 - lo0)
    c0 = shapes.CELL_CENTRES
    cx = geom.cx - c0[shapes.COLS.index(before.col)] + c0[shapes.COLS.index(after.col)]
    cy = geom.cy - c0[shapes.ROWS.index(before.row)] + c0[shapes.ROWS.index(after.row)]
    offset = np.array(geom.rgb) - np.array(shapes.COLORS[before.color])
    rgb = np.clip(np.array(shapes.COLORS[after.color]) + offset, 0.0, 1.0)
    return shapes.Geometry(float(side), float(cx), float(cy), tuple(float(c) for c in rgb))


def _draw_request(rng: np.random.Generator, spec: shapes.ShapeSpec, kind: str) -> EditRequest:
    """A request of ``kind`` that changes ``spec`` (a new value, never the one it has)."""
    if kind == "keep":
        return EditRequest("keep")
    if kind == "place":
        cells = [c for c in shapes.WHERE if c != (spec.row, spec.col)]
        return EditRequest("place", cells[int(rng.integers(len(cells)))])
    values = [v for v in shapes.ATTRIBUTE_VALUES[kind] if v != getattr(spec, kind)]
    return EditRequest(kind, values[int(rng.integers(len(values)))])


def make_triplets(n: int, seed: int = 0, wording: str = "seen", kinds=None, bank=None,
                  kind_shares: dict | None = None) -> dict:
    """``n`` triplets, reproducible from ``seed``: ``{"sources", "targets"`` (FloatTensor[n, 3, 32,
    32] in [0, 1]), ``"instructions"`` (texts), ``"requests"`` (:class:`EditRequest`),
    ``"source_specs"``, ``"target_specs"``}``. Sources are drawn uniformly from every Shapes spec;
    ``kinds``: a kind per triplet (default: drawn with ``kind_shares``, :data:`KIND_SHARES`);
    ``bank``: draw texts from :func:`instruction_bank`'s bank instead of wording each afresh."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    rng = np.random.default_rng([seed, 1102, WORDINGS.index(wording)])
    shares = kind_shares or KIND_SHARES
    if kinds is None:
        p = np.array([shares.get(k, 0.0) for k in EDIT_KINDS], dtype=float)
        kinds = [EDIT_KINDS[i] for i in rng.choice(len(EDIT_KINDS), size=n, p=p / p.sum())]
    kinds = list(kinds)
    if len(kinds) != n or any(k not in EDIT_KINDS for k in kinds):
        raise ValueError(f"kinds must be {n} values from {EDIT_KINDS}")
    pool = shapes.all_specs("all")
    src_specs = [pool[i] for i in rng.integers(0, len(pool), size=n)]
    requests = [_draw_request(rng, s, k) for s, k in zip(src_specs, kinds)]
    tgt_specs = [r.apply(s) for r, s in zip(requests, src_specs)]
    if bank is not None:
        texts = [_pick(rng, bank[r]) for r in requests]
    else:
        texts = [instruction(r, rng, wording) for r in requests]
    geoms = [shapes.draw_geometry(s, rng) for s in src_specs]
    tgt_geoms = [edited_geometry(g, s, t) for g, s, t in zip(geoms, src_specs, tgt_specs)]
    if n:
        sources = shapes.render_geometry([s.shape for s in src_specs], geoms)  # [n, 3, 32, 32]
        targets = shapes.render_geometry([s.shape for s in tgt_specs], tgt_geoms)  # [n, 3, 32, 32]
    else:
        sources = targets = torch.zeros(0, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    return {"sources": sources, "targets": targets, "instructions": texts,
            "requests": requests, "source_specs": src_specs, "target_specs": tgt_specs}


def evaluation_triplets(per_kind: int = 60, seed: int = 40_000, wording: str = "heldout") -> dict:
    """A fixed measuring set: ``per_kind`` triplets of each kind (the "keep" controls included),
    in ``wording``, from its own seed (never a training one)."""
    kinds = [k for k in EDIT_KINDS for _ in range(per_kind)]
    return make_triplets(len(kinds), seed=seed, wording=wording, kinds=kinds)
