"""Shapes: the course's captioned picture data set (contract: ``shared/design/shapes.md``).

Introduced in chapter 00; the text-to-image chapters (03, 05, 06, 08) train on it, and the
``shapes-judge`` checks generated pictures against their captions.

One picture: 32x32 RGB in [0, 1], black background, one object (circle, square or isosceles
triangle with its apex up) of one of six colors, small (side 6-7 px) or large (11-12 px), centred on
a 3x3 grid cell with +-1 px jitter. Its canonical caption reads
``a {size} {color} {shape} {where}``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, asdict

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Vocabulary of the contract
# --------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.00),
}
SIZES = {"small": (6.0, 7.0), "large": (11.0, 12.0)}  # side of the bounding box, in pixels
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
CELL_CENTRES = (7.0, 16.0, 25.0)  # x for left/center/right, y for top/middle/bottom
POSITION_JITTER = 1.0  # +- px on each axis
COLOR_JITTER = 0.04  # +- per channel
IMAGE_SIZE = 32
SUPERSAMPLE = 4
#: Shapes outside the contract that only chapter 11's personalisation data draws (a concept the
#: course's models never saw). They are in no split, no caption vocabulary and no judge head.
EXTRA_SHAPES = ("ring",)
RING_HOLE = 0.5  # a ring's inner radius as a fraction of its outer radius

WHERE = {
    ("top", "left"): "in the top left",
    ("top", "center"): "at the top",
    ("top", "right"): "in the top right",
    ("middle", "left"): "on the left",
    ("middle", "center"): "in the center",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left",
    ("bottom", "center"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}
WHERE_TO_CELL = {v: k for k, v in WHERE.items()}

#: (color, shape) pairs never seen in the ``train`` split: the composition test.
HELDOUT_PAIRS = (("purple", "triangle"), ("orange", "circle"), ("blue", "square"))
SPLITS = ("train", "heldout", "all")
#: Order of the attributes wherever they appear as label columns (judge heads, ``spec_labels``).
ATTRIBUTES = ("size", "color", "shape", "row", "col")
ATTRIBUTE_VALUES = {
    "size": tuple(SIZES),
    "color": tuple(COLORS),
    "shape": SHAPES,
    "row": ROWS,
    "col": COLS,
}


@dataclass(frozen=True)
class ShapeSpec:
    """What one picture shows (its caption's meaning); the jitter is drawn when rendering."""

    size: str
    color: str
    shape: str
    row: str
    col: str

    def __post_init__(self):
        for attr in ATTRIBUTES:
            value = getattr(self, attr)
            if value not in ATTRIBUTE_VALUES[attr]:
                raise ValueError(f"{attr} must be one of {ATTRIBUTE_VALUES[attr]}, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def labels(self) -> tuple[int, ...]:
        """Index of each attribute in ``ATTRIBUTE_VALUES``, in ``ATTRIBUTES`` order."""
        return tuple(ATTRIBUTE_VALUES[a].index(getattr(self, a)) for a in ATTRIBUTES)


def in_split(spec: ShapeSpec, split: str) -> bool:
    """Whether a spec belongs to ``split`` (``train``, ``heldout`` or ``all``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held = (spec.color, spec.shape) in HELDOUT_PAIRS
    return split == "all" or (split == "heldout") == held


def all_specs(split: str = "all") -> list[ShapeSpec]:
    """Every distinct spec of a split, in a fixed order: 324 (all), 270 (train), 54 (heldout)."""
    specs = [
        ShapeSpec(size, color, shape, row, col)
        for size, color, shape, row, col in itertools.product(SIZES, COLORS, SHAPES, ROWS, COLS)
    ]
    return [s for s in specs if in_split(s, split)]


def caption(spec: ShapeSpec) -> str:
    """Canonical caption, e.g. ``a small red circle in the top left``."""
    return f"a {spec.size} {spec.color} {spec.shape} {WHERE[(spec.row, spec.col)]}"


def all_captions(split: str = "all") -> list[str]:
    """Canonical captions of every spec of a split (270 for ``train``)."""
    return [caption(s) for s in all_specs(split)]


def _allowed_words_message() -> str:
    return (
        "allowed: sizes "
        + ", ".join(SIZES)
        + "; colors "
        + ", ".join(COLORS)
        + "; shapes "
        + ", ".join(SHAPES)
        + "; places "
        + ", ".join(f"'{w}'" for w in WHERE.values())
    )


def parse_caption(text: str) -> ShapeSpec:
    """Inverse of :func:`caption`. Raises ``ValueError`` naming the allowed words otherwise."""
    words = text.strip().lower().split()
    if len(words) < 5 or words[0] not in ("a", "an"):
        raise ValueError(
            f"not a Shapes caption: {text!r}; expected 'a {{size}} {{color}} {{shape}} "
            f"{{where}}', {_allowed_words_message()}"
        )
    size, color, shape, where = words[1], words[2], words[3], " ".join(words[4:])
    for attr, value, allowed in (
        ("size", size, SIZES),
        ("color", color, COLORS),
        ("shape", shape, SHAPES),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {attr} {value!r} in {text!r}; {_allowed_words_message()}")
    if where not in WHERE_TO_CELL:
        raise ValueError(f"unknown place {where!r} in {text!r}; {_allowed_words_message()}")
    row, col = WHERE_TO_CELL[where]
    return ShapeSpec(size, color, shape, row, col)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """A spec's drawn values: bounding-box side and centre in pixels, RGB color."""

    side: float
    cx: float
    cy: float
    rgb: tuple[float, float, float]


def draw_geometry(spec: ShapeSpec, rng: np.random.Generator | None = None) -> Geometry:
    """Draw the jitter for one spec (no jitter when ``rng`` is None: centre values)."""
    lo, hi = SIZES[spec.size]
    cx, cy = CELL_CENTRES[COLS.index(spec.col)], CELL_CENTRES[ROWS.index(spec.row)]
    base = np.array(COLORS[spec.color])
    if rng is None:
        return Geometry((lo + hi) / 2, cx, cy, tuple(base))
    side = rng.uniform(lo, hi)
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    rgb = np.clip(base + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3), 0.0, 1.0)
    return Geometry(float(side), float(cx + dx), float(cy + dy), tuple(float(c) for c in rgb))


def render_geometry(
    shapes: list[str],
    geoms: list[Geometry],
    image_size: int = IMAGE_SIZE,
    supersample: int = SUPERSAMPLE,
) -> torch.Tensor:
    """Rasterise objects, one per picture, with ``supersample``^2 samples per pixel (antialiasing).

    Returns FloatTensor[n, 3, image_size, image_size] in [0, 1].
    """
    n = len(geoms)
    k = supersample
    # sub-pixel sample centres in pixel units (the canvas spans 0..image_size)
    t = (torch.arange(image_size * k, dtype=torch.float64) + 0.5) / k  # [S]
    y, x = t.view(1, -1, 1), t.view(1, 1, -1)  # [1, S, 1], [1, 1, S]
    side = torch.tensor([g.side for g in geoms], dtype=torch.float64).view(n, 1, 1)
    cx = torch.tensor([g.cx for g in geoms], dtype=torch.float64).view(n, 1, 1)
    cy = torch.tensor([g.cy for g in geoms], dtype=torch.float64).view(n, 1, 1)
    half = side / 2
    dx, dy = x - cx, y - cy  # [n, S, S]
    circle = dx**2 + dy**2 <= half**2
    square = (dx.abs() <= half) & (dy.abs() <= half)
    # apex at (cx, cy - half), base from (cx - half, cy + half) to (cx + half, cy + half):
    # at height y the half-width grows linearly from 0 (apex) to half (base)
    frac = (dy + half) / side  # 0 at apex, 1 at base
    triangle = (frac >= 0) & (frac <= 1) & (dx.abs() <= half * frac)
    known = SHAPES + EXTRA_SHAPES
    unknown = sorted({s for s in shapes if s not in known})
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; allowed: {', '.join(known)}")
    kind = torch.tensor([known.index(s) for s in shapes]).view(n, 1, 1)
    mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))  # [n, S, S]
    ring_kind = known.index("ring")
    if (kind == ring_kind).any():  # the disc without its centre (EXTRA_SHAPES, chapter 11)
        ring = circle & (dx**2 + dy**2 > (RING_HOLE * half) ** 2)
        mask = torch.where(kind == ring_kind, ring, mask)
    cover = torch.nn.functional.avg_pool2d(mask.double().unsqueeze(1), k)  # [n, 1, H, W]
    rgb = torch.tensor([g.rgb for g in geoms], dtype=torch.float64).view(n, 3, 1, 1)
    return (cover * rgb).float().clamp_(0, 1)  # [n, 3, H, W]


