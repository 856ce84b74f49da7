"""A Diffusion Transformer for Shapes, trained with flow matching: the 2024 recipe in miniature
(chapter 05's last part; chapter 09 straightens it by reflow).

The backbone is diffusers' ``SD3Transformer2DModel``, the MMDiT of Stable Diffusion 3 (Esser et al.
2024), a sixteenth of SD3 Medium's width (96 against 1,536), under a thousandth of its parameters:

* **patches**: the picture is folded 2x2 into channels as in chapter 05 (3x32x32 -> 12x16x16), then
  cut into 2x2 patches of that grid: 64 tokens, each a 4x4-pixel patch (Peebles & Xie 2023's
  "patchify"), with fixed 2-D sine-cosine positions;
* **conditioning by adaLN-Zero**: the timestep and the pooled caption vector are embedded and
  summed, and every block turns that sum into a shift, a scale and a gate for its LayerNorms and
  residual branches. The gates start at zero (:func:`init_adaln_zero`), so every block starts as the
  identity and the untrained network outputs 0 (Peebles & Xie 2023, sec. 3.2);
* **joint attention**: the caption's word states (chapter 05's text encoder) are a second stream of
  tokens with weights of their own; picture and word tokens attend to each other in one attention
  over both (SD3's MMDiT), where the U-Net's pictures cross-attend to the words.

Training: chapter 05's training loop (:func:`course_lib.models.text_to_image.train_on`: caption
dropout, AdamW, warm-up and cosine decay, EMA) on the flow-matching loss of :mod:`course_lib.flow`
(``prediction_type="flow_prediction"``), or v-prediction for the comparison with the U-Net's recipe.
Sampling: :class:`ShapesDiTPipeline`, chapter 05's pipeline with ``pipe.transformer`` as its
backbone and ``FlowMatchEulerDiscreteScheduler`` as its sampler, through the course's one loop.
"""

from __future__ import annotations

import dataclasses
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel

from .. import arguments, diffusion, flow, pretrained, runtime, sampling
from ..config import Config
from ..data import shapes
from ..pipelines import CoursePipeline
from . import text_to_image as t2i

PREDICTION_TYPES = (flow.PREDICTION_TYPE, "v_prediction")


@dataclasses.dataclass
class DiTConfig(Config):
    fold: int = 2  # pixel_unshuffle factor: 3x32x32 -> 12x16x16
    patch_size: int = 2  # patches of the folded grid: 8x8 = 64 tokens of 4x4 pixels
    num_layers: int = 4  # MMDiT blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 24  # width = heads x head dim = 96
    text: t2i.TextEncoderConfig = dataclasses.field(default_factory=t2i.TextEncoderConfig)
    prediction_type: str = (
        flow.PREDICTION_TYPE
    )  # "flow_prediction" (flow matching) or "v_prediction"
    schedule: str = "cosine"  # v-prediction only: chapter 04's noise schedule
    num_train_timesteps: int = 1000
    shift: float = 1.0  # flow matching: the sampler's timestep shift (Esser et al. 2024)
    sampler: str = "flow-euler"  # the pipeline's sampler (course_lib.sampling.make_scheduler)
    num_inference_steps: int = 20
    guidance_scale: float = 3.0

    def __post_init__(self):
        arguments.choice(self.prediction_type, PREDICTION_TYPES, "prediction_type")
        flow_model = self.prediction_type == flow.PREDICTION_TYPE
        allowed = (
            sampling.FLOW_SAMPLERS
            if flow_model
            else sampling.SAMPLERS + sampling.STOCHASTIC_SAMPLERS
        )
        arguments.choice(self.sampler, allowed, f"sampler (of a {self.prediction_type} model)")
        if shapes.IMAGE_SIZE % (self.fold * self.patch_size):
            raise ValueError(
                f"fold x patch_size must divide {shapes.IMAGE_SIZE}, "
                f"got {self.fold} x {self.patch_size}"
            )

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def build_transformer(config: DiTConfig) -> SD3Transformer2DModel:
    """A small ``SD3Transformer2DModel`` on the folded picture, adaLN-Zero initialised."""
    c = config
    grid = shapes.IMAGE_SIZE // c.fold  # 16
    net = SD3Transformer2DModel(
        sample_size=grid,
        patch_size=c.patch_size,
        in_channels=3 * c.fold**2,
        out_channels=3 * c.fold**2,
        num_layers=c.num_layers,
        attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.text.dim,
        caption_projection_dim=c.width,
        pooled_projection_dim=c.text.dim,
        pos_embed_max_size=grid // c.patch_size,
    )
    return init_adaln_zero(net)


