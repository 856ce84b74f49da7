"""Distillation to a few steps (chapter 08): ``shapes-t2i`` -> ``shapes-t2i-fast``.

The teacher (chapter 05's ``shapes-t2i``) samples with DPM-Solver++ in 20 steps and classifier-free
guidance, i.e. two UNet passes per step: 40 UNet evaluations per picture. The student here makes a
picture in 1 to 4 UNet evaluations:

* **Guidance folded in** (Meng et al. 2023, "On Distillation of Guided Diffusion Models"): the
  student (initialised from the teacher) learns to produce, from one pass on the caption alone, what
  the *guided* teacher ``v_u + w (v_c - v_u)`` produces. Either in a stage of its own
  (``steps_guided > 0``: regress the guided output, Meng et al.'s stage one) or, the shipped recipe,
  by making the guided teacher the teacher of the first progressive round (``steps_guided=0``),
  which saves a stage.
* **Progressive distillation** (Salimans & Ho 2022): rounds that halve the number of DDIM steps
  (4 -> 2 -> 1). In a round the frozen student of the round before is the teacher; the new student
  learns to do in *one* DDIM step what the teacher does in *two*. :func:`distillation_target` is the
  x0 that makes this happen (the chapter's exercise). Half of each batch "holds" the other timesteps
  of the 4-step grid at the frozen teacher's own one-pass output, so the final one-step student
  still samples well with 2 and 4 steps. (In the first round that is the teacher's *unguided*
  output: at 749 and 249, used only by 4-step sampling, the student keeps the teacher's conditional
  prediction.)

Notation (Salimans & Ho, variance preserving): ``z_t = α_t x + σ_t ε`` with ``α_t = sqrt(ᾱ_t)``,
``σ_t = sqrt(1 - ᾱ_t)``. The network predicts ``v = α_t ε - σ_t x``, so ``x̂ = α_t z_t - σ_t v̂``
and ``ε̂ = σ_t z_t + α_t v̂``. A deterministic DDIM step from t to s is
``z_s = α_s x̂ + σ_s ε̂`` with ``ε̂ = (z_t - α_t x̂) / σ_t``. Timestep ``-1`` stands for the clean end
of sampling (α = 1, σ = 0), as diffusers' ``DDIMScheduler(set_alpha_to_one=True)`` does.

The sampler is diffusers' ``DDIMScheduler`` with ``timestep_spacing="trailing"``: n steps visit
``999, 999 - 1000/n, ...`` and every coarser grid (1, 2 steps) is a subset of the 4-step grid, so
the rounds nest. The alternative, consistency / latent consistency distillation (Song et al. 2023,
Luo et al. 2023), trains a student to map any point of the teacher's ODE path straight to its end
and samples with diffusers' ``LCMScheduler``; the notebook discusses it.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from .. import diffusion, runtime, sampling, training
from ..config import Config
from ..data import shapes
from ..pretrained import TrainResult, register
from ..runtime import get_device
from . import text_to_image as t2i

TEACHER = "shapes-t2i"
NAME = "shapes-t2i-fast"


# --------------------------------------------------------------------------------------------
# The algebra of one DDIM step in (α, σ, v) notation
# --------------------------------------------------------------------------------------------
def alpha_sigma(t: torch.Tensor, alphas_cumprod: torch.Tensor, like: torch.Tensor):
    """(α_t, σ_t) for integer timesteps ``t`` [n] (``-1`` = the clean end: α = 1, σ = 0), shaped
    [n, 1, 1, 1] to broadcast against ``like``."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).reshape(-1)
    a = torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(alphas_cumprod[:1]))
    a = a.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return a.sqrt(), (1 - a).clamp(min=0).sqrt()


def x0_from_v(v, z_t, alpha_t, sigma_t):
    """x̂ = α_t z_t - σ_t v."""
    return alpha_t * z_t - sigma_t * v


def v_from_x0(x0, z_t, alpha_t, sigma_t):
    """The v that predicts ``x0`` at ``z_t``: v = (α_t z_t - x0) / σ_t (needs σ_t > 0)."""
    return (alpha_t * z_t - x0) / sigma_t


def ddim_step_v(v, z_t, alpha_t, sigma_t, alpha_s, sigma_s):
    """Deterministic DDIM step t -> s from a v prediction: z_s = α_s x̂ + σ_s ε̂ (same result as
    ``diffusers.DDIMScheduler.step`` with eta 0; ``tests/test_fast.py`` checks it)."""
    x0 = alpha_t * z_t - sigma_t * v
    eps = sigma_t * z_t + alpha_t * v
    return alpha_s * x0 + sigma_s * eps


