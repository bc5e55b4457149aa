"""The one validation mechanism for configuration the project reads: plain data -> typed values.

Experiment YAML (``atdt_train.config``), simulator domain presets (``atdt_train.sim.domain``) and
the exported chain's ``metadata.json`` (:mod:`atdt_ros.artifact`) are checked by the same rules,
driven by type hints: a dataclass is a mapping whose keys are its fields; ``bool``, ``int``,
``float`` (an int is taken), ``str``, ``None``, ``Literal[...]``, unions, ``list`` / ``dict``
(bare or ``list[X]``), fixed tuples (a YAML list of that length) and :data:`Interval` ranges.
Every error names the key with its path (``model.feature_level``), the value and what is
accepted, and is raised as the caller's own exception class (``ConfigError``, ``DomainError``,
``ArtifactError``), so each reader keeps its error type. Standard library only: it lives on the
vehicle side so that both packages can use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal

__all__ = ["Interval", "SchemaError", "build", "describe", "take", "convert"]


class SchemaError(ValueError):
    """Plain data that does not follow its schema (the default error class)."""


@dataclasses.dataclass(frozen=True)
class _IntervalMark:
    """Marks ``tuple[T, T]`` as a closed interval: one number means [v, v], and lo <= hi."""


Interval = _IntervalMark()
"""Use as ``Annotated[tuple[float, float], Interval]``."""

_NAMES = {bool: "bool (true/false)", int: "int", float: "number", str: "str", list: "list",
          dict: "mapping", type(None): "null"}
_PLURALS = {bool: "booleans", int: "ints", float: "numbers", str: "strings"}


def describe(tp: Any) -> str:
    """What a type accepts, in words (``one of 18, 34, 50``, ``int or null``)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return describe(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], describe(args[0]))}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_PLURALS.get(item, describe(item))}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _got(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.80}"


def convert(value: Any, tp: Any, path: str, error: type[Exception] = SchemaError,
            unknown: str = "error", defaults: bool = True) -> Any:
    """``value`` checked against (and converted to) type ``tp``; ``error`` naming ``path``."""
    def fail(detail: str | None = None) -> Exception:
        return error(f"{path}: {detail or f'expected {describe(tp)}, got {_got(value)}'}")

    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *marks = typing.get_args(tp)
        if Interval in marks:
            if not isinstance(value, list):
                value = [value, value]  # one number: a fixed value for the range
            out = convert(value, inner, path, error, unknown, defaults)
            if out[0] > out[1]:
                raise fail(f"range [lo, hi] needs lo <= hi, got {value!r}")
            return out
        return convert(value, inner, path, error, unknown, defaults)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return convert(value, option, path, error, unknown, defaults)
            except error:
                continue
        raise fail()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(a) for a in choices}:
            return value
        raise fail(f"expected {describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, error, unknown=unknown, defaults=defaults)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_items(value, args[0], path, error, fail))
        if len(value) != len(args):
            raise fail(f"expected a list of {len(args)} values, got {value!r:.80}")
        return tuple(convert(v, a, f"{path}[{i}]", error, unknown, defaults)
                     for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        return _items(value, typing.get_args(tp)[0], path, error, fail)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        _, item = typing.get_args(tp)
        return {k: convert(v, item, f"{path}.{k}", error, unknown, defaults) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise fail(f"expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp in (str, list, dict):
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - a schema the mechanism does not know
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    raise fail()


def _items(value: list, item: Any, path: str, error: type[Exception], fail) -> list:
    """Every element of a list as ``item``; one bad element fails the list as a whole."""
    out = []
    for i, v in enumerate(value):
        try:
            out.append(convert(v, item, f"{path}[{i}]", error))
        except error:
            raise fail(f"expected {describe(list[item])}, got {value!r:.80} (item {i}: {v!r})") from None
    return out


def build(cls: type, data: Any, path: str = "", error: type[Exception] = SchemaError, *,
          root: str = "", unknown: str = "error", defaults: bool = True) -> Any:
    """A dataclass ``cls`` from a mapping, field by field (see the module docstring).

    ``unknown``: ``"error"`` refuses keys that are not fields, ``"ignore"`` skips them.
    ``defaults=False`` requires every field (a format written by a program, not by hand).
    Fields with ``metadata={"internal": True}`` are not read from data. ``root`` names the
    top level in messages when ``path`` is empty.
    """
    if not isinstance(data, dict):
        raise error(f"{path or root or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    if unknown == "error":
        for key in data:
            if key not in fields:
                raise error(f"{_join(path, key)}: unknown key; accepted keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            kwargs[name] = convert(data[name], hints[name], key, error, unknown, defaults)
        elif not defaults or (f.default is dataclasses.MISSING
                              and f.default_factory is dataclasses.MISSING):
            raise error(f"{key}: missing required key")
    return cls(**kwargs)


def take(data: Any, key: str, tp: Any, path: str = "", error: type[Exception] = SchemaError) -> Any:
    """One required key of a mapping, checked as type ``tp`` (the mechanism for readers that
    walk a mapping by hand)."""
    if not isinstance(data, dict):
        raise error(f"{path or 'top level'}: expected a mapping, got {type(data).__name__}")
    if key not in data:
        raise error(f"{_join(path, key)}: missing required key")
    return convert(data[key], tp, _join(path, key), error)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)
