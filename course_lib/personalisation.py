"""Personalisation: teach ``shapes-t2i`` a shape it never saw, with a LoRA adapter (chapter 11).

The concept is the **ring** (:data:`course_lib.data.shapes.EXTRA_SHAPES`): a disc with a hole,
drawn by the course's renderer but named by no caption of the data set, so the model has never seen
one, and its word table has no word for it. From at most 32 captioned examples (``a large red ring
in the top left``) the adapter learns

* a new word: one new row of the text encoder's word table (textual inversion, started from the
  row of ``circle``); every other row, and the rest of the encoder, stays frozen;
* a rank-``r`` LoRA update of the UNet's attention projections (:mod:`course_lib.lora`).

How it is judged. The shapes-judge has no ring class (its heads are the data set's attributes), so
:func:`concept_check` reads the shape with a template reader (:func:`read_shapes`: the object's box
is found, every candidate shape is drawn by the renderer into that box, the best soft overlap
wins), and the judge reads the size, colour, row and column as for any caption. A picture is right
when all five are. Forgetting is the judge's all-five accuracy on the data set's 270 training
captions, before and after, with the same noise.

``python -m course_lib.pretrained train shapes-t2i-lora-ring --seed 0`` trains three ways with
the same examples and steps: LoRA alone, full fine-tuning, and LoRA with DreamBooth's prior
preservation (Ruiz et al. 2023: each step also fits pictures the base model drew for old captions,
so the update keeps the old captions' behaviour). All three are measured into the manifest; the
third is the shipped adapter.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import diffusion, lora, pretrained
from .config import Config
from .data import shapes
from .judges import load_shapes_judge, score_shapes
from .ladder import wilson_interval
from .models import text_to_image as t2i
from .runtime import get_device, seeded
from .text_encoders import unknown_as_unk

NAME = "shapes-t2i-lora-ring"
BASE = "shapes-t2i"


@dataclass
class AdapterConfig(Config):
    """What the adapter is and how it was trained (the manifest's ``config``)."""

    base: str = BASE
    base_sha256: str = ""  # the base checkpoint the adapter belongs to
    concept: str = "ring"  # the renderer's shape (shapes.EXTRA_SHAPES)
    word: str = "ring"  # the new word of the captions
    init_word: str = "circle"  # the known word whose row the new row starts from
    r: int = 4
    alpha: float = 4.0
    targets: list = field(default_factory=lambda: list(lora.DEFAULT_TARGETS))
    n_examples: int = 32
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3  # LoRA matrices and the new row
    full_lr: float = 3e-4  # full fine-tuning (every weight of the model)
    prior_weight: float = 1.0  # DreamBooth: weight of the old-caption loss
    n_prior: int = 64  # old-caption pictures the base model draws for it
    data_seed: int = 3


# --------------------------------------------------------------------------------------------
# The concept's data
# --------------------------------------------------------------------------------------------
def concept_specs() -> list[shapes.ShapeSpec]:
    """The 108 (size, colour, row, column) combinations, one spec each; their ``shape`` field
    (``circle``) is a stand-in that drawing and captions replace by the concept."""
    return [
        shapes.ShapeSpec(size, color, "circle", row, col)
        for size, color, row, col in itertools.product(
            shapes.SIZES, shapes.COLORS, shapes.ROWS, shapes.COLS
        )
    ]


def concept_caption(spec: shapes.ShapeSpec, word: str) -> str:
    """``a {size} {color} {word} {where}``: a canonical caption with the new word as its shape."""
    return f"a {spec.size} {spec.color} {word} {shapes.WHERE[(spec.row, spec.col)]}"


def concept_data(n: int = 32, seed: int = 3, concept: str = "ring", word: str = "ring"):
    """``n`` (at most 108) distinct combinations drawn as ``concept`` with their captions:
    ``(pictures [n, 3, 32, 32] in [0, 1], captions, specs)``, reproducible from ``seed``."""
    pool = concept_specs()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise ValueError(f"n must be an int from 1 to {len(pool)}, got {n!r}")
    rng = np.random.default_rng([seed, 7])
    specs = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
    images = shapes.render_as(specs, concept, np.random.default_rng([seed, 8]))
    return images, [concept_caption(s, word) for s in specs], specs


# --------------------------------------------------------------------------------------------
# The concept's check
# --------------------------------------------------------------------------------------------
SHAPE_CANDIDATES = shapes.SHAPES + shapes.EXTRA_SHAPES


@torch.no_grad()
def read_shapes(images: torch.Tensor, candidates=SHAPE_CANDIDATES, threshold: float = 0.5):
    """The shape each picture shows, by templates: the object is the set of pixels brighter than
    ``threshold`` of the picture's brightest (brightness: the largest channel); every candidate is
    drawn by the renderer into that object's box (side and centre shifted by up to 1 and 0.5 px) and
    the candidate with the largest soft overlap (sum of minima / sum of maxima) wins.

    ``images``: [n, 3, 32, 32] in [0, 1]. Returns ``(names, overlaps [n, len(candidates)])``; a
    picture with nothing bright reads ``"none"``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError("images must be a tensor [n, 3, H, W] in [0, 1]")
    bad = [c for c in candidates if c not in SHAPE_CANDIDATES]
    if bad or not candidates:
        raise ValueError(f"candidates must be among {SHAPE_CANDIDATES}, got {bad or candidates}")
    size = images.shape[-1]
    a = images.float().clamp(0, 1).amax(1)  # [n, H, W]
    a = a / a.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1)
    shifts = [
        (ds, dx, dy)
        for ds in (-1, -0.5, 0, 0.5, 1)
        for dx in (-0.5, 0, 0.5)
        for dy in (-0.5, 0, 0.5)
    ]
    names, scores = [], torch.zeros(len(images), len(candidates))
    for i in range(len(images)):
        m = a[i] > threshold  # [H, W]
        if images[i].amax() < 0.05 or not m.any():
            names.append("none")
            continue
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        cy, cx = (rows.min() + rows.max() + 1).item() / 2, (cols.min() + cols.max() + 1).item() / 2
        side = float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
        geoms = [
            shapes.Geometry(max(side + ds, 2.0), cx + dx, cy + dy, (1.0, 1.0, 1.0))
            for ds, dx, dy in shifts
        ]
        drawn = shapes.render_geometry(
            [c for c in candidates for _ in geoms], geoms * len(candidates), size, supersample=2
        )[:, 0]  # [C * G, H, W]
        inter = torch.minimum(drawn, a[i]).flatten(1).sum(1)
        union = torch.maximum(drawn, a[i]).flatten(1).sum(1)
        overlap = (inter / union).view(len(candidates), len(geoms)).amax(1)  # [C]
        scores[i] = overlap
        names.append(candidates[int(overlap.argmax())])
    return names, scores


@torch.no_grad()
def concept_check(images: torch.Tensor, specs, concept: str = "ring", judge=None) -> dict:
    """How often pictures show what their concept captions ask: ``shape`` (the template reader
    reads ``concept``), ``size``, ``color``, ``row``, ``col`` (the shapes-judge) and ``all`` (all
    five), with ``correct``: BoolTensor[n, 5] (shape first)."""
    if concept not in SHAPE_CANDIDATES:
        raise ValueError(f"concept must be one of {SHAPE_CANDIDATES}, got {concept!r}")
    specs = list(specs)
    if len(specs) != len(images):
        raise ValueError(f"{len(images)} pictures but {len(specs)} specs")
    judge = judge if judge is not None else load_shapes_judge(images.device)
    read, _ = read_shapes(images)
    shape_ok = torch.tensor([r == concept for r in read])  # [n]
    want = shapes.spec_labels(specs)  # [n, 5]
    got = judge.eval().predict(images)  # [n, 5]
    keep = [i for i, a in enumerate(shapes.ATTRIBUTES) if a != "shape"]
    correct = torch.cat([shape_ok[:, None], got[:, keep] == want[:, keep]], 1)  # [n, 5]
    names = ["shape"] + [shapes.ATTRIBUTES[i] for i in keep]
    out = {a: correct[:, j].float().mean().item() for j, a in enumerate(names)}
    out["all"] = correct.all(1).float().mean().item()
    out["correct"] = correct
    out["read"] = read
    return out


def share(hits: int, n: int) -> dict:
    """``{"share", "low", "high", "n"}``: a success rate with its 95% Wilson interval."""
    low, high = wilson_interval(int(hits), n)
    return {"share": round(hits / n, 4), "low": round(low, 4), "high": round(high, 4), "n": n}


# --------------------------------------------------------------------------------------------
# Training: LoRA (+ prior preservation) or every weight
# --------------------------------------------------------------------------------------------
def base_model(cfg: AdapterConfig, device=None) -> t2i.TextToImageModel:
    """The base checkpoint as a trainable module (hash-verified)."""
    return pretrained.load_module(cfg.base, device or get_device())


def prior_data(model, n: int, seed: int, steps: int | None = None):
    """DreamBooth's prior: ``n`` pictures the base model draws for old training captions."""
    caps = [
        shapes.all_captions("train")[i]
        for i in np.random.default_rng([seed, 9]).integers(0, 270, size=n)
    ]
    pipe = t2i.make_pipeline(model)
    return t2i.generate(pipe, caps, seed=seed, num_inference_steps=steps), caps


def train_concept(
    model: t2i.TextToImageModel,
    cfg: AdapterConfig,
    method: str = "lora",
    steps: int | None = None,
    seed: int = 0,
    prior=None,
) -> dict:
    """Teach ``model`` (in place) the concept: ``method`` "lora" (the new row + LoRA matrices) or
    "full" (the new row + every weight). ``prior``: ``(pictures, captions)`` of old captions fitted
    alongside with weight ``cfg.prior_weight`` (DreamBooth's prior preservation). AdamW, constant
    rate, no caption dropout (the empty caption keeps the base model's meaning). Returns
    ``{"trained_parameters", "steps", "seconds", "losses"}``."""
    if method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}")
    steps = cfg.steps if steps is None else steps
    device = next(model.parameters()).device
    enc = model.text_encoder
    x, caps, _ = concept_data(cfg.n_examples, cfg.data_seed, cfg.concept, cfg.word)
    init = enc.embed.weight[enc.tokenizer.stoi[cfg.init_word]]
    model.requires_grad_(method == "full")
    row = lora.add_words(enc, {cfg.word: init})
    if method == "lora":
        params = lora.add_lora(model.unet, lora.lora_config(cfg.r, cfg.alpha, cfg.targets))
        lr = cfg.lr
    else:
        params = [p for p in model.parameters() if p.requires_grad and p is not row]
        lr = cfg.full_lr
    opt = torch.optim.AdamW(
        [{"params": params, "lr": lr}, {"params": [row], "lr": cfg.lr}], weight_decay=0.0
    )
    trained = sum(p.numel() for p in params) + row.numel()
    ac = diffusion.NoiseSchedule.make(
        model.config.schedule, model.config.num_train_timesteps
    ).alphas_cumprod.to(device)
    g = torch.Generator().manual_seed(seed + 11)
    x0 = diffusion.to_model_range(x).to(device)
    tok = enc.tokenizer(caps)
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    if prior is not None:
        px0 = diffusion.to_model_range(prior[0]).to(device)
        ptok = enc.tokenizer(prior[1])
        pids, pmask = ptok["input_ids"].to(device), ptok["attention_mask"].to(device)

    def loss_on(xb, idb, mb):
        states, pooled = model.encode(idb, mb)
        return diffusion.diffusion_loss(
            lambda xt, t: model.denoise(xt, t, states, pooled),
            xb,
            ac,
            model.config.prediction_type,
            generator=g,
        )

    losses, t0 = [], time.perf_counter()
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(x0), (cfg.batch_size,), generator=g)
        loss = loss_on(x0[b], ids[b], mask[b])
        if prior is not None:
            pb = torch.randint(0, len(px0), (cfg.batch_size,), generator=g)
            loss = loss + cfg.prior_weight * loss_on(px0[pb], pids[pb], pmask[pb])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params + [row], 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    return {
        "trained_parameters": trained,
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "losses": losses,
    }


