"""The class map as an ``atdt_msgs/ClassMap`` message (ids, names, colours) and back, and as the
standard ``vision_msgs/LabelInfo`` (ids and names) that any vision_msgs consumer reads.

The node publishes both latched (transient-local durability, depth 1) so that a tool joining late
(RViz plugin, recorder, evaluator) still learns which label id means which class and colour.
The message packages are imported only when a message is built, so this module imports without
ROS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atdt_ros.classmap import CLASSES, UNLABELED, SemanticClass


def _message_types() -> tuple[Any, Any]:
    try:
        from atdt_msgs.msg import ClassInfo, ClassMap
    except ImportError as exc:
        raise ImportError(
            "atdt_msgs is not importable: build the msg/ package first "
            "('make setup' in the pip venv, or 'colcon build' on a ROS 2 install, see docs/ros.md)"
        ) from exc
    return ClassInfo, ClassMap


def _label_info_types() -> tuple[Any, Any]:
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError as exc:
        raise ImportError(
            f"vision_msgs is not importable ({type(exc).__name__}: {exc}): install it on a ROS 2 "
            "install (ros-$ROS_DISTRO-vision-msgs), or run 'make setup' in the pip venv, which "
            "builds msg/vision_msgs (docs/ros.md)") from exc
    return LabelInfo, VisionClass


LABEL_INFO_THRESHOLD: float = 0.0
"""``LabelInfo.threshold`` of the node: no confidence threshold. Every pixel of ``~/semantic`` is
the chain's most probable class (the argmax inside the exported chain); no pixel is left
unlabeled for low confidence."""


def _check_classes(classes: Sequence[SemanticClass], unlabeled: int) -> None:
    if not 0 <= unlabeled <= 255:
        raise ValueError(f"unlabeled id {unlabeled} is out of range; accepted: 0..255 (uint8)")
    seen: set[int] = set()
    for c in classes:
        if not 0 <= c.id <= 255 or c.id == unlabeled:
            raise ValueError(f"class {c.name!r} has id {c.id}; accepted: 0..255 except the "
                             f"unlabeled id {unlabeled}")
        if c.id in seen:
            raise ValueError(f"class {c.name!r} repeats id {c.id}; class ids must be unique")
        seen.add(c.id)
        if len(c.color) != 3 or any(not 0 <= v <= 255 for v in c.color):
            raise ValueError(f"class {c.name!r} has colour {c.color}; "
                             "accepted: (r, g, b) in 0..255")


def classmap_message(frame_id: str = "", stamp: Any | None = None,
                     classes: Sequence[SemanticClass] = CLASSES,
                     unlabeled: int = UNLABELED) -> Any:
    """Build an ``atdt_msgs/ClassMap`` with every class (id, name, RGB) and the unlabeled id."""
    _check_classes(classes, unlabeled)
    ClassInfo, ClassMap = _message_types()
    msg = ClassMap()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.classes = [ClassInfo(id=c.id, name=c.name, r=c.color[0], g=c.color[1], b=c.color[2])
                   for c in classes]
    msg.unlabeled_id = unlabeled
    return msg


def label_info_message(frame_id: str = "", stamp: Any | None = None,
                       classes: Sequence[SemanticClass] = CLASSES, unlabeled: int = UNLABELED,
                       threshold: float = LABEL_INFO_THRESHOLD) -> Any:
    """Build a ``vision_msgs/LabelInfo``: one ``VisionClass`` (class_id, class_name) per class.

    The unlabeled id is not listed: 255 already means "UNLABELED" by VisionClass's convention
    (the maximum uint8 value, for pipelines of fewer than 255 classes). Raises ImportError, saying
    how to get vision_msgs, where it is not installed.
    """
    _check_classes(classes, unlabeled)
    LabelInfo, VisionClass = _label_info_types()
    msg = LabelInfo()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.class_map = [VisionClass(class_id=c.id, class_name=c.name) for c in classes]
    msg.threshold = float(threshold)
    return msg


def classes_from_message(msg: Any) -> tuple[tuple[SemanticClass, ...], int]:
    """Read ``(classes, unlabeled_id)`` back from a received ``atdt_msgs/ClassMap``."""
    classes = tuple(SemanticClass(int(c.id), str(c.name), (int(c.r), int(c.g), int(c.b)))
                    for c in msg.classes)
    return classes, int(msg.unlabeled_id)