def distillation_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s):
    """The x0 a student must predict at ``z_t`` so that ONE DDIM step t -> s lands on ``z_s``, the
    point the teacher reached in TWO DDIM steps (Salimans & Ho 2022, Algorithm 2).

    Derivation: a DDIM step from t to s with a prediction x̃ is
    ``z_s = α_s x̃ + σ_s (z_t - α_t x̃) / σ_t``. Solve this linear equation for x̃:

        z_s - (σ_s/σ_t) z_t = (α_s - (σ_s/σ_t) α_t) x̃
        x̃ = (z_s - (σ_s/σ_t) z_t) / (α_s - (σ_s/σ_t) α_t).

    The denominator is positive whenever s is less noisy than t (the SNR α/σ grows), so x̃ is well
    defined. At the clean end (s = -1: α_s = 1, σ_s = 0) it is simply ``z_s``. All arguments are
    tensors broadcastable to ``z_t`` ([n, 3, 32, 32]; the α, σ as [n, 1, 1, 1]).
    """
    ratio = sigma_s / sigma_t  # [n, 1, 1, 1]
    return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


# --------------------------------------------------------------------------------------------
# Timestep grids (diffusers' DDIM with trailing spacing)
# --------------------------------------------------------------------------------------------
def trailing_grid(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps DDIM visits in ``num_steps`` steps with trailing spacing, e.g. 2 ->
    [999, 499]."""
    k = num_train_timesteps / num_steps
    return [int(round(num_train_timesteps - i * k)) - 1 for i in range(num_steps)]


def make_scheduler(config) -> DDIMScheduler:
    """The student's sampler: DDIM, trailing spacing, v-prediction, no clipping."""
    return sampling.make_scheduler("ddim", config)


# --------------------------------------------------------------------------------------------
# Teachers as functions (z_t, t, states, pooled) -> v
# --------------------------------------------------------------------------------------------
class Denoiser:
    """A frozen :class:`text_to_image.TextToImageModel` as a v-predictor, optionally with
    classifier-free guidance ``w`` (:func:`course_lib.sampling.guided`: one batched call of 2n,
    empty caption and caption)."""

    def __init__(self, model: t2i.TextToImageModel, guidance_scale: float = 1.0):
        self.model = model.eval().requires_grad_(False)
        self.w = float(guidance_scale)
        dev = next(model.parameters()).device
        empty = model.text_encoder.tokenize([""], dev)
        with torch.no_grad():
            self.empty = model.encode(
                empty["input_ids"], empty["attention_mask"]
            )  # [1, L, d], [1, d]

    def _net(self, z, t, cond):
        return self.model.denoise(z, t, *cond)

    @torch.no_grad()
    def __call__(self, z, t, ids, mask):
        cond = self.model.encode(ids, mask)  # [n, L, d], [n, d]
        uncond = tuple(e.expand(len(z), *e.shape[1:]) for e in self.empty)
        return sampling.guided(self._net, z, t, cond, uncond, self.w)


# --------------------------------------------------------------------------------------------
# The distillation loop
# --------------------------------------------------------------------------------------------
@dataclass
class DistillConfig(Config):
    """The ``shapes-t2i-fast`` recipe."""

    guidance_scale: float = 3.0  # the teacher's guidance, folded into the student
    grid_steps: int = (
        8  # stage A (if any) trains at this grid's timesteps (1, 2, 4 steps are subsets)
    )
    rounds: list = field(default_factory=lambda: [2, 1])  # stage B: student step counts (teacher =
    # previous student at twice as many)
    steps_guided: int = 0  # optimiser steps of stage A; 0: fold guidance into the first round
    # instead (its teacher is the guided teacher)
    steps_per_round: object = field(default_factory=lambda: [450, 550])  # per round (or one number)
    hold: float = 0.5  # fraction of a round's batch spent at the other timesteps of the
    hold_steps: int = 4  # 4-step grid, with the frozen teacher's own output as the target there
    # (so the 1-step student still samples well in 2 and 4 steps)
    batch_size: int = 32
    lr: float = 3e-4
    final_lr_frac: float = 0.1
    n_train: int = 4000
    caption_dropout: float = (
        0.1  # keep the empty caption meaningful (guidance_scale > 1 still works)
    )
    grad_clip: float = 1.0


#: The recipe as a plain dict (what :func:`distill` logs).
DISTILL_DEFAULTS = DistillConfig().to_dict()


def distill(
    teacher: t2i.TextToImageModel,
    seed: int = 0,
    device=None,
    progress: bool = True,
    minutes: float | None = None,
    callback=None,
    after_stage=None,
    target=None,
    **overrides,
):
    """Distil ``teacher`` (guided, many steps) into a one-pass few-step student (chapter 08).

    Returns ``(student, log)``: ``student`` a :class:`text_to_image.TextToImageModel` (config: DDIM,
    ``num_inference_steps`` = the last round's step count, guidance 1.0); ``log`` a dict with
    ``stages`` (one row per stage: name, steps, seconds, final loss), ``hp`` and ``seconds``.

    Each stage is one run of the course's loop, :func:`course_lib.training.fit`: Adam, the learning
    rate on a cosine from ``lr`` down to ``final_lr_frac`` of it over the stage's steps
    (:func:`course_lib.training.cosine_with_warmup`, no warm-up), gradient clipping.
    ``minutes`` (optional) caps the whole run: each stage gets its share of the time by its share of
    the steps. ``callback(stage, step, loss)`` sees every optimiser step;
    ``after_stage(stage, student)`` may return a dict (say accuracies) that is stored in that
    stage's row. ``target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s)`` computes the x0 the
    student regresses on in the progressive rounds (default :func:`distillation_target`; chapter
    08 passes the learner's own).
    """
    hp = DistillConfig.from_dict(overrides)  # an unknown setting is an error here
    target = distillation_target if target is None else target
    if not callable(target):
        raise TypeError(
            "target must be callable (z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s) -> x0, got "
            f"{type(target).__name__}"
        )
    device = device or get_device()
    with runtime.seeded(seed):
        return _distill(
            teacher, hp, seed, device, progress, minutes, callback, after_stage, target
        )


def _distill(
    teacher, hp: DistillConfig, seed, device, progress, minutes, callback, after_stage, target_fn
):
    """:func:`distill`'s body, run inside ``runtime.seeded(seed)``."""
    g = torch.Generator().manual_seed(seed + 1)
    cfg = teacher.config
    T_train = cfg.num_train_timesteps
    ac = diffusion.NoiseSchedule.make(cfg.schedule, T_train).alphas_cumprod.float().to(device)

    teacher = teacher.to(device)
    student = copy.deepcopy(teacher).to(device).requires_grad_(True)
    student_config = cfg.replace(
        sampler="ddim",
        guidance_scale=1.0,
        distilled_from=TEACHER,
        distilled_guidance_scale=hp.guidance_scale,
    )
    tok = student.text_encoder.tokenizer
    ds = shapes.ShapesDataset(hp.n_train, seed=seed + 200, split="train")
    x_all = diffusion.to_model_range(ds.images)  # [N, 3, 32, 32]
    enc = tok(ds.captions)
    ids_all, mask_all = enc["input_ids"], enc["attention_mask"]  # [N, L] each
    empty = tok([""])
    bs = hp.batch_size

    def draw_batch():
        i = torch.randint(0, len(x_all), (bs,), generator=g)  # [bs]
        ids, mask = ids_all[i].clone(), mask_all[i].clone()  # [bs, L]
        drop = training.drop_mask(bs, hp.caption_dropout, g)  # [bs]
        ids[drop], mask[drop] = empty["input_ids"][0], empty["attention_mask"][0]
        eps = torch.randn(x_all[i].shape, generator=g)  # [bs, 3, 32, 32]
        return x_all[i].to(device), eps.to(device), ids.to(device), mask.to(device)

    def pick(grid):
        k = torch.randint(0, len(grid), (bs,), generator=g)  # [bs]
        return torch.tensor(grid, device=device)[k.to(device)]

    per_round = hp.steps_per_round
    if not isinstance(per_round, (list, tuple)):
        per_round = [per_round] * len(hp.rounds)
    # steps_guided = 0: no stage A, the first round's teacher is the guided teacher itself
    stages = [("guided", None, hp.steps_guided)] * bool(hp.steps_guided) + [
        (f"{2 * n}->{n}", n, k) for n, k in zip(hp.rounds, per_round)
    ]
    total_steps = sum(s for *_, s in stages)
    log = {"stages": [], "hp": hp.to_dict()}
    t_start = time.perf_counter()
    eval_seconds = 0.0
    frozen = Denoiser(teacher, hp.guidance_scale)  # stage A's teacher
    for i, (name, n_student, steps) in enumerate(stages):
        if n_student is not None and (i > 0 or hp.steps_guided):  # previous student, frozen
            frozen = hold_frozen = Denoiser(copy.deepcopy(student), 1.0)
        else:  # the original teacher: guided two-step targets, its own one-pass output to hold
            hold_frozen = Denoiser(teacher, 1.0)

        def loss_fn(m, _, frozen=frozen, hold_frozen=hold_frozen, n_student=n_student):
            x0, eps, ids, mask = draw_batch()
            if n_student is None:
                t = pick(trailing_grid(hp.grid_steps, T_train))  # [bs]
                a_t, s_t = alpha_sigma(t, ac, x0)
                z_t = a_t * x0 + s_t * eps
                target = frozen(z_t, t, ids, mask)  # guided teacher's v
            else:
                k = T_train // n_student  # the student's stride
                keep = [
                    s
                    for s in trailing_grid(hp.hold_steps, T_train)
                    if s not in trailing_grid(n_student, T_train)
                ]
                h = int(round(hp.hold * bs)) if keep else 0  # first h: hold samples
                t = pick(trailing_grid(n_student, T_train))  # [bs]
                if h:
                    t = torch.cat([pick(keep)[:h], t[h:]])
                a_t, s_t = alpha_sigma(t, ac, x0)
                z_t = a_t * x0 + s_t * eps
                target = torch.empty_like(z_t)
                if h:  # hold: the frozen teacher's own one-step output
                    target[:h] = hold_frozen(z_t[:h], t[:h], ids[:h], mask[:h])
                p = slice(h, bs)  # progressive: two teacher DDIM steps t -> mid -> end
                tp, zp, ap, sp = t[p], z_t[p], a_t[p], s_t[p]
                mid, end = tp - k // 2, tp - k  # end -1: the clean end
                v1 = frozen(zp, tp, ids[p], mask[p])
                a_m, s_m = alpha_sigma(mid, ac, zp)
                z_m = ddim_step_v(v1, zp, ap, sp, a_m, s_m)  # teacher step 1
                v2 = frozen(z_m, mid, ids[p], mask[p])
                a_e, s_e = alpha_sigma(end, ac, zp)
                z_e = ddim_step_v(v2, z_m, a_m, s_m, a_e, s_e)  # teacher step 2
                x_tilde = target_fn(zp, z_e, ap, sp, a_e, s_e)  # one student step lands on z_e
                target[p] = v_from_x0(x_tilde, zp, ap, sp)
            out = m(z_t, t, ids, mask)
            return F.mse_loss(out.float(), target.float())  # v-MSE = x0-MSE (1 + SNR)

        opt = torch.optim.Adam(student.parameters(), lr=hp.lr)
        frac = training.budget_fraction(steps, None)  # step / steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, training.cosine_with_warmup(0, hp.final_lr_frac, frac)
        )
        step_fn = training.make_step(student, loss_fn, opt, scheduler=sched, grad_clip=hp.grad_clip)
        # the step draws its own batch from g (`fit` takes the next item before it checks the
        # budget, so a batch drawn outside the step would be one draw too many at a stage's end)
        report = None if callback is None else (lambda step, h: callback(name, step, h.losses[-1]))
        hist = training.fit(
            step_fn,
            itertools.repeat(None),
            steps=steps,
            minutes=None if minutes is None else minutes * steps / total_steps,
            desc=f"distil {name}",
            progress=progress,
            callback=report,
        )
        tail = hist.losses[-50:]
        log["stages"].append(
            {
                "stage": name,
                "student_steps": n_student,
                "optimizer_steps": hist.steps,
                "seconds": round(hist.seconds, 1),
                "final_loss": round(sum(tail) / max(1, len(tail)), 5),
            }
        )
        if after_stage is not None:
            e0 = time.perf_counter()
            student.eval()
            # the student as it now is: DDIM, its step count, no guidance on top (it is inside)
            steps_now = int(n_student or hp.grid_steps)
            student.config = student_config.replace(num_inference_steps=steps_now)
            log["stages"][-1].update(after_stage(name, student) or {})
            eval_seconds += time.perf_counter() - e0
    log["seconds"] = round(time.perf_counter() - t_start - eval_seconds, 1)  # distillation only
    student.eval().requires_grad_(False)
    last = hp.rounds[-1] if hp.rounds else hp.grid_steps
    student.config = student_config.replace(num_inference_steps=int(last))
    return student, log


