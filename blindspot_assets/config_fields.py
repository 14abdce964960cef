"""How a block of the run config becomes a frozen dataclass, written once for every block.

- ``build(cls, raw, where)``: a YAML mapping into ``cls``. An unknown key is an error that lists
  the known ones and suggests the nearest (``n_concept`` → ``n_concepts``). A field marked
  ``FLAT`` holds a nested library config whose fields are written in the same YAML block (the
  ``sae`` block holds the fields of ``RASAEConfig`` and ``TrainConfig``); a field marked
  ``SET_BY_RUN`` is not the user's to write (the SAE's width is the encoder's).
- ``check_fields(obj)``: what a ``__post_init__`` calls first. A ``Literal[...]`` field must
  hold one of its values, an ``int``/``float``/``str``/``bool`` field a value of its type;
  every error is a ``ConfigError`` that names the field and the fix.

No dependency beyond the standard library, so every config module may import it.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
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
def _annotation(cls: type, name: str) -> Any:
    """The field's annotation as a type (an alias resolved), or None when it names something
    imported for type checking only."""
    annotation: Any = {f.name: f.type for f in fields(cls)}[name]
    if isinstance(annotation, str):  # ``from __future__ import annotations``
        namespace = {**vars(sys.modules[cls.__module__]), "typing": typing}
        try:
            return eval(annotation, namespace)  # the module's own annotation
        except (NameError, TypeError):
            return None
    return annotation


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (itself, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else None), True
    return annotation, False


# the plain types a field may be checked against: what a value must be, and its name in words
_PLAIN: dict[Any, tuple[Callable[[object], bool], str]] = {
    int: (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
}


def _check_field(name: str, annotation: Any, value: object) -> None:
    kind, optional = _optional(annotation)
    if value is None and optional:
        return
    null = " or null" if optional else ""
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            near = nearest(str(value), [str(c) for c in choices])
            hint = f" (did you mean {near!r}?)" if near else ""
            raise ConfigError(f"{name} must be one of {list(choices)}{null}, got {value!r}{hint}")
    elif kind in _PLAIN:
        accepts, words = _PLAIN[kind]
        if not accepts(value):
            raise ConfigError(f"{name} must be {words}{null}, got {value!r}")


def check_fields(obj: object) -> None:
    """Check each field of the dataclass ``obj`` against its annotation: a ``Literal`` field
    holds one of its values (the nearest is suggested), an int, float, str or bool field holds
    one (an int is a number; a bool is not), ``| None`` allows null. Other types are the
    ``__post_init__``'s own to check."""
    assert is_dataclass(obj)
    for f in fields(obj):
        annotation = _annotation(obj.__class__, f.name)
        if annotation is not None:
            _check_field(f.name, annotation, getattr(obj, f.name))


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
