"""Editing a picture that exists (chapter 11 teaches it).

A text-to-image model can do more than draw from pure noise: the same network, the same sampling
loop (:func:`course_lib.sampling.denoise_loop`) and the same guidance (:func:`course_lib.sampling.
guided`) edit a given picture, depending only on where the loop starts and what is put back
between its steps.

* :class:`Img2ImgPipeline` is SDEdit (Meng et al. 2021): noise the picture part of the way
  (:func:`noise_to_strength`, ``strength`` in [0, 1]) and denoise it with the new caption. Small
  strengths keep the layout and colours, large ones keep little; strength 1 is plain text to image.
* :class:`InpaintPipeline` repaints the region a mask marks (1 = repaint, diffusers' convention):
  after every step the known region is put back, noised to the current level
  (:func:`blend_known`), as in RePaint (Lugmayr et al. 2022); ``resample=r`` jumps back one step
  and repeats it r times so the two regions agree; the output keeps the pixels outside the mask
  exactly.
* :func:`ddim_invert` runs deterministic DDIM backwards, from a picture to the noise that DDIM
  (same caption, guidance 1 by default) turns back into it; :func:`ddim_reconstruct` is that way
  back. At guidance 1 the error of the round trip shrinks as the steps grow (each step is a
  first-order ODE step); guidance > 1 breaks it (what null-text inversion repairs).

Each of the three takes the line a chapter 11 exercise writes as an argument, so the learner's own
version runs inside it: ``noise_fn=`` (:func:`noise_to_strength`), ``blend_fn=``
(:func:`blend_known`) and ``step_fn=`` (:func:`ddim_inverse_step`).

Both pipelines are made with ``from_pipe`` from chapter 05's ``ShapesPipeline`` (e.g.
``pretrained.load("shapes-t2i")``): they share its modules, as diffusers' ``from_pipe`` does, so no
memory is copied. Pictures are tensors [n, 3, 32, 32] in [0, 1] (or PIL images), masks
[n, 1, 32, 32] in [0, 1] (or PIL images); the call follows diffusers'
``StableDiffusionImg2ImgPipeline`` and ``StableDiffusionInpaintPipeline``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim_inverse import DDIMSchedulerOutput

from . import arguments, diffusion, sampling
from .models.text_to_image import ShapesPipeline

SIDE = 32  # Shapes pictures are 3 x 32 x 32
#: Img2ImgPipeline's default strength: the one chapter 11's strength sweep recommends for
#: recolouring with shapes-t2i (right on at least 90% of the sources, closest to the perfect edit).
DEFAULT_STRENGTH = 0.4
#: diffusers' default for its img2img pipelines, chosen for large models and edits of every kind.
DIFFUSERS_STRENGTH = 0.8


# --------------------------------------------------------------------------------------------
# Checking pictures and masks
# --------------------------------------------------------------------------------------------
def _from_pil(items, mode: str, name: str) -> torch.Tensor:
    """PIL images -> [n, C, H, W] in [0, 1] (C = 3 for "RGB", 1 for "L")."""
    arrays = []
    for i, im in enumerate(items):
        if not hasattr(im, "convert"):
            raise TypeError(f"{name} item {i} must be a PIL image, got {type(im).__name__}")
        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0  # [H, W] or [H, W, 3]
        arrays.append(a[..., None] if a.ndim == 2 else a)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # [n, C, H, W]


def _as_tensor(x, channels: int, mode: str, name: str) -> torch.Tensor:
    """A tensor, a PIL image or a list of PIL images -> float tensor [n, C, H, W] (unchecked)."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(
                f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype} "
                "(divide 8-bit pictures by 255)"
            )
        return x.detach().float().cpu()
    if isinstance(x, (list, tuple)) and len(x) > 0:
        return _from_pil(x, mode, name)
    if hasattr(x, "convert"):
        return _from_pil([x], mode, name)
    raise TypeError(
        f"{name} must be a tensor [n, {channels}, {SIDE}, {SIDE}] with values in [0, 1], a PIL "
        f"image or a non-empty list of PIL images, got {type(x).__name__}"
    )


