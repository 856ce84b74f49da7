"""Text to image on Shapes (chapter 05; reused by 06, 07 and 08).

* :class:`ShapesTextEncoder`: word embeddings + positions + a small Transformer layer over the
  caption's tokens. It gives per-word states (what the UNet cross-attends to) and a pooled vector
  (added to the timestep embedding, so every block knows the caption's global content at once).
* a diffusers ``UNet2DConditionModel`` whose blocks cross-attend to the word states.
* classifier-free guidance: captions dropped to the empty caption in training; at sampling
  ``ε̂ = ε̂_uncond + w (ε̂_cond - ε̂_uncond)`` (done on the network's v output, the same algebra).
* :class:`ShapesPipeline`, a ``diffusers.DiffusionPipeline``: ``pipe(prompts, num_inference_steps=,
  guidance_scale=, generator=, output_type=)`` -> ``.images``; ``save_pretrained`` /
  ``from_pretrained`` on a local folder.

Speed (the chapter's crux): the UNet works on the picture folded 2x2 into channels
(``pixel_unshuffle``: 3x32x32 -> 12x16x16). That is a lossless, parameter-free "autoencoder": the
noise process is exactly the one in pixel space (the fold only permutes pixels), but no convolution
runs at full resolution, where most of a small UNet's time went.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .. import diffusion
from ..data import shapes
from ..pretrained import TrainResult, register
from ..runtime import get_device
from ..training import EMA, History, fit, infinite_loader, make_step


# --------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------
class ShapesTextEncoder(ModelMixin, ConfigMixin):
    """Learned word embeddings (+ positions, + ``layers`` Transformer encoder layers).

    ``forward(input_ids, attention_mask) -> (states [n, L, dim], pooled [n, dim])``. The vocabulary
    lives in the config, so :attr:`tokenizer` is rebuilt exactly on load.
    """

    @register_to_config
    def __init__(self, vocab: list | None = None, max_length: int = 12, dim: int = 64, layers: int = 1,
                 heads: int = 4):
        super().__init__()
        vocab = list(vocab) if vocab is not None else shapes.canonical_vocabulary()
        self.tokenizer = shapes.Tokenizer(vocab, max_length=max_length)
        self.embed = nn.Embedding(len(self.tokenizer), dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts, device=None) -> dict:
        """Token ids and mask; words outside the vocabulary raise ``ValueError`` naming the allowed words."""
        tok = self.tokenizer(prompts)
        return {k: v.to(device or self.device) for k, v in tok.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.embed(input_ids) + self.pos[:, :input_ids.shape[1]]       # [n, L, dim]
        pad = attention_mask == 0
        for layer in self.blocks:
            h = layer(h, src_key_padding_mask=pad)
        h = self.norm(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)                    # [n, dim]
        return h, pooled


# --------------------------------------------------------------------------------------------
# The denoiser: text encoder + UNet (what the checkpoint holds)
# --------------------------------------------------------------------------------------------
DEFAULT_CONFIG = {
    "fold": 2,                       # pixel_unshuffle factor: 3x32x32 -> 12x16x16
    "text": {"dim": 64, "layers": 1, "heads": 4, "max_length": 12},
    "unet": {                        # 16x16 level: convolutions only; 8x8 level and middle: cross-attention
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 1,
        "attention_head_dim": 16,
        "norm_num_groups": 8,
    },
    "pooled_text": True,             # add the pooled caption vector to the timestep embedding
    "schedule": "cosine",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sampler": "dpm",                # "ddim" or "dpm" (DPM-Solver++ 2nd order)
    "num_inference_steps": 20,
    "guidance_scale": 3.0,
}


def _merged(config: dict | None) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_CONFIG.items()}
    for k, v in (config or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def build_unet(config: dict) -> UNet2DConditionModel:
    cfg = _merged(config)
    fold = cfg["fold"]
    u = dict(cfg["unet"])
    ch = 3 * fold * fold
    extra = {}
    if cfg["pooled_text"]:
        extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": cfg["text"]["dim"]}
    return UNet2DConditionModel(
        sample_size=shapes.IMAGE_SIZE // fold, in_channels=ch, out_channels=ch,
        cross_attention_dim=cfg["text"]["dim"], **u, **extra)


class TextToImageModel(nn.Module):
    """Text encoder + conditional UNet. ``forward(x_t, t, input_ids, attention_mask)`` -> the
    network's prediction for ``x_t`` ([n, 3, 32, 32], model range [-1, 1])."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = _merged(config)
        t = self.config["text"]
        self.text_encoder = ShapesTextEncoder(max_length=t["max_length"], dim=t["dim"], layers=t["layers"],
                                              heads=t["heads"])
        self.unet = build_unet(self.config)

    @property
    def fold(self) -> int:
        return self.config["fold"]

    def encode(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask)

    def denoise(self, x_t, t, states, pooled):
        """The UNet on pictures [n, 3, 32, 32] (folded inside) with encoded text."""
        z = F.pixel_unshuffle(x_t, self.fold) if self.fold > 1 else x_t
        kw = {"class_labels": pooled} if self.config["pooled_text"] else {}
        out = self.unet(z, t, encoder_hidden_states=states, **kw).sample
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out

    def forward(self, x_t, t, input_ids, attention_mask):
        states, pooled = self.encode(input_ids, attention_mask)
        return self.denoise(x_t, t, states, pooled)


