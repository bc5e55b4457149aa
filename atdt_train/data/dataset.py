"""``FrameDataset``: a torch Dataset over a filelist of any dataset kind.

Each sample is a dict: ``image`` float32 (3, H, W) normalised with ImageNet mean/std,
``semantic`` int64 (H, W) with 255 = ignore, ``depth`` float32 (H, W) metres with 0 = invalid,
``depth_valid`` bool (H, W), ``focal`` float32 (fx in pixels at the returned resolution),
``camera_height`` float32 (the camera's height above the road in metres; NaN where neither the
dataset nor ``camera_height=`` gives it) and ``index``. Missing labels come back as all-ignore / all-invalid, so mixed lists batch together.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD  # the one definition, shared with the exported chain
from atdt_ros.imgproc import normalise  # the one normalisation, shared with the node
from atdt_ros.classmap import UNLABELED

from .decoders import Decoder, Intrinsics, camera_intrinsics, get_decoder
from .filelist import DatasetError, Frame, read_filelist, read_list_kind

log = logging.getLogger(__name__)


def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) normalised with IMAGE_MEAN / IMAGE_STD."""
    return normalise(rgb, IMAGE_MEAN, IMAGE_STD)


def _pair(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width) or None, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive (height, width), got {value!r}")
    return h, w


class FrameDataset(Dataset):
    """Frames of a filelist decoded by their dataset kind, resized to ``size`` and optionally cropped.

    ``size`` (H, W) resizes every frame (image bilinear, or area when shrinking; labels and depth
    nearest); ``crop`` (h, w) then cuts a window: random with ``augment``, central otherwise.
    ``augment`` also flips horizontally with probability 0.5. ``cache`` keeps decoded, resized
    frames in memory (use it with ``num_workers=0``: every worker holds its own copy).
    ``fx``/``baseline``/``camera_height`` are used where the dataset itself gives no camera
    (``camera_height``: metres above the road, for height-normalised depth).
    """

    def __init__(
        self,
        filelist: str | os.PathLike | Sequence[Frame],
        kind: str | None = None,
        size: Sequence[int] | None = None,
        crop: Sequence[int] | None = None,
        augment: bool = False,
        cache: bool = False,
        fx: float | None = None,
        baseline: float | None = None,
        camera_height: float | None = None,
    ) -> None:
        if isinstance(filelist, (str, os.PathLike)):
            self.source = str(filelist)
            self.frames = read_filelist(filelist)
            kind = kind or read_list_kind(filelist)
            if kind is None:
                raise DatasetError(f"no dataset kind for {filelist}: pass kind= or put a "
                                   f"dataset.yaml with 'kind:' beside the list")
        else:
            self.source = "<frames>"
            self.frames = list(filelist)
            if kind is None:
                raise DatasetError("kind= is required when frames are given directly")
        if not self.frames:
            raise DatasetError(f"filelist {self.source} holds no frames")
        self.kind = kind
        self.decoder: Decoder = get_decoder(kind, fx, baseline)
        self.default_camera_height = camera_height
        self.size = _pair(size, "size")
        self.crop = _pair(crop, "crop")
        if self.crop and self.size and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise ValueError(f"crop {self.crop} is larger than size {self.size}")
        self.augment = bool(augment)
        self.cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, Intrinsics]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Decoded and resized frame: RGB uint8 (H,W,3), labels uint8, depth float32, fx in pixels."""
        rgb, semantic, depth, intrinsics = self.load_calibrated(index)
        return rgb, semantic, depth, intrinsics.fx

    def load_calibrated(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Intrinsics]:
        """``load`` with the camera's full intrinsics (fx, fy, cx, cy) at the returned resolution."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        frame = self.frames[index]
        rgb = self.decoder.rgb(frame.rgb)
        height, width = rgb.shape[:2]
        if frame.semantic is not None:
            semantic = self.decoder.semantic(frame.semantic)
            _check_shape(semantic, (height, width), frame.semantic, frame.rgb)
        else:
            semantic = np.full((height, width), UNLABELED, dtype=np.uint8)
        if frame.depth is not None:
            depth = self.decoder.depth(frame.depth, frame)
            _check_shape(depth, (height, width), frame.depth, frame.rgb)
        else:
            depth = np.zeros((height, width), dtype=np.float32)
        camera = self.decoder.camera(frame, width)
        if camera is None:
            raise DatasetError(f"no focal length for {frame.rgb}: the {self.kind} dataset gives no "
                               f"camera for it; pass fx= (pixels at the image's native width)")
        intrinsics = camera_intrinsics(camera, height, width)
        if self.size is not None and self.size != (height, width):
            rgb, semantic, depth = resize_frame(rgb, semantic, depth, self.size)
            intrinsics = intrinsics.resized(*self.size)
        item = (rgb, semantic, depth, intrinsics)
        if self.cache is not None:
            self.cache[index] = item
        return item

    def camera_height(self, index: int) -> float:
        """The camera's height above the road (m) for frame ``index``: the dataset's, else the
        ``camera_height`` given, else NaN."""
        camera = self.decoder.camera(self.frames[index], 0)
        if camera is not None and camera.mount_height is not None:
            return float(camera.mount_height)
        return float("nan") if self.default_camera_height is None else float(self.default_camera_height)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < len(self.frames):
            raise IndexError(f"index {index} out of range for {len(self.frames)} frames")
        rgb, semantic, depth, fx = self.load(index)
        if self.crop is not None:
            rgb, semantic, depth = self._crop(rgb, semantic, depth)
        if self.augment and torch.rand(()) < 0.5:
            rgb, semantic, depth = rgb[:, ::-1], semantic[:, ::-1], depth[:, ::-1]
        depth = np.ascontiguousarray(depth, dtype=np.float32)
        return {
            "image": torch.from_numpy(normalize_image(rgb)),
            "semantic": torch.from_numpy(np.ascontiguousarray(semantic)).long(),
            "depth": torch.from_numpy(depth),
            "depth_valid": torch.from_numpy(depth > 0),
            "focal": torch.tensor(fx, dtype=torch.float32),
            "camera_height": torch.tensor(self.camera_height(index), dtype=torch.float32),
            "index": index,
        }

    def _crop(self, rgb: np.ndarray, semantic: np.ndarray, depth: np.ndarray):
        ch, cw = self.crop  # type: ignore[misc]
        h, w = semantic.shape
        if ch > h or cw > w:
            raise DatasetError(f"crop {self.crop} is larger than the frame ({h}, {w}) in {self.source}")
        if self.augment:
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        window = (slice(top, top + ch), slice(left, left + cw))
        return rgb[window], semantic[window], depth[window]


def _check_shape(array: np.ndarray, expected: tuple[int, int], path: Path, rgb: Path) -> None:
    if array.shape[:2] != expected:
        raise DatasetError(f"{path} is {array.shape[1]}x{array.shape[0]} but its image {rgb} is "
                           f"{expected[1]}x{expected[0]} (width x height)")


def resize_frame(rgb: np.ndarray, semantic: np.ndarray, depth: np.ndarray,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to (H, W): the image with area (shrinking) or bilinear filtering, labels and depth nearest."""
    import cv2

    from atdt_ros.imgproc import resize_interpolation  # the node resizes camera images the same way

    h, w = size
    rgb = cv2.resize(rgb, (w, h), interpolation=resize_interpolation(rgb.shape[:2], (h, w)))
    semantic = cv2.resize(semantic, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, semantic, depth