# --------------------------------------------------------------------------------------------
# The pipeline: the same ShapesPipeline, DDIM trailing, guidance 1 (it is inside the weights)
# --------------------------------------------------------------------------------------------
def make_fast_pipeline(
    model: t2i.TextToImageModel, num_inference_steps: int | None = None
) -> t2i.ShapesPipeline:
    """A :class:`text_to_image.ShapesPipeline` over a distilled student (shares its weights)."""
    cfg = model.config
    return t2i.ShapesPipeline(
        unet=model.unet,
        text_encoder=model.text_encoder,
        scheduler=make_scheduler(cfg),
        default_num_inference_steps=int(num_inference_steps or cfg.num_inference_steps),
        default_guidance_scale=float(cfg.guidance_scale),
    )


def ms_per_picture(pipe, captions, repeats: int = 2, **kw) -> float:
    """Wall milliseconds per picture of ``pipe(captions, **kw)`` in one batch: the median of
    ``repeats`` calls (:func:`course_lib.training.ms_per_picture`; warm the pipeline up first)."""
    ms = training.ms_per_picture(
        lambda: t2i.generate(pipe, captions, **kw), len(captions), repeats=repeats, warmup=0
    )
    return round(ms, 3)


_FID_REF = {}


def judge_fid(images: torch.Tensor, n_real: int = 2000) -> float:
    """FID on the shapes-judge's penultimate features between ``images`` and ``n_real`` real Shapes
    pictures (train split): a second measure, since the judge's accuracy saturates."""
    from .. import metrics

    if "net" not in _FID_REF:
        _FID_REF["net"] = metrics.domain_feature_net("shapes", device="cpu")
        _FID_REF["real"] = metrics.extract_features(
            shapes.sample(n_real, seed=1234, split="train")[0], _FID_REF["net"]
        )
    fake = metrics.extract_features(images, _FID_REF["net"])
    return round(float(metrics.frechet_distance(_FID_REF["real"], fake)), 3)


