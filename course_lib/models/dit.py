"""A Diffusion Transformer for Shapes, trained with flow matching: the 2024 recipe in miniature
(chapter 05's last part; chapter 08 straightens it by reflow).

The backbone is diffusers' ``SD3Transformer2DModel``, the MMDiT of Stable Diffusion 3 (Esser et al.
2024), at about a thousandth of its width:

* **patches**: the picture is folded 2x2 into channels as in chapter 05 (3x32x32 -> 12x16x16), then
  cut into 2x2 patches of that grid: 64 tokens, each one 4x4-pixel patch (Peebles & Xie 2023's
  "patchify"), with fixed 2-D sine-cosine positions;
* **conditioning by adaLN-Zero**: the timestep and the pooled caption vector are embedded, summed,
  and every block turns that sum into a shift, a scale and a gate for its LayerNorms and residual
  branches. The gates start at zero (:func:`init_adaln_zero`), so every block starts as the identity
  and the untrained network outputs 0 (Peebles & Xie 2023, sec. 3.2);
* **joint attention**: the caption's word states (chapter 05's learned ``ShapesTextEncoder``) are a
  second stream of tokens with weights of their own; picture and word tokens attend to each other in
  one attention over both (SD3's MMDiT), instead of the U-Net's cross-attention from pictures to words.

Training: chapter 05's step (caption dropout, AdamW, warm-up and cosine decay, EMA), with the
flow-matching loss of :mod:`course_lib.flow` (``prediction_type="flow_prediction"``) or, for the
comparison with the U-Net's recipe, v-prediction.
"""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from .. import arguments, diffusion, flow, pretrained, samplers
from ..config import Config
from ..data import shapes
from . import text_to_image as t2i
from .text_to_image import ShapesTextEncoder

PREDICTION_TYPES = (flow.PREDICTION_TYPE, "v_prediction")


@dataclasses.dataclass
class TextConfig(Config):
    dim: int = 64                    # width of the word states and of the pooled caption vector
    layers: int = 1                  # Transformer encoder layers over the caption
    heads: int = 4
    max_length: int = 12             # tokens per caption (canonical captions need 9)


