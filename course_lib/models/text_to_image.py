"""Text to image on Shapes (chapter 05; reused by 06, 07 and 08).

* :class:`ShapesTextEncoder` (written in :mod:`course_lib.text_encoders`): word embeddings +
  positions + a small Transformer layer over the caption's tokens. It gives per-word states (what
  the UNet cross-attends to) and a pooled vector (added to the timestep embedding, so every block
  knows the caption's global content at once).
* a diffusers ``UNet2DConditionModel`` whose blocks cross-attend to the word states.
* classifier-free guidance: captions dropped to the empty caption in training; at sampling the
  guided prediction ``uncond + w (cond - uncond)`` (:func:`course_lib.sampling.guide`, on the
  network's v output: the same algebra as on ε).
* :class:`ShapesPipeline`, a ``diffusers.DiffusionPipeline``: ``pipe(prompts, num_inference_steps=,
  guidance_scale=, negative_prompt=, num_images_per_prompt=, generator=, output_type=,
  callback_on_step_end=)`` -> ``.images``; ``save_pretrained`` / ``from_pretrained`` on a local
  folder. It samples with the course's one loop, :func:`course_lib.sampling.denoise_loop`.
* :class:`TextToImageConfig`: the typed config (a misspelt key is an error naming the allowed ones).

Speed (the chapter's crux): the UNet works on the picture folded 2x2 into channels
(``pixel_unshuffle``: 3x32x32 -> 12x16x16). That is a lossless, parameter-free "autoencoder": the
noise process is exactly the one in pixel space (the fold only permutes pixels), but no convolution
runs at full resolution, where most of a small UNet's time went. Chapter 09 replaces the fold by a
learned autoencoder (``in_channels=4, sample_size=8, fold=1``: the same model on latents).

This is pixel-space diffusion with a text encoder trained with the model: closer to GLIDE (Nichol et
al. 2022) than to Stable Diffusion, which denoises an autoencoder's latents (chapter 09) and reads a
frozen pretrained text encoder (chapter 06).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from .. import arguments, diffusion, runtime, sampling
from ..config import Config
from ..data import shapes
from ..pipelines import CoursePipeline, quiet
from ..pretrained import TrainResult, register, run_recipe
from ..runtime import get_device
from ..text_encoders import ShapesTextEncoder
from ..training import (
    EMA,
    budget_fraction,
    cosine_with_warmup,
    drop_mask,
    fit,
    infinite_loader,
    make_step,
    ms_per_picture,
)


# --------------------------------------------------------------------------------------------
# Typed configs
# --------------------------------------------------------------------------------------------
#: Text encoders chapter 05's model can read: its own learned one, or a frozen pretrained language
#: model (chapter 06), with the width of that model's token states.
TEXT_ENCODER_KINDS = ("learned", "minilm", "mpnet")
FROZEN_WIDTHS = {"minilm": 384, "mpnet": 768}


@dataclass
class TextEncoderConfig(Config):
    kind: str = "learned"  # chapter 05's word encoder, trained with the model
    dim: int = 64  # width of the word states the UNet cross-attends to
    layers: int = 1  # Transformer encoder layers over the caption's words
    heads: int = 4
    max_length: int = 12  # tokens per caption, start and end tokens included

    def __post_init__(self):
        arguments.choice(self.kind, TEXT_ENCODER_KINDS, "text.kind")
        if self.kind in FROZEN_WIDTHS and self.dim != FROZEN_WIDTHS[self.kind]:
            raise ValueError(
                f"text.dim must be {FROZEN_WIDTHS[self.kind]} for the frozen {self.kind} encoder "
                f"(the width of its token states), got {self.dim}"
            )


@dataclass
class UNetConfig(Config):
    """``UNet2DConditionModel`` blocks: the 16x16 level convolutions only, the 8x8 level and the
    middle with cross-attention to the words."""

    block_out_channels: list = field(default_factory=lambda: [32, 64])
    down_block_types: list = field(default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D"])
    up_block_types: list = field(default_factory=lambda: ["CrossAttnUpBlock2D", "UpBlock2D"])
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 1
    attention_head_dim: int = 16
    norm_num_groups: int = 8


@dataclass
class TextToImageConfig(Config):
    fold: int = 2  # pixel_unshuffle factor: 3x32x32 -> 12x16x16 (1: no fold)
    in_channels: int = 3  # what is denoised: 3 for pictures, 4 for chapter 09's latents
    sample_size: int = 32  # its side: 32 pixels, or 8 latent cells
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    pooled_text: bool = True  # add the pooled caption vector to the timestep embedding
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    sampler: str = "dpm++"  # the pipeline's default sampler (course_lib.sampling.make_scheduler)
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    distilled_from: str | None = None  # chapter 08: the teacher of a distilled student
    distilled_guidance_scale: float | None = None  # ... and the guidance folded into it
    autoencoder_sha256: str | None = None  # chapter 09: the autoencoder whose latents it denoises

    def __post_init__(self):
        arguments.choice(
            self.prediction_type,
            diffusion.PREDICTION_TYPES + ("flow_prediction",),
            "prediction_type",
        )
        arguments.choice(self.schedule, tuple(diffusion.DIFFUSERS_SCHEDULE_NAMES), "schedule")
        arguments.choice(
            self.sampler,
            sampling.SAMPLERS + sampling.STOCHASTIC_SAMPLERS + sampling.FLOW_SAMPLERS,
            "sampler",
        )
        arguments.positive_int(self.fold, "fold")
        if self.sample_size % self.fold:
            raise ValueError(f"fold must divide sample_size {self.sample_size}, got {self.fold}")


@dataclass
class TrainConfig(Config):
    """Chapter 05's training recipe (``shapes-t2i``: 3,000 steps)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    final_lr_frac: float = 0.05  # the cosine decay ends at this fraction of lr
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    caption_dropout: float = 0.1  # fraction of captions replaced by the empty one (for guidance)
    min_snr_gamma: float | None = None
    n_train: int = 12000  # training pictures (rendered once)
    grad_clip: float = 1.0
    time_sampling: str = (
        "uniform"  # flow matching only: "uniform" or "logit-normal" (Esser et al. 2024)
    )