def measure(
    pipe,
    num_inference_steps: int,
    passes_per_step: int,
    n_train: int | None = None,
    n_heldout: int | None = None,
    timing_captions: int = 32,
    seed: int = 0,
    kid_reference: torch.Tensor | None = None,
) -> dict:
    """One row of the chapter's table: judged accuracy on the train captions (first ``n_train``
    of 270) and held-out captions, FID on the judge's features (train-caption pictures), ms per
    picture.
    With ``kid_reference`` (:func:`course_lib.sample_quality.reference_set` of those train
    captions), also KID x 1000 on the same features (``judge_kid``): unbiased at the few pictures
    where FID is not, and its jackknife standard error ``judge_kid_se``."""
    from ..judges import score_shapes
    from ..sample_quality import quality

    row = {
        "num_inference_steps": num_inference_steps,
        "unet_evals_per_picture": num_inference_steps * passes_per_step,
    }
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        caps = shapes.all_captions(split)[:n]
        images = t2i.generate(pipe, caps, seed=seed, num_inference_steps=num_inference_steps)
        res = score_shapes(images, caps)
        row[f"{split}_captions"] = {
            k: round(float(res[k]), 4) for k in ("all", "shape", "color", "size", "row", "col")
        }
        row[f"{split}_captions"]["n"] = len(caps)
        if split == "train":
            row["judge_fid"] = judge_fid(images)
            if kid_reference is not None:
                q = quality(pipe, images, caps, kid_reference)
                row["judge_kid"], row["judge_kid_se"] = round(q["kid"], 2), round(q["kid_se"], 2)
    row["ms_per_picture"] = ms_per_picture(
        pipe,
        shapes.all_captions("train")[:timing_captions],
        num_inference_steps=num_inference_steps,
    )
    return row


