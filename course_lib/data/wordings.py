"""Free wordings of Shapes requests (chapter 06): text like the real world's, for training and
testing the text encoders, the text-to-image models and the planner.

Real text-to-image models learn from millions of phrasings. Here a request is drawn from one of two
vocabularies that share no content word:

* ``"seen"``, for training: several wordings of every size, shape and place, more than a dozen
  sentence forms, the canonical caption among them ("a small red circle in the top left", "in the
  upper left corner, a tiny crimson ball", "please show me a little scarlet disc near the top
  edge, on the left"), and every colour name of the XKCD survey and CSS4 that is clearly one of the
  six Shapes colours (:func:`course_lib.data.colour_names.shapes_colour_names`: "fire engine red",
  "kelly green", "navy", "lemon", "bright violet", "tangerine", ... about 370 names);
* ``"unseen"``, for testing only: rarer synonyms ("vermilion", "orb", "in the top-left quadrant",
  "at twelve o'clock") and new sentence forms ("could you paint ..."). Each unseen colour word that
  is an XKCD or CSS4 name is checked the same way (:data:`UNSEEN_COLOUR_CHECKED`), and no seen
  colour name contains one.

Only :data:`FUNCTION_WORDS` (articles, prepositions, pronouns, auxiliaries, "please") and the
directions every place phrase is built from (:data:`SIDE_WORDS`: left, right, top, bottom, up, down)
may appear in both; :func:`content_words`
lists the rest, and a test checks the two sets are disjoint.

A request is a one- or two-object scene in free words ("a red ball to the left of a big blue box"),
or something that is not a Shapes scene (another shape or colour, an animal, three objects, a
question, chat). :func:`make_requests` draws them with the scene each asks for.
:func:`split_vocabulary` holds a part of the seen vocabulary out (words and sentence forms the
planner never trains on): requests in it imitate novel wording without touching the unseen one.

Canonical layout for relational requests (a relation names no cell): the two objects go as far
apart as the relation allows, mirrored about the centre. "A to the left of B": A middle-left,
B middle-right; "A above B": A top-center, B bottom-center; "A above and to the right of B": A
top-right, B bottom-left. Words a request leaves out take defaults: size ``large``
(:data:`DEFAULT_SIZE`); a one-object request without a place goes in the center.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from . import shapes
from . import colour_names

# The word lists below are packed several to a line; the formatter leaves them so.
# fmt: off

MAX_OBJECTS = 2
DEFAULT_SIZE = "large"
DEFAULT_CELL = ("middle", "center")
VOCABULARIES = ("seen", "unseen")

#: Words both vocabularies may use: they carry grammar or politeness, not what to draw.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and with is are there that this it i you me would could one by from "
    "for some near please , ? ' o".split()
)
#: The directions every place phrase is built from; shared by both vocabularies.
SIDE_WORDS = frozenset(("left", "right", "top", "bottom", "up", "down"))


def _mirror(places: dict) -> dict:
    """Fill the right-hand cells from the left-hand ones (left <-> right in every phrase)."""
    swap = {
        "left": "right",
        "right": "left",
        "west": "east",
        "east": "west",
        "northwest": "northeast",
        "southwest": "southeast",
        "leftmost": "rightmost",
        "nine": "three",
    }
    out = dict(places)
    for (row, col), phrases in places.items():
        if col == "left":
            out[(row, "right")] = [
                re.sub(r"[a-z]+", lambda m: swap.get(m.group(0), m.group(0)), p) for p in phrases
            ]
    return out


def _grid(rows: dict, cols: dict) -> dict:
    """Place phrases made of a row phrase and a column phrase ("near the top edge, centered")."""
    return {
        (r, c): [f"{rp}, {cp}" for rp in rows[r] for cp in cols[c]]
        for r in rows
        for c in cols
        if (r, c) != ("middle", "center")
    }


_SEEN_ROWS = {
    "top": ["at the top", "near the top edge", "up high"],
    "middle": ["at mid height", "in the middle row"],
    "bottom": ["at the bottom", "near the bottom edge", "down low"],
}
_SEEN_COLS = {
    "left": ["on the left", "at the left side"],
    "center": ["centered", "in the middle"],
    "right": ["on the right", "at the right side"],
}
SEEN_PLACES = _mirror(
    {
        ("top", "left"): [
            "in the top left", "in the top left corner", "at the top left",
            "in the upper left corner", "up in the left corner", "top left", "in the upper left",
            "in the upper-left corner", "at the upper left",
        ],
        ("top", "center"): [
            "at the top", "at the top center", "along the top edge", "at the top middle",
            "high up in the middle", "in the upper middle", "up top", "at the top centre",
            "near the top edge",
        ],
        ("middle", "left"): [
            "on the left", "on the left side", "at the left edge",
            "in the middle of the left side", "at the left", "along the left edge",
            "on the left in the middle", "near the left edge",
        ],
        ("middle", "center"): [
            "in the center", "in the middle", "at the center", "in the very center", "centered",
            "in the center of the image", "in the middle of the image", "in the centre",
            "right in the middle",
        ],
        ("bottom", "left"): [
            "in the bottom left", "in the bottom left corner", "at the bottom left",
            "in the lower left corner", "down in the left corner", "bottom left",
            "in the lower left", "in the lower-left corner", "at the lower left",
        ],
        ("bottom", "center"): [
            "at the bottom", "at the bottom center", "along the bottom edge",
            "at the bottom middle", "low down in the middle", "in the lower middle",
            "down at the bottom", "at the bottom centre", "near the bottom edge",
        ],
    }
)
for _cell, _phrases in _grid(_SEEN_ROWS, _SEEN_COLS).items():
    SEEN_PLACES[_cell] = SEEN_PLACES[_cell] + _phrases
UNSEEN_PLACES = _mirror(
    {
        ("top", "left"): [
            "in the far top-left region", "in the top-left quadrant", "toward the northwest",
            "at the topmost, leftmost spot",
        ],
        ("top", "center"): [
            "near the top border", "at twelve o'clock", "toward the north",
            "halfway across, near the top margin",
        ],
        ("middle", "left"): [
            "at nine o'clock", "toward the west", "near the left margin, midway",
            "at the left-hand border",
        ],
        ("middle", "center"): [
            "dead in the heart of the frame", "at the midpoint",
            "smack in the heart of the canvas", "at the exact midpoint of the frame",
        ],
        ("bottom", "left"): [
            "in the far bottom-left region", "in the bottom-left quadrant", "toward the southwest",
            "at the bottommost, leftmost spot",
        ],
        ("bottom", "center"): [
            "near the bottom border", "at six o'clock", "toward the south",
            "halfway across, near the bottom margin",
        ],
    }
)

#: Unseen colour words: rarer, but each clearly one Shapes colour (checked by
#: :func:`course_lib.data.colour_names.shapes_colour_of` where it is an XKCD or CSS4 name, see
#: :data:`UNSEEN_COLOUR_CHECKED`; cardinal, clover, lapis, daffodil, papaya, persimmon and
#: clementine are not names there).
UNSEEN_COLOURS = {
    "red": ["vermilion", "carmine", "cardinal", "cranberry"],
    "green": ["mint", "shamrock", "clover", "fern"],
    "blue": ["sapphire", "cornflower", "periwinkle", "lapis"],
    "yellow": ["mustard", "daffodil", "banana", "butter"],
    "purple": ["orchid", "grape", "eggplant", "wisteria"],
    "orange": ["mango", "papaya", "persimmon", "clementine"],
}
#: Unseen colour words as the XKCD survey spells them ("vermillion"), for the check and the
#: exclusion.
_UNSEEN_SPELLINGS = {"vermilion": "vermillion", "periwinkle": "perrywinkle"}
_UNSEEN_EXCLUDE = tuple(w for ws in UNSEEN_COLOURS.values() for w in ws) + tuple(
    _UNSEEN_SPELLINGS.values()
)
#: Hand-written seen colour words, the six canonical ones first. Each one that is an XKCD or CSS4
#: name passes :func:`course_lib.data.colour_names.shapes_colour_of` (a test checks it); "carrot"
#: and "mandarin" are not names there.
SEEN_CORE_COLOURS = {
    "red": ["red", "scarlet", "crimson", "cherry", "ruby", "blood red", "tomato", "strawberry"],
    "green": [
        "green", "emerald", "jade", "grass green", "forest green", "lime green", "kelly green",
    ],
    "blue": ["blue", "navy", "cobalt", "navy blue", "bright blue", "electric blue", "vibrant blue"],
    "yellow": [
        "yellow", "lemon", "canary", "gold", "sunflower yellow", "lemon yellow", "bright yellow",
    ],
    "purple": [
        "purple", "violet", "plum", "amethyst", "bright violet", "deep purple", "dark purple",
    ],
    "orange": ["orange", "tangerine", "apricot", "pumpkin", "carrot", "mandarin", "peach"],
}
#: Every XKCD and CSS4 name that is clearly one Shapes colour, minus those containing an unseen
#: word.
SEEN_COLOUR_NAMES = colour_names.shapes_colour_names(exclude=_UNSEEN_EXCLUDE)


def _colour_options(core: dict, table: dict) -> dict:
    return {c: list(dict.fromkeys(core[c] + table[c])) for c in core}


#: Everything a request can be made of, per vocabulary.
WORDS = {
    "seen": {
        "size": {
            "small": [
                "small", "little", "tiny", "mini", "petite", "smallish", "compact", "itty-bitty",
            ],
            "large": [
                "large", "big", "huge", "giant", "enormous", "oversized", "chunky", "bulky",
                "gigantic",
            ],
        },
        "color": _colour_options(SEEN_CORE_COLOURS, SEEN_COLOUR_NAMES),
        "color_core": SEEN_CORE_COLOURS,
        "shape": {
            "circle": [
                "circle", "ball", "disc", "sphere", "round shape", "circular shape", "globe",
                "disk",
            ],
            "square": [
                "square", "box", "block", "tile", "square shape", "boxy shape", "square block",
                "four-sided shape",
            ],
            "triangle": [
                "triangle", "pyramid", "arrowhead", "triangular shape", "upward triangle",
                "pointy shape", "pointy triangle",
            ],
        },
        "where": SEEN_PLACES,
        "templates": [
            "a {size} {color} {shape} {where}", "{where}, a {size} {color} {shape}",
            "there is a {size} {color} {shape} {where}", "draw a {size} {color} {shape} {where}",
            "show a {size} {color} {shape} {where}", "a {size} {shape} in {color} {where}",
            "{where} there is a {size} {color} {shape}",
            "an image of a {size} {color} {shape} {where}",
            "make a {color} {shape} that is {size}, {where}", "a {color} {shape}, {size}, {where}",
            "please show me a {size} {color} {shape} {where}",
            "can you draw a {size} {color} {shape} {where}?",
            "i want a {size} {color} {shape} {where}", "give me a {size} {color} {shape} {where}",
            "{where}, draw a {size} {color} {shape}", "put a {size} {color} {shape} {where}",
            "create a {size} {color} {shape} {where}", "{where}, a {size} {shape} colored {color}",
        ],
        "noplace": [
            "a {size} {color} {shape}", "there is a {size} {color} {shape}",
            "draw a {size} {color} {shape}", "please show me a {size} {color} {shape}",
            "i want a {size} {color} {shape}",
        ],
        "relation": [
            "{a} {rel} {b}", "there is {a} {rel} {b}", "draw {a} {rel} {b}", "show {a} {rel} {b}",
            "please show me {a} {rel} {b}", "put {a} {rel} {b}",
        ],
        "absolute": [
            "{a} {wa} and {b} {wb}", "there is {a} {wa} and {b} {wb}",
            "draw {a} {wa} and {b} {wb}", "{wa}, {a}, and {wb}, {b}",
            "please show me {a} {wa} and {b} {wb}",
        ],
        "relations": {
            "to the left of": [
                "to the left of", "left of", "on the left of", "to the left side of",
            ],
            "to the right of": [
                "to the right of", "right of", "on the right of", "to the right side of",
            ],
            "above": ["above", "over", "on top of", "up above"],
            "below": ["below", "under", "underneath", "down below"],
            "above and to the left of": [
                "above and to the left of",
                "above and left of",
                "up and to the left of",
            ],
            "above and to the right of": [
                "above and to the right of",
                "above and right of",
                "up and to the right of",
            ],
            "below and to the left of": [
                "below and to the left of",
                "below and left of",
                "down and to the left of",
            ],
            "below and to the right of": [
                "below and to the right of",
                "below and right of",
                "down and to the right of",
            ],
        },
        "not_nouns": [
            "cat", "dog", "house", "car", "tree", "flower", "star", "arrow", "hexagon", "person",
            "oval", "letter", "diamond", "cross", "crescent", "bird", "fish", "rectangle", "kite",
            "ellipse", "rhombus", "trapezoid", "parallelogram", "spiral", "donut", "zigzag",
            "heptagon", "rocket", "airplane", "bus", "truck", "train", "chair", "table", "book",
            "shoe", "hat", "cup", "bottle", "key", "umbrella", "lion", "cow", "sheep", "rabbit",
            "snake", "elephant", "mouse", "spider", "window", "door", "candle", "pencil", "phone",
            "robot", "ghost", "snowman", "crown", "anchor", "bell", "flag", "tower", "castle",
        ],
        "not_colors": [
            "pink", "brown", "black", "grey", "teal", "gray", "turquoise", "cyan", "magenta",
            "maroon", "olive",
        ],
        "questions": [
            "is there {obj} {where}?", "what color is {obj} {where}?",
            "can you see {obj} {where}?", "what size is {obj} {where}?",
            "what shape is {obj} {where}?", "did you hide {obj} {where}?",
            "when did you draw {obj} {where}?", "what is {obj} {where} for?",
            "should i draw {obj} {where}?", "where did {obj} {where} come from?",
        ],
        "chat": [
            "hello there", "what time is it", "tell me a joke", "draw a landscape at sunset",
            "write a poem about the sea", "a photo of a city at night", "nothing at all",
            "a portrait of an old man", "translate this into french", "thanks a lot", "draw a cat",
            "show me the news", "a bowl of fruit on a table", "open the door",
            "what is the capital of italy", "play some music", "i am hungry",
            "book a table for two", "write an email to my boss",
            "a landscape with trees and a river", "explain quantum physics", "see you later",
            "a dragon flying over a castle", "a plate of pasta",
        ],
    },
    "unseen": {
        "size": {
            "small": ["miniature", "wee", "teeny", "diminutive"],
            "large": ["massive", "jumbo", "hefty", "colossal"],
        },
        "color": UNSEEN_COLOURS,
        "shape": {
            "circle": ["dot", "orb", "bubble", "coin"],
            "square": ["cube", "crate", "slab", "dice"],
            "triangle": ["wedge", "tent", "delta", "cone"],
        },
        "where": UNSEEN_PLACES,
        "templates": [
            "please render a {size} {color} {shape} {where}",
            "i would like a {size} {color} {shape} {where}",
            "could you paint a {size} {color} {shape} {where}",
            "{where}, sketch me a {size} {color} {shape}",
            "picture one {size} {color} {shape} placed {where}",
        ],
        "noplace": [
            "please render a {size} {color} {shape}",
            "i would like a {size} {color} {shape}",
        ],
        "relation": ["please render {a} {rel} {b}", "i would like {a} {rel} {b}"],
        "absolute": ["please render {a} {wa} and {b} {wb}", "i would like {a} {wa} and {b} {wb}"],
        "relations": {
            "to the left of": ["further left than", "west of"],
            "to the right of": ["further right than", "east of"],
            "above": ["higher than", "north of"],
            "below": ["beneath", "south of"],
            "above and to the left of": ["diagonally up-left of", "northwest of"],
            "above and to the right of": ["diagonally up-right of", "northeast of"],
            "below and to the left of": ["diagonally down-left of", "southwest of"],
            "below and to the right of": ["diagonally down-right of", "southeast of"],
        },
        "not_nouns": [
            "horse", "bicycle", "moon", "pentagon", "cloud", "boat", "guitar", "lamp", "octagon",
        ],
        "not_colors": ["white", "silver", "beige", "khaki"],
        "questions": ["why is {obj} {where}?", "who painted {obj} {where}?"],
        "chat": [
            "how are you today", "please summarise this article", "render a mountain lake",
            "an oil painting of a ship", "the weather forecast", "a selfie with friends",
            "sing me a song", "good morning",
        ],
    },
}
#: Unseen words a seen colour name must not contain ("bubble gum pink" has the unseen shape
#: "bubble").
_UNSEEN_NAMING = (
    _UNSEEN_EXCLUDE
    + tuple(WORDS["unseen"]["not_colors"] + WORDS["unseen"]["not_nouns"])
    + tuple(w for key in ("size", "shape") for ws in WORDS["unseen"][key].values() for w in ws)
)
#: Colours Shapes does not draw, in the seen wording: the hand-written ones, then every XKCD and
#: CSS4 name of another colour (:func:`course_lib.data.colour_names.other_colour_names`:
#: "salmon pink", "dark taupe") with no word that contains an unseen word. The planner learns to
#: refuse them.
WORDS["seen"]["not_colors"] = list(
    dict.fromkeys(
        WORDS["seen"]["not_colors"]
        + colour_names.other_colour_names(
            exclude=_UNSEEN_NAMING
            + tuple(w for ws in SEEN_CORE_COLOURS.values() for w in ws if " " not in w)
        )
    )
)
#: The sentence forms of one-object requests.
TEMPLATES = {v: WORDS[v]["templates"] for v in VOCABULARIES}
#: Share of seen colour words drawn from the hand-written list (the rest: any seen colour name).
P_CORE_COLOUR = 0.4
_LIST_KEYS = (
    "templates", "noplace", "relation", "absolute", "not_nouns", "not_colors", "questions", "chat",
)
_VALUE_KEYS = ("size", "color", "shape", "where", "relations")


def _check_vocab(vocab) -> dict:
    """The table of a vocabulary: ``"seen"``, ``"unseen"``, or a table from
    :func:`split_vocabulary`."""
    if isinstance(vocab, dict) and set(_VALUE_KEYS + _LIST_KEYS) <= set(vocab):
        return vocab
    if isinstance(vocab, str) and vocab in WORDS:
        return WORDS[vocab]
    raise ValueError(
        f"vocab must be one of {VOCABULARIES} or a table from split_vocabulary, "
        f"got {str(vocab)[:60]!r}"
    )


def _vocab_seed(vocab) -> int:
    name = vocab.get("name", "") if isinstance(vocab, dict) else vocab
    return VOCABULARIES.index(name) if name in VOCABULARIES else zlib.crc32(name.encode())


def with_article(text: str) -> str:
    """'a' before a vowel becomes 'an': 'a amber box' -> 'an amber box'."""
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _colour(rng, t: dict, value: str) -> str:
    """A word for a Shapes colour: from the hand-written list with probability :data:`P_CORE_COLOUR`
    (where the table has one), otherwise any of the table's names for it."""
    core = t.get("color_core", {}).get(value)
    return _pick(rng, core if core and rng.random() < P_CORE_COLOUR else t["color"][value])