def build_unet(config: TextToImageConfig) -> UNet2DConditionModel:
    cfg, f = config, config.fold
    extra = {}
    if cfg.pooled_text:
        extra = {
            "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": cfg.text.dim,
        }
    return UNet2DConditionModel(
        sample_size=cfg.sample_size // f,
        in_channels=cfg.in_channels * f * f,
        out_channels=cfg.in_channels * f * f,
        cross_attention_dim=cfg.text.dim,
        **cfg.unet.to_dict(),
        **extra,
    )


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The text encoder a config names: chapter 05's ``"learned"`` one, or a frozen language model
    (chapter 06: ``"minilm"``, all-MiniLM-L6-v2; ``"mpnet"``, all-mpnet-base-v2) behind the same
    interface (``tokenize``, ``forward(ids, mask) -> (states, pooled)``). For a frozen model,
    ``layers`` is how many of its last hidden layers are averaged (1: its last layer)."""
    if config.kind in FROZEN_WIDTHS:
        from ..text_encoders import FrozenConditioner

        return FrozenConditioner(config.kind, config.max_length, last_layers=config.layers)
    return ShapesTextEncoder(
        max_length=config.max_length, dim=config.dim, layers=config.layers, heads=config.heads
    )


class TextToImageModel(nn.Module):
    """Text encoder + conditional UNet. ``forward(x_t, t, input_ids, attention_mask)`` -> the
    network's prediction for ``x_t`` ([n, in_channels, sample_size, sample_size], model range)."""

    def __init__(self, config: "TextToImageConfig | dict | None" = None):
        super().__init__()
        self.config = TextToImageConfig.from_dict(config)
        self.text_encoder = build_text_encoder(self.config.text)
        self.unet = build_unet(self.config)

    @property
    def fold(self) -> int:
        return self.config.fold

    def encode(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask)

    def denoise(self, x_t, t, states, pooled):
        """The UNet on x_t [n, C, S, S] (folded inside) with encoded text."""
        z = F.pixel_unshuffle(x_t, self.fold) if self.fold > 1 else x_t  # [n, C f^2, S/f, S/f]
        kw = {"class_labels": pooled} if self.config.pooled_text else {}
        out = self.unet(z, t, encoder_hidden_states=states, **kw).sample
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out

    def forward(self, x_t, t, input_ids, attention_mask):
        states, pooled = self.encode(input_ids, attention_mask)
        return self.denoise(x_t, t, states, pooled)


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class ShapesPipeline(CoursePipeline):
    """Text to image on Shapes, with the diffusers call convention.

    ``pipe(prompts, num_inference_steps=20, guidance_scale=3.0,
    generator=torch.Generator().manual_seed(0), output_type="pil"|"np"|"pt")`` returns ``.images``:
    PIL pictures, an array [n, 32, 32, 3] or a tensor [n, 3, 32, 32] in [0, 1]. Defaults come from
    the trained model's config (:attr:`default_num_inference_steps`,
    :attr:`default_guidance_scale`).
    """

    extra_output_types = ("latent",)

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: ShapesTextEncoder,
        scheduler,
        default_num_inference_steps: int = 20,
        default_guidance_scale: float = 3.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, scheduler=scheduler)
        self.register_to_config(
            default_num_inference_steps=int(default_num_inference_steps),
            default_guidance_scale=float(default_guidance_scale),
        )

    @property
    def backbone(self) -> nn.Module:
        """The denoising network (a UNet here; a Transformer in chapter 05's DiT pipeline)."""
        return self.unet

    @property
    def fold(self) -> int:
        return int(round(math.sqrt(self.backbone.config.in_channels // self.image_channels)))

    @property
    def image_channels(self) -> int:
        return 3

    @property
    def tokenizer(self) -> shapes.Tokenizer:
        return self.text_encoder.tokenizer

    @property
    def default_num_inference_steps(self) -> int:
        return int(self.config.default_num_inference_steps)

    @property
    def default_guidance_scale(self) -> float:
        return float(self.config.default_guidance_scale)

    def with_scheduler(self, scheduler) -> "ShapesPipeline":
        """The same pipeline (same modules, same defaults) sampling with another ``scheduler``."""
        other = type(self)(
            **{**self.components, "scheduler": scheduler},
            default_num_inference_steps=self.default_num_inference_steps,
            default_guidance_scale=self.default_guidance_scale,
        )
        other._progress_bar_config = dict(getattr(self, "_progress_bar_config", {}))
        return other

    # ---- the steps of __call__ ----------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]):
        """``(states [n, L, d], pooled [n, d])`` of normalised prompts."""
        tok = self.text_encoder.tokenize(prompts, self.backbone.device)
        return self.text_encoder(tok["input_ids"], tok["attention_mask"])

    def prepare_latents(self, n: int, generator, latents=None) -> torch.Tensor:
        """The starting noise on the backbone's grid: drawn as [n, 3, 32, 32] (pictures) and folded,
        or checked if given."""
        shape = (
            n,
            self.image_channels,
            self.fold * self.backbone.config.sample_size,
            self.fold * self.backbone.config.sample_size,
        )
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = (
                tuple(latents.shape)
                if isinstance(latents, torch.Tensor)
                else type(latents).__name__
            )
            raise ValueError(f"latents must be a tensor of shape {shape}, got {got}")
        x = F.pixel_unshuffle(latents, self.fold) if self.fold > 1 else latents
        return x.to(self.backbone.device, self.backbone.dtype)

    def decode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's final sample -> pictures [n, 3, 32, 32] in [0, 1]."""
        images = F.pixel_shuffle(x.float(), self.fold) if self.fold > 1 else x.float()
        return diffusion.to_image_range(images).cpu()

    def network(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        """``net(x, t, (states, pooled))``: the backbone's prediction, what the sampling loop
        calls."""
        states, pooled = cond
        kw = {"class_labels": pooled} if self.unet.config.class_embed_type == "projection" else {}
        return self.unet(x, t.to(self.unet.device), encoder_hidden_states=states, **kw).sample

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        guidance_mode: str = "batched",
    ):
        """Pictures for ``prompt`` (a string or a list of strings).

        ``negative_prompt``: what guidance steers away from (default: the empty caption, plain
        classifier-free guidance). ``guidance_scale`` 1 switches guidance off (one network pass per
        step). ``guidance_mode``: the two guidance passes as one batch of 2n ("batched"), one after
        the other ("sequential"), or not at all ("off"). ``callback_on_step_end(pipe, i, t,
        {"latents": x})`` runs after every step and may return a replacement for ``"latents"``.
        """
        # 1. check the call
        prompts, negatives = self.check_prompts(prompt, negative_prompt, num_images_per_prompt)
        steps = arguments.steps(
            self.default_num_inference_steps
            if num_inference_steps is None
            else num_inference_steps,
            self.scheduler.config.num_train_timesteps,
        )
        w = arguments.guidance(
            self.default_guidance_scale if guidance_scale is None else guidance_scale
        )
        generator = arguments.generator(generator)
        self.check_output_type(output_type)
        arguments.choice(guidance_mode, sampling.GUIDANCE_MODES, "guidance_mode")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(
                f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}"
            )
        if tuple(callback_on_step_end_tensor_inputs) != ("latents",):
            raise ValueError(
                "callback_on_step_end_tensor_inputs: this pipeline passes only ['latents']"
            )
        guide = w != 1.0 and guidance_mode != "off"
        # 2. encode the prompts, and the negative prompts (or the empty caption) for guidance
        cond = self.encode_prompt(prompts)  # [n, L, d], [n, d]
        uncond = self.encode_prompt(negatives or [""] * len(prompts)) if guide else None
        # 3. the starting noise
        x = self.prepare_latents(len(prompts), generator, latents)
        # 4. the denoising loop (the course's one loop)
        x = sampling.denoise_loop(
            self.scheduler,
            self.network,
            x,
            steps,
            cond,
            uncond,
            w,
            guidance_mode,
            generator,
            callback_on_step_end,
            pipe=self,
            progress_bar=self.progress_bar,
        )
        # 5. back to pictures
        images = x.float().cpu() if output_type == "latent" else self.decode_latents(x)
        return self.format_output(images, output_type, return_dict)


def make_pipeline(
    model: TextToImageModel,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    sampler: str | None = None,
) -> ShapesPipeline:
    """Wrap a trained :class:`TextToImageModel` as a :class:`ShapesPipeline` (shares its
    weights)."""
    cfg = model.config
    return ShapesPipeline(
        unet=model.unet,
        text_encoder=model.text_encoder,
        scheduler=sampling.make_scheduler(sampler or cfg.sampler, cfg),
        default_num_inference_steps=int(num_inference_steps or cfg.num_inference_steps),
        default_guidance_scale=float(
            guidance_scale if guidance_scale is not None else cfg.guidance_scale
        ),
    )


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(pipe, captions: list[str], seed: int = 0, batch_size: int | None = None, **kw):
    """Pictures [n, 3, 32, 32] in [0, 1] for ``captions`` (one batch unless ``batch_size``), without
    a progress bar."""
    g = torch.Generator().manual_seed(seed)
    with quiet(pipe):
        if batch_size is None:
            return pipe(captions, generator=g, output_type="pt", **kw).images
        return torch.cat(
            [
                pipe(captions[i : i + batch_size], generator=g, output_type="pt", **kw).images
                for i in range(0, len(captions), batch_size)
            ]
        )


def judge_pipeline(pipe, split: str = "train", seed: int = 0, **kw) -> dict:
    """One picture per distinct caption of ``split`` (270 for train), one batch,
    ``generator=torch.Generator().manual_seed(seed)``; the shapes-judge's per-attribute and all-five
    accuracies."""
    from ..judges import score_shapes

    caps = shapes.all_captions(split)
    images = generate(pipe, caps, seed=seed, **kw)
    res = score_shapes(images, caps)
    out = {k: round(float(v), 4) for k, v in res.items() if k != "correct"}
    out["n"] = len(caps)
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def drop_captions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    empty_ids: torch.Tensor,
    empty_mask: torch.Tensor,
    p: float,
    generator: torch.Generator,
):
    """Caption dropout (the step chapter 05's exercise writes): each caption of the batch
    (``input_ids``, ``attention_mask``: [n, L]) becomes the empty caption (``empty_*``: [1, L]) with
    probability ``p``, one draw per row from ``generator`` (:func:`course_lib.training.drop_mask`).
    Training on both teaches one network the conditional and the unconditional model that
    classifier-free guidance combines."""
    drop = drop_mask(len(input_ids), p, generator).to(input_ids.device)  # [n]
    input_ids = torch.where(drop[:, None], empty_ids.expand_as(input_ids), input_ids)
    attention_mask = torch.where(
        drop[:, None], empty_mask.expand_as(attention_mask), attention_mask
    )
    return input_ids, attention_mask


def make_train_step(
    model,
    ema,
    cfg: TextToImageConfig,
    hp: TrainConfig,
    device,
    seed: int,
    steps: int | None,
    minutes: float | None,
    caption_dropout_fn=drop_captions,
):
    """Chapter 05's training step for any model with ``encode(ids, mask)`` and
    ``denoise(x, t, states, pooled)`` (folded pixels here, latents in chapter 08): AdamW, warm-up +
    cosine decay over the budget (``steps`` and/or ``minutes``), caption dropout to the empty
    caption, the diffusion loss of ``cfg.prediction_type``, gradient clipping, EMA. Returns
    ``step_fn(batch, step)`` for :func:`course_lib.training.fit`; a batch is
    ``(x0, input_ids, attention_mask)``. ``caption_dropout_fn``: :func:`drop_captions` or a function
    with its signature."""
    ac = diffusion.NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps).alphas_cumprod.to(
        device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    g = torch.Generator().manual_seed(seed + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(hp.warmup, hp.final_lr_frac, budget_fraction(steps, minutes))
    )
    empty = model.text_encoder.tokenizer([""])
    e_ids, e_mask = empty["input_ids"].to(device), empty["attention_mask"].to(device)

    def loss_fn(m, batch):
        x0, in_ids, mask = (b.to(device) for b in batch)
        in_ids, mask = caption_dropout_fn(in_ids, mask, e_ids, e_mask, hp.caption_dropout, g)
        states, pooled = m.encode(in_ids, mask)
        return diffusion.diffusion_loss(
            lambda x, t: m.denoise(x, t, states, pooled),
            x0,
            ac,
            cfg.prediction_type,
            generator=g,
            min_snr_gamma=hp.min_snr_gamma,
            time_sampling=hp.time_sampling,
        )

    return make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=hp.grad_clip)


