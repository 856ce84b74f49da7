"""The library's structure, checked so that the next change cannot undo it: imports run down the
floors with no circle (import-linter's contracts in pyproject.toml), lines fit in 100 characters
and nothing is imported that is not used (ruff), one digit sampler, and no library function reseeds
the caller's random generators."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted((ROOT / "course_lib").rglob("*.py"))


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the course's test extra (pip install -e '.[test]')")
    return found


def test_imports_run_down_the_floors_without_a_circle():
    run = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout, run.stdout[-2000:]


def test_ruff_finds_nothing():
    run = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def _defs(name: str) -> list[str]:
    found = []
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_digits_are_sampled_and_judged_by_one_function_each():
    assert _defs("sample_digits") == [d for d in _defs("sample_digits") if "models/ddpm.py" in d]
    assert len(_defs("sample_digits")) == 1 and len(_defs("judge_digits")) == 1


def test_only_seed_everything_reseeds_torch():
    """Library functions take a seed and run inside runtime.seeded (or use a local Generator):
    torch's global generator is reseeded only by the notebooks' own call, seed_everything."""
    calls = []
    for path in LIBRARY:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "manual_seed" and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "torch"):
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} in {fn.name}")
    assert len(calls) == 1 and calls[0].startswith("course_lib/runtime.py") and calls[0].endswith(
        "in seed_everything"), calls


def test_no_private_name_is_used_across_modules():
    """A helper another module needs has a public name (``module._name`` stays inside its module)."""
    modules = {p.stem for p in LIBRARY} | {"pretrained", "vq", "t2i", "tfm", "attn"}
    used = []
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.value.id != path.stem):
                used.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and node.level:
                used += [f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}"
                         for a in node.names if a.name.startswith("_")]
    assert not used, used
