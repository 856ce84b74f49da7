"""LoRA adapters on the course's text-to-image pipelines (chapter 11, personalisation).

LoRA (Hu et al. 2021) leaves a trained weight matrix ``W`` frozen and learns a low-rank change
beside it: ``W x + (alpha / r) B A x`` with ``A`` [r, in] and ``B`` [out, r], ``r`` much smaller
than the matrix's sides. ``B`` starts at zero, so the adapted model starts as the base model. Only
``A`` and ``B`` are trained and shipped: an adapter file is a small fraction of the model's.

* :class:`LoRALinear`: the layer written out (chapter 11's exercise), equal to peft's
  ``lora.Linear`` on the same weights; :func:`apply_lora_layers` puts it into a UNet from an
  adapter's weights.
* :func:`lora_config` / :func:`add_lora`: peft's ``LoraConfig`` on the UNet's attention projections
  through diffusers' ``unet.add_adapter`` (what training uses).
* :func:`add_words` / :func:`remove_words`: new words for chapter 05's learned text encoder, whose
  word table is fixed (an unknown word is refused). Each new word gets a new embedding row, trained
  with the adapter, as textual inversion (Gal et al. 2022) does; every other row stays as it was.
* :func:`adapter_state_dict`, :func:`load_lora_weights`, :func:`unload_lora_weights`: the adapter as
  one safetensors file (diffusers' key names, ``unet.<module>.lora_A.weight``, plus
  ``text_encoder.added_words.<word>`` rows) and diffusers' pipeline method names;
  :class:`course_lib.pipelines.CoursePipeline` offers both as methods. Loading goes through
  diffusers' own ``unet.load_lora_adapter`` (peft underneath); unloading restores the base model
  exactly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import shapes

#: The attention projections of every Transformer block of the UNet (self- and cross-attention).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_PREFIX = "unet."
WORDS_PREFIX = "text_encoder.added_words."
#: peft's default adapter name inside the UNet.
ADAPTER_NAME = "default"


# --------------------------------------------------------------------------------------------
# The layer, written out
# --------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))``: a frozen ``nn.Linear`` plus a rank-``r`` update.

    ``lora_A`` [r, in] and ``lora_B`` [out, r] are ``nn.Linear`` layers without bias, as in peft;
    given ``A``/``B`` tensors they take those values, else ``A`` is drawn small and ``B`` is zero
    (the layer starts equal to ``base``). The reference of chapter 11's exercise."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, A=None, B=None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        self.base, self.r, self.alpha = base, r, float(alpha)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        with torch.no_grad():
            for layer, value in ((self.lora_A, A), (self.lora_B, B)):
                if value is not None:
                    if tuple(value.shape) != tuple(layer.weight.shape):
                        raise ValueError(
                            f"expected a tensor of shape {tuple(layer.weight.shape)}, "
                            f"got {tuple(value.shape)}"
                        )
                    layer.weight.copy_(value)
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in]
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(x))  # [..., out]


def _targets(unet: nn.Module, targets) -> list[str]:
    names = [
        n
        for n, m in unet.named_modules()
        if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
    ]
    if not names:
        raise ValueError(f"no nn.Linear of the UNet ends with any of {tuple(targets)}")
    return names


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@contextlib.contextmanager
def apply_lora_layers(unet: nn.Module, state: dict, r: int, alpha: float, layer_cls=LoRALinear):
    """Within the block, every UNet linear layer named in ``state`` (an adapter's
    ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` tensors) is ``layer_cls(base, r, alpha, A,
    B)`` (:class:`LoRALinear` or a learner's own); the base layers are put back after."""
    pairs: dict[str, dict] = {}
    for key, value in state.items():
        if key.startswith(UNET_PREFIX):
            module, _, rest = key[len(UNET_PREFIX) :].rpartition(".lora_")
            pairs.setdefault(module, {})[rest.split(".")[0]] = value
    if not pairs:
        raise ValueError("state holds no 'unet.<module>.lora_A.weight' tensors")
    saved = {}
    try:
        for name, ab in pairs.items():
            base = unet.get_submodule(name)
            saved[name] = base
            _set_module(unet, name, layer_cls(base, r, alpha, ab["A"], ab["B"]))
        yield unet
    finally:
        for name, base in saved.items():
            _set_module(unet, name, base)


# --------------------------------------------------------------------------------------------
# peft on the UNet (training)
# --------------------------------------------------------------------------------------------
def lora_config(r: int = 4, alpha: float | None = None, targets=DEFAULT_TARGETS):
    """peft's ``LoraConfig`` for the UNet's attention projections (``alpha`` default: ``r``, so the
    update is scaled by 1 and an adapter file needs no stored alpha)."""
    from peft import LoraConfig

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    return LoraConfig(
        r=r,
        lora_alpha=float(alpha if alpha is not None else r),
        target_modules=list(targets),
        init_lora_weights="gaussian",
        lora_dropout=0.0,
    )


def add_lora(unet, config) -> list[nn.Parameter]:
    """Freeze ``unet`` and add peft LoRA layers to it (diffusers' ``unet.add_adapter``); returns the
    LoRA parameters, the only ones left trainable."""
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


# --------------------------------------------------------------------------------------------
# New words for the learned text encoder
# --------------------------------------------------------------------------------------------
class AddedWordsEmbedding(nn.Module):
    """A word table with rows appended: ids below the base table's size read the base rows (left
    as they were), the next ids read ``added`` [k, dim]."""

    def __init__(self, base: nn.Embedding, added: torch.Tensor):
        super().__init__()
        self.base = base
        self.added = nn.Parameter(added.detach().clone().to(base.weight))

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.added])  # [V + k, dim]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [n, L] -> [n, L, dim]
        return F.embedding(ids, self.weight)


def _check_encoder(text_encoder) -> None:
    tok = getattr(text_encoder, "tokenizer", None)
    if not (hasattr(text_encoder, "embed") and isinstance(tok, shapes.Tokenizer)):
        raise TypeError(
            "adapters with new words need chapter 05's learned text encoder (ShapesTextEncoder), "
            f"got {type(text_encoder).__name__}"
        )


def added_words(text_encoder) -> list[str]:
    """The words :func:`add_words` gave ``text_encoder`` (empty for the base encoder)."""
    saved = getattr(text_encoder, "_lora_saved", None)
    return [] if saved is None else list(text_encoder.tokenizer.itos[len(saved[1]) :])


def add_words(text_encoder, words: dict) -> nn.Parameter:
    """Give chapter 05's text encoder new words: ``words`` maps each new word to its first
    embedding row (a tensor [dim], e.g. a known word's row) . The tokenizer learns them with the
    next free ids, the word table gets one trainable row each; returns those rows [k, dim]."""
    _check_encoder(text_encoder)
    if getattr(text_encoder, "_lora_saved", None) is not None:
        raise ValueError(f"this text encoder already has added words {added_words(text_encoder)}")
    if not isinstance(words, dict) or not words:
        raise ValueError("words must be a non-empty dict {word: first embedding row [dim]}")
    tok = text_encoder.tokenizer
    dim = text_encoder.embed.weight.shape[1]
    for w, row in words.items():
        if not isinstance(w, str) or shapes.split_words(w) != [w]:
            raise ValueError(f"a new word must be one lower-case word, got {w!r}")
        if w in tok.stoi:
            raise ValueError(f"{w!r} is already in the vocabulary")
        if not isinstance(row, torch.Tensor) or tuple(row.shape) != (dim,):
            raise ValueError(f"the first row of {w!r} must be a tensor of shape ({dim},)")
    old = [t for t in tok.itos if t not in shapes.SPECIAL_TOKENS]
    text_encoder._lora_saved = (text_encoder.embed, tok)
    text_encoder.tokenizer = shapes.Tokenizer(old + list(words), max_length=tok.max_length)
    rows = torch.stack([r.detach() for r in words.values()])  # [k, dim]
    text_encoder.embed = AddedWordsEmbedding(text_encoder.embed, rows)
    return text_encoder.embed.added


def remove_words(text_encoder) -> None:
    """Undo :func:`add_words`: the original word table and tokenizer (nothing to do without)."""
    saved = getattr(text_encoder, "_lora_saved", None)
    if saved is None:
        return
    text_encoder.embed, text_encoder.tokenizer = saved
    text_encoder._lora_saved = None


# --------------------------------------------------------------------------------------------
# One file: save, load, unload
# --------------------------------------------------------------------------------------------
def adapter_state_dict(unet, text_encoder=None) -> dict:
    """The adapter's tensors: the UNet's LoRA weights under diffusers' key names
    (``unet.<module>.lora_A.weight`` [r, in], ``...lora_B.weight`` [out, r]) and each added word's
    row (``text_encoder.added_words.<word>`` [dim])."""
    from peft.utils import get_peft_model_state_dict

    if not getattr(unet, "peft_config", None):
        raise ValueError("the UNet holds no LoRA adapter (add_lora or load_lora_weights first)")
    state = {
        UNET_PREFIX + k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()
    }
    if text_encoder is not None:
        for i, w in enumerate(added_words(text_encoder)):
            state[WORDS_PREFIX + w] = text_encoder.embed.added[i].detach().cpu().contiguous()
    return state


def _read(source) -> dict:
    if isinstance(source, dict):
        return dict(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file() or path.suffix != ".safetensors":
            raise ValueError(f"expected an adapter .safetensors file, got {str(path)!r}")
        from safetensors.torch import load_file

        return load_file(str(path))
    raise TypeError(f"expected a path or a state dict, got {type(source).__name__}")


def load_lora_weights(pipe, pretrained_model_name_or_path_or_dict, adapter_name=None) -> None:
    """diffusers' ``pipe.load_lora_weights``: the UNet's LoRA weights through diffusers'
    ``unet.load_lora_adapter`` (peft), and the added words into the text encoder. One adapter at a
    time: unload the last one first."""
    state = _read(pretrained_model_name_or_path_or_dict)
    unet_state = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX) and "lora_" in k}
    words = {k[len(WORDS_PREFIX) :]: v for k, v in state.items() if k.startswith(WORDS_PREFIX)}
    other = sorted(set(state) - set(unet_state) - {WORDS_PREFIX + w for w in words})
    if not unet_state or other:
        raise ValueError(
            "an adapter holds 'unet.<module>.lora_A.weight' / 'lora_B.weight' tensors and "
            f"'text_encoder.added_words.<word>' rows; got {other[:3] or 'no LoRA tensors'}"
        )
    if getattr(pipe.unet, "peft_config", None):
        raise ValueError("this pipeline already holds an adapter: unload_lora_weights() first")
    if words:
        _check_encoder(pipe.text_encoder)
    device = pipe.unet.device
    unet_state = {k: v.to(device) for k, v in unet_state.items()}
    if hasattr(pipe.unet, "load_lora_adapter"):
        pipe.unet.load_lora_adapter(
            unet_state, prefix="unet", adapter_name=adapter_name or ADAPTER_NAME
        )
    else:  # diffusers before 0.31: the same through peft directly (alpha = r, scaling 1)
        from peft import set_peft_model_state_dict

        plain = {k[len(UNET_PREFIX) :]: v for k, v in unet_state.items()}
        r = next(v.shape[0] for k, v in plain.items() if ".lora_A." in k)
        modules = sorted({k.rpartition(".lora_")[0] for k in plain})
        pipe.unet.add_adapter(lora_config(r, targets=modules), adapter_name=ADAPTER_NAME)
        set_peft_model_state_dict(pipe.unet, plain, adapter_name=ADAPTER_NAME)
    if words:
        add_words(pipe.text_encoder, {w: v.to(device) for w, v in words.items()})
        pipe.text_encoder.embed.added.requires_grad_(False)


def unload_lora_weights(pipe) -> None:
    """diffusers' ``pipe.unload_lora_weights``: remove the UNet's LoRA layers (diffusers'
    ``unet.unload_lora``) and the added words; the pipeline is the base model again, exactly."""
    unet = pipe.unet
    if getattr(unet, "peft_config", None):
        if hasattr(unet, "unload_lora"):
            unet.unload_lora()
        else:  # diffusers before 0.31
            from diffusers.utils import recurse_remove_peft_layers

            recurse_remove_peft_layers(unet)
            del unet.peft_config
            unet._hf_peft_config_loaded = None
    remove_words(pipe.text_encoder)


def lora_parameter_count(state: dict) -> int:
    """Numbers an adapter holds (its LoRA matrices and added rows)."""
    return sum(v.numel() for v in state.values())
