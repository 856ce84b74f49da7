"""Editing by instruction: InstructPix2Pix in miniature (Brooks et al. 2023; chapter 11).

SDEdit and inpainting (:mod:`course_lib.editing`) edit with a text-to-image model that was never
shown an edit. InstructPix2Pix trains a model on edits: (source picture, instruction, edited
picture) triplets, here made by the Shapes renderer (:func:`course_lib.data.edit_wordings.
make_triplets`: recolour, reshape, resize, move, and "leave it" controls).

* The model is chapter 05's :class:`~course_lib.models.text_to_image.TextToImageModel` reading the
  instruction through frozen all-mpnet-base-v2 (chapter 06's ``shapes-t2i-mpnet`` rung), with two
  changes: the source picture's channels, and each pixel's x and y (CoordConv), are concatenated
  to the noisy target's, so its UNet takes 8 channels (3 + 3 + 2, before the 2x2 fold) and predicts
  3 (:class:`InstructEditModel`); and it predicts the edited picture x0
  (``prediction_type="sample"``), most of which is the source.
* Training (:func:`train_instruct_edit`, chapter 05's loop of :mod:`course_lib.training`) drops the
  instruction, the picture or both, each for 5% of the examples (:func:`drop_conditions`), so one
  network also learns e(I, ∅) and e(∅, ∅).
* Sampling (:class:`InstructPix2PixPipeline`) uses the paper's two guidance scales,
  ``e(∅,∅) + s_I (e(I,∅) - e(∅,∅)) + s_T (e(I,T) - e(I,∅))``: :func:`course_lib.sampling.guide`
  with a chain of conditions, the three predictions from one network call on a batch of 3n.
* :func:`read_instruction` refuses what is not an edit of the one object ("draw a cat", "what
  colour is it?"), reading words with the tables of chapter 11's conversation editor
  (:func:`course_lib.conversation.mentions`).

``python -m course_lib.pretrained train shapes-edit --seed 0`` reproduces the shipped model;
:func:`evaluate` measures it with the shapes-judge on held-out and seen wordings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from . import arguments, conversation, diffusion, runtime, sampling
from .data import edit_wordings as ew
from .editing import check_pictures
from .ladder import wilson_interval
from .models import text_to_image as t2i
from .pipelines import quiet
from .pretrained import TrainResult, register, run_recipe
from .training import EMA, budget_fraction, cosine_with_warmup, fit, infinite_loader, make_step

NAME = "shapes-edit"


# --------------------------------------------------------------------------------------------
# The model: chapter 05's, with the source picture as extra input channels
# --------------------------------------------------------------------------------------------
def _mpnet_text() -> t2i.TextEncoderConfig:
    return t2i.TextEncoderConfig(kind="mpnet", dim=t2i.FROZEN_WIDTHS["mpnet"], max_length=24,
                                 layers=4)


@dataclass
class InstructEditConfig(t2i.TextToImageConfig):
    """Chapter 05's config (frozen mpnet text by default, as chapter 06's ``shapes-t2i-mpnet``)
    plus ``source_channels``: the channels of the picture to edit, and ``position_channels``:
    each pixel's x and y, both concatenated to the noisy target's before the fold (UNet input:
    ``(in_channels + source_channels + position_channels) * fold**2``)."""

    text: t2i.TextEncoderConfig = field(default_factory=_mpnet_text)
    # The network predicts the edited picture itself (x0): most of it is the source, so the
    # answer to "leave it" is a copy of an input (chapter 11 says why this recipe chose it)
    prediction_type: str = "sample"
    source_channels: int = 3
    # x and y of every pixel as 2 more input channels (CoordConv, Liu et al. 2018): a move must
    # draw the object at a cell the instruction names, and convolutions alone barely know where
    # they are (0: none)
    position_channels: int = 2
    # the pipeline's default s_T and s_I (chosen on triplets of seed 42_000, not the measuring sets)
    guidance_scale: float = 2.0
    image_guidance_scale: float = 1.5
    # the pipeline's default: read each instruction in its plainest words first
    rewrite_instructions: bool = True

    def __post_init__(self):
        super().__post_init__()
        arguments.positive_int(self.source_channels, "source_channels")
        if not isinstance(self.rewrite_instructions, bool):
            raise TypeError(f"rewrite_instructions must be True or False, got "
                            f"{self.rewrite_instructions!r}")
        if self.position_channels not in (0, 2):
            raise ValueError(f"position_channels must be 0 or 2, got {self.position_channels!r}")


def position_grid(n: int, size: int, fold: int = 1) -> torch.Tensor:
    """x and y of every pixel in [-1, 1] (CoordConv's extra channels): [n, 2, size, size], or
    folded 2x2 like the pictures ([n, 2 fold^2, size/fold, size/fold])."""
    r = torch.linspace(-1.0, 1.0, size)
    grid = torch.stack([r[None, :].expand(size, size), r[:, None].expand(size, size)])  # [2, S, S]
    grid = F.pixel_unshuffle(grid[None], fold) if fold > 1 else grid[None]
    return grid.expand(n, -1, -1, -1)


def build_edit_unet(config: InstructEditConfig) -> UNet2DConditionModel:
    """Chapter 05's UNet (:func:`course_lib.models.text_to_image.build_unet`'s settings) taking
    the noisy target and the source: in ``(C + C_src) f^2`` channels, out ``C f^2``."""
    cfg, f = config, config.fold
    extra = {}
    if cfg.pooled_text:
        extra = {"class_embed_type": "projection",
                 "projection_class_embeddings_input_dim": cfg.text.dim}
    return UNet2DConditionModel(
        sample_size=cfg.sample_size // f,
        in_channels=(cfg.in_channels + cfg.source_channels + cfg.position_channels) * f * f,
        out_channels=cfg.in_channels * f * f,
        cross_attention_dim=cfg.text.dim,
        **cfg.unet.to_dict(),
        **extra,
    )


class InstructEditModel(t2i.TextToImageModel):
    """Chapter 05's text-to-image model conditioned also on a source picture:
    ``denoise(x_t, t, states, pooled, source)`` with ``x_t`` and ``source`` [n, 3, 32, 32] (model
    range; a dropped source is zeros) -> the prediction for ``x_t`` [n, 3, 32, 32]."""

    def __init__(self, config: "InstructEditConfig | dict | None" = None):
        nn.Module.__init__(self)
        self.config = InstructEditConfig.from_dict(config)
        self.text_encoder = t2i.build_text_encoder(self.config.text)
        self.unet = build_edit_unet(self.config)

    def denoise(self, x_t, t, states, pooled, source):
        x = torch.cat([x_t, source.to(x_t)], dim=1)  # [n, 6, 32, 32]
        if self.config.position_channels:
            x = torch.cat([x, position_grid(len(x), x.shape[-1]).to(x)], dim=1)  # [n, 8, 32, 32]
        z = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x  # [n, 6 f^2, 32/f, 32/f]
        kw = {"class_labels": pooled} if self.config.pooled_text else {}
        out = self.unet(z, t, encoder_hidden_states=states, **kw).sample  # [n, 3 f^2, s, s]
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out  # [n, 3, 32, 32]

    def forward(self, x_t, t, input_ids, attention_mask, source):
        states, pooled = self.encode(input_ids, attention_mask)
        return self.denoise(x_t, t, states, pooled, source)


# --------------------------------------------------------------------------------------------
# Reading an instruction: is it an edit of the one object?
# --------------------------------------------------------------------------------------------
ALLOWED_EDITS = (
    "recolour ('make it blue'), reshape ('turn it into a square'), resize ('make it bigger'), "
    "move ('move it to the top left') or leave it ('keep it the same')"
)
#: Words that start an edit beyond the conversation editor's (:data:`conversation.CHANGE_WORDS`).
EDIT_VERBS = frozenset(
    ("recolor", "repaint", "reshape", "replace", "transform", "resize", "rescale", "relocate",
     "drag", "reposition", "enlarge", "shrink", "switch", "give", "let", "instead")
)
KEEP_WORDS = frozenset(("leave", "keep", "untouched", "unchanged", "nothing", "don"))  # "don't"
#: Comparatives and side words the conversation editor's table lacks.
EXTRA_COMPARATIVES = {"tinier": ("size", "small"), "upper": ("row", "top"),
                      "center": ("col", "center"), "middle": ("col", "center")}
#: Words that start a polite request ("could you make it blue?"), not a question.
POLITE = frozenset(("can", "could", "would", "will"))
#: Side words next to a row or a column word: together they name a cell ("upper right").
_ROW_WORDS = {"top": "top", "upper": "top", "up": "top", "high": "top", "middle": "middle",
              "mid": "middle", "center": "middle", "bottom": "bottom", "lower": "bottom",
              "down": "bottom", "low": "bottom"}
_COL_WORDS = {"left": "left", "right": "right", "middle": "center", "center": "center"}


def _normalised(text: str) -> str:
    """British "centre" and hyphenated places ("top-left") in the tables' spelling."""
    text = text.lower().replace("centred", "centered").replace("centre", "center")
    return re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)


