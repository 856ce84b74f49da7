"""The course's scoreboard (chapter 07): every shipped generator, scored live on one table.

For each model the manifest ships (``course_lib.pretrained``), the scoreboard samples pictures and
measures, with :mod:`course_lib.metrics`:

* **quality and diversity**: domain FID and KID against held-out real pictures (features: the
  ``mnist-classifier`` for digits, the ``shapes-judge`` for Shapes), precision and recall (k=3).
  KID comes in two columns on different scales, never compared with each other: ``kid``, the plain
  unbiased KID on the judge's raw features (digit rows), and ``paired_kid_x1000``, the paired
  estimator :func:`course_lib.metrics.paired_kernel_distance` on standardised features, times 1000
  (Shapes rows, each picture asked for the caption of the reference picture in the same row);
* **alignment**: for class-conditional digit models, how often the classifier reads the asked-for
  digit; for text-to-image, the Shapes judge's caption accuracy (all five attributes right), the
  tiny CLIP's score and the captioner round trip when those models are shipped; for unconditional
  models the Inception Score on the classifier and the balance of the classes;
* **efficiency**: latency per picture (median of repeated batches, warm-up excluded), peak memory
  while sampling, parameters, size on disk, and the recorded training time.

Each domain also gets a **reference row**: held-out real pictures scored against the reference
pictures the same way (same number of samples), a yardstick for that sample size, not a bound: a
model can score below it by chance, or because a metric's estimate is biased. Models that are not
shipped yet, or
whose interface the scoreboard does not know, are skipped with a note; a model that fails while
being scored is skipped with the error, and the others are still scored.

FID values are comparable only within one domain (each domain has its own feature network) and
at one sample size (FID is biased upward at small ``n``; chapter 07 plots how much).
"""

from __future__ import annotations

import inspect
import math
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics
from . import pretrained
from .data import mnist, shapes
from .models import ddpm
from .runtime import get_device, peak_memory, time_fn

#: Columns of the table, in order (a row may lack some: NaN in the frame).
COLUMNS = (
    "model",
    "domain",
    "chapter",
    "conditioning",
    "n",
    "fid",
    "kid",
    "paired_kid_x1000",
    "precision",
    "recall",
    "inception_score",
    "class_balance",
    "label_accuracy",
    "caption_accuracy",
    "clip_score",
    "round_trip",
    "ms_per_picture",
    "peak_memory_mb",
    "parameters",
    "size_mb",
    "train_seconds",
)


@dataclass
class Reference:
    """Held-out real pictures of a domain and their features in the domain's feature network."""

    domain: str
    net: torch.nn.Module
    images: torch.Tensor
    feats: torch.Tensor
    captions: list | None = None
    labels: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def digits_reference(device=None) -> Reference:
    """The 500 test digits and their ``mnist-classifier`` features."""
    net = metrics.domain_feature_net("mnist", device)
    x, y = mnist.load_mnist("test")
    return Reference("digits", net, x, metrics.extract_features(x, net), labels=y)


def shapes_reference(n: int, seed: int = 123, device=None) -> Reference:
    """``n`` fresh Shapes pictures of training-split captions and their ``shapes-judge`` features.
    Generators are asked for the same captions, so both sides share one caption distribution."""
    net = metrics.domain_feature_net("shapes", device)
    x, caps = shapes.sample(n, seed=seed, split="train")
    return Reference("shapes", net, x, metrics.extract_features(x, net), captions=caps)


# ---------------------------------------------------------------------------------------------
# Talking to the models: whatever each chapter ships
# ---------------------------------------------------------------------------------------------
def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def is_text_pipeline(obj) -> bool:
    """A diffusers-style text-to-image pipeline (``pipe(prompts, ...).images``)."""
    return (
        callable(obj)
        and (hasattr(obj, "text_encoder") or hasattr(obj, "tokenizer"))
        and not hasattr(obj, "generate")
    )


