"""Reflow: straightening a flow until one or two Euler steps draw the picture (chapter 09's last
part; rectified flow's second round, Liu et al. 2023).

A flow trained on independent pairs (a picture, any noise) has curved paths: the straight lines
between pairs cross, and the learned flow, which cannot cross itself, bends around them; a few
Euler steps then cut the corners. Reflow changes the pairs, not the method:

1. run the trained flow (chapter 05's ``shapes-t2i-dit``, 20 Euler steps, guidance 3) from noise
   ε to its picture x̂_0, for many noise draws and captions;
2. train a copy of it with the same flow-matching loss on the pairs (x̂_0, ε): the lines between
   these pairs cross far less (each ε has its own picture), so the new flow is nearly straight, and
   Euler's first step already lands near where 20 steps went.

Guidance is folded in for free: the pairs come from the guided flow, so the reflowed model samples
with one network pass per step (guidance 1). Chapter 09 compares it with the guided progressively
distilled student (``shapes-t2i-fast``) on steps, time per picture, accuracy, KID and training time.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch

from .. import arguments, diffusion, flow, judges, pretrained, runtime
from .. import sample_quality as sq
from ..config import Config
from ..data import shapes
from ..pipelines import quiet
from ..training import EMA, budget_fraction, cosine_with_warmup, fit, infinite_loader, make_step
from . import dit, fast
from . import text_to_image as t2i

NAME = "shapes-t2i-reflow"
TEACHER = "shapes-t2i-dit"


@dataclasses.dataclass
class ReflowConfig(Config):
    """The ``shapes-t2i-reflow`` recipe."""

    pairs_per_caption: int = 30  # noise draws per train caption: 270 x 30 = 8,100 pairs
    teacher_steps: int = 20  # Euler steps the teacher takes to make a pair
    teacher_guidance: float = 3.0  # guidance folded into the pairs
    steps: int = 1500  # optimiser steps on the pairs
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 50
    final_lr_frac: float = 0.1
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    time_sampling: str = "uniform"  # flow.TIME_SAMPLINGS
    num_inference_steps: int = 1  # the default: the lowest KID of the re-measured rows


def pair_loss(model_fn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The reflow loss on coupled pairs (chapter 09's exercise 1): flow matching's squared error
    between ``model_fn(x_t, 1000 t)`` and the velocity ε - x̂_0 at x_t = (1 - t) x̂_0 + t ε, where
    ``x0`` [n, C, H, W] are the teacher's pictures of ``noise`` [n, C, H, W] (each ε keeps its own
    picture) and ``t`` [n] the training times in [0, 1]. A scalar (the mean over every number)."""
    x_t = flow.interpolate(x0, noise, t)  # [n, C, H, W]
    target = flow.velocity_target(x0, noise)  # [n, C, H, W]
    out = model_fn(x_t, t * 1000)  # diffusers' timesteps: 1000 t
    return ((out.float() - target.float()) ** 2).mean()


