"""The ladder of text encoders (chapter 06): chapter 05's text-to-image model read through
different text encoders, trained and measured the same way.

The rungs share one recipe (chapter 05's loop, :data:`LADDER_STEPS` steps) and one training text
(each caption kept canonical or reworded in the seen vocabulary,
:func:`course_lib.data.wordings.training_captions`); only ``text.kind`` differs
(:func:`ladder_config`): chapter 05's learned word table over the words of that text
(``shapes-t2i-learned-mix``, :func:`mix_vocabulary`), frozen all-MiniLM-L6-v2
(``shapes-t2i-minilm``) and frozen all-mpnet-base-v2 (``shapes-t2i-mpnet``). The frozen states
of every training text are computed once
(:meth:`course_lib.text_encoders.FrozenConditioner.precompute`).
Chapter 05's ``shapes-t2i`` (the same learned encoder, trained longer on canonical captions only)
is read beside them to ask what the training text changes.

Each model is asked for training captions three ways: canonically, in the seen wording and in the
unseen wording (:func:`prompt_sets`; :func:`subsample` picks an even-handed subset). A learned
table reads a word it never learned as ``<unk>`` or leaves it out (:func:`generate`).
:func:`judge_draws` draws several pictures per prompt on noise shared by every model, and the
shapes-judge reads them; :func:`bootstrap_results` gives each share a 95% bootstrap interval over
prompts and noise, :func:`paired_rows` the paired difference of two rungs
(:mod:`course_lib.roles`). :func:`wilson_interval` and :func:`interval_verdict` read one-draw
shares such as :func:`recorded_results` (what training measured on all 270 prompts, from the
manifest); :data:`CHANCE` is the level of guessing and :func:`ladder_figure` draws the ladder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch

from . import diffusion, runtime
from .data import shapes
from .data.wordings import paraphrase_prompts, training_captions
from .models import text_to_image as t2i
from .pretrained import TrainResult, info, register, run_recipe
from .roles import bootstrap_mean, difference_verdict, paired_difference
from .training import ms_per_picture

#: Accuracy of a guess uniform over the values: per attribute, and all five at once.
CHANCE = {
    **{a: 1 / len(shapes.ATTRIBUTE_VALUES[a]) for a in shapes.ATTRIBUTES},
    "all": 1 / math.prod(len(v) for v in shapes.ATTRIBUTE_VALUES.values()),
}
PROMPT_SETS = ("canonical", "seen wording", "unseen wording")
UNKNOWN_WORDS = ("unk", "skip")  # how a learned word table reads a word it never learned


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (better than p ± z·se near 0 or 1)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return min(p, max(0.0, centre - half)), max(
        p, min(1.0, centre + half)
    )  # p inside, as rounding may not


def share_interval(successes: int, n: int) -> tuple[float, float, float]:
    """``(successes / n, low, high)``: a measured share with its 95% Wilson interval
    (:func:`wilson_interval`), in the form :func:`interval_verdict` reads. Chapter 06 reads the
    planner's exact plans among the accepted this way."""
    if isinstance(successes, bool) or not isinstance(successes, (int, np.integer)):
        raise TypeError(f"successes must be an int count, got {successes!r}")
    if n > 0 and not 0 <= successes <= n:
        raise ValueError(f"successes must be from 0 to n={n}, got {successes}")
    low, high = wilson_interval(int(successes), n)  # checks n first
    return successes / n, low, high


def interval_verdict(a: tuple, b: tuple) -> str:
    """Read two measurements ``(value, low, high)`` (95% intervals, e.g. :func:`judge_set`'s)
    against each other: ``"higher"`` or ``"lower"`` when the intervals of ``a`` and ``b`` do not
    overlap, else ``"within noise (the 95% intervals overlap)"``."""
    for name, m in (("a", a), ("b", b)):
        if len(m) != 3 or not m[1] <= m[0] <= m[2]:
            raise ValueError(
                f"{name} must be (value, low, high) with low <= value <= high, got {m}"
            )
    if a[1] > b[2]:
        return "higher"
    if a[2] < b[1]:
        return "lower"
    return "within noise (the 95% intervals overlap)"