def _cell(toks: list[str], i: int, attr: str, value):
    """A row (col) word at token ``i`` and the side word just after (before) it as one cell,
    ("upper right", "middle left"), a lone "centre" as the middle cell; None where no neighbour
    names the other side ("move it left": the row stays the picture's)."""
    if attr == "row" and i + 1 < len(toks) and toks[i + 1] in _COL_WORDS:
        return (value, _COL_WORDS[toks[i + 1]])
    if attr == "col" and i > 0 and toks[i - 1] in _ROW_WORDS:
        return (_ROW_WORDS[toks[i - 1]], value)
    if attr == "col" and value == "center":  # "move it to the centre": the middle cell
        return ("middle", "center")
    return None


def read_instruction(text: str) -> ew.EditRequest:
    """The edit an instruction asks for, read from its words (the conversation editor's tables,
    :func:`course_lib.conversation.mentions`): kind and new value (a cell for a move; None for
    "keep", or for a move that names only a row or a column). Raises ``ValueError`` naming the
    allowed edits for an empty text, a question, an add / remove / undo, a description that asks
    for no change, or words that name no Shapes colour, shape, size or place."""
    if not isinstance(text, str):
        raise TypeError(f"an instruction is a string, got {type(text).__name__}")
    toks = conversation.words(text)
    if not toks:
        raise ValueError(f"an instruction must say what to change: {ALLOWED_EDITS}")
    polite = toks[0] in POLITE and "you" in toks[1:3]  # "could you make it blue?"
    if not polite and (text.strip().endswith("?") or toks[0] in conversation.QUESTION_WORDS):
        raise ValueError(f"{text!r} is a question, not an edit; allowed: {ALLOWED_EDITS}")
    other = set(toks) & (conversation.ADD_WORDS | conversation.REMOVE_WORDS
                         | conversation.UNDO_WORDS)
    if other:
        raise ValueError(f"{text!r} asks to {sorted(other)[0].replace('_', ' ')}: this model edits "
                         f"the one object of the picture; allowed: {ALLOWED_EDITS}")
    found = _mentions(toks, text)
    if not found and _normalised(text) != text.lower():  # "top-left", "centre"
        text = _normalised(text)
        toks = conversation.words(text)
        found = _mentions(toks, text)
    if not found:
        if set(toks) & KEEP_WORDS:
            return ew.EditRequest("keep")
        raise ValueError(f"{text!r} is not an edit of this picture (it names no Shapes colour, "
                         f"shape, size or place); allowed: {ALLOWED_EDITS}")
    verbs = conversation.CHANGE_WORDS | conversation.PRONOUNS | EDIT_VERBS
    if not set(toks) & verbs:
        raise ValueError(f"{text!r} describes a picture but asks for no change; allowed: "
                         f"{ALLOWED_EDITS}")
    # the last value named is the new one ("recolour the triangle orange")
    i, attr, value = max(found)
    if attr == "place":
        return ew.EditRequest("place", tuple(value))
    if attr in ("row", "col"):
        return ew.EditRequest("place", _cell(toks, i, attr, value))
    return ew.EditRequest(attr, value)


