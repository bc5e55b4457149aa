"""Decoders for each dataset kind: native label ids -> the 11 AT/DT classes, native depth -> metres.

Every decoder returns labels as uint8 (H, W) with class ids 0..10 of ``atdt_ros.classmap`` and
``UNLABELED`` (255) for anything else, and depth as float32 (H, W) metres with 0 = invalid.
The tables and encodings are documented in docs/datasets.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from atdt_ros.classmap import UNLABELED

from .filelist import DatasetError, Frame

KINDS: tuple[str, ...] = ("sim", "carla", "cityscapes", "kitti", "synthia")
DEPTH_PNG_SCALE = 256.0
"""Depth labels written by this project (simulator, proxy depth): uint16 PNG, metres * 256."""

# AT/DT class ids (atdt_ros.classmap), named here to keep the tables readable.
ROAD, SIDEWALK, WALL, FENCE, PERSON, POLE, VEGETATION, VEHICLE, SIGN, BUILDING, SKY = range(11)

CITYSCAPES_TO_ATDT: dict[int, int] = {
    7: ROAD, 8: SIDEWALK, 11: BUILDING, 12: WALL, 13: FENCE, 14: FENCE,  # 14 guard rail
    17: POLE, 18: POLE, 19: SIGN, 20: SIGN, 21: VEGETATION, 22: VEGETATION, 23: SKY,
    24: PERSON, 25: PERSON,  # person, rider
    26: VEHICLE, 27: VEHICLE, 28: VEHICLE, 29: VEHICLE, 30: VEHICLE, 31: VEHICLE,
    32: VEHICLE, 33: VEHICLE,  # car, truck, bus, caravan, trailer, train, motorcycle, bicycle
}
"""Cityscapes ``labelIds`` (gtFine, also KITTI-2015 semantics) -> AT/DT; unlisted ids -> 255."""

CARLA_TO_ATDT: dict[int, int] = {
    1: BUILDING, 2: FENCE, 4: PERSON, 5: POLE, 6: ROAD, 7: ROAD, 8: SIDEWALK, 9: VEGETATION,
    10: VEHICLE, 11: WALL, 12: SIGN, 13: SKY, 17: FENCE, 18: SIGN, 22: VEGETATION,
}
"""CARLA 0.9.0-0.9.13 semantic tags (R channel) -> AT/DT; unlisted tags -> 255.

0 None, 3 Other, 14 Ground, 15 Bridge, 16 RailTrack, 19 Static, 20 Dynamic, 21 Water are
ignored; 6 RoadLines joins Road, 17 GuardRail joins Fence, 18 TrafficLight joins Traffic Signs,
22 Terrain joins Vegetation."""

SYNTHIA_TO_ATDT: dict[int, int] = {
    1: ROAD, 2: SIDEWALK, 3: BUILDING, 4: WALL, 5: FENCE, 6: POLE, 7: SIGN, 8: SIGN,
    9: VEGETATION, 10: VEGETATION, 11: SKY, 12: PERSON, 13: PERSON,
    14: VEHICLE, 15: VEHICLE, 16: VEHICLE, 17: VEHICLE, 18: VEHICLE, 19: VEHICLE,
    20: ROAD,  # road lines
}
"""Synthia-SF class ids -> AT/DT; 0 void, 21 other, 22 road works -> 255."""


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A uint8 lookup table of ``size`` entries: native id -> AT/DT id, UNLABELED elsewhere."""
    lut = np.full(size, UNLABELED, dtype=np.uint8)
    for native, ours in mapping.items():
        lut[native] = ours
    return lut


SIM_LUT = lookup_table({i: i for i in range(11)})
CITYSCAPES_LUT = lookup_table(CITYSCAPES_TO_ATDT)
CARLA_LUT = lookup_table(CARLA_TO_ATDT)
SYNTHIA_LUT = lookup_table(SYNTHIA_TO_ATDT)


def read_image(path: Path, what: str) -> np.ndarray:
    """Read an image file unchanged (any bit depth and channel count); DatasetError naming it."""
    import cv2

    if not os.path.isfile(path):
        raise DatasetError(f"{what} file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{what} file is not a readable image: {path}")
    return image


def read_rgb(path: Path, what: str = "rgb") -> np.ndarray:
    """Read a colour image as uint8 RGB (H, W, 3), whatever its channels and bit depth on disk."""
    import cv2

    image = read_image(path, what)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"{what} file {path} has unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _channel(image: np.ndarray, path: Path, what: str, bgr_index: int | None) -> np.ndarray:
    """One channel of a label image: the single plane, or OpenCV's BGR plane ``bgr_index``."""
    if image.ndim == 2:
        return image
    if bgr_index is None:
        raise DatasetError(f"{what} file {path} has {image.shape[2]} channels, expected 1")
    return image[:, :, bgr_index]