def is_editor(obj) -> bool:
    """A pipeline that changes a picture (``pipe(instructions, image=...)``, chapter 11): chapter
    07 scores it in the editing rows (:mod:`course_lib.edit_scores`), not on this table."""
    try:
        return callable(obj) and "image" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def n_classes_of(model) -> int:
    for attr in ("n_classes", "num_classes", "num_class_embeds"):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return v
    return 0


def digit_sampler(model):
    """``fn(n, generator) -> (pictures [n, 1, 28, 28] in [0, 1], labels or None)`` for a digit model
    with ``generate``/``sample`` (GANs, VAEs, the DDPM) or an unconditional pipeline."""
    k = n_classes_of(model)
    method = getattr(model, "generate", None) or getattr(model, "sample", None)
    if method is not None:

        def fn(n, generator):
            labels = torch.arange(n) % k if k else None
            out = (
                method(n, labels=labels, generator=generator)
                if k
                else method(n, generator=generator)
            )
            return _as_pictures(out), labels

        return fn
    if callable(model) and _accepts(model, "batch_size"):

        def fn(n, generator):
            return _as_pictures(model(batch_size=n, generator=generator, output_type="pt")), None

        return fn
    raise metrics.MetricUnavailable(
        f"{type(model).__name__} has no generate/sample method the scoreboard knows"
    )


def ddpm_samplers(model, steps: int = 50) -> list:
    """A chapter 04 digit denoiser: ``[(row suffix, sampler)]``, unconditional and class-conditional
    with guidance 2, drawn by the course's one digit sampler
    (:func:`course_lib.models.ddpm.sample_digits`) with the model's own sampler, ``steps`` network
    calls each: DDIM for an ε-model such as ``ddpm-mnist``, Euler for a flow-matching model such as
    ``flow-mnist``."""
    label = "Euler" if ddpm.is_flow(model) else "DDIM"

    def make(conditional: bool, w: float):
        def fn(n, generator):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            labels = torch.arange(n) % 10 if conditional else None
            x = ddpm.sample_digits(
                model, labels, n, guidance_scale=w, num_inference_steps=steps, seed=seed
            )
            return x.float().clamp(0, 1), labels

        return fn

    name = f"{label}-{steps}"
    return [(f", {name}", make(False, 1.0)), (f", {name}, class w=2", make(True, 2.0))]


def samplers_for(name: str, model, ddpm_steps: int = 50) -> list:
    """``[(row name, sampler, latency batch factor)]`` for a digit model: one row, or two for a
    digit denoiser (whose pictures cost a network call per step: timed on smaller batches)."""
    if isinstance(model, ddpm.DigitDenoiser):
        return [(name + suffix, fn, 1) for suffix, fn in ddpm_samplers(model, ddpm_steps)]
    return [(name, digit_sampler(model), 4)]


def _as_pictures(out) -> torch.Tensor:
    out = getattr(out, "images", out)
    if (
        isinstance(out, (tuple, list))
        and out
        and isinstance(out[0], torch.Tensor)
        and out[0].dim() == 4
    ):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise metrics.MetricUnavailable(
            f"sampling returned {type(out).__name__}, not a tensor of pictures"
        )
    return out.detach().float().cpu().clamp(0, 1)


def text_sampler(pipe, **call_kwargs):
    """``fn(captions, generator) -> pictures [n, 3, 32, 32]`` for a diffusers-style pipeline."""

    def fn(captions, generator):
        return _as_pictures(
            pipe(list(captions), generator=generator, output_type="pt", **call_kwargs)
        )

    return fn


