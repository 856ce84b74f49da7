"""Latent diffusion on Shapes (chapter 09): a small autoencoder, then text-to-image in its latent
space.

Stable Diffusion does not denoise pixels: a VAE (diffusers ``AutoencoderKL``) compresses a
512x512x3 picture 8x per side into a 64x64x4 latent grid (48x fewer numbers), the UNet denoises
latents, and the decoder turns the final latent back into pixels once. Here the same recipe at
course size:

* ``shapes-autoencoder``: a tiny ``AutoencoderKL`` (32x32x3 -> 8x8x4, 12x fewer numbers), trained on
  Shapes train-split pictures with an L1 reconstruction loss plus a small KL term; its latents are
  shifted and scaled to mean 0 / std 1 (Stable Diffusion's ``scaling_factor``, SD3's
  ``shift_factor``).
* ``shapes-t2i-latent``: chapter 05's text encoder + cross-attention ``UNet2DConditionModel`` (same
  blocks, same v-prediction cosine recipe) on the 8x8x4 latents, wrapped as
  :class:`LatentShapesPipeline` with ShapesPipeline's call convention.

The checkpoint of ``shapes-t2i-latent`` holds the text encoder and the UNet only. Its config records
the sha256 of the autoencoder it was trained on, and loading it loads the shipped
``shapes-autoencoder`` and refuses a different one: a latent model is only meaningful with exactly
the decoder whose latent space it learnt (as every Stable Diffusion UNet ships with its own VAE),
and keeping the autoencoder in one file avoids storing it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .. import diffusion, runtime, sampling
from ..data import shapes
from ..config import Config
from ..pretrained import CheckpointError, TrainResult, register, run_recipe
from ..runtime import get_device
from ..training import (
    EMA,
    budget_fraction,
    cosine_with_warmup,
    fit,
    infinite_loader,
    make_step,
    ms_per_picture,
)
from . import text_to_image as t2i

# --------------------------------------------------------------------------------------------
# The autoencoder
# --------------------------------------------------------------------------------------------
AE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,  # 32 -> 16 -> 8 (the last block keeps 8x8)
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
    "mid_block_add_attention": False,  # 8x8 is small enough for convolutions to see it all
    "scaling_factor": 1.0,  # set after training: 1 / std of the latents
    "shift_factor": 0.0,  # set after training: mean of the latents
}


@dataclass
class AutoencoderTrainConfig(Config):
    """The ``shapes-autoencoder`` recipe."""

    steps: int = 2500  # a step budget, so the recorded command reproduces the shipped weights
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    final_lr_frac: float = 0.05
    # KL weight per latent number against the per-pixel reconstruction error: enough to keep the
    # encoder's posterior a distribution of moderate scale (a plain autoencoder's latents can drift
    # to any scale and grow holes the diffusion model would have to learn around), small enough that
    # reconstructions stay sharp (weight 1 would be chapter 02's VAE, whose pictures the prior
    # blurs).
    # Measured while choosing it: 1e-3 kept the posterior std near 0.7, an information bottleneck.
    kl_weight: float = 1e-4
    # L1 + squared error: on Shapes 85% of the pixels are flat black background, where L1's gradient
    # (a constant-size sign) is noise; the squared error's gradient grows with the error, so the
    # object's wrong colour dominates it (L1 alone learnt colour slowly: 35% judged right after 783
    # steps).
    mse_weight: float = 1.0
    n_train: int = 12000


def build_autoencoder(config: dict | None = None) -> AutoencoderKL:
    """A tiny ``AutoencoderKL``: [n, 3, 32, 32] in [-1, 1] <-> [n, 4, 8, 8]. ``config`` changes keys
    of :data:`AE_CONFIG` (an unknown key is an error naming the allowed ones)."""
    unknown = sorted(set(config or {}) - set(AE_CONFIG))
    if unknown:
        raise ValueError(
            f"the autoencoder config has no key {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(AE_CONFIG)}"
        )
    return AutoencoderKL(**dict(AE_CONFIG, **(config or {})))


def encode(
    vae: AutoencoderKL, x: torch.Tensor, sample: bool = False, generator=None
) -> torch.Tensor:
    """Pictures [n, 3, 32, 32] in [-1, 1] -> normalised latents [n, 4, 8, 8] (mean 0, std about 1):
    ``(z - shift_factor) * scaling_factor`` with ``z`` the posterior mean (or a sample)."""
    post = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    z = post.sample(generator) if sample else post.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Normalised latents [n, 4, 8, 8] -> pictures [n, 3, 32, 32] in model range (about [-1, 1])."""
    z = z.to(vae.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z).sample


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Pictures [n, 3, 32, 32] in [0, 1] -> encode -> decode -> [n, 3, 32, 32] in [0, 1]."""
    out = [
        diffusion.to_image_range(decode(vae, encode(vae, diffusion.to_model_range(x)))).cpu()
        for x in images01.split(batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def latent_stats(
    vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 500
) -> tuple[float, float]:
    """Mean and std of the raw posterior means over ``images01`` (for shift/scaling factors)."""
    zs = [
        vae.encode(diffusion.to_model_range(x).to(vae.device)).latent_dist.mode().cpu()
        for x in images01.split(batch_size)
    ]
    z = torch.cat(zs)
    return z.mean().item(), z.std().item()


def train_autoencoder(
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    device=None,
    config: dict | None = None,
    progress: bool = True,
    **overrides,
):
    """Train the tiny ``AutoencoderKL`` on Shapes train-split pictures.

    Loss: mean |x̂ - x| + ``mse_weight`` * mean (x̂ - x)² + ``kl_weight`` * KL(q(z|x) || N(0, I))
    per latent number, with ``z`` sampled from the posterior (reparameterisation, chapter 02).
    Afterwards the latents' mean and std over the training pictures set ``shift_factor`` and
    ``scaling_factor``.
    Returns ``(vae, history, settings)``.
    """
    hp = AutoencoderTrainConfig.from_dict(overrides)
    if steps is None and minutes is None:
        steps = hp.steps
    device = device or get_device()
    with runtime.seeded(seed):
        vae = build_autoencoder(config).to(device)
        ds = shapes.ShapesDataset(hp.n_train, seed=seed + 200, split="train")
        data = torch.utils.data.TensorDataset(diffusion.to_model_range(ds.images))
        loader = infinite_loader(data, hp.batch_size, seed=seed)
        opt = torch.optim.AdamW(vae.parameters(), lr=hp.lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed + 1)
        frac = budget_fraction(steps, minutes)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(hp.warmup, hp.final_lr_frac, frac)
        )

        def loss_fn(m, batch):
            x = batch[0].to(device)  # [b, 3, 32, 32]
            post = m.encode(x).latent_dist  # mean, std [b, 4, 8, 8]
            eps = torch.randn(post.mean.shape, generator=g).to(device)
            z = post.mean + post.std * eps  # reparameterised sample
            rec = m.decode(z).sample  # [b, 3, 32, 32]
            l1 = (rec - x).abs().mean()
            mse = (rec - x).pow(2).mean()
            kl = post.kl().mean() / post.mean[0].numel()  # per latent number
            loss = l1 + hp.mse_weight * mse + hp.kl_weight * kl
            return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}

        step_fn = make_step(vae, loss_fn, opt, scheduler=sched, grad_clip=1.0)
        hist = fit(
            step_fn,
            loader,
            steps=steps,
            minutes=minutes,
            desc="shapes-autoencoder",
            progress=progress,
        )
        vae.eval()
        mean, std = latent_stats(vae, ds.images[:4000])
        vae.register_to_config(shift_factor=round(mean, 6), scaling_factor=round(1.0 / std, 6))
        return vae, hist, hp


def autoencoder_config(vae: AutoencoderKL) -> dict:
    """The constructor arguments of ``vae`` (what :func:`build_autoencoder` needs), JSON-ready."""
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in vae.config.items() if k in AE_CONFIG
    }


@torch.no_grad()
def evaluate_autoencoder(vae: AutoencoderKL, n: int = 1000, seed: int = 54321) -> dict:
    """Round trip on fresh pictures (a seed training never used): the shapes-judge's accuracy on the
    originals and on the reconstructions (train and held-out combinations), PSNR, and encode /
    decode milliseconds per picture at batch 250."""
    from ..judges import score_shapes
    from ..metrics import psnr

    vae = vae.eval()
    q = {}
    for split in ("train", "heldout"):
        x, caps = shapes.sample(n if split == "train" else n // 4, seed=seed, split=split)
        rec = round_trip(vae, x)
        r0, r1 = score_shapes(x, caps), score_shapes(rec, caps)
        q[split] = {
            "judge_all_originals": round(r0["all"], 4),
            "judge_all_reconstructions": round(r1["all"], 4),
            "psnr_db": round(psnr(rec, x), 2),
            "n": len(caps),
        }
    x = diffusion.to_model_range(shapes.sample(250, seed=seed + 1)[0])
    encode(vae, x[:8])
    decode(vae, encode(vae, x[:8]))  # warm-up
    t0 = time.perf_counter()
    z = encode(vae, x)
    t1 = time.perf_counter()
    decode(vae, z)
    t2 = time.perf_counter()
    q["encode_ms_per_picture"] = round(1000 * (t1 - t0) / len(x), 3)
    q["decode_ms_per_picture"] = round(1000 * (t2 - t1) / len(x), 3)
    q["numbers_per_picture"] = {"pixels": 3 * 32 * 32, "latent": int(z[0].numel())}
    return q


# --------------------------------------------------------------------------------------------
# The latent denoiser: chapter 05's model on [n, 4, 8, 8]
# --------------------------------------------------------------------------------------------
def latent_config(config=None, **changes) -> t2i.TextToImageConfig:
    """Chapter 05's config with the pixel fold replaced by the autoencoder: the UNet denoises
    ``in_channels=4`` latents of side ``sample_size=8`` (``fold`` 1)."""
    base = {"fold": 1, "in_channels": AE_CONFIG["latent_channels"], "sample_size": 8}
    if isinstance(config, t2i.TextToImageConfig):
        config = config.to_dict()
    return t2i.TextToImageConfig.from_dict({**base, **(config or {})}, **changes)


def build_latent_model(config=None) -> t2i.TextToImageModel:
    """Text encoder + conditional UNet on normalised latents (chapter 05's :class:`TextToImageModel`
    with :func:`latent_config`). The autoencoder is not part of it."""
    return t2i.TextToImageModel(latent_config(config))


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class LatentShapesPipeline(t2i.ShapesPipeline):
    """Latent text to image on Shapes with ShapesPipeline's call convention:
    ``pipe(prompts, num_inference_steps=, guidance_scale=, generator=,
    output_type="pil"|"np"|"pt")`` -> ``.images`` (``"pt"``: [n, 3, 32, 32] in [0, 1]; ``"latent"``:
    [n, 4, 8, 8]). Noise is drawn in latent space; the same sampling loop denoises latents; the
    decoder runs once at the end.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: t2i.ShapesTextEncoder,
        scheduler,
        default_num_inference_steps: int = 20,
        default_guidance_scale: float = 3.0,
    ):
        super(t2i.ShapesPipeline, self).__init__()
        self.register_modules(vae=vae, unet=unet, text_encoder=text_encoder, scheduler=scheduler)
        self.register_to_config(
            default_num_inference_steps=int(default_num_inference_steps),
            default_guidance_scale=float(default_guidance_scale),
        )

    @property
    def image_channels(self) -> int:
        return self.unet.config.in_channels  # noise is drawn as latents: no fold

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [n, 4, 8, 8] -> pictures [n, 3, 32, 32] in [0, 1]."""
        return diffusion.to_image_range(decode(self.vae, z).float()).cpu()


def make_pipeline(
    model: t2i.TextToImageModel,
    vae: AutoencoderKL,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
) -> LatentShapesPipeline:
    """Wrap a trained latent model and its autoencoder as a :class:`LatentShapesPipeline` (shares
    weights)."""
    cfg = model.config
    return LatentShapesPipeline(
        vae=vae.to(next(model.parameters()).device).eval(),
        unet=model.unet,
        text_encoder=model.text_encoder,
        scheduler=sampling.make_scheduler(cfg.sampler, cfg),
        default_num_inference_steps=int(num_inference_steps or cfg.num_inference_steps),
        default_guidance_scale=float(
            guidance_scale if guidance_scale is not None else cfg.guidance_scale
        ),
    )


# --------------------------------------------------------------------------------------------
# Training the latent model
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Normalised latents [n, 4, 8, 8] of pictures [n, 3, 32, 32] in [0, 1] (posterior means; done
    once before training, which is where latent diffusion saves the encoder's cost)."""
    vae.eval()
    return torch.cat(
        [encode(vae, diffusion.to_model_range(x)).cpu() for x in images01.split(batch_size)]
    )


