"""The chapters' stored full runs: every notebook is kept with the outputs of one uninterrupted full
run, so a reader sees its pictures, curves and tables before running anything.

``make execute`` (or ``make execute NB=05``) runs ``scripts/execute_notebooks.py``, which executes a
notebook in full mode and records in its metadata (``metadata["course"]``): the wall and CPU time of
the run, the machine, and :func:`code_hash` of its code cells. The header's **Time** line is written
from those numbers (:func:`time_line`). ``tests/test_notebooks.py`` checks that each notebook's
stored outputs belong to its current code: change a code cell and the check names the notebook to
run again. Helpers here are shared by the script, the tests and ``docs/chapters.md``.
"""

from __future__ import annotations

import hashlib
import math
import re

import nbformat

#: Output MIME types of live widgets: they mean nothing without the running kernel.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: The header's time statement: from "**Time**:" to the end of its paragraph or the next bold
#: heading ("**Prerequisites**:"); bold words inside the statement belong to it.
TIME_LINE = re.compile(r"\*\*Time\*\*:.*?(?=\s*\*\*(?!Time)[^*\n]+\*\*:|\n\s*\n|\Z)", re.DOTALL)


def code_hash(nb) -> str:
    """sha256 of a notebook's code cells (their sources, in order): what its outputs depend on."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            h.update(src.encode())
            h.update(b"\x00")
    return h.hexdigest()


def minutes_up(seconds: float) -> int:
    """Seconds as whole minutes, rounded up (what a header states)."""
    return max(1, math.ceil(seconds / 60))


READING = re.compile(r"reading about (\d+) minutes")


def reading_minutes(header: str) -> int | None:
    """The reading time a header's Time line states ("reading about 40 minutes"), if it states
    one."""
    m = TIME_LINE.search(header)
    r = READING.search(m.group(0)) if m else None
    return int(r.group(1)) if r else None


def time_line(record: dict, quick_minutes: int | None = None, reading: int | None = None) -> str:
    """The header's Time line, from a run's record ``{"wall_seconds", "threads", ...}``
    (``reading``: the minutes it takes to read the chapter, kept in front of the measured times).
    It tells the learner what to expect; the run's full record (CPU time, machine) is in
    ``docs/chapters.md``."""
    read = f"reading about {reading} minutes; running: " if reading is not None else ""
    full = minutes_up(record["wall_seconds"])
    cores = record["threads"]
    line = (
        f"**Time**: {read}full run about {full} minute{'s' if full != 1 else ''} on "
        f"{cores} CPU core{'s' if cores != 1 else ''}"
    )
    if quick_minutes is not None:
        line += (
            f"; quick run (`COURSE_QUICK=1`) about {quick_minutes} "
            f"minute{'s' if quick_minutes > 1 else ''}"
        )
    return line + "."


def clean_stream(text: str) -> str:
    """What a terminal would show of text with carriage returns (progress bars redraw a line with
    ``\\r``): each line keeps what follows its last ``\\r``; lines left blank by a bar that erased
    itself go."""
    lines = []
    for line in text.split("\n"):
        shown = line.rsplit("\r", 1)[-1]
        if "\r" in line and not shown.strip():
            continue
        lines.append(shown)
    return "\n".join(lines)


WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
STILL_NOTE = "(a still of the controls' first setting; run the cell to move them)\n"


def widget_still(model_id: str, state: dict) -> list:
    """The outputs a widget view showed when it was stored: those its ``Output`` widgets captured
    (``interact`` draws into one), found through the widget's children. Empty if there are none."""
    model = state.get(model_id)
    if model is None:
        return []
    found = (
        [dict(o) for o in model["state"].get("outputs", [])]
        if model.get("model_name") == "OutputModel"
        else []
    )
    for child in model["state"].get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            found += widget_still(child[len("IPY_MODEL_") :], state)
    return found


def merge_streams(outputs: list) -> list:
    """Consecutive outputs of one stream joined into one, as a notebook front end shows them (a
    progress bar sends each redraw as its own message, starting with a carriage return)."""
    merged = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            out.get("output_type") == "stream"
            and prev is not None
            and prev.get("output_type") == "stream"
            and prev.get("name") == out.get("name")
        ):
            text = lambda o: o["text"] if isinstance(o["text"], str) else "".join(o["text"])  # noqa: E731
            prev["text"] = text(prev) + text(out)
            continue
        merged.append(out)
    return merged


def clean_outputs(nb) -> dict:
    """Make stored outputs stand without a kernel: a widget view (which needs the live kernel) is
    replaced by a still of what it showed (:func:`widget_still`, with a line saying so), erased
    progress bars go, and notebook-level widget state is not stored. Returns counts."""
    n_widgets = n_streams = n_stills = 0
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = []
        for out in merge_streams(cell.get("outputs", [])):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                n_widgets += 1
                still = [
                    o
                    for o in widget_still(data[WIDGET_MIME].get("model_id", ""), state)
                    if o.get("output_type") in ("display_data", "stream", "execute_result")
                ]
                if still:
                    n_stills += 1
                    kept.append(nbformat.v4.new_output("stream", name="stdout", text=STILL_NOTE))
                    kept += [nbformat.from_dict(o) for o in still]
                continue
            if out.get("output_type") == "stream":
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                cleaned = clean_stream(text)
                n_streams += cleaned != text
                if not cleaned.strip():
                    continue
                out["text"] = cleaned
            kept.append(out)
        cell["outputs"] = kept
    nb["metadata"].pop("widgets", None)
    return {
        "widget_outputs_removed": n_widgets,
        "widget_stills": n_stills,
        "streams_cleaned": n_streams,
    }
