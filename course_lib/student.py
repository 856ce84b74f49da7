"""Make the student copy of the course's notebooks (convention taught in chapter 00).

In an instructor notebook each exercise's solution sits between the lines ``### BEGIN SOLUTION`` and
``### END SOLUTION``. The student copy replaces each such block by
``raise NotImplementedError(...)`` at the same indentation, drops cells tagged ``solution``, and
clears every output::

    python -m course_lib.student                       # notebooks/*.ipynb -> student/
    python -m course_lib.student --out DIR nb1.ipynb nb2.ipynb
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .runtime import REPO_ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your solution here")'
_BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")


def strip_solutions(source: str) -> str:
    """Replace every BEGIN/END SOLUTION block of a cell's source by the stub (same indentation).
    Raises ``ValueError`` on a block that is opened and not closed (or closed and not opened)."""
    out, indent, inside = [], "", False
    for line in source.splitlines(keepends=True):
        m = _BEGIN_RE.match(line.rstrip("\n"))
        if m:
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION'")
            inside, indent = True, m.group(1)
            out.append(f"{indent}{STUB}\n")
        elif line.strip() == END:
            if not inside:
                raise ValueError("'### END SOLUTION' without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without END")
    return "".join(out)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def student_notebook(nb: dict) -> dict:
    """The student version of a notebook (as parsed JSON)."""
    nb = json.loads(json.dumps(nb))  # deep copy
    cells = []
    for cell in nb["cells"]:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell["cell_type"] == "code":
            src = _source(cell)
            if BEGIN in src:
                cell["source"] = strip_solutions(src)
            cell["outputs"] = []
            cell["execution_count"] = None
        cells.append(cell)
    nb["cells"] = cells
    return nb


def make_student_copies(paths=None, out: Path | str | None = None) -> list[Path]:
    """Write the student copy of each notebook (default: every ``notebooks/*.ipynb``) into ``out``
    (default ``student/``). Returns the written paths."""
    paths = [Path(p) for p in paths] if paths else sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    out = Path(out) if out else REPO_ROOT / "student"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        nb = json.loads(Path(p).read_text())
        target = out / Path(p).name
        target.write_text(json.dumps(student_notebook(nb), indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.student",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "notebooks", nargs="*", help="instructor notebooks (default: notebooks/*.ipynb)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: student/)")
    args = parser.parse_args(argv)
    for p in make_student_copies(args.notebooks or None, args.out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
