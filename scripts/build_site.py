"""Build the course's website into ``site/`` (``make site``): every chapter page from its stored
notebook (pictures, tables, code; nothing is executed), the README as the front page, the chapter
table and the teaching guide, with navigation, search and a download button per page. Sphinx with
MyST-NB and the Sphinx Book Theme; the theme's assets ship inside its package, so the build reads
nothing from the network.

    python scripts/build_site.py [--out site]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONF = '''project = "Image generation, from GANs to language models that draw"
author = "the course's authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"          # the stored outputs of one full run, as they are
html_theme = "sphinx_book_theme"
html_title = "Image generation: GANs to language models that draw, and how to make it fast"
html_theme_options = {
    "use_download_button": True,   # each page offers its source notebook (.ipynb)
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path = []
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
exclude_patterns = ["_build"]
'''


def _front_page(readme: str) -> str:
    """README.md as the site's index: links to files that are not pages point at the repository
    file names (they stay readable), and a table of contents lists every page."""
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    toc = ["", "```{toctree}", ":maxdepth: 1", ":caption: Chapters", ""]
    toc += [f"notebooks/{c}" for c in chapters]
    toc += ["```", "", "```{toctree}", ":maxdepth: 1", ":caption: About the course", "",
            "docs/chapters", "docs/teaching", "```", ""]
    return readme + "\n" + "\n".join(toc)


def stage(src: Path) -> Path:
    """The site's source folder: conf.py, index.md (the README), docs/ pages, notebooks, pictures."""
    (src / "notebooks").mkdir(parents=True)
    (src / "docs").mkdir()
    (src / "conf.py").write_text(CONF)
    (src / "index.md").write_text(_front_page((ROOT / "README.md").read_text()))
    for name in ("chapters.md", "teaching.md"):
        shutil.copy(ROOT / "docs" / name, src / "docs" / name)
    shutil.copytree(ROOT / "docs" / "img", src / "docs" / "img")
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, src / "notebooks" / nb.name)
    return src


def build(out: Path = ROOT / "site") -> Path:
    """Build the site into ``out``; returns ``out / "index.html"``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = stage(Path(tmp) / "src")
        cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "2", str(src), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}")
    return out / "index.html"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "site"))
    print(build(Path(parser.parse_args().out)))
