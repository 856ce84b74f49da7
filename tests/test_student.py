import json
import subprocess
import sys

import pytest

from course_lib.student import STUB, student_notebook, strip_solutions


def test_strip_solutions_keeps_indentation_and_surroundings():
    src = ("def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
           "    ### END SOLUTION\n\nprint('after')\n")
    out = strip_solutions(src)
    assert out == f"def f(x):\n    '''doc'''\n    {STUB}\n\nprint('after')\n"
    ns = {}
    exec(out, ns)  # the stub is valid Python that raises when called
    with pytest.raises(NotImplementedError):
        ns["f"](1)
    assert strip_solutions("a = 1\n") == "a = 1\n"


@pytest.mark.parametrize("bad", ["### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n"])
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError):
        strip_solutions(bad)


def _nb(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_student_notebook_and_cli(tmp_path):
    nb = _nb([
        {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
        {"cell_type": "code", "metadata": {"tags": ["exercise"]}, "execution_count": 3,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "secret"}],
         "source": ["def g():\n", "    ### BEGIN SOLUTION\n", "    return 42\n", "    ### END SOLUTION\n"]},
        {"cell_type": "markdown", "metadata": {"tags": ["solution"]}, "source": "The answer is 42."},
    ])
    st = student_notebook(nb)
    assert len(st["cells"]) == 2
    code = st["cells"][1]
    assert "42" not in code["source"] and STUB in code["source"]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert "42" in "".join(nb["cells"][1]["source"])  # the instructor copy is untouched
    src = tmp_path / "x.ipynb"
    src.write_text(json.dumps(nb))
    out = tmp_path / "student"
    subprocess.run([sys.executable, "-m", "course_lib.student", "--out", str(out), str(src)], check=True)
    written = json.loads((out / "x.ipynb").read_text())
    assert written["cells"][1]["source"] == code["source"]
