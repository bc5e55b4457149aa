"""The exported-chain format: a directory holding the chain's weights and ``metadata.json``.

``atdt_train export`` writes it; the node and the replay tool read it without importing any
training code. The metadata records what the node needs (input size and normalisation, the
task of each output, the class map, depth units and range, how to turn the depth output into
metres) and what produced it (source checkpoint hashes, model hash, library versions, parity
measured against the eager model). ``format_version`` is checked on load: a reader refuses
artifacts written by a newer, incompatible format.

Every file of the chain is listed in ``files`` with its SHA-256; :func:`format_path` hands a
reader a format's file only after checking that each file of that format lies inside the
artifact directory (no absolute path, no ``..``, no symbolic link out of it) and has the recorded
hash. Which formats may be loaded at all is the backends' business: a .pt2 program is unpickled
by ``torch.export.load`` and can run code, so it needs the reader's explicit trust
(:mod:`atdt_ros.backends`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atdt_ros import schema
from atdt_ros.files import atomic_write

FORMAT_VERSION: int = 2
"""Version of the metadata schema below; bumped on any incompatible change (2: ``files``)."""

METADATA_FILE: str = "metadata.json"
ENGINES_DIR: str = "engines"

IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean (on [0, 1] pixels) used to normalise network inputs (ImageNet)."""
IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation used to normalise network inputs (ImageNet)."""

FORMAT_FILES: dict[str, str] = {"pt2": "chain.pt2", "onnx": "chain.onnx"}
"""Weight file of each portable export format inside the artifact directory."""
FORMAT_COMPANIONS: dict[str, tuple[str, ...]] = {"onnx": (".data",)}
"""Suffixes of files a format's main file brings along (ONNX external data: chain.onnx.data)."""

TASKS: tuple[str, ...] = ("depth", "semantic")
DIRECTIONS: dict[str, tuple[str, str]] = {
    "dep2sem": ("depth", "semantic"),
    "sem2dep": ("semantic", "depth"),
}
"""Transfer direction -> (task 1, task 2): task 1 comes from D1(E1(x)), task 2 from D2(G(E1(x)))."""


class ArtifactError(ValueError):
    """An exported chain that is missing, corrupt or incompatible with this reader."""


@dataclass(frozen=True)
class InputSpec:
    """The network input: a normalised float32 NCHW batch of RGB images."""

    height: int
    width: int
    channels: str = "rgb"
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    dtype: str = "float32"
    layout: str = "NCHW"


@dataclass(frozen=True)
class OutputSpec:
    """One output of the chain: its task, element type and symbolic shape."""

    task: str
    dtype: str
    shape: tuple[str, ...]


@dataclass(frozen=True)
class ClassSpec:
    """The class map carried by the artifact (ids, names, RGB colours, unlabeled id)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    unlabeled_id: int


@dataclass(frozen=True)
class DepthSpec:
    """How the depth output maps to metres.

    With ``focal_normalised`` the network predicts depth for a camera of focal ``focal_ref``
    pixels: metres = output * focal_px / focal_ref, where focal_px is the camera's fx at the
    network input resolution (from camera_info, else ``default_focal``). With
    ``height_normalised`` as well, for a camera ``height_ref`` metres above the road: metres =
    output * (focal_px / focal_ref) * (height / height_ref), the height from the node's
    ``camera_height`` parameter, else ``default_camera_height`` (that of the parity frames'
    dataset). Both keys are optional in metadata.json (absent: False, 1.0, 1.0).
    """

    units: str
    min: float
    max: float
    focal_normalised: bool
    focal_ref: float
    default_focal: float
    height_normalised: bool = False
    height_ref: float = 1.0
    default_camera_height: float = 1.0


@dataclass(frozen=True)
class ParityTolerance:
    """Largest accepted difference between an exported format and the eager model."""

    depth_max_abs: float
    semantic_min_agreement: float


@dataclass(frozen=True)
class Metadata:
    """Everything ``metadata.json`` holds (see the module docstring)."""

    input: InputSpec
    outputs: dict[str, OutputSpec]
    classes: ClassSpec
    depth: DepthSpec
    direction: str
    tasks: dict[str, str]
    formats: dict[str, str]
    parity_tolerance: ParityTolerance
    parity: dict[str, dict[str, float]]
    sources: dict[str, str]
    model_hash: str
    files: dict[str, str]  # relative path -> SHA-256 of every file of the chain
    versions: dict[str, str]
    created: str
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to the JSON text of ``metadata.json``."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_metadata(directory: str | os.PathLike, metadata: Metadata) -> Path:
    """Validate and atomically write ``metadata.json`` into an artifact directory."""
    validate(json.loads(metadata.to_json()), source=str(directory))
    path = Path(directory) / METADATA_FILE
    atomic_write(path, metadata.to_json())
    return path


def load_metadata(directory: str | os.PathLike) -> Metadata:
    """Read and validate an artifact's metadata; raises ArtifactError naming file and fault."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist "
                            f"(expected a directory written by `atdt_train export`)")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {directory} is not an exported chain "
                            f"(write one with `atdt_train export`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt: {exc}") from exc
    return validate(raw, source=str(path))