def render(
    spec: ShapeSpec | list[ShapeSpec], rng: np.random.Generator | int | None = None
) -> torch.Tensor:
    """Render one spec (FloatTensor[3, 32, 32]) or a list of specs (FloatTensor[n, 3, 32, 32]).

    ``rng``: a NumPy generator or seed for the jitter; None draws no jitter (the cell centre, the
    mid size and the exact palette color).
    """
    single = isinstance(spec, ShapeSpec)
    specs = [spec] if single else list(spec)
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    geoms = [draw_geometry(s, rng) for s in specs]
    images = render_geometry([s.shape for s in specs], geoms)
    return images[0] if single else images


def render_as(
    specs: list[ShapeSpec], shape: str, rng: np.random.Generator | int | None = None
) -> torch.Tensor:
    """The specs' pictures (FloatTensor[n, 3, 32, 32]) with every object drawn as ``shape``, one of
    ``SHAPES + EXTRA_SHAPES``: the same size, color, place and jitter draws as :func:`render`.
    Chapter 11 draws the ring, a shape no caption of the data set names, this way."""
    if shape not in SHAPES + EXTRA_SHAPES:
        raise ValueError(f"shape must be one of {SHAPES + EXTRA_SHAPES}, got {shape!r}")
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    specs = list(specs)
    if not specs:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    geoms = [draw_geometry(s, rng) for s in specs]
    return render_geometry([shape] * len(specs), geoms)


