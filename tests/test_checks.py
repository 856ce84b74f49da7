"""The [PASS]/[FAIL] checks every chapter's exercises use (course_lib.checks)."""
import torch
from IPython.core.formatters import DisplayFormatter

from course_lib.checks import CheckResult, check, check_close, run_check


def test_check_prints_pass_and_fail(capsys):
    assert check(True, "ok") == True  # noqa: E712 (a CheckResult compares equal to a bool)
    assert check(False, "bad", hint="try again") == False  # noqa: E712
    out = capsys.readouterr().out
    assert "[PASS] ok" in out and "[FAIL] bad" in out and "try again" in out


def test_check_close(capsys):
    assert check_close(torch.ones(3), torch.ones(3) + 1e-7, "close")
    assert not check_close(torch.ones(3), torch.ones(3) * 1.1, "far")
    assert not check_close(torch.ones(3), torch.ones(4), "shape")
    assert not check_close("abc", 1.0, "not a number")
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 1 and out.count("[FAIL]") == 3 and "shape (3,)" in out


def test_run_check_never_raises(capsys):
    def todo():
        raise NotImplementedError
    def wrong():
        assert 1 == 2, "one is not two"
    def crash():
        return [][1]
    assert not run_check("todo", todo)
    assert not run_check("wrong", wrong)
    assert not run_check("crash", crash)
    assert run_check("fine", lambda: "all good")
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "one is not two" in out and "IndexError" in out
    assert "[PASS] fine (all good)" in out


def test_a_check_as_the_last_line_of_a_cell_shows_no_out_prompt(capsys):
    """IPython shows nothing for a result whose _ipython_display_ draws nothing: no 'Out[n]: True'
    under the [PASS] line. A plain bool would be shown."""
    formatter = DisplayFormatter()
    result = run_check("quiet", lambda: None)
    assert isinstance(result, CheckResult) and result.name == "quiet"
    assert formatter.format(result) == ({}, {})
    assert formatter.format(True)[0].get("text/plain") == "True"
    assert "passed=True" in repr(result) and "passed=False" in repr(check(False, "x"))
    assert {check(True, "a"), True} == {True}                       # hashable like the bool it is


def test_forbid_fails_an_exercise_that_calls_the_library_and_restores_it(capsys):
    import types

    lib = types.ModuleType("course_lib.models.toy")
    lib.loss = lambda x: x * 2
    original = lib.loss
    reference = lib.loss(3)

    def lazy(x):                      # an "exercise" that only calls the library
        return lib.loss(x)

    def honest(x):
        return x * 2

    assert not run_check("lazy", lambda: lazy(3) == reference, forbid_calls=[(lib, "loss")])
    assert run_check("honest", lambda: honest(3) == reference, forbid_calls=[(lib, "loss")])
    assert lib.loss is original
    out = capsys.readouterr().out
    assert "[FAIL] lazy" in out and "toy.loss: write it yourself" in out and "[PASS] honest" in out


def test_yours_or_reference_says_when_it_falls_back(capsys):
    from course_lib.checks import yours_or_reference

    mine, ref = object(), object()
    assert yours_or_reference(check(True, "ok"), mine, ref, "reference") is mine
    assert yours_or_reference(check(False, "bad"), mine, ref, "reference `gan.step`") is ref
    out = capsys.readouterr().out
    assert out.count("the cells below use the course's reference `gan.step`") == 1
