"""Checks around the planner's heads (chapter 06): how many objects a request asks for, a question
when one attribute is unsure, and which requests the planner takes at all.

The heads of ``shapes-planner`` choose *none / one / two objects* from the sentence forms they
trained on; a count word they never read ("two green triangles", "a pair of purple circles",
"red circles everywhere") can come out as one object at high confidence. So the number is also
read from the words themselves (:func:`requested_count`), and :func:`check_prediction`, which
:meth:`course_lib.models.planner.Planner.decide` runs on every prediction, refuses

* a request for more than the scene holds (one or two objects), saying so;
* a plan whose number of objects differs from the number the words ask for, naming both: never a
  silently wrong number of objects;
* what the heads call "none", and plans less confident than the planner's threshold. When the
  least sure decision of such a plan is one attribute of one object (or the number of objects,
  where the words already say that number), the :class:`PlanError` carries a ``question`` about
  that attribute with the heads' two most likely values
  (``which colour is "cranberry": red or purple?``); :func:`clarify` writes the answer into the
  request, which is planned again.

Requests are strings of 1 to :data:`MAX_REQUEST_CHARS` characters (:func:`check_request`).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from ..data import shapes, wordings


class PlanError(ValueError):
    """A request or a planner's output that cannot become a Shapes scene; the message says why and
    what is allowed. A refusal for one unsure attribute of one object also asks about it
    (:mod:`course_lib.models.plan_checks`): ``question`` (``which colour is "cranberry": red or
    purple?``), the ``attribute``, its two most likely values (``candidates``) and the request's
    ``word`` it is about, of object ``object_index`` (``plan_checks.clarify(text, answer, error)``
    writes the answer in)."""

    question: str | None = None
    attribute: str | None = None
    candidates: tuple = ()
    word: str | None = None
    object_index: int | None = None


def allowed_words() -> str:
    return "; ".join(f"{a}: {', '.join(shapes.ATTRIBUTE_VALUES[a])}" for a in shapes.ATTRIBUTES)


#: The longest request a planner takes, in characters.
MAX_REQUEST_CHARS = 300

#: Words that say one object, two objects, or more than the scene holds. Phrases are joined by
#: "_" before reading ("a pair of" -> "a_pair_of").
ONE_WORDS = frozenset(("a", "an", "one", "1", "single", "a_single", "another"))
TWO_WORDS = frozenset(
    (
        "two",
        "2",
        "pair",
        "a_pair_of",
        "pair_of",
        "couple",
        "a_couple_of",
        "couple_of",
        "twin",
        "twins",
        "both",
        "duo",
        "twice",
    )
)
_NUMBERS = (
    "three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand million dozen"
).split()
MANY_WORDS = frozenset(
    _NUMBERS
    + "many several multiple numerous countless few dozens hundreds thousands lots trio triple "
    "triplets every everywhere".split()
    + [
        "a_lot_of",
        "lots_of",
        "a_row_of",
        "a_bunch_of",
        "a_few",
        "a_dozen",
        "dozens_of",
        "all_over",
        "a_number_of",
        "a_group_of",
        "a_line_of",
        "a_grid_of",
        "a_crowd_of",
        "plenty_of",
        "tons_of",
        "loads_of",
        "a_handful_of",
    ]
)
_PHRASES = sorted(
    [w for w in ONE_WORDS | TWO_WORDS | MANY_WORDS if "_" in w] + ["how_many"],
    key=len,
    reverse=True,
)
_SEPARATORS = frozenset(("and", ",", ";", "&", "+", "plus"))
_CLOCK = frozenset(("o'clock", "oclock"))
#: Nouns of things in general; with the shape words of both wordings and the things Shapes does
#: not draw they make the nouns :func:`requested_count` counts.
GENERIC_NOUNS = frozenset(("object", "thing", "item", "figure", "shape", "form"))
_TOKEN = re.compile(r"[a-z0-9_]+(?:['-][a-z0-9_]+)*|[,;&+]")
_MANY = 3  # a count that means "more than the scene holds"


@dataclasses.dataclass(frozen=True)
class CountReading:
    """How many objects a request's words ask for: ``n`` = 1 or 2, or None where the words do not
    say (or ask for too many); ``too_many``: more than two; ``words``: the words that said it."""

    n: int | None
    too_many: bool
    words: str


def check_request(text) -> str:
    """A request must be a non-empty string of at most :data:`MAX_REQUEST_CHARS` characters."""
    if not isinstance(text, str):
        raise TypeError(f"a request must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("a request must say what to draw; got an empty string")
    if len(text) > MAX_REQUEST_CHARS:
        raise ValueError(
            f"a request is at most {MAX_REQUEST_CHARS} characters (one or two objects), "
            f"got {len(text)}"
        )
    return text


def _tokens(text: str, phrases: bool = True) -> list[str]:
    """Lower-case words and separators; with ``phrases``, count phrases joined by "_"."""
    text = text.lower().replace("\u2019", "'")
    if phrases:
        for p in _PHRASES:
            text = re.sub(r"\b" + p.replace("_", r"\s+") + r"\b", p, text)
    return _TOKEN.findall(text)


def _split(phrase: str) -> list[str]:
    words = _tokens(phrase, phrases=False)
    return words + [part for w in words if "-" in w for part in w.split("-")]


@functools.lru_cache(maxsize=1)
def _tables() -> dict:
    """Word tables from both wordings (:data:`course_lib.data.wordings.WORDS`): colour words,
    adjectives, nouns, and the tags of every word (which attribute, place, or sentence form)."""
    tags: dict[str, set] = {}

    def tag(phrases, what):
        for ph in phrases:
            for w in _split(re.sub(r"\{\w+\}", " ", ph)):
                tags.setdefault(w, set()).add(what)

    nouns, colour = set(GENERIC_NOUNS), set()
    for v in wordings.VOCABULARIES:
        t = wordings.WORDS[v]
        for key, what in (("size", "size"), ("color", "color"), ("shape", "shape")):
            for opts in t[key].values():
                tag(opts, what)
        tag(t["not_colors"], "color")
        tag(t["not_nouns"], "shape")
        for key, what in (("where", "place"), ("relations", "relation")):
            for opts in t[key].values():
                tag(opts, what)
        for key in ("templates", "noplace", "relation", "absolute", "questions", "chat"):
            tag(t[key], "grammar")
        nouns |= {o.split()[-1] for opts in t["shape"].values() for o in opts}
        nouns |= {w for w in t["not_nouns"] if " " not in w}
        colour |= {w for opts in t["color"].values() for o in opts for w in _split(o)}
        colour |= {w for o in t["not_colors"] for w in _split(o)}
    sizes = {
        w for v in wordings.VOCABULARIES for o in wordings.WORDS[v]["size"].values() for w in o
    }
    vocab = set(shapes.canonical_vocabulary()) | wordings.FUNCTION_WORDS | wordings.SIDE_WORDS
    vocab |= {v for vals in shapes.ATTRIBUTE_VALUES.values() for v in vals}
    vocab |= {w for w in ONE_WORDS | TWO_WORDS if "_" not in w}
    return {
        "nouns": frozenset(nouns - colour),  # "tree green": "tree" names a colour there
        "colour": frozenset(colour),
        "adjectives": frozenset(colour | sizes),
        "tags": tags,
        "vocab": frozenset(vocab),
    }


def _is_plural_of(tok: str, nouns) -> bool:
    return any(
        tok.endswith(cut) and tok[: len(tok) - len(cut)] + add in nouns
        for cut, add in (("ies", "y"), ("es", ""), ("s", ""))
    )


def _noun(toks: list[str], i: int, t: dict) -> tuple[bool, bool]:
    """(is a noun, is plural) for the token at ``i``. A plural is a known noun with -s, -es or
    -ies, "ones" after an adjective, or any word with -s after an adjective or a count word
    ("pink stars", "two widgets"): words outside the vocabulary count too."""
    tok, prev = toks[i], toks[i - 1] if i else ""
    if tok in t["colour"] or prev in ("what", "which"):  # "what shape is ...?" asks, not counts
        return False, False
    if tok in t["nouns"] or (tok == "one" and prev in t["adjectives"]):
        return True, False
    if _is_plural_of(tok, t["nouns"]) or (tok == "ones" and prev in t["adjectives"]):
        return True, True
    after = prev in t["adjectives"] or prev in TWO_WORDS or prev in MANY_WORDS
    plural = len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is", "ous"))
    return (True, True) if after and plural and tok not in t["vocab"] else (False, False)


def _value(tok: str, plural: bool) -> int | None:
    if tok in MANY_WORDS or (tok.isdigit() and int(tok) >= 3):
        return _MANY
    if tok in TWO_WORDS and not (tok == "both" and not plural):  # "both a X and a Y": X + Y
        return 2
    return 1 if tok in ONE_WORDS else None


def _show(toks: list[str]) -> str:
    return re.sub(r" ([,;])", r"\1", " ".join(toks)).replace("_", " ")


def requested_count(text: str) -> CountReading:
    """How many objects the words of a request ask for (the rules, simply):

    * each noun group (consecutive nouns: "square block") is one mention of objects; a mention
      counts what the nearest count word before it says ("a", "one", "a single": 1; "two", "2",
      "a pair of", "a couple of", "twin", "both" + a plural: 2), else 2 for a plural ("circles":
      at least two, and the scene holds two) and 1 for a singular; "a red and a blue circle"
      counts each "and"-separated count word;
    * the mentions add up ("a circle and a square": 2); a lone singular with no count word
      ("circle at the top") does not say;
    * more than two: a number of three or more (but "at six o'clock"), "many", "several",
      "lots of", "a row of", "a bunch of", "everywhere", "all over", "dozens", ... anywhere, or
      mentions adding up to three or more.
    """
    check_request(text)
    t = _tables()
    toks = [w for w in _tokens(text) if w != "how_many"]
    toks = [w for i, w in enumerate(toks) if not (i + 1 < len(toks) and toks[i + 1] in _CLOCK)]
    many = [w for w in toks if _value(w, True) == _MANY]
    mentions, i = [], 0
    while i < len(toks):
        is_noun, plural = _noun(toks, i, t)
        if not is_noun:
            i += 1
            continue
        j = i
        while j + 1 < len(toks) and _noun(toks, j + 1, t)[0]:
            j += 1
        plural = _noun(toks, j, t)[1]
        start = mentions[-1][1] + 1 if mentions else 0
        window, count, first = toks[start:i], 0, None
        seg_start = 0
        for k in range(len(window) + 1):  # each "and"-separated segment: its last count word
            if k < len(window) and window[k] not in _SEPARATORS:
                continue
            for m in range(k - 1, seg_start - 1, -1):
                v = _value(window[m], plural)
                if v:
                    count, first = count + v, m if first is None else first
                    break
            seg_start = k + 1
        said = count > 0 or plural
        count = count or (2 if plural else 1)
        words = _show(window[first:] + toks[i : j + 1]) if first is not None else None
        mentions.append((i, j, count, said, words or _show(toks[i : j + 1])))
        i = j + 1
    total = sum(m[2] for m in mentions)
    if many or total >= _MANY:
        shown = [m[4] for m in mentions if m[2] >= _MANY] or [_show([w]) for w in many]
        return CountReading(None, True, " + ".join(shown or [m[4] for m in mentions]))
    again = [w for w in toks if w in ("twice", "twins")]
    if len(mentions) == 1 and mentions[0][2] == 1 and again:  # "a red circle, twice"
        return CountReading(2, False, f"{mentions[0][4]} ... {again[0]}")
    if len(mentions) >= 2 or any(m[3] for m in mentions):
        return CountReading(total, False, " + ".join(m[4] for m in mentions))
    if not mentions:
        for w in toks:
            if _value(w, True) in (1, 2) and w not in ("a", "an"):
                return CountReading(_value(w, True), False, _show([w]))
    return CountReading(None, False, "")


def _number(n: int) -> str:
    return {1: "one object", 2: "two objects"}.get(n, f"{n} objects")


#: How a question names each attribute.
ATTRIBUTE_NAMES = {
    "size": "size",
    "color": "colour",
    "shape": "shape",
    "row": "row",
    "col": "column",
}


def _spans(text: str) -> list[tuple[str, int, int]]:
    """Words and separators of a text with their character spans (no phrase joining)."""
    low = text.lower().replace("\u2019", "'")
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(low)]


def _noun_positions(toks: list[str]) -> list[int]:
    """Index of the last word of each noun group (see :func:`requested_count`)."""
    t, out = _tables(), []
    for i in range(len(toks)):
        if _noun(toks, i, t)[0] and not (i + 1 < len(toks) and _noun(toks, i + 1, t)[0]):
            out.append(i)
    return out


def unknown_phrase(text: str, attribute: str, index: int = 0, n_objects: int = 1) -> str | None:
    """The request's words a question about ``attribute`` of object ``index`` quotes. The rule,
    simply: words outside the Shapes vocabulary (canonical caption words, attribute values,
    function words, count words) that neither wording uses for another attribute or a sentence
    form ("cranberry", "fuchsia"; not "ball", a shape word, nor "west" in "west of", a relation
    that places both objects), adjacent ones joined ("dark cranberry"); a size or colour word
    must stand before a noun, where adjectives go ("a small orb somewhere": no colour word), and a
    shape word be a noun where the request has one; of two objects' phrases the ``index``-th,
    else the first. None if there is none."""
    if attribute not in shapes.ATTRIBUTES:
        raise ValueError(f"attribute must be one of {shapes.ATTRIBUTES}, got {attribute!r}")
    t = _tables()
    want = "place" if attribute in ("row", "col") else attribute
    toks = [w for w, _, _ in _spans(text)]
    nouns = _noun_positions(toks)
    before = nouns[-1] if nouns and attribute in ("size", "color") else len(toks)
    is_noun = [_noun(toks, i, t)[0] for i in range(len(toks))] + [False]
    phrases, run = [], []
    for i, w in enumerate(toks + [","]):
        tags = t["tags"].get(w, set())
        if (
            w not in t["vocab"]
            and w not in _SEPARATORS
            and (not tags or want in tags)
            and i < before
            and (attribute != "shape" or is_noun[i] or not nouns)
            and not ("relation" in tags and toks[i + 1 : i + 2] in (["of"], ["than"]))
        ):
            run.append(w)
            continue
        if run:
            phrases.append(" ".join(run))
        run = []
    if not phrases:
        return None
    return phrases[index] if n_objects > 1 and index < len(phrases) else phrases[0]


def question_for(text: str, p: dict, count: CountReading | None = None) -> dict | None:
    """The question a refusal asks about prediction ``p`` (of :meth:`Planner.predict`) when its
    least sure decision is one attribute of one object, or the number of objects where the words
    say that number (``count``, :func:`requested_count`) and the least sure attribute is next:
    ``{"question", "attribute", "object" (0-based), "candidates" (the two most likely values),
    "word"}``; else None."""
    attribute, cands = p.get("weakest_attribute"), p.get("candidates") or []
    if attribute not in shapes.ATTRIBUTES or len(cands) < 2:
        return None
    j, n_obj = p.get("weakest_object") or 0, len(p.get("objects", [])) or 1
    settled = count is not None and count.n == len(p.get("objects", []))
    weakest = p.get("weakest", f"{attribute} of object {j + 1}")
    if weakest != f"{attribute} of object {j + 1}" and not (
        weakest == "number of objects" and settled
    ):
        return None
    word = unknown_phrase(text, attribute, j, n_obj)
    values = tuple(c[0] for c in cands[:2])
    what = ATTRIBUTE_NAMES[attribute]
    who = f"object {j + 1}" if n_obj > 1 else "it"
    question = (
        f'which {what} is "{word}": {values[0]} or {values[1]}?'
        if word
        else f"which {what} should {who} be: {values[0]} or {values[1]}?"
    )
    return {
        "question": question,
        "attribute": attribute,
        "object": j,
        "candidates": values,
        "word": word,
    }


def check_prediction(text: str, p: dict, threshold: float) -> None:
    """Raise :class:`PlanError` unless prediction ``p`` of request ``text`` may be drawn: the
    words ask for more than two objects; the heads say it is no Shapes scene; the words ask for
    another number of objects than the plan has; the plan's confidence is below ``threshold``
    (with a ``question`` when one attribute of one object is the least sure decision)."""
    check_request(text)
    count = requested_count(text)
    if count.too_many:
        raise PlanError(
            f"cannot draw {text!r}: the scene holds one or two objects; asked for more than two "
            f"({count.words})"
        )
    if p["kind"] == "none":
        raise PlanError(
            f"{text!r} does not look like a Shapes scene (one or two objects); "
            f"the planner draws {allowed_words()}"
        )
    k = len(p["objects"])
    if count.n is not None and count.n != k:
        o = p["objects"][0]
        thing = f"a {o['size']} {o['color']} {o['shape']}"
        example = (
            f"{thing} on the left and {thing} on the right"
            if count.n == 2
            else shapes.caption(shapes.ShapeSpec(**o))
        )
        raise PlanError(
            f"{text!r} asks for {_number(count.n)} ({count.words}) but the plan has "
            f"{_number(k)}: not drawn; say each object with its own words, for example "
            f"{example!r}"
        )
    if p["confidence"] < threshold:
        ask = question_for(text, p, count)
        err = PlanError(
            f"not sure how to draw {text!r}: the plan's confidence {p['confidence']:.2f} is "
            f"below {threshold:.2f}, least sure of the {p['weakest']} (p = "
            f"{p['weakest_p']:.2f}); "
            + (f"{ask['question']} " if ask else "")
            + f"say it with the Shapes words ({allowed_words()})"
        )
        if ask:
            err.question, err.attribute = ask["question"], ask["attribute"]
            err.candidates, err.word = ask["candidates"], ask["word"]
            err.object_index = ask["object"]
        raise err


def clarify(text: str, answer: str, asked=None) -> str:
    """The request rewritten with the answer to a refusal's question, to be planned again.

    ``answer``: a Shapes value ("red", "small", "circle", "top", "left", ...). ``asked``: the
    :class:`PlanError` that asked (its ``word`` and ``object_index`` are used), the words to
    replace, or None (the phrase :func:`unknown_phrase` finds for the answer's attribute). The
    words are replaced by the answer (``clarify("a cranberry ball", "red") == "a red ball"``);
    with none, a size or colour goes before the object's noun ("a small circle" + "blue": "a small
    blue circle"), anything else at the end ("..., on the left"; not for two objects: a
    ValueError says to give each its own place)."""
    check_request(text)
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, got {type(answer).__name__}")
    value = answer.strip().lower()
    attribute = next((a for a in shapes.ATTRIBUTES if value in shapes.ATTRIBUTE_VALUES[a]), None)
    if attribute is None:
        raise ValueError(f"answer must be a Shapes word ({allowed_words()}), got {answer!r}")
    index = getattr(asked, "object_index", None) or 0
    word = asked if isinstance(asked, str) or asked is None else asked.word
    if word is None and not isinstance(asked, PlanError):
        word = unknown_phrase(text, attribute)
    spans = _spans(text)
    nouns = _noun_positions([w for w, _, _ in spans])
    if word:
        pattern = re.compile(r"(?<![\w'-])" + re.escape(word) + r"(?![\w'-])", re.IGNORECASE)
        if not pattern.search(text):
            raise ValueError(f"{word!r} is not a word of the request {text!r}")
        out = pattern.sub(value, text, count=1)
    elif attribute in ("size", "color") and nouns:
        i = nouns[min(index, len(nouns) - 1)]
        while attribute == "size" and i > 0 and spans[i - 1][0] in _tables()["adjectives"]:
            i -= 1  # a size goes before the colour words
        out = f"{text[: spans[i][1]]}{value} {text[spans[i][1] :]}"
    elif attribute in ("row", "col") and len(nouns) > 1:
        raise ValueError(
            f"no place words of object {index + 1} in {text!r} to replace: give each object its "
            "own place (for example 'a red circle on the left and a blue square on the right')"
        )
    else:
        where = {
            "row": shapes.WHERE.get((value, "center")),
            "col": shapes.WHERE.get(("middle", value)),
        }
        out = f"{text.rstrip()}, {where.get(attribute) or value}"
    out = re.sub(r"\b([Aa])n ([b-df-hj-np-tv-z])", r"\1 \2", out)  # "an red" -> "a red"
    return wordings.with_article(out)