def _need(obj: Any, key: str, kind: Any, where: str) -> Any:
    """One required key of the metadata, checked by the project's validation mechanism."""
    return schema.take(obj, key, kind, where, ArtifactError)


def _optional(obj: dict, key: str, kind: Any, where: str, default: Any) -> Any:
    """An optional key of the metadata (added after format_version 2 was fixed): ``default`` when absent."""
    return default if key not in obj else _need(obj, key, kind, where)


def _numbers(obj: dict, key: str, where: str) -> tuple[float, ...]:
    return tuple(_need(obj, key, list[float], where))


def validate(raw: dict, source: str = METADATA_FILE) -> Metadata:
    """Check a parsed metadata object against the schema and return it typed."""
    where = source
    version = _need(raw, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {version} is not supported by this node "
            f"(it reads format_version {FORMAT_VERSION}); re-export the model with this "
            f"version of atdt or update the node")
    inp = _need(raw, "input", dict, where)
    w = where + ".input"
    height, width = _need(inp, "height", int, w), _need(inp, "width", int, w)
    if height <= 0 or width <= 0:
        raise ArtifactError(f"{w}: height and width must be positive, got {height}x{width}")
    channels = _need(inp, "channels", str, w)
    if channels != "rgb":
        raise ArtifactError(f"{w}.channels: expected 'rgb', got {channels!r}")
    mean, std = _numbers(inp, "mean", w), _numbers(inp, "std", w)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ArtifactError(f"{w}: mean and std must hold 3 values, std positive")
    dtype = _need(inp, "dtype", str, w)
    layout = _need(inp, "layout", str, w)
    if dtype != "float32" or layout != "NCHW":
        raise ArtifactError(f"{w}: expected dtype float32 and layout NCHW, got {dtype} {layout}")
    input_spec = InputSpec(height, width, channels, mean, std, dtype, layout)  # type: ignore[arg-type]

    outs = _need(raw, "outputs", dict, where)
    outputs = {}
    for name in TASKS:
        o = _need(outs, name, dict, where + ".outputs")
        ow = f"{where}.outputs.{name}"
        outputs[name] = OutputSpec(_need(o, "task", str, ow), _need(o, "dtype", str, ow),
                                   tuple(str(s) for s in _need(o, "shape", list, ow)))

    cls = _need(raw, "classes", dict, where)
    cw = where + ".classes"
    ids = tuple(_need(cls, "ids", list, cw))
    names = tuple(_need(cls, "names", list, cw))
    raw_colors = _need(cls, "colors", list, cw)
    if not all(isinstance(c, list) for c in raw_colors):
        raise ArtifactError(f"{cw}.colors: expected a list of [r, g, b] lists, got {raw_colors!r:.80}")
    colors = tuple(tuple(c) for c in raw_colors)
    unlabeled = _need(cls, "unlabeled_id", int, cw)
    if not ids or not (len(ids) == len(names) == len(colors)):
        raise ArtifactError(f"{cw}: ids, names and colors must be non-empty and equally long")
    for i, c in zip(ids, colors):
        if not isinstance(i, int) or not 0 <= i <= 255 or len(c) != 3 \
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in c):
            raise ArtifactError(f"{cw}: class id {i!r} / colour {c!r} out of range (0..255)")
    if not 0 <= unlabeled <= 255 or unlabeled in ids:
        raise ArtifactError(f"{cw}.unlabeled_id: {unlabeled} must be in 0..255 and not a class id")
    class_spec = ClassSpec(ids, tuple(str(n) for n in names), colors, unlabeled)  # type: ignore[arg-type]

    dep = _need(raw, "depth", dict, where)
    dw = where + ".depth"
    units = _need(dep, "units", str, dw)
    if units != "m":
        raise ArtifactError(f"{dw}.units: expected 'm', got {units!r}")
    depth_spec = DepthSpec(units, float(_need(dep, "min", float, dw)),
                           float(_need(dep, "max", float, dw)),
                           _need(dep, "focal_normalised", bool, dw),
                           float(_need(dep, "focal_ref", float, dw)),
                           float(_need(dep, "default_focal", float, dw)),
                           _optional(dep, "height_normalised", bool, dw, False),
                           float(_optional(dep, "height_ref", float, dw, 1.0)),
                           float(_optional(dep, "default_camera_height", float, dw, 1.0)))
    if not depth_spec.min < depth_spec.max:
        raise ArtifactError(f"{dw}: min {depth_spec.min:g} must be below max {depth_spec.max:g} (metres)")
    if depth_spec.focal_normalised and (depth_spec.focal_ref <= 0 or depth_spec.default_focal <= 0):
        raise ArtifactError(f"{dw}: focal_ref and default_focal must be positive")
    if depth_spec.height_normalised and not depth_spec.focal_normalised:
        raise ArtifactError(f"{dw}: height_normalised needs focal_normalised (the unit is f x h)")
    if depth_spec.height_normalised and (depth_spec.height_ref <= 0 or depth_spec.default_camera_height <= 0):
        raise ArtifactError(f"{dw}: height_ref and default_camera_height must be positive (metres)")

    direction = _need(raw, "direction", str, where)
    if direction not in DIRECTIONS:
        raise ArtifactError(f"{where}.direction: {direction!r}, expected one of {sorted(DIRECTIONS)}")
    tasks = _need(raw, "tasks", dict, where)
    if (tasks.get("task1"), tasks.get("task2")) != DIRECTIONS[direction]:
        raise ArtifactError(f"{where}.tasks: {tasks} does not match direction {direction}")
    formats = {str(k): str(v) for k, v in _need(raw, "formats", dict, where).items()}
    files = _need(raw, "files", dict, where)
    for rel, digest in files.items():
        _relative_inside(rel, f"{where}.files")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArtifactError(f"{where}.files.{rel}: expected a SHA-256 hex digest, "
                                f"got {digest!r}")
    for fmt, rel in formats.items():
        _relative_inside(rel, f"{where}.formats.{fmt}")
        if rel not in files:
            raise ArtifactError(f"{where}.formats.{fmt}: {rel!r} has no hash in 'files' "
                                f"(listed: {', '.join(sorted(files)) or 'none'})")
    tol = _need(raw, "parity_tolerance", dict, where)
    tolerance = ParityTolerance(float(_need(tol, "depth_max_abs", float, where + ".parity_tolerance")),
                                float(_need(tol, "semantic_min_agreement", float,
                                            where + ".parity_tolerance")))
    return Metadata(
        input=input_spec, outputs=outputs, classes=class_spec, depth=depth_spec,
        direction=direction, tasks=dict(tasks), formats=formats, parity_tolerance=tolerance,
        parity=_need(raw, "parity", dict, where), sources=_need(raw, "sources", dict, where),
        model_hash=_need(raw, "model_hash", str, where), files=dict(files),
        versions=_need(raw, "versions", dict, where), created=_need(raw, "created", str, where),
        format_version=version, extra=raw.get("extra", {}) or {},
    )


