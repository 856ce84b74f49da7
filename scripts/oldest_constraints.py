"""The oldest versions the course declares, as a pip constraints file (`make test-oldest`).

Every requirement of pyproject.toml's dependencies (and of the extras named on the command line)
is pinned to its lower bound: `torch>=2.3,<3` becomes `torch==2.3`. Packages the course does not
name itself are left to pip, which picks what the pinned ones accept.

    python scripts/oldest_constraints.py test > constraints.txt
    pip install -c constraints.txt -e ".[test]"
    python scripts/oldest_constraints.py --installed test   # lower bound and installed version
"""
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def lower_bounds(extras: list[str]) -> list[str]:
    """`name==X` for every requirement of the dependencies and `extras` that says `>=X`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        if extra not in project["optional-dependencies"]:
            raise ValueError(f"unknown extra {extra!r}: one of "
                             f"{sorted(project['optional-dependencies'])}")
        reqs += project["optional-dependencies"][extra]
    pins = []
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(.*)", req)
        name, spec = m.group(1), m.group(2).split(";")[0]
        low = re.search(r">=\s*([^,\s]+)", spec)
        exact = re.search(r"==\s*([^,\s]+)", spec)
        if low or exact:
            pins.append(f"{name}=={(low or exact).group(1)}")
    return pins


def installed(extras: list[str]) -> list[str]:
    """One line per pinned requirement: its name, lower bound and the version installed here."""
    lines = []
    for pin in lower_bounds(extras):
        name, low = pin.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "not installed"
        lines.append(f"{name:24} >={low:10} installed {have}")
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] == ["--installed"]:
        print("\n".join(installed(argv[1:])))
        return
    print("\n".join(lower_bounds(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