# --------------------------------------------------------------------------------------------
# Measuring: the concept, and the old captions
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def measure(
    pipe,
    cfg: AdapterConfig,
    n_concept: int = 108,
    n_old: int = 270,
    seed: int = 0,
    old_baseline: dict | None = None,
    **call,
) -> dict:
    """The concept check on the first ``n_concept`` of the 108 concept captions and the judge's
    all-five accuracy on the first ``n_old`` of the 270 training captions, one picture each, noise
    from ``seed`` (the same noise for every model). With ``old_baseline`` (this function's output on
    the base model) also the forgetting: the all-five drop in points."""
    specs = concept_specs()[:n_concept]
    caps = [concept_caption(s, cfg.word) for s in specs]
    res = concept_check(t2i.generate(pipe, caps, seed=seed, **call), specs, cfg.concept)
    old = shapes.all_captions("train")[:n_old]
    old_ok = old_captions_right(pipe, old, seed, **call)
    out = {
        "concept_all": share(int(res["correct"].all(1).sum()), n_concept),
        "concept_shape": share(int(res["correct"][:, 0].sum()), n_concept),
        "old_all": share(old_ok, len(old)),
    }
    if old_baseline is not None:
        out["forgetting_points"] = round(
            100 * (old_baseline["old_all"]["share"] - out["old_all"]["share"]), 2
        )
    return out