def sample_specs(n: int, seed: int = 0, split: str = "train") -> list[ShapeSpec]:
    """``n`` specs drawn uniformly from the distinct specs of ``split``, reproducibly from
    ``seed``."""
    pool = all_specs(split)
    rng = np.random.default_rng([seed, 0])
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def sample(n: int, seed: int = 0, split: str = "train", return_specs: bool = False):
    """``n`` pictures and their canonical captions:
    ``(FloatTensor[n, 3, 32, 32] in [0, 1], list[str])``.

    The same (n, seed, split) gives the same pictures and captions on every machine. With
    ``return_specs=True`` a third item, the list of :class:`ShapeSpec`, is returned too.
    """
    specs = sample_specs(n, seed, split)
    rng = np.random.default_rng([seed, 1])
    images = render(specs, rng) if n else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    caps = [caption(s) for s in specs]
    return (images, caps, specs) if return_specs else (images, caps)


def spec_labels(specs: list[ShapeSpec]) -> torch.Tensor:
    """LongTensor[n, 5] of attribute indices, columns in ``ATTRIBUTES`` order."""
    return torch.tensor([s.labels() for s in specs], dtype=torch.long).view(-1, len(ATTRIBUTES))


class ShapesDataset(torch.utils.data.Dataset):
    """A fixed set of ``n`` Shapes pictures: items are ``(image [3, 32, 32], caption)``, or
    ``(image, caption, labels [5])`` with ``with_labels=True``."""

    def __init__(self, n: int, seed: int = 0, split: str = "train", with_labels: bool = False):
        self.images, self.captions, self.specs = sample(n, seed, split, return_specs=True)
        self.labels = spec_labels(self.specs)
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i):
        if self.with_labels:
            return self.images[i], self.captions[i], self.labels[i]
        return self.images[i], self.captions[i]