def teacher_pipelines(teacher: t2i.TextToImageModel) -> dict:
    """The teacher with its default sampler (DPM-Solver++) and with DDIM trailing (the student's
    sampler)."""
    ddim = t2i.ShapesPipeline(
        unet=teacher.unet,
        text_encoder=teacher.text_encoder,
        scheduler=make_scheduler(teacher.config),
        default_num_inference_steps=50,
        default_guidance_scale=teacher.config.guidance_scale,
    )
    return {"default": t2i.make_pipeline(teacher), "ddim": ddim}


# --------------------------------------------------------------------------------------------
# Registration: `python -m course_lib.pretrained train shapes-t2i-fast`
# --------------------------------------------------------------------------------------------
def build(config: dict) -> t2i.TextToImageModel:
    return t2i.TextToImageModel(config)


def finalize(model: t2i.TextToImageModel) -> t2i.ShapesPipeline:
    return make_fast_pipeline(model)


def evaluate(
    model: t2i.TextToImageModel,
    teacher=None,
    n_train: int | None = None,
    n_heldout: int | None = None,
) -> dict:
    """Judged accuracy (270 train + 54 held-out captions, seed 0) of the student at 1, 2, 4 steps
    and of the teacher at 1 and 50 DDIM steps and at its default (DPM-Solver++ 20), FID on the
    judge's features, ms per picture (batch 32, this machine, same run)."""
    from .. import pretrained

    teacher = teacher if teacher is not None else pretrained.load_module(TEACHER, device="cpu")
    teacher = teacher.to(next(model.parameters()).device).eval()
    student_pipe = make_fast_pipeline(model)
    tp = teacher_pipelines(teacher)
    n_held = n_heldout
    seed_real = 7  # real pictures of the same captions: the FID floor
    rows = {}
    for label, pipe, steps, passes in [
        ("student_1_step", student_pipe, 1, 1),
        ("student_2_steps", student_pipe, 2, 1),
        ("student_4_steps", student_pipe, 4, 1),
        ("teacher_ddim_1_step", tp["ddim"], 1, 2),
        ("teacher_ddim_50_steps", tp["ddim"], 50, 2),
        ("teacher_default_dpm_20_steps", tp["default"], 20, 2),
    ]:
        rows[label] = measure(pipe, steps, passes, n_train, n_held)
    base = rows["teacher_default_dpm_20_steps"]["ms_per_picture"]
    for r in rows.values():
        r["speedup_vs_teacher_default"] = round(base / r["ms_per_picture"], 2)
    ref = rows["teacher_ddim_50_steps"]["train_captions"]["all"]
    real = shapes.render(
        [shapes.parse_caption(c) for c in shapes.all_captions("train")[:n_train]], rng=seed_real
    )
    return {
        "rows": rows,
        "judge_fid_real_pictures": judge_fid(real),
        "num_inference_steps": student_pipe.default_num_inference_steps,
        "guidance_scale": student_pipe.default_guidance_scale,
        "points_below_teacher_ddim50_at_4_steps": round(
            100 * (ref - rows["student_4_steps"]["train_captions"]["all"]), 2
        ),
        "points_below_teacher_ddim50_at_1_step": round(
            100 * (ref - rows["student_1_step"]["train_captions"]["all"]), 2
        ),
    }