def prompt_sets(split: str = "train", seed: int = 30_000) -> dict:
    """``{name: (prompts, canonical captions they mean)}`` for every caption of ``split`` (270 for
    train): canonical, one seen-wording paraphrase each, one unseen-wording paraphrase each."""
    canon = shapes.all_captions(split)
    return {
        "canonical": (canon, canon),
        "seen wording": paraphrase_prompts(split, "seen", seed),
        "unseen wording": paraphrase_prompts(split, "unseen", seed),
    }


def known_words_only(tokenizer, prompts: list[str]) -> list[str]:
    """The prompts with every word outside a learned ``tokenizer``'s vocabulary left out (the
    other way :func:`generate` can read unknown words)."""
    return [" ".join(w for w in shapes.split_words(p) if w in tokenizer.stoi) for p in prompts]


@torch.no_grad()
def generate(
    pipe, prompts: list[str], seed: int = 0, batch_size: int = 90, unknown: str = "unk", **kw
) -> torch.Tensor:
    """One picture per prompt [n, 3, 32, 32]. A learned-vocabulary pipeline reads a word outside its
    table as ``<unk>`` (``unknown="unk"``, :class:`course_lib.text_encoders.unknown_as_unk`: a
    vector its training never updated) or leaves it out (``"skip"``, :func:`known_words_only`)."""
    from .text_encoders import unknown_as_unk

    if unknown not in UNKNOWN_WORDS:
        raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_WORDS)}, got {unknown!r}")
    learned = isinstance(pipe.text_encoder, t2i.ShapesTextEncoder)
    if learned and unknown == "skip":
        prompts = known_words_only(pipe.text_encoder.tokenizer, prompts)
    with unknown_as_unk(pipe) if learned else contextlib.nullcontext():
        return t2i.generate(pipe, list(prompts), seed=seed, batch_size=batch_size, **kw)


def judge_set(images: torch.Tensor, targets: list[str], judge=None) -> dict:
    """Per-attribute and all-five accuracy of pictures against the canonical captions they should
    show, each with its 95% interval:
    ``{"size": (acc, lo, hi), ..., "all": (...), "n": n, "correct": [n, 5]}``."""
    from .judges import score_shapes

    res = score_shapes(images, targets, judge)
    correct = res["correct"].bool()  # [n, 5]
    n = len(targets)
    out = {"n": n, "correct": correct}
    cols = {a: correct[:, i] for i, a in enumerate(shapes.ATTRIBUTES)}
    cols["all"] = correct.all(1)
    for k, c in cols.items():
        out[k] = share_interval(int(c.sum()), n)
    return out


def measure(
    pipes: dict, sets: dict | None = None, seed: int = 0, limit: int | None = None, **kw
) -> dict:
    """``{(encoder, prompt set): judge_set(...) plus "images", "prompts"}`` for every pipeline of
    ``pipes`` (``{name: pipeline}``) on every prompt set (default :func:`prompt_sets`), the first
    ``limit`` prompts of each (None: all)."""
    sets = sets if sets is not None else prompt_sets()
    out = {}
    for name, pipe in pipes.items():
        for set_name, (prompts, targets) in sets.items():
            prompts, targets = prompts[:limit], targets[:limit]
            images = generate(pipe, prompts, seed=seed, **kw)
            out[(name, set_name)] = dict(
                judge_set(images, targets), images=images, prompts=prompts, targets=targets
            )
    return out


