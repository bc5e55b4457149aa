"""What every part of the replay shares: its logger, names, default topics, its error."""

from __future__ import annotations

import logging
from typing import Any



log = logging.getLogger("atdt_replay")


MODES: tuple[str, ...] = ("realtime", "accuracy")
NODE_NAME = "atdt_perception"
DEFAULT_TOPICS: dict[str, str] = {
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",
    "depth": "/ground_truth/depth",
    "semantic": "/ground_truth/semantic",
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
