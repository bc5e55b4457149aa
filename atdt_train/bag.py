"""``atdt_train make-bag``: a rosbag2 of a dataset split, for replay through the perception node.

The bag is a standard rosbag2 (``metadata.yaml`` + one mcap or sqlite3 file, CDR-serialised
standard messages) written with the ``rosbags`` library, so ``ros2 bag play`` reads it on any ROS 2
install. Per frame, all four topics carry the same header stamp (frame i at start + i / rate):

- ``/camera/image_raw``      sensor_msgs/Image rgb8
- ``/camera/camera_info``    sensor_msgs/CameraInfo (fx from the dataset, fy = fx, centred
  principal point, no distortion: the frames are rectified)
- ``/ground_truth/depth``    sensor_msgs/Image 32FC1 metres, NaN where the ground truth is invalid
  (REP 118's "no reading" for float depth)
- ``/ground_truth/semantic`` sensor_msgs/Image mono8 AT/DT class ids, 255 = unlabeled

Frames are decoded by ``atdt_train.data`` (decoders by dataset kind) and, with ``--size``, resized
with the same policy as training and offline evaluation (``FrameDataset``), so a replay of the bag
scores the node on exactly the pixels ``atdt_train evaluate`` would score.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atdt_ros import interface
from atdt_train.cliargs import parse_size, positive_float, positive_int

log = logging.getLogger(__name__)

IMAGE_TOPIC = interface.BAG_IMAGE
CAMERA_INFO_TOPIC = interface.BAG_CAMERA_INFO
DEPTH_TOPIC = interface.BAG_DEPTH
SEMANTIC_TOPIC = interface.BAG_SEMANTIC
STORAGES: tuple[str, ...] = ("mcap", "sqlite3")
DEFAULT_START_NS: int = 1_700_000_000 * 10**9
"""Stamp of the first frame (a fixed instant, so that a bag is reproducible byte for byte)."""
BAG_VERSION = 9
"""rosbag2 metadata version written (the one ROS 2 Jazzy and Kilted write)."""


@dataclass(frozen=True)
class BagFrame:
    """One frame to write: RGB uint8 (H,W,3), class ids uint8 (H,W), depth float32 metres (0 = invalid), fx in pixels."""

    rgb: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    fx: float


@dataclass(frozen=True)
class BagSummary:
    """What was written: path, storage, frame count, image size and the first/last stamps (ns)."""

    path: Path
    storage: str
    frames: int
    height: int
    width: int
    first_stamp_ns: int
    last_stamp_ns: int


def stamp_of(index: int, rate_hz: float, start_ns: int = DEFAULT_START_NS) -> int:
    """Header stamp (ns) of frame ``index`` at ``rate_hz``."""
    return start_ns + round(index * 1e9 / rate_hz)


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class _MessageFactory:
    """Builds the bag's rosbags messages (sensor_msgs, std_msgs) from numpy arrays."""

    def __init__(self, typestore, frame_id: str) -> None:
        t = typestore.types
        self.typestore = typestore
        self.frame_id = frame_id
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Header = t["std_msgs/msg/Header"]
        self.Image = t["sensor_msgs/msg/Image"]
        self.CameraInfo = t["sensor_msgs/msg/CameraInfo"]
        self.Roi = t["sensor_msgs/msg/RegionOfInterest"]

    def header(self, stamp_ns: int):
        sec, nanosec = divmod(stamp_ns, 10**9)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nanosec), frame_id=self.frame_id)

    def image(self, stamp_ns: int, array: np.ndarray, encoding: str):
        array = np.ascontiguousarray(array)
        height, width = array.shape[:2]
        step = array.strides[0]
        data = np.frombuffer(array.tobytes(), dtype=np.uint8)
        return self.Image(header=self.header(stamp_ns), height=height, width=width, encoding=encoding,
                          is_bigendian=0, step=step, data=data)

    def camera_info(self, stamp_ns: int, height: int, width: int, fx: float):
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        k = np.array([fx, 0, cx, 0, fx, cy, 0, 0, 1], dtype=np.float64)
        p = np.array([fx, 0, cx, 0, 0, fx, cy, 0, 0, 0, 1, 0], dtype=np.float64)
        return self.CameraInfo(
            header=self.header(stamp_ns), height=height, width=width, distortion_model="plumb_bob",
            d=np.zeros(5, dtype=np.float64), k=k, r=np.eye(3, dtype=np.float64).reshape(-1), p=p,
            binning_x=0, binning_y=0,
            roi=self.Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _check_frame(i: int, frame: BagFrame) -> tuple[int, int]:
    rgb, sem, depth = frame.rgb, frame.semantic, frame.depth
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frame {i}: rgb must be uint8 (H, W, 3), got {rgb.dtype}{rgb.shape}")
    hw = rgb.shape[:2]
    if sem.dtype != np.uint8 or sem.shape != hw:
        raise ValueError(f"frame {i}: semantic must be uint8 {hw}, got {sem.dtype}{sem.shape}")
    if depth.shape != hw:
        raise ValueError(f"frame {i}: depth must be {hw}, got {depth.shape}")
    if not (frame.fx > 0 and np.isfinite(frame.fx)):
        raise ValueError(f"frame {i}: fx must be a positive number of pixels, got {frame.fx}")
    return hw


def depth_to_32fc1(depth: np.ndarray) -> np.ndarray:
    """Metres with 0 (or anything non-positive / non-finite) = invalid -> float32 with NaN = invalid."""
    out = np.asarray(depth, dtype=np.float32).copy()
    out[~(out > 0) | ~np.isfinite(out)] = np.nan
    return out


def offered_qos() -> tuple[list, list]:
    """(camera, ground truth) QoS profiles recorded as offered in metadata.yaml: what a camera
    driver offers (sensor data: best effort, volatile, keep last 5) for the image and
    camera_info, reliable keep-last-10 for the ground truth. ``ros2 bag play`` replays each topic
    with them; with none recorded it falls back to reliable / depth 10 for everything."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                    QosTime)

    def qos(reliability: QosReliability, depth: int) -> Qos:
        default = QosTime(0, 0)  # RMW_DURATION_UNSPECIFIED: rmw_qos_profile_default's deadline etc.
        return Qos(QosHistory.KEEP_LAST, depth, reliability, QosDurability.VOLATILE, default,
                   default, QosLiveliness.AUTOMATIC, default, False)
    return [qos(QosReliability.BEST_EFFORT, 5)], [qos(QosReliability.RELIABLE, 10)]


def write_bag(frames: Iterable[BagFrame], out: str | os.PathLike, *, storage: str = "mcap",
              rate_hz: float = 10.0, frame_id: str = "camera", start_ns: int = DEFAULT_START_NS,
              progress: bool = False, total: int | None = None) -> BagSummary:
    """Write ``frames`` as a rosbag2 directory at ``out`` (which must not exist), atomically."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; accepted: {', '.join(STORAGES)}")
    if not rate_hz > 0:
        raise ValueError(f"rate must be positive (Hz), got {rate_hz}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists already; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    typestore = _typestore()
    make = _MessageFactory(typestore, frame_id)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp_bag = staging / out.name  # the writer insists on creating the directory itself
    count, hw, first, last = 0, (0, 0), 0, 0
    try:
        with Writer(tmp_bag, version=BAG_VERSION, storage_plugin=plugin) as writer:
            ser = typestore.serialize_cdr
            camera, truth = offered_qos()
            conns = {
                IMAGE_TOPIC: writer.add_connection(IMAGE_TOPIC, make.Image.__msgtype__, typestore=typestore,
                                                   offered_qos_profiles=camera),
                CAMERA_INFO_TOPIC: writer.add_connection(CAMERA_INFO_TOPIC, make.CameraInfo.__msgtype__,
                                                         typestore=typestore, offered_qos_profiles=camera),
                DEPTH_TOPIC: writer.add_connection(DEPTH_TOPIC, make.Image.__msgtype__, typestore=typestore,
                                                   offered_qos_profiles=truth),
                SEMANTIC_TOPIC: writer.add_connection(SEMANTIC_TOPIC, make.Image.__msgtype__, typestore=typestore,
                                                      offered_qos_profiles=truth),
            }
            iterator: Iterable[BagFrame] = frames
            if progress:
                from tqdm import tqdm

                iterator = tqdm(frames, total=total, desc=f"bag {out.name}", unit="frame")
            for i, frame in enumerate(iterator):
                frame_hw = _check_frame(i, frame)
                if i == 0:
                    hw = frame_hw
                elif frame_hw != hw:
                    raise ValueError(f"frame {i} is {frame_hw[1]}x{frame_hw[0]} but frame 0 is "
                                     f"{hw[1]}x{hw[0]} (width x height); pass --size to resize all")
                stamp = stamp_of(i, rate_hz, start_ns)
                h, w = hw
                messages = (
                    (CAMERA_INFO_TOPIC, make.camera_info(stamp, h, w, frame.fx), make.CameraInfo),
                    (IMAGE_TOPIC, make.image(stamp, frame.rgb, "rgb8"), make.Image),
                    (DEPTH_TOPIC, make.image(stamp, depth_to_32fc1(frame.depth), "32FC1"), make.Image),
                    (SEMANTIC_TOPIC, make.image(stamp, frame.semantic, "mono8"), make.Image),
                )
                for topic, msg, cls in messages:
                    writer.write(conns[topic], stamp, ser(msg, cls.__msgtype__))
                first = stamp if i == 0 else first
                last = stamp
                count += 1
        if count == 0:
            raise ValueError(f"no frames to write into {out}")
        os.replace(tmp_bag, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BagSummary(out, storage, count, hw[0], hw[1], first, last)


def dataset_frames(filelist: str | os.PathLike, kind: str | None = None,
                   size: tuple[int, int] | None = None, fx: float | None = None,
                   limit: int | None = None) -> tuple[int, Iterator[BagFrame]]:
    """(frame count, lazy frames) of a filelist decoded by kind, resized like ``FrameDataset``."""
    from atdt_train.data import FrameDataset

    dataset = FrameDataset(filelist, kind=kind, size=size, fx=fx)
    n = len(dataset) if limit is None else min(limit, len(dataset))

    def frames() -> Iterator[BagFrame]:
        for i in range(n):
            rgb, semantic, depth, focal = dataset.load(i)
            yield BagFrame(rgb, semantic, depth, focal)

    return n, frames()


def make_bag(args: argparse.Namespace) -> int:
    """The ``make-bag`` command."""
    from atdt_train.data import DatasetError

    try:
        n, frames = dataset_frames(args.list, args.kind, args.size, args.fx, args.limit)
        summary = write_bag(frames, args.out, storage=args.storage, rate_hz=args.rate,
                            frame_id=args.frame_id, progress=True, total=n)
    except (DatasetError, FileExistsError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s: %d frames %dx%d at %g Hz (%s)", summary.path, summary.frames, summary.width,
             summary.height, args.rate, summary.storage)
    print(summary.path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-bag`` subcommand."""
    p = subparsers.add_parser(
        "make-bag", help="write a rosbag2 of a dataset split (camera + ground truth) for replay",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", required=True, help="filelist (rgb;right;semantic;depth per line)")
    p.add_argument("--kind", default=None,
                   help="dataset kind (sim, carla, cityscapes, kitti, synthia); default: dataset.yaml beside the list")
    p.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage plugin (default mcap)")
    p.add_argument("--rate", type=positive_float, default=10.0, help="frame rate of the stamps, Hz (default 10)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="resize every frame to HxW (as training/evaluation do); default: native size")
    p.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    p.add_argument("--fx", type=positive_float, default=None,
                   help="focal length in pixels at native width, for datasets that give no camera")
    p.add_argument("--limit", type=positive_int, default=None, help="write at most this many frames")
    p.set_defaults(func=make_bag)