def draw_seeds(draws: int, seed: int = 0) -> list[int]:
    """The noise seeds of ``draws`` pictures per prompt; every system gets the same ones."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    return [seed + 1000 * d for d in range(draws)]


def judge_draws(
    pipe, prompts: list, targets: list, draws: int = 3, seed: int = 0, **kw
) -> dict:
    """``draws`` pictures per prompt (the noise seeds of :func:`draw_seeds`, the same for every
    pipeline, so two pipelines are compared on the same noise), judged against ``targets``:
    ``{"correct": BoolTensor[n, draws, 5], "images": the first draw [n, 3, 32, 32]}``. A prompt
    of None (nothing to draw, e.g. a refused plan) is judged wrong on every attribute."""
    if len(prompts) != len(targets):
        raise ValueError(f"prompts and targets must pair up, got {len(prompts)}, {len(targets)}")
    keep = [i for i, p in enumerate(prompts) if p is not None]
    correct = torch.zeros(len(targets), draws, len(shapes.ATTRIBUTES), dtype=torch.bool)
    first = torch.zeros(len(targets), 3, 32, 32)
    for d, s in enumerate(draw_seeds(draws, seed)):
        if not keep:
            break
        images = generate(pipe, [prompts[i] for i in keep], seed=s, **kw)  # [m, 3, 32, 32]
        correct[keep, d] = judge_set(images, [targets[i] for i in keep])["correct"]
        if d == 0:
            first[keep] = images
    return {"correct": correct, "images": first}


def measure_draws(pipes: dict, sets: dict, draws: int = 3, seed: int = 0, **kw) -> dict:
    """:func:`judge_draws` of every pipeline of ``pipes`` on every prompt set of ``sets``:
    ``{(rung, set): {"correct", "images", "prompts", "targets"}}``."""
    out = {}
    for name, pipe in pipes.items():
        for set_name, (prompts, targets) in sets.items():
            r = judge_draws(pipe, prompts, targets, draws, seed, **kw)
            out[(name, set_name)] = dict(r, prompts=list(prompts), targets=list(targets))
    return out


def bootstrap_results(measured: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """:func:`measure_draws`'s tables read as shares with 95% bootstrap intervals over prompts and
    noise draws (:func:`course_lib.roles.bootstrap_mean`), in :func:`format_table`'s form:
    ``{key: {"size": (acc, lo, hi), ..., "all": (...), "n": prompts, "draws": k}}``."""
    out = {}
    for key, r in measured.items():
        c = r["correct"]  # [n, k, 5]
        cols = {a: c[..., i] for i, a in enumerate(shapes.ATTRIBUTES)}
        cols["all"] = c.all(-1)
        out[key] = {a: bootstrap_mean(v, n_boot, seed) for a, v in cols.items()}
        out[key].update(n=int(c.shape[0]), draws=int(c.shape[1]))
    return out


def paired_rows(
    measured: dict, pairs: list, set_names, attr: str = "all", n_boot: int = 2000, seed: int = 0
):
    """For each ``(a, b)`` rung pair and prompt set: ``(a, b, set, (diff, lo, hi), verdict)``, the
    paired difference in the share judged right on ``attr`` (an attribute, or "all" five;
    :func:`course_lib.roles.paired_difference`: same prompts, same noise)."""
    if attr not in CHANCE:
        raise ValueError(f"attr must be one of {', '.join(CHANCE)}, got {attr!r}")

    def right(key):
        c = measured[key]["correct"]  # [n, k, 5]
        return c.all(-1) if attr == "all" else c[..., shapes.ATTRIBUTES.index(attr)]

    rows = []
    for a, b in pairs:
        for s in set_names:
            if (a, s) in measured and (b, s) in measured:
                d = paired_difference(right((a, s)), right((b, s)), n_boot, seed)
                rows.append((a, b, s, d, difference_verdict(d)))
    return rows


def format_paired(rows: list) -> str:
    """:func:`paired_rows` as text, one line each."""
    return "\n".join(
        f"{a} - {b}, {s}: {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] {v}" for a, b, s, d, v in rows
    )


def subsample(sets: dict, n: int | None, seed: int = 0) -> dict:
    """The same ``n`` prompts of every set of :func:`prompt_sets`, drawn at random (a prefix would
    be lopsided: the captions are in attribute order); ``n`` None keeps them all."""
    size = len(next(iter(sets.values()))[0])
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= size):
        raise ValueError(f"n must be None or an int from 1 to {size}, got {n!r}")
    pick = (
        sorted(np.random.default_rng([seed, 67]).permutation(size)[:n].tolist())
        if n
        else range(size)
    )
    return {
        name: ([prompts[i] for i in pick], [targets[i] for i in pick])
        for name, (prompts, targets) in sets.items()
    }


def recorded_results(name: str) -> dict:
    """What ``python -m course_lib.pretrained train NAME`` measured on all 270 prompts of each set
    (:func:`evaluate_ladder_model`), in :func:`measure`'s form without the pictures:
    ``{set: {"size": (acc, lo, hi), ..., "all": (...), "n": n}}``; empty for a model whose record
    holds no ladder measurement (``shapes-t2i``)."""
    out = {}
    for set_name, q in info(name).get("quality", {}).items():
        if set_name in PROMPT_SETS:
            n = q["n"]
            out[set_name] = {
                "n": n,
                **{
                    k: (q[k], *wilson_interval(round(q[k] * n), n))
                    for k in (*shapes.ATTRIBUTES, "all")
                },
            }
    return out


def format_table(results: dict) -> str:
    """The ladder as text: one row per (encoder, prompt set), accuracy per attribute and all five,
    all five with its 95% interval, and a last row of chance levels."""
    cols = (*shapes.ATTRIBUTES, "all")
    lines = [
        f"{'encoder':22s}{'prompts':16s}"
        + "".join(f"{c:>7s}" for c in cols)
        + f"{'all five, 95% CI':>20s}"
    ]
    for (enc, set_name), r in results.items():
        lines.append(
            f"{enc:22s}{set_name:16s}"
            + "".join(f"{r[c][0]:7.2f}" for c in cols)
            + f"{'':>6s}[{r['all'][1]:.2f}, {r['all'][2]:.2f}]"
        )
    lines.append(f"{'chance':22s}{'':16s}" + "".join(f"{CHANCE[c]:7.2f}" for c in cols))
    return "\n".join(lines)


def format_parameters(n: int) -> str:
    """A parameter count for an axis label: ``22.7M``, ``12k`` or ``800``."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k" if n >= 1e3 else str(int(n))


