"""The digit denoisers of chapter 04 (chapters 07 and 08 reuse them): ``ddpm-mnist`` and
``flow-mnist``.

A diffusers ``UNet2DModel`` on MNIST-5k digits scaled to [-1, 1]. ``ddpm-mnist`` predicts the noise
ε (the ε-prediction loss of Ho et al. 2020; linear schedule, T = 1000); ``flow-mnist`` is the same
network, data and budget trained with the flow-matching loss (:mod:`course_lib.flow`: it predicts
the velocity ε - x_0). Both are class-conditional with an extra "no class" label (10) that training
uses for 10% of the pictures, so one network samples unconditionally, per class, and with
classifier-free guidance.

:func:`sample_digits` is the course's one way to sample them: chapter 04's hand-written samplers
(DDPM and DDIM of :mod:`course_lib.diffusion`, Euler of :mod:`course_lib.flow`; the tests check
them against diffusers' schedulers) or any scheduler of :func:`course_lib.sampling.make_scheduler`
through the course's one loop. :func:`judge_digits` is the one way to measure them.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import UNet2DModel

from .. import arguments, diffusion, flow, runtime, sampling
from ..config import Config
from ..data import mnist
from ..judges import score_digits
from ..pretrained import TrainResult, load, register, run_recipe
from ..runtime import get_device
from ..training import EMA, History, cycle, drop_labels, fit, infinite_loader, make_step

#: The "no class" label: the unconditional side of classifier-free guidance.
NULL_CLASS = 10
#: Chapter 04's hand-written samplers: DDPM and DDIM (:mod:`course_lib.diffusion`) for ε-, v- and
#: x_0-models, Euler (:mod:`course_lib.flow`) for flow-matching models.
HAND_WRITTEN = ("ddpm", "ddim", "euler")
#: What ``flow-mnist`` changes in chapter 04's recipe: the network outputs the velocity ε - x_0.
FLOW_CONFIG = {"prediction_type": flow.PREDICTION_TYPE}


@dataclass
class DDPMConfig(Config):
    """The digit denoiser: a ``UNet2DModel`` (28 -> 14 -> 7, self-attention at 7x7) and its noise
    process."""

    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    down_block_types: list = field(
        default_factory=lambda: ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    )
    up_block_types: list = field(
        default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    )
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"

    def __post_init__(self):
        arguments.choice(
            self.prediction_type,
            diffusion.PREDICTION_TYPES + (flow.PREDICTION_TYPE,),
            "prediction_type",
        )
        arguments.choice(self.schedule, tuple(diffusion.DIFFUSERS_SCHEDULE_NAMES), "schedule")


@dataclass
class DDPMTrainConfig(Config):
    """The ``ddpm-mnist`` recipe."""

    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    class_dropout: float = 0.1  # fraction of labels replaced by "no class" (for guidance)


class DigitDenoiser(nn.Module):
    """``UNet2DModel`` on [n, 1, 28, 28] with 11 class embeddings (0-9, and 10 = no class).

    ``forward(x_t, t, labels=None)``: ``labels`` None means unconditional.
    """

    def __init__(self, config: "DDPMConfig | dict | None" = None):
        super().__init__()
        self.config = DDPMConfig.from_dict(config)
        c = self.config
        self.unet = UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            block_out_channels=tuple(c.block_out_channels),
            down_block_types=tuple(c.down_block_types),
            up_block_types=tuple(c.up_block_types),
            layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
            attention_head_dim=c.attention_head_dim,
            num_class_embeds=NULL_CLASS + 1,
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return diffusion.NoiseSchedule.make(
            self.config.schedule, self.config.num_train_timesteps
        ).alphas_cumprod

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


def is_flow(model: DigitDenoiser) -> bool:
    """True for a flow-matching digit model (it predicts the velocity, as ``flow-mnist``)."""
    return model.config.prediction_type == flow.PREDICTION_TYPE


def _default_sampler(model: DigitDenoiser) -> str:
    return "euler" if is_flow(model) else "ddim"


def _check_sampler(model: DigitDenoiser, sampler):
    """``sampler`` as the model's prediction type allows it: a name (returned as is) or a diffusers
    scheduler; anything else is a clear error."""
    flow_names = ("euler",) + sampling.FLOW_SAMPLERS
    if isinstance(sampler, str):
        if is_flow(model):
            arguments.choice(sampler, flow_names, "sampler of a flow-matching model")
        else:
            allowed = HAND_WRITTEN[:2] + tuple(
                n for n in sampling.SAMPLERS + sampling.STOCHASTIC_SAMPLERS if n not in HAND_WRITTEN
            )
            if sampler == "euler":
                raise ValueError(
                    "'euler' is chapter 04's Euler sampler of a flow-matching model; for "
                    f"Euler on this {model.config.prediction_type!r} model's ODE pass "
                    "sampler=sampling.make_scheduler('euler', model). Names allowed here: "
                    + ", ".join(repr(a) for a in allowed)
                )
            arguments.choice(
                sampler, allowed, f"sampler of a {model.config.prediction_type!r} model"
            )
        return sampler
    if not (hasattr(sampler, "step") and hasattr(sampler, "set_timesteps")):
        raise TypeError(
            f"sampler must be a name ({', '.join(HAND_WRITTEN)} or one of "
            f"sampling.make_scheduler's) or a diffusers scheduler, got {type(sampler).__name__}"
        )
    flow_scheduler = "beta_schedule" not in sampler.config
    if flow_scheduler != is_flow(model):
        kind = "a flow-matching" if flow_scheduler else "a diffusion (noise-schedule)"
        raise ValueError(
            f"{type(sampler).__name__} is {kind} scheduler, and this model predicts "
            f"{model.config.prediction_type!r}: build it with sampling.make_scheduler(name, model)"
        )
    return sampler


def sampler_label(sampler) -> str:
    """A short name for a sampler: the name itself, or a diffusers scheduler's class name."""
    return sampler if isinstance(sampler, str) else type(sampler).__name__


