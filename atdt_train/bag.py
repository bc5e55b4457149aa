"""``atdt_train make-bag``: a rosbag2 of a dataset split, for replay through the perception node.

The bag is a standard rosbag2 (``metadata.yaml`` + one mcap or sqlite3 file, CDR-serialised
standard messages) written with the ``rosbags`` library, so ``ros2 bag play`` reads it on any ROS 2
install. Per frame, all four topics carry the same header stamp (frame i at start + i / rate):

- ``/camera/image_raw``      sensor_msgs/Image rgb8
- ``/camera/camera_info``    sensor_msgs/CameraInfo: the dataset's own calibration (fx, fy, cx, cy,
  rescaled with ``--size``) as K and P (REP 104; P = [K | 0], R = I, no distortion: the frames are
  rectified); where the dataset gives only fx, fy = fx and the principal point is the centre
- ``/ground_truth/depth``    sensor_msgs/Image 32FC1 metres, NaN where the ground truth is invalid
  (REP 118's "no reading" for float depth)
- ``/ground_truth/semantic`` sensor_msgs/Image mono8 AT/DT class ids, 255 = unlabeled

Frames are decoded by ``atdt_train.data`` (decoders by dataset kind) and, with ``--size``, resized
with the same policy as training and offline evaluation (``FrameDataset``), so a replay of the bag
scores the node on exactly the pixels ``atdt_train evaluate`` would score. Headers carry
``--frame-id`` (default ``camera_optical_frame``: REP 103's optical frame, z forward, x right, y
down, the frame depth and pixels are expressed in).
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
DEFAULT_FRAME_ID = "camera_optical_frame"
"""Header frame_id of every message: the camera's optical frame (REP 103: z forward, x right, y down)."""


@dataclass(frozen=True)
class BagFrame:
    """One frame to write: RGB uint8 (H,W,3), class ids uint8 (H,W), depth float32 metres (0 =
    invalid) and the camera's intrinsics in pixels at this size (fy None: fy = fx; cx / cy None:
    the image centre, (W - 1) / 2 and (H - 1) / 2)."""

    rgb: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    fx: float
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None

    def camera_matrix(self) -> np.ndarray:
        """K (3x3) of the frame: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]."""
        height, width = self.rgb.shape[:2]
        fy = self.fx if self.fy is None else self.fy
        cx = (width - 1) / 2.0 if self.cx is None else self.cx
        cy = (height - 1) / 2.0 if self.cy is None else self.cy
        return np.array([[self.fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


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

    def camera_info(self, stamp_ns: int, height: int, width: int, k: np.ndarray):
        """A rectified camera (REP 104): K as given, R = I, P = [K | 0] (a monocular camera, or
        the left one of a pair: no Tx), zero plumb_bob distortion, full resolution."""
        p = np.hstack([k, np.zeros((3, 1))])
        return self.CameraInfo(
            header=self.header(stamp_ns), height=height, width=width, distortion_model="plumb_bob",
            d=np.zeros(5, dtype=np.float64), k=k.reshape(-1).copy(), r=np.eye(3, dtype=np.float64).reshape(-1),
            p=p.reshape(-1),
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
    given = {"fx": frame.fx, **{k: v for k, v in (("fy", frame.fy), ("cx", frame.cx), ("cy", frame.cy))
                                if v is not None}}
    for name, value in given.items():
        positive = name in ("fx", "fy")
        if value is None or not np.isfinite(value) or (positive and not value > 0):
            raise ValueError(f"frame {i}: {name} must be a {'positive' if positive else 'finite'} "
                             f"number of pixels, got {value}")
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
              rate_hz: float = 10.0, frame_id: str = DEFAULT_FRAME_ID, start_ns: int = DEFAULT_START_NS,
              progress: bool = False, total: int | None = None) -> BagSummary:
    """Write ``frames`` as a rosbag2 directory at ``out`` (which must not exist), atomically."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; accepted: {', '.join(STORAGES)}")
    if not rate_hz > 0:
        raise ValueError(f"rate must be positive (Hz), got {rate_hz}")
    if not frame_id:
        raise ValueError("frame_id must not be empty (e.g. camera_optical_frame)")
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
                    (CAMERA_INFO_TOPIC, make.camera_info(stamp, h, w, frame.camera_matrix()), make.CameraInfo),
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
    """(frame count, lazy frames) of a filelist decoded by kind, resized like ``FrameDataset``,
    each with the camera's intrinsics as the dataset reader gives them at the frame's size."""
    from atdt_train.data import FrameDataset

    dataset = FrameDataset(filelist, kind=kind, size=size, fx=fx)
    n = len(dataset) if limit is None else min(limit, len(dataset))

    def frames() -> Iterator[BagFrame]:
        warned = False
        for i in range(n):
            rgb, semantic, depth, cam = dataset.load_calibrated(i)
            if not cam.measured and not warned:
                log.warning("%s: the %s dataset gives fx only; camera_info assumes fy = fx and the "
                            "principal point at the image centre", dataset.source, dataset.kind)
                warned = True
            yield BagFrame(rgb, semantic, depth, cam.fx, cam.fy, cam.cx, cam.cy)

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
    p.add_argument("--frame-id", default=DEFAULT_FRAME_ID,
                   help=f"header frame_id of every message (default {DEFAULT_FRAME_ID}, the camera's optical frame)")
    p.add_argument("--fx", type=positive_float, default=None,
                   help="focal length in pixels at native width, for datasets that give no camera")
    p.add_argument("--limit", type=positive_int, default=None, help="write at most this many frames")
    p.set_defaults(func=make_bag)
