"""Load-or-train: the course's shipped checkpoints (chapter 00 teaches the pattern).

Every shipped model is ``data/checkpoints/<name>.safetensors``; ``data/checkpoints/manifest.json``
records its config, sha256, the command that reproduces it, its training time and its measured
quality. Modules that define a model family register it here with :func:`register`.

Command line::

    python -m course_lib.pretrained list
    python -m course_lib.pretrained verify            # every hash (add --quality to re-measure)
    python -m course_lib.pretrained remeasure NAME    # record its quality again, weights unchanged
    # reproduce one entry, update the manifest
    python -m course_lib.pretrained train NAME [--seed 0]
    # the quick-mode stand-in, elsewhere
    python -m course_lib.pretrained train NAME --quick --out DIR
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from . import runtime
from .config import Config
from .runtime import get_device, seeded

#: Modules that register shipped models. A module listed here that does not exist yet is skipped.
ENTRY_MODULES = (
    "course_lib.judges",
    "course_lib.models.gan",
    "course_lib.models.vae",
    "course_lib.models.transformer",
    "course_lib.models.ddpm",
    "course_lib.models.text_to_image",
    "course_lib.models.clip",
    "course_lib.models.planner",
    "course_lib.ladder",
    "course_lib.models.fast",
    "course_lib.models.latent",
    "course_lib.models.dit",
    "course_lib.models.reflow",
    "course_lib.models.vq",
    "course_lib.models.token_training",
    "course_lib.instruct_edit",
    "course_lib.personalisation",
)


class CheckpointError(ValueError):
    """A checkpoint is unknown, missing, or does not match its recorded hash."""


@dataclass
class TrainResult:
    """What a registered ``train`` function returns."""

    model: torch.nn.Module
    config: "dict | Config"
    quality: dict
    notes: str = ""


#: What a shipped model is for: it makes pictures, it scores pictures (chapter 07's judges and
#: the readers its metrics use), or it is a part that other models are built on.
ROLES = ("generator", "judge", "component")
#: The two picture domains of the course.
DOMAINS = ("digits", "shapes")


@dataclass
class Entry:
    name: str
    build: Callable[[dict], torch.nn.Module]  # config -> untrained module of the right shape
    train: Callable[..., TrainResult]  # (seed=0, quick=False) -> TrainResult
    evaluate: Callable[[torch.nn.Module], dict] | None = None  # module -> quality dict
    finalize: Callable[[torch.nn.Module], object] | None = None  # module -> what load() returns
    description: str = ""
    chapter: str = ""
    role: str = "generator"  # one of ROLES
    domain: str = "digits"  # one of DOMAINS
    module: str = ""  # the module that registered it


_REGISTRY: dict[str, Entry] = {}
_imported = False


def register(
    name: str,
    *,
    build,
    train,
    role: str,
    domain: str,
    evaluate=None,
    finalize=None,
    description: str = "",
    chapter: str = "",
) -> None:
    """Declare a shippable model (called at import time by the module that defines it; that module
    must be listed in :data:`ENTRY_MODULES`). ``role``: one of :data:`ROLES`; ``domain``: one of
    :data:`DOMAINS`. The scoreboard and the manifest read both, so no caller guesses what a model
    is."""
    if role not in ROLES:
        raise ValueError(f"role of {name!r} must be one of {ROLES}, got {role!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain of {name!r} must be one of {DOMAINS}, got {domain!r}")
    module = sys._getframe(1).f_globals.get("__name__", "")
    _REGISTRY[name] = Entry(
        name, build, train, evaluate, finalize, description, chapter, role, domain, module
    )


def entries(role: str | None = None, domain: str | None = None) -> list[Entry]:
    """Every registered model (sorted by name), or those of one ``role`` and/or ``domain``."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    _import_entry_modules()
    return [
        e
        for _, e in sorted(_REGISTRY.items())
        if (role is None or e.role == role) and (domain is None or e.domain == domain)
    ]


def entry(name: str) -> Entry:
    """The registration of ``name`` (its role, domain, chapter, module); an unknown name raises
    :class:`CheckpointError`."""
    return _entry(name)


def _import_entry_modules() -> None:
    global _imported
    if _imported:
        return
    for mod in ENTRY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside an existing module
                raise
    _imported = True


def checkpoint_dir() -> Path:
    """``data/checkpoints`` of the checkout, or ``$COURSE_CHECKPOINTS``
    (:func:`runtime.checkpoint_dir`)."""
    return runtime.checkpoint_dir()


def manifest_path(directory: "str | Path | None" = None) -> Path:
    return Path(directory if directory is not None else checkpoint_dir()) / "manifest.json"


def read_manifest(directory: "str | Path | None" = None) -> dict:
    path = manifest_path(directory)
    if not path.exists():
        return {"models": {}}
    return json.loads(path.read_text())


def write_manifest(manifest: dict, directory: "str | Path | None" = None) -> None:
    path = manifest_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def known() -> list[str]:
    """Names that can be loaded (shipped in the manifest) or trained (registered)."""
    _import_entry_modules()
    return sorted(set(_REGISTRY) | set(read_manifest()["models"]))


