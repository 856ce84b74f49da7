"""What every pipeline of the course shares (chapter 05 introduces it; chapters 06, 08 and 09 reuse
it).

:class:`CoursePipeline` is a ``diffusers.DiffusionPipeline`` with the course's conventions:

* the call is checked at the door (:meth:`CoursePipeline.check_prompts`): prompts must be a string
  or a non-empty list of strings, ``num_images_per_prompt`` a positive integer, ``negative_prompt``
  a string or one per prompt, ``generator`` a ``torch.Generator``; each wrong argument raises a
  ``TypeError``/``ValueError`` that names what is allowed (:mod:`course_lib.arguments`);
* pictures come back as diffusers returns them (:meth:`CoursePipeline.format_output`):
  ``output_type="pil"`` (PIL images), ``"np"`` ([n, H, W, 3] in [0, 1]) or ``"pt"``
  ([n, 3, H, W] in [0, 1]), in an object with ``.images``;
* ``save_pretrained(folder)`` writes a folder that both ``type(pipe).from_pretrained(folder)`` and
  the generic ``diffusers.DiffusionPipeline.from_pretrained(folder)`` load: each course pipeline
  class is made known to diffusers by name when its module is imported (diffusers looks a pipeline's
  class up by the name stored in ``model_index.json``);
* :func:`quiet` silences a pipeline's progress bar for code that calls it many times.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from . import arguments
from .progress import progress_bar


class ImagePipelineOutput(BaseOutput):
    """What a course pipeline returns: ``.images`` (PIL pictures, an array or a tensor)."""

    images: object


class CoursePipeline(DiffusionPipeline):
    """Base of the course's pipelines (not used on its own)."""

    #: output types beyond "pil", "np" and "pt" that a subclass accepts (e.g. "latent")
    extra_output_types: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _make_known_to_diffusers(cls)

    # ---- the call's arguments -------------------------------------------------------------
    @staticmethod
    def check_prompts(prompt, negative_prompt=None, num_images_per_prompt: int = 1):
        """``(prompts, negative_prompts)`` as lists of equal length, each prompt repeated
        ``num_images_per_prompt`` times in a row (diffusers' order); ``negative_prompts`` is None
        when none was given."""
        prompts = arguments.prompts(prompt)
        k = arguments.positive_int(num_images_per_prompt, "num_images_per_prompt")
        negatives = None
        if negative_prompt is not None:
            negatives = arguments.prompts(negative_prompt, name="negative_prompt")
            if len(negatives) == 1 and len(prompts) > 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"negative_prompt must be one string or one per prompt ({len(prompts)}), "
                    f"got {len(negatives)}"
                )
            negatives = [p for p in negatives for _ in range(k)]
        return [p for p in prompts for _ in range(k)], negatives

    def progress_bar(self, iterable=None, total=None):
        """The sampling loop's bar: a text bar (:mod:`course_lib.progress`) configured by
        ``set_progress_bar_config`` (``disable=True`` silences it)."""
        return progress_bar(
            iterable=iterable, total=total, **dict(getattr(self, "_progress_bar_config", {}))
        )

    def check_output_type(self, output_type: str) -> str:
        return arguments.output_type(output_type, ("pil", "np", "pt", *self.extra_output_types))

    # ---- LoRA adapters (chapter 11) ---------------------------------------------------------
    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None):
        """diffusers' name: load an adapter (a ``.safetensors`` file or its state dict) into the
        UNet through diffusers' ``unet.load_lora_adapter`` (peft), and its new words into the text
        encoder (:func:`course_lib.lora.load_lora_weights`). One adapter at a time."""
        from . import lora

        lora.load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name)

    def unload_lora_weights(self):
        """diffusers' name: remove the adapter; the pipeline is the base model again, exactly."""
        from . import lora

        lora.unload_lora_weights(self)

    # ---- the result -------------------------------------------------------------------------
    def format_output(self, images: torch.Tensor, output_type: str, return_dict: bool = True):
        """Pictures [n, 3, H, W] in [0, 1] as ``output_type``: "pt" (the tensor), "np"
        ([n, H, W, 3]) or "pil"; an extra output type (e.g. "latent") passes the tensor through."""
        output_type = self.check_output_type(output_type)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).numpy()
        elif output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _make_known_to_diffusers(cls) -> None:
    """Let ``diffusers.DiffusionPipeline.from_pretrained(folder)`` find ``cls`` by its name
    (diffusers resolves ``model_index.json``'s ``_class_name`` as an attribute of the ``diffusers``
    module). Never shadows a class diffusers itself defines."""
    import diffusers

    try:
        existing = getattr(diffusers, cls.__name__)
    except (AttributeError, RuntimeError, ImportError):
        existing = None
    if existing is None or getattr(existing, "__module__", "").startswith("course_lib"):
        setattr(diffusers, cls.__name__, cls)


@contextlib.contextmanager
def quiet(pipe):
    """Within the block, ``pipe`` shows no progress bar (its own setting is restored after)."""
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        yield pipe
    finally:
        pipe._progress_bar_config = saved