def train_on(
    model: TextToImageModel,
    data_x: torch.Tensor,
    captions: list[str],
    hp: TrainConfig,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    device=None,
    eval_fn=None,
    eval_every: int | None = None,
    callback=None,
    progress: bool = True,
    desc: str = "shapes-t2i",
    caption_dropout_fn=drop_captions,
):
    """Train ``model`` (in place, then its EMA copy returned) on ``data_x`` [N, C, S, S] in model
    range with ``captions``: the loop shared by the pixel and the latent models. Returns
    ``(ema_model, history)``; ``eval_fn(model, step) -> dict`` runs every ``eval_every`` steps on
    the EMA model."""
    device = device or get_device()
    model = model.to(device)
    ema = EMA(model, decay=hp.ema_decay)
    ids = model.text_encoder.tokenizer(captions)
    data = torch.utils.data.TensorDataset(data_x, ids["input_ids"], ids["attention_mask"])
    loader = infinite_loader(data, hp.batch_size, seed=seed)
    step_fn = make_train_step(
        model, ema, model.config, hp, device, seed, steps, minutes, caption_dropout_fn
    )
    wrapped_eval = (lambda step: eval_fn(ema.module, step)) if eval_fn is not None else None
    history = fit(
        step_fn,
        loader,
        steps=steps,
        minutes=minutes,
        eval_fn=wrapped_eval,
        eval_every=eval_every,
        desc=desc,
        progress=progress,
        callback=callback,
    )
    ema_model = ema.module
    ema_model.config = model.config
    return ema_model.eval(), history