def ladder_figure(
    results: dict, sizes: dict, attributes=("color", "shape", "all"), title: str | None = None
):
    """One panel per attribute: accuracy (with 95% intervals) against the text encoder's parameter
    count (log scale), one line per prompt set, the chance level dashed (the y axis starts a little
    below 0, so a chance level near 0 is not hidden by the axis). ``sizes``: ``{encoder:
    parameters}``. The legend has a row of its own under the panels and ``title`` a band of its
    own above them, so neither covers a curve. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if not attributes or any(a not in CHANCE for a in attributes):
        raise ValueError(f"attributes must be some of {', '.join(CHANCE)}, got {attributes!r}")
    encoders = list(dict.fromkeys(e for e, _ in results))
    missing = [e for e in encoders if e not in sizes]
    if missing:
        raise ValueError(f"sizes has no parameter count for {', '.join(missing)}")
    fig, axes = plt.subplots(
        1,
        len(attributes),
        figsize=(4.2 * len(attributes), 3.9),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, attr in zip(axes[0], attributes):
        for set_name in dict.fromkeys(s for _, s in results):
            xs = [sizes[e] for e in encoders if (e, set_name) in results]
            rs = [results[(e, set_name)][attr] for e in encoders if (e, set_name) in results]
            ys = np.array([r[0] for r in rs])
            err = np.clip(np.array([[r[0] - r[1], r[2] - r[0]] for r in rs]).T, 0, None)
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=set_name)
        ax.axhline(CHANCE[attr], ls="--", c="gray", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(
            [sizes[e] for e in encoders],
            [f"{e}\n{format_parameters(sizes[e])}" for e in encoders],
            fontsize=9,
        )
        ax.minorticks_off()
        ax.margins(x=0.12)  # tick labels of neighbouring panels apart
        ax.tick_params(labelsize=9)
        ax.set_title("all five attributes" if attr == "all" else attr, fontsize=10)
        ax.set_ylim(-0.06, 1.04)  # room under 0: all five's chance (1/324) sits on the axis
    axes[0, 0].set_ylabel("judged right (95% interval)", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# The trained rungs: shapes-t2i-learned-mix, shapes-t2i-minilm and shapes-t2i-mpnet
# --------------------------------------------------------------------------------------------
#: Registered name -> text-encoder kind. The three share one recipe and one training text; only
#: the text encoder differs (chapter 05's ``shapes-t2i`` is the same learned encoder trained longer
#: on canonical captions only).
LADDER_MODELS = {
    "shapes-t2i-learned-mix": "learned",
    "shapes-t2i-minilm": "minilm",
    "shapes-t2i-mpnet": "mpnet",
}
LADDER_STEPS = 2000
P_CANONICAL = 0.25  # share of training captions kept canonical; the rest reworded (seen)
MAX_LENGTH = 24  # tokens per caption for every trained rung (the longest seen wording has 20 words)


def ladder_config(kind: str, last_layers: int = 4) -> "t2i.TextToImageConfig":
    """Chapter 05's model reading text through ``kind``: a frozen encoder ("minilm", "mpnet"; 24
    tokens, the mean of its last ``last_layers`` hidden layers, what generalised best to unseen
    wording in the probes) or chapter 05's learned word table ("learned": 24 tokens, its own width
    and one Transformer layer)."""
    if kind not in t2i.TEXT_ENCODER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(t2i.TEXT_ENCODER_KINDS)}, got {kind!r}")
    if kind == "learned":
        return t2i.TextToImageConfig.from_dict({"text": {"max_length": MAX_LENGTH}})
    return t2i.TextToImageConfig.from_dict(
        {
            "text": {
                "kind": kind,
                "dim": t2i.FROZEN_WIDTHS[kind],
                "max_length": MAX_LENGTH,
                "layers": last_layers,
            }
        }
    )


def mix_vocabulary(captions: list[str]) -> list[str]:
    """The learned rung's word table: chapter 05's canonical words, then every other word of its
    training text in order of first use. A word outside it is read as :func:`generate` says."""
    words = list(shapes.canonical_vocabulary())
    known = set(words)
    for c in captions:
        for w in shapes.split_words(c):
            if w not in known:
                known.add(w)
                words.append(w)
    return words


def _with_word_table(model: "t2i.TextToImageModel", vocab: list[str]) -> "t2i.TextToImageModel":
    from .text_encoders import ShapesTextEncoder

    text = model.config.text
    model.text_encoder = ShapesTextEncoder(
        vocab=list(vocab),
        max_length=text.max_length,
        dim=text.dim,
        layers=text.layers,
        heads=text.heads,
    )
    return model


def build_learned_mix(config: dict) -> "t2i.TextToImageModel":
    """Rebuild ``shapes-t2i-learned-mix`` from its manifest config: chapter 05's model config plus
    ``"vocab"``, the word table its training text made (:func:`mix_vocabulary`)."""
    if not isinstance(config, dict) or not isinstance(config.get("vocab"), list):
        raise ValueError("config must be a dict with the model's fields and its 'vocab' list")
    rest = {k: v for k, v in config.items() if k != "vocab"}
    return _with_word_table(t2i.TextToImageModel(rest), config["vocab"])


def train_ladder_model(
    kind: str,
    steps: int = LADDER_STEPS,
    seed: int = 0,
    p_canonical: float = P_CANONICAL,
    device=None,
    progress: bool = True,
    **overrides,
):
    """Chapter 05's recipe (:class:`~course_lib.models.text_to_image.TrainConfig`; ``overrides``
    change its fields) on the ``kind`` encoder (:func:`ladder_config`), with reworded training
    captions (the same text for every kind and seed). Returns ``(ema_model, history, settings)``."""
    hp = t2i.TrainConfig.from_dict(dict(overrides, steps=steps))
    with runtime.seeded(seed):
        model = t2i.TextToImageModel(ladder_config(kind))
        ds = shapes.ShapesDataset(hp.n_train, seed=seed + 100, split="train")
        captions = training_captions(ds.captions, np.random.default_rng([seed, 66]), p_canonical)
        if kind == "learned":
            model = _with_word_table(model, mix_vocabulary(captions))
        else:
            model.text_encoder.precompute(captions + [""])  # the frozen states, once
        ema_model, history = t2i.train_on(
            model,
            diffusion.to_model_range(ds.images),
            captions,
            hp,
            steps,
            seed=seed,
            device=device,
            progress=progress,
            desc=f"shapes-t2i-{kind}",
        )
        return ema_model, history, hp


def evaluate_ladder_model(model) -> dict:
    """The three prompt sets of :func:`prompt_sets` (270 prompts each), judged: accuracy per
    attribute and all five, with the 95% interval of all five; and the sampling time per picture
    (:func:`course_lib.training.ms_per_picture` of the one sampling call; judging is not timed)."""
    pipe = t2i.make_pipeline(model)
    q = {}
    for set_name, (prompts, targets) in prompt_sets().items():
        made = {}
        ms = ms_per_picture(
            lambda: made.update(images=generate(pipe, prompts)), len(prompts), repeats=1, warmup=0
        )
        r = judge_set(made["images"], targets)
        q[set_name] = {k: round(r[k][0], 4) for k in (*shapes.ATTRIBUTES, "all")}
        q[set_name]["all_ci95"] = [round(r["all"][1], 4), round(r["all"][2], 4)]
        q[set_name]["n"] = r["n"]
        q[set_name]["ms_per_picture"] = round(ms, 1)
    q["num_inference_steps"] = pipe.default_num_inference_steps
    q["guidance_scale"] = pipe.default_guidance_scale
    return q


def _registered_trainer(kind: str):
    def train(seed: int = 0, quick: bool = False) -> TrainResult:
        steps = 20 if quick else LADDER_STEPS

        def notes(history, hp):
            reads = (
                "its own learned word table (one Transformer layer, width 64) over the words of "
                "its training text, trained with it"
                if kind == "learned"
                else f"frozen {kind} token states (mean of the last 4 layers) + pooled"
            )
            return (
                f"chapter 05's UNet and recipe ({history.steps} steps, batch {hp.batch_size}, EMA "
                f"{hp.ema_decay}, caption dropout {hp.caption_dropout}) reading {reads}; "
                f"{hp.n_train} training pictures, {P_CANONICAL:.0%} of their captions canonical, "
                "the rest one of 8 seen-vocabulary wordings per caption"
                + ("" if kind == "learned" else "; the sentence encoder is not in this file")
            )

        result = run_recipe(
            lambda: train_ladder_model(kind, steps, seed, progress=False),
            evaluate_ladder_model,
            notes=notes,
        )
        if kind == "learned":  # the word table travels with the config
            vocab = result.model.text_encoder.tokenizer.itos[len(shapes.SPECIAL_TOKENS) :]
            result = dataclasses.replace(
                result, config={**result.model.config.to_dict(), "vocab": vocab}
            )
        return result

    return train


for _name, _kind in LADDER_MODELS.items():
    register(
        _name,
        role="generator",
        domain="shapes",
        build=build_learned_mix if _kind == "learned" else t2i.TextToImageModel,
        train=_registered_trainer(_kind),
        evaluate=evaluate_ladder_model,
        finalize=t2i.make_pipeline,
        chapter="06",
        description=(
            f"chapter 05's text-to-image UNet reading {_kind} token states (ShapesPipeline)"
            if _kind != "learned"
            else "chapter 05's text-to-image UNet and learned word table, trained on the ladder's "
            "reworded text (ShapesPipeline)"
        ),
    )
