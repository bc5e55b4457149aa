"""Organised point cloud of a depth image: a point in the camera's optical frame and a class id
for every pixel.

A pixel (u, v) with depth z is the point ``z * K^-1 [u, v, 1]``: x = (u - cx) z / fx,
y = (v - cy) z / fy (REP 103 optical frame: x right, y down, z forward), the pinhole
back-projection of depth_image_proc's ``point_cloud_xyz``; the skew term is ignored as there.
Pixels without a finite positive depth (NaN, +-Inf, 0 in 16UC1 millimetres) are NaN points, so
the cloud keeps the image's height x width (organised, not dense). The layout is PCL's
``PointXYZL`` (float32 x, y, z, uint32 label). Numpy only, vectorised; the buffers are reused
while the image size and the intrinsics stay the same.
"""

from __future__ import annotations

import numpy as np

POINT_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("x", 0, "float32"), ("y", 4, "float32"), ("z", 8, "float32"), ("label", 12, "uint32"))
"""(name, byte offset, numpy type) of each field of a point."""
POINT_STEP: int = 16
"""Bytes per point."""
POINT_DTYPE = np.dtype({"names": [f[0] for f in POINT_FIELDS],
                        "formats": [np.dtype(f[2]).newbyteorder("=") for f in POINT_FIELDS],
                        "offsets": [f[1] for f in POINT_FIELDS], "itemsize": POINT_STEP})
"""One point as a numpy structured type (native byte order)."""


class PointCloudBuilder:
    """The organised cloud of a depth image and its labels, in one reused (H, W) buffer."""

    def __init__(self) -> None:
        self._key: tuple | None = None

    def _ensure(self, height: int, width: int, k: np.ndarray) -> None:
        fx, fy, cx, cy = (float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
        key = (height, width, fx, fy, cx, cy)
        if key == self._key:
            return
        if not (fx > 0 and fy > 0 and np.isfinite([fx, fy, cx, cy]).all()):
            raise ValueError(f"intrinsics fx {fx}, fy {fy}, cx {cx}, cy {cy}: fx and fy must be "
                             f"positive and all finite")
        self._rx = ((np.arange(width, dtype=np.float64) - cx) / fx).astype(np.float32)
        self._ry = ((np.arange(height, dtype=np.float64) - cy) / fy).astype(np.float32)[:, None]
        self._z = np.empty((height, width), np.float32)
        self._bad = np.empty((height, width), bool)
        self.cloud = np.empty((height, width), POINT_DTYPE)
        self._key = key

    def __call__(self, depth: np.ndarray, labels: np.ndarray, k) -> np.ndarray:
        """The (H, W) cloud (:data:`POINT_DTYPE`) of ``depth`` (float32 metres, or uint16
        millimetres with 0 = no depth) and ``labels`` (H, W class ids) under the 3x3 intrinsic
        matrix ``k`` of the image; the returned array is overwritten by the next call."""
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        if depth.ndim != 2 or depth.dtype not in (np.float32, np.uint16):
            raise ValueError(f"depth must be (H, W) float32 metres or uint16 millimetres, got "
                             f"{depth.dtype}{depth.shape}")
        if labels.shape != depth.shape:
            raise ValueError(f"labels {labels.shape} and depth {depth.shape} differ in size")
        self._ensure(*depth.shape, k)
        z, bad, cloud = self._z, self._bad, self.cloud
        if depth.dtype == np.uint16:
            np.multiply(depth, np.float32(0.001), out=z)
        else:
            np.copyto(z, depth)
        np.greater(z, 0, out=bad)          # False for NaN, -Inf, 0 and below
        np.logical_not(bad, out=bad)
        np.copyto(z, np.float32(np.nan), where=bad)
        np.isinf(z, out=bad)               # +Inf: too far has no point
        np.copyto(z, np.float32(np.nan), where=bad)
        np.copyto(cloud["z"], z)
        np.multiply(z, self._rx, out=cloud["x"])
        np.multiply(z, self._ry, out=cloud["y"])
        np.copyto(cloud["label"], labels, casting="unsafe")
        return cloud