def make_scheduler(config: dict):
    """The sampling scheduler the config names (v-prediction needs ``clip_sample=False``)."""
    cfg = _merged(config)
    sched = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["num_train_timesteps"])
    kw = dict(sched.diffusers_kwargs(), prediction_type=cfg["prediction_type"])
    if cfg["sampler"] == "ddim":
        return DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if cfg["sampler"] == "dpm":
        return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing")
    raise ValueError(f"sampler must be 'ddim' or 'dpm', got {cfg['sampler']!r}")


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class ShapesPipelineOutput(BaseOutput):
    images: object


class ShapesPipeline(DiffusionPipeline):
    """Text to image on Shapes, with the diffusers call convention.

    ``pipe(prompts, num_inference_steps=20, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
    output_type="pil"|"np"|"pt")`` returns ``.images``: PIL pictures, an array [n, 32, 32, 3] or a
    tensor [n, 3, 32, 32] in [0, 1]. Defaults come from the trained model's config
    (:attr:`default_num_inference_steps`, :attr:`default_guidance_scale`).
    """

    def __init__(self, unet: UNet2DConditionModel, text_encoder: ShapesTextEncoder, scheduler,
                 default_num_inference_steps: int = 20, default_guidance_scale: float = 3.0):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, scheduler=scheduler)
        self.register_to_config(default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale=float(default_guidance_scale))

    @property
    def fold(self) -> int:
        return int(round(math.sqrt(self.unet.config.in_channels // 3)))

    @property
    def tokenizer(self) -> shapes.Tokenizer:
        return self.text_encoder.tokenizer

    @property
    def default_num_inference_steps(self) -> int:
        return int(self.config.default_num_inference_steps)

    @property
    def default_guidance_scale(self) -> float:
        return float(self.config.default_guidance_scale)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], guidance: bool):
        dev = self.unet.device
        tok = self.text_encoder.tokenize(prompts, dev)
        states, pooled = self.text_encoder(tok["input_ids"], tok["attention_mask"])
        if guidance:
            tok0 = self.text_encoder.tokenize([""] * len(prompts), dev)
            s0, p0 = self.text_encoder(tok0["input_ids"], tok0["attention_mask"])
            states, pooled = torch.cat([s0, states]), torch.cat([p0, pooled])
        return states, pooled

    def prepare_call(self, prompt, num_inference_steps: int | None, guidance_scale: float | None):
        """The start of every Shapes pipeline's ``__call__``: ``(prompts as a list, steps, guidance w,
        text states, pooled)``, the states [2n, ...] as [uncond, cond] when ``w != 1``."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps = num_inference_steps or self.default_num_inference_steps
        w = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        states, pooled = self.encode_prompt(prompts, w != 1.0)
        return prompts, steps, w, states, pooled

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", latents=None,
                 return_dict: bool = True, callback=None):
        prompts, steps, w, states, pooled = self.prepare_call(prompt, num_inference_steps, guidance_scale)
        dev, dtype, fold, n = self.unet.device, self.unet.dtype, self.fold, len(prompts)
        if latents is None:
            latents = torch.randn((n, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE), generator=generator,
                                  dtype=torch.float32)
        x = F.pixel_unshuffle(latents, fold).to(dev, dtype) if fold > 1 else latents.to(dev, dtype)
        x = self.denoise_loop(x, states, pooled, steps, w, generator, callback)
        images = F.pixel_shuffle(x.float(), fold) if fold > 1 else x.float()
        images = diffusion.to_image_range(images).cpu()                    # [n, 3, 32, 32] in [0, 1]
        return self.format_output(images, output_type, return_dict)

    @torch.no_grad()
    def denoise_loop(self, x, states, pooled, steps: int, w: float, generator=None, callback=None):
        """The sampling loop on the UNet's own grid ``x`` (noise): the scheduler's timesteps, one
        batched pass of [uncond, cond] when ``w != 1`` (classifier-free guidance), ``scheduler.step``."""
        guide = w != 1.0
        dev = self.unet.device
        self.scheduler.set_timesteps(steps)
        x = x * self.scheduler.init_noise_sigma
        kw = {"class_labels": pooled} if self.unet.config.class_embed_type == "projection" else {}
        for t in self.scheduler.timesteps:
            xin = self.scheduler.scale_model_input(torch.cat([x, x]) if guide else x, t)
            out = self.unet(xin, t.to(dev), encoder_hidden_states=states, **kw).sample
            if guide:
                u, c = out.chunk(2)
                out = u + w * (c - u)
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
            if callback is not None:
                callback(int(t), x)
        return x

    def format_output(self, images: torch.Tensor, output_type: str, return_dict: bool = True,
                      extra_types: tuple = ()):
        """Pictures [n, 3, H, W] in [0, 1] as ``output_type``: "pt" (the tensor), "np" ([n, H, W, 3]) or
        "pil"; ``extra_types`` are passed through as tensors (e.g. "latent")."""
        if output_type == "pt" or output_type in extra_types:
            out_images = images
        elif output_type == "np":
            out_images = images.permute(0, 2, 3, 1).numpy()
        elif output_type == "pil":
            out_images = self.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
        else:
            allowed = ", ".join(repr(t) for t in ("pil", "np", "pt", *extra_types))
            raise ValueError(f"output_type must be one of {allowed}, got {output_type!r}")
        if not return_dict:
            return (out_images,)
        return ShapesPipelineOutput(images=out_images)


def make_pipeline(model: TextToImageModel, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None) -> ShapesPipeline:
    """Wrap a trained :class:`TextToImageModel` as a :class:`ShapesPipeline` (shares its weights)."""
    cfg = model.config
    return ShapesPipeline(unet=model.unet, text_encoder=model.text_encoder, scheduler=make_scheduler(cfg),
                          default_num_inference_steps=int(num_inference_steps or cfg["num_inference_steps"]),
                          default_guidance_scale=float(guidance_scale if guidance_scale is not None
                                                       else cfg["guidance_scale"]))


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(pipe: ShapesPipeline, captions: list[str], seed: int = 0, batch_size: int | None = None, **kw):
    """Pictures [n, 3, 32, 32] in [0, 1] for ``captions`` (one batch unless ``batch_size``)."""
    g = torch.Generator().manual_seed(seed)
    if batch_size is None:
        return pipe(captions, generator=g, output_type="pt", **kw).images
    return torch.cat([pipe(captions[i:i + batch_size], generator=g, output_type="pt", **kw).images
                      for i in range(0, len(captions), batch_size)])


def judge_pipeline(pipe: ShapesPipeline, split: str = "train", seed: int = 0, **kw) -> dict:
    """The issue's measure: one picture per distinct caption of ``split`` (270 for train), one batch,
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
TRAIN_DEFAULTS = {
    "steps": 3000,          # the shipped recipe; chapter 05's full run trains 1,200 steps (about 0.33 s of
                            # one CPU core per step, so 6.5 CPU minutes, for 95% on the judge)
    "batch_size": 32,
    "lr": 2e-3,
    "warmup": 100,
    "final_lr_frac": 0.05,
    "weight_decay": 0.0,
    "ema_decay": 0.995,
    "caption_dropout": 0.1,
    "min_snr_gamma": None,
    "n_train": 12000,
    "grad_clip": 1.0,
}


def train_text_to_image(config: dict | None = None, steps: int | None = None, minutes: float | None = None,
                        seed: int = 0, device=None, eval_every: int | None = None, eval_fn=None,
                        callback=None, progress: bool = True, model: nn.Module | None = None, **overrides):
    """Train a :class:`TextToImageModel` from scratch on Shapes (train split); ``model``: another
    backbone with the same ``text_encoder`` / ``encode`` / ``denoise`` and a ``config`` dict (chapter
    05's Diffusion Transformer), trained with the same step.

    Budget: ``steps`` and/or ``minutes`` (whichever ends first; the learning rate decays with the
    fraction of the budget used, so a minutes budget still ends at a low rate). Returns
    ``(ema_model, history, settings)``; ``eval_fn(model, step) -> dict`` runs every ``eval_every`` steps
    on the EMA model.
    """
    hp = dict(TRAIN_DEFAULTS, **overrides)
    if steps is None and minutes is None:
        steps = hp["steps"]
    device = device or get_device()
    torch.manual_seed(seed)
    cfg = model.config if model is not None else _merged(config)
    model = (model if model is not None else TextToImageModel(cfg)).to(device)
    ema = EMA(model, decay=hp["ema_decay"])
    ds = shapes.ShapesDataset(hp["n_train"], seed=seed + 100, split="train")
    tok = model.text_encoder.tokenizer
    ids = tok(ds.captions)
    data = torch.utils.data.TensorDataset(diffusion.to_model_range(ds.images), ids["input_ids"],
                                          ids["attention_mask"])
    loader = infinite_loader(data, hp["batch_size"], seed=seed)
    step_fn = make_train_step(model, ema, cfg, hp, device, seed, steps, minutes)
    wrapped_eval = (lambda step: eval_fn(ema.module, step)) if eval_fn is not None else None
    history = fit(step_fn, loader, steps=steps, minutes=minutes, eval_fn=wrapped_eval, eval_every=eval_every,
                  desc="shapes-t2i", progress=progress, callback=callback)
    ema_model = ema.module
    ema_model.config = cfg
    ema_model.eval()
    return ema_model, history, hp


def budget_fraction(steps: int | None, minutes: float | None):
    """``frac(step)``: the fraction of the training budget used, the larger of ``step / steps`` and the
    wall-clock minutes since this call over ``minutes`` (whichever budget is given), capped at 1."""
    t_start = time.perf_counter()

    def frac(step):
        fr = step / steps if steps else 0.0
        if minutes:
            fr = max(fr, (time.perf_counter() - t_start) / (60 * minutes))
        return min(fr, 1.0)
    return frac


def cosine_with_warmup(warmup: int, final_frac: float, frac_fn):
    """``LambdaLR`` factor: linear warm-up over ``warmup`` steps, then a cosine from 1 down to
    ``final_frac`` as ``frac_fn(step)`` (the fraction of the budget used) goes from 0 to 1."""
    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / warmup
        fr = frac_fn(step)
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * fr))
    return lr_lambda