def train_latent_text_to_image(
    vae: AutoencoderKL,
    config=None,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    device=None,
    progress: bool = True,
    **overrides,
):
    """Chapter 05's recipe (:class:`t2i.TrainConfig`: AdamW, warmup + cosine, EMA, caption dropout,
    v-prediction on the cosine schedule) and training loop (:func:`t2i.train_on`) on the
    autoencoder's latents instead of folded pixels. Returns ``(ema_model, history, settings)``;
    ``settings`` adds ``encode_seconds``, the one-off cost of encoding the training pictures."""
    hp = t2i.TrainConfig.from_dict(overrides)
    if steps is None and minutes is None:
        steps = hp.steps
    device = device or get_device()
    with runtime.seeded(seed):
        model = build_latent_model(config)
        ds = shapes.ShapesDataset(hp.n_train, seed=seed + 100, split="train")  # chapter 05's
        t0 = time.perf_counter()
        lat = encode_dataset(vae.to(device), ds.images)  # [N, 4, 8, 8]
        encode_seconds = round(time.perf_counter() - t0, 2)
        ema_model, hist = t2i.train_on(
            model,
            lat,
            ds.captions,
            hp,
            steps,
            minutes,
            seed,
            device,
            progress=progress,
            desc="shapes-t2i-latent",
        )
        return ema_model, hist, {**hp.to_dict(), "encode_seconds": encode_seconds}


