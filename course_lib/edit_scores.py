"""The scoreboard's editing rows (chapter 07): every way the course changes a picture, scored live.

Chapter 07's main table scores generators that draw from nothing but a label or a caption. The
editors of chapter 11 start from something: a picture to change, or a base model to teach a new
word. They get a table of their own, with one measure for all of them: the ``shapes-judge`` reads
the intended result, and a row is right when all five attributes (shape, size, colour, row,
column) are. Each row also says what the edit **kept**, measured the same way on requests that ask
for no change, and what one edit costs.

* ``shapes-t2i + SDEdit``: chapter 05's model, made an image-to-image pipeline by
  :class:`course_lib.editing.Img2ImgPipeline` at its default strength, asked for the *target's
  caption* (SDEdit reads no instruction). It is scored on the recolouring requests only, the edit
  chapter 11 recommends it for; kept: the sources' own captions at the same strength.
* ``shapes-edit``: the instruction editor of chapter 11, on the held-out wording (instructions
  phrased as no training instruction was), every kind of edit; and again on the same recolouring
  requests as SDEdit, so the two can be compared on one task. Kept: the "leave it" controls.
* ``shapes-t2i-lora-ring``: the new shape taught with a LoRA adapter; right: the ring's captions;
  kept: the old captions, next to the base model's score on the same captions and noise.

The requests are chapter 11's held-out measuring set (:func:`course_lib.instruct_edit.
evaluation_sets`): sources and requests from a seed no training run uses. Intervals are 95% Wilson
intervals over requests (one noise draw each).
"""

from __future__ import annotations

import torch

from . import editing, instruct_edit, personalisation, pretrained
from .data import shapes
from .judges import score_shapes
from .models import text_to_image as t2i
from .pipelines import quiet
from .training import ms_per_picture

#: Columns of :func:`frame`, in order.
COLUMNS = ("model", "chapter", "task", "asked with", "n", "right", "right_low", "right_high",
           "kept", "kept_low", "kept_high", "kept means", "ms_per_edit", "size_mb",
           "train_seconds")


def _row(model: str, chapter: str, task: str, asked: str, right, n: int, kept, n_kept: int,
         kept_means: str, ms: float, name: str) -> dict:
    rec = pretrained.read_manifest()["models"].get(name, {})
    r, k = personalisation.share(int(right), n), personalisation.share(int(kept), n_kept)
    return {"model": model, "chapter": chapter, "task": task, "asked with": asked, "n": n,
            "right": r["share"], "right_low": r["low"], "right_high": r["high"],
            "kept": k["share"], "kept_low": k["low"], "kept_high": k["high"],
            "kept means": kept_means, "ms_per_edit": ms,
            "size_mb": rec.get("bytes", float("nan")) / 1e6,
            "train_seconds": rec.get("train_seconds", float("nan"))}


def _subset(trip: dict, kind: str) -> dict:
    """The triplets of one kind of request (``"color"``, ``"keep"``, ...)."""
    idx = [i for i, r in enumerate(trip["requests"]) if r.kind == kind]
    return {k: (v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx])
            for k, v in trip.items()}


def sdedit_rows(pipe, trip: dict, seed: int = 0, latency_batch: int = 16,
                repeats: int = 2, **call) -> list[dict]:
    """SDEdit on ``pipe`` (a text-to-image pipeline): the recolouring requests of ``trip`` asked
    by the target's caption, kept measured on its "keep" requests with the source's caption."""
    img2img = editing.Img2ImgPipeline.from_pipe(pipe)
    recolour, keep = _subset(trip, "color"), _subset(trip, "keep")

    def run(t, specs, n=None):
        caps = [shapes.caption(s) for s in specs][:n]
        g = torch.Generator().manual_seed(seed)
        with quiet(img2img):
            return img2img(caps, image=t["sources"][:n], generator=g, output_type="pt",
                           **call).images

    right = score_shapes(run(recolour, recolour["target_specs"]),
                         recolour["target_specs"])["correct"].all(1).sum()
    kept = score_shapes(run(keep, keep["source_specs"]),
                        keep["source_specs"])["correct"].all(1).sum()
    m = min(latency_batch, len(recolour["requests"]))
    ms = ms_per_picture(lambda: run(recolour, recolour["target_specs"], m), m, repeats)
    strength = call.get("strength", editing.DEFAULT_STRENGTH)
    return [_row(f"shapes-t2i + SDEdit, strength {strength:g}", "11", "recolour",
                 "the target's caption", right, len(recolour["requests"]), kept,
                 len(keep["requests"]), "source's caption: read as the source", ms, "shapes-t2i")]


def instruction_rows(pipe, trip: dict, seed: int = 0, latency_batch: int = 16,
                     repeats: int = 2, **call) -> list[dict]:
    """An instruction editor such as ``shapes-edit``: every kind of edit, then the recolouring
    requests alone; kept: the "leave it" controls read as the source."""
    images = instruct_edit.edit(pipe, trip, seed=seed, **call)  # [n, 3, 32, 32]
    res = instruct_edit.judge_edits(images, trip)
    right = res["correct"]  # [n] all five right
    kinds = [r.kind for r in trip["requests"]]
    edits = torch.tensor([k != "keep" for k in kinds])
    recolour = torch.tensor([k == "color" for k in kinds])
    n_keep = res["n_controls"]
    kept = int(right[~edits].sum())
    m = min(latency_batch, len(kinds))
    small = {k: v[:m] for k, v in trip.items()}
    ms = ms_per_picture(lambda: instruct_edit.edit(pipe, small, seed=seed, **call), m, repeats)
    common = dict(kept=kept, n_kept=n_keep, kept_means='"leave it" read as the source', ms=ms,
                  name="shapes-edit")
    return [
        _row("shapes-edit", "11", "every edit", "an instruction (held-out wording)",
             right[edits].sum(), int(edits.sum()), **common),
        _row("shapes-edit", "11", "recolour", "an instruction (held-out wording)",
             right[recolour].sum(), int(recolour.sum()), **common),
    ]


