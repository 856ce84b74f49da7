"""For instructors: every exercise as an nbgrader assignment (course_lib.grading). The metadata of
every chapter is checked here; one chapter is released with `nbgrader generate_assignment` (its
stubs must be `make student`'s) and autograded twice: the instructor copy earns every point, the
student copy none."""
import json

import pytest

from course_lib import grading, student


def _cells(path):
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("path", grading.chapters(), ids=lambda p: p.stem)
def test_every_exercise_and_check_carries_nbgrader_metadata(path):
    cells = _cells(path)
    exercises = [c for c in cells if "exercise" in c["metadata"].get("tags", [])]
    checks = [c for c in cells if "check" in c["metadata"].get("tags", [])]
    assert len(exercises) == len(checks) >= 1
    ids = []
    for k, (ex, ch) in enumerate(zip(exercises, checks), start=1):
        ex_meta, ch_meta = ex["metadata"].get("nbgrader"), ch["metadata"].get("nbgrader")
        assert ex_meta and ex_meta["solution"] and not ex_meta["grade"], \
            f"exercise {k} is not an nbgrader solution cell: run `python -m course_lib.grading " \
            "metadata`"
        assert ch_meta and ch_meta["grade"] and ch_meta["locked"] and ch_meta["points"] > 0
        assert "### BEGIN SOLUTION" in "".join(ex["source"])
        ids += [ex_meta["grade_id"], ch_meta["grade_id"]]
    assert len(set(ids)) == len(ids) and all(i.startswith(path.stem) for i in ids)
    # writing the metadata again changes nothing: the stored notebooks are up to date
    nb = json.loads(path.read_text())
    assert grading.add_metadata(nb, path.stem) == nb


def test_add_metadata_refuses_a_check_without_an_exercise():
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["check"]}, "source": ""}]}
    with pytest.raises(ValueError, match="check without an exercise"):
        grading.add_metadata(nb, "99_x")
    with pytest.raises(ValueError, match="unknown chapters"):
        grading.chapters(["99"])


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    released = grading.generate_assignments(root, grading.chapters(["00"]))
    return root, released[0]


def test_released_assignment_has_the_student_copys_stubs(course):
    _, release = course
    mine = student.student_notebook(json.loads(grading.chapters(["00"])[0].read_text()))
    theirs = json.loads(release.read_text())
    code = [("".join(c["source"])).rstrip() for c in mine["cells"] if c["cell_type"] == "code"]
    released = [("".join(c["source"])).rstrip() for c in theirs["cells"]
                if c["cell_type"] == "code"]
    assert released == code
    assert any(student.STUB in c for c in released)


def test_autograde_gives_the_instructor_copy_every_point_and_the_student_copy_none(
        course, monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    root, release = course
    instructor = root / "source" / "00_tour" / "00_tour.ipynb"
    scores = grading.autograde(root, "00_tour", {"instructor": instructor, "learner": release})
    n_checks = sum("check" in c["metadata"].get("tags", []) for c in _cells(instructor))
    assert scores["instructor"] == (n_checks * grading.POINTS, n_checks * grading.POINTS)
    assert scores["learner"] == (0, n_checks * grading.POINTS)


def test_the_teaching_guide_is_generated_from_the_stored_notebooks(tmp_path):
    """docs/teaching.md is what scripts/docs_teaching.py writes from the stored run times."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    import docs_teaching

    fresh = docs_teaching.write(tmp_path / "teaching.md").read_text()
    assert fresh == (root / "docs" / "teaching.md").read_text(), \
        "run `python scripts/docs_teaching.py` after re-storing a chapter"
    for path in grading.chapters():
        assert f"(../notebooks/{path.name})" in fresh, path.stem
