"""Chapter 10's pipelines: pictures from image tokens, with the course's pipeline convention.

* :class:`ShapesGPTPipeline` (``shapes-gpt``): ``pipe(prompts, generator=..., temperature=...,
  top_k=..., guidance_scale=..., output_type=...)`` draws token by token (KV cache) and returns
  ``.images``; ``pipe.caption(pictures)`` reads pictures [n, 3, 32, 32] in [0, 1] back into captions
  with the same weights.
* :class:`ShapesMaskGITPipeline` (``shapes-maskgit``): the same call with ``num_inference_steps``
  parallel decoding steps.

Both check their arguments as chapter 05's pipeline does
(:class:`course_lib.pipelines.CoursePipeline`): a word outside the vocabulary, a too long prompt or
a wrong type raise ``ValueError``/``TypeError`` naming what is allowed. Both turn tokens into
pictures with the ``shapes-vq`` decoder.
"""

from __future__ import annotations

import torch

from .. import arguments
from ..pipelines import CoursePipeline
from . import image_gpt, maskgit
from .vq import VQTokenizer, check_pictures


class _TokenPipeline(CoursePipeline):
    """What both token pipelines share: the prompts, the sampling arguments, the pictures."""

    def __init__(
        self,
        transformer: image_gpt.ImageGPT,
        vqvae: VQTokenizer,
        default_temperature: float = 1.0,
        default_top_k: int | None = None,
        default_guidance_scale: float = 1.0,
    ):
        super().__init__()
        if not isinstance(transformer, image_gpt.ImageGPT):
            raise TypeError(f"transformer must be an ImageGPT, got {type(transformer).__name__}")
        if not isinstance(vqvae, VQTokenizer):
            raise TypeError(f"vqvae must be a VQTokenizer, got {type(vqvae).__name__}")
        if (vqvae.config.grid, vqvae.config.codebook_size) != (
            transformer.config.grid,
            transformer.config.codebook_size,
        ):
            raise ValueError("the transformer's grid and codebook must be the tokenizer's")
        self.register_modules(transformer=transformer, vqvae=vqvae)
        self.register_to_config(
            default_temperature=float(default_temperature),
            default_top_k=default_top_k,
            default_guidance_scale=float(default_guidance_scale),
        )

    @property
    def defaults(self) -> dict:
        """The sampling settings a call uses when it names none."""
        c = self.config
        return {
            "temperature": c.default_temperature,
            "top_k": c.default_top_k,
            "guidance_scale": c.default_guidance_scale,
        }

    @property
    def tokenizer(self):
        """The caption words' tokenizer (the course's word-level one)."""
        return self.layout.tokenizer

    @property
    def layout(self) -> image_gpt.TokenLayout:
        return self.transformer.layout

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def check_sampling(self, temperature, top_k, guidance_scale):
        """The sampling arguments with the pipeline's defaults filled in, checked."""
        d = self.defaults
        t, k = image_gpt.check_sampling(
            d["temperature"] if temperature is None else temperature,
            d["top_k"] if top_k is None else top_k,
            self.transformer.config.codebook_size,
        )
        w = arguments.guidance(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        return t, k, w

    def encode_prompts(self, prompt, num_images_per_prompt: int = 1) -> torch.Tensor:
        """Prompts -> caption word ids [n, C] (each repeated ``num_images_per_prompt`` times)."""
        prompts, _ = self.check_prompts(prompt, None, num_images_per_prompt)
        return self.layout.encode_captions(prompts)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Image tokens [n, g, g] -> pictures [n, 3, 32, 32] in [0, 1] on the CPU."""
        return self.vqvae.decode(codes.to(self.vqvae.device)).float().cpu()


class ShapesGPTPipeline(_TokenPipeline):
    """Draws with the autoregressive :class:`~course_lib.models.image_gpt.ImageGPT` and reads with
    it."""

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        temperature: float | None = None,
        top_k: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        use_cache: bool = True,
        sampler=None,
        callback=None,
    ):
        """Pictures for ``prompt`` (a string or a list of strings), 64 tokens each in raster order.

        ``temperature`` (0: the most likely token each time), ``top_k`` (sample among the k most
        likely codes), ``guidance_scale`` (1: no guidance) default to the pipeline's.
        ``use_cache=False`` recomputes every earlier token at each step (same pictures, slower).
        ``sampler(logits [n, K], generator) -> codes [n]`` replaces the built-in temperature / top-k
        sampling (chapter 10 plugs in the learner's); ``callback(i, codes [n, i + 1])`` runs after
        each token."""
        captions = self.encode_prompts(prompt, num_images_per_prompt)
        t, k, w = self.check_sampling(temperature, top_k, guidance_scale)
        generator = arguments.generator(generator)
        self.check_output_type(output_type)
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
        if sampler is not None and not callable(sampler):
            raise TypeError(
                f"sampler must be a function (logits, generator) -> codes, got {sampler!r}"
            )
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")

        def on_token(i, codes):
            bar.update(1)
            if callback is not None:
                callback(i, codes)

        bar = self.progress_bar(total=self.transformer.config.image_tokens)
        codes = image_gpt.draw_codes(
            self.transformer,
            captions,
            t,
            k,
            w,
            generator,
            use_cache,
            callback=on_token,
            sampler=sampler,
        )
        bar.close()
        return self.format_output(self.decode_codes(codes), output_type, return_dict)

    @torch.no_grad()
    def caption(self, pictures: torch.Tensor, batch_size: int = 500) -> list[str]:
        """One caption per picture [n, 3, 32, 32] in [0, 1]: tokenize, then write the words
        (greedy)."""
        pictures = check_pictures(pictures)
        batch_size = arguments.positive_int(batch_size, "batch_size")
        out = []
        for x in pictures.split(batch_size):
            out += image_gpt.read_codes(
                self.transformer, self.vqvae.encode(x.to(self.vqvae.device))
            )
        return out


class ShapesMaskGITPipeline(_TokenPipeline):
    """Draws with the masked (bidirectional) :class:`~course_lib.models.image_gpt.ImageGPT`."""

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        num_inference_steps: int = 8,
        temperature: float | None = None,
        top_k: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Pictures for ``prompt`` in ``num_inference_steps`` parallel steps (1 .. 64)."""
        captions = self.encode_prompts(prompt, num_images_per_prompt)
        steps = arguments.steps(num_inference_steps, self.transformer.config.image_tokens)
        t, k, w = self.check_sampling(temperature, top_k, guidance_scale)
        generator = arguments.generator(generator)
        self.check_output_type(output_type)
        bar = self.progress_bar(total=steps)
        codes = maskgit.decode(
            self.transformer,
            captions,
            steps,
            t,
            k,
            w,
            generator=generator,
            callback=lambda s, *_: bar.update(1),
        )
        bar.close()
        return self.format_output(self.decode_codes(codes), output_type, return_dict)
