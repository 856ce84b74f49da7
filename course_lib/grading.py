"""The course's exercises as nbgrader assignments, for instructors (docs/teaching.md).

Every exercise is a pair of cells: the learner's code, tagged ``exercise``, with the solution
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (chapter 00), and its check, tagged
``check``, which prints ``[PASS]`` or ``[FAIL]``. :func:`add_metadata` gives both cells nbgrader's
metadata: the exercise is a *solution* cell, the check a locked, autograded *test* cell worth
:data:`POINTS`; grade ids are stable (``01_gan-exercise-2``, ``01_gan-check-2``). Under
``nbgrader autograde`` a failed check also writes its ``[FAIL]`` line to stderr
(:func:`course_lib.runtime.grading`), which nbgrader scores as zero; the chapter still runs on with
the course's reference, as it does for a learner.

    python -m course_lib.grading metadata                 # nbgrader metadata into notebooks/
    python -m course_lib.grading assignments [NN ...]     # course folder grading/ + its release

``assignments`` writes an nbgrader course folder (``grading/``: ``nbgrader_config.py`` and
``source/<chapter>/<chapter>.ipynb``) and runs ``nbgrader generate_assignment`` for each chapter;
the released notebooks hold the same stubs as ``make student``'s copies.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from .runtime import REPO_ROOT, environment_for
from .student import STUB

#: Points of each exercise's check.
POINTS = 1
SCHEMA_VERSION = 3
#: Tags that mark an exercise's two cells.
EXERCISE, CHECK = "exercise", "check"
CONFIG = f'''c = get_config()  # noqa: F821 (nbgrader's config loader defines it)
c.CourseDirectory.course_id = "image-generation-course"
# the same stub as `make student` (course_lib.student.STUB)
c.ClearSolutions.code_stub = {{"python": {STUB!r}}}
# the chapters' longest cells take minutes on a CPU
c.Execute.timeout = 1800
'''


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def add_metadata(nb: dict, chapter: str) -> dict:
    """A copy of ``nb`` whose exercise and check cells carry nbgrader's metadata (see the module
    docstring); ``chapter`` names the grade ids (``"01_gan"``). A check cell must follow its
    exercise cell: anything else raises ``ValueError``."""
    if not isinstance(chapter, str) or not chapter:
        raise TypeError("chapter must be a non-empty string such as '01_gan'")
    nb = json.loads(json.dumps(nb))
    k, open_exercise = 0, False
    for i, cell in enumerate(nb["cells"]):
        tags = _tags(cell)
        if EXERCISE in tags:
            if open_exercise:
                raise ValueError(
                    f"{chapter}: cell {i} starts an exercise before the last one's check")
            k, open_exercise = k + 1, True
            cell["metadata"]["nbgrader"] = {
                "grade": False, "grade_id": f"{chapter}-exercise-{k}", "locked": False,
                "schema_version": SCHEMA_VERSION, "solution": True, "task": False,
            }
        elif CHECK in tags:
            if not open_exercise:
                raise ValueError(f"{chapter}: cell {i} is a check without an exercise before it")
            open_exercise = False
            cell["metadata"]["nbgrader"] = {
                "grade": True, "grade_id": f"{chapter}-check-{k}", "locked": True,
                "points": POINTS, "schema_version": SCHEMA_VERSION, "solution": False,
                "task": False,
            }
    if open_exercise:
        raise ValueError(f"{chapter}: the last exercise has no check cell after it")
    return nb


def chapters(selection=None) -> list[Path]:
    """The chapter notebooks, all or those whose number or name is in ``selection``."""
    paths = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return paths
    chosen = [p for p in paths if p.stem in selection or p.stem[:2] in selection]
    if len(chosen) != len(set(selection)):
        raise ValueError(f"unknown chapters in {sorted(selection)}; "
                         f"known: {', '.join(p.stem for p in paths)}")
    return chosen


def write_metadata(paths=None) -> list[Path]:
    """Write :func:`add_metadata` into each notebook (default: every chapter); returns the files
    that changed."""
    changed = []
    for p in paths or chapters():
        p = Path(p)
        nb = json.loads(p.read_text())
        new = add_metadata(nb, p.stem)
        if new != nb:
            p.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n")
            changed.append(p)
    return changed


def _nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader runs its database migrations with the `alembic` script of the same environment
    env = environment_for(Path(sys.executable).parent)
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_course(root, paths=None) -> Path:
    """An nbgrader course folder at ``root``: ``nbgrader_config.py`` and one assignment per chapter
    (``source/01_gan/01_gan.ipynb``, the instructor copy with nbgrader's metadata)."""
    root = Path(root)
    (root / "source").mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG)
    for p in paths or chapters():
        p = Path(p)
        folder = root / "source" / p.stem
        folder.mkdir(exist_ok=True)
        nb = add_metadata(json.loads(p.read_text()), p.stem)
        (folder / p.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return root


def generate_assignments(root, paths=None) -> list[Path]:
    """:func:`write_course`, then ``nbgrader generate_assignment`` for each chapter; returns the
    released student notebooks (``release/01_gan/01_gan.ipynb``)."""
    root = write_course(root, paths)
    out = []
    for p in paths or chapters():
        stem = Path(p).stem
        _nbgrader(root, "generate_assignment", stem, "--force")
        out.append(root / "release" / stem / f"{stem}.ipynb")
    return out


def autograde(root, chapter: str, submissions: dict) -> dict:
    """Autograde ``submissions`` (student id -> notebook path) of ``chapter`` in the course folder
    ``root`` (made by :func:`generate_assignments`) with ``nbgrader autograde``; returns student id
    -> ``(score, max_score)``."""
    from nbgrader.api import Gradebook

    root = Path(root)
    for student, path in submissions.items():
        folder = root / "submitted" / student / chapter
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"{chapter}.ipynb")
    _nbgrader(root, "autograde", chapter, "--force", "--create")
    scores = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for student in submissions:
            sub = gb.find_submission(chapter, student)
            scores[student] = (sub.score, sub.max_score)
    return scores


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("metadata", "assignments"))
    parser.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    parser.add_argument("--out", default=str(REPO_ROOT / "grading"),
                        help="the course folder for assignments (default: grading/)")
    args = parser.parse_args(argv)
    paths = chapters(args.chapters)
    if args.what == "metadata":
        for p in write_metadata(paths):
            print(f"nbgrader metadata written into {p}")
        return 0
    for p in generate_assignments(args.out, paths):
        print(f"released {p}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