def old_captions_right(pipe, captions, seed: int = 0, **call) -> int:
    """How many of ``captions`` the pipeline draws with all five attributes right (one picture
    each, noise from ``seed``): the forgetting measure, also chapter 07's editing rows'."""
    ok = score_shapes(t2i.generate(pipe, captions, seed=seed, **call), captions)["correct"]
    return int(ok.all(1).sum())


@torch.no_grad()
def measure_base(pipe, cfg: AdapterConfig, **kw) -> dict:
    """:func:`measure` on the base model, which reads the new word as ``<unk>``."""
    with unknown_as_unk(pipe):
        return measure(pipe, cfg, **kw)


def file_bytes(state: dict) -> int:
    """Bytes of ``state`` saved as a safetensors file."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
        return path.stat().st_size


# --------------------------------------------------------------------------------------------
# The shipped adapter: `python -m course_lib.pretrained train shapes-t2i-lora-ring`
# --------------------------------------------------------------------------------------------
class ConceptAdapter(nn.Module):
    """An adapter's tensors as a module, so that the registry saves and loads it like any model.
    Its ``state_dict`` is the adapter file's: diffusers' LoRA key names and the added word's row
    (:func:`course_lib.lora.adapter_state_dict`), so ``pipe.load_lora_weights(path)`` reads the
    shipped file directly."""

    def __init__(self, config: "AdapterConfig | dict | None" = None, base_config=None):
        super().__init__()
        self.config = AdapterConfig.from_dict(config)
        base_config = (
            base_config if base_config is not None else pretrained.info(self.config.base)["config"]
        )
        shell = t2i.TextToImageModel(base_config)  # only for the names and shapes
        lora.add_words(shell.text_encoder, {self.config.word: torch.zeros(shell.config.text.dim)})
        lora.add_lora(
            shell.unet, lora.lora_config(self.config.r, self.config.alpha, self.config.targets)
        )
        names = lora.adapter_state_dict(shell.unet, shell.text_encoder)
        self.names = sorted(names)
        self.tensors = nn.ParameterList(
            nn.Parameter(torch.zeros_like(names[k]), requires_grad=False) for k in self.names
        )

    def state_dict(self, *args, **kwargs) -> dict:
        return {k: p.detach() for k, p in zip(self.names, self.tensors)}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        missing = sorted(set(self.names) - set(state))
        extra = sorted(set(state) - set(self.names))
        if missing or extra:
            raise ValueError(f"adapter tensors missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for k, p in zip(self.names, self.tensors):
                p.copy_(state[k])
        return None

    @classmethod
    def from_model(cls, config: AdapterConfig, model: t2i.TextToImageModel) -> "ConceptAdapter":
        adapter = cls(config, model.config)
        adapter.load_state_dict(lora.adapter_state_dict(model.unet, model.text_encoder))
        return adapter


def build(config: dict) -> ConceptAdapter:
    return ConceptAdapter(config)


def finalize(adapter: ConceptAdapter, device=None):
    """The base pipeline with the adapter loaded (``pipe.unload_lora_weights()`` gives the base
    back). Refuses an adapter trained on another version of the base checkpoint."""
    cfg = adapter.config
    have = pretrained.info(cfg.base)["sha256"]
    if cfg.base_sha256 and cfg.base_sha256 != have:
        raise pretrained.CheckpointError(
            f"{NAME} was trained on {cfg.base} with sha256 {cfg.base_sha256[:12]}..., the shipped "
            f"one has {have[:12]}...; train the adapter again: "
            f"python -m course_lib.pretrained train {NAME} --seed 0"
        )
    device = device if device is not None else next(adapter.parameters()).device
    pipe = pretrained.load(cfg.base, device)
    pipe.load_lora_weights(adapter.state_dict())
    return pipe


def evaluate(adapter: ConceptAdapter) -> dict:
    """The adapter's concept success and forgetting (108 concept captions, 270 old ones)."""
    pipe = finalize(adapter)
    base = pretrained.load(adapter.config.base, next(adapter.parameters()).device)
    base_q = measure_base(base, adapter.config)
    q = measure(pipe, adapter.config, old_baseline=base_q)
    return {"adapter": q, "base": base_q}