def train_text_to_image(
    config=None,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    device=None,
    eval_every: int | None = None,
    eval_fn=None,
    callback=None,
    progress: bool = True,
    caption_dropout_fn=drop_captions,
    **overrides,
):
    """Train a :class:`TextToImageModel` from scratch on Shapes (train split).

    Budget: ``steps`` and/or ``minutes`` (whichever ends first; the learning rate decays with the
    fraction of the budget used, so a minutes budget still ends at a low rate; neither: the recipe's
    steps). ``overrides`` change :class:`TrainConfig` fields (an unknown one is an error). Returns
    ``(ema_model, history, settings)``; ``eval_fn(model, step) -> dict`` runs every ``eval_every``
    steps on the EMA model. ``caption_dropout_fn``: see :func:`drop_captions`.
    """
    hp = TrainConfig.from_dict(overrides)
    if steps is None and minutes is None:
        steps = hp.steps
    with runtime.seeded(seed):
        model = TextToImageModel(config)
        ds = shapes.ShapesDataset(hp.n_train, seed=seed + 100, split="train")
        ema_model, history = train_on(
            model,
            diffusion.to_model_range(ds.images),
            ds.captions,
            hp,
            steps,
            minutes,
            seed,
            device,
            eval_fn,
            eval_every,
            callback,
            progress,
            caption_dropout_fn=caption_dropout_fn,
        )
        return ema_model, history, hp