@dataclasses.dataclass
class DiTConfig(Config):
    fold: int = 2                    # pixel_unshuffle factor: 3x32x32 -> 12x16x16
    patch_size: int = 2              # patches of the folded grid: 8x8 = 64 tokens of 4x4 pixels
    num_layers: int = 4              # MMDiT blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 24     # width = heads x head dim = 96
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    prediction_type: str = flow.PREDICTION_TYPE   # "flow_prediction" (flow matching) or "v_prediction"
    schedule: str = "cosine"         # v-prediction only: chapter 04's noise schedule
    num_train_timesteps: int = 1000
    shift: float = 1.0               # flow matching: the sampler's timestep shift (Esser et al. 2024)
    num_inference_steps: int = 20
    guidance_scale: float = 3.0

    def __post_init__(self):
        arguments.choice(self.prediction_type, PREDICTION_TYPES, "prediction_type")
        if shapes.IMAGE_SIZE % (self.fold * self.patch_size):
            raise ValueError(f"fold x patch_size must divide {shapes.IMAGE_SIZE}, got {self.fold} x {self.patch_size}")

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def build_transformer(config: DiTConfig) -> SD3Transformer2DModel:
    """A small ``SD3Transformer2DModel`` on the folded picture, adaLN-Zero initialised."""
    c = config
    grid = shapes.IMAGE_SIZE // c.fold                                     # 16
    net = SD3Transformer2DModel(
        sample_size=grid, patch_size=c.patch_size, in_channels=3 * c.fold ** 2, out_channels=3 * c.fold ** 2,
        num_layers=c.num_layers, attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads, joint_attention_dim=c.text.dim,
        caption_projection_dim=c.width, pooled_projection_dim=c.text.dim,
        pos_embed_max_size=grid // c.patch_size)
    return init_adaln_zero(net)


def init_adaln_zero(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """DiT's initialisation: every adaptive LayerNorm's modulation layer (shift, scale, gate) and the
    final projection start at zero. Each block then adds gate x branch = 0 to its input: the network
    starts as the identity on its tokens, and outputs 0."""
    for block in net.transformer_blocks:
        for norm in (block.norm1, block.norm1_context):
            nn.init.zeros_(norm.linear.weight)
            nn.init.zeros_(norm.linear.bias)
    for layer in (net.norm_out.linear, net.proj_out):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


def denoise(transformer: SD3Transformer2DModel, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
            pooled: torch.Tensor, fold: int) -> torch.Tensor:
    """The transformer's output for pictures ``x_t`` [n, 3, 32, 32] (folded inside), timesteps ``t``
    ([n] or a number, 1000 x the flow time), word states [n, L, d] and pooled captions [n, d]."""
    n = x_t.shape[0]
    z = F.pixel_unshuffle(x_t, fold) if fold > 1 else x_t                   # [n, 3 f², 32/f, 32/f]
    t = torch.as_tensor(t, device=z.device)
    t = t.expand(n) if t.dim() == 0 else t                                 # [n]
    out = transformer(hidden_states=z, encoder_hidden_states=states, pooled_projections=pooled,
                      timestep=t).sample                                   # [n, 3 f², 32/f, 32/f]
    return F.pixel_shuffle(out, fold) if fold > 1 else out                 # [n, 3, 32, 32]


class DiTModel(nn.Module):
    """Text encoder + Diffusion Transformer (what the checkpoint holds), with chapter 05's interface:
    ``encode(ids, mask) -> (states, pooled)``, ``denoise(x_t, t, states, pooled)``, ``forward(x_t, t,
    ids, mask)``. ``config``: a :class:`DiTConfig` or a dict of its fields (unknown keys refused);
    ``self.config`` is the plain dict, as the checkpoint records it."""

    def __init__(self, config: "DiTConfig | dict | None" = None):
        super().__init__()
        cfg = DiTConfig.from_dict(config)
        self.config = cfg.to_dict()
        t = cfg.text
        self.text_encoder = ShapesTextEncoder(max_length=t.max_length, dim=t.dim, layers=t.layers, heads=t.heads)
        self.transformer = build_transformer(cfg)

    @property
    def fold(self) -> int:
        return self.config["fold"]

    def encode(self, input_ids, attention_mask):
        return self.text_encoder(input_ids, attention_mask)

    def denoise(self, x_t, t, states, pooled):
        return denoise(self.transformer, x_t, t, states, pooled, self.fold)

    def forward(self, x_t, t, input_ids, attention_mask):
        states, pooled = self.encode(input_ids, attention_mask)
        return self.denoise(x_t, t, states, pooled)


# --------------------------------------------------------------------------------------------
# Sampling any chapter 05 backbone (U-Net or DiT; flow matching or v-prediction)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_captions(text_encoder: ShapesTextEncoder, captions: list[str], guidance: bool):
    """Word states [n, L, d] and pooled vectors [n, d] of ``captions``; [2n, ...] as [empty captions;
    captions] when ``guidance``."""
    prompts = arguments.prompts(captions) + ([""] * len(captions) if guidance else [])
    tok = text_encoder.tokenize(prompts)
    states, pooled = text_encoder(tok["input_ids"], tok["attention_mask"])
    if guidance:                                                           # [uncond; cond]
        n = len(captions)
        states, pooled = torch.cat([states[n:], states[:n]]), torch.cat([pooled[n:], pooled[:n]])
    return states, pooled


def guided(denoise_fn, states, pooled, w: float):
    """``(x, t) -> output`` with classifier-free guidance u + w (c - u), the unconditional and
    conditional passes as one batch of 2n (``states``/``pooled`` are [uncond; cond] when w != 1)."""
    def fn(z, t):
        t = torch.as_tensor(t, device=z.device).float().expand(len(z))           # [n]
        if w == 1.0:
            return denoise_fn(z, t, states, pooled)
        u, c = denoise_fn(torch.cat([z, z]), torch.cat([t, t]), states, pooled).chunk(2)
        return u + w * (c - u)
    return fn


@torch.no_grad()
def generate(model, captions: list[str], num_inference_steps: int | None = None,
             guidance_scale: float | None = None, seed: int = 0) -> torch.Tensor:
    """Pictures [n, 3, 32, 32] in [0, 1] from any backbone with ``encode`` / ``denoise`` and a config
    naming its prediction type: flow models with the Euler sampler of :mod:`course_lib.flow`,
    v-prediction models with DPM-Solver++ (chapter 05's sampler), classifier-free guidance on one
    batch of 2n. Noise: ``torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))``."""
    model.eval()
    cfg = model.config
    steps = num_inference_steps or cfg["num_inference_steps"]
    w = cfg["guidance_scale"] if guidance_scale is None else arguments.guidance(guidance_scale)
    states, pooled = encode_captions(model.text_encoder, captions, w != 1.0)
    dev, n = states.device, len(captions)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE), generator=g).to(dev)

    fn = guided(model.denoise, states, pooled, w)
    if cfg["prediction_type"] == flow.PREDICTION_TYPE:
        x = flow.sample_euler(fn, x, steps, shift=cfg.get("shift", 1.0))
    else:
        x = samplers._run_loop(samplers.make_scheduler("dpm++", cfg), fn, x, steps, g)
    return diffusion.to_image_range(x.float()).cpu()