def _method_row(info: dict, q: dict, state_bytes: int) -> dict:
    return {
        "trained_parameters": info["trained_parameters"],
        "file_bytes": state_bytes,
        "train_seconds": info["seconds"],
        "steps": info["steps"],
        **q,
    }


def train_registered(seed: int = 0, quick: bool = False) -> pretrained.TrainResult:
    """The shipped recipe, LoRA with DreamBooth's prior preservation, and what it is compared with:
    LoRA alone and full fine-tuning (every weight trained), with the same examples and steps. The
    three run in this order from one seed, so the recipe reproduces each. ``quick``: 4 steps each,
    measured on 6 + 6 captions."""
    cfg = AdapterConfig(base_sha256=pretrained.info(BASE)["sha256"])
    steps = 4 if quick else cfg.steps
    n = {"n_concept": 6, "n_old": 6} if quick else {}
    device = get_device()
    with seeded(seed):
        base = base_model(cfg, device)
        base_q = measure_base(t2i.make_pipeline(base), cfg, seed=seed, **n)
        model = copy.deepcopy(base)
        info = train_concept(model, cfg, "lora", steps, seed)
        lora_q = measure(t2i.make_pipeline(model), cfg, seed=seed, old_baseline=base_q, **n)
        # (building the adapter module draws from torch's generator: kept here, so that the
        # runs after it start from the same random state every time)
        plain = ConceptAdapter.from_model(cfg, model)
        rows = {"lora": _method_row(info, lora_q, file_bytes(plain.state_dict()))}
        del model, plain
        full = copy.deepcopy(base)
        info = train_concept(full, cfg, "full", steps, seed)
        full_q = measure(t2i.make_pipeline(full), cfg, seed=seed, old_baseline=base_q, **n)
        rows["full"] = _method_row(info, full_q, file_bytes(full.state_dict()))
        del full
        pp = copy.deepcopy(base)
        prior = prior_data(base, 8 if quick else cfg.n_prior, seed)
        info = train_concept(pp, cfg, "lora", steps, seed, prior=prior)
        pp_q = measure(t2i.make_pipeline(pp), cfg, seed=seed, old_baseline=base_q, **n)
        adapter = ConceptAdapter.from_model(cfg, pp)
        rows["lora_prior"] = _method_row(info, pp_q, file_bytes(adapter.state_dict()))
    quality = {
        "adapter": pp_q,
        "shipped": "lora_prior",
        "base": base_q,
        **rows,
        "base_file_bytes": pretrained.info(BASE)["bytes"],
        "base_parameters": sum(p.numel() for p in base.parameters()),
    }
    notes = (
        f"{steps} steps, batch {cfg.batch_size}, {cfg.n_examples} examples; LoRA r={cfg.r} "
        f"alpha={cfg.alpha} on {', '.join(cfg.targets)}; new word '{cfg.word}' from the row of "
        f"'{cfg.init_word}'; prior preservation: {cfg.n_prior} pictures of old captions drawn by "
        f"the base model, weight {cfg.prior_weight}; AdamW lr {cfg.lr} (full fine-tuning "
        f"{cfg.full_lr}); LoRA alone and full fine-tuning are measured, not shipped"
    )
    return pretrained.TrainResult(adapter, cfg, quality, notes)


pretrained.register(
    NAME,
    role="component",
    domain="shapes",
    build=build,
    train=train_registered,
    evaluate=evaluate,
    finalize=finalize,
    chapter="11",
    description="LoRA adapter for shapes-t2i: the new word 'ring' and a rank-4 update of the "
    "UNet's attention projections, trained with prior preservation "
    "(pipe.load_lora_weights / unload_lora_weights)",
)
