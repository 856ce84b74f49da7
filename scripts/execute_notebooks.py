"""Execute chapter notebooks in full mode and store them with their outputs (``make execute``).

    python scripts/execute_notebooks.py                 # every notebook in notebooks/
    python scripts/execute_notebooks.py 05 08           # chapters by number (or paths)
    python scripts/execute_notebooks.py 05 --quick      # quick mode only, to try the script
    python scripts/execute_notebooks.py 05 --out /tmp/x # store the executed copy elsewhere

Each notebook runs top to bottom in a fresh kernel (``COURSE_QUICK`` unset, offline), with
``--threads`` torch threads. The script measures the kernel's wall and CPU time, cleans the outputs
(no widget state, no erased progress bars: :func:`course_lib.execution.clean_outputs`), records the
run in ``metadata["course"]`` with the hash of the code cells, rewrites the header's **Time** line
from the measurement (with the quick-mode time of a quick run made first), and regenerates
``docs/chapters.md``. ``--quick`` makes only the quick run and stores nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
import psutil  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from course_lib import __version__, execution  # noqa: E402

# Stored figures at 100 dpi: text set at 9 pt or more stays readable at 100% zoom.
KERNEL_ARGS = ["--InlineBackend.figure_formats={'png'}", "--InlineBackend.rc={'figure.dpi': 100}"]


def notebook_paths(names: list[str]) -> list[Path]:
    every = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    out = []
    for n in names:
        p = Path(n)
        hits = [p.resolve()] if p.suffix == ".ipynb" else [q for q in every if q.name.startswith(f"{int(n):02d}_")]
        if not hits:
            raise SystemExit(f"no notebook {n!r}; chapters: {', '.join(q.name[:2] for q in every)}")
        out += hits
    return out


def kernel_cpu_seconds(client) -> float:
    proc = psutil.Process(client.km.provisioner.process.pid)
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def execute(path: Path, quick: bool, threads: int, timeout: int) -> tuple:
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "COURSE_QUICK"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if quick:
        env["COURSE_QUICK"] = "1"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=KERNEL_ARGS,
                            record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.km = client.create_kernel_manager()
    start = time.perf_counter()
    with client.setup_kernel(env=env):
        # what the kernel reports of its language: JupyterLab writes the same on opening, so an
        # untouched chapter is not marked modified (a stub would be filled in and ask to be saved)
        info = client.wait_for_reply(client.kc.kernel_info())
        nb.metadata["language_info"] = info["content"]["language_info"]
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
        cpu = kernel_cpu_seconds(client)
        client.set_widgets_metadata()          # the widgets' state: clean_outputs keeps their stills
    wall = time.perf_counter() - start
    return nb, wall, cpu


def _json_number(seconds: float):
    """Seconds to one decimal, written as JupyterLab writes them back (95, not 95.0), so that saving
    an untouched notebook changes nothing."""
    x = round(seconds, 1)
    return int(x) if float(x).is_integer() else x


def record(nb, path: Path, wall: float, cpu: float, threads: int, quick: bool) -> dict:
    """The run's record, stored in ``metadata["course"]``."""
    return {"chapter": path.name[:2], "mode": "quick" if quick else "full",
            "wall_seconds": _json_number(wall), "cpu_seconds": _json_number(cpu), "threads": threads,
            "machine": f"{psutil.cpu_count(logical=True)} CPU cores, {platform.machine()}",
            "executed": dt.date.today().isoformat(), "code_sha256": execution.code_hash(nb),
            "library_version": __version__}


def set_time_line(nb, rec: dict) -> None:
    """Write the header's **Time** line from the run's record (keeping a stated reading time)."""
    head = nb.cells[0]
    if not execution.TIME_LINE.search(head.source):
        raise SystemExit(f"chapter {rec['chapter']}: its first cell has no '**Time**:' line to state the measured time")
    line = execution.time_line(rec, execution.minutes_up(rec["quick_wall_seconds"]),
                               execution.reading_minutes(head.source))
    head.source = execution.TIME_LINE.sub(lambda _: line, head.source, count=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", help="chapter numbers or paths (default: all)")
    ap.add_argument("--quick", action="store_true", help="only a quick-mode run, to try the script (stores nothing in notebooks/; "
                    "with --out, writes the quick copy there)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    ap.add_argument("--out", default=None, help="write the executed notebooks to this folder instead "
                                                "(to look at them; the chapter table is not rewritten)")
    ap.add_argument("--retime", action="store_true", help="only rewrite the Time line of stored notebooks "
                                                           "from their recorded runs (nothing executes)")
    args = ap.parse_args(argv)
    if args.retime:
        for path in notebook_paths(args.notebooks):
            nb = nbformat.read(path, as_version=4)
            rec = nb.metadata.get("course", {})
            if rec.get("mode") == "full":
                set_time_line(nb, rec)
                nbformat.write(nb, path)
                print(f"{path.name}: {execution.TIME_LINE.search(nb.cells[0].source).group(0)}")
        return 0
    for path in notebook_paths(args.notebooks):
        quick_nb, quick_wall, _ = execute(path, True, args.threads, args.timeout)
        print(f"{path.name}: quick mode {quick_wall / 60:.1f} min wall", flush=True)
        if args.quick:
            if args.out:                       # the quick copy, to look at (never in notebooks/)
                execution.clean_outputs(quick_nb)
                target = Path(args.out) / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(quick_nb, target)
                print(f"{path.name}: quick copy in {target}", flush=True)
            continue
        print(f"{path.name}: executing in full mode with {args.threads} threads ...", flush=True)
        nb, wall, cpu = execute(path, False, args.threads, args.timeout)
        counts = execution.clean_outputs(nb)
        rec = record(nb, path, wall, cpu, args.threads, False)
        rec["quick_wall_seconds"] = _json_number(quick_wall)
        print(f"{path.name}: {wall / 60:.1f} min wall, {cpu / 60:.1f} CPU-min; {counts}", flush=True)
        nb.metadata["course"] = rec
        set_time_line(nb, rec)
        target = Path(args.out) / path.name if args.out else path
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"{path.name}: stored in {target}, {target.stat().st_size / 1e6:.2f} MB", flush=True)
    if not args.quick and not args.out:
        from docs_chapters import write_chapter_table  # scripts/docs_chapters.py

        print(f"wrote {write_chapter_table()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
