"""atdt_ros.schema, the one validation mechanism of experiment files, domain presets and chain
metadata: typed values from plain data, and errors naming the key's path, the value and what is
accepted, raised as the reader's own error class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest

from atdt_ros import schema


class ReaderError(ValueError):
    pass


@dataclass
class Inner:
    level: Literal[1, 2, 3, 4] = 4
    span: Annotated[tuple[float, float], schema.Interval] = (0.0, 1.0)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Outer:
    name: str
    scale: float = 1.0
    width: int | None = None
    model: Inner = field(default_factory=Inner)
    note: str = field(default="", metadata={"internal": True})


def test_values_are_typed_and_defaults_filled() -> None:
    got = schema.build(Outer, {"name": "x", "scale": 2, "model": {"span": 3, "rgb": [1, 0.5, 0]}})
    assert got == Outer("x", 2.0, None, Inner(4, (3.0, 3.0), (1.0, 0.5, 0.0)))
    assert type(got.scale) is float and type(got.model.rgb[0]) is float


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "model": {"level": 5}}, "model.level: expected one of 1, 2, 3, 4, got 5"),
    ({"name": "x", "model": {"level": True}}, "model.level: expected one of 1, 2, 3, 4, got True"),
    ({"name": "x", "model": {"levle": 1}},
     "model.levle: unknown key; accepted keys: level, span, rgb"),
    ({"name": "x", "note": "n"}, "note: unknown key; accepted keys: name, scale, width, model"),
    ({}, "name: missing required key"),
    ({"name": 3}, "name: expected str, got int 3"),
    ({"name": "x", "scale": "big"}, "scale: expected number, got str 'big'"),
    ({"name": "x", "scale": False}, "scale: expected number, got bool False"),
    ({"name": "x", "width": 1.5}, "width: expected int or null, got float 1.5"),
    ({"name": "x", "model": {"span": [2.0, 1.0]}}, r"model.span: range \[lo, hi\] needs lo <= hi, got \[2.0, 1.0\]"),
    ({"name": "x", "model": {"rgb": [1, 2]}}, r"model.rgb: expected a list of 3 values, got \[1, 2\]"),
    ({"name": "x", "model": {"rgb": [1, "a", 2]}}, r"model.rgb\[1\]: expected number, got str 'a'"),
    ({"name": "x", "model": []}, "model: expected a mapping, got list"),
    ([], "top: expected a mapping, got list"),
])
def test_errors_name_the_path_the_value_and_what_is_accepted(data, message) -> None:
    with pytest.raises(ReaderError, match=f"^{message}$"):
        schema.build(Outer, data, "", ReaderError, root="top")


def test_written_formats_need_every_key_and_may_carry_more() -> None:
    with pytest.raises(ReaderError, match="^scale: missing required key$"):
        schema.build(Outer, {"name": "x"}, "", ReaderError, defaults=False)
    got = schema.build(Inner, {"level": 2, "span": [0, 1], "rgb": [0, 0, 0], "extra": 1},
                       unknown="ignore")
    assert got.level == 2


def test_take_reads_one_key_by_the_same_rules() -> None:
    assert schema.take({"mean": [0, 0.5]}, "mean", list[float], "input") == [0.0, 0.5]
    with pytest.raises(schema.SchemaError,
                       match=r"^input.mean: expected a list of numbers, got \['a', 0.4\] \(item 0: 'a'\)$"):
        schema.take({"mean": ["a", 0.4]}, "mean", list[float], "input")
    with pytest.raises(schema.SchemaError, match="^input.std: missing required key$"):
        schema.take({}, "std", list[float], "input")