def _entry(name: str) -> Entry:
    if name not in _REGISTRY:
        # data/checkpoints/manifest.json names the module that registers each shipped model: import
        # that one
        module = read_manifest()["models"].get(name, {}).get("module")
        if module in ENTRY_MODULES:
            importlib.import_module(module)
    if name not in _REGISTRY:
        _import_entry_modules()
    if name not in _REGISTRY:
        raise CheckpointError(
            f"unknown checkpoint {name!r}; known: {', '.join(known()) or '(none)'}"
        )
    return _REGISTRY[name]


def info(name: str) -> dict:
    """The manifest record of a shipped model (config, sha256, command, time, quality)."""
    _entry(name)
    rec = read_manifest()["models"].get(name)
    if rec is None:
        raise CheckpointError(
            f"{name!r} is not shipped yet; make it with: "
            f"python -m course_lib.pretrained train {name}"
        )
    return rec


def verify(name: str) -> dict:
    """Check the file of ``name`` against its recorded sha256; return its record."""
    rec = info(name)
    path = checkpoint_dir() / rec["file"]
    if not path.exists():
        raise CheckpointError(f"{path} is missing; reproduce it with: {rec['command']}")
    digest = sha256(path)
    if digest != rec["sha256"]:
        raise CheckpointError(
            f"sha256 mismatch for {name!r}: the file {path.name} has {digest[:16]}..., the "
            f"manifest records {rec['sha256'][:16]}.... The file is corrupt or was changed; "
            f"restore it (git checkout -- {path.name}) or reproduce it with: {rec['command']}"
        )
    return rec


def load_module(name: str, device=None) -> torch.nn.Module:
    """The shipped ``torch.nn.Module`` of ``name``, hash-verified, in eval mode."""
    entry = _entry(name)
    rec = verify(name)
    model = entry.build(rec["config"])
    state = load_file(str(checkpoint_dir() / rec["file"]))
    model.load_state_dict(state)
    device = device if device is not None else get_device()
    return model.to(device).eval()


def load(name: str, device=None):
    """Load a shipped model by name (verifying its sha256). Unknown names and corrupt files raise
    :class:`CheckpointError` with what to do. Returns the module, or for pipelines what the entry's
    ``finalize`` makes of it."""
    entry = _entry(name)
    module = load_module(name, device)
    return entry.finalize(module) if entry.finalize else module


def save(
    name: str,
    result: TrainResult,
    seconds: float,
    seed: int,
    command: str | None = None,
    budget: str = "full",
    directory: "str | Path | None" = None,
) -> dict:
    """Write ``<name>.safetensors`` and its manifest record (``budget``: "full" or "quick")."""
    directory = Path(directory) if directory is not None else checkpoint_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(path), metadata={"name": name})
    entry = _REGISTRY.get(name)
    rec = {
        "file": path.name,
        "module": entry.module if entry else None,
        "role": entry.role if entry else None,
        "domain": entry.domain if entry else None,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "config": result.config.to_dict() if isinstance(result.config, Config) else result.config,
        "command": command or f"python -m course_lib.pretrained train {name} --seed {seed}",
        "budget": budget,
        "train_seconds": round(seconds, 1),
        "trained_on": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {next(result.model.parameters()).device.type}, torch {torch.__version__}",
        "trained": _dt.date.today().isoformat(),
        "quality": result.quality,
    }
    if result.notes:
        rec["notes"] = result.notes
    manifest = read_manifest(directory)
    manifest["models"][name] = rec
    write_manifest(manifest, directory)
    return rec


def remeasure(name: str, directory: "str | Path | None" = None) -> dict:
    """Evaluate the shipped ``name`` again (its registered ``evaluate``) and record the result in
    its manifest entry: the keys the evaluation returns are replaced, the training record (steps,
    seconds) kept, the date and command stored under ``quality_remeasured``. For a change in how
    the course samples or measures, not in how the model was trained. Returns the new quality."""
    entry = _entry(name)
    if entry.evaluate is None:
        raise CheckpointError(f"{name!r} registers no evaluate function to re-measure it with")
    verify(name)
    directory = Path(directory) if directory is not None else checkpoint_dir()
    fresh = dict(entry.evaluate(load_module(name)))
    manifest = read_manifest(directory)
    rec = manifest["models"][name]
    rec["quality"] = {**rec["quality"], **fresh}
    rec["quality_remeasured"] = {
        "date": _dt.date.today().isoformat(),
        "command": f"python -m course_lib.pretrained remeasure {name}",
        "on": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
    }
    write_manifest(manifest, directory)
    return rec["quality"]