def _mentions(toks: list[str], text: str) -> list:
    """The conversation editor's mentions plus :data:`EXTRA_COMPARATIVES`, by position (side
    words only where no whole place phrase is named: "in the middle" is a cell of its own)."""
    found = conversation.mentions(text)
    covered = {i for i, *_ in found}
    whole_place = any(attr == "place" for _, attr, _ in found)
    found += [(i, *EXTRA_COMPARATIVES[t]) for i, t in enumerate(toks)
              if t in EXTRA_COMPARATIVES and i not in covered
              and not (whole_place and EXTRA_COMPARATIVES[t][0] in ("row", "col"))]
    return sorted(found)


def rewrite_instruction(text: str, request: ew.EditRequest | None = None) -> str:
    """The instruction in the plainest words the editor was trained on: :func:`read_instruction`'s
    edit written by :func:`course_lib.data.edit_wordings.plain_instruction` ("could you repaint it
    scarlet" -> "make it red"); chapter 06's planner step, reading the words before the picture is
    drawn. A move that names only a row or a column ("move it left") keeps its own words: its cell
    depends on the picture. Raises ``ValueError`` for what :func:`read_instruction` refuses.
    ``request``: the edit already read from ``text``, so it is not read twice."""
    request = read_instruction(text) if request is None else request
    if request.kind == "place" and request.value is None:
        return text
    return ew.plain_instruction(request)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class InstructTrainConfig(t2i.TrainConfig):
    """Chapter 05's recipe on triplets; ``caption_dropout`` is unused: the paper's three
    dropouts replace it (:func:`drop_conditions`)."""

    steps: int = 4800
    n_train: int = 16000  # training triplets (rendered once)
    caption_dropout: float = 0.0
    drop_text: float = 0.05  # instruction only dropped
    drop_image: float = 0.05  # picture only dropped
    drop_both: float = 0.05  # both dropped
    per_request: int = 48  # training wordings per request (the frozen encoder reads each once)