def adapter_rows(pipe, base, cfg, n_concept: int = 108, n_old: int = 270, seed: int = 0,
                 latency_batch: int = 16, repeats: int = 2) -> list[dict]:
    """A concept adapter (``shapes-t2i-lora-ring``) loaded in ``pipe``; ``base`` the model without
    it. Right: the concept's captions; kept: the old captions (the base's share in the label)."""
    q = personalisation.measure(pipe, cfg, n_concept=n_concept, n_old=n_old, seed=seed)
    old = shapes.all_captions("train")[:n_old]
    base_ok = personalisation.old_captions_right(base, old, seed)
    caps = [personalisation.concept_caption(s, cfg.word)
            for s in personalisation.concept_specs()[:latency_batch]]
    ms = ms_per_picture(lambda: t2i.generate(pipe, caps, seed=seed), len(caps), repeats)
    c, o = q["concept_all"], q["old_all"]
    b = base_ok / len(old)
    return [_row("shapes-t2i-lora-ring", "11", f"a new shape ({cfg.word})",
                 f'a caption with the new word "{cfg.word}"', round(c["share"] * c["n"]), c["n"],
                 round(o["share"] * o["n"]), o["n"],
                 f"old captions right (base model: {b:.1%})", ms, "shapes-t2i-lora-ring")]


def build(per_kind: int = 60, n_concept: int = 108, n_old: int = 270, seed: int = 0,
          latency_batch: int = 16, repeats: int = 2, device=None, verbose: bool = True) -> dict:
    """Every editing row: ``{"rows": [...], "notes": [...]}``. ``per_kind``: requests of each kind
    (chapter 11's held-out measuring set, recolour and "leave it" among them); ``n_concept`` /
    ``n_old``: captions for the adapter's row. A model that is not shipped is left out with a
    note; one that fails is left out with its error, and the others are still scored."""
    shipped = pretrained.read_manifest()["models"]
    trip = instruct_edit.evaluation_sets(per_kind)["heldout wording"]
    rows, notes, loaded = [], [], {}

    def base():  # chapter 05's pipeline, loaded once: SDEdit's and the adapter's base model
        if "base" not in loaded:
            loaded["base"] = pretrained.load(personalisation.BASE, device)
        return loaded["base"]

    jobs = [
        ("shapes-t2i", lambda: sdedit_rows(base(), trip, seed, latency_batch, repeats)),
        ("shapes-edit", lambda: instruction_rows(pretrained.load("shapes-edit", device), trip,
                                                 seed, latency_batch, repeats)),
        (personalisation.NAME, lambda: _adapter(base(), n_concept, n_old, seed, latency_batch,
                                                repeats, device)),
    ]
    for name, job in jobs:
        if name not in shipped:
            notes.append(f"{name}: not shipped yet (python -m course_lib.pretrained train {name})")
            continue
        try:
            rows += job()
            if verbose:
                print(f"scored {name}")
        except Exception as exc:  # one broken model must not sink the table
            notes.append(f"{name}: skipped, scoring raised {type(exc).__name__}: {exc}")
    return {"rows": rows, "notes": notes}


def _adapter(base, n_concept, n_old, seed, latency_batch, repeats, device) -> list[dict]:
    adapter = pretrained.load(personalisation.NAME, device)  # its own base pipeline, adapter in
    cfg = personalisation.AdapterConfig.from_dict(
        pretrained.info(personalisation.NAME)["config"])
    return adapter_rows(adapter, base, cfg, n_concept, n_old, seed, latency_batch, repeats)


def frame(board: dict):
    """The rows as a pandas DataFrame, columns in :data:`COLUMNS` order."""
    import pandas as pd

    df = pd.DataFrame(board["rows"])
    return df[[c for c in COLUMNS if c in df.columns]] if len(df) else df


def plot(board: dict, fig=None):
    """Two panels, one bar per row: the share right with its 95% interval, and the share kept."""
    import matplotlib.pyplot as plt

    rows = board["rows"]
    if fig is None:
        fig = plt.figure(figsize=(12, 0.7 * max(len(rows), 2) + 1.6))
    axes = fig.subplots(1, 2, sharey=True)
    if not rows:
        for ax in axes:
            ax.text(0.5, 0.5, "no editing model shipped yet", ha="center", va="center",
                    fontsize=10)
            ax.set_axis_off()
        return fig
    labels = [f"{r['model']}\n{r['task']}" for r in rows]
    y = range(len(rows))
    for ax, key, title in ((axes[0], "right", "edit right (all five attributes)"),
                           (axes[1], "kept", "what should stay, kept")):
        vals = [r[key] for r in rows]
        err = [[r[key] - r[f"{key}_low"] for r in rows], [r[f"{key}_high"] - r[key] for r in rows]]
        ax.barh(list(y), vals, xerr=err, color="tab:orange", ecolor="k", capsize=3)
        for i, v in enumerate(vals):
            ax.text(0.02, i, f"{v:.0%}", va="center", fontsize=9, color="k")
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of requests (95% interval)")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=9)
    axes[0].set_yticks(list(y), labels)
    axes[0].invert_yaxis()
    fig.suptitle("The editing rows: one judge, one set of held-out requests", fontsize=11)
    fig.tight_layout()
    return fig
