"""Every exercise of every notebook: its check passes on the solution and fails on the student stub.

Convention (docs/authoring.md): cells tagged ``setup`` run first; an ``exercise`` cell holds the
solution between ``### BEGIN SOLUTION`` / ``### END SOLUTION``; the next code cell is its ``check``.
"""
import contextlib
import io
import json
from pathlib import Path

import pytest

from course_lib.student import BEGIN, strip_solutions

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _python(src):
    """Drop IPython-only lines (magics, shell escapes)."""
    return "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))


def _cases():
    for nb_path in NOTEBOOKS:
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            if "exercise" in cell["metadata"].get("tags", []):
                yield pytest.param(nb_path, i, id=f"{nb_path.stem}-cell{i}")


def _run(setup, exercise, check):
    ns = {"__name__": "__exercise__"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(setup, "<setup>", "exec"), ns)
        try:
            exec(compile(exercise, "<exercise>", "exec"), ns)
        except NotImplementedError:
            pass  # a stub at the top level of the exercise cell
        exec(compile(check, "<check>", "exec"), ns)
    return buf.getvalue()


def test_every_notebook_has_a_setup_cell_if_it_has_exercises():
    for nb_path in NOTEBOOKS:
        cells = json.loads(nb_path.read_text())["cells"]
        if any("exercise" in c["metadata"].get("tags", []) for c in cells):
            assert any("setup" in c["metadata"].get("tags", []) for c in cells), nb_path.name


@pytest.mark.parametrize("nb_path,index", list(_cases()))
def test_check_passes_on_solution_and_fails_on_stub(nb_path, index):
    cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
    setup = "\n".join(_python(_src(c)) for c in cells if "setup" in c["metadata"].get("tags", []))
    exercise = _python(_src(cells[index]))
    assert BEGIN in exercise, "an exercise cell must hold a solution block"
    assert index + 1 < len(cells) and "check" in cells[index + 1]["metadata"].get("tags", []), \
        "the code cell after an exercise must be tagged 'check'"
    check = _python(_src(cells[index + 1]))
    solved = _run(setup, exercise, check)
    assert "[PASS]" in solved and "[FAIL]" not in solved, solved
    stub = _run(setup, strip_solutions(exercise), check)
    assert "[FAIL]" in stub and "[PASS]" not in stub, stub
