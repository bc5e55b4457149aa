"""Reading the bag: camera frames and ground truth from a rosbag2 (mcap or sqlite3) or a bare
.mcap file, decoded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from atdt_ros.imgproc import RGB_ORDER, InputError, image_to_array
from atdt_ros.sanitize import printable
from atdt_ros.replay.common import CAMERA_INFO_TYPE, IMAGE_TYPE, ReplayError, log


def decode_ground_truth_depth(msg: Any) -> np.ndarray:
    """A depth Image (32FC1 metres or 16UC1 millimetres, REP 118) -> float32 metres, NaN = invalid."""
    encodings = {"32FC1": (np.float32, 4), "16UC1": (np.uint16, 2), "mono16": (np.uint16, 2)}
    if msg.encoding not in encodings:
        raise InputError(f"ground-truth depth encoding '{printable(msg.encoding, 32)}' is not supported "
                         f"(accepted: {', '.join(encodings)})")
    dtype, size = encodings[msg.encoding]
    if msg.height <= 0 or msg.width <= 0 or msg.step < msg.width * size:
        raise InputError(f"ground-truth depth {msg.width}x{msg.height} with step {msg.step} is malformed")
    flat = np.frombuffer(msg.data, dtype=np.uint8)
    if flat.size != msg.step * msg.height:
        raise InputError(f"ground-truth depth data length {flat.size} != step*height = {msg.step * msg.height}")
    rows = flat.reshape(msg.height, msg.step)[:, : msg.width * size]
    values = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    depth = values.astype(np.float32)
    if dtype == np.uint16:
        depth = np.where(values > 0, depth / 1000.0, np.nan).astype(np.float32)
    depth[~(depth > 0)] = np.nan
    return depth


def decode_labels(msg: Any) -> np.ndarray:
    """A mono8 label Image -> (H, W) uint8 class ids."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise InputError(f"ground-truth semantic encoding '{printable(msg.encoding, 32)}' is not "
                         f"supported (accepted: mono8, 8UC1)")
    return np.array(image_to_array("mono8", msg.height, msg.width, msg.step, msg.data))


def rgb_of(msg: Any) -> np.ndarray:
    """A camera Image in any accepted encoding -> (H, W, 3) uint8 RGB (for the figure)."""
    pixels = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, list(RGB_ORDER[msg.encoding])])


ACCEPTED = ("a rosbag2 directory (metadata.yaml with its .mcap or .db3 files), a .mcap file, or a "
            "directory holding one .mcap file and no metadata.yaml")
"""What ``--bag`` accepts, as rosbag2 itself opens bags."""


def resolve_bag(path: str | os.PathLike) -> tuple[str, Path]:
    """("rosbag2", directory) for a bag with metadata.yaml, ("mcap", file) for a bare .mcap file or
    a directory holding exactly one .mcap file and no metadata.yaml (the storage's own schemas and
    channels then say the topics and types, as ``ros2 bag play`` reads such a file)."""
    path = Path(path)
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return "rosbag2", path
        mcaps = sorted(p for p in path.iterdir() if p.suffix == ".mcap" and p.is_file())
        if len(mcaps) == 1:
            return "mcap", mcaps[0]
        if mcaps:
            raise ReplayError(f"{path} has no metadata.yaml and holds {len(mcaps)} .mcap files "
                              f"({', '.join(p.name for p in mcaps[:5])}); pass one of them as --bag, or "
                              f"write the bag's metadata.yaml with `ros2 bag reindex` (accepted: {ACCEPTED})")
        raise ReplayError(f"{path} is not a rosbag2 directory (no metadata.yaml) and holds no .mcap file "
                          f"(accepted: {ACCEPTED})")
    if path.is_file():
        if path.suffix == ".mcap":
            return "mcap", path
        raise ReplayError(f"{path} is not a bag (accepted: {ACCEPTED})")
    raise ReplayError(f"bag {path} does not exist (accepted: {ACCEPTED})")


def _open_reader(path: str | os.PathLike) -> tuple[Path, Any]:
    """The bag's path and an open rosbags reader (rosbag2 directory or bare mcap file)."""
    try:
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.storage_mcap import McapReader
    except ImportError as exc:  # vehicle installs may leave rosbags out
        raise ReplayError("reading bags needs the 'rosbags' package (pip install rosbags)") from exc
    kind, found = resolve_bag(path)
    reader = Reader(found) if kind == "rosbag2" else McapReader(found)
    try:
        reader.open()
    except Exception as exc:  # rosbags raises its own error types
        what = "bag" if kind == "rosbag2" else "MCAP file"
        raise ReplayError(f"cannot open {what} {found}: {exc} (accepted: {ACCEPTED})") from exc
    return found, reader


class BagSource:
    """The camera, camera_info and ground-truth messages of a rosbag2, in recorded order.

    ``path`` is anything :func:`resolve_bag` accepts; ``self.path`` is the directory or mcap file
    read."""

    def __init__(self, path: str | os.PathLike, topics: dict[str, str]) -> None:
        self.path, self.reader = _open_reader(path)
        try:
            self._select(topics)
        except BaseException:
            self.reader.close()
            raise

    def _select(self, topics: dict[str, str]) -> None:
        by_topic: dict[str, list[Any]] = {}
        for conn in self.reader.connections:
            by_topic.setdefault(conn.topic, []).append(conn)
        available = ", ".join(f"{t} ({c[0].msgtype})" for t, c in sorted(by_topic.items())) or "none"
        self.topics = dict(topics)
        self.connections: dict[str, list[Any]] = {}
        expected = {"image": IMAGE_TYPE, "camera_info": CAMERA_INFO_TYPE, "depth": IMAGE_TYPE,
                    "semantic": IMAGE_TYPE}
        for role, topic in topics.items():
            conns = by_topic.get(topic, [])
            if not conns:
                if role == "image":
                    raise ReplayError(f"bag {self.path} has no camera topic {topic} "
                                      f"(topics in it: {available}); choose one with --image-topic")
                log.warning("bag %s has no %s topic %s: %s", self.path, role, topic,
                            "no metrics for it" if role in ("depth", "semantic") else "node uses its default focal")
                continue
            wrong = [c.msgtype for c in conns if c.msgtype != expected[role]]
            if wrong:
                raise ReplayError(f"bag topic {topic} holds {wrong[0]}, expected {expected[role]}")
            encodings = {getattr(c.ext, "serialization_format", "cdr") for c in conns} - {"cdr"}
            if encodings:
                raise ReplayError(f"bag topic {topic} is serialised as {', '.join(sorted(encodings))}; "
                                  f"accepted: cdr (ROS 2)")
            self.connections[role] = conns
        self.role_of = {c.id: role for role, conns in self.connections.items() for c in conns}
        self.frame_count = sum(c.msgcount for c in self.connections["image"])

    def messages(self) -> Iterator[tuple[str, int, bytes]]:
        """(role, bag timestamp ns, raw CDR bytes) in recorded order."""
        conns = [c for cs in self.connections.values() for c in cs]
        for conn, timestamp, raw in self.reader.messages(conns):
            yield self.role_of[conn.id], timestamp, raw

    def close(self) -> None:
        """Close the bag."""
        self.reader.close()