def time_train_steps(
    kind: str,
    vae: AutoencoderKL | None = None,
    n_steps: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    warmup: int = 3,
) -> float:
    """Seconds per training step (median of ``n_steps`` after ``warmup``) of chapter 05's step on
    ``kind="pixel"`` (12x16x16 folded pictures) or ``"latent"`` (4x8x8, latents encoded beforehand);
    same batch, same text encoder, same UNet blocks, same optimiser."""
    device = get_device()
    with runtime.seeded(seed):
        hp = t2i.TrainConfig(batch_size=batch_size)
        x, caps = shapes.sample(batch_size * 4, seed=seed + 7)
        if kind == "pixel":
            model = t2i.TextToImageModel().to(device)
            data = diffusion.to_model_range(x)
        elif kind == "latent":
            model = build_latent_model().to(device)
            data = encode_dataset(vae, x)
        else:
            raise ValueError(f"kind must be 'pixel' or 'latent', got {kind!r}")
        ids = model.text_encoder.tokenizer(caps)
        ema = EMA(model, decay=hp.ema_decay)
        step_fn = t2i.make_train_step(
            model, ema, model.config, hp, device, seed, n_steps + warmup, None
        )
        times = []
        for i in range(n_steps + warmup):
            b = slice((i % 4) * batch_size, (i % 4 + 1) * batch_size)
            batch = (data[b], ids["input_ids"][b], ids["attention_mask"][b])
            t0 = time.perf_counter()
            step_fn(batch, i)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return float(torch.tensor(times).median())