def _words(text: str) -> set[str]:
    """Words of a text, hyphenated words also in their parts ("top-left": top-left, top, left)."""
    out = set()
    for w in shapes.split_words(text):
        out.add(w)
        out.update(w.split("-"))
    return out


def content_words(vocab) -> set[str]:
    """Every word ``vocab`` can put in a request (hyphenated words also in parts), except
    :data:`FUNCTION_WORDS` and :data:`SIDE_WORDS`."""
    t = _check_vocab(vocab)
    texts = []
    for key in _VALUE_KEYS:
        texts += [o for opts in t[key].values() for o in opts]
    for key in ("templates", "noplace", "relation", "absolute", "questions"):
        texts += [re.sub(r"\{\w+\}", " ", o) for o in t[key]]
    texts += t["not_nouns"] + t["not_colors"] + t["chat"]
    words = set().union(*(_words(text) for text in texts))
    return words - FUNCTION_WORDS - SIDE_WORDS


def split_vocabulary(
    vocab: str = "seen", fraction: float = 0.25, seed: int = 0
) -> tuple[dict, dict]:
    """Hold a part of a vocabulary out: ``(kept, held_out)`` tables for :func:`make_request`.

    For every size, colour, shape, place and relation, and for every list of sentence forms and
    non-scene words, about ``fraction`` of the options (never the canonical word or sentence form,
    always at least one where there are three or more) go to ``held_out``; ``kept`` then also drops
    every option that shares a distinctive word with a held-out one (holding out "jade green" drops
    "jade" too; words in three or more options of a list, such as "dark" or "green", are not
    distinctive). A model trained on ``kept`` never reads the held-out words: requests in
    ``held_out`` imitate novel wording (chapter 06 calibrates the planner's refusals on them)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    t = _check_vocab(vocab)
    rng = np.random.default_rng([seed, 67])
    canonical = set(shapes.canonical_vocabulary())
    fixed = canonical | set(shapes.RELATIONS.values()) | set(shapes.WHERE.values())
    fixed |= {
        WORDS["seen"]["templates"][0],
        WORDS["seen"]["noplace"][0],
        WORDS["seen"]["relation"][0],
        WORDS["seen"]["absolute"][0],
    }

    def split(options: list) -> tuple[list, list]:
        movable = [o for o in options if o not in fixed]
        n_held = (
            min(len(movable), max(1, int(round(fraction * len(options)))))
            if len(options) >= 3
            else 0
        )
        held = [movable[i] for i in sorted(rng.permutation(len(movable))[:n_held])]
        counts = {}
        for o in options:
            for w in _words(o):
                counts[w] = counts.get(w, 0) + 1
        key = (
            {w for o in held for w in _words(o) if counts[w] < 3}
            - FUNCTION_WORDS
            - SIDE_WORDS
            - canonical
        )
        kept = [o for o in options if o not in held and not (_words(o) & key)]
        return kept, [o for o in options if o not in kept]

    name = t.get("name", vocab if isinstance(vocab, str) else "table")
    kept, held = (
        {"name": f"{name}-kept-{fraction}-{seed}"},
        {"name": f"{name}-held-{fraction}-{seed}"},
    )
    for key in _VALUE_KEYS:
        kept[key], held[key] = {}, {}
        for value, options in t[key].items():
            a, b = split(options)
            kept[key][value], held[key][value] = a, b or a  # nothing to hold out: both use the rest
    for key in _LIST_KEYS:
        kept[key], held[key] = split(t[key])
        held[key] = held[key] or kept[key]
    if "color_core" in t:
        kept["color_core"] = {
            c: [w for w in ws if w in kept["color"][c]] for c, ws in t["color_core"].items()
        }
    return kept, held


def paraphrase(
    spec: shapes.ShapeSpec | str, rng: np.random.Generator | int | None = None, vocab="seen"
) -> str:
    """A free wording of one object (a spec or a canonical caption) from ``vocab``; all five
    attributes are said."""
    t = _check_vocab(vocab)
    spec = shapes.parse_caption(spec) if isinstance(spec, str) else spec
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    text = _pick(rng, t["templates"]).format(
        size=_pick(rng, t["size"][spec.size]),
        color=_colour(rng, t, spec.color),
        shape=_pick(rng, t["shape"][spec.shape]),
        where=_pick(rng, t["where"][(spec.row, spec.col)]),
    )
    return with_article(text)


def _object_phrase(spec: shapes.ShapeSpec, rng, t: dict, omit_size: bool = False) -> str:
    color, shape = _colour(rng, t, spec.color), _pick(rng, t["shape"][spec.shape])
    if omit_size:
        return with_article(f"a {color} {shape}")
    return with_article(f"a {_pick(rng, t['size'][spec.size])} {color} {shape}")


def canonical_layout(rel: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The cells of the two objects of "A {rel} B": as far apart as the relation allows, mirrored
    about the centre."""
    inverse = {v: k for k, v in shapes.RELATIONS.items()}
    if rel not in inverse:
        raise ValueError(f"relation must be one of {list(inverse)}, got {rel!r}")
    sr, sc = inverse[rel]
    rows, cols = {-1: "top", 0: "middle", 1: "bottom"}, {-1: "left", 0: "center", 1: "right"}
    return (rows[sr], cols[sc]), (rows[-sr], cols[-sc])