def train_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    from .. import pretrained

    dev = get_device()
    teacher = pretrained.load_module(TEACHER, device=dev)
    over = {"steps_per_round": 3} if quick else {}

    def after_stage(name, m):  # the judge after each stage (not counted in the distillation time)
        pipe = make_fast_pipeline(m)
        res = {
            f"train_all_{n}_steps": t2i.judge_pipeline(pipe, "train", num_inference_steps=n)["all"]
            for n in (1, 2, 4)
        }
        print(f"after stage {name}: {res}", flush=True)
        return res

    student, log = distill(
        teacher, seed=seed, device=dev, progress=True, after_stage=after_stage, **over
    )
    secs = log["seconds"]
    quality = evaluate(student, teacher, *((27, 9) if quick else (None, None)))
    quality["distill_seconds"] = round(secs, 1)
    quality["stages"] = log["stages"]
    hp = log["hp"]
    stage_a = (
        f"stage A: guidance w={hp['guidance_scale']} folded in, {hp['steps_guided']} steps at the "
        f"{hp['grid_steps']}-step grid; "
        if hp["steps_guided"]
        else (
            f"guidance w={hp['guidance_scale']} folded into the first round (its teacher: the "
            "guided teacher); "
        )
    )
    notes = (
        f"from {TEACHER}; {stage_a}progressive rounds to {hp['rounds']} DDIM steps, "
        f"{hp['steps_per_round']} optimiser steps (hold {hp['hold']} at the "
        f"{hp['hold_steps']}-step grid); batch {hp['batch_size']}, Adam lr {hp['lr']} cosine to "
        f"x{hp['final_lr_frac']}, v-MSE; distillation took {secs:.0f} s"
    )
    return TrainResult(student, student.config, quality, notes)


register(
    NAME,
    role="generator",
    domain="shapes",
    build=build,
    train=train_registered,
    evaluate=evaluate,
    finalize=finalize,
    chapter="08",
    description="shapes-t2i distilled: guidance folded in, progressive distillation to 1 DDIM step "
    "(ShapesPipeline, one UNet pass per step)",
)