# --------------------------------------------------------------------------------------------
# Tokenizer over the canonical vocabulary
# --------------------------------------------------------------------------------------------
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def canonical_vocabulary() -> list[str]:
    """Every word of every canonical caption, sorted."""
    words = set()
    for text in all_captions("all"):
        words.update(text.split())
    return sorted(words)


_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*|[^\sa-z]")


def split_words(text: str) -> list[str]:
    """Lower-case word split; punctuation marks become their own tokens."""
    return _WORD_RE.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer: ``<pad>=0, <bos>=1, <eos>=2, <unk>=3``, then the words.

    ``unknown="raise"`` (default) refuses words outside the vocabulary with a ``ValueError`` naming
    the allowed words; ``unknown="unk"`` maps them to ``<unk>`` (chapter 06 compares encoders so).
    """

    def __init__(self, words: list[str] | None = None, max_length: int = 16):
        words = list(words) if words is not None else canonical_vocabulary()
        self.itos = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.stoi[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, unknown: str = "raise", add_special: bool = True) -> list[int]:
        ids = []
        for w in split_words(text):
            if w in self.stoi:
                ids.append(self.stoi[w])
            elif unknown == "unk":
                ids.append(self.unk_id)
            else:
                words = [t for t in self.itos if t not in SPECIAL_TOKENS]
                raise ValueError(
                    f"unknown word {w!r} in {text!r}; the vocabulary has "
                    f"{len(words)} words: {', '.join(words)}"
                )
        return [self.bos_id] + ids + [self.eos_id] if add_special else ids

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.itos[i])
        return " ".join(out)

    def __call__(
        self, texts: str | list[str], unknown: str = "raise", max_length: int | None = None
    ) -> dict:
        """Batch-encode: ``{"input_ids": LongTensor[n, L], "attention_mask": LongTensor[n, L]}``,
        padded on the right to ``max_length`` (default: this tokenizer's)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        max_length = max_length or self.max_length
        rows = [self.encode(t, unknown)[:max_length] for t in texts]
        ids = torch.full((len(rows), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------------------------
# Paraphrases
# --------------------------------------------------------------------------------------------
#: Free wordings. "seen" may be used in training; "unseen" never is (chapters 03 and 06 test
#: whether an encoder maps wording it never saw onto what it learned). No size, color or shape word
#: is in both, and no place phrase; they share only function words ("a", "the", "in", "left", ...).
PARAPHRASE_WORDS = {
    "seen": {
        "size": {"small": ["small", "little"], "large": ["large", "big"]},
        "color": {
            "red": ["red", "scarlet"],
            "green": ["green", "emerald"],
            "blue": ["blue", "navy"],
            "yellow": ["yellow", "golden"],
            "purple": ["purple", "violet"],
            "orange": ["orange", "amber"],
        },
        "shape": {
            "circle": ["circle", "ball"],
            "square": ["square", "box"],
            "triangle": ["triangle", "triangular shape"],
        },
        "where": {
            ("top", "left"): ["in the top left", "in the top left corner"],
            ("top", "center"): ["at the top", "at the top center"],
            ("top", "right"): ["in the top right", "in the top right corner"],
            ("middle", "left"): ["on the left", "on the left side"],
            ("middle", "center"): ["in the center", "in the middle"],
            ("middle", "right"): ["on the right", "on the right side"],
            ("bottom", "left"): ["in the bottom left", "in the bottom left corner"],
            ("bottom", "center"): ["at the bottom", "at the bottom center"],
            ("bottom", "right"): ["in the bottom right", "in the bottom right corner"],
        },
        "templates": [
            "a {size} {color} {shape} {where}",
            "{where}, a {size} {color} {shape}",
            "there is a {size} {color} {shape} {where}",
        ],
    },
    "unseen": {
        "size": {"small": ["tiny", "miniature"], "large": ["huge", "enormous"]},
        "color": {
            "red": ["crimson", "ruby"],
            "green": ["jade", "grass-green"],
            "blue": ["azure", "cobalt"],
            "yellow": ["lemon", "canary"],
            "purple": ["plum", "amethyst"],
            "orange": ["tangerine", "apricot"],
        },
        "shape": {
            "circle": ["disc", "dot"],
            "square": ["cube", "tile"],
            "triangle": ["pyramid", "wedge"],
        },
        "where": {
            ("top", "left"): ["in the upper-left corner", "up and to the left"],
            ("top", "center"): ["near the upper edge", "high up in the centre"],
            ("top", "right"): ["in the upper-right corner", "up and to the right"],
            ("middle", "left"): ["toward the left edge", "at the left-hand side"],
            ("middle", "center"): ["in the centre", "dead centre"],
            ("middle", "right"): ["toward the right edge", "at the right-hand side"],
            ("bottom", "left"): ["in the lower-left corner", "down and to the left"],
            ("bottom", "center"): ["near the lower edge", "low down in the centre"],
            ("bottom", "right"): ["in the lower-right corner", "down and to the right"],
        },
        "templates": [
            "please draw a {size} {color} {shape} {where}",
            "i would like a {size} {color} {shape} {where}",
            "{where}, draw me a {size} {color} {shape}",
        ],
    },
}


def with_article(text: str) -> str:
    """Fix 'a' before a vowel: 'a amber box' -> 'an amber box'."""
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def paraphrase(
    spec: ShapeSpec | str, rng: np.random.Generator | int | None = None, vocab: str = "seen"
) -> str:
    """A free wording of a spec (or of a canonical caption) from the ``seen`` or ``unseen``
    vocabulary."""
    if isinstance(spec, str):
        spec = parse_caption(spec)
    if vocab not in PARAPHRASE_WORDS:
        raise ValueError(f"vocab must be 'seen' or 'unseen', got {vocab!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    table = PARAPHRASE_WORDS[vocab]

    def pick(options):
        return options[int(rng.integers(len(options)))]

    text = pick(table["templates"]).format(
        size=pick(table["size"][spec.size]),
        color=pick(table["color"][spec.color]),
        shape=pick(table["shape"][spec.shape]),
        where=pick(table["where"][(spec.row, spec.col)]),
    )
    return with_article(text)


def paraphrase_vocabulary(vocab: str = "seen") -> list[str]:
    """Every word a ``vocab`` paraphrase can contain."""
    table = PARAPHRASE_WORDS[vocab]
    words = {"a", "an", ","}
    for attr in ("size", "color", "shape", "where"):
        for options in table[attr].values():
            for o in options:
                words.update(split_words(o))
    for tpl in table["templates"]:
        words.update(w for w in split_words(re.sub(r"\{\w+\}", " ", tpl)))
    return sorted(words)


# --------------------------------------------------------------------------------------------
# Version 2: two objects (chapter 06: relations and layout planning)
# --------------------------------------------------------------------------------------------
#: Words for where the first object is relative to the second, by (sign of row diff, sign of col
#: diff).
RELATIONS = {
    (0, -1): "to the left of",
    (0, 1): "to the right of",
    (-1, 0): "above",
    (1, 0): "below",
    (-1, -1): "above and to the left of",
    (-1, 1): "above and to the right of",
    (1, -1): "below and to the left of",
    (1, 1): "below and to the right of",
}


@dataclass(frozen=True)
class SceneSpec:
    """Two objects in different grid cells whose boxes never overlap, whatever the jitter (Shapes
    version 2). At the extremes of the jitter two small neighbours' boxes may touch."""

    first: ShapeSpec
    second: ShapeSpec

    def __post_init__(self):
        if not scene_is_valid(self.first, self.second):
            raise ValueError(f"objects too close or in the same cell: {self.first} / {self.second}")

    @property
    def objects(self) -> tuple[ShapeSpec, ShapeSpec]:
        return (self.first, self.second)


def scene_is_valid(a: ShapeSpec, b: ShapeSpec) -> bool:
    """Different cells, and on some axis the centres are far enough apart that the largest jittered
    boxes cannot touch: cell distance x 9 px - 2 px of jitter >= half of both maximal sides."""
    dr = abs(ROWS.index(a.row) - ROWS.index(b.row))
    dc = abs(COLS.index(a.col) - COLS.index(b.col))
    if dr == 0 and dc == 0:
        return False
    need = (SIZES[a.size][1] + SIZES[b.size][1]) / 2
    step = CELL_CENTRES[1] - CELL_CENTRES[0]
    return max(dr, dc) * step - 2 * POSITION_JITTER >= need


def relation(a: ShapeSpec, b: ShapeSpec) -> str:
    """Where ``a`` is relative to ``b``: 'to the left of', 'above', 'below and to the right of',
    ..."""
    sr = int(np.sign(ROWS.index(a.row) - ROWS.index(b.row)))
    sc = int(np.sign(COLS.index(a.col) - COLS.index(b.col)))
    return RELATIONS[(sr, sc)]


def scene_caption(scene: SceneSpec, style: str = "relation") -> str:
    """``relation``: 'a small red circle to the left of a large blue square';
    ``absolute``: 'a small red circle on the left and a large blue square on the right'."""
    a, b = scene.objects
    if style == "relation":
        return (
            f"{caption(a).rsplit(' ', len(WHERE[(a.row, a.col)].split()))[0]} {relation(a, b)} "
            f"{caption(b).rsplit(' ', len(WHERE[(b.row, b.col)].split()))[0]}"
        )
    if style == "absolute":
        return f"{caption(a)} and {caption(b)}"
    raise ValueError("style must be 'relation' or 'absolute'")


def all_scene_pairs(split: str = "all") -> list[SceneSpec]:
    """Every valid two-object scene whose both objects belong to ``split``."""
    specs = all_specs(split)
    return [SceneSpec(a, b) for a in specs for b in specs if scene_is_valid(a, b)]


def sample_scenes(n: int, seed: int = 0, split: str = "train", return_specs: bool = False):
    """``n`` two-object pictures with relation captions: ``(FloatTensor[n, 3, 32, 32], list[str])``
    (and the :class:`SceneSpec` list with ``return_specs=True``). Deterministic in
    (n, seed, split)."""
    pool = all_specs(split)
    rng = np.random.default_rng([seed, 2])
    scenes = []
    while len(scenes) < n:
        a, b = (pool[i] for i in rng.integers(0, len(pool), size=2))
        if scene_is_valid(a, b):
            scenes.append(SceneSpec(a, b))
    images = render_scenes(scenes, np.random.default_rng([seed, 3]))
    caps = [scene_caption(s) for s in scenes]
    return (images, caps, scenes) if return_specs else (images, caps)


def render_scenes(
    scenes: list[SceneSpec], rng: np.random.Generator | int | None = None
) -> torch.Tensor:
    """Render two-object scenes: FloatTensor[n, 3, 32, 32] (each object drawn in its own cell).

    The two boxes never overlap (they may touch at the extremes of the jitter), so the picture is
    the sum of the two objects' renders: an edge pixel shared by both gets both partial coverages.
    """
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if not scenes:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    firsts = render([s.first for s in scenes], rng)
    seconds = render([s.second for s in scenes], rng)
    return (firsts + seconds).clamp_(0, 1)
