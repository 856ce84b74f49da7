"""Colour names and their colours: the data behind chapter 06's colour words.

matplotlib ships two tables of colour names with their RGB: the XKCD colour survey (949 names that
people typed for colours they were shown, ``matplotlib.colors.XKCD_COLORS``) and the 148 CSS4 names.
:func:`colour_names` reads both; :func:`rgb_to_lab` and :func:`delta_e` measure colour differences
(CIE76 ΔE in CIELAB); :func:`nearest_shapes_colour` names the Shapes colour (``shapes.md``) nearest
to any RGB, and :func:`shapes_colour_of` / :func:`shapes_colour_names` / :func:`other_colour_names`
sort the names into those of a Shapes colour and those of colours Shapes cannot draw
(:mod:`course_lib.data.wordings` builds its colour vocabularies from them). The colour probe that
asks a language model about these names is :mod:`course_lib.colours`.
"""

from __future__ import annotations

import re

import numpy as np

from . import shapes


# --------------------------------------------------------------------------------------------
# sRGB -> CIELAB (D65), written out; tests check it against scikit-image
# --------------------------------------------------------------------------------------------
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb) -> np.ndarray:
    """sRGB in [0, 1], shape [..., 3] -> CIELAB [..., 3] (L in 0..100), D65 white."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0, 1)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)  # undo the gamma
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE_D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def delta_e(rgb_a, rgb_b) -> np.ndarray:
    """CIE76 colour difference ΔE between sRGB colours [..., 3] (Euclidean distance in Lab)."""
    return np.linalg.norm(rgb_to_lab(rgb_a) - rgb_to_lab(rgb_b), axis=-1)


# --------------------------------------------------------------------------------------------
# Colour names
# --------------------------------------------------------------------------------------------
def _css_words(name: str) -> str:
    """CSS4 names are run together ("darkslateblue"): split the common prefixes off."""
    for prefix in (
        "medium",
        "light",
        "dark",
        "pale",
        "deep",
        "dim",
        "dodger",
        "forest",
        "lawn",
        "lime",
        "sky",
        "steel",
        "slate",
        "royal",
        "cornflower",
        "cadet",
        "powder",
        "midnight",
        "navajo",
        "antique",
        "sea",
        "spring",
        "yellow",
        "olive",
        "mint",
        "lemon",
        "light",
        "hot",
        "blue",
        "indian",
        "rebecca",
        "orange",
        "green",
        "lavender",
        "misty",
        "old",
        "papaya",
        "peach",
        "rosy",
        "saddle",
        "sandy",
        "white",
        "ghost",
        "floral",
        "alice",
        "blanched",
        "burly",
        "lightgoldenrod",
    ):
        if name.startswith(prefix) and len(name) > len(prefix) + 2:
            return prefix + " " + _css_words(name[len(prefix) :])
    return name


def colour_names(sources: tuple = ("xkcd", "css4")) -> list[tuple[str, tuple[float, float, float]]]:
    """``[(name, (r, g, b)), ...]`` from matplotlib's XKCD survey and CSS4 tables, names lower-case
    with single spaces (CSS4's run-together names split at common prefixes), one entry per name."""
    import matplotlib.colors as mcolors

    allowed = ("xkcd", "css4")
    if isinstance(sources, str) or not set(sources) <= set(allowed):
        raise ValueError(f"sources must be a tuple drawn from {allowed}, got {sources!r}")
    out: dict[str, tuple] = {}
    if "xkcd" in sources:
        for key, hexa in mcolors.XKCD_COLORS.items():
            name = re.sub(r"\s+", " ", key.removeprefix("xkcd:").replace("/", " ").strip().lower())
            out.setdefault(name, mcolors.to_rgb(hexa))
    if "css4" in sources:
        for key, hexa in mcolors.CSS4_COLORS.items():
            out.setdefault(_css_words(key), mcolors.to_rgb(hexa))
    return sorted(out.items())


def shapes_palette() -> tuple[list[str], np.ndarray]:
    """The six Shapes colour names and their RGB [6, 3] (``shapes.md``)."""
    names = list(shapes.ATTRIBUTE_VALUES["color"])
    return names, np.array([shapes.COLORS[n] for n in names], dtype=np.float64)


def nearest_shapes_colour(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For colours [n, 3]: (index of the nearest Shapes colour [n], its ΔE [n], ΔE of the second
    nearest [n])."""
    _, palette = shapes_palette()
    d = delta_e(np.asarray(rgb, dtype=np.float64)[:, None, :], palette[None, :, :])  # [n, 6]
    order = np.sort(d, axis=1)
    return d.argmin(1), order[:, 0], order[:, 1]


# --------------------------------------------------------------------------------------------
# Which colour names are Shapes colours
# --------------------------------------------------------------------------------------------
#: Words for colours Shapes does not draw (also with -ish or -y: "brownish", "pinky"). A name with
#: one of them is never taken for a Shapes colour, whatever its hue ("brown" is a dark orange by
#: hue).
OTHER_COLOUR_WORDS = frozenset(
    "pink brown grey gray black white teal turquoise cyan aqua beige khaki tan cream creme ecru "
    "silver magenta maroon burgundy olive mauve taupe puce".split()
)
#: Below this chroma a red is a pink and a yellow a beige (:func:`shapes_colour_of`).
PALE_CHROMA = 50.0
#: Names of the XKCD survey a course should not teach from.
CRUDE_WORDS = frozenset("shit poo poop puke vomit barf booger snot piss diarrhea bile".split())


def lch(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sRGB [..., 3] -> (lightness L, chroma C, hue angle h in degrees), from CIELAB."""
    lab = rgb_to_lab(rgb)
    return (
        lab[..., 0],
        np.hypot(lab[..., 1], lab[..., 2]),
        np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360,
    )


def name_words(name: str) -> list[str]:
    """The lower-case words of a colour name ("Fire-engine red" -> ["fire", "engine", "red"])."""
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


def _root(word: str) -> str:
    """'brownish' -> 'brown', 'pinky' -> 'pink', 'reddish' -> 'red', 'purply' -> 'purple'."""
    for suffix in ("dish", "ish", "ey", "y"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            return {"purpl": "purple", "blu": "blue", "orang": "orange", "yellow": "yellow"}.get(
                stem, stem
            )
    return word


def shapes_colour_of(
    name: str, rgb, min_chroma: float = 30.0, max_hue_gap: float = 30.0, min_margin: float = 10.0
) -> str | None:
    """The Shapes colour a colour name means, or ``None`` where that is not clear.

    Colour names name a hue, and the six Shapes colours are six hues (CIELAB hue angle: red 37°,
    orange 64°, yellow 99°, green 138°, blue 299°, purple 318°). A name counts as Shapes colour
    ``c`` when its colour is chromatic (chroma at least ``min_chroma``: no greys), its hue is within
    ``max_hue_gap`` degrees of ``c``'s and at least ``min_margin`` degrees nearer to it than to any
    other Shapes colour, and the name has no word of another colour: none of
    :data:`OTHER_COLOUR_WORDS` ("brownish red"), and no other Shapes colour ("orange red").
    English has basic colour words next to three of the six: a pale red is *pink* and a pale yellow
    *beige* (so red and yellow need chroma at least :data:`PALE_CHROMA`), a dark orange is *brown*
    and a dark yellow *olive* (so they need lightness L at least 55), and a red almost black
    (L < 25) is no longer red."""
    palette_names, palette = shapes_palette()
    _, _, hues = lch(palette)
    L, C, h = (float(v) for v in lch(np.asarray(rgb, dtype=np.float64)))
    gaps = np.abs((h - hues + 180) % 360 - 180)  # [6] degrees
    order = np.argsort(gaps)
    colour = palette_names[order[0]]
    words = name_words(name)
    roots = set(words) | {_root(w) for w in words}
    named = {
        c for c in palette_names for w in words if w.startswith(c) or w.endswith(c) or _root(w) == c
    }
    if (
        C < min_chroma
        or gaps[order[0]] > max_hue_gap
        or gaps[order[1]] - gaps[order[0]] < min_margin
        or roots & OTHER_COLOUR_WORDS
        or roots & CRUDE_WORDS
        or named - {colour}
    ):
        return None
    if colour in ("red", "yellow") and C < PALE_CHROMA:  # pink, beige
        return None
    if (colour in ("orange", "yellow") and L < 55) or (
        colour == "red" and L < 25
    ):  # brown, olive, near black
        return None
    return colour


def shapes_colour_names(exclude: tuple | set | frozenset = ()) -> dict[str, list[str]]:
    """``{Shapes colour: [colour names]}``: every XKCD and CSS4 name (:func:`colour_names`) that
    :func:`shapes_colour_of` maps to one of the six, except names with a word that contains a word
    of ``exclude`` (excluding "butter" drops "butterscotch" too)."""
    exclude = tuple(exclude)
    out = {c: [] for c in shapes.ATTRIBUTE_VALUES["color"]}
    for name, rgb in colour_names():
        if any(x in w for w in name_words(name) for x in exclude):
            continue
        colour = shapes_colour_of(name, rgb)
        if colour is not None:
            out[colour].append(name)
    return out


def other_colour_names(exclude: tuple | set | frozenset = ()) -> list[str]:
    """XKCD and CSS4 names of colours Shapes does not draw: names with a word of
    :data:`OTHER_COLOUR_WORDS` ("salmon pink", "dark taupe", "battleship grey") and no Shapes colour
    word ("brownish red" is left out: half a Shapes colour is not a lesson in refusing), except
    names with a word that contains a word of ``exclude``. Chapter 06's planner learns to refuse
    them."""
    exclude, palette_names = tuple(exclude), shapes.ATTRIBUTE_VALUES["color"]
    out = []
    for name, _ in colour_names():
        words = name_words(name)
        roots = set(words) | {_root(w) for w in words}
        if (
            roots & OTHER_COLOUR_WORDS
            and not roots & CRUDE_WORDS
            and not any(c in w for w in roots for c in palette_names)
            and not any(x in w for w in words for x in exclude)
        ):
            out.append(name)
    return out