@torch.no_grad()
def sampling_seconds_per_picture(pipe, n: int = 32, steps: int = 20, repeats: int = 2) -> float:
    """Seconds per picture of one batch of ``n`` train captions at ``steps`` steps: the median of
    ``repeats`` wall times (:func:`course_lib.training.ms_per_picture`), after a small warm-up."""
    caps = shapes.all_captions("train")[:n]
    t2i.generate(pipe, caps[:2], num_inference_steps=steps)  # warm-up
    ms = ms_per_picture(
        lambda: t2i.generate(pipe, caps, num_inference_steps=steps), n, repeats=repeats, warmup=0
    )
    return ms / 1000


def compare_pixel_latent(
    latent_pipe,
    pixel_pipe,
    vae: AutoencoderKL,
    steps: int = 20,
    n_time_steps: int = 20,
    judge: bool = True,
) -> dict:
    """One run measuring pixel space (chapter 05's ShapesPipeline) against latent space: parameters,
    training ms per step (batch 32), sampling ms per picture (batch 32, ``steps`` steps, guidance of
    each pipeline's default) and judged all-five accuracy on the 270 train and 54 held-out
    captions."""
    out = {}
    for name, pipe in (("pixel", pixel_pipe), ("latent", latent_pipe)):
        r = {
            "parameters_unet_text": sum(
                p.numel() for m in (pipe.unet, pipe.text_encoder) for p in m.parameters()
            )
        }
        if name == "latent":
            r["parameters_autoencoder"] = sum(p.numel() for p in vae.parameters())
        r["train_ms_per_step"] = round(
            1000 * time_train_steps(name, vae=vae, n_steps=n_time_steps), 1
        )
        r["sampling_ms_per_picture"] = round(
            1000 * sampling_seconds_per_picture(pipe, steps=steps), 2
        )
        if judge:
            for split in ("train", "heldout"):
                res = t2i.judge_pipeline(pipe, split, num_inference_steps=steps)
                r[f"{split}_all"] = res["all"]
                r[f"{split}_attributes"] = {k: res[k] for k in shapes.ATTRIBUTES}
        out[name] = r
    out["train_step_speedup"] = round(
        out["pixel"]["train_ms_per_step"] / out["latent"]["train_ms_per_step"], 2
    )
    out["sampling_speedup"] = round(
        out["pixel"]["sampling_ms_per_picture"] / out["latent"]["sampling_ms_per_picture"], 2
    )
    out["num_inference_steps"] = steps
    return out


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
def _train_autoencoder_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps = 10 if quick else AutoencoderTrainConfig().steps

    def notes(hist, hp):
        return (
            f"{hist.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr} warmup + cosine; loss L1 "
            f"+ {hp.mse_weight} x MSE + {hp.kl_weight} x KL per latent number; shift/scaling "
            "factor = mean / (1/std) of the latents of 4000 train pictures"
        )

    result = run_recipe(
        lambda: train_autoencoder(steps=steps, seed=seed), evaluate_autoencoder, notes=notes
    )
    result.config = autoencoder_config(result.model)
    return result