def make_train_step(model, ema, cfg: dict, hp: dict, device, seed: int, steps: int | None, minutes: float | None):
    """Chapter 05's training step for any model with ``encode(ids, mask)`` and ``denoise(x, t, states,
    pooled)`` (the pixel model here, the latent one of chapter 08): AdamW, warm-up + cosine decay over
    the budget (``steps`` and/or ``minutes``), caption dropout to the empty caption, the diffusion loss
    of ``cfg["prediction_type"]``, gradient clipping, EMA. Returns ``step_fn(batch, step)`` for
    :func:`course_lib.training.fit`; a batch is ``(x0, input_ids, attention_mask)``."""
    ac = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["num_train_timesteps"]).alphas_cumprod.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    g = torch.Generator().manual_seed(seed + 1)
    progress_frac = budget_fraction(steps, minutes)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(hp["warmup"], hp["final_lr_frac"], progress_frac))
    empty = model.text_encoder.tokenizer([""])
    e_ids, e_mask = empty["input_ids"].to(device), empty["attention_mask"].to(device)

    def loss_fn(m, batch):
        x0, in_ids, mask = (b.to(device) for b in batch)
        drop = (torch.rand(len(x0), generator=g) < hp["caption_dropout"]).to(device)
        in_ids = torch.where(drop[:, None], e_ids.expand_as(in_ids), in_ids)
        mask = torch.where(drop[:, None], e_mask.expand_as(mask), mask)
        states, pooled = m.encode(in_ids, mask)
        return diffusion.diffusion_loss(lambda x, t: m.denoise(x, t, states, pooled), x0, ac,
                                        cfg["prediction_type"], generator=g, min_snr_gamma=hp["min_snr_gamma"])

    return make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=hp["grad_clip"])


