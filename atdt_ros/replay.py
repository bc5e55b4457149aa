"""``atdt_replay``: play a rosbag's camera into the running perception node and score its outputs.

The bag (rosbag2, mcap or sqlite3, as written by ``atdt_train make-bag``) is read with ``rosbags``
and its camera topic published over DDS to the node (real rclpy). The node's ``~/depth`` and
``~/semantic`` outputs are matched to the bag's ground truth by header stamp and scored with the
same metrics as offline evaluation (:mod:`atdt_ros.metrics`).

Two modes:

- ``realtime``: frames are published at the rate recorded in the bag. A node that cannot keep up
  drops frames, as it would on a vehicle; dropped = published - answered.
- ``accuracy``: the next frame is published only once both outputs for the previous one arrived
  (a frame lost in transport is sent again), so nothing is dropped and the metrics cover every
  frame: they equal ``atdt_train evaluate`` on the same frames at the same resolution.

Before the measured run one warm-up frame (stamp 0 s + n ns, not counted) is sent until the node
answers: this proves discovery in both directions and keeps the node's first-inference cost out
of the latency figures. Latency is the time from publishing a frame to receiving the last of its
two outputs. A frame the replay itself finds malformed (unsupported encoding, data length not
matching step x height) is still published, so the node's robustness is exercised too, and is
counted as malformed.

Writes ``report.json``, ``report.md``, ``latency.png`` (latency over time, drops marked) and
``qualitative.png`` (RGB | semantic output | GT semantic | depth output | GT depth) into ``--out``.
With ``--model DIR`` the node is started here as a subprocess (``atdt_perception``) and stopped
at the end; its log goes to ``--out/node.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from atdt_ros import classmap
from atdt_ros.files import atomic_path, atomic_write
from atdt_ros.imgproc import RGB_ORDER, InputError, image_to_array
from atdt_ros.metrics import DEPTH_METRICS, LOWER_IS_BETTER, DepthMetric, SegmentationMetric
from atdt_ros.sanitize import printable

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


# ---------------------------------------------------------------------------------------------
# Reading the bag


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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


class BagSource:
    """The camera, camera_info and ground-truth messages of a rosbag2, in recorded order."""

    def __init__(self, path: str | os.PathLike, topics: dict[str, str]) -> None:
        try:
            from rosbags.rosbag2 import Reader
        except ImportError as exc:  # vehicle installs may leave rosbags out
            raise ReplayError("reading bags needs the 'rosbags' package (pip install rosbags)") from exc
        self.path = Path(path)
        if not (self.path / "metadata.yaml").is_file():
            raise ReplayError(f"{self.path} is not a rosbag2 directory (no metadata.yaml)")
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as exc:  # rosbags raises its own error types
            raise ReplayError(f"cannot open bag {self.path}: {exc}") from exc
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
            self.connections[role] = conns
        self.role_of = {c.id: role for role, conns in self.connections.items() for c in conns}
        self.frame_count = sum(c.msgcount for c in self.connections["image"])

    def messages(self) -> Iterator[tuple[str, int, bytes]]:
        """(role, bag timestamp ns, raw CDR bytes) in recorded order."""
        conns = [c for cs in self.connections.values() for c in cs]
        for conn, timestamp, raw in self.reader.messages(connections=conns):
            yield self.role_of[conn.id], timestamp, raw

    def close(self) -> None:
        """Close the bag."""
        self.reader.close()


# ---------------------------------------------------------------------------------------------
# Book-keeping of one frame


@dataclass
class FrameRecord:
    """One camera frame of the bag: when it was sent, what came back, its ground truth."""

    index: int
    stamp: int
    malformed: str = ""
    published: float | None = None  # perf_counter at (first) publish
    sends: int = 0
    depth_at: float | None = None
    semantic_at: float | None = None
    depth: np.ndarray | None = None
    semantic: np.ndarray | None = None
    gt_depth: np.ndarray | None = None
    gt_semantic: np.ndarray | None = None
    rgb: np.ndarray | None = None
    keep: bool = False  # for the qualitative figure
    scored: bool = False
    expired: bool = False

    @property
    def answered(self) -> bool:
        """Both outputs received."""
        return self.depth_at is not None and self.semantic_at is not None

    @property
    def latency(self) -> float | None:
        """Seconds from publish to the last of the two outputs."""
        if not self.answered or self.published is None:
            return None
        return max(self.depth_at, self.semantic_at) - self.published  # type: ignore[type-var]


@dataclass
class Tally:
    """Counts reported beside the metrics."""

    published: int = 0
    answered: int = 0
    malformed: int = 0
    resent: int = 0
    late_outputs: int = 0
    unmatched_outputs: int = 0
    gt_unreadable: int = 0
    gt_mismatch: int = 0
    scored_frames: int = 0
    malformed_reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The node side


def _node_topic(namespace: str, name: str, leaf: str) -> str:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{name}/{leaf}"


def _input_topic(namespace: str, leaf: str) -> str:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{leaf}"


def start_node(model: str, namespace: str, params_file: str | None, backend: str | None,
               log_path: Path, trust_model_code: bool = False) -> subprocess.Popen:
    """Start ``atdt_perception`` for ``model`` as a subprocess with this environment.

    ``trust_model_code`` sets the node's parameter of that name (backends torch and tensorrt
    unpickle chain.pt2); False leaves the params file's value."""
    exe = Path(sys.executable).parent / NODE_NAME
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "atdt_ros.node"]
    command += ["--ros-args", "-r", f"__ns:={namespace or '/'}"]
    if params_file:
        command += ["--params-file", params_file]
    command += ["-p", f"model_path:={os.path.abspath(model)}"]
    if backend:
        command += ["-p", f"backend:={backend}"]
    if trust_model_code:
        command += ["-p", "trust_model_code:=true"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "wb")
    log.info("starting the node: %s (log %s)", " ".join(command), log_path)
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy(),
                            start_new_session=True)