REQUEST_KINDS = ("one", "one-noplace", "relation", "absolute", "none")


def _not_a_scene(rng, t: dict) -> str:
    """A request that is not a Shapes scene: chat, a question, three objects, a thing Shapes does
    not draw, or a colour it does not have."""
    specs = shapes.all_specs("all")
    spec = _pick(rng, specs)
    where = _pick(rng, t["where"][(spec.row, spec.col)])
    r = rng.random()
    if r < 0.25:
        return _pick(rng, t["chat"])
    if r < 0.4:
        return _pick(rng, t["questions"]).format(obj=_object_phrase(spec, rng, t), where=where)
    if r < 0.55:
        objs = [_object_phrase(_pick(rng, specs), rng, t) for _ in range(3)]
        return f"{objs[0]}, {objs[1]} and {objs[2]}"
    size = _pick(rng, t["size"][spec.size])
    if r < 0.8:
        return with_article(
            f"a {size} {_colour(rng, t, spec.color)} {_pick(rng, t['not_nouns'])} {where}"
        )
    return with_article(
        f"a {size} {_pick(rng, t['not_colors'])} {_pick(rng, t['shape'][spec.shape])} {where}"
    )


def make_request(
    rng: np.random.Generator, vocab="seen", kind: str | None = None, p_omit_size: float = 0.15
) -> tuple[str, list[shapes.ShapeSpec] | None]:
    """One random free request and the scene it asks for (``None`` for a request that is not a
    Shapes scene). ``vocab``: ``"seen"``, ``"unseen"`` or a table of :func:`split_vocabulary`.
    ``kind``: one of :data:`REQUEST_KINDS` (default: a random mix)."""
    t = _check_vocab(vocab)
    if kind is None:
        kind = _pick(
            rng, ["one"] * 8 + ["one-noplace"] + ["relation"] * 5 + ["absolute"] * 4 + ["none"] * 3
        )
    if kind not in REQUEST_KINDS:
        raise ValueError(f"kind must be one of {REQUEST_KINDS}, got {kind!r}")
    specs = shapes.all_specs("all")
    if kind == "one":
        spec = _pick(rng, specs)
        if rng.random() < p_omit_size:
            where = _pick(rng, t["where"][(spec.row, spec.col)])
            text = f"{_object_phrase(spec, rng, t, omit_size=True)} {where}"
            return text, [
                shapes.ShapeSpec(DEFAULT_SIZE, spec.color, spec.shape, spec.row, spec.col)
            ]
        return paraphrase(spec, rng, t), [spec]
    if kind == "one-noplace":
        spec = _pick(rng, specs)
        text = _pick(rng, t["noplace"]).format(
            size=_pick(rng, t["size"][spec.size]),
            color=_colour(rng, t, spec.color),
            shape=_pick(rng, t["shape"][spec.shape]),
        )
        return with_article(text), [
            shapes.ShapeSpec(spec.size, spec.color, spec.shape, *DEFAULT_CELL)
        ]
    if kind == "relation":
        rel = _pick(rng, list(shapes.RELATIONS.values()))
        (ra, ca), (rb, cb) = canonical_layout(rel)
        a0, b0 = _pick(rng, specs), _pick(rng, specs)
        oa, ob = rng.random() < p_omit_size, rng.random() < p_omit_size
        a = shapes.ShapeSpec(DEFAULT_SIZE if oa else a0.size, a0.color, a0.shape, ra, ca)
        b = shapes.ShapeSpec(DEFAULT_SIZE if ob else b0.size, b0.color, b0.shape, rb, cb)
        text = _pick(rng, t["relation"]).format(
            a=_object_phrase(a0, rng, t, oa),
            rel=_pick(rng, t["relations"][rel]),
            b=_object_phrase(b0, rng, t, ob),
        )
        return text, [a, b]
    if kind == "absolute":
        while True:
            a, b = _pick(rng, specs), _pick(rng, specs)
            if shapes.scene_is_valid(a, b):
                break
        text = _pick(rng, t["absolute"]).format(
            a=_object_phrase(a, rng, t),
            wa=_pick(rng, t["where"][(a.row, a.col)]),
            b=_object_phrase(b, rng, t),
            wb=_pick(rng, t["where"][(b.row, b.col)]),
        )
        return text, [a, b]
    return _not_a_scene(rng, t), None


