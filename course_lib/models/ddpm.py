"""A DDPM on MNIST-5k (chapter 04; chapters 07 and 08 reuse it).

A diffusers ``UNet2DModel`` predicts the noise ε (the ε-prediction loss of Ho et al. 2020) on digits
scaled to [-1, 1], linear schedule, T = 1000. It is class-conditional with an extra "no class" label
(10) that training uses for 10% of the pictures, so one network samples unconditionally, per class,
and with classifier-free guidance.

Sampling uses the hand-written samplers of :mod:`course_lib.diffusion` (DDPM and DDIM); the tests
check them against diffusers' schedulers.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import UNet2DModel

from .. import arguments, diffusion, sampling
from ..config import Config
from ..data import mnist
from ..pretrained import TrainResult, register, run_recipe
from ..runtime import get_device
from ..training import EMA, History, cycle, fit, infinite_loader, make_step

NULL_CLASS = 10

@dataclass
class DDPMConfig(Config):
    """The digit denoiser: a ``UNet2DModel`` (28 -> 14 -> 7, self-attention at 7x7) and its noise process."""
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    down_block_types: list = field(default_factory=lambda: ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"])
    up_block_types: list = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"

    def __post_init__(self):
        arguments.choice(self.prediction_type, diffusion.PREDICTION_TYPES + ("flow_prediction",), "prediction_type")
        arguments.choice(self.schedule, tuple(diffusion.DIFFUSERS_SCHEDULE_NAMES), "schedule")


@dataclass
class DDPMTrainConfig(Config):
    """The ``ddpm-mnist`` recipe."""
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    class_dropout: float = 0.1    # fraction of labels replaced by "no class" (for guidance)


class DigitDenoiser(nn.Module):
    """``UNet2DModel`` on [n, 1, 28, 28] with 11 class embeddings (0-9, and 10 = no class).

    ``forward(x_t, t, labels=None)``: ``labels`` None means unconditional.
    """

    def __init__(self, config: "DDPMConfig | dict | None" = None):
        super().__init__()
        self.config = DDPMConfig.from_dict(config)
        c = self.config
        self.unet = UNet2DModel(
            sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(c.block_out_channels),
            down_block_types=tuple(c.down_block_types), up_block_types=tuple(c.up_block_types),
            layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
            attention_head_dim=c.attention_head_dim, num_class_embeds=NULL_CLASS + 1)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return diffusion.NoiseSchedule.make(self.config.schedule, self.config.num_train_timesteps).alphas_cumprod

    def forward(self, x_t, t, labels=None):
        if labels is None:
            labels = torch.full((x_t.shape[0],), NULL_CLASS, dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t, class_labels=labels.to(x_t.device)).sample


def model_fn(model: DigitDenoiser, labels=None, guidance_scale: float = 1.0, mode: str = "batched"):
    """``(x_t, t) -> ε̂`` for the samplers; with ``labels`` and ``guidance_scale != 1``,
    classifier-free guidance ε̂ = ε̂(∅) + w (ε̂(y) - ε̂(∅)) (:func:`course_lib.sampling.guided`; the
    "no class" label 10 is the unconditional side)."""
    def fn(x, t):
        if labels is None:
            return model(x, t)
        y = torch.as_tensor(labels, dtype=torch.long).to(x.device)
        return sampling.guided(model, x, t, y, torch.full_like(y, NULL_CLASS), guidance_scale, mode)
    return fn


@torch.no_grad()
def sample_digits(model: DigitDenoiser, n: int = 64, labels=None, guidance_scale: float = 1.0,
                  sampler: str = "ddim", num_inference_steps: int = 50, seed: int = 0, eta: float = 0.0,
                  callback=None) -> torch.Tensor:
    """Digits [n, 1, 28, 28] in [0, 1] with the hand-written sampler (``"ddpm"`` or ``"ddim"``)."""
    model.eval()
    dev = next(model.parameters()).device
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = len(labels)
    g = torch.Generator().manual_seed(seed)
    ac = model.alphas_cumprod
    fn = model_fn(model, labels, guidance_scale)
    pt = model.config.prediction_type
    if sampler == "ddpm":
        x = diffusion.sample_ddpm(fn, (n, 1, 28, 28), ac, generator=g, num_inference_steps=num_inference_steps,
                                  prediction_type=pt, device=dev, callback=callback)
    elif sampler == "ddim":
        x = diffusion.sample_ddim(fn, (n, 1, 28, 28), ac, num_inference_steps=num_inference_steps, generator=g,
                                  prediction_type=pt, eta=eta, device=dev, callback=callback)
    else:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    return diffusion.to_image_range(x).cpu()


def train_ddpm(config: dict | None = None, steps: int | None = None, minutes: float | None = None, seed: int = 0,
               device=None, callback=None, progress: bool = True, loss=None,
               state_file: "str | Path | None" = None, save_every: int = 100, **overrides):
    """Train a :class:`DigitDenoiser` with the loss of ``config``'s prediction type (ε by default) on
    MNIST-5k train digits. ``overrides``: fields of :class:`DDPMTrainConfig`.

    ``state_file``: a file to save the whole run to every ``save_every`` steps (weights, EMA, optimiser,
    learning-rate schedule, random generators, history) and to resume from when it exists. A run that
    was stopped (a time limit, Ctrl-C) then continues where it stopped when called again with the same
    arguments, and ends with the same weights as one uninterrupted run; the file is deleted at the end.

    ``loss(model_fn, x0, alphas_cumprod, generator) -> scalar`` is the training step's loss (draw t,
    draw ε, noise x0, compare); default :func:`course_lib.diffusion.diffusion_loss`, which chapter
    04's exercise writes. Returns ``(ema_model, history)``.
    """
    hp = DDPMTrainConfig.from_dict(overrides)
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be None or a function (model_fn, x0, alphas_cumprod, generator) -> "
                        f"loss, got {type(loss).__name__}")
    if steps is None and minutes is None:
        steps = hp.steps
    device = device or get_device()
    torch.manual_seed(seed)
    model = DigitDenoiser(config).to(device)
    ema = EMA(model, decay=hp.ema_decay)
    x, y = mnist.load_mnist("train")
    loader = infinite_loader(torch.utils.data.TensorDataset(diffusion.to_model_range(x), y), hp.batch_size,
                             seed=seed)
    ac = model.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr)
    total = steps or 10 ** 9
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / hp.warmup) * (0.1 + 0.9 * max(0.0, 1 - s / total)))
    g = torch.Generator().manual_seed(seed + 1)
    pt = model.config.prediction_type
    hist = History()
    parts = {"model": model, "ema": ema.averaged, "optimizer": opt, "schedule": sched}
    if state_file is not None and Path(state_file).exists():
        hist = _load_state(state_file, parts, g, {"config": model.config.to_dict(), "recipe": hp.to_dict(),
                                                   "seed": seed, "steps": steps})
    batches = itertools.islice(cycle(loader), hist.steps, None)      # the batches a whole run would see next

    def loss_fn(m, batch):
        xb, yb = batch
        xb = xb.to(device)
        drop = torch.rand(len(yb), generator=g) < hp.class_dropout
        yb = torch.where(drop, torch.full_like(yb, NULL_CLASS), yb).to(device)
        if loss is not None:
            return loss(lambda a, t: m(a, t, yb), xb, ac, g)
        return diffusion.diffusion_loss(lambda a, t: m(a, t, yb), xb, ac, pt, generator=g)

    def save_now(i, h):
        if callback is not None:
            callback(i, h)
        if state_file is not None and (i + 1) % save_every == 0:
            _save_state(state_file, parts, g, h, {"config": model.config.to_dict(), "recipe": hp.to_dict(),
                                                  "seed": seed, "steps": steps})

    remaining = None if steps is None else steps - hist.steps
    hist = fit(make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=1.0), batches,
               steps=remaining, minutes=minutes, desc="ddpm-mnist", progress=progress, callback=save_now,
               history=hist)
    if state_file is not None and steps is not None and hist.steps >= steps:
        Path(state_file).unlink(missing_ok=True)
    m = ema.module
    m.config = model.config
    return m.eval(), hist


def _save_state(path, parts: dict, generator: torch.Generator, history: History, run: dict) -> None:
    """Write a resumable training state (written to a temporary file first, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.state_dict() for k, v in parts.items()}
    state.update(generator=generator.get_state(), history=dataclasses.asdict(history), run=run)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _load_state(path, parts: dict, generator: torch.Generator, run: dict) -> History:
    """Restore :func:`_save_state`'s file into ``parts`` and ``generator``; refuse a file from another run."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["run"] != run:
        raise ValueError(f"{path} holds the state of another run ({state['run']}), not of {run}: "
                         "delete it or pass another state_file")
    for k, v in parts.items():
        v.load_state_dict(state[k])
    generator.set_state(state["generator"])
    return History(**state["history"])


def evaluate(model: DigitDenoiser, n: int = 500, num_inference_steps: int = 50) -> dict:
    """The mnist-classifier's view of the model's samples: unconditional, and class-conditional
    (50 of each digit, guidance 2)."""
    from ..judges import score_digits

    uncond = score_digits(sample_digits(model, n, num_inference_steps=num_inference_steps, seed=0))
    labels = torch.arange(10).repeat_interleave(n // 10)
    cond = score_digits(sample_digits(model, labels=labels, guidance_scale=2.0,
                                      num_inference_steps=num_inference_steps, seed=1), labels)
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"sampler": f"DDIM-{num_inference_steps} (hand-written)", "n": n,
            "unconditional": {"mean_top_prob": r(uncond["mean_top_prob"]), "hist_entropy": r(uncond["hist_entropy"])},
            "class_conditional_w2": {"mean_top_prob": r(cond["mean_top_prob"]), "hist_entropy": r(cond["hist_entropy"]),
                                     "accuracy": r(cond["accuracy"])}}


def train_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps = 20 if quick else DDPMTrainConfig().steps
    hp = DDPMTrainConfig()
    return run_recipe(lambda: train_ddpm(steps=steps, seed=seed), evaluate,
                      notes=lambda hist, _: f"{hist.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr}, EMA "
                                            f"{hp.ema_decay}, epsilon loss, linear schedule T=1000, class dropout "
                                            f"{hp.class_dropout}")


register("ddpm-mnist", build=lambda cfg: DigitDenoiser(cfg), train=train_registered, evaluate=evaluate,
         chapter="04", description="DDPM on MNIST-5k: UNet2DModel, epsilon loss, class-conditional with CFG")