def init_adaln_zero(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """DiT's initialisation: every adaptive LayerNorm's modulation layer (shift, scale, gate) and
    the final projection start at zero. Each block then adds gate x branch = 0 to its input: the
    network starts as the identity on its tokens, and outputs 0."""
    for block in net.transformer_blocks:
        for norm in (block.norm1, block.norm1_context):
            nn.init.zeros_(norm.linear.weight)
            nn.init.zeros_(norm.linear.bias)
    for layer in (net.norm_out.linear, net.proj_out):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


def denoise(
    transformer: SD3Transformer2DModel,
    z: torch.Tensor,
    t,
    states: torch.Tensor,
    pooled: torch.Tensor,
) -> torch.Tensor:
    """The transformer's output on the folded grid ``z`` [n, 3 f², 32/f, 32/f] at timesteps ``t``
    ([n] or one number: 1000 x the flow time, or the DDPM timestep), word states [n, L, d], pooled
    captions [n, d]."""
    t = torch.as_tensor(t, device=z.device)
    t = t.expand(len(z)) if t.dim() == 0 else t  # [n]
    return transformer(
        hidden_states=z, encoder_hidden_states=states, pooled_projections=pooled, timestep=t
    ).sample  # [n, 3 f², 32/f, 32/f]


class DiTModel(t2i.TextToImageModel):
    """Text encoder + Diffusion Transformer (what the checkpoint holds): chapter 05's model with
    another backbone, so the same interface (``encode(ids, mask) -> (states, pooled)``,
    ``denoise(x_t, t, states, pooled)`` on pictures [n, 3, 32, 32], ``forward(x_t, t, ids, mask)``)
    and the same training loop. ``config``: a :class:`DiTConfig` or a dict of its fields (unknown
    keys refused)."""

    def __init__(self, config: "DiTConfig | dict | None" = None):
        nn.Module.__init__(self)
        self.config = DiTConfig.from_dict(config)
        self.text_encoder = t2i.build_text_encoder(self.config.text)
        self.transformer = build_transformer(self.config)

    def denoise(self, x_t, t, states, pooled):
        z = F.pixel_unshuffle(x_t, self.fold) if self.fold > 1 else x_t  # [n, 3 f², 32/f, 32/f]
        out = denoise(self.transformer, z, t, states, pooled)
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out  # [n, 3, 32, 32]


# --------------------------------------------------------------------------------------------
# The pipeline: chapter 05's, with pipe.transformer as its backbone
# --------------------------------------------------------------------------------------------
class ShapesDiTPipeline(t2i.ShapesPipeline):
    """Chapter 05's pipeline around a Diffusion Transformer: the same call (``pipe(prompts,
    num_inference_steps=, guidance_scale=, negative_prompt=, generator=, output_type=, ...)`` ->
    ``.images``), ``save_pretrained`` / ``from_pretrained``; ``pipe.transformer`` is the backbone
    (an ``SD3Transformer2DModel``), ``pipe.scheduler`` the sampler
    (``FlowMatchEulerDiscreteScheduler`` for a flow-matching model)."""

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoder,
        scheduler,
        default_num_inference_steps: int = 20,
        default_guidance_scale: float = 3.0,
    ):
        CoursePipeline.__init__(self)
        self.register_modules(
            transformer=transformer, text_encoder=text_encoder, scheduler=scheduler
        )
        self.register_to_config(
            default_num_inference_steps=int(default_num_inference_steps),
            default_guidance_scale=float(default_guidance_scale),
        )

    @property
    def backbone(self) -> nn.Module:
        return self.transformer

    def network(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        """``net(x, t, (states, pooled))`` on the folded grid: what the sampling loop calls."""
        states, pooled = cond
        return denoise(self.transformer, x, t.to(x.device), states, pooled)


def make_pipeline(
    model: "DiTModel | t2i.TextToImageModel",
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    sampler: str | None = None,
) -> t2i.ShapesPipeline:
    """The pipeline of a trained chapter 05 model: a :class:`ShapesDiTPipeline` for a
    :class:`DiTModel` (shares its weights), chapter 05's ``ShapesPipeline`` for its U-Net model."""
    cfg = model.config
    if not isinstance(model, DiTModel):
        return t2i.make_pipeline(model, num_inference_steps, guidance_scale, sampler)
    return ShapesDiTPipeline(
        transformer=model.transformer,
        text_encoder=model.text_encoder,
        scheduler=sampling.make_scheduler(sampler or cfg.sampler, cfg, shift=cfg.shift),
        default_num_inference_steps=num_inference_steps or cfg.num_inference_steps,
        default_guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale,
    )


# --------------------------------------------------------------------------------------------
# Training, measuring, registering: `python -m course_lib.pretrained train shapes-t2i-dit`
# --------------------------------------------------------------------------------------------
NAME = "shapes-t2i-dit"
#: the shipped recipe: chapter 05's training settings (``t2i.TrainConfig``), except these
RECIPE = {"steps": 4000, "lr": 2e-3, "time_sampling": "logit-normal"}
BACKBONES = ("unet", "dit")


def build_backbone(backbone: str, prediction_type: str, config: dict | None = None) -> nn.Module:
    """Chapter 05's U-Net model or the DiT, to be trained on ``prediction_type`` (flow models sample
    with Euler, v-prediction models with chapter 05's DPM-Solver++)."""
    arguments.choice(backbone, BACKBONES, "backbone")
    arguments.choice(prediction_type, PREDICTION_TYPES, "prediction_type")
    sampler = "flow-euler" if prediction_type == flow.PREDICTION_TYPE else "dpm++"
    cfg = dict(config or {}, prediction_type=prediction_type, sampler=sampler)
    return DiTModel(cfg) if backbone == "dit" else t2i.TextToImageModel(cfg)


def train_config(prediction_type: str = flow.PREDICTION_TYPE, **overrides) -> t2i.TrainConfig:
    """Chapter 05's :class:`~course_lib.models.text_to_image.TrainConfig` with :data:`RECIPE` for a
    model trained on ``prediction_type`` (the recipe's logit-normal times are flow matching's: a
    v-prediction model draws its discrete steps uniformly)."""
    arguments.choice(prediction_type, PREDICTION_TYPES, "prediction_type")
    recipe = (
        RECIPE
        if prediction_type == flow.PREDICTION_TYPE
        else {**RECIPE, "time_sampling": "uniform"}
    )
    return t2i.TrainConfig.from_dict(recipe, **overrides)


def train_dit(
    model: nn.Module | None = None,
    steps: int | None = None,
    seed: int = 0,
    eval_fn=None,
    eval_every: int | None = None,
    progress: bool = False,
    **overrides,
):
    """Train ``model`` (default: a new :class:`DiTModel`) with chapter 05's loop on Shapes (train
    split) and :func:`train_config` (``overrides`` change its fields). Returns
    ``(ema_model, history, settings)``."""
    hp = train_config(
        model.config.prediction_type if model is not None else flow.PREDICTION_TYPE, **overrides
    )
    with runtime.seeded(seed):
        model = model if model is not None else DiTModel()
        ds = shapes.ShapesDataset(hp.n_train, seed=seed + 100, split="train")
        ema_model, hist = t2i.train_on(
            model,
            diffusion.to_model_range(ds.images),
            ds.captions,
            hp,
            steps if steps is not None else hp.steps,
            seed=seed,
            eval_fn=eval_fn,
            eval_every=eval_every,
            progress=progress,
            desc="shapes-t2i-dit",
        )
        return ema_model, hist, hp


def seconds_per_step(
    model: nn.Module, n_steps: int = 12, warmup: int = 3, seed: int = 0, **overrides
) -> float:
    """CPU seconds (this process) per step of chapter 05's training step on ``model``: the median of
    ``n_steps`` after ``warmup``, on one batch. It trains ``model`` a little: pass a spare one."""
    from ..training import EMA

    hp = train_config(model.config.prediction_type, **overrides)
    dev = next(model.parameters()).device
    x, caps = shapes.sample(hp.batch_size, seed=seed + 7)
    tok = model.text_encoder.tokenizer(caps)
    batch = (diffusion.to_model_range(x), tok["input_ids"], tok["attention_mask"])
    step = t2i.make_train_step(
        model, EMA(model, hp.ema_decay), model.config, hp, dev, seed, n_steps + warmup, None
    )
    times = []
    for i in range(n_steps + warmup):
        c0 = time.process_time()
        step(batch, i)
        times.append(time.process_time() - c0)
    return float(torch.tensor(times[warmup:]).median())


def ms_per_picture(pipe, n: int = 32, **kw) -> float:
    """Wall milliseconds per picture of ``pipe`` on one batch of ``n`` train captions, the median of
    two calls after a small warm-up call (:func:`course_lib.models.fast.ms_per_picture`)."""
    from .fast import ms_per_picture as best_ms

    caps = shapes.all_captions("train")[:n]
    t2i.generate(pipe, caps[:2], **kw)
    return best_ms(pipe, caps, **kw)


def evaluate(model: DiTModel) -> dict:
    """Judged accuracy (270 train captions at the default steps and at 1 to 8, and with two other
    noise seeds; 54 held-out ones), sampling time per picture (batch 32)."""
    pipe = make_pipeline(model)
    q = {
        "train_captions": t2i.judge_pipeline(pipe, "train"),
        "heldout_captions": t2i.judge_pipeline(pipe, "heldout"),
    }
    q["train_all_per_steps"] = {
        s: t2i.judge_pipeline(pipe, "train", num_inference_steps=s)["all"] for s in (1, 2, 4, 8)
    }
    q["train_all_other_noise_seeds"] = {
        s: t2i.judge_pipeline(pipe, "train", seed=s)["all"] for s in (1, 2)
    }
    q["sampling_ms_per_picture_batch32"] = ms_per_picture(pipe)
    q["num_inference_steps"] = pipe.default_num_inference_steps
    q["guidance_scale"] = pipe.default_guidance_scale
    return q


#: the table's equal budget: CPU minutes of training for each of the four cells (one torch thread)
TABLE_CPU_MINUTES = 10.0
TABLE_NOTE = (
    "{U-Net, DiT} x {v-prediction, flow matching}, chapter 05's training loop and recipe for each: "
    "CPU seconds per training step and sampling ms per picture (batch 32, 20 steps, guidance 3) "
    "measured with one torch thread (`python -m course_lib.models.dit time`); each "
    "cell then trained for the same CPU time (steps = that time / its seconds per step; `python -m "
    "course_lib.models.dit table BACKBONE PREDICTION_TYPE`) and judged on the 270 train and 54 "
    "held-out captions at 20 steps, guidance 3 (v-prediction: DPM-Solver++, flow matching: Euler)"
)


def cells() -> list[tuple[str, str]]:
    """The table's four cells, (backbone, prediction_type)."""
    return [(b, pt) for b in BACKBONES for pt in reversed(PREDICTION_TYPES)]


def time_cell(
    backbone: str, prediction_type: str, seed: int = 0, sampling_only: bool = False, **overrides
) -> dict:
    """Parameters, CPU seconds per training step (:func:`seconds_per_step`) and sampling ms per
    picture (:func:`ms_per_picture`) of one cell, on untrained networks (the cost does not depend on
    the weights). ``sampling_only``: only the ms per picture."""
    with runtime.seeded(seed):
        model = build_backbone(backbone, prediction_type)
        row = {"sampling_ms_per_picture": ms_per_picture(make_pipeline(model.eval()))}
        if not sampling_only:
            row["parameters"] = sum(p.numel() for p in model.parameters())
            seconds = seconds_per_step(model.train(), seed=seed, **overrides)
            row["cpu_seconds_per_step"] = round(seconds, 4)
        return row


def table_cell(
    backbone: str,
    prediction_type: str,
    cpu_seconds: float,
    seconds_per_step_: float,
    seed: int = 0,
    **overrides,
) -> dict:
    """One cell of the table: ``backbone`` ("unet" or "dit") trained on ``prediction_type`` with
    chapter 05's loop for ``cpu_seconds / seconds_per_step_`` steps, then judged (270 train and 54
    held-out captions, 20 steps, guidance 3). ``overrides``: fields of :func:`train_config`
    (``steps`` is set here)."""
    overrides.pop("steps", None)
    steps = max(1, int(cpu_seconds / seconds_per_step_))
    with runtime.seeded(seed):  # the initial weights follow ``seed`` (as in train_text_to_image)
        model = build_backbone(backbone, prediction_type)
    model, hist, _ = train_dit(model, steps, seed, **overrides)
    pipe = make_pipeline(model)
    return {
        "train_steps": hist.steps,
        "train_cpu_minutes": round(cpu_seconds / 60, 2),
        "train_all": t2i.judge_pipeline(pipe, "train")["all"],
        "heldout_all": t2i.judge_pipeline(pipe, "heldout")["all"],
        "sampler": type(pipe.scheduler).__name__,
    }


def _machine() -> str:
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def _record(update) -> None:
    """Apply ``update(quality)`` to ``shapes-t2i-dit``'s manifest record (where the table lives)."""
    manifest = pretrained.read_manifest()
    q = manifest["models"][NAME]["quality"]
    update(q)
    q["backbone_table_note"] = TABLE_NOTE
    pretrained.write_manifest(manifest)


def record_timings(seed: int = 0, quick: bool = False, sampling_only: bool = False) -> dict:
    """:func:`time_cell` for the four cells, recorded in ``shapes-t2i-dit``'s manifest record
    (``quality["backbone_table"]``). ``quick``: a smoke run on 64 pictures, not recorded.
    ``sampling_only``: measure (again) only the ms per picture."""
    rows = {
        f"{b} {pt}": time_cell(b, pt, seed, sampling_only, **({"n_train": 64} if quick else {}))
        for b, pt in cells()
    }
    if not quick:

        def update(q):
            table = q.setdefault("backbone_table", {})
            for k, row in rows.items():
                table.setdefault(k, {}).update(row, timed_on=_machine())

        _record(update)
    return rows


def record_table_cell(
    backbone: str,
    prediction_type: str,
    seed: int = 0,
    quick: bool = False,
    minutes: float = TABLE_CPU_MINUTES,
) -> dict:
    """Train and judge one cell (:func:`table_cell`) for ``minutes`` of CPU time at the seconds per
    step that :func:`record_timings` recorded, and record it beside them. ``quick``: 3 steps on 64
    pictures, not recorded."""
    if quick:
        return table_cell(backbone, prediction_type, 3.0, 1.0, seed, n_train=64)
    key = f"{backbone} {prediction_type}"
    timed = pretrained.info(NAME)["quality"].get("backbone_table", {}).get(key, {})
    if "cpu_seconds_per_step" not in timed:
        raise ValueError(
            f"no recorded seconds per step for {key!r}: run "
            "`python -m course_lib.models.dit time` first"
        )
    row = table_cell(backbone, prediction_type, 60 * minutes, timed["cpu_seconds_per_step"], seed)
    row["trained_on"] = _machine()
    _record(lambda q: _add_run(q["backbone_table"][key], seed, row))
    return row


#: per-run fields of a table cell, kept under ``runs[seed]``
_RUN_FIELDS = ("train_steps", "train_all", "heldout_all")


def _add_run(cell: dict, seed: int, row: dict) -> None:
    """Record the run of a table cell trained with ``seed`` under ``cell["runs"][seed]`` and set
    the cell's ``train_all`` / ``heldout_all`` to the mean over its recorded runs (``n_runs``)."""
    runs = cell.setdefault("runs", {})
    runs[str(seed)] = {k: row[k] for k in _RUN_FIELDS}
    for k in ("train_cpu_minutes", "sampler", "trained_on"):
        cell[k] = row[k]
    cell["n_runs"] = len(runs)
    for k in _RUN_FIELDS:
        cell[k] = round(sum(r[k] for r in runs.values()) / len(runs), 4)


def train_registered(seed: int = 0, quick: bool = False) -> pretrained.TrainResult:
    """The shipped DiT: :data:`RECIPE` (quick: 6 steps on 256 pictures)."""
    over = {"steps": 6, "n_train": 256} if quick else {}

    def notes(hist, hp):
        return (
            f"{hist.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr} with warm-up and cosine "
            f"decay, EMA {hp.ema_decay}, caption dropout {hp.caption_dropout}, flow matching "
            f"({hp.time_sampling} t), "
            f"SD3Transformer2DModel on 2x2 patches of the 2x2-folded picture"
        )

    return pretrained.run_recipe(
        lambda: train_dit(seed=seed, progress=not quick, **over), evaluate, notes=notes
    )


def build(config) -> DiTModel:
    return DiTModel(config)


def finalize(model: DiTModel) -> ShapesDiTPipeline:
    return make_pipeline(model)


pretrained.register(
    NAME,
    role="generator",
    domain="shapes",
    build=build,
    train=train_registered,
    evaluate=evaluate,
    finalize=finalize,
    chapter="05",
    description="Shapes text-to-image, the 2024 recipe: a Diffusion Transformer "
    "(SD3's MMDiT, adaLN-Zero, joint attention) trained with flow matching; "
    "ShapesDiTPipeline with FlowMatchEulerDiscreteScheduler",
)


def _main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m course_lib.models.dit",
        description="chapter 05's {U-Net, DiT} x {v-prediction, flow matching} table",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    tm = sub.add_parser(
        "time", help="parameters, CPU s per training step, sampling ms per picture of the four"
    )
    t = sub.add_parser("table", help="train and judge one cell for the table's CPU time, record it")
    t.add_argument("backbone", choices=BACKBONES)
    t.add_argument("prediction_type", choices=PREDICTION_TYPES)
    t.add_argument(
        "--minutes", type=float, default=TABLE_CPU_MINUTES, help="CPU minutes of training"
    )
    tm.add_argument(
        "--sampling-only", action="store_true", help="measure only the ms per picture again"
    )
    for p in (tm, t):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--quick", action="store_true", help="a smoke run of a few seconds, not recorded"
        )
    args = ap.parse_args(argv)
    if args.cmd == "time":
        out = record_timings(args.seed, args.quick, args.sampling_only)
    else:
        out = record_table_cell(
            args.backbone, args.prediction_type, args.seed, args.quick, args.minutes
        )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    from course_lib.models import (
        dit as _dit,
    )  # register into the imported module, not this __main__ copy

    sys.exit(_dit._main())