@torch.no_grad()
def make_pairs(
    teacher: dit.DiTModel,
    captions: list[str],
    steps: int = 20,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 270,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε)`` [N, 3, 32, 32]: fresh noise for each caption and the teacher's picture for it
    (its pipeline: Euler, ``steps`` steps, guidance ``guidance_scale``), in the model's range
    [-1, 1]."""
    pipe = dit.make_pipeline(teacher.eval())
    noise = torch.randn(
        (len(captions), 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE),
        generator=torch.Generator().manual_seed(seed),
    )
    x0 = []
    with quiet(pipe):
        for i in range(0, len(captions), batch_size):
            x0.append(
                pipe(
                    captions[i : i + batch_size],
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    latents=noise[i : i + batch_size],
                    output_type="pt",
                ).images
            )
    return diffusion.to_model_range(torch.cat(x0)), noise


def train_reflow(
    teacher: dit.DiTModel,
    seed: int = 0,
    captions: list[str] | None = None,
    progress: bool = False,
    callback=None,
    loss=None,
    **overrides,
):
    """Reflow ``teacher`` (a flow-matching :class:`~course_lib.models.dit.DiTModel`): make the
    pairs, then train a copy of it on them (:class:`ReflowConfig`; ``overrides`` change its fields).
    ``captions``: the captions to pair (default: the 270 train captions, ``pairs_per_caption`` times
    each). ``loss(model_fn, x0, noise, t) -> scalar``: the loss on a batch of pairs with training
    times ``t`` [n] (default :func:`pair_loss`; chapter 09 passes the learner's own).

    Returns ``(student, history, log)``; ``log`` has the CPU seconds of making the pairs and of
    training.
    """
    hp = ReflowConfig.from_dict(overrides)
    loss = pair_loss if loss is None else loss
    if not callable(loss):
        raise TypeError(f"loss must be a function (model_fn, x0, noise, t) -> scalar, got {loss!r}")
    arguments.choice(
        teacher.config.prediction_type, (flow.PREDICTION_TYPE,), "the teacher's prediction_type"
    )
    dev = next(teacher.parameters()).device
    caps = captions if captions is not None else shapes.all_captions("train") * hp.pairs_per_caption
    c0 = time.process_time()
    x0, noise = make_pairs(teacher, caps, hp.teacher_steps, hp.teacher_guidance, seed)
    pair_cpu = time.process_time() - c0

    with runtime.seeded(seed):
        student = copy.deepcopy(teacher).train()
        student.config = teacher.config.replace(
            guidance_scale=1.0, num_inference_steps=hp.num_inference_steps
        )
        tok = student.text_encoder.tokenizer(caps)
        data = torch.utils.data.TensorDataset(x0, noise, tok["input_ids"], tok["attention_mask"])
        ema = EMA(student, decay=hp.ema_decay)
        opt = torch.optim.AdamW(student.parameters(), lr=hp.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(hp.warmup, hp.final_lr_frac, budget_fraction(hp.steps, None))
        )
        g = torch.Generator().manual_seed(seed + 1)

        def loss_fn(m, batch):
            xb, eb, ids, mask = (b.to(dev) for b in batch)
            states, pooled = m.encode(ids, mask)  # the pairs' own captions
            t = flow.sample_time(len(xb), g, hp.time_sampling).to(dev, xb.dtype)  # [n]
            return loss(lambda x, ts: m.denoise(x, ts, states, pooled), xb, eb, t)

        c1 = time.process_time()
        step_fn = make_step(student, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=hp.grad_clip)
        loader = infinite_loader(data, min(hp.batch_size, len(data)), seed=seed)
        hist = fit(
            step_fn, loader, steps=hp.steps, desc="reflow", progress=progress, callback=callback
        )
        out = ema.module.eval()
        out.config = student.config
        log = {
            "pairs": len(caps),
            "pairs_cpu_seconds": round(pair_cpu, 1),
            "train_cpu_seconds": round(time.process_time() - c1, 1),
            "hp": hp,
        }
        log["cpu_minutes"] = round((log["pairs_cpu_seconds"] + log["train_cpu_seconds"]) / 60, 2)
        return out, hist, log


# --------------------------------------------------------------------------------------------
# Measuring: the rows of chapter 09's table
# --------------------------------------------------------------------------------------------
def measure(
    pipe,
    num_inference_steps: int,
    guidance_scale: float | None = None,
    reference: torch.Tensor | None = None,
    seed: int = 0,
    captions: list[str] | None = None,
    heldout: list[str] | None = None,
    timing_captions: int = 32,
) -> dict:
    """One row of chapter 09's few-step table for any Shapes pipeline (``shapes-t2i-reflow``, its
    teacher, the distilled ``shapes-t2i-fast``): all-five accuracy on ``captions`` (default: the 270
    train captions) and ``heldout`` (default: the 54 held-out ones), KID x 1000 on the judge's
    features against ``reference`` (real renderings of ``captions``,
    :func:`course_lib.sample_quality.reference_set`; chapter 09's paired KID) with its jackknife
    standard error (``kid_se_x1000``, as chapter 08's tables), network passes and ms per picture
    (one batch of ``timing_captions``, median of 2, after a warm-up call)."""
    kw = {
        "num_inference_steps": arguments.steps(num_inference_steps, 1000),
        "guidance_scale": guidance_scale,
    }
    caps = list(captions) if captions is not None else shapes.all_captions("train")
    held = list(heldout) if heldout is not None else shapes.all_captions("heldout")
    reference = reference if reference is not None else sq.reference_set(pipe, caps)
    q = sq.quality(pipe, t2i.generate(pipe, caps, seed=seed, **kw), caps, reference)
    heldout = judges.score_shapes(t2i.generate(pipe, held, seed=seed, **kw), held)["all"]
    w = pipe.default_guidance_scale if guidance_scale is None else guidance_scale
    timing = shapes.all_captions("train")[:timing_captions]
    t2i.generate(pipe, timing[:2], **kw)
    return {
        "num_inference_steps": num_inference_steps,
        "network_passes_per_picture": num_inference_steps * (1 if w == 1.0 else 2),
        "train_all": round(q["accuracy"], 4),
        "heldout_all": round(float(heldout), 4),
        "kid_x1000": round(q["kid"], 2),
        "kid_se_x1000": round(q["kid_se"], 2),
        "ms_per_picture": fast.ms_per_picture(pipe, timing, **kw),
    }


def evaluate(model: dit.DiTModel, teacher: dit.DiTModel | None = None) -> dict:
    """The reflowed model at 1, 2 and 4 Euler steps against its teacher at 1, 2 and 20 (guidance 3),
    measured in one run on all 270 train and 54 held-out captions."""
    teacher = (
        teacher
        if teacher is not None
        else pretrained.load_module(TEACHER, next(model.parameters()).device)
    )
    pipe, teacher_pipe, caps = (
        dit.make_pipeline(model),
        dit.make_pipeline(teacher),
        shapes.all_captions("train"),
    )
    ref = sq.reference_set(pipe, caps)
    rows = {
        f"reflow_{s}_step{'s' if s > 1 else ''}": measure(pipe, s, reference=ref) for s in (1, 2, 4)
    }
    for s in (1, 2, teacher.config.num_inference_steps):
        rows[f"teacher_{s}_step{'s' if s > 1 else ''}"] = measure(teacher_pipe, s, reference=ref)
    real = sq.quality(pipe, sq.reference_set(pipe, caps, per_target=1, seed=99), caps, ref)
    return {
        "rows": rows,
        "real_pictures_kid_x1000": round(real["kid"], 2),
        "num_inference_steps": model.config.num_inference_steps,
        "guidance_scale": model.config.guidance_scale,
    }


def train_registered(seed: int = 0, quick: bool = False) -> pretrained.TrainResult:
    """``shapes-t2i-reflow`` from the shipped ``shapes-t2i-dit`` (:class:`ReflowConfig`;
    quick: 6 pairs, 3 steps)."""
    teacher = pretrained.load_module(TEACHER)
    over = {"steps": 3, "teacher_steps": 2} if quick else {}
    caps = shapes.all_captions("train")[:6] if quick else None
    student, hist, log = train_reflow(teacher, seed=seed, captions=caps, progress=not quick, **over)
    quality = evaluate(student, teacher)
    quality.update(
        train_steps=hist.steps,
        reflow_pairs=log["pairs"],
        pairs_cpu_seconds=log["pairs_cpu_seconds"],
        train_cpu_seconds=log["train_cpu_seconds"],
        training_cpu_minutes=log["cpu_minutes"],
    )
    hp = log["hp"]
    notes = (
        f"from {TEACHER}: {log['pairs']} pairs (noise, the teacher's picture at "
        f"{hp.teacher_steps} Euler steps, guidance {hp.teacher_guidance} folded in), then "
        f"{hist.steps} steps of flow matching on them from the teacher's weights, batch "
        f"{hp.batch_size}, AdamW lr {hp.lr} warm-up + cosine, EMA "
        f"{hp.ema_decay}; pairs {log['pairs_cpu_seconds']:.0f} CPU s, training "
        f"{log['train_cpu_seconds']:.0f} CPU s"
    )
    return pretrained.TrainResult(student, student.config, quality, notes)


def build(config: dict) -> dit.DiTModel:
    return dit.DiTModel(config)


pretrained.register(
    NAME,
    role="generator",
    domain="shapes",
    build=build,
    train=train_registered,
    evaluate=evaluate,
    finalize=dit.finalize,
    chapter="09",
    description="shapes-t2i-dit reflowed (rectified flow's second round, guidance "
    "folded in): 1-2 Euler steps, one pass each; ShapesDiTPipeline",
)
