"""A learner who is stuck can go on: the student copy of a chapter (every exercise unsolved) runs to
the end in quick mode with no error, each failed check saying that the cells after it use the
course's reference instead."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course_lib import student

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ["01_gan", "10_images_as_tokens", "11_editing"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_runs_to_the_end(chapter, tmp_path):
    out = tmp_path / "student"
    student.make_student_copies([ROOT / "notebooks" / f"{chapter}.ipynb"], out)
    path = out / f"{chapter}.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, COURSE_QUICK="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.km = client.create_kernel_manager()
    with client.setup_kernel(env=env):
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
    errors = [(i, o.get("ename"), o.get("evalue", "")[:200]) for i, c in enumerate(nb.cells)
              if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{chapter}: cells that stopped with an error in the student copy: {errors}"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert text.count("[FAIL]") >= 3, "every exercise of the student copy should fail its check"
    assert "the cells below use the course's" in text
