"""Typed configs: dataclasses that reject unknown keys and round-trip through a checkpoint's JSON.

Every model family of the course describes itself with a :class:`Config` subclass (chapter 00 shows
the pattern; chapter 05's :class:`~course_lib.models.text_to_image.TextToImageConfig` is the
largest). A misspelt key is an error that names the allowed ones, never a silently ignored setting::

    >>> TextToImageConfig.from_dict({"fodl": 4})
    ValueError: TextToImageConfig has no field 'fodl'; allowed: fold, text, unet, ...

Nested configs are dataclass fields of their own :class:`Config` type; ``from_dict`` builds them
from nested dicts and ``to_dict`` writes them back (lists stay lists, so the JSON in
``data/checkpoints/manifest.json`` reads back to an equal config).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def _field_types(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (
        NameError,
        TypeError,
    ):  # unresolved forward references: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _config_class(tp) -> type | None:
    """The Config subclass a field holds (``Sub`` or ``Sub | None``), else None."""
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and issubclass(arg, Config):
            return arg
    return None


@dataclasses.dataclass
class Config:
    """Base of the course's typed configs (use with ``@dataclasses.dataclass``)."""

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: "dict | Config | None" = None, **overrides):
        """Build from a (possibly partial, possibly nested) dict; missing keys take their defaults,
        unknown keys raise ``ValueError`` naming the allowed ones. ``overrides`` are applied on top
        (a nested dict override updates the nested config key by key)."""
        if isinstance(data, cls):
            data = data.to_dict()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict takes a dict, got {type(data).__name__}")
        data = _deep_update(dict(data), overrides)
        allowed = cls.allowed_keys()
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field {', '.join(repr(k) for k in unknown)}; "
                f"allowed: {', '.join(allowed)}"
            )
        types = _field_types(cls)
        kwargs = {}
        for name, value in data.items():
            sub = _config_class(types.get(name))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = list(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict (nested configs as dicts, tuples as lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes):
        """A copy with ``changes`` (checked like :meth:`from_dict`)."""
        return type(self).from_dict(self.to_dict(), **changes)


def _deep_update(base: dict, changes: dict) -> dict:
    for k, v in changes.items():
        if isinstance(v, Config):
            v = v.to_dict()
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_update(dict(base[k]), v)
        elif isinstance(v, dict) and isinstance(base.get(k), Config):
            base[k] = _deep_update(base[k].to_dict(), v)
        else:
            base[k] = v
    return base


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