# --------------------------------------------------------------------------------------------
# Registration: `python -m course_lib.pretrained train shapes-t2i`
# --------------------------------------------------------------------------------------------
def build(config) -> TextToImageModel:
    return TextToImageModel(config)


def finalize(model: TextToImageModel) -> ShapesPipeline:
    return make_pipeline(model)


def evaluate(model: TextToImageModel) -> dict:
    pipe = make_pipeline(model)
    q = {
        "train_captions": judge_pipeline(pipe, "train"),
        "heldout_captions": judge_pipeline(pipe, "heldout"),
    }
    # sampling time per picture, on this machine
    caps = shapes.all_captions("train")[:32]
    ms = ms_per_picture(lambda: generate(pipe, caps, seed=0), len(caps), repeats=1, warmup=0)
    q["sampling_ms_per_picture_batch32"] = round(ms, 2)
    q["num_inference_steps"] = pipe.default_num_inference_steps
    q["guidance_scale"] = pipe.default_guidance_scale
    return q


def train_registered(
    seed: int = 0, quick: bool = False, eval_every: int | None = None
) -> TrainResult:
    """The shipped recipe (``quick``: 20 steps). ``eval_every``: also record a learning curve (the
    judge on the 270 train captions every N steps; does not change training)."""
    steps = 20 if quick else TrainConfig().steps
    curve = []

    def eval_fn(m, step):
        r = judge_pipeline(make_pipeline(m))
        curve.append((step, r["all"]))
        return r

    def notes(hist, hp):
        return (
            f"{hist.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr} with warmup and cosine "
            f"decay, EMA {hp.ema_decay}, caption dropout {hp.caption_dropout}, v_prediction, "
            "cosine schedule, UNet on the 2x2-folded picture"
        )

    result = run_recipe(
        lambda: train_text_to_image(
            steps=steps, seed=seed, eval_every=eval_every, eval_fn=eval_fn if eval_every else None
        ),
        evaluate,
        notes=notes,
    )
    if curve:
        result.quality["curve_all"] = curve
    return result


register(
    "shapes-t2i",
    role="generator",
    domain="shapes",
    build=build,
    train=train_registered,
    evaluate=evaluate,
    finalize=finalize,
    chapter="05",
    description="Shapes text-to-image: word-token encoder + cross-attention UNet2DConditionModel, "
    "classifier-free guidance, ShapesPipeline (diffusers)",
)