def judge(model, split: str = "train", seed: int = 0, batch_size: int = 270, **kw) -> dict:
    """The shapes-judge on one picture per distinct caption of ``split`` (270 train, 54 held out)."""
    from ..judges import score_shapes

    caps = shapes.all_captions(split)
    images = torch.cat([generate(model, caps[i:i + batch_size], seed=seed + i, **kw)
                        for i in range(0, len(caps), batch_size)])
    res = score_shapes(images, caps)
    out = {k: round(float(v), 4) for k, v in res.items() if k != "correct"}
    out["n"] = len(caps)
    return out


# --------------------------------------------------------------------------------------------
# The pipeline: pipe.transformer, pipe.text_encoder, pipe.scheduler (flow matching)
# --------------------------------------------------------------------------------------------
class DiTPipeline(t2i.ShapesPipeline):
    """Chapter 05's pipeline convention around a Diffusion Transformer: ``pipe(prompts,
    num_inference_steps=, guidance_scale=, generator=, output_type=)`` -> ``.images``;
    ``save_pretrained`` / ``from_pretrained``. The backbone is ``pipe.transformer`` (an
    ``SD3Transformer2DModel``), the sampler ``pipe.scheduler`` (``FlowMatchEulerDiscreteScheduler``)."""

    def __init__(self, transformer: SD3Transformer2DModel, text_encoder: ShapesTextEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler, fold: int = 2, default_num_inference_steps: int = 20,
                 default_guidance_scale: float = 3.0):
        DiffusionPipeline.__init__(self)
        self.register_modules(transformer=transformer, text_encoder=text_encoder, scheduler=scheduler)
        self.register_to_config(fold=int(fold), default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale=float(default_guidance_scale))

    @property
    def fold(self) -> int:
        return int(self.config.fold)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], guidance: bool):
        return encode_captions(self.text_encoder, prompts, guidance)

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True):
        if num_inference_steps is not None:
            arguments.steps(num_inference_steps, self.scheduler.config.num_train_timesteps)
        if guidance_scale is not None:
            arguments.guidance(guidance_scale)
        arguments.output_type(output_type)
        arguments.generator(generator)
        prompts, steps, w, states, pooled = self.prepare_call(prompt, num_inference_steps, guidance_scale)
        n, dev = len(prompts), self.transformer.device
        # 1. noise, drawn on the CPU so that a seed gives the same pictures everywhere
        x = torch.randn((n, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE), generator=generator).to(dev)
        # 2. the flow, integrated by the scheduler from t = 1 to t = 0
        fn = guided(lambda z, t, s, p: denoise(self.transformer, z, t, s, p, self.fold), states, pooled, w)
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            x = self.scheduler.step(fn(x, t), t, x).prev_sample
        # 3. pictures in [0, 1]
        return self.format_output(diffusion.to_image_range(x.float()).cpu(), output_type, return_dict)


def make_scheduler(config: dict):
    """The sampler a config asks for: flow models ``FlowMatchEulerDiscreteScheduler(shift=...)``."""
    if config["prediction_type"] != flow.PREDICTION_TYPE:
        raise ValueError(f"the pipeline samples flow-matching models (prediction_type "
                         f"{flow.PREDICTION_TYPE!r}), got {config['prediction_type']!r}")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config["num_train_timesteps"],
                                           shift=config["shift"])