def run_recipe(
    train: Callable[[], tuple],
    evaluate: Callable | None = None,
    *,
    config=None,
    notes: "str | Callable" = "",
) -> TrainResult:
    """The shared body of every registered trainer: run ``train()``, timing it (wall clock and this
    process's CPU time), evaluate the model it returns and record both in its quality.

    ``train()`` returns ``(model, history)`` or ``(model, history, extra)`` with ``history`` a
    :class:`course_lib.training.History` (or None). ``evaluate(model) -> dict`` measures it.
    ``config``: what rebuilds the model (a :class:`course_lib.config.Config` or a dict; default
    ``model.config``). ``notes``: a text, or ``notes(history, extra) -> str``.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = train()
    out = out if isinstance(out, tuple) else (out, None)
    model, history, extra = out[0], out[1], (out[2] if len(out) > 2 else None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    quality = dict(evaluate(model)) if evaluate is not None else {}
    if history is not None:
        quality["train_steps"] = history.steps
        quality["train_loop_seconds"] = round(history.seconds, 1)
    quality["train_seconds"] = round(seconds, 1)
    quality["train_process_cpu_seconds"] = round(cpu, 1)
    config = config if config is not None else getattr(model, "config", None)
    text = notes(history, extra) if callable(notes) else notes
    return TrainResult(model, config, quality, text)


def train(
    name: str, seed: int = 0, quick: bool = False, directory: "str | Path | None" = None
) -> dict:
    """Reproduce a registered model: train it with its full recipe (``quick=True``: the short
    stand-in budget that quick mode uses), measure it, save it and record it, with its budget, in
    the manifest.

    Quick mode refuses to replace a checkpoint trained with the full recipe: give a scratch
    ``directory`` (or ``COURSE_CHECKPOINTS``) instead.
    """
    entry = _entry(name)
    directory = Path(directory) if directory is not None else checkpoint_dir()
    existing = read_manifest(directory)["models"].get(name)
    if quick and existing is not None and existing.get("budget", "full") == "full":
        raise CheckpointError(
            f"quick mode trains {name!r} on a short stand-in budget, and {directory} holds its "
            "full-recipe checkpoint, which quick mode does not replace. Train into a scratch "
            "folder (--out DIR or COURSE_CHECKPOINTS=DIR), or without quick mode (unset "
            "COURSE_QUICK) for the full recipe."
        )
    t0 = time.perf_counter()
    with seeded(seed):  # reproducible, and the caller's random streams stay as they were
        result = entry.train(seed=seed, quick=quick)
    seconds = time.perf_counter() - t0
    command = f"python -m course_lib.pretrained train {name} --seed {seed}" + (
        " --quick" if quick else ""
    )
    return save(
        name,
        result,
        seconds,
        seed,
        command=command,
        budget="quick" if quick else "full",
        directory=directory,
    )


def load_or_train(name: str, train_anyway: bool = False, device=None):
    """The load-or-train pattern: the shipped model, or (``train_anyway=True`` or not shipped yet) a
    freshly trained one with its full recipe, which is then saved. Notebooks usually call
    :func:`load` and train a small copy themselves to compare."""
    if train_anyway or name not in read_manifest()["models"]:
        train(name, quick=False)
    return load(name, device)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.pretrained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known checkpoints")
    v = sub.add_parser("verify", help="check every shipped file against its sha256")
    v.add_argument("--quality", action="store_true", help="also re-measure quality where possible")
    r = sub.add_parser(
        "remeasure",
        help="re-measure one shipped model's quality with today's library (weights unchanged)",
    )
    r.add_argument("name")
    t = sub.add_parser("train", help="reproduce one checkpoint and record it")
    t.add_argument("name")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--quick",
        action="store_true",
        default=runtime.is_quick(),
        help="the short stand-in budget of quick mode (default: on when COURSE_QUICK=1); "
        "never replaces a full-recipe checkpoint",
    )
    t.add_argument(
        "--out", default=None, help="the folder to write to (default: the checkpoint folder)"
    )
    args = parser.parse_args(argv)

    if args.cmd == "list":
        shipped = read_manifest()["models"]
        for n in known():
            rec = shipped.get(n)
            state = (
                (
                    f"shipped, {rec['bytes'] / 1e6:.2f} MB, trained in {rec['train_seconds']} s, "
                    f"quality {rec['quality']}"
                )
                if rec
                else "not shipped yet"
            )
            print(f"{n:22s} {state}")
        return 0
    if args.cmd == "verify":
        bad = 0
        for n in read_manifest()["models"]:
            try:
                rec = verify(n)
                line = f"[OK]   {n} sha256 {rec['sha256'][:12]}"
                entry = _REGISTRY.get(n)
                if args.quality and entry and entry.evaluate:
                    line += (
                        f" quality now {entry.evaluate(load_module(n))} (recorded {rec['quality']})"
                    )
                print(line)
            except CheckpointError as exc:
                bad += 1
                print(f"[BAD]  {n}: {exc}")
        return 1 if bad else 0
    if args.cmd == "remeasure":
        try:
            quality = remeasure(args.name)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(quality, indent=2))
        return 0
    if args.cmd == "train":
        try:
            rec = train(args.name, seed=args.seed, quick=args.quick, directory=args.out)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            json.dumps(
                {k: rec[k] for k in ("file", "sha256", "train_seconds", "quality")}, indent=2
            )
        )
        return 0
    return 2


if __name__ == "__main__":
    # Run through the imported module, not this ``__main__`` copy: model modules register into
    # ``course_lib.pretrained._REGISTRY``.
    from course_lib import pretrained as _pretrained

    sys.exit(_pretrained._main())
