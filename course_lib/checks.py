"""``[PASS]`` / ``[FAIL]`` checks for the exercises of every chapter (convention taught in
chapter 00).

A check prints one line and returns a :class:`CheckResult`, truthy when it passed; it never raises,
so a student notebook with an unfinished exercise still runs to the end and shows
``[FAIL] ... not implemented yet``. As the last line of a notebook cell a result shows nothing more
than its printed line (no ``Out[n]: True`` under it).
"""

from __future__ import annotations

import contextlib
import sys
import traceback

import torch

from .runtime import grading


class CheckResult:
    """What a check returns: ``bool(result)`` is whether it passed; ``result.name`` says which
    check. Compares equal to ``True``/``False``. In a notebook it displays nothing: the check has
    already printed its ``[PASS]``/``[FAIL]`` line."""

    __slots__ = ("passed", "name")

    def __init__(self, passed: bool, name: str):
        self.passed, self.name = bool(passed), name

    def __bool__(self) -> bool:
        return self.passed

    def __eq__(self, other) -> bool:
        if isinstance(other, (bool, CheckResult)):
            return self.passed == bool(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.passed)

    def __repr__(self) -> str:
        return f"CheckResult({self.name!r}, passed={self.passed})"

    def _ipython_display_(self) -> None:
        """IPython calls this instead of printing ``Out[n]: ...``: nothing to add to the line
        above."""


def _report(ok: bool, name: str, detail: str = "", hint: str = "") -> CheckResult:
    if ok:
        print(f"[PASS] {name}" + (f" ({detail})" if detail else ""))
    else:
        msg = f"[FAIL] {name}" + (f": {detail}" if detail else "")
        if hint:
            msg += f"\n       hint: {hint}"
        print(msg)
        if grading():  # nbgrader scores a check cell with stderr output as zero points
            print(msg.splitlines()[0], file=sys.stderr)
    return CheckResult(ok, name)


def check(condition, name: str, hint: str = "", detail: str = "") -> CheckResult:
    """Pass when ``condition`` is truthy."""
    return _report(bool(condition), name, detail, hint)


def check_close(
    actual, expected, name: str, atol: float = 1e-5, rtol: float = 1e-4, hint: str = ""
) -> CheckResult:
    """Pass when two numbers or tensors agree within tolerance (and have the same shape)."""
    try:
        a = torch.as_tensor(actual, dtype=torch.float64)
        e = torch.as_tensor(expected, dtype=torch.float64)
    except Exception as exc:  # not numbers at all
        return _report(False, name, f"could not compare: {exc}", hint)
    if a.shape != e.shape:
        return _report(False, name, f"shape {tuple(a.shape)}, expected {tuple(e.shape)}", hint)
    err = (a - e).abs().max().item() if a.numel() else 0.0
    ok = bool(torch.allclose(a, e, atol=atol, rtol=rtol))
    return _report(ok, name, f"max abs error {err:.2e}", hint)


class _NotYours(AssertionError):
    """Raised when a check finds the exercise calling the library's own answer."""


@contextlib.contextmanager
def forbid(*targets):
    """While the block runs, each ``(module, "name")`` in ``targets`` is replaced by a function that
    fails the check: an exercise that only calls the course's own implementation does not pass.
    (The check computes what it compares with before the block, or keeps the original function in
    a variable.)"""
    saved = []
    try:
        for module, name in targets:
            original = getattr(module, name)
            label = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"

            def refuse(*args, _label=label, **kwargs):
                raise _NotYours(f"the exercise called the course's own {_label}: write it yourself")

            saved.append((module, name, original))
            setattr(module, name, refuse)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def yours_or_reference(result, yours, reference, what: str):
    """After an exercise's check: ``yours`` when the check passed, else the course's ``reference``,
    saying so in one visible line, so that a learner who is stuck can run the rest of the chapter
    (and come back to the exercise later)."""
    if result:
        return yours
    print(f"[....] the cells below use the course's {what} until this check passes")
    return reference


def run_check(name: str, fn, hint: str = "", forbid_calls=()) -> CheckResult:
    """Run ``fn()``, which asserts what must hold. An ``AssertionError`` or any other error is a
    ``[FAIL]`` (with the message); ``NotImplementedError`` says the exercise is not done yet. When
    ``fn`` returns a string, the ``[PASS]`` line shows it (what was measured). ``forbid_calls``:
    ``(module, "name")`` pairs the exercise may not call while ``fn`` runs (:func:`forbid`)."""
    try:
        with forbid(*forbid_calls):
            detail = fn()
    except NotImplementedError:
        return _report(
            False, name, "not implemented yet (replace the `raise NotImplementedError`)", hint
        )
    except AssertionError as exc:
        return _report(False, name, str(exc) or "an assertion failed", hint)
    except Exception as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return _report(False, name, f"raised {last}", hint)
    return _report(True, name, detail if isinstance(detail, str) else "")