def _check_values(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(
            f"{name} must have values in [0, 1], got values from {float(x.min()):.3g} to "
            f"{float(x.max()):.3g} (pictures in [-1, 1]: pass (x + 1) / 2)"
        )
    return x


def check_pictures(image, name: str = "image") -> torch.Tensor:
    """``image`` as a float tensor [n, 3, 32, 32] in [0, 1] on the CPU. Allowed: a tensor
    [n, 3, 32, 32] or [3, 32, 32] with values in [0, 1], a 32 x 32 PIL image or a list of them."""
    x = _as_tensor(image, 3, "RGB", name)
    if x.dim() == 3:
        x = x[None]  # [1, 3, H, W]
    if x.dim() != 4 or x.shape[1:] != (3, SIDE, SIDE):
        raise ValueError(
            f"{name} must be pictures of shape [n, 3, {SIDE}, {SIDE}] (3 colour channels, "
            f"{SIDE} x {SIDE} pixels), got shape {list(x.shape)}"
        )
    return _check_values(x, name)


def check_mask(mask_image, n: int, name: str = "mask_image") -> torch.Tensor:
    """A mask as a float tensor [n, 1, 32, 32] in [0, 1] (1 = repaint, 0 = keep). Allowed: a
    tensor [n, 1, 32, 32] or [1, 1, 32, 32] (one mask for every picture), a PIL image or a list."""
    m = _as_tensor(mask_image, 1, "L", name)
    if m.dim() != 4 or m.shape[1:] != (1, SIDE, SIDE) or len(m) not in (1, n):
        raise ValueError(
            f"{name} must have shape [{n}, 1, {SIDE}, {SIDE}] or [1, 1, {SIDE}, {SIDE}] (one "
            f"channel, 1 = repaint), got shape {list(m.shape)}"
        )
    return _check_values(m, name).expand(n, 1, SIDE, SIDE)  # [n, 1, 32, 32]


def _function(fn, default, name: str, signature: str):
    """``fn`` if it is callable, ``default`` when it is None; anything else is a TypeError."""
    if fn is None:
        return default
    if not callable(fn):
        raise TypeError(f"{name} must be a function {signature} or None, got {type(fn).__name__}")
    return fn


def _match_counts(prompts: list, negatives, pictures: torch.Tensor):
    """Prompts and pictures of equal count; either may be one (then repeated)."""
    n_p, n_i = len(prompts), len(pictures)
    if n_p != n_i and 1 not in (n_p, n_i):
        raise ValueError(
            f"prompt and image must come in equal numbers (or one of them alone): got {n_p} "
            f"prompts and {n_i} pictures"
        )
    n = max(n_p, n_i)
    if n_p == 1:
        prompts = prompts * n
        negatives = negatives * n if negatives is not None else None
    return prompts, negatives, pictures.expand(n, -1, -1, -1)


# --------------------------------------------------------------------------------------------
# The two lines the chapter's exercises write
# --------------------------------------------------------------------------------------------
def _add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """The scheduler's own forward process at timesteps ``t`` [n] (``scale_noise`` for flow)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler.scale_noise(x0, t, noise)
    return scheduler.add_noise(x0, noise, t)


def noise_to_strength(
    scheduler, x0: torch.Tensor, strength: float, num_inference_steps: int, generator=None
):
    """SDEdit's start: ``(x_t, timesteps)``.

    diffusers' convention (``StableDiffusionImg2ImgPipeline.get_timesteps``): of a schedule of
    ``num_inference_steps`` steps, run the last ``int(num_inference_steps * strength)``; ``x_t``
    is ``x0`` [n, ...] (model range) noised with the scheduler's own forward process to the first
    of them. ``timesteps`` is empty for strength 0 (then ``x_t`` is ``x0``). The scheduler's
    timesteps are set and, where it has one, its begin index, so its ``step`` starts there.
    """
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a tensor [n, ...] in model range, got {type(x0).__name__}")
    strength = arguments.real(strength, "strength", 0.0, 1.0)
    n_steps = arguments.steps(num_inference_steps, scheduler.config.num_train_timesteps)
    sampling.set_timesteps(scheduler, n_steps)
    kept = min(int(n_steps * strength), n_steps)
    start = (n_steps - kept) * getattr(scheduler, "order", 1)
    timesteps = scheduler.timesteps[start:]  # [kept * order]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    if kept == 0:
        return x0, timesteps
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)  # [n, ...]
    t = timesteps[:1].repeat(len(x0))  # [n]
    return _add_noise(scheduler, x0, noise, t), timesteps


def blend_known(x_t: torch.Tensor, known_noised: torch.Tensor, mask: torch.Tensor):
    """RePaint's blend: the sample where ``mask`` is 1 (repaint), the known picture noised to the
    same level where it is 0; a soft mask mixes the two. ``x_t``, ``known_noised`` [n, C, H, W],
    ``mask`` [n, 1 or C, H, W] in [0, 1]."""
    return mask * x_t + (1 - mask) * known_noised  # [n, C, H, W]


# --------------------------------------------------------------------------------------------
# The loop, started part-way
# --------------------------------------------------------------------------------------------
class _Window:
    """A scheduler seen through ``timesteps[start:stop]``: :func:`sampling.denoise_loop` sets the
    full schedule and runs only these steps. The loop's start is already noised by the scheduler's
    own ``add_noise``, so the window's ``init_noise_sigma`` is 1."""

    init_noise_sigma = 1.0

    def __init__(self, scheduler, start: int, stop: int | None = None):
        self._inner, self._start, self._stop = scheduler, start, stop

    def set_timesteps(self, num_inference_steps: int) -> None:
        sampling.set_timesteps(self._inner, num_inference_steps)
        if hasattr(self._inner, "set_begin_index"):
            self._inner.set_begin_index(self._start)

    @property
    def timesteps(self) -> torch.Tensor:
        return self._inner.timesteps[self._start : self._stop]

    def __getattr__(self, name):
        if name == "_inner":  # not set yet (e.g. while copying)
            raise AttributeError(name)
        return getattr(self._inner, name)


class _EditingPipeline(ShapesPipeline):
    """What the two editing pipelines share (not used on its own)."""

    extra_output_types = ()

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """This pipeline on the modules of chapter 05's pixel ``ShapesPipeline`` (shared, not
        copied; diffusers' ``from_pipe`` convention, without its dtype cast). ``kwargs`` may
        replace a component (``scheduler=``) or a default (``default_guidance_scale=``)."""
        names = set(getattr(pipeline, "components", {}))
        if not isinstance(pipeline, ShapesPipeline) or names != {"unet", "text_encoder",
                                                                 "scheduler"}:
            raise TypeError(
                f"{cls.__name__}.from_pipe takes a pixel-space ShapesPipeline (unet, text_encoder, "
                f"scheduler; e.g. pretrained.load('shapes-t2i')), got {type(pipeline).__name__}"
            )
        components = {**pipeline.components}  # shared modules, as diffusers' from_pipe
        for name in [k for k in kwargs if k in components]:
            components[name] = kwargs.pop(name)
        defaults = {
            "default_num_inference_steps": pipeline.default_num_inference_steps,
            "default_guidance_scale": pipeline.default_guidance_scale,
        }
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(
                f"from_pipe may replace {sorted(components)} or {sorted(defaults)}, got {unknown}"
            )
        new = cls(**components, **{**defaults, **kwargs})
        new._progress_bar_config = dict(getattr(pipeline, "_progress_bar_config", {}))
        return new

    def _check_common(self, prompt, negative_prompt, image, num_inference_steps, guidance_scale,
                      generator, output_type):
        arguments.prompts(prompt, allow_empty_text=False)
        prompts, negatives = self.check_prompts(prompt, negative_prompt)
        pictures = check_pictures(image)
        prompts, negatives, pictures = _match_counts(prompts, negatives, pictures)
        steps = arguments.steps(
            self.default_num_inference_steps if num_inference_steps is None
            else num_inference_steps,
            self.scheduler.config.num_train_timesteps,
        )
        w = arguments.guidance(
            self.default_guidance_scale if guidance_scale is None else guidance_scale
        )
        self.check_output_type(output_type)
        return prompts, negatives, pictures, steps, w, arguments.generator(generator)

    def _conditions(self, prompts, negatives, w):
        cond = self.encode_prompt(prompts)  # [n, L, d], [n, d]
        uncond = self.encode_prompt(negatives or [""] * len(prompts)) if w != 1.0 else None
        return cond, uncond

    def fold_pictures(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures [n, C, 32, 32] -> the backbone's grid [n, C f^2, 32/f, 32/f]."""
        x = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x
        return x.to(self.backbone.device, self.backbone.dtype)

    def _run(self, x, start, stop, steps, cond, uncond, w, generator, callback=None, bar=True):
        """The course's loop over ``timesteps[start:stop]`` from ``x`` (backbone grid)."""
        return sampling.denoise_loop(
            _Window(self.scheduler, start, stop), self.network, x, steps, cond, uncond, w,
            generator=generator, callback_on_step_end=callback, pipe=self,
            progress_bar=self.progress_bar if bar else None,
        )


# --------------------------------------------------------------------------------------------
# SDEdit
# --------------------------------------------------------------------------------------------
class Img2ImgPipeline(_EditingPipeline):
    """Image to image (SDEdit, Meng et al. 2021; chapter 11), diffusers' call convention.

    ``Img2ImgPipeline.from_pipe(pipe)(prompt, image=pictures, strength=0.6)`` noises ``image``
    ([n, 3, 32, 32] in [0, 1], or PIL) to the level ``strength`` selects
    (:func:`noise_to_strength`) and denoises it with ``prompt``. ``.images`` as ``ShapesPipeline``
    returns them ("pt": [n, 3, 32, 32] in [0, 1]).
    """

    @torch.no_grad()
    def __call__(self, prompt, image=None, strength: float = DEFAULT_STRENGTH,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt=None, generator: torch.Generator | None = None,
                 output_type: str = "pil", return_dict: bool = True, noise_fn=None):
        """``strength`` 0 returns ``image``; 1 ignores it (text to image from pure noise).
        ``noise_fn``: a function with :func:`noise_to_strength`'s arguments and result, run in its
        place (chapter 11's exercise 1 passes the learner's)."""
        prompts, negatives, pictures, steps, w, generator = self._check_common(
            prompt, negative_prompt, image, num_inference_steps, guidance_scale, generator,
            output_type)
        strength = arguments.real(strength, "strength", 0.0, 1.0)
        noise_fn = _function(noise_fn, noise_to_strength, "noise_fn",
                             "(scheduler, x0, strength, num_inference_steps, generator)")
        x0 = diffusion.to_model_range(pictures)  # [n, 3, 32, 32] in [-1, 1]
        x, timesteps = noise_fn(self.scheduler, x0, strength, steps, generator)
        if len(timesteps) == 0:
            return self.format_output(pictures.clone(), output_type, return_dict)
        cond, uncond = self._conditions(prompts, negatives, w)
        start = len(self.scheduler.timesteps) - len(timesteps)
        x = self._run(self.fold_pictures(x), start, None, steps, cond, uncond, w, generator)
        return self.format_output(self.decode_latents(x), output_type, return_dict)


# --------------------------------------------------------------------------------------------
# RePaint
# --------------------------------------------------------------------------------------------
def _abar(scheduler, t) -> torch.Tensor:
    """ᾱ at timestep ``t`` of a variance-preserving scheduler."""
    return scheduler.alphas_cumprod[int(t)]


def jump_back(x_s: torch.Tensor, abar_s, abar_t, generator=None) -> torch.Tensor:
    """RePaint's jump from a less noisy level s to a noisier level t: q(x_t | x_s) is the forward
    process with ᾱ = ᾱ_t / ᾱ_s, i.e. sqrt(ᾱ_t/ᾱ_s) x_s + sqrt(1 - ᾱ_t/ᾱ_s) ε (x_s [n, ...])."""
    noise = torch.randn(x_s.shape, generator=generator, dtype=torch.float32).to(x_s)
    ratio = (torch.as_tensor(abar_t) / torch.as_tensor(abar_s)).reshape(1)  # [1]
    return diffusion.q_sample(x_s, 0, noise, ratio)  # [n, ...]


class InpaintPipeline(_EditingPipeline):
    """Inpainting (RePaint, Lugmayr et al. 2022; chapter 11), diffusers' call and mask convention.

    ``InpaintPipeline.from_pipe(pipe)(prompt, image=pictures, mask_image=mask)``: ``mask`` is
    [n, 1, 32, 32] in [0, 1], 1 where the picture is repainted. After each step the region outside
    the mask is replaced by the source picture noised to the step's level (:func:`blend_known`);
    the output equals the source exactly where the mask is 0. ``resample=r`` (RePaint's
    resampling): each step is undone by :func:`jump_back` and redone, r times in all, so the
    repainted region adapts to the known one; it needs a variance-preserving sampler ("ddpm",
    "ddim", "dpm++", "unipc", "dpm++sde"), and each step then runs as a loop of its own (a
    multistep solver restarts at first order). ``strength`` < 1 starts from the noised source
    (SDEdit inside the mask). ``blend_fn``: a function with :func:`blend_known`'s arguments, run
    in its place (chapter 11's exercise 2 passes the learner's).
    """

    @torch.no_grad()
    def __call__(self, prompt, image=None, mask_image=None, strength: float = 1.0,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt=None, generator: torch.Generator | None = None,
                 output_type: str = "pil", return_dict: bool = True, resample: int = 1,
                 blend_fn=None):
        """Repaint ``image`` where ``mask_image`` is 1, following ``prompt``."""
        prompts, negatives, pictures, steps, w, generator = self._check_common(
            prompt, negative_prompt, image, num_inference_steps, guidance_scale, generator,
            output_type)
        if mask_image is None:
            raise TypeError(f"mask_image is required: a tensor [n, 1, {SIDE}, {SIDE}] in [0, 1]")
        mask = check_mask(mask_image, len(pictures))  # [n, 1, 32, 32]
        strength = arguments.real(strength, "strength", 0.0, 1.0)
        resample = arguments.positive_int(resample, "resample")
        blend = _function(blend_fn, blend_known, "blend_fn", "(x_t, known_noised, mask)")
        sch = self.scheduler
        if resample > 1 and (not hasattr(sch, "alphas_cumprod")
                             or getattr(sch, "init_noise_sigma", 1.0) != 1.0):
            raise ValueError(
                "resample > 1 needs a variance-preserving sampler ('ddpm', 'ddim', 'dpm++', "
                f"'unipc' or 'dpm++sde'), got {type(sch).__name__}: use "
                "pipe.with_scheduler(sampling.make_scheduler('ddpm', pipe))"
            )
        x0 = diffusion.to_model_range(pictures)  # [n, 3, 32, 32]
        x, timesteps = noise_to_strength(sch, x0, strength, steps, generator)
        if len(timesteps) > 0:
            x = self._repaint(x, x0, mask, timesteps, steps, prompts, negatives, w, generator,
                              resample, blend)
            out = self.decode_latents(x)  # [n, 3, 32, 32] in [0, 1]
        else:
            out = pictures.clone()
        out = blend(out, pictures, mask)  # exactly the source where the mask is 0
        return self.format_output(out, output_type, return_dict)

    def _repaint(self, x, x0, mask, timesteps, steps, prompts, negatives, w, generator,
                 resample, blend):
        """RePaint's loop on the backbone's grid; returns the final sample [n, C f^2, s, s]."""
        sch, n_t = self.scheduler, len(timesteps)
        first = len(sch.timesteps) - n_t
        cond, uncond = self._conditions(prompts, negatives, w)
        known = self.fold_pictures(x0)  # [n, C f^2, s, s]
        m = self.fold_pictures(mask.expand_as(x0).contiguous())  # [n, C f^2, s, s]
        x = self.fold_pictures(x)

        def put_back(offset):
            def callback(pipe, i, t, kw):
                j = offset + i + 1  # index (within timesteps) of the level x is now at
                if j >= n_t:
                    return {"latents": blend(kw["latents"], known, m)}
                noise = torch.randn(known.shape, generator=generator, dtype=torch.float32)
                t_next = timesteps[j : j + 1].repeat(len(known))  # [n]
                known_t = _add_noise(sch, known, noise.to(known), t_next)
                return {"latents": blend(kw["latents"], known_t, m)}

            return callback

        if resample == 1:  # one pass of the loop over all the steps
            return self._run(x, first, None, steps, cond, uncond, w, generator, put_back(0))
        for i in range(n_t):  # RePaint: each step redone `resample` times
            for r in range(resample):
                x = self._run(x, first + i, first + i + 1, steps, cond, uncond, w,
                              generator, put_back(i), bar=False)
                if r < resample - 1 and i + 1 < n_t:
                    x = jump_back(x, _abar(sch, timesteps[i + 1]), _abar(sch, timesteps[i]),
                                  generator)
                elif r < resample - 1:
                    break  # the last step lands on the clean picture: nothing to redo
        return x


# --------------------------------------------------------------------------------------------
# DDIM inversion
# --------------------------------------------------------------------------------------------
def _ddim(pipe):
    return sampling.make_scheduler("ddim", pipe)


def ddim_inverse_step(x: torch.Tensor, eps_hat: torch.Tensor, abar_from, abar_to):
    """One step of DDIM inversion: ``x`` [n, ...] at the level ᾱ = ``abar_from`` to the noisier
    level ``abar_to``, with the predicted noise ``eps_hat`` [n, ...]: DDIM's deterministic update
    (chapter 04) pointed up, sqrt(ᾱ_to) x̂_0 + sqrt(1 - ᾱ_to) ε̂ (the update of diffusers'
    ``DDIMInverseScheduler``; chapter 11's exercise 3)."""
    x0_hat, _ = diffusion.predicted_x0_and_eps(eps_hat, x, abar_from, "epsilon")  # [n, ...]
    a = torch.as_tensor(abar_to, dtype=x.dtype, device=x.device)
    return a.sqrt() * x0_hat + (1 - a).sqrt() * eps_hat  # [n, ...]


def _inverse_scheduler(pipe, step_fn=None):
    """diffusers' ``DDIMInverseScheduler`` with the pipeline's schedule; with ``step_fn``, its
    update is ``step_fn(x, eps_hat, abar_from, abar_to)`` (the levels its own step would use)."""
    inverse = DDIMInverseScheduler.from_config(_ddim(pipe).config)
    if step_fn is None:
        return inverse
    T = inverse.config.num_train_timesteps

    def step(model_output, timestep, sample, return_dict: bool = True):
        t_to = int(timestep)
        t_from = min(t_to - T // inverse.num_inference_steps, T - 1)  # diffusers' own rule
        a_from = inverse.alphas_cumprod[t_from] if t_from >= 0 else inverse.initial_alpha_cumprod
        a_to = inverse.alphas_cumprod[t_to]
        x0, eps = diffusion.predicted_x0_and_eps(model_output, sample, float(a_from),
                                                 inverse.config.prediction_type)
        x = step_fn(sample, eps, float(a_from), float(a_to))  # [n, ...]
        return DDIMSchedulerOutput(prev_sample=x, pred_original_sample=x0)

    inverse.step = step
    return inverse


def ddim_invert(pipe, image, prompt, num_inference_steps: int = 50,
                guidance_scale: float = 1.0, step_fn=None) -> torch.Tensor:
    """The noise [n, 3, 32, 32] that deterministic DDIM (``prompt``, ``guidance_scale``) turns into
    ``image`` ([n, 3, 32, 32] in [0, 1]): DDIM's steps run backwards, from t = 0 to T
    (diffusers' ``DDIMInverseScheduler``, through the course's loop). Each step evaluates the
    network on the sample it leaves, not on the one it reaches (not known yet): the round trip is
    exact only as the steps shrink, and guidance > 1 makes that error grow (chapter 11).
    ``step_fn(x, eps_hat, abar_from, abar_to)``: the update, in place of the scheduler's (None:
    diffusers' own; :func:`ddim_inverse_step` is the same). ``pipe``: a pixel-space
    ShapesPipeline (or an editing pipeline)."""
    arguments.prompts(prompt, allow_empty_text=False)
    prompts, _ = pipe.check_prompts(prompt)
    pictures = check_pictures(image)
    prompts, _, pictures = _match_counts(prompts, None, pictures)
    steps = arguments.steps(num_inference_steps, pipe.scheduler.config.num_train_timesteps)
    w = arguments.guidance(guidance_scale)
    step_fn = _function(step_fn, None, "step_fn", "(x, eps_hat, abar_from, abar_to)")
    inverse = _inverse_scheduler(pipe, step_fn)
    x = diffusion.to_model_range(pictures)  # [n, 3, 32, 32]
    x = F.pixel_unshuffle(x, pipe.fold) if pipe.fold > 1 else x  # [n, 3 f^2, 32/f, 32/f]
    x = x.to(pipe.backbone.device, pipe.backbone.dtype)
    with torch.no_grad():
        cond = pipe.encode_prompt(prompts)
        uncond = pipe.encode_prompt([""] * len(prompts)) if w != 1.0 else None
        z = sampling.denoise_loop(inverse, pipe.network, x, steps, cond, uncond, w)
    z = F.pixel_shuffle(z.float(), pipe.fold) if pipe.fold > 1 else z.float()
    return z.cpu()  # [n, 3, 32, 32]


def ddim_reconstruct(pipe, noise: torch.Tensor, prompt, num_inference_steps: int = 50,
                     guidance_scale: float = 1.0):
    """Pictures [n, 3, 32, 32] in [0, 1]: deterministic DDIM (``prompt``, ``guidance_scale``)
    from ``noise`` [n, 3, 32, 32], e.g. what :func:`ddim_invert` returned with the same steps."""
    ddim_pipe = ShapesPipeline(**{**pipe.components, "scheduler": _ddim(pipe)})  # shared modules
    ddim_pipe.set_progress_bar_config(disable=True)
    prompts = arguments.prompts(prompt, allow_empty_text=False)
    if len(prompts) == 1 and isinstance(noise, torch.Tensor) and noise.dim() == 4:
        prompts = prompts * len(noise)  # one prompt for every picture
    return ddim_pipe(prompts, latents=noise, num_inference_steps=num_inference_steps,
                     guidance_scale=guidance_scale, output_type="pt").images
