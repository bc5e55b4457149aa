"""The perception node's parameters: one typed dataclass, checked by :mod:`atdt_ros.schema`.

The node declares every field of :class:`NodeParameters` with its default (``ros2 param list``
shows them all) and hands what rclpy reads (the params file, ``-p name:=value``, the defaults)
to :func:`node_parameters`: wrong types, values outside their choices or ranges and keys the
node does not know stop it with one message naming the parameter, the value and what is
accepted. No rclpy here, so the rules are testable (and importable) without ROS.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from atdt_ros import schema
from atdt_ros.backends import BACKENDS, PRECISIONS
from atdt_ros.imgproc import DEPTH_ENCODINGS, DEPTH_SKY
from atdt_ros.interface import QOS_CHOICES
from atdt_ros.sanitize import MAX_MESSAGE, printable

Backend = Literal[("auto",) + BACKENDS]
Precision = Literal[PRECISIONS]
DepthSky = Literal[DEPTH_SKY]
DepthEncoding = Literal[DEPTH_ENCODINGS]
ImageTransport = Literal["raw", "compressed"]
Qos = Literal[QOS_CHOICES]

QUEUE_DEPTHS = (1, 10000)
"""Accepted history depths (``input_depth``, ``output_depth``), inclusive."""
DIAGNOSTICS_PERIODS = (0.01, 3600.0)
"""Accepted seconds between /diagnostics messages, inclusive."""


class ParameterError(ValueError):
    """A node parameter rclpy handed out does not fit :class:`NodeParameters`."""


@dataclass(frozen=True)
class NodeParameters:
    """Every parameter of ``atdt_perception`` with its default (config/perception.yaml)."""

    model_path: str = ""                # artifact directory written by `atdt_train export`
    backend: Backend = "auto"           # auto | tensorrt | onnxruntime | torch
    device: str = "cpu"                 # cpu | cuda | cuda:N
    threads: int = 0                    # CPU threads for inference (0: library default)
    precision: Precision = "fp32"       # fp32 | fp16 (tensorrt) | bf16
    compile: bool = False               # torch backend: torch.compile at start-up (CPU: fastest)
    trust_model_code: bool = False      # allow backends torch/tensorrt, which unpickle chain.pt2
    build_only: bool = False            # build/refresh the TensorRT engine cache, then exit
    autostart: bool = True              # walk the lifecycle to active at start (false: a manager does)
    publish_depth: bool = True          # ~/depth and ~/camera_info
    publish_semantic: bool = True       # ~/semantic
    publish_semantic_color: bool = True  # ~/semantic_color
    publish_pointcloud: bool = True     # ~/points (xyz + label from depth and camera_info)
    depth_sky: DepthSky = "inf"         # depth on sky pixels: inf | nan | keep (REP 117)
    depth_range_limits: bool = True     # beyond metadata depth.max -> +Inf, below depth.min -> -Inf
    depth_encoding: DepthEncoding = "32FC1"  # 32FC1 (metres) | 16UC1 (millimetres, 0 = no depth)
    camera_height: float = 0.0          # m above the road, for height-normalised chains (0: the chain's)
    process_all: bool = False           # queue every frame instead of keeping only the newest
    image_transport: ImageTransport = "raw"  # raw: Image on image; compressed: <image>/compressed
    input_qos: Qos = "sensor_data"      # sensor_data | reliable | best_effort
    input_depth: int = 5                # history depth of the image subscription
    output_qos: Qos = "reliable"        # reliable | best_effort (or sensor_data)
    output_depth: int = 2               # history depth of the output publishers
    diagnostics_period: float = 1.0     # seconds between /diagnostics messages
    error_throttle: float = 2.0         # seconds between repeated rejection messages


DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NodeParameters)}
"""Every parameter's name and default, in declaration order."""


def depth_sky_name(value: Any) -> Any:
    """``depth_sky`` as a choice name: rcl reads ``inf`` / ``nan`` (unquoted in a params file, or
    ``-p depth_sky:=inf``) as doubles, so +Inf and NaN map to "inf" and "nan"; a string stays."""
    if isinstance(value, float) and not isinstance(value, bool):
        if value == float("inf"):
            return "inf"
        if value != value:
            return "nan"
    return value if isinstance(value, str) else str(value)


def node_parameters(values: dict[str, Any]) -> NodeParameters:
    """The node's parameters from the values rclpy holds (name -> value): types by
    :func:`atdt_ros.schema.build` (an int is taken for a float, unknown names are refused),
    then the ranges and the rules between parameters; :class:`ParameterError` otherwise."""
    values = dict(values)
    if "depth_sky" in values:
        values["depth_sky"] = depth_sky_name(values["depth_sky"])
    try:
        p = schema.build(NodeParameters, values)
    except schema.SchemaError as exc:  # "name: expected ..., got ..."; a value's text is capped
        raise ParameterError(f"parameter {printable(exc, 2 * MAX_MESSAGE)}") from None
    _check(p)
    return p


def _check(p: NodeParameters) -> None:
    """What types alone do not say: ranges, the device pattern, something to publish, a model."""
    if p.threads < 0:
        raise ParameterError(f"parameter threads: {p.threads} must be >= 0 (0: the library "
                             f"default)")
    lo, hi = DIAGNOSTICS_PERIODS
    if not lo <= p.diagnostics_period <= hi:
        raise ParameterError(f"parameter diagnostics_period: {p.diagnostics_period} s is outside "
                             f"{lo:g}..{hi:g} s")
    if not 0.0 <= p.camera_height <= 100.0:
        raise ParameterError(f"parameter camera_height: {p.camera_height} m is outside 0..100 m "
                             f"(0: the default_camera_height in the chain's metadata)")
    if p.error_throttle < 0:
        raise ParameterError(f"parameter error_throttle: {p.error_throttle} s must be >= 0 (0: log "
                             f"every rejection)")
    lo, hi = QUEUE_DEPTHS
    for name in ("input_depth", "output_depth"):
        if not lo <= getattr(p, name) <= hi:
            raise ParameterError(f"parameter {name}: {getattr(p, name)} is outside {lo}..{hi}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", p.device):
        raise ParameterError(f"parameter device: '{printable(p.device)}' is not one of cpu, cuda, "
                             f"cuda:N")
    if not (p.publish_depth or p.publish_semantic or p.publish_semantic_color
            or p.publish_pointcloud):
        raise ParameterError("parameters publish_depth, publish_semantic, publish_semantic_color "
                             "and publish_pointcloud are all false: nothing to publish")
    if not p.model_path:
        raise ParameterError("parameter model_path is empty: set it to a directory written by "
                             "`atdt_train export`")
