"""How a block of the run config becomes a frozen dataclass, written once for every block.

- ``build(cls, raw, where)``: a YAML mapping into ``cls``. An unknown key is an error that lists
  the known ones and suggests the nearest (``n_concept`` → ``n_concepts``). A field marked
  ``FLAT`` holds a nested library config whose fields are written in the same YAML block (the
  ``sae`` block holds the fields of ``RASAEConfig`` and ``TrainConfig``); a field marked
  ``SET_BY_RUN`` is not the user's to write (the SAE's width is the encoder's).
- ``check_fields(obj)``: what a ``__post_init__`` calls. A ``Literal[...]`` field must hold
  one of its values; every error is a ``ConfigError`` that names the field and the fix.

No dependency beyond the standard library, so every config module may import it.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")

FLAT = {"flat": True}
"""Metadata of a field holding a nested config whose fields are written in the parent's block."""
SET_BY_RUN = {"set_by_run": True}
"""Metadata of a field the pipeline fills in (not written in a config file)."""


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the field and the fix."""


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a mistyped ``name``, if any is close (difflib's ratio ≥ 0.6)."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return close[0] if close else None


def unknown_keys_error(unknown: list[str], known: Iterable[str], where: str | None) -> ConfigError:
    """The error for keys the block ``where`` (None: the top level) does not have, each with
    its nearest known field."""
    known = sorted(known)
    hints = [f"'{k}' → did you mean '{near}'?" for k in unknown if (near := nearest(k, known))]
    hint = f" ({'; '.join(hints)})" if hints else ""
    if where is None:
        return ConfigError(f"unknown top-level field(s) {unknown}{hint}; allowed: {known}")
    return ConfigError(f"unknown field(s) {unknown} in '{where}'{hint}; known fields: {known}")


def _flat(f: Field[Any]) -> bool:
    return bool(f.metadata.get("flat"))


def _nested_class(f: Field[Any]) -> type:
    if f.default_factory is MISSING:
        raise TypeError(f"FLAT field {f.name} needs a default_factory")
    return type(f.default_factory())


def yaml_fields(cls: type) -> dict[str, str | None]:
    """Every key a YAML block of ``cls`` may hold → the FLAT field it belongs to (None: own)."""
    out: dict[str, str | None] = {}
    for f in fields(cls):
        if f.metadata.get("set_by_run"):
            continue
        if _flat(f):
            out.update(dict.fromkeys(yaml_fields(_nested_class(f)), f.name))
        else:
            out[f.name] = None
    return out


def build(cls: type[T], raw: object, where: str) -> T:
    """``cls`` from the mapping ``raw`` (None: every default) of the config block ``where``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where}' must be a mapping, got {type(raw).__name__}")
    known = yaml_fields(cls)
    unknown = sorted(str(k) for k in set(raw) - set(known))
    if unknown:
        raise unknown_keys_error(unknown, known, where)
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        owner = known[key]
        if owner is None:
            own[key] = value
        else:
            nested.setdefault(owner, {})[key] = value
    spec: Any = cls  # a dataclass type
    try:
        for f in fields(spec):
            if _flat(f):
                own[f.name] = _construct(_nested_class(f), nested.get(f.name, {}))
        return _construct(cls, own)
    except ConfigError as exc:
        raise ConfigError(_placed(str(exc), where, known)) from exc


def _construct(cls: type[T], kwargs: dict[str, Any]) -> T:
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _placed(message: str, where: str, names: Iterable[str]) -> str:
    """``where.field must ...`` for a message that starts with a field's name, else
    ``where: ...`` (a message that already names ``where`` is kept)."""
    if message.split(" ", 1)[0] in set(names):
        return f"{where}.{message}"
    return (
        message if f"'{where}'" in message or message.startswith(where) else f"{where}: {message}"
    )


@functools.cache
def _literal_choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The values of the field's ``Literal[...]`` (or ``Literal[...] | None``) annotation, an
    alias of one included, else None."""
    annotation: Any = {f.name: f.type for f in fields(cls)}[name]
    if isinstance(annotation, str):  # ``from __future__ import annotations``
        namespace = {**vars(sys.modules[cls.__module__]), "typing": typing}
        try:
            annotation = eval(annotation, namespace)  # the module's own annotation
        except (NameError, TypeError):  # a name imported for type checking only: no choice
            return None
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    args = typing.get_args(annotation)  # Literal[...] | None: the choices or null
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    if len(literals) == 1 and len(args) == 2 and type(None) in args:
        return (*typing.get_args(literals[0]), None)
    return None


def check_fields(obj: object) -> None:
    """Check every ``Literal`` field of the dataclass ``obj`` holds one of its values."""
    assert is_dataclass(obj)
    for f in fields(obj):
        choices = _literal_choices(obj.__class__, f.name)
        value = getattr(obj, f.name)
        if choices is not None and value not in choices:
            near = nearest(str(value), [str(c) for c in choices if c is not None])
            hint = f" (did you mean {near!r}?)" if near else ""
            shown = ["null" if c is None else c for c in choices]
            raise ConfigError(f"{f.name} must be one of {shown}, got {value!r}{hint}")


def check_ints(obj: object, least: int, *names: str) -> None:
    """Each named field is an integer (not a bool) ≥ ``least``."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer ≥ {least}, got {value!r}")


def check_finite(name: str, value: object) -> None:
    """``value`` is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


def flat_dict(obj: object) -> dict[str, Any]:
    """A config dataclass as its YAML block: FLAT fields merged in, SET_BY_RUN fields left out."""
    assert is_dataclass(obj)
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.metadata.get("set_by_run"):
            continue
        value = getattr(obj, f.name)
        out.update(flat_dict(value) if _flat(f) else {f.name: value})
    return out