@torch.no_grad()
def sample_digits(
    model: DigitDenoiser,
    labels=None,
    n: int = 64,
    *,
    sampler=None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    eta: float = 0.0,
    shift: float = 1.0,
    cfg: str = "batched",
    callback=None,
) -> torch.Tensor:
    """Digits [n, 1, 28, 28] in [0, 1] from a :class:`DigitDenoiser`: the course's one digit
    sampler.

    ``labels``: one digit each (then ``n = len(labels)``), with classifier-free guidance
    ``guidance_scale`` (1: none); None: ``n`` unconditional digits. The starting noise is
    ``torch.randn`` of a generator seeded with ``seed`` (the same for every sampler).

    ``sampler`` (default: ``"ddim"``, or ``"euler"`` for a flow-matching model):

    * ``"ddpm"``, ``"ddim"`` (η = ``eta``): chapter 04's hand-written samplers for an ε-, v- or
      x_0-model (:func:`course_lib.diffusion.sample_ddpm` / ``sample_ddim``, "leading" timesteps as
      diffusers' default; ``callback(t, x_t, x0_hat)`` sees each step);
    * ``"euler"``: chapter 04's hand-written Euler sampler for a flow-matching model
      (:func:`course_lib.flow.sample_euler`, ``shift`` as in SD3; ``callback(i, t, x)``);
    * another name of :func:`course_lib.sampling.make_scheduler` (``"dpm++"``, ``"unipc"``,
      ``"euler-a"``, ``"dpm++sde"``, ``"flow-euler"``), or a diffusers scheduler made by it (say
      ``sampling.make_scheduler("ddim", model)`` for diffusers' DDIM with "trailing" timesteps):
      the course's one loop, :func:`course_lib.sampling.denoise_loop` (guidance passes run as
      ``cfg``: "batched", "sequential" or "off").

    The model's prediction type decides which samplers are valid; any other is a ValueError.
    """
    if labels is not None and not isinstance(labels, (list, tuple, torch.Tensor)):
        raise TypeError(
            f"labels must be a list or tensor of digits (or None, with n= for unconditional "
            f"digits), got {type(labels).__name__}"
        )
    sampler = _check_sampler(model, sampler if sampler is not None else _default_sampler(model))
    steps = arguments.positive_int(num_inference_steps, "num_inference_steps")
    w = arguments.guidance(guidance_scale)
    arguments.choice(cfg, sampling.GUIDANCE_MODES, "cfg")
    model.eval()
    dev = next(model.parameters()).device
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = len(labels)
    n = arguments.positive_int(n, "n")
    shape = (n, 1, 28, 28)
    g = torch.Generator().manual_seed(seed)
    pt = model.config.prediction_type
    if sampler in ("ddpm", "ddim"):
        fn = model_fn(model, labels, w, cfg)
        ac = model.alphas_cumprod
        if sampler == "ddpm":
            x = diffusion.sample_ddpm(
                fn,
                shape,
                ac,
                generator=g,
                num_inference_steps=steps,
                prediction_type=pt,
                device=dev,
                callback=callback,
            )
        else:
            x = diffusion.sample_ddim(
                fn,
                shape,
                ac,
                num_inference_steps=steps,
                generator=g,
                prediction_type=pt,
                eta=eta,
                device=dev,
                callback=callback,
            )
    elif sampler == "euler":
        noise = torch.randn(shape, generator=g).to(dev)
        x = flow.sample_euler(
            model_fn(model, labels, w, cfg), noise, steps, shift=shift, callback=callback
        )
    else:
        scheduler = (
            sampling.make_scheduler(sampler, model, shift=shift)
            if isinstance(sampler, str)
            else sampler
        )
        arguments.steps(steps, scheduler.config.num_train_timesteps)
        x = torch.randn(shape, generator=g).to(dev)
        y = None if labels is None else labels.to(dev)
        uncond = None if y is None else torch.full((n,), NULL_CLASS, dtype=torch.long, device=dev)

        def net(z, t, labels_):
            return model(z, t.to(dev).expand(len(z)), labels_)

        x = sampling.denoise_loop(scheduler, net, x, steps, y, uncond, w, cfg, g)
    return diffusion.to_image_range(x.float()).cpu()