def make_pipeline(model: DiTModel, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None) -> DiTPipeline:
    """Wrap a trained flow-matching :class:`DiTModel` as a :class:`DiTPipeline` (shares its weights)."""
    cfg = model.config
    return DiTPipeline(transformer=model.transformer, text_encoder=model.text_encoder, scheduler=make_scheduler(cfg),
                       fold=cfg["fold"], default_num_inference_steps=num_inference_steps or cfg["num_inference_steps"],
                       default_guidance_scale=cfg["guidance_scale"] if guidance_scale is None else guidance_scale)


# --------------------------------------------------------------------------------------------
# Training, measuring, registering: `python -m course_lib.pretrained train shapes-t2i-dit`
# --------------------------------------------------------------------------------------------
#: the shipped recipe: chapter 05's training step and settings, except these
RECIPE = {"steps": 3000, "lr": 1e-3}
BACKBONES = ("unet", "dit")


def build_backbone(backbone: str, prediction_type: str, config: dict | None = None) -> nn.Module:
    """Chapter 05's U-Net model or this chapter's DiT, to be trained on ``prediction_type``."""
    arguments.choice(backbone, BACKBONES, "backbone")
    arguments.choice(prediction_type, PREDICTION_TYPES, "prediction_type")
    cfg = dict(config or {}, prediction_type=prediction_type)
    return DiTModel(cfg) if backbone == "dit" else t2i.TextToImageModel(cfg)


def train_dit(config: dict | None = None, steps: int | None = None, seed: int = 0, model: nn.Module | None = None,
              progress: bool = False, **hp):
    """Train a :class:`DiTModel` (or another chapter 05 ``model``) with chapter 05's step and the
    settings of :data:`RECIPE` (``hp`` overrides them). Returns ``(ema_model, history, settings)``."""
    hp = dict(RECIPE, **hp)
    steps = steps if steps is not None else hp.pop("steps")
    hp.pop("steps", None)
    torch.manual_seed(seed)
    model = model if model is not None else DiTModel(config)
    return t2i.train_text_to_image(steps=steps, seed=seed, model=model, progress=progress, **hp)


def seconds_per_step(model: nn.Module, n_steps: int = 12, warmup: int = 3, seed: int = 0, **hp) -> float:
    """CPU seconds (this process) per training step of chapter 05's step on ``model`` (median of
    ``n_steps`` after ``warmup``; batch of :data:`RECIPE`). Trains ``model`` a little: pass a spare one."""
    from ..training import EMA

    hp = dict(t2i.TRAIN_DEFAULTS, **RECIPE, **hp)
    dev = next(model.parameters()).device
    x, caps = shapes.sample(hp["batch_size"], seed=seed + 7)
    tok = model.text_encoder.tokenizer(caps)
    batch = (diffusion.to_model_range(x), tok["input_ids"], tok["attention_mask"])
    step = t2i.make_train_step(model, EMA(model, hp["ema_decay"]), model.config, hp, dev, seed, n_steps + warmup, None)
    times = []
    for i in range(n_steps + warmup):
        c0 = time.process_time()
        step(batch, i)
        times.append(time.process_time() - c0)
    return float(torch.tensor(times[warmup:]).median())


def ms_per_picture(model: nn.Module, n: int = 32, repeats: int = 2, **kw) -> float:
    """Best wall milliseconds per picture of :func:`generate` on one batch of ``n`` train captions."""
    caps = shapes.all_captions("train")[:n]
    generate(model, caps[:2], **kw)                                        # warm-up
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(model, caps, seed=r, **kw)
        best = min(best, time.perf_counter() - t0)
    return round(1000 * best / n, 2)


def evaluate(model: DiTModel) -> dict:
    """Judged accuracy (270 train captions at 1 to 20 steps, 54 held-out ones at the default steps),
    sampling time per picture."""
    q = {"train_captions": judge(model, "train"), "heldout_captions": judge(model, "heldout")}
    q["train_all_per_steps"] = {s: judge(model, "train", num_inference_steps=s)["all"] for s in (1, 2, 4, 8)}
    q["sampling_ms_per_picture_batch32"] = ms_per_picture(model)
    q["num_inference_steps"] = model.config["num_inference_steps"]
    q["guidance_scale"] = model.config["guidance_scale"]
    return q