def stop_node(process: subprocess.Popen) -> int | None:
    """Ask the node to stop (SIGINT), then kill it if it does not within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


class NodeLink:
    """rclpy side of the replay: publishes camera frames, collects the node's outputs."""

    def __init__(self, namespace: str, node_name: str, mode: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("atdt_replay", context=self.context)
        self.Image, self.CameraInfo = Image, CameraInfo
        if mode == "accuracy":
            pub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                                 reliability=ReliabilityPolicy.RELIABLE)
        else:  # what a camera driver offers
            pub_qos = qos_profile_sensor_data
        self.image_topic = _input_topic(namespace, "image")
        self.info_topic = _input_topic(namespace, "camera_info")
        self.depth_topic = _node_topic(namespace, node_name, "depth")
        self.semantic_topic = _node_topic(namespace, node_name, "semantic")
        self.pub_image = self.node.create_publisher(Image, self.image_topic, pub_qos)
        self.pub_info = self.node.create_publisher(CameraInfo, self.info_topic, pub_qos)
        self.outputs: queue.Queue = queue.Queue()
        self.subs: list[Any] = []
        self.node_fqn = _input_topic(namespace, node_name)
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0  # perf_counter of the last one
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, name="replay_spin", daemon=True)
        self._spin.start()

    def _spin_loop(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # context shut down under us at exit
            pass

    def _callback(self, kind: str):
        dtypes = {"32FC1": np.float32, "mono8": np.uint8}

        def on_output(msg: Any) -> None:
            received = time.perf_counter()
            try:
                dtype = dtypes[msg.encoding]
                flat = np.frombuffer(msg.data, dtype=np.uint8)
                rows = flat.reshape(msg.height, msg.step)[:, : msg.width * np.dtype(dtype).itemsize]
                array = np.ascontiguousarray(rows).view(
                    np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")).astype(dtype)
            except (KeyError, ValueError) as exc:
                log.error("unreadable %s output (%s %dx%d step %d): %s", kind, printable(msg.encoding, 32),
                          msg.width, msg.height, msg.step, printable(exc, 200))
                return
            self.outputs.put((kind, stamp_ns(msg.header.stamp), array, received))

        return on_output

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(self.node_fqn + ":"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["message"] = status.message
                self.diagnostics_at = time.perf_counter()

    def connect(self, timeout: float, node_process: subprocess.Popen | None = None) -> None:
        """Wait for the node's outputs, subscribe to them, and wait until it subscribes the camera."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        deadline = time.monotonic() + timeout
        while min(self.node.count_publishers(self.depth_topic),
                  self.node.count_publishers(self.semantic_topic)) == 0:
            self._check_alive(node_process)
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"no node publishes {self.depth_topic} and {self.semantic_topic} after {timeout:.0f} s "
                    f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); start atdt_perception in "
                    f"namespace '{_input_topic(self._namespace_of(), '')}' or pass --model")
            time.sleep(0.05)
        # BEST_AVAILABLE takes the node's reliability; a deep history absorbs bursts
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                         reliability=ReliabilityPolicy.BEST_AVAILABLE)
        self.subs = [
            self.node.create_subscription(self.Image, self.depth_topic, self._callback("depth"), qos),
            self.node.create_subscription(self.Image, self.semantic_topic, self._callback("semantic"), qos),
        ]
        while self.pub_image.get_subscription_count() == 0 or any(s.get_publisher_count() == 0 for s in self.subs):
            self._check_alive(node_process)
            if time.monotonic() > deadline:
                raise ReplayError(f"the node did not subscribe to {self.image_topic} within {timeout:.0f} s")
            time.sleep(0.05)

    def _namespace_of(self) -> str:
        return self.image_topic.rsplit("/", 1)[0]

    @staticmethod
    def _check_alive(process: subprocess.Popen | None) -> None:
        if process is not None and process.poll() is not None:
            raise ReplayError(f"the node exited with status {process.returncode} before answering "
                              f"(see its log)")

    def publish(self, image: Any, info: Any | None) -> float:
        """Publish camera_info (if any) then the image; returns the perf_counter at publish."""
        if info is not None:
            self.pub_info.publish(info)
        t = time.perf_counter()
        self.pub_image.publish(image)
        return t

    def close(self) -> None:
        """Shut this context down."""
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self.rclpy.shutdown(context=self.context)
            self._spin.join(timeout=2.0)


# ---------------------------------------------------------------------------------------------
# The replay


@dataclass
class ReplayOptions:
    """Everything a replay needs (the command line's arguments)."""

    bag: str
    out: str
    mode: str = "accuracy"
    namespace: str = ""
    node_name: str = NODE_NAME
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    timeout: float = 30.0
    malformed_wait: float = 1.0
    resend_after: float = 5.0
    speed: float = 1.0
    min_depth: float | None = None  # None: the chain's metadata (with model), else 0.5
    max_depth: float | None = None  # None: the chain's metadata (with model), else 80
    limit: int | None = None
    figure_rows: int = 4
    diagnostics_wait: float = 2.5
    model: str | None = None
    params_file: str | None = None
    backend: str | None = None
    trust_model_code: bool = False
    progress: bool = True


class Replay:
    """One replay run: publishing, matching by stamp, scoring, counting."""

    def __init__(self, opts: ReplayOptions, link: NodeLink, source: BagSource) -> None:
        from rclpy.serialization import deserialize_message

        self.opts, self.link, self.source = opts, link, source
        self.deserialize = deserialize_message
        self.records: dict[int, FrameRecord] = {}
        self.order: list[FrameRecord] = []
        self.tally = Tally()
        self.seg = SegmentationMetric(classmap.NUM_CLASSES, classmap.UNLABELED)
        self.dep = DepthMetric(opts.min_depth, opts.max_depth)
        self.frames = source.frame_count if opts.limit is None else min(opts.limit, source.frame_count)
        rows = max(0, min(opts.figure_rows, self.frames))
        self.keep_indices = set(np.linspace(0, self.frames - 1, rows).round().astype(int).tolist()) if rows else set()
        self.kept: list[FrameRecord] = []
        self.start: float | None = None
        self.last_answer: float | None = None

    # -- outputs --------------------------------------------------------------------------
    def drain(self, block_until: float | None = None) -> None:
        """Take received outputs; with ``block_until`` (perf_counter), wait for one until then."""
        while True:
            try:
                if block_until is None:
                    item = self.link.outputs.get_nowait()
                else:
                    wait = block_until - time.perf_counter()
                    if wait <= 0:
                        return
                    item = self.link.outputs.get(timeout=wait)
                    block_until = None  # got one: take the rest without waiting
            except queue.Empty:
                return
            self._take(*item)

    def _take(self, kind: str, stamp: int, array: np.ndarray, received: float) -> None:
        record = self.records.get(stamp)
        if record is None or record.published is None:
            if stamp // 1_000_000_000 != WARMUP_SEC:
                self.tally.unmatched_outputs += 1
            return
        if record.expired:
            self.tally.late_outputs += 1
            return
        if getattr(record, f"{kind}_at") is not None:
            return  # a duplicate answer to a frame sent twice
        setattr(record, f"{kind}_at", received)
        setattr(record, kind, array)
        if record.answered:
            self.tally.answered += 1
            self.last_answer = received
        self._score(record)

    # -- ground truth -----------------------------------------------------------------------
    def _ground_truth(self, role: str, raw: bytes) -> None:
        msg = self.deserialize(raw, self.link.Image)
        stamp = stamp_ns(msg.header.stamp)
        record = self.records.get(stamp)
        if record is None:
            if len(self.order) >= self.frames:
                return  # beyond --limit
            record = self._record(stamp)
        try:
            if role == "depth":
                record.gt_depth = decode_ground_truth_depth(msg)
            else:
                record.gt_semantic = decode_labels(msg)
        except InputError as exc:
            self.tally.gt_unreadable += 1
            log.warning("ground truth %s at stamp %d unreadable: %s", role, stamp, exc)
        self._score(record)

    def _record(self, stamp: int) -> FrameRecord:
        record = FrameRecord(index=len(self.order), stamp=stamp)
        record.keep = record.index in self.keep_indices
        self.records[stamp] = record
        self.order.append(record)
        return record

    def _score(self, record: FrameRecord, final: bool = False) -> None:
        """Score a frame once its outputs and ground truth are in (or at the end, with what is there)."""
        if record.scored or not record.answered:
            return
        have_gt = record.gt_depth is not None and record.gt_semantic is not None
        if not (have_gt or final):
            return
        record.scored = True
        scored = False
        for name, pred, gt, metric in (("semantic", record.semantic, record.gt_semantic, self.seg),
                                       ("depth", record.depth, record.gt_depth, self.dep)):
            if gt is None or pred is None:
                continue
            if pred.shape == gt.shape:
                metric.update(pred, gt)
                scored = True
            else:
                self.tally.gt_mismatch += 1
                log.warning("frame %d: %s output %s vs ground truth %s: not scored",
                            record.index, name, pred.shape, gt.shape)
        self.tally.scored_frames += int(scored)
        if record.keep:
            self.kept.append(record)
        else:  # free the images
            record.depth = record.semantic = record.gt_depth = record.gt_semantic = None

    # -- the run ----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Send the first well-formed frame (stamp 0 s + n ns) until the node answers it."""
        first = None
        info = None
        for role, _, raw in self.source.messages():
            if role == "camera_info" and info is None:
                info = self.deserialize(raw, self.link.CameraInfo)
            if role == "image":
                msg = self.deserialize(raw, self.link.Image)
                try:
                    image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
                except InputError:
                    continue
                first = msg
                break
        if first is None:
            raise ReplayError(f"no well-formed camera frame in {self.source.path} to warm up with")
        deadline = time.perf_counter() + self.opts.timeout
        attempt = 0
        while True:
            attempt += 1
            stamp = WARMUP_SEC * 1_000_000_000 + attempt
            first.header.stamp.sec, first.header.stamp.nanosec = WARMUP_SEC, attempt
            if info is not None:
                info.header.stamp = first.header.stamp
            self.link.publish(first, info)
            got: set[str] = set()
            until = min(deadline, time.perf_counter() + 2.0)
            while time.perf_counter() < until and len(got) < 2:
                try:
                    kind, s, _, _ = self.link.outputs.get(timeout=max(0.0, until - time.perf_counter()))
                except queue.Empty:
                    break
                if s // 1_000_000_000 == WARMUP_SEC:
                    got.add(kind)
            if len(got) == 2:
                log.info("node answered the warm-up frame (attempt %d)", attempt)
                return
            if time.perf_counter() >= deadline:
                raise ReplayError(f"the node did not answer a warm-up frame on {self.link.image_topic} "
                                  f"within {self.opts.timeout:.0f} s (both {self.link.depth_topic} and "
                                  f"{self.link.semantic_topic} are needed)")

    def run(self) -> None:
        """Publish the bag's frames (paced by mode), collect and score the outputs."""
        opts = self.opts
        bar = None
        if opts.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=self.frames, desc=f"replay ({opts.mode})", unit="frame")
            except ImportError:
                bar = None
        info = None
        first_stamp: int | None = None
        self.start = time.perf_counter()
        published = 0
        try:
            last_stamp = None
            for role, timestamp, raw in self.source.messages():
                if published >= self.frames and last_stamp is not None and timestamp > last_stamp:
                    break  # --limit reached and the last frame's ground truth read
                if role == "camera_info":
                    info = self.deserialize(raw, self.link.CameraInfo)
                    continue
                if role in ("depth", "semantic"):
                    self._ground_truth(role, raw)
                    self.drain()
                    continue
                if published >= self.frames:
                    continue
                msg = self.deserialize(raw, self.link.Image)
                stamp = stamp_ns(msg.header.stamp)
                record = self.records.get(stamp) or self._record(stamp)
                if record.published is not None:
                    log.warning("two camera frames with stamp %d: the second is skipped", stamp)
                    continue
                try:
                    pixels_ok = True
                    if record.keep:
                        record.rgb = rgb_of(msg)
                    else:
                        image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
                except InputError as exc:
                    pixels_ok = False
                    record.malformed = str(exc)
                    self.tally.malformed += 1
                    self.tally.malformed_reasons.append(f"frame {record.index}: {exc}")
                    log.warning("frame %d (stamp %d) is malformed: %s", record.index, stamp, exc)
                if first_stamp is None:
                    first_stamp = stamp
                if opts.mode == "realtime":
                    due = self.start + (stamp - first_stamp) / 1e9 / opts.speed
                    self.drain(block_until=due)
                    while time.perf_counter() < due:
                        self.drain(block_until=due)
                info_now = None
                if info is not None and stamp_ns(info.header.stamp) == stamp:
                    info_now = info
                record.published = self.link.publish(msg, info_now)
                last_stamp = timestamp
                record.sends = 1
                published += 1
                self.tally.published += 1
                if opts.mode == "accuracy":
                    self._await(record, msg, info_now, pixels_ok)
                else:
                    self.drain()
                    self._expire(time.perf_counter() - opts.timeout)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(answered=self.tally.answered, malformed=self.tally.malformed)
            self._finish()
        finally:
            if bar is not None:
                bar.close()

    def _await(self, record: FrameRecord, msg: Any, info: Any, pixels_ok: bool) -> None:
        """Accuracy mode: wait for both outputs of ``record``; resend a frame lost in transport."""
        wait = self.opts.timeout if pixels_ok else self.opts.malformed_wait
        deadline = record.published + wait  # type: ignore[operator]
        next_send = record.published + self.opts.resend_after  # type: ignore[operator]
        while not record.answered:
            now = time.perf_counter()
            if now >= deadline:
                if pixels_ok:
                    log.warning("frame %d: no answer within %.1f s", record.index, wait)
                record.expired = True
                return
            if pixels_ok and now >= next_send:
                self.link.publish(msg, info)
                record.sends += 1
                self.tally.resent += 1
                next_send = now + self.opts.resend_after
            self.drain(block_until=min(deadline, next_send))

    def _expire(self, before: float) -> None:
        """Realtime mode: give up on frames published before ``before`` and free their images."""
        for record in self.order:
            if record.published is None or record.published >= before:
                break
            if not record.answered and not record.expired:
                record.expired = True
                if not record.keep:
                    record.gt_depth = record.gt_semantic = None

    def _finish(self) -> None:
        """Wait for the last answers, then score what has not been scored."""
        if self.opts.mode == "realtime":
            hard = time.perf_counter() + self.opts.timeout
            quiet = max(1.0, 5 * (self._latency_p95() or 0.2))
            while time.perf_counter() < hard:
                pending = [r for r in self.order if r.published is not None and not r.answered
                           and not r.malformed]
                if not pending:
                    break
                since = time.perf_counter() - (self.last_answer or self.start or 0.0)
                if since > quiet and time.perf_counter() - max(r.published for r in pending) > quiet:
                    break
                self.drain(block_until=time.perf_counter() + 0.1)
        self.drain()
        # the node's /diagnostics (1 Hz by default) should cover the last frame: wait briefly for it
        until = time.perf_counter() + self.opts.diagnostics_wait
        while self.link.diagnostics_at <= (self.last_answer or 0.0) and time.perf_counter() < until:
            time.sleep(0.05)
        for record in self.order:
            if record.answered:
                self._score(record, final=True)
            elif record.published is not None:
                record.expired = True

    def _latency_p95(self) -> float | None:
        values = [r.latency for r in self.order if r.latency is not None]
        return float(np.percentile(values, 95)) if values else None

    # -- results ----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """Everything report.json holds."""
        published = [r for r in self.order if r.published is not None]
        latencies = np.array([r.latency for r in published if r.latency is not None], dtype=np.float64) * 1e3
        t0 = min((r.published for r in published), default=0.0)
        t_end = max([self.last_answer or t0] + [r.published for r in published])
        span = max(t_end - t0, 1e-9)
        answered = sum(r.answered for r in published)
        latency = {"p50_ms": _pct(latencies, 50), "p95_ms": _pct(latencies, 95),
                   "max_ms": float(latencies.max()) if latencies.size else math.nan,
                   "mean_ms": float(latencies.mean()) if latencies.size else math.nan}
        span_bag = (published[-1].stamp - published[0].stamp) / 1e9 if len(published) > 1 else 0.0
        seg = self.seg.compute()
        dep = self.dep.compute()
        return {
            "bag": str(self.source.path),
            "mode": self.opts.mode,
            "speed": self.opts.speed,
            "topics": {"image": self.link.image_topic, "camera_info": self.link.info_topic,
                       "depth": self.link.depth_topic, "semantic": self.link.semantic_topic},
            "frames": {
                "in_bag": self.source.frame_count, "published": self.tally.published,
                "answered": answered, "dropped": self.tally.published - answered,
                "malformed": self.tally.malformed, "resent": self.tally.resent,
                "late_outputs": self.tally.late_outputs, "unmatched_outputs": self.tally.unmatched_outputs,
                "ground_truth_unreadable": self.tally.gt_unreadable,
                "ground_truth_size_mismatch": self.tally.gt_mismatch,
                "scored": self.tally.scored_frames,
            },
            "malformed_frames": self.tally.malformed_reasons,
            "latency": latency,
            "throughput_hz": answered / span if answered else 0.0,
            "input_rate_hz": (len(published) - 1) / max(published[-1].published - t0, 1e-9)
            if len(published) > 1 else math.nan,
            "recorded_rate_hz": (len(published) - 1) / span_bag if span_bag > 0 else math.nan,
            "depth_range_m": [self.opts.min_depth, self.opts.max_depth],
            "node_diagnostics": dict(self.link.diagnostics),
            "semantic": {"classes": list(classmap.CLASS_NAMES), **seg},
            "depth": dep,
            "per_frame": [
                {"index": r.index, "stamp_ns": r.stamp,
                 "published_s": None if r.published is None else r.published - t0,
                 "latency_ms": None if r.latency is None else r.latency * 1e3,
                 "answered": r.answered, "malformed": r.malformed or None, "sends": r.sends}
                for r in self.order
            ],
        }


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


# ---------------------------------------------------------------------------------------------
# The report


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value * scale:.{digits}f}"


def markdown_report(results: dict[str, Any]) -> str:
    """report.md: counts, latency, segmentation (per class) and depth tables."""
    f = results["frames"]
    lat = results["latency"]
    seg, dep = results["semantic"], results["depth"]
    lines = [
        f"# Replay report ({results['mode']} mode)",
        "",
        f"Bag `{results['bag']}`, camera published on `{results['topics']['image']}`; outputs "
        f"`{results['topics']['depth']}` and `{results['topics']['semantic']}` matched to the bag's ground "
        f"truth by header stamp.",
        "",
        "| frames in bag | published | answered | dropped | malformed | resent | scored |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {f['in_bag']} | {f['published']} | {f['answered']} | {f['dropped']} | {f['malformed']} "
        f"| {f['resent']} | {f['scored']} |",
        "",
        "| latency p50 (ms) | p95 (ms) | max (ms) | throughput (Hz) | input rate (Hz) | recorded rate (Hz) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(lat['p50_ms'], 1)} | {_fmt(lat['p95_ms'], 1)} | {_fmt(lat['max_ms'], 1)} "
        f"| {_fmt(results['throughput_hz'], 2)} | {_fmt(results['input_rate_hz'], 2)} "
        f"| {_fmt(results['recorded_rate_hz'], 2)} |",
        "",
        "Latency: publish of a frame to receipt of the last of its two outputs (depth, semantic).",
        "",
        *_node_lines(results.get("node_diagnostics") or {}),
        "## Semantic segmentation",
        "",
        "| " + " | ".join(classmap.TABLE_NAMES) + " | mIoU | Acc |",
        "|" + "---:|" * (len(classmap.TABLE_NAMES) + 2),
        "| " + " | ".join(_fmt(v, 2, 100) for v in seg["iou"]) + f" | {_fmt(seg['miou'], 2, 100)} "
        f"| {_fmt(seg['accuracy'], 2, 100)} |",
        "",
        f"IoU and accuracy in %, over {seg['pixels']} labelled pixels (ignore id {classmap.UNLABELED}).",
        "",
        "## Depth",
        "",
        "| " + " | ".join(_DEPTH_NAMES[m] for m in DEPTH_METRICS) + " |",
        "|" + "---:|" * len(DEPTH_METRICS),
        "| " + " | ".join(_fmt(dep[m], 3) for m in DEPTH_METRICS) + " |",
        "",
        f"Over {dep['pixels']} pixels with ground truth in ({results['depth_range_m'][0]}, "
        f"{results['depth_range_m'][1]}) m; lower is better for "
        f"{', '.join(_DEPTH_NAMES[m] for m in DEPTH_METRICS if m in LOWER_IS_BETTER)}.",
        "",
        "![latency](latency.png)",
        "",
        "![qualitative](qualitative.png)",
        "",
    ]
    if results["malformed_frames"]:
        lines += ["## Malformed frames", ""] + [f"- {m}" for m in results["malformed_frames"]] + [""]
    return "\n".join(lines)


def _node_lines(diag: dict[str, str]) -> list[str]:
    if not diag:
        return []
    return [f"Node (its last /diagnostics; counters since it started): backend {diag.get('backend', '?')} on {diag.get('device', '?')}, "
            f"precision {diag.get('precision', '?')}"
            f"{' (torch.compile)' if diag.get('compiled') == 'true' else ''}, model {diag.get('model_hash', '?')}; "
            f"received {diag.get('received', '?')}, processed {diag.get('processed', '?')}, "
            f"dropped {diag.get('dropped', '?')}, rejected {diag.get('rejected', '?')}; receipt to published "
            f"p50 {diag.get('latency_p50_ms', '?')} ms, p95 {diag.get('latency_p95_ms', '?')} ms, of which "
            f"the backend call p50 {diag.get('inference_p50_ms', '?')} ms.", ""]


_DEPTH_NAMES = {"abs_rel": "Abs Rel", "sq_rel": "Sq Rel", "rmse": "RMSE", "rmse_log": "RMSE log",
                "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³"}


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def latency_figure(results: dict[str, Any], path: Path) -> None:
    """latency.png: latency of each answered frame over publish time; unanswered frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [p for p in results["per_frame"] if p["published_s"] is not None]
    ok = [(p["published_s"], p["latency_ms"]) for p in frames if p["latency_ms"] is not None]
    lost = [p["published_s"] for p in frames if p["latency_ms"] is None]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if ok:
        t, v = zip(*ok)
        ax.plot(t, v, ".-", lw=0.8, ms=3, label="latency")
        p50, p95 = results["latency"]["p50_ms"], results["latency"]["p95_ms"]
        ax.axhline(p50, color="tab:green", lw=0.8, ls="--", label=f"p50 {p50:.1f} ms")
        ax.axhline(p95, color="tab:orange", lw=0.8, ls="--", label=f"p95 {p95:.1f} ms")
    if lost:
        ax.plot(lost, [0] * len(lost), "x", color="tab:red", label=f"unanswered ({len(lost)})")
    ax.set_xlabel("publish time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"atdt_perception latency, {results['mode']} replay")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)


def colorize_depth(depth: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Depth in metres -> RGB uint8 (near bright, far dark, inverse-depth scale); invalid black."""
    import matplotlib

    cmap = matplotlib.colormaps["magma"]
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros_like(depth, dtype=np.float64)
    inv[valid] = 1.0 / np.clip(depth[valid], vmin, vmax)
    scaled = (inv - 1.0 / vmax) / (1.0 / vmin - 1.0 / vmax)
    rgb = (cmap(np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def qualitative_figure(records: list[FrameRecord], path: Path, min_depth: float, max_depth: float) -> bool:
    """qualitative.png (Fig. 3 style): RGB | semantic output | GT semantic | depth output | GT depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in sorted(records, key=lambda r: r.index) if r.answered and r.rgb is not None]
    if not rows:
        return False
    titles = ("RGB", "semantic (node)", "semantic (GT)", "depth (node)", "depth (GT)")
    h, w = rows[0].rgb.shape[:2]
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * 2.6, len(rows) * 2.6 * h / w + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        gt = r.gt_depth[np.isfinite(r.gt_depth)] if r.gt_depth is not None else np.array([])
        near = max(min_depth, float(gt.min()) if gt.size else min_depth)
        far = min(max_depth, float(gt.max()) if gt.size else max_depth)
        if far <= near:
            near, far = min_depth, max_depth
        blank = np.zeros((h, w, 3), np.uint8)
        panels = (
            r.rgb,
            classmap.colorize(r.semantic) if r.semantic is not None else blank,
            classmap.colorize(r.gt_semantic) if r.gt_semantic is not None else blank,
            colorize_depth(r.depth, near, far) if r.depth is not None else blank,
            colorize_depth(r.gt_depth, near, far) if r.gt_depth is not None else blank,
        )
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=10)
        axes[i][0].set_ylabel(f"frame {r.index}", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def write_report(replay: Replay, out: Path) -> dict[str, Any]:
    """Write report.json, report.md, latency.png and qualitative.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = replay.results()
    latency_figure(results, out / "latency.png")
    has_grid = qualitative_figure(replay.kept, out / "qualitative.png", replay.opts.min_depth, replay.opts.max_depth)
    results["files"] = {"markdown": "report.md", "latency_plot": "latency.png",
                        "qualitative": "qualitative.png" if has_grid else None}
    atomic_write(out / "report.json", json.dumps(results, indent=2, allow_nan=True) + "\n")
    atomic_write(out / "report.md", markdown_report(results))
    return results


# ---------------------------------------------------------------------------------------------
# Entry points


DEFAULT_DEPTH_RANGE: tuple[float, float] = (0.5, 80.0)


def resolve_depth_range(opts: ReplayOptions) -> ReplayOptions:
    """The depth metric range: given values, else the chain's own (``depth.min``/``max`` in its
    metadata.json, what offline evaluation used) when the replay starts the node, else 0.5-80 m."""
    if opts.min_depth is not None and opts.max_depth is not None:
        chosen, source = (opts.min_depth, opts.max_depth), "given"
    elif opts.model:
        from atdt_ros.artifact import ArtifactError, load_metadata

        try:
            depth = load_metadata(opts.model).depth
        except ArtifactError as exc:
            raise ReplayError(str(exc)) from exc
        chosen, source = (depth.min, depth.max), f"{opts.model}/metadata.json"
    else:
        chosen, source = DEFAULT_DEPTH_RANGE, "default (no --model to read it from)"
    low = opts.min_depth if opts.min_depth is not None else chosen[0]
    high = opts.max_depth if opts.max_depth is not None else chosen[1]
    if not low < high:
        raise ReplayError(f"depth range {low:g}-{high:g} m: the minimum must be below the maximum")
    log.info("depth metrics over %g-%g m (%s)", low, high, source)
    return dataclasses.replace(opts, min_depth=low, max_depth=high)


def replay(opts: ReplayOptions) -> dict[str, Any]:
    """Run one replay (starting the node when ``opts.model`` is set) and write its report."""
    if opts.mode not in MODES:
        raise ReplayError(f"mode {opts.mode!r} is not one of {', '.join(MODES)}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    source = BagSource(opts.bag, opts.topics)
    process = None
    link = None
    opts = resolve_depth_range(opts)
    try:
        if opts.model:
            process = start_node(opts.model, opts.namespace, opts.params_file, opts.backend,
                                 out / "node.log", opts.trust_model_code)
        link = NodeLink(opts.namespace, opts.node_name, opts.mode)
        link.connect(opts.timeout, process)
        run = Replay(opts, link, source)
        run.warm_up()
        run.run()
        return write_report(run, out)
    finally:
        if link is not None:
            link.close()
        if process is not None:
            code = stop_node(process)
            if code not in (0, -signal.SIGINT, None):
                log.warning("the node exited with status %s (log %s)", code, out / "node.log")
        source.close()


def summary_line(results: dict[str, Any]) -> str:
    """One line for the terminal: counts, latency, mIoU and Abs Rel."""
    f, lat = results["frames"], results["latency"]
    return (f"{results['mode']}: {f['answered']}/{f['published']} frames answered "
            f"({f['dropped']} dropped, {f['malformed']} malformed); latency p50 {_fmt(lat['p50_ms'], 1)} ms, "
            f"p95 {_fmt(lat['p95_ms'], 1)} ms, max {_fmt(lat['max_ms'], 1)} ms; "
            f"{_fmt(results['throughput_hz'], 1)} Hz; mIoU {_fmt(results['semantic']['miou'], 2, 100)}, "
            f"Abs Rel {_fmt(results['depth']['abs_rel'], 3)}")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``atdt_replay`` command line."""
    p = argparse.ArgumentParser(prog="atdt_replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True, help="rosbag2 directory (mcap or sqlite3)")
    p.add_argument("--mode", choices=MODES, default="accuracy",
                   help="realtime: recorded rate, drops allowed; accuracy: one frame at a time (default)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--node-namespace", default="", help="namespace of the node (its input is NS/image)")
    p.add_argument("--node-name", default=NODE_NAME, help=f"node name (outputs NS/NAME/depth...; default {NODE_NAME})")
    p.add_argument("--timeout", type=_positive, default=30.0,
                   help="seconds to wait for the node (discovery, warm-up, each answer); default 30")
    p.add_argument("--malformed-wait", type=_positive, default=1.0,
                   help="accuracy mode: seconds to wait for an answer to a malformed frame (default 1)")
    p.add_argument("--speed", type=_positive, default=1.0, help="realtime mode: multiple of the recorded rate")
    p.add_argument("--min-depth", type=_positive, default=None,
                   help="depth metric range, metres (default: the chain's metadata with --model, else 0.5)")
    p.add_argument("--max-depth", type=_positive, default=None,
                   help="depth metric range, metres (default: the chain's metadata with --model, else 80)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N frames")
    p.add_argument("--figure-rows", type=int, default=4, help="frames in the qualitative figure (default 4)")
    for role, topic in DEFAULT_TOPICS.items():
        p.add_argument(f"--{role.replace('_', '-')}-topic", default=topic, help=f"bag topic of the {role} (default {topic})")
    p.add_argument("--model", default=None, help="start atdt_perception on this exported chain for the replay")
    p.add_argument("--params-file", default=None, help="with --model: the node's ROS parameters file")
    p.add_argument("--backend", default=None, help="with --model: the node's backend parameter")
    p.add_argument("--trust-model-code", action="store_true",
                   help="with --model: let the node load chain.pt2 (backends torch/tensorrt "
                        "unpickle it, which can run code); only for a model you trust")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console script ``atdt_replay``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.min_depth is not None and args.max_depth is not None and args.min_depth >= args.max_depth:
        log.error("--min-depth %g must be below --max-depth %g", args.min_depth, args.max_depth)
        return 2
    if args.limit is not None and args.limit <= 0:
        log.error("--limit must be positive, got %d", args.limit)
        return 2
    opts = ReplayOptions(
        bag=args.bag, out=args.out, mode=args.mode, namespace=args.node_namespace, node_name=args.node_name,
        topics={role: getattr(args, f"{role}_topic") for role in DEFAULT_TOPICS},
        timeout=args.timeout, malformed_wait=args.malformed_wait, speed=args.speed,
        min_depth=args.min_depth, max_depth=args.max_depth, limit=args.limit,
        figure_rows=max(0, args.figure_rows), model=args.model, params_file=args.params_file,
        backend=args.backend, trust_model_code=args.trust_model_code,
        progress=not args.no_progress)
    try:
        results = replay(opts)
    except ReplayError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary_line(results))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
