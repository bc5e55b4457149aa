"""Filelists: one frame per line, ``rgb;right;semantic;depth``, paths relative to the list.

This is the official AT/DT code's format. An empty field means "not available". The dataset
*kind* (how to decode labels and depth) travels beside the list, e.g. in a ``dataset.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from atdt_ros.files import atomic_write

FIELDS: tuple[str, ...] = ("rgb", "right", "semantic", "depth")
SEPARATOR = ";"


class DatasetError(Exception):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class Frame:
    """One frame of a filelist: absolute paths, ``None`` where not available."""

    rgb: Path
    right: Path | None = None
    semantic: Path | None = None
    depth: Path | None = None


def read_filelist(path: str | os.PathLike) -> list[Frame]:
    """Parse a filelist into frames with absolute paths (relative ones resolve against its folder)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read filelist {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"filelist {path} is not UTF-8 text: {exc}") from exc
    base = path.resolve().parent
    frames: list[Frame] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(SEPARATOR)]
        if len(fields) != len(FIELDS):
            raise DatasetError(
                f"{path}:{number}: expected {len(FIELDS)} fields separated by "
                f"'{SEPARATOR}' ({SEPARATOR.join(FIELDS)}), found {len(fields)}: {line!r}"
            )
        if not fields[0]:
            raise DatasetError(f"{path}:{number}: the rgb field (first) must not be empty: {line!r}")
        resolved = [Path(os.path.normpath(base / f)) if f else None for f in fields]
        frames.append(Frame(*resolved))  # type: ignore[arg-type]
    return frames


def _relative(path: Path | None, base: Path, list_path: Path) -> str:
    if path is None:
        return ""
    text = os.path.relpath(Path(path).absolute(), base)
    if SEPARATOR in text or "\n" in text or "\r" in text:
        raise DatasetError(f"cannot write {list_path}: path {path} contains ';' or a newline")
    return text.replace(os.sep, "/")


def write_filelist(path: str | os.PathLike, frames: Iterable[Frame]) -> Path:
    """Write frames as a filelist with paths relative to its folder (atomically)."""
    path = Path(path)
    base = path.absolute().parent
    base.mkdir(parents=True, exist_ok=True)
    lines = []
    for frame in frames:
        if frame.rgb is None:
            raise DatasetError(f"cannot write {path}: a frame has no rgb path")
        lines.append(SEPARATOR.join(_relative(getattr(frame, f), base, path) for f in FIELDS))
    atomic_write(path, "".join(line + "\n" for line in lines))
    return path


def read_list_kind(path: str | os.PathLike) -> str | None:
    """The dataset kind declared by a ``dataset.yaml`` beside a filelist, or None if there is none."""
    meta = Path(path).absolute().parent / "dataset.yaml"
    if not meta.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read {meta}: {exc}") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind is not None and not isinstance(kind, str):
        raise DatasetError(f"{meta}: 'kind' must be a string, got {kind!r}")
    return kind
