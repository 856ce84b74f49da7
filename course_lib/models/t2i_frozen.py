"""Chapter 05's text-to-image UNet conditioned on a frozen pretrained language model (chapter 06).

:class:`FrozenTextToImage` is chapter 05's UNet (``text_to_image.build_unet``) cross-attending to the
token states of a frozen language model (:class:`course_lib.text_encoders.FrozenConditioner`:
all-MiniLM-L6-v2 or all-mpnet-base-v2), the pooled vector added to the timestep embedding. Only the
UNet and a LayerNorm train, with chapter 05's recipe; the language model stays in its installed
package and is never in the checkpoint. The frozen states of every training caption are computed
once and reused at every step. ``shapes-t2i-minilm`` is this model with MiniLM.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from ..data import shapes
from ..data.wordings import paraphrase_prompts
from ..pretrained import TrainResult, register
from ..runtime import get_device
from ..text_encoders import DIMS, FrozenConditioner
from ..training import EMA, fit, infinite_loader, make_step

#: Chapter 05's model with a 24-token frozen encoder (``text_encoder``: "minilm" or "mpnet").
T2I_FROZEN_CONFIG = {"text": {"dim": DIMS["minilm"], "max_length": 24}}


def _t2i():
    from . import text_to_image

    return text_to_image


class FrozenTextToImage(nn.Module):
    """Chapter 05's UNet cross-attending to a frozen language model's token states. ``config``: chapter
    05's config plus ``text_encoder`` ("minilm" or "mpnet") and ``encoder_layers`` (hidden layers to
    average; None: the last)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        t2i = _t2i()
        config = dict(config or {})
        kind = config.pop("text_encoder", "minilm")
        layers = config.pop("encoder_layers", None)
        cfg = t2i._merged(T2I_FROZEN_CONFIG)
        cfg = t2i._merged({**cfg, **config})
        cfg["text"]["dim"] = DIMS[kind]
        self.config = dict(cfg, text_encoder=kind, encoder_layers=layers)
        self.text_encoder = FrozenConditioner(kind, cfg["text"]["max_length"], layers)
        self.unet = t2i.build_unet(cfg)

    @property
    def fold(self) -> int:
        return self.config["fold"]

    def denoise(self, x_t, t, states, pooled):
        """The UNet on pictures [n, 3, 32, 32] (folded inside) with encoded text."""
        return _t2i().TextToImageModel.denoise(self, x_t, t, states, pooled)


def make_frozen_pipeline(model: FrozenTextToImage, num_inference_steps: int | None = None,
                         guidance_scale: float | None = None):
    """A chapter 05 ``ShapesPipeline`` around the model (same call convention)."""
    return _t2i().make_pipeline(model, num_inference_steps, guidance_scale)


def caption_table(encoder: FrozenConditioner, captions: list[str]):
    """The frozen states of each distinct caption, computed once: (index of each caption in the table
    [n], states [k, L, d], pooled [k, d], mask [k, L]); the empty caption is in the table (guidance)."""
    table = sorted(set(captions) | {""})
    index = {c: i for i, c in enumerate(table)}
    enc = encoder.frozen.encode(table)
    return torch.tensor([index[c] for c in captions]), enc.states, enc.pooled, enc.mask, index[""]


