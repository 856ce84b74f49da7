"""Copy the pictures the README shows out of the stored notebooks (run after ``make execute``).

Every code cell tagged ``readme-picture`` gives its first PNG output to ``docs/img/NN.png`` (NN: its
chapter's number, one picture per chapter), so the README's pictures are the course's own models,
drawn in the notebooks' stored full runs. ``tests/test_notebooks.py`` checks that they still are.

    python scripts/readme_pictures.py
"""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TAG = "readme-picture"
OUT = ROOT / "docs" / "img"


def tagged_picture(path: Path) -> bytes | None:
    """The first PNG output of the notebook's cell tagged ``readme-picture`` (None: no tagged cell)."""
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if TAG in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        return None
    if len(tagged) > 1:
        raise SystemExit(f"{path.name}: {len(tagged)} cells tagged {TAG!r}; one per chapter")
    for out in tagged[0].get("outputs", []):
        if "image/png" in out.get("data", {}):
            return base64.b64decode(out["data"]["image/png"])
    raise SystemExit(f"{path.name}: its {TAG!r} cell has no stored picture: run `make execute` first")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if nbformat.read(path, as_version=4).metadata.get("course", {}).get("mode") != "full":
            print(f"{path.name}: no stored full run yet (make execute NB={path.name[:2]}), skipped")
            continue
        png = tagged_picture(path)
        if png is not None:
            target = OUT / f"{path.name[:2]}.png"
            target.write_bytes(png)
            print(f"{path.name} -> {target.relative_to(ROOT)} ({len(png) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