def make_requests(n: int, seed: int = 0, vocab="seen", kind: str | None = None, **kw):
    """``n`` requests and their scenes (see :func:`make_request`), reproducible from ``seed``."""
    t = _check_vocab(vocab)
    rng = np.random.default_rng([seed, 62, _vocab_seed(vocab)])
    pairs = [make_request(rng, t, kind, **kw) for _ in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def paraphrase_prompts(split: str = "train", vocab: str = "unseen", seed: int = 30_000):
    """One free wording (:func:`paraphrase`) of every canonical caption of ``split``, and the
    canonical captions they mean (what the judge checks)."""
    rng = np.random.default_rng([seed, 64])
    specs = shapes.all_specs(split)
    return [paraphrase(s, rng, vocab) for s in specs], [shapes.caption(s) for s in specs]


def training_captions(
    captions: list[str], rng: np.random.Generator, p_canonical: float = 0.25, per_caption: int = 8
) -> list[str]:
    """Training text for a text-to-image model: each canonical caption kept with probability
    ``p_canonical``, otherwise replaced by one of ``per_caption`` free wordings of it drawn once
    from the seen vocabulary (a bank per caption: a frozen encoder then encodes a few thousand
    distinct texts, not one per training picture)."""
    if not 0 <= p_canonical <= 1:
        raise ValueError(f"p_canonical must be between 0 and 1, got {p_canonical}")
    bank = {
        c: [paraphrase(c, rng, "seen") for _ in range(per_caption)] for c in dict.fromkeys(captions)
    }
    return [
        c if rng.random() < p_canonical else bank[c][int(rng.integers(per_caption))]
        for c in captions
    ]
# fmt: on