def _modules(obj) -> list[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    comps = getattr(obj, "components", None)
    if isinstance(comps, dict):
        return [m for m in comps.values() if isinstance(m, torch.nn.Module)]
    return []


def _batched(fn, n: int, batch: int, generator, *extra):
    """Call a sampler in batches of ``batch`` (memory) with one generator (reproducible)."""
    outs, labels = [], []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        if extra:
            outs.append(fn(extra[0][i : i + m], generator))
        else:
            x, y = fn(m, generator)
            outs.append(x)
            labels.append(y)
    x = torch.cat(outs)
    if extra:
        return x
    return x, (None if labels[0] is None else torch.cat(labels))


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def _quality(fake: torch.Tensor, ref: Reference, kid_subset: int = 100) -> dict:
    """FID, KID, precision and recall of ``fake`` against ``ref``; the row keeps the features
    ``[n, d]`` under ``_features`` (not a column) for a closer look at its FID."""
    f = metrics.extract_features(fake, ref.net)
    p, r = metrics.precision_recall(ref.feats, f, k=3)
    if ref.captions is not None:
        # Shapes rows are paired with the reference caption by caption: the paired estimator, on
        # standardised features (see metrics.paired_kernel_distance), in a column of its own
        kid = {"paired_kid_x1000": 1000 * metrics.paired_kernel_distance(ref.feats[: len(f)], f)}
    else:
        kid = {
            "kid": metrics.kernel_inception_distance(
                ref.feats, f, subsets=50, subset_size=kid_subset
            )
        }
    return {
        "n": len(fake),
        "fid": metrics.frechet_distance(ref.feats, f),
        **kid,
        "precision": p,
        "recall": r,
        "_features": f,
    }


def _digit_judgement(fake: torch.Tensor, labels, ref: Reference) -> dict:
    probs = ref.net.probs(fake)
    hist = torch.bincount(probs.argmax(1), minlength=10).double() / len(fake)
    nz = hist[hist > 0]
    out = {
        "inception_score": metrics.inception_score(probs),
        "class_balance": float(-(nz * nz.log()).sum() / math.log(10)),
    }  # 1 = all ten equally
    if labels is not None:
        out["label_accuracy"] = (probs.argmax(1) == labels).double().mean().item()
    return out


def _efficiency(model, call, name: str, n_per_call: int, repeats: int) -> dict:
    rec = pretrained.read_manifest()["models"].get(name.split(",")[0], {})  # "ddpm-mnist, DDIM-50"
    with peak_memory() as mem:
        call()  # also the warm-up
    t = time_fn(call, repeats=repeats, warmup=0)["median_s"]
    mods = _modules(model)
    params = sum(metrics.parameter_count(m) for m in mods) if mods else rec.get("parameters")
    return {
        "ms_per_picture": 1000 * t / n_per_call,
        "peak_memory_mb": mem["peak_bytes"] / 2**20,
        "parameters": params,
        "size_mb": rec.get("bytes", float("nan")) / 1e6,
        "train_seconds": rec.get("train_seconds", float("nan")),
    }


def reference_row(ref: Reference, n: int, seed: int = 0) -> dict:
    """Held-out real pictures scored like a model: the domain's yardstick at this ``n`` (not a
    bound: a model may score below it by chance or by a metric's bias)."""
    g = torch.Generator().manual_seed(seed)
    if ref.domain == "digits":
        x, y = mnist.load_mnist("train")
        idx = torch.randperm(len(x), generator=g)[:n]
        row = {
            "model": "real digits (train split)",
            "domain": "digits",
            "chapter": "-",
            "conditioning": "-",
            **_quality(x[idx], ref, min(100, n)),
            **_digit_judgement(x[idx], None, ref),
        }
    else:
        # The captions the generators are asked for (the reference's own), drawn afresh: new jitter
        # of size, place and color. Independently drawn captions would compare two different caption
        # mixes, and on 128 pictures that alone costs more FID than a good generator does.
        x = real_shapes_for(ref.captions[:n], seed=seed + 1)
        row = {
            "model": "real Shapes (same captions, fresh pictures)",
            "domain": "shapes",
            "chapter": "-",
            "conditioning": "-",
            **_quality(x, ref, min(100, n)),
        }
    return row


def real_shapes_for(captions: list[str], seed: int = 1) -> torch.Tensor:
    """Fresh real pictures [n, 3, 32, 32] of exactly these captions (new jitter from ``seed``)."""
    specs = [shapes.parse_caption(c) for c in captions]
    return shapes.render(specs, np.random.default_rng([seed, 2]))


def score_digit_model(
    name: str,
    model,
    ref: Reference,
    n: int,
    seed: int = 0,
    batch: int = 250,
    latency_batch: int = 64,
    repeats: int = 3,
    sampler=None,
) -> dict:
    sampler = sampler if sampler is not None else digit_sampler(model)
    fake, labels = _batched(sampler, n, batch, torch.Generator().manual_seed(seed))
    row = {
        "model": name,
        "domain": "digits",
        "conditioning": "class label" if labels is not None else "none",
        **_quality(fake, ref, min(100, n)),
        **_digit_judgement(fake, labels, ref),
    }
    g = torch.Generator().manual_seed(seed + 1)
    row.update(_efficiency(model, lambda: sampler(latency_batch, g), name, latency_batch, repeats))
    return row


def score_text_model(
    name: str,
    pipe,
    ref: Reference,
    n: int,
    seed: int = 0,
    batch: int = 64,
    latency_batch: int = 16,
    repeats: int = 2,
    call_kwargs: dict | None = None,
) -> dict:
    call_kwargs = dict(call_kwargs or {})
    sampler = text_sampler(pipe, **call_kwargs)
    caps = ref.captions[:n]
    fake = _batched(sampler, len(caps), batch, torch.Generator().manual_seed(seed), caps)
    row = {
        "model": name
        + "".join(
            f", {k.replace('num_inference_steps', 'steps')}={v}" for k, v in call_kwargs.items()
        ),
        "domain": "shapes",
        "conditioning": "text",
        **_quality(fake, ref, min(100, len(caps))),
        "caption_accuracy": metrics.caption_accuracy(fake, caps, ref.net)["all"],
    }
    for key, fn in (
        ("clip_score", metrics.clip_score),
        ("round_trip", lambda i, c: metrics.caption_round_trip(i, c)["all"]),
    ):
        try:
            row[key] = fn(fake, caps)
        except metrics.MetricUnavailable as exc:
            row.setdefault("_notes", []).append(str(exc))
    g = torch.Generator().manual_seed(seed + 1)
    lat_caps = caps[:latency_batch]
    row.update(_efficiency(pipe, lambda: sampler(lat_caps, g), name, len(lat_caps), repeats))
    return row


@dataclass
class Scoreboard:
    """What :func:`build` returns: one dict per row (keys starting with ``_``, such as the
    features ``_features``, are not columns), notes on models not scored, and the
    :class:`Reference` of each domain scored (``{"digits": ..., "shapes": ...}``)."""

    rows: list
    notes: list
    references: dict = field(default_factory=dict)

    def frame(self):
        """The table as a pandas DataFrame (columns in :data:`COLUMNS` order)."""
        import pandas as pd

        df = pd.DataFrame(
            [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rows]
        )
        cols = [c for c in COLUMNS if c in df.columns]
        return df[cols]


#: The generators the course's chapters ship; those missing from a copy are listed in the notes.
EXPECTED = (
    "dcgan-mnist",
    "cgan-mnist",
    "vae-mnist",
    "cvae-mnist",
    "ddpm-mnist",
    "shapes-t2i",
    "shapes-t2i-dit",
    "shapes-t2i-mpnet",
    "shapes-t2i-fast",
    "shapes-t2i-reflow",
    "shapes-t2i-latent",
    "shapes-gpt",
    "shapes-maskgit",
)


def candidates() -> list[str]:
    """Every generator the registry knows (its entry's ``role``; judges and components such as the
    autoencoder are not scored as generators)."""
    try:
        return [e.name for e in pretrained.entries(role="generator")]
    except Exception as exc:  # an entry module that fails to import must not hide the others
        print(
            f"note: could not import every model module ({type(exc).__name__}: {exc}); "
            f"using the manifest's roles"
        )
        shipped = pretrained.read_manifest()["models"]
        return sorted(n for n, rec in shipped.items() if rec.get("role") == "generator")


def build(
    names=None,
    n_digits: int = 500,
    n_shapes: int = 128,
    seed: int = 0,
    device=None,
    text_kwargs: dict | None = None,
    text_variants: dict | None = None,
    ddpm_steps: int = 50,
    latency_batch: int = 16,
    repeats: int = 3,
    expected=EXPECTED,
    verbose: bool = True,
) -> Scoreboard:
    """Score every shipped generator (or ``names``) live; returns a :class:`Scoreboard`.

    ``n_digits`` / ``n_shapes``: pictures per model (FID depends on it: compare rows of one table
    only). ``text_kwargs``: pipeline arguments for every text model (default: each model's own
    defaults; a pipeline whose call does not take one of them is called without it);
    ``text_variants``: extra rows per text model, e.g.
    ``{"shapes-t2i": [{"num_inference_steps": 5}]}`` adds a row sampled with 5 steps.
    ``ddpm_steps``: DDIM steps for the digit DDPM (scored unconditionally and with class guidance).
    ``latency_batch`` pictures per timed call (digit models use 4 times as many), ``repeats`` timed
    calls after the warm-up. ``expected`` names the registry does not know yet are listed as not
    built yet.
    """
    device = device if device is not None else get_device()
    shipped = pretrained.read_manifest()["models"]
    notes, rows = [], []
    if names is None:
        names = candidates()
        for e in expected:
            if e not in names:
                notes.append(f"{e}: not in this copy of the course")
    names = list(names)
    refs: dict = {}

    def ref_for(domain):
        if domain not in refs:
            refs[domain] = (
                digits_reference(device)
                if domain == "digits"
                else shapes_reference(n_shapes, device=device)
            )
            rows.append(
                reference_row(refs[domain], n_digits if domain == "digits" else n_shapes, seed)
            )
        return refs[domain]

    for name in names:
        if name not in shipped:
            notes.append(f"{name}: not shipped yet (python -m course_lib.pretrained train {name})")
            continue
        try:
            entry = pretrained.entry(name)
            if entry.role != "generator":
                notes.append(f"{name}: skipped, a {entry.role}, not a generator")
                continue
            model = pretrained.load(name, device)
            if is_editor(model):
                notes.append(f"{name}: an editor (it starts from a picture), scored in the "
                             f"editing rows (course_lib.edit_scores)")
                continue
            chapter = entry.chapter
            if entry.domain == "shapes":
                ref = ref_for("shapes")
                for kw in [dict(text_kwargs or {})] + list((text_variants or {}).get(name, [])):
                    # a pipeline without steps (the token models) ignores a steps setting
                    kw = {k: v for k, v in kw.items() if _accepts(model, k)}
                    row = score_text_model(
                        name,
                        model,
                        ref,
                        n_shapes,
                        seed,
                        call_kwargs=kw,
                        latency_batch=latency_batch,
                        repeats=repeats,
                    )
                    rows.append({**row, "chapter": chapter})
            else:
                ref = ref_for("digits")
                for row_name, sampler, factor in samplers_for(name, model, ddpm_steps):
                    rows.append(
                        {
                            **score_digit_model(
                                row_name,
                                model,
                                ref,
                                n_digits,
                                seed,
                                sampler=sampler,
                                latency_batch=factor * latency_batch,
                                repeats=repeats,
                            ),
                            "chapter": chapter,
                        }
                    )
            for r in rows:
                notes.extend(f"{r['model']}: {note}" for note in r.pop("_notes", []))
            if verbose:
                print(f"scored {name}")
        except metrics.MetricUnavailable as exc:
            notes.append(f"{name}: skipped, {exc}")
        except Exception as exc:  # one broken model must not sink the table
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            notes.append(f"{name}: skipped, scoring raised {last}")
    return Scoreboard(rows, sorted(set(notes)), refs)


def plot(board: Scoreboard, fig=None):
    """One figure, three panels: FID per model (log scale, per domain, reference rows dashed),
    precision against recall, and latency per picture against size on disk. The FID panel numbers
    the models; the two scatter panels mark each model by its number (real pictures: a star),
    placed by :func:`course_lib.plotting.place_labels` so that no label covers another. Every text
    is 9 pt or larger; legends sit outside the panels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .plotting import place_labels

    df = board.frame()
    if fig is None:
        fig = plt.figure(figsize=(16, 6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    colors = {"digits": "tab:blue", "shapes": "tab:orange"}  # domain -> colour
    if df.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no model shipped yet", ha="center", va="center", fontsize=10)
            ax.set_axis_off()
        return fig
    is_real = df["model"].str.startswith("real ")
    models = df[~is_real]
    models = models.iloc[np.argsort(models["domain"].to_numpy(), kind="stable")]  # digits first
    number = {m: str(i + 1) for i, m in enumerate(models["model"])}  # the key: the FID panel
    reals = df[is_real]
    ax = axes[0]
    ax.barh(np.arange(len(models)), models["fid"], color=[colors[d] for d in models["domain"]])
    ax.set_yticks(np.arange(len(models)), [f"{m}  {number[m]:>2}" for m in models["model"]])
    ax.tick_params(labelsize=9)
    for _, r in reals.iterrows():
        ax.axvline(r["fid"], color=colors[r["domain"]], ls="--", lw=1.2,
                   label=f"{r['model']}: FID {r['fid']:.1f}")
    ax.set_xscale("log")
    ax.set_xlabel("domain FID (log scale, lower is better)")
    ax.set_title("FID per model (dashed: real pictures)", fontsize=10)
    ax.invert_yaxis()
    if len(reals):  # below the panel: inside, it hid bars
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    scatters = [(axes[1], df, "recall", "precision")]
    if "ms_per_picture" in models and "size_mb" in models:
        scatters.append((axes[2], models, "size_mb", "ms_per_picture"))
    for ax, rows, x, y in scatters:
        for _, r in rows.dropna(subset=[x, y]).iterrows():
            real = r["model"].startswith("real ")
            ax.scatter(r[x], r[y], color=colors[r["domain"]], marker="*" if real else "o",
                       s=130 if real else 45, zorder=4 if real else 3,
                       edgecolors="k" if real else "none", linewidths=0.6)
    pr = df[["recall", "precision"]].dropna()
    low = [max(-0.05, float(pr[c].min()) - 0.12) if len(pr) else -0.05 for c in pr.columns]
    axes[1].set_xlim(low[0], 1.12)  # zoomed to the points, with room for their labels
    axes[1].set_ylim(low[1], 1.12)
    axes[1].set_xlabel("recall (variety covered)")
    axes[1].set_ylabel("precision (realism)")
    axes[1].set_title("precision and recall (numbers: left panel)", fontsize=10)
    if len(scatters) > 1:
        axes[2].set_yscale("log")
        axes[2].margins(0.2, 0.35)
    axes[2].set_xlabel("size on disk (MB)")
    axes[2].set_ylabel("ms per picture (log scale)")
    axes[2].set_title("cost per picture (numbers: left panel)", fontsize=10)
    key = [Line2D([], [], color=c, marker="o", ls="", label=d.replace("shapes", "Shapes"))
           for d, c in colors.items()]
    key.append(Line2D([], [], color="0.5", marker="*", ms=12, mec="k", ls="", label="real"))
    axes[1].legend(handles=key, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                   ncol=3)
    fig.suptitle("The course's scoreboard (FID comparable within a domain only)", fontsize=11)
    fig.tight_layout()
    for ax, rows, x, y in scatters:  # after the layout: the labels go where they will stay
        rows = rows[~rows["model"].str.startswith("real ")].dropna(subset=[x, y])
        place_labels(ax, rows[x], rows[y], [number[m] for m in rows["model"]], fontsize=9)
    return fig