def _load_matching_autoencoder(config: t2i.TextToImageConfig, device=None) -> AutoencoderKL:
    from .. import pretrained

    want = config.autoencoder_sha256
    rec = pretrained.verify("shapes-autoencoder")
    if want is not None and rec["sha256"] != want:
        raise CheckpointError(
            f"shapes-t2i-latent was trained on the autoencoder with sha256 {want[:16]}..., but the "
            f"shipped shapes-autoencoder is {rec['sha256'][:16]}...; retrain it with: "
            "python -m course_lib.pretrained train shapes-t2i-latent"
        )
    return pretrained.load_module("shapes-autoencoder", device=device)


def _finalize_latent(model: t2i.TextToImageModel) -> LatentShapesPipeline:
    vae = _load_matching_autoencoder(model.config, device=next(model.parameters()).device)
    return make_pipeline(model, vae)


def _evaluate_latent(model: t2i.TextToImageModel) -> dict:
    pipe = _finalize_latent(model)
    return {
        "train_captions": t2i.judge_pipeline(pipe, "train"),
        "heldout_captions": t2i.judge_pipeline(pipe, "heldout"),
        "num_inference_steps": pipe.default_num_inference_steps,
        "guidance_scale": pipe.default_guidance_scale,
    }


def _train_latent_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    from .. import pretrained

    rec = pretrained.verify("shapes-autoencoder")
    vae = pretrained.load_module("shapes-autoencoder")
    steps = 20 if quick else t2i.TrainConfig().steps

    def notes(hist, hp):
        return (
            f"{hist.steps} steps of chapter 05's recipe (batch {hp['batch_size']}, AdamW lr "
            f"{hp['lr']}, EMA {hp['ema_decay']}, caption dropout {hp['caption_dropout']}, "
            "v-prediction, cosine) on the 8x8x4 latents of shapes-autoencoder (sha256 in config); "
            "the checkpoint holds text encoder + UNet only"
        )

    settings = {}

    def train():
        out = train_latent_text_to_image(
            vae, {"autoencoder_sha256": rec["sha256"]}, steps=steps, seed=seed
        )
        settings.update(out[2])
        return out

    result = run_recipe(train, _evaluate_latent, notes=notes)
    result.quality["encode_train_pictures_seconds"] = settings["encode_seconds"]
    pipe = make_pipeline(result.model, vae)
    result.quality["pixel_vs_latent"] = compare_pixel_latent(
        pipe, pretrained.load("shapes-t2i"), vae, steps=pipe.default_num_inference_steps
    )
    return result


register(
    "shapes-autoencoder",
    role="component",
    domain="shapes",
    build=build_autoencoder,
    train=_train_autoencoder_registered,
    evaluate=evaluate_autoencoder,
    chapter="09",
    description="Tiny AutoencoderKL (diffusers): Shapes 32x32x3 <-> 8x8x4 latents, L1 + small KL",
)
register(
    "shapes-t2i-latent",
    role="generator",
    domain="shapes",
    build=build_latent_model,
    train=_train_latent_registered,
    evaluate=_evaluate_latent,
    finalize=_finalize_latent,
    chapter="09",
    description=(
        "Latent text-to-image on Shapes: chapter 05's text encoder + UNet2DConditionModel on the "
        "shapes-autoencoder's 8x8x4 latents, LatentShapesPipeline (diffusers)"
    ),
)
