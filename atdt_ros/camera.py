"""Camera geometry of an image from its camera_info: binning, region of interest, resizing.

sensor_msgs/CameraInfo describes the camera at full resolution: ``K`` and ``P`` are in
full-resolution pixels, ``width``/``height`` are the calibrated size, and an image published
with ``binning_x``/``binning_y`` > 1 or a non-empty ``roi`` is the ROI of that image, binned
(REP 104). The intrinsics of the published image itself are therefore

    u_image = (u_full - roi.x_offset) / binning_x      (the same for v with y)

applied to the rows of K and P. :func:`image_matrices` computes them, and their rescaling when
the image has yet another size. The node uses them for the focal length of focal-normalised
depth (from P, the projection of the image as published), for the camera_info it publishes and
for the point cloud it back-projects from depth.
Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageGeometry:
    """What a camera_info says about one image: its K and P in image pixels and its size."""

    k: np.ndarray       # 3x3
    p: np.ndarray       # 3x4
    width: int          # the size the camera_info describes (ROI / binning applied)
    height: int

    @property
    def focal_x(self) -> float:
        """fx of the image, from P (K where P is all zero)."""
        return float(self.p[0, 0] if self.p[0, 0] > 0 else self.k[0, 0])

    @property
    def intrinsics(self) -> np.ndarray:
        """The 3x3 intrinsic matrix of the image: P's left 3x3 (K where P is all zero), as
        image_geometry's PinholeCameraModel and depth_image_proc take it."""
        return self.p[:, :3].copy() if self.p[0, 0] > 0 else self.k.copy()


def image_matrices(k, p, width: int, height: int, binning_x: int = 0, binning_y: int = 0,
                   roi: tuple[int, int, int, int] = (0, 0, 0, 0),
                   image_size: tuple[int, int] | None = None) -> ImageGeometry:
    """K and P of the image a camera_info describes (``roi`` = x_offset, y_offset, width,
    height in full-resolution pixels; binning 0 means 1), rescaled to ``image_size`` = (height,
    width) when the image actually received has another size."""
    k = np.array(k, dtype=np.float64).reshape(3, 3).copy()
    p = np.array(p, dtype=np.float64).reshape(3, 4).copy()
    bx, by = max(int(binning_x), 1), max(int(binning_y), 1)
    ox, oy, rw, rh = (int(v) for v in roi)
    full_w, full_h = (rw or width), (rh or height)
    for m in (k, p):
        m[0] -= ox * m[2]   # origin moved to the ROI's corner
        m[1] -= oy * m[2]
        m[0] /= bx          # binned pixels
        m[1] /= by
    described_w, described_h = full_w // bx, full_h // by
    if image_size is not None and described_w and described_h \
            and (image_size[1], image_size[0]) != (described_w, described_h):
        sx, sy = image_size[1] / described_w, image_size[0] / described_h
        for m in (k, p):
            m[0] *= sx
            m[1] *= sy
        described_h, described_w = image_size
    return ImageGeometry(k, p, described_w, described_h)