def _map_ids(ids: np.ndarray, lut: np.ndarray, path: Path, what: str) -> np.ndarray:
    if ids.dtype == np.uint8:
        return lut[ids]
    if ids.dtype == np.uint16:
        big = np.full(65536, UNLABELED, dtype=np.uint8)
        big[: lut.size] = lut
        return big[ids]
    raise DatasetError(f"{what} file {path} has unsupported pixel type {ids.dtype}")


def depth_from_png256(path: Path, what: str = "depth") -> np.ndarray:
    """Project depth labels: uint16 PNG of metres * 256, 0 = invalid -> float32 metres."""
    raw = read_image(path, what)
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise DatasetError(
            f"{what} file {path} must be a single-channel uint16 PNG (metres * 256), "
            f"got {raw.dtype} with shape {raw.shape}"
        )
    return raw.astype(np.float32) / np.float32(DEPTH_PNG_SCALE)


def depth_from_disparity(disparity: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Metres from disparity in pixels: z = fx * baseline / d; 0 where d <= 0."""
    disparity = disparity.astype(np.float32, copy=False)
    depth = np.zeros_like(disparity)
    valid = disparity > 0
    depth[valid] = np.float32(fx * baseline) / disparity[valid]
    return depth


def encode_depth_png256(depth: np.ndarray) -> np.ndarray:
    """float32 metres (0 = invalid) -> uint16 metres * 256, rounded; values past 255.99 m -> 0."""
    scaled = np.rint(np.nan_to_num(depth, nan=0.0, posinf=0.0) * DEPTH_PNG_SCALE)
    scaled[(scaled < 0) | (scaled > 65535)] = 0
    return scaled.astype(np.uint16)


@dataclass(frozen=True)
class Camera:
    """A frame's camera: focal length (pixels) and baseline (m), which decoding needs, and fy and
    the principal point (cx, cy) where the dataset gives them (None: not given). All in pixels at
    the size the camera file describes (``width`` x ``height``; None: the image's own size).
    ``mount_height``: the camera's height above the road in metres, where the dataset gives it
    (height-normalised depth, ``depth.height_normalised``, needs it)."""

    fx: float
    baseline: float | None = None
    width: int | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    height: int | None = None
    mount_height: float | None = None


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) of an image of ``width`` x ``height``, pixel centres at integer
    coordinates (OpenCV's and REP 104's K). ``measured``: fy and the principal point came from the
    dataset; False where they were assumed (fy = fx, principal point at the image centre)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    measured: bool = True

    def resized(self, height: int, width: int) -> Intrinsics:
        """The same camera once the image is resized to ``height`` x ``width``: focal lengths scale,
        the principal point follows cv2.resize's pixel-centre mapping u' = (u + 0.5) * s - 0.5."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, width, height, self.measured)


def camera_intrinsics(camera: Camera, height: int, width: int) -> Intrinsics:
    """The intrinsics of ``camera`` for its image of ``height`` x ``width`` (the image's native
    size; a camera file describing another size is rescaled, its height defaulting to the same
    scale as its width). What the dataset does not give is assumed: fy = fx, principal point at
    the image centre ((W - 1) / 2, (H - 1) / 2)."""
    sx = width / camera.width if camera.width else 1.0
    sy = height / camera.height if camera.height else sx
    fx = camera.fx * sx
    fy = (camera.fx if camera.fy is None else camera.fy) * sy
    cx = (width - 1) / 2.0 if camera.cx is None else (camera.cx + 0.5) * sx - 0.5
    cy = (height - 1) / 2.0 if camera.cy is None else (camera.cy + 0.5) * sy - 0.5
    measured = None not in (camera.fy, camera.cx, camera.cy)
    return Intrinsics(fx, fy, cx, cy, width, height, measured)


@lru_cache(maxsize=4096)
def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise DatasetError(f"cannot read camera file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"camera file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"camera file {path} must hold a JSON object")
    return data


def _number(data: dict, keys: tuple[str, ...], path: Path) -> float:
    value: object = data
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise DatasetError(f"camera file {path} lacks key {'.'.join(keys)}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"camera file {path}: {'.'.join(keys)} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: dict, keys: tuple[str, ...], path: Path) -> float | None:
    """``_number`` where the key is present (and not null), else None."""
    value: object = data
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return _number(data, keys, path)


class Decoder:
    """How one dataset kind stores labels, depth and camera; subclasses fill in the details."""

    kind: str = ""

    def __init__(self, fx: float | None = None, baseline: float | None = None) -> None:
        self.default_fx = fx
        self.default_baseline = baseline

    def rgb(self, path: Path) -> np.ndarray:
        """uint8 RGB (H, W, 3)."""
        return read_rgb(path, "rgb")

    def semantic(self, path: Path) -> np.ndarray:
        """uint8 (H, W) AT/DT class ids, 255 = ignore."""
        raise NotImplementedError

    def depth(self, path: Path, frame: Frame) -> np.ndarray:
        """float32 (H, W) metres, 0 = invalid."""
        return depth_from_png256(path)

    def camera(self, frame: Frame, width: int) -> Camera | None:
        """The frame's camera from the dataset's files, else the defaults given; None if unknown."""
        if self.default_fx is None:
            return None
        return Camera(self.default_fx, self.default_baseline, None)


class SimDecoder(Decoder):
    """``atdt_train simulate`` output: class ids as uint8, depth uint16 metres*256, camera.json."""

    kind = "sim"

    def semantic(self, path: Path) -> np.ndarray:
        ids = _channel(read_image(path, "semantic"), path, "semantic", None)
        return _map_ids(ids, SIM_LUT, path, "semantic")

    def camera(self, frame: Frame, width: int) -> Camera | None:
        for candidate in (frame.rgb.parent.parent / "camera.json", frame.rgb.parent / "camera.json"):
            if candidate.is_file():
                data = _load_json(str(candidate))
                width_, height_ = (_optional_number(data, (k,), candidate) for k in ("width", "height"))
                return Camera(
                    _number(data, ("fx",), candidate), _optional_number(data, ("baseline",), candidate),
                    None if width_ is None else int(width_),
                    fy=_optional_number(data, ("fy",), candidate), cx=_optional_number(data, ("cx",), candidate),
                    cy=_optional_number(data, ("cy",), candidate), height=None if height_ is None else int(height_),
                    mount_height=_optional_number(data, ("mount_height_m",), candidate),
                )
        return super().camera(frame, width)


class CarlaDecoder(Decoder):
    """CARLA sensor output saved as PNG: depth in 24 bits of RGB, semantic tag in R.

    Without a given focal length the camera is CARLA's default 90 degree FOV: fx = width / 2.
    """

    kind = "carla"
    FAR_PLANE_M = 1000.0

    def semantic(self, path: Path) -> np.ndarray:
        ids = _channel(read_image(path, "semantic"), path, "semantic", 2)
        return _map_ids(ids, CARLA_LUT, path, "semantic")

    def depth(self, path: Path, frame: Frame) -> np.ndarray:
        raw = read_image(path, "depth")
        if raw.ndim == 2 and raw.dtype == np.uint16:  # a label written by this project
            return depth_from_png256(path)
        if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype != np.uint8:
            raise DatasetError(f"depth file {path}: expected CARLA's 8-bit RGB depth encoding, "
                               f"got {raw.dtype} with shape {raw.shape}")
        return decode_rgb24_depth(raw, self.FAR_PLANE_M)

    def camera(self, frame: Frame, width: int) -> Camera | None:
        if self.default_fx is not None:
            return super().camera(frame, width)
        return Camera(width / 2.0, self.default_baseline, width)  # principal point: the image centre


def decode_rgb24_depth(bgr: np.ndarray, far_m: float) -> np.ndarray:
    """(R + G*256 + B*256^2) / (256^3 - 1) * far_m from an OpenCV BGR(A) image; the far plane -> 0."""
    b = bgr[:, :, 0].astype(np.float64)
    g = bgr[:, :, 1].astype(np.float64)
    r = bgr[:, :, 2].astype(np.float64)
    code = r + g * 256.0 + b * 65536.0
    depth = (code / (256.0**3 - 1.0) * far_m).astype(np.float32)
    depth[code >= 256.0**3 - 1.0] = 0.0
    return depth


class CityscapesDecoder(Decoder):
    """Cityscapes: gtFine labelIds, disparity PNG (p - 1) / 256, per-image camera JSON (its
    ``extrinsic.z``, the camera's height above the road, is the frame's ``mount_height``)."""

    kind = "cityscapes"

    def semantic(self, path: Path) -> np.ndarray:
        ids = _channel(read_image(path, "semantic"), path, "semantic", None)
        return _map_ids(ids, CITYSCAPES_LUT, path, "semantic")

    @staticmethod
    def camera_path(rgb: Path) -> Path:
        """``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` -> ``camera/<split>/<city>/<name>_camera.json``."""
        name = rgb.name.replace("_leftImg8bit", "_camera")
        return rgb.parents[3] / "camera" / rgb.parent.parent.name / rgb.parent.name / (Path(name).stem + ".json")

    def camera(self, frame: Frame, width: int) -> Camera | None:
        path = self.camera_path(frame.rgb) if len(frame.rgb.parents) > 3 else None
        if path is not None and path.is_file():
            data = _load_json(str(path))
            return Camera(_number(data, ("intrinsic", "fx"), path),
                          _number(data, ("extrinsic", "baseline"), path), None,
                          fy=_optional_number(data, ("intrinsic", "fy"), path),
                          cx=_optional_number(data, ("intrinsic", "u0"), path),
                          cy=_optional_number(data, ("intrinsic", "v0"), path),
                          mount_height=_optional_number(data, ("extrinsic", "z"), path))
        return super().camera(frame, width)

    def depth(self, path: Path, frame: Frame) -> np.ndarray:
        if not (path.name.endswith("_disparity.png") or path.parent.parent.parent.name == "disparity"):
            return depth_from_png256(path)  # proxy depth labels written by this project
        raw = read_image(path, "disparity")
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise DatasetError(f"disparity file {path} must be a single-channel uint16 PNG, got {raw.dtype} {raw.shape}")
        camera = self.camera(frame, raw.shape[1])
        if camera is None or camera.baseline is None:
            raise DatasetError(f"disparity file {path} needs its camera JSON "
                               f"{self.camera_path(frame.rgb)} (or a focal length and baseline)")
        disparity = np.where(raw > 0, (raw.astype(np.float32) - 1.0) / 256.0, 0.0)
        return depth_from_disparity(disparity, camera.fx, camera.baseline)


class KittiDecoder(Decoder):
    """KITTI: uint16 depth or disparity PNGs (/256), KITTI-2015 semantics in Cityscapes labelIds.

    A file under a folder whose name starts with ``disp`` (``disp_occ_0``, ``disp_noc_0``) holds
    disparity, converted with fx and baseline; any other uint16 PNG holds depth in metres * 256.
    """

    kind = "kitti"
    DEFAULT_FX = 721.5377
    DEFAULT_BASELINE = 0.54
    MOUNT_HEIGHT = 1.65  # the colour cameras' height above the road (Geiger et al., IJRR 2013, Fig. 3)

    def __init__(self, fx: float | None = None, baseline: float | None = None) -> None:
        super().__init__(self.DEFAULT_FX if fx is None else fx,
                         self.DEFAULT_BASELINE if baseline is None else baseline)

    def semantic(self, path: Path) -> np.ndarray:
        ids = _channel(read_image(path, "semantic"), path, "semantic", None)
        return _map_ids(ids, CITYSCAPES_LUT, path, "semantic")

    def depth(self, path: Path, frame: Frame) -> np.ndarray:
        if not path.parent.name.startswith("disp"):
            return depth_from_png256(path)
        raw = read_image(path, "disparity")
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise DatasetError(f"disparity file {path} must be a single-channel uint16 PNG, got {raw.dtype} {raw.shape}")
        return depth_from_disparity(raw.astype(np.float32) / 256.0, self.default_fx, self.default_baseline)

    def camera(self, frame: Frame, width: int) -> Camera | None:
        return Camera(self.default_fx, self.default_baseline, None, mount_height=self.MOUNT_HEIGHT)  # type: ignore[arg-type]


class SynthiaDecoder(Decoder):
    """Synthia-SF: GT labels with the class id in the R channel, depth in 24 bits of RGB."""

    kind = "synthia"
    FAR_PLANE_M = 5000.0
    DEFAULT_FX = 847.630211643

    def __init__(self, fx: float | None = None, baseline: float | None = None) -> None:
        super().__init__(self.DEFAULT_FX if fx is None else fx, baseline)

    def semantic(self, path: Path) -> np.ndarray:
        ids = _channel(read_image(path, "semantic"), path, "semantic", 2)
        return _map_ids(ids, SYNTHIA_LUT, path, "semantic")

    def depth(self, path: Path, frame: Frame) -> np.ndarray:
        raw = read_image(path, "depth")
        if raw.ndim == 2 and raw.dtype == np.uint16:
            return depth_from_png256(path)
        if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype != np.uint8:
            raise DatasetError(f"depth file {path}: expected Synthia-SF's 8-bit RGB depth encoding, "
                               f"got {raw.dtype} with shape {raw.shape}")
        return decode_rgb24_depth(raw, self.FAR_PLANE_M)


_DECODERS: dict[str, type[Decoder]] = {
    "sim": SimDecoder, "carla": CarlaDecoder, "cityscapes": CityscapesDecoder,
    "kitti": KittiDecoder, "synthia": SynthiaDecoder,
}


def get_decoder(kind: str, fx: float | None = None, baseline: float | None = None) -> Decoder:
    """The decoder of a dataset kind; ``fx``/``baseline`` override what the dataset does not give."""
    try:
        cls = _DECODERS[kind]
    except KeyError:
        raise DatasetError(f"unknown dataset kind {kind!r}; accepted: {', '.join(KINDS)}") from None
    return cls(fx, baseline)