# --------------------------------------------------------------------------------------------
# Registration: `python -m course_lib.pretrained train shapes-t2i`
# --------------------------------------------------------------------------------------------
def build(config: dict) -> TextToImageModel:
    return TextToImageModel(config)


def finalize(model: TextToImageModel) -> ShapesPipeline:
    return make_pipeline(model)


def evaluate(model: TextToImageModel) -> dict:
    pipe = make_pipeline(model)
    q = {"train_captions": judge_pipeline(pipe, "train"), "heldout_captions": judge_pipeline(pipe, "heldout")}
    # sampling time per picture, on this machine
    caps = shapes.all_captions("train")[:32]
    t0 = time.perf_counter()
    generate(pipe, caps, seed=0)
    q["sampling_ms_per_picture_batch32"] = round(1000 * (time.perf_counter() - t0) / len(caps), 2)
    q["num_inference_steps"] = pipe.default_num_inference_steps
    q["guidance_scale"] = pipe.default_guidance_scale
    return q


def train_registered(seed: int = 0, quick: bool = False, eval_every: int | None = None) -> TrainResult:
    """The shipped recipe (``quick``: 20 steps). ``eval_every``: also record a learning curve (the judge
    on the 270 train captions every N steps; does not change training)."""
    steps = 20 if quick else TRAIN_DEFAULTS["steps"]
    every = eval_every
    curve = []

    def eval_fn(m, step):
        r = judge_pipeline(make_pipeline(m))
        curve.append((step, r["all"]))
        return r

    t0 = time.perf_counter()
    c0 = time.process_time()
    model, hist, hp = train_text_to_image(steps=steps, seed=seed, device=get_device(), eval_every=every,
                                          eval_fn=eval_fn if every else None)
    secs = time.perf_counter() - t0
    quality = evaluate(model)
    quality["train_steps"] = hist.steps
    quality["train_loop_seconds"] = round(secs, 1)
    quality["train_process_cpu_seconds"] = round(time.process_time() - c0, 1)
    if curve:
        quality["curve_all"] = curve
    notes = (f"{hist.steps} steps, batch {hp['batch_size']}, AdamW lr {hp['lr']} with warmup and cosine decay, "
             f"EMA {hp['ema_decay']}, caption dropout {hp['caption_dropout']}, {model.config['prediction_type']}, "
             f"{model.config['schedule']} schedule, UNet on the 2x2-folded picture")
    return TrainResult(model, model.config, quality, notes)


register("shapes-t2i", build=build, train=train_registered, evaluate=evaluate, finalize=finalize, chapter="05",
         description="Shapes text-to-image: word-token encoder + cross-attention UNet2DConditionModel, "
                     "classifier-free guidance, ShapesPipeline (diffusers)")