def table_row(model: nn.Module, history, step_seconds: float) -> dict:
    """One row of the {U-Net, DiT} x {v-prediction, flow matching} table."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "cpu_seconds_per_step": round(step_seconds, 3), "train_steps": history.steps,
            "train_cpu_minutes": round(history.steps * step_seconds / 60, 2),
            "train_all": judge(model, "train")["all"], "heldout_all": judge(model, "heldout")["all"],
            "sampling_ms_per_picture": ms_per_picture(model)}


def compare_backbones(cpu_seconds: float, seed: int = 0, done: dict | None = None, **hp) -> dict:
    """The chapter's table: the U-Net and the DiT, each trained with v-prediction and with flow
    matching for the same CPU time ``cpu_seconds`` (steps = that time / the CPU seconds one step takes
    here, measured first), then judged the same way (270 train and 54 held-out captions, 20 steps,
    guidance 3) and timed (sampling ms per picture, batch 32). ``done``: rows already measured,
    ``(backbone, prediction_type) -> row``."""
    rows = dict(done or {})
    hp.pop("steps", None)
    for backbone in BACKBONES:
        for pt in PREDICTION_TYPES[::-1]:
            if (backbone, pt) in rows:
                continue
            torch.manual_seed(seed)
            secs = seconds_per_step(build_backbone(backbone, pt), seed=seed, **hp)
            steps = max(1, int(cpu_seconds / secs))
            model, hist, _ = train_dit(steps=steps, seed=seed, model=build_backbone(backbone, pt), **hp)
            rows[(backbone, pt)] = table_row(model, hist, secs)
            print(backbone, pt, rows[(backbone, pt)], flush=True)
    return {f"{b} {pt}": r for (b, pt), r in rows.items()}


def train_registered(seed: int = 0, quick: bool = False) -> pretrained.TrainResult:
    """The shipped DiT (:data:`RECIPE`), then the backbone table at the CPU time it took."""
    over = {"steps": 6, "n_train": 256} if quick else {}
    c0 = time.process_time()
    model, hist, hp = train_dit(seed=seed, progress=not quick, **over)
    cpu = time.process_time() - c0
    quality = evaluate(model)
    quality.update(train_steps=hist.steps, train_loop_seconds=round(hist.seconds, 1),
                   train_process_cpu_seconds=round(cpu, 1))
    secs = seconds_per_step(build_backbone("dit", flow.PREDICTION_TYPE), seed=seed, **over)
    shipped = {("dit", flow.PREDICTION_TYPE): table_row(model, hist, secs)}
    quality["backbone_table"] = compare_backbones(hist.steps * secs, seed, shipped, **over)
    quality["backbone_table_note"] = ("each row trained for the CPU time the shipped DiT's steps take here "
                                      "(CPU seconds per step measured in this run, one torch thread per process "
                                      f"as run); {model.config['num_inference_steps']} sampling steps, guidance "
                                      f"{model.config['guidance_scale']}; v-prediction rows sample with DPM-Solver++, "
                                      "flow rows with Euler")
    notes = (f"{hist.steps} steps, batch {hp['batch_size']}, AdamW lr {hp['lr']} with warm-up and cosine decay, EMA "
             f"{hp['ema_decay']}, caption dropout {hp['caption_dropout']}, flow matching (uniform t), "
             f"SD3Transformer2DModel on 2x2 patches of the 2x2-folded picture")
    return pretrained.TrainResult(model, model.config, quality, notes)


def finalize(model: DiTModel) -> DiTPipeline:
    return make_pipeline(model)


pretrained.register("shapes-t2i-dit", build=DiTModel, train=train_registered, evaluate=evaluate, finalize=finalize,
                    chapter="05", description="Shapes text-to-image, the 2024 recipe: a Diffusion Transformer "
                                              "(SD3's MMDiT, adaLN-Zero, joint attention) trained with flow matching, "
                                              "DiTPipeline with FlowMatchEulerDiscreteScheduler")