def judge_digits(
    model: DigitDenoiser,
    sampler=None,
    num_inference_steps: int = 20,
    n: int = 500,
    guidance_scale: float = 2.0,
) -> dict:
    """The ``mnist-classifier``'s view of a digit model at one sampler and number of steps (the
    course's one way to judge a digit denoiser): ``n`` unconditional digits (seed 0: mean top-class
    probability; entropy of the histogram of classes, ln 10 = 2.303 when balanced; ``histogram``,
    the share called each class) and ``n`` class-conditional ones, n/10 of each digit with guidance
    ``guidance_scale`` (seed 1: accuracy, mean top-class probability, histogram entropy).
    ``sampler``: as :func:`sample_digits`."""
    sampler = _check_sampler(model, sampler if sampler is not None else _default_sampler(model))
    steps = arguments.positive_int(num_inference_steps, "num_inference_steps")
    n = arguments.positive_int(n, "n")
    labels = torch.arange(10).repeat_interleave(max(1, n // 10))
    kw = dict(sampler=sampler, num_inference_steps=steps)
    uncond = score_digits(sample_digits(model, None, n, seed=0, **kw))
    cond = score_digits(
        sample_digits(model, labels, guidance_scale=guidance_scale, seed=1, **kw), labels
    )
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {
        "sampler": sampler_label(sampler),
        "steps": steps,
        "mean_top_prob": r(uncond["mean_top_prob"]),
        "hist_entropy": r(uncond["hist_entropy"]),
        "histogram": [r(h) for h in uncond["histogram"]],
        "accuracy_guided": r(cond["accuracy"]),
        "mean_top_prob_guided": r(cond["mean_top_prob"]),
        "hist_entropy_guided": r(cond["hist_entropy"]),
        "n": n,
    }


def digits_per_steps(models: dict, steps=(1, 2, 4, 8, 16, 32), n: int = 500) -> list[dict]:
    """:func:`judge_digits` for each ``name -> (model, sampler)`` at each number of steps: the rows
    of chapter 04's figure (quality per number of sampling steps)."""
    return [
        {"model": name, **judge_digits(model, sampler, s, n)}
        for name, (model, sampler) in models.items()
        for s in steps
    ]


def train_ddpm(
    config: dict | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    device=None,
    callback=None,
    progress: bool = True,
    loss=None,
    state_file: "str | Path | None" = None,
    save_every: int = 100,
    **overrides,
):
    """Train a :class:`DigitDenoiser` with the loss of ``config``'s prediction type (ε by default)
    on MNIST-5k train digits. ``overrides``: fields of :class:`DDPMTrainConfig`.

    ``state_file``: a file to save the whole run to every ``save_every`` steps (weights, EMA,
    optimiser, learning-rate schedule, random generators, history) and to resume from when it
    exists. A run that was stopped (a time limit, Ctrl-C) then continues where it stopped when
    called again with the same arguments, and ends with the same weights as one uninterrupted run;
    the file is deleted at the end.

    ``loss(model_fn, x0, alphas_cumprod, generator) -> scalar`` is the training step's loss (draw t,
    draw ε, noise x0, compare); default :func:`course_lib.diffusion.diffusion_loss`, which chapter
    04's exercise writes. Returns ``(ema_model, history)``.
    """
    hp = DDPMTrainConfig.from_dict(overrides)
    if loss is not None and not callable(loss):
        raise TypeError(
            f"loss must be None or a function (model_fn, x0, alphas_cumprod, generator) -> "
            f"loss, got {type(loss).__name__}"
        )
    if steps is None and minutes is None:
        steps = hp.steps
    device = device or get_device()
    with runtime.seeded(seed):  # the initial weights, and any draw of a given loss
        model = DigitDenoiser(config).to(device)
        ema = EMA(model, decay=hp.ema_decay)
        x, y = mnist.load_mnist("train")
        loader = infinite_loader(
            torch.utils.data.TensorDataset(diffusion.to_model_range(x), y), hp.batch_size, seed=seed
        )
        ac = model.alphas_cumprod.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=hp.lr)
        total = steps or 10**9
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / hp.warmup) * (0.1 + 0.9 * max(0.0, 1 - s / total))
        )
        g = torch.Generator().manual_seed(seed + 1)
        pt = model.config.prediction_type
        hist = History()
        parts = {"model": model, "ema": ema.averaged, "optimizer": opt, "schedule": sched}
        if state_file is not None and Path(state_file).exists():
            hist = _load_state(
                state_file,
                parts,
                g,
                {
                    "config": model.config.to_dict(),
                    "recipe": hp.to_dict(),
                    "seed": seed,
                    "steps": steps,
                },
            )
        batches = itertools.islice(
            cycle(loader), hist.steps, None
        )  # the batches a whole run would see next

        def loss_fn(m, batch):
            xb, yb = batch
            xb = xb.to(device)
            yb = drop_labels(yb, hp.class_dropout, NULL_CLASS, g).to(device)
            if loss is not None:
                return loss(lambda a, t: m(a, t, yb), xb, ac, g)
            return diffusion.diffusion_loss(lambda a, t: m(a, t, yb), xb, ac, pt, generator=g)

        def save_now(i, h):
            if callback is not None:
                callback(i, h)
            if state_file is not None and (i + 1) % save_every == 0:
                _save_state(
                    state_file,
                    parts,
                    g,
                    h,
                    {
                        "config": model.config.to_dict(),
                        "recipe": hp.to_dict(),
                        "seed": seed,
                        "steps": steps,
                    },
                )

        remaining = None if steps is None else steps - hist.steps
        hist = fit(
            make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=1.0),
            batches,
            steps=remaining,
            minutes=minutes,
            desc="ddpm-mnist",
            progress=progress,
            callback=save_now,
            history=hist,
        )
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
    """Restore :func:`_save_state`'s file into ``parts`` and ``generator``; refuse a file from
    another run."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["run"] != run:
        raise ValueError(
            f"{path} holds the state of another run ({state['run']}), not of {run}: "
            "delete it or pass another state_file"
        )
    for k, v in parts.items():
        v.load_state_dict(state[k])
    generator.set_state(state["generator"])
    return History(**state["history"])


def evaluate(model: DigitDenoiser, n: int = 500, num_inference_steps: int = 50) -> dict:
    """``ddpm-mnist``'s recorded quality: :func:`judge_digits` with chapter 04's hand-written DDIM,
    unconditional and class-conditional (n/10 of each digit, guidance 2)."""
    j = judge_digits(model, "ddim", num_inference_steps, n, guidance_scale=2.0)
    return {
        "sampler": f"DDIM-{num_inference_steps} (hand-written)",
        "n": n,
        "unconditional": {"mean_top_prob": j["mean_top_prob"], "hist_entropy": j["hist_entropy"]},
        "class_conditional_w2": {
            "mean_top_prob": j["mean_top_prob_guided"],
            "hist_entropy": j["hist_entropy_guided"],
            "accuracy": j["accuracy_guided"],
        },
    }


def train_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps = 20 if quick else DDPMTrainConfig().steps
    hp = DDPMTrainConfig()
    return run_recipe(
        lambda: train_ddpm(steps=steps, seed=seed),
        evaluate,
        notes=lambda hist, _: (
            f"{hist.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr}, EMA "
            f"{hp.ema_decay}, epsilon loss, linear schedule T=1000, class dropout "
            f"{hp.class_dropout}"
        ),
    )


register(
    "ddpm-mnist",
    role="generator",
    domain="digits",
    build=lambda cfg: DigitDenoiser(cfg),
    train=train_registered,
    evaluate=evaluate,
    chapter="04",
    description="DDPM on MNIST-5k: UNet2DModel, epsilon loss, class-conditional with CFG",
)


# --------------------------------------------------------------------------------------------
# flow-mnist: the same network, data and budget, trained with flow matching
# --------------------------------------------------------------------------------------------
#: The numbers of sampling steps ``flow-mnist``'s recorded quality is measured at.
DIGIT_SWEEP_STEPS = (1, 2, 4, 8, 16, 32)


def evaluate_flow(model: DigitDenoiser, n: int = 300, steps=DIGIT_SWEEP_STEPS) -> dict:
    """``flow-mnist``'s recorded quality: :func:`judge_digits` per number of Euler steps, and,
    measured in the same run with the same judge and noise, ``ddpm-mnist`` with diffusers' DDIM
    ("trailing" timesteps, :func:`course_lib.sampling.make_scheduler`)."""
    ddpm_model = load("ddpm-mnist", next(model.parameters()).device)
    ddim = sampling.make_scheduler("ddim", ddpm_model)
    rows = digits_per_steps(
        {"flow-mnist": (model, "euler"), "ddpm-mnist": (ddpm_model, ddim)}, steps, n
    )
    keys = ("mean_top_prob", "hist_entropy", "accuracy_guided")

    def pick(name):
        return {r["steps"]: {k: r[k] for k in keys} for r in rows if r["model"] == name}

    return {
        "per_steps_euler": pick("flow-mnist"),
        "ddpm_mnist_per_steps_ddim": pick("ddpm-mnist"),
        "n": n,
        "guidance_scale": 2.0,
    }


def train_flow_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    """``flow-mnist``: the ``ddpm-mnist`` recipe (network, data, steps, batch, optimiser, EMA, class
    dropout) with the flow-matching loss instead of the ε loss. ``quick``: 20 steps."""
    hp = DDPMTrainConfig()
    steps = 20 if quick else hp.steps
    evaluate_fn = (lambda m: evaluate_flow(m, n=20, steps=(1, 4))) if quick else evaluate_flow
    # a long run on a CPU: resumable (stopped, the same command continues from the last saved step)
    state = None if quick else runtime.cache_dir() / "resume" / f"flow-mnist-seed{seed}.pt"
    return run_recipe(
        lambda: train_ddpm(
            config=FLOW_CONFIG, steps=steps, seed=seed, progress=False, state_file=state
        ),
        evaluate_fn,
        notes=lambda h, _: (
            f"{h.steps} steps, batch {hp.batch_size}, AdamW lr {hp.lr}, EMA "
            f"{hp.ema_decay}, class dropout {hp.class_dropout}: ddpm-mnist's recipe "
            f"with the flow-matching loss (uniform t, velocity target ε - x0); "
            f"resumable, train_loop_seconds counts every session"
        ),
    )


register(
    "flow-mnist",
    role="generator",
    domain="digits",
    build=lambda cfg: DigitDenoiser(cfg),
    train=train_flow_registered,
    evaluate=evaluate_flow,
    chapter="04",
    description="Flow matching on MNIST-5k: ddpm-mnist's UNet2DModel and budget, velocity loss, "
    "Euler sampler; class-conditional with CFG",
)