def drop_conditions(n: int, p_text: float, p_image: float, p_both: float,
                    generator: torch.Generator | None = None):
    """InstructPix2Pix's dropout: ``(drop_text [n], drop_image [n])`` bool tensors from one uniform
    draw per example: the instruction alone dropped with probability ``p_text``, the picture alone
    with ``p_image``, both with ``p_both`` (the paper: 5% each)."""
    if min(p_text, p_image, p_both) < 0 or p_text + p_image + p_both > 1:
        raise ValueError("the three dropout probabilities must be >= 0 and sum to at most 1, got "
                         f"{p_text}, {p_image}, {p_both}")
    u = torch.rand(n, generator=generator)  # [n]
    text_only = u < p_text
    image_only = (u >= p_text) & (u < p_text + p_image)
    both = (u >= p_text + p_image) & (u < p_text + p_image + p_both)
    return text_only | both, image_only | both


def make_edit_step(model: InstructEditModel, ema: EMA, hp: InstructTrainConfig, device,
                   seed: int, steps: int | None, minutes: float | None):
    """Chapter 05's step (:func:`course_lib.models.text_to_image.make_train_step`: AdamW, warm-up
    + cosine, the diffusion loss, clipping, EMA) on a batch ``(target, source, input_ids,
    attention_mask)``, with :func:`drop_conditions` in place of caption dropout."""
    cfg = model.config
    ac = diffusion.NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps).alphas_cumprod.to(
        device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    g = torch.Generator().manual_seed(seed + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(hp.warmup, hp.final_lr_frac, budget_fraction(steps, minutes)))
    empty = model.text_encoder.tokenizer([""])
    e_ids, e_mask = empty["input_ids"].to(device), empty["attention_mask"].to(device)

    def loss_fn(m, batch):
        x0, src, ids, mask = (b.to(device) for b in batch)
        no_text, no_image = drop_conditions(len(x0), hp.drop_text, hp.drop_image, hp.drop_both, g)
        no_text, no_image = no_text.to(device), no_image.to(device)
        ids = torch.where(no_text[:, None], e_ids.expand_as(ids), ids)  # [n, L]
        mask = torch.where(no_text[:, None], e_mask.expand_as(mask), mask)
        src = torch.where(no_image[:, None, None, None], torch.zeros_like(src), src)  # [n, 3, ..]
        states, pooled = m.encode(ids, mask)
        return diffusion.diffusion_loss(
            lambda x, t: m.denoise(x, t, states, pooled, src), x0, ac, cfg.prediction_type,
            generator=g, min_snr_gamma=hp.min_snr_gamma)

    return make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=hp.grad_clip)