def _relative_inside(rel: Any, where: str) -> None:
    """Refuse a path recorded in metadata that could name a file outside the artifact."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{where}: expected a file name inside the model directory, "
                            f"got {rel!r}")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or "\\" in rel or any(p == ".." for p in parts):
        raise ArtifactError(f"{where}: {rel!r} points outside the model directory (accepted: "
                            f"a relative path without '..', such as 'chain.onnx')")


def format_files(metadata: Metadata, fmt: str) -> list[str]:
    """The files (relative paths) a format needs: its main file and its companions."""
    main = metadata.formats[fmt]
    return [main] + [main + s for s in FORMAT_COMPANIONS.get(fmt, ()) if main + s in metadata.files]


def verified_file(directory: str | os.PathLike, metadata: Metadata, rel: str) -> Path:
    """``directory/rel`` after checking that it stays inside ``directory`` (symbolic links
    resolved) and that its bytes have the SHA-256 recorded in ``files``; ArtifactError naming
    the file and the reason otherwise."""
    _relative_inside(rel, f"{METADATA_FILE}: file")
    root = Path(directory).resolve()
    path = Path(directory) / rel
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (listed in {METADATA_FILE})")
    if not path.resolve().is_relative_to(root):
        raise ArtifactError(f"{path} resolves to {path.resolve()}, outside the model directory "
                            f"{root}: refused")
    expected = metadata.files.get(rel)
    if expected is None:
        raise ArtifactError(f"{path} has no SHA-256 in {METADATA_FILE} 'files': refused")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(f"{path} does not match its SHA-256 in {METADATA_FILE} (file "
                            f"{actual[:16]}..., recorded {expected[:16]}...): modified or "
                            f"replaced since export; refused")
    return path


def format_path(directory: str | os.PathLike, metadata: Metadata, fmt: str) -> Path:
    """Path of an exported format's main file, every file of the format verified
    (:func:`verified_file`); ArtifactError when it was not exported or fails a check."""
    if fmt not in metadata.formats:
        raise ArtifactError(f"{directory}: format '{fmt}' was not exported "
                            f"(exported: {', '.join(sorted(metadata.formats)) or 'none'})")
    paths = [verified_file(directory, metadata, rel) for rel in format_files(metadata, fmt)]
    return paths[0]


def metres_per_unit(focal: Any, focal_ref: float, height: Any = None, height_ref: float | None = None) -> Any:
    """The one camera conversion: a focal-normalised depth unit is ``focal / focal_ref`` metres for
    a camera of fx ``focal`` (float, array or tensor) at the resolution ``focal_ref`` refers to;
    a height-normalised one (``height_ref`` given) is ``(focal / focal_ref) x (height / height_ref)``
    metres for a camera ``height`` metres above the road. Training divides its depth labels by it,
    evaluation and the node multiply the output by it."""
    scale = focal / focal_ref
    return scale if height_ref is None else scale * (height / height_ref)


def depth_to_metres_scale(depth: DepthSpec, focal_px: float | None, input_width: int,
                          network_width: int, camera_height: float | None = None) -> float:
    """Factor turning the depth output into metres for a camera of fx ``focal_px``, mounted
    ``camera_height`` metres above the road (used when the chain is height-normalised).

    ``focal_px`` is fx at the camera image's resolution (``input_width``); it is rescaled to
    the network input width. None means no camera_info: ``default_focal`` (already at the
    network resolution) is used; likewise a missing height is ``default_camera_height``.
    """
    if not depth.focal_normalised:
        return 1.0
    if focal_px is None or focal_px <= 0:
        focal_net = depth.default_focal
    else:
        focal_net = focal_px * network_width / input_width
    if not depth.height_normalised:
        return float(metres_per_unit(focal_net, depth.focal_ref))
    height = depth.default_camera_height if camera_height is None or camera_height <= 0 else camera_height
    return float(metres_per_unit(focal_net, depth.focal_ref, height, depth.height_ref))
