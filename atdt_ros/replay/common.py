"""What every part of the replay shares: its logger, names, default topics, its error."""

from __future__ import annotations

import logging
from typing import Any

from atdt_ros.interface import BAG_CAMERA_INFO, BAG_DEPTH, BAG_IMAGE, BAG_SEMANTIC, NODE_NAME

log = logging.getLogger("atdt_replay")

__all__ = ["CAMERA_INFO_TYPE", "DEFAULT_TOPICS", "IMAGE_TYPE", "MODES", "NODE_NAME", "WARMUP_SEC",
           "ReplayError", "log", "stamp_ns"]

MODES: tuple[str, ...] = ("realtime", "accuracy")
DEFAULT_TOPICS: dict[str, str] = {
    "image": BAG_IMAGE,
    "camera_info": BAG_CAMERA_INFO,
    "depth": BAG_DEPTH,
    "semantic": BAG_SEMANTIC,
}
"""Bag topics read by default (those ``atdt_train make-bag`` writes)."""
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
WARMUP_SEC = 0
"""Warm-up frames carry stamps of 0 s + n ns, which no recorded frame has."""


class ReplayError(RuntimeError):
    """The replay cannot run: unreadable bag, missing topic, node not answering; says which."""


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
