"""Every chapter as a learner finds it: one sitting long, sections numbered in order, stored pictures
legible at 100% zoom, and words that speak about the course rather than about how it was made."""
from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELLS = 70
MIN_DPI = 100
# Words about how the course was made, not about what a learner does or sees.
DEVELOPMENT_WORDING = re.compile(
    r"make\s+execute|tests/test_|the\s+issue\b|the\s+seeds\b|these\s+machines|\bH100\b|NOT\s+met|"
    r"acceptance (?:target|criteria)|stored run|the reviewer",
    re.IGNORECASE,
)

# Chapters known to fail a check until they are re-stored (strict: the mark fails once they pass);
# empty while every chapter passes.
STORED_AT_72_DPI: set[str] = set()
SECTION_GAP: set[str] = set()


def _chapters(known_failing: set[str], reason: str) -> list:
    """Every chapter, those in ``known_failing`` marked as failing until re-stored (strict: the mark
    itself fails once the chapter passes)."""
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=reason))
        if p.stem in known_failing
        else p
        for p in NOTEBOOKS
    ]


def _png_dpi(png: bytes) -> float | None:
    """Horizontal resolution a PNG declares in its pHYs chunk (None: it declares none)."""
    at = png.find(b"pHYs")
    if at < 0:
        return None
    per_unit, _, unit = struct.unpack(">IIB", png[at + 4 : at + 13])
    return per_unit * 0.0254 if unit == 1 else None


def _section_numbers(nb) -> list[int]:
    numbers = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            numbers += [int(m) for m in re.findall(r"^## (\d+)\. ", cell.source, re.MULTILINE)]
    return numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_chapter_is_one_sitting(path):
    n = len(nbformat.read(path, as_version=4).cells)
    assert n <= MAX_CELLS, f"{path.name}: {n} cells; split it (at most {MAX_CELLS})"


@pytest.mark.parametrize("path", _chapters(SECTION_GAP, "section 3 missing"), ids=lambda p: p.stem)
def test_sections_are_numbered_without_gaps(path):
    numbers = _section_numbers(nbformat.read(path, as_version=4))
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: sections {numbers}"


def test_section_check_finds_a_gap():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"## {k}. A section") for k in (1, 2, 4)]
    )
    assert _section_numbers(nb) == [1, 2, 4]


@pytest.mark.parametrize("path", _chapters(STORED_AT_72_DPI, "stored at 72 dpi"), ids=lambda p: p.stem)
def test_stored_pictures_are_at_least_100_dpi(path):
    low = []
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                dpi = _png_dpi(base64.b64decode(png))
                if dpi is None or dpi < MIN_DPI - 0.5:
                    low.append((i, dpi))
    assert not low, f"{path.name}: pictures below {MIN_DPI} dpi (cell, dpi): {low}"


def test_dpi_reader_reads_what_matplotlib_writes():
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dpi in (72, 100):
        fig = plt.figure(figsize=(1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        assert round(_png_dpi(buf.getvalue())) == dpi


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_words_speak_about_the_course(path):
    hits = []
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        texts = [cell.source] if cell.cell_type == "markdown" else []
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") if isinstance(out.get("text", ""), str) else "")
            texts.append(str(out.get("data", {}).get("text/plain", "")))
        for text in texts:
            hits += [(i, m.group(0)) for m in DEVELOPMENT_WORDING.finditer(text)]
    assert not hits, f"{path.name}: development wording (cell, words): {hits}"


def test_wording_check_finds_words_about_how_the_course_was_made():
    assert DEVELOPMENT_WORDING.search("see tests/test_flow.py for the grid")
    assert DEVELOPMENT_WORDING.search("target NOT  met")
    assert not DEVELOPMENT_WORDING.search("the seed of the sampler, and the noise it draws")