def train_frozen_t2i(config: dict | None = None, steps: int | None = None, minutes: float | None = None,
                     seed: int = 0, device=None, progress: bool = True, captions=None, **overrides):
    """Chapter 05's recipe (``text_to_image.TRAIN_DEFAULTS``: v-prediction, cosine schedule, EMA,
    caption dropout for guidance) with a frozen language model as the text encoder. ``captions``:
    ``captions(canonical_list, rng) -> list`` rewrites the training captions (default: canonical
    only). Returns ``(ema_model, history, settings)``."""
    from .. import diffusion

    t2i = _t2i()
    hp = dict(t2i.TRAIN_DEFAULTS, **overrides)
    if steps is None and minutes is None:
        steps = hp["steps"]
    device = device or get_device()
    torch.manual_seed(seed)
    model = FrozenTextToImage(config).to(device)
    cfg = model.config
    ema = EMA(model, decay=hp["ema_decay"])
    ds = shapes.ShapesDataset(hp["n_train"], seed=seed + 100, split="train")
    texts = list(ds.captions) if captions is None else captions(list(ds.captions), np.random.default_rng(seed))
    idx, st, po, mk, empty = caption_table(model.text_encoder, texts)
    st, po, mk = st.to(device), po.to(device), mk.to(device)
    data = torch.utils.data.TensorDataset(diffusion.to_model_range(ds.images), idx)
    loader = infinite_loader(data, hp["batch_size"], seed=seed)
    ac = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["num_train_timesteps"]).alphas_cumprod.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp["lr"],
                            weight_decay=hp["weight_decay"])
    g = torch.Generator().manual_seed(seed + 1)
    lr_lambda = t2i.cosine_with_warmup(hp["warmup"], hp["final_lr_frac"], t2i.budget_fraction(steps, minutes))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    def loss_fn(m, batch):
        x0, i = batch
        drop = torch.rand(len(x0), generator=g) < hp["caption_dropout"]
        i = torch.where(drop, torch.full_like(i, empty), i).to(device)
        states, pooled_v = m.text_encoder.adapt(st[i], po[i], mk[i])
        return diffusion.diffusion_loss(lambda x, t: m.denoise(x, t, states, pooled_v), x0.to(device), ac,
                                        cfg["prediction_type"], generator=g, min_snr_gamma=hp["min_snr_gamma"])

    step_fn = make_step(model, loss_fn, opt, scheduler=sched, ema=ema, grad_clip=hp["grad_clip"])
    history = fit(step_fn, loader, steps=steps, minutes=minutes, desc=f"t2i-{cfg['text_encoder']}",
                  progress=progress)
    ema_model = ema.module
    ema_model.config = cfg
    ema_model.text_encoder.frozen.to(device)
    ema_model.eval()
    return ema_model, history, hp


def judge_prompts(pipe, prompts: list[str], targets: list[str], seed: int = 0, batch_size: int | None = None,
                  **kw) -> dict:
    """Generate one picture per prompt and judge it against the canonical caption it means."""
    from ..judges import score_shapes

    images = _t2i().generate(pipe, prompts, seed=seed, batch_size=batch_size, **kw)
    res = score_shapes(images, targets)
    out = {k: round(float(v), 4) for k, v in res.items() if k != "correct"}
    out["n"] = len(prompts)
    return out


def evaluate_frozen_t2i(model: FrozenTextToImage) -> dict:
    pipe = make_frozen_pipeline(model)
    caps = shapes.all_captions("train")
    para, targets = paraphrase_prompts("train", "unseen")
    return {"train_captions": judge_prompts(pipe, caps, caps),
            "unseen_paraphrases": judge_prompts(pipe, para, targets),
            "num_inference_steps": pipe.default_num_inference_steps, "guidance_scale": pipe.default_guidance_scale}


def _train_t2i_minilm_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps = 20 if quick else 1500   # chapter 05's curve: all five attributes ~99.6% right by step 1500
    t0 = time.perf_counter()
    model, hist, hp = train_frozen_t2i({"text_encoder": "minilm"}, steps=steps, seed=seed, device=get_device())
    secs = time.perf_counter() - t0
    q = evaluate_frozen_t2i(model)
    q["train_steps"] = hist.steps
    q["train_loop_seconds"] = round(secs, 1)
    notes = (f"chapter 05's UNet and recipe ({hist.steps} steps, batch {hp['batch_size']}, EMA {hp['ema_decay']}, "
             f"caption dropout {hp['caption_dropout']}) conditioned on frozen all-MiniLM-L6-v2 token states "
             "(+ pooled), canonical train captions only; MiniLM is not in this file")
    return TrainResult(model, dict(model.config), q, notes)


register("shapes-t2i-minilm", build=FrozenTextToImage, train=_train_t2i_minilm_registered,
         evaluate=evaluate_frozen_t2i, finalize=make_frozen_pipeline, chapter="06",
         description="chapter 05's text-to-image UNet conditioned on frozen MiniLM token states (ShapesPipeline)")