def train_instruct_edit(config=None, steps: int | None = None, minutes: float | None = None,
                        seed: int = 0, device=None, progress: bool = True, eval_fn=None,
                        eval_every: int | None = None, **overrides):
    """Train an :class:`InstructEditModel` on ``n_train`` seen-wording triplets (each text drawn
    from a bank of ``per_request`` wordings per request, encoded once by the frozen model).
    Budget: ``steps`` and/or ``minutes`` (neither: the recipe's steps). ``overrides`` change
    :class:`InstructTrainConfig` fields. Returns ``(ema_model, history, settings)``."""
    hp = InstructTrainConfig.from_dict(overrides)
    if steps is None and minutes is None:
        steps = hp.steps
    device = device or runtime.get_device()
    with runtime.seeded(seed):
        model = InstructEditModel(config)
        bank = ew.instruction_bank(hp.per_request, seed=seed, wording="seen")
        data = ew.make_triplets(hp.n_train, seed=seed + 100, wording="seen", bank=bank)
        texts = [t for ws in bank.values() for t in ws]
        if hasattr(model.text_encoder, "precompute"):
            model.text_encoder.precompute(texts + [""])  # the frozen states, once
        tok = model.text_encoder.tokenizer(data["instructions"])
        model = model.to(device)
        ema = EMA(model, decay=hp.ema_decay)
        ds = torch.utils.data.TensorDataset(
            diffusion.to_model_range(data["targets"]), diffusion.to_model_range(data["sources"]),
            tok["input_ids"], tok["attention_mask"])
        step_fn = make_edit_step(model, ema, hp, device, seed, steps, minutes)
        wrapped = (lambda step: eval_fn(ema.module, step)) if eval_fn is not None else None
        history = fit(step_fn, infinite_loader(ds, hp.batch_size, seed=seed), steps=steps,
                      minutes=minutes, eval_fn=wrapped, eval_every=eval_every, desc=NAME,
                      progress=progress)
        ema_model = ema.module
        ema_model.config = model.config
        return ema_model.eval(), history, hp


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class InstructPix2PixPipeline(t2i.ShapesPipeline):
    """Editing by instruction (chapter 11), diffusers' ``StableDiffusionInstructPix2PixPipeline``
    call convention: ``pipe(instructions, image=pictures, num_inference_steps=20,
    guidance_scale=s_T, image_guidance_scale=s_I, generator=, output_type="pt")`` -> ``.images``
    ([n, 3, 32, 32] in [0, 1] for "pt"). One instruction per picture (or one for all, or one
    picture for all instructions); ``image`` [n, 3, 32, 32] in [0, 1] or PIL pictures. Each step
    makes the three predictions e(∅,∅), e(I,∅), e(I,T) in one network call on a batch of 3n and
    combines them with :func:`course_lib.sampling.guide`; with both scales 1 it makes e(I,T)
    alone. An instruction that is not an edit is refused (:func:`read_instruction`); with
    ``rewrite=True`` (the default) the network reads each instruction in its plainest words
    (:func:`rewrite_instruction`), with ``rewrite=False`` as written."""

    extra_output_types = ()

    def __init__(self, unet, text_encoder, scheduler, default_num_inference_steps: int = 20,
                 default_guidance_scale: float = 3.0, default_image_guidance_scale: float = 1.5,
                 default_rewrite: bool = True):
        super().__init__(unet, text_encoder, scheduler, default_num_inference_steps,
                         default_guidance_scale)
        self.register_to_config(default_image_guidance_scale=float(default_image_guidance_scale),
                                default_rewrite=bool(default_rewrite))

    @property
    def fold(self) -> int:
        return int(round(math.sqrt(self.backbone.config.out_channels // self.image_channels)))

    @property
    def default_image_guidance_scale(self) -> float:
        return float(self.config.default_image_guidance_scale)

    @property
    def default_rewrite(self) -> bool:
        return bool(self.config.default_rewrite)

    def with_scheduler(self, scheduler) -> "InstructPix2PixPipeline":
        other = type(self)(**{**self.components, "scheduler": scheduler},
                           default_num_inference_steps=self.default_num_inference_steps,
                           default_guidance_scale=self.default_guidance_scale,
                           default_image_guidance_scale=self.default_image_guidance_scale,
                           default_rewrite=self.default_rewrite)
        other._progress_bar_config = dict(getattr(self, "_progress_bar_config", {}))
        return other

    def network(self, x: torch.Tensor, t, cond) -> torch.Tensor:
        """``net(x, t, (states, pooled, source))``: the UNet on the noisy target and the folded
        source, side by side in channels ([n, 12, 16, 16] each)."""
        states, pooled, source = cond
        kw = {"class_labels": pooled} if self.unet.config.class_embed_type == "projection" else {}
        z = torch.cat([x, source], dim=1)  # [n, 24, 16, 16]
        extra = self.unet.config.in_channels - z.shape[1]  # 8 with position channels
        if extra:
            z = torch.cat([z, position_grid(len(z), x.shape[-1] * self.fold, self.fold).to(z)], 1)
        return self.unet(z, t.to(self.unet.device), encoder_hidden_states=states, **kw).sample

    def check_instructions(self, instructions, image, rewrite: bool = False):
        """``(instructions, pictures [n, 3, 32, 32])`` of equal count, each instruction read by
        :func:`read_instruction` (a ValueError for one that is not an edit) and, with ``rewrite``,
        put in its plainest words (:func:`rewrite_instruction`)."""
        texts = arguments.prompts(instructions, name="instructions", allow_empty_text=False)
        if image is None:
            raise TypeError("image is required: the pictures to edit, a tensor [n, 3, 32, 32] "
                            "in [0, 1]")
        pictures = check_pictures(image)
        if not isinstance(rewrite, bool):
            raise TypeError(f"rewrite must be True or False, got {rewrite!r}")
        read = []
        for i, text in enumerate(texts):
            try:
                request = read_instruction(text)  # refuses what is not an edit
                read.append(rewrite_instruction(text, request) if rewrite else text)
            except ValueError as exc:
                raise ValueError(f"instructions item {i}: {exc}") from None
        texts = read
        if len(texts) != len(pictures) and 1 not in (len(texts), len(pictures)):
            raise ValueError(
                f"instructions and image must come in equal numbers, one instruction per picture "
                f"(or one of them alone): got {len(texts)} instructions and {len(pictures)} "
                "pictures")
        n = max(len(texts), len(pictures))
        return texts * (n // len(texts)), pictures.expand(n, -1, -1, -1)

    @torch.no_grad()
    def __call__(self, instructions, image=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, image_guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True,
                 rewrite: bool | None = None):
        """Edit each picture of ``image`` as its instruction says. ``guidance_scale`` s_T: how
        strongly to follow the instruction; ``image_guidance_scale`` s_I: how strongly to stay
        with the source picture; both 1: no guidance (one network pass per step). ``rewrite``:
        read each instruction in its plainest words first (:func:`rewrite_instruction`; default
        the pipeline's ``default_rewrite``), or give the network the words as written (False)."""
        # 1. check the call, read the instructions
        rewrite = self.default_rewrite if rewrite is None else rewrite
        texts, pictures = self.check_instructions(instructions, image, rewrite)
        steps = arguments.steps(
            self.default_num_inference_steps if num_inference_steps is None
            else num_inference_steps, self.scheduler.config.num_train_timesteps)
        s_t = arguments.guidance(self.default_guidance_scale if guidance_scale is None
                                 else guidance_scale)
        s_i = arguments.guidance(self.default_image_guidance_scale if image_guidance_scale
                                 is None else image_guidance_scale, "image_guidance_scale")
        generator = arguments.generator(generator)
        self.check_output_type(output_type)
        n = len(texts)
        # 2. the conditions: (I, T) alone, or [(∅, ∅), (I, ∅), (I, T)] as one batch of 3n
        states, pooled = self.encode_prompt(texts)  # [n, L, d], [n, d]
        source = diffusion.to_model_range(pictures)  # [n, 3, 32, 32]
        source = (F.pixel_unshuffle(source, self.fold) if self.fold > 1 else source).to(
            self.backbone.device, self.backbone.dtype)  # [n, 12, 16, 16]
        guided = not (s_t == 1.0 and s_i == 1.0)
        if guided:
            e_states, e_pooled = self.encode_prompt([""] * n)
            cond = (torch.cat([e_states, e_states, states]),  # [3n, L, d]
                    torch.cat([e_pooled, e_pooled, pooled]),  # [3n, d]
                    torch.cat([torch.zeros_like(source), source, source]))  # [3n, 12, 16, 16]
        else:
            cond = (states, pooled, source)

        def net(x, t, c):
            if not guided:
                return self.network(x, t, c)
            none, image_only, full = self.network(torch.cat([x, x, x]), t, c).chunk(3)
            return sampling.guide(none, [image_only, full], [s_i, s_t])

        # 3. the starting noise, 4. the course's one loop, 5. back to pictures
        x = self.prepare_latents(n, generator, latents)
        x = sampling.denoise_loop(self.scheduler, net, x, steps, cond, generator=generator,
                                  pipe=self, progress_bar=self.progress_bar)
        return self.format_output(self.decode_latents(x), output_type, return_dict)


def make_pipeline(model: InstructEditModel, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None,
                  image_guidance_scale: float | None = None) -> InstructPix2PixPipeline:
    """Wrap a trained :class:`InstructEditModel` (shares its weights); defaults from its config."""
    cfg = model.config
    return InstructPix2PixPipeline(
        unet=model.unet, text_encoder=model.text_encoder,
        scheduler=sampling.make_scheduler(cfg.sampler, cfg),
        default_num_inference_steps=int(num_inference_steps or cfg.num_inference_steps),
        default_guidance_scale=float(cfg.guidance_scale if guidance_scale is None
                                     else guidance_scale),
        default_image_guidance_scale=float(cfg.image_guidance_scale if image_guidance_scale
                                           is None else image_guidance_scale),
        default_rewrite=cfg.rewrite_instructions,
    )


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def edit(pipe, triplets: dict, seed: int = 0, batch_size: int = 120, **kw) -> torch.Tensor:
    """The pipeline's edits [n, 3, 32, 32] of a triplet set's sources with its instructions."""
    g = torch.Generator().manual_seed(seed)
    src, texts = triplets["sources"], triplets["instructions"]
    with quiet(pipe):
        return torch.cat([
            pipe(texts[i : i + batch_size], image=src[i : i + batch_size], generator=g,
                 output_type="pt", **kw).images
            for i in range(0, len(texts), batch_size)])


def _share(correct: torch.Tensor) -> tuple[float, float, float]:
    k, n = int(correct.sum()), len(correct)
    return (k / n, *wilson_interval(k, n)) if n else (float("nan"),) * 3


def judge_edits(images: torch.Tensor, triplets: dict, judge=None) -> dict:
    """How the shapes-judge reads the edits against the intended results: ``{"edits": (share,
    low, high)`` of all five attributes right over the non-"keep" triplets (95% Wilson interval),
    one such entry per kind, ``"controls"``: the share of "keep" results read as the source, and
    ``"control_pixel_change"``: their mean absolute pixel change from the source, ``"correct"``:
    BoolTensor[n] (all five right), ``"n_edits"``, ``"n_controls"``}."""
    from .judges import score_shapes

    res = score_shapes(images, triplets["target_specs"], judge)
    right = res["correct"].all(1)  # [n]
    kinds = [r.kind for r in triplets["requests"]]
    is_keep = torch.tensor([k == "keep" for k in kinds])
    out = {"edits": _share(right[~is_keep]), "controls": _share(right[is_keep]),
           "correct": right, "n_edits": int((~is_keep).sum()), "n_controls": int(is_keep.sum())}
    for kind in ew.EDIT_KINDS:
        out[kind] = _share(right[torch.tensor([k == kind for k in kinds])])
    if is_keep.any():
        diff = (images[is_keep] - triplets["sources"][is_keep]).abs().mean()
        out["control_pixel_change"] = float(diff)
    return out


#: The manifest's name for the held-out set measured without the rewrite.
AS_WRITTEN = "heldout wording, as written"


def evaluation_sets(per_kind: int = 60) -> dict:
    """The measuring sets: ``per_kind`` triplets of each kind in the held-out wording and in the
    seen wording, from seeds no training run uses."""
    return {"heldout wording": ew.evaluation_triplets(per_kind, 40_000, "heldout"),
            "seen wording": ew.evaluation_triplets(per_kind, 41_000, "seen")}


def measure(pipe, sets: dict, seed: int = 0, **kw) -> dict:
    """``{set name: judge_edits(...) plus "images"}`` for every triplet set of ``sets``."""
    out = {}
    for name, trip in sets.items():
        images = edit(pipe, trip, seed=seed, **kw)
        out[name] = {**judge_edits(images, trip), "images": images}
    return out


def evaluate(model: InstructEditModel, per_kind: int = 60) -> dict:
    """The manifest's record: per set, all five right on the edits with its 95% interval, per kind,
    and the "keep" controls (read as the source; mean pixel change), at the pipeline's defaults;
    and the held-out set once more with the instructions given to the network as written
    (``rewrite=False``)."""
    pipe = make_pipeline(model)
    sets = evaluation_sets(per_kind)
    runs = measure(pipe, sets)
    runs[AS_WRITTEN] = measure(pipe, {AS_WRITTEN: sets["heldout wording"]},
                               rewrite=False)[AS_WRITTEN]
    q = {}
    for name, r in runs.items():
        rec = {k: round(r[k][0], 4) for k in ("edits", *ew.EDIT_KINDS)}
        rec["edits_ci95"] = [round(r["edits"][1], 4), round(r["edits"][2], 4)]
        rec["controls"] = round(r["controls"][0], 4)
        rec["controls_ci95"] = [round(r["controls"][1], 4), round(r["controls"][2], 4)]
        rec["control_pixel_change"] = round(r["control_pixel_change"], 4)
        rec["n_edits"], rec["n_controls"] = r["n_edits"], r["n_controls"]
        q[name] = rec
    q["num_inference_steps"] = pipe.default_num_inference_steps
    q["guidance_scale"] = pipe.default_guidance_scale
    q["image_guidance_scale"] = pipe.default_image_guidance_scale
    return q


def recorded_results(name: str = NAME) -> dict:
    """What training measured (:func:`evaluate`), read back from the manifest:
    ``{set: {"edits": (share, low, high), "controls": (...), ...}}``."""
    from .pretrained import info

    out = {}
    for set_name, q in info(name).get("quality", {}).items():
        if isinstance(q, dict) and "edits" in q:
            out[set_name] = {
                "edits": (q["edits"], *q["edits_ci95"]),
                "controls": (q["controls"], *q["controls_ci95"]),
                **{k: q[k] for k in (*ew.EDIT_KINDS, "control_pixel_change", "n_edits",
                                     "n_controls")},
            }
    return out


# --------------------------------------------------------------------------------------------
# Registration: `python -m course_lib.pretrained train shapes-edit`
# --------------------------------------------------------------------------------------------
def train_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    """The shipped recipe (:class:`InstructTrainConfig`); quick: 20 steps on 256 triplets,
    measured on 4 triplets per kind."""
    over = {"n_train": 256, "per_request": 4} if quick else {}
    steps = 20 if quick else InstructTrainConfig().steps

    def notes(history, hp):
        model_type = InstructEditConfig().prediction_type
        return (
            f"chapter 05's UNet and loop ({history.steps} steps, batch {hp.batch_size}, AdamW lr "
            f"{hp.lr} warm-up + cosine, EMA {hp.ema_decay}) on {hp.n_train} seen-wording "
            f"triplets, the source picture and each pixel's x and y concatenated to the noisy "
            f"target ({3 + 3 + InstructEditConfig().position_channels} input channels), "
            f"predicting the edited picture ({model_type}), "
            f"frozen mpnet instruction states (mean of the last 4 layers), {hp.per_request} "
            f"wordings per request; instruction / picture / both dropped {hp.drop_text:.0%} / "
            f"{hp.drop_image:.0%} / {hp.drop_both:.0%}; the sentence encoder is not in this file"
        )

    return run_recipe(
        lambda: train_instruct_edit(steps=steps, seed=seed, progress=not quick, **over),
        (lambda m: evaluate(m, per_kind=4)) if quick else evaluate,
        notes=notes,
    )


register(
    NAME,
    role="generator",
    domain="shapes",
    build=InstructEditModel,
    train=train_registered,
    evaluate=evaluate,
    finalize=make_pipeline,
    chapter="11",
    description="InstructPix2Pix in miniature: chapter 05's UNet with the source picture as 3 more "
    "input channels, frozen mpnet instructions, two guidance scales (InstructPix2PixPipeline)",
)
