"""Proxy depth labels from stereo (the paper's Cityscapes procedure).

Disparity from OpenCV's semi-global matcher (StereoSGBM), filtered by a left-right consistency
check: the right view's disparity is matched on mirrored images, and a left pixel is kept only
when the right view maps it back to within ``max_lr_diff`` pixels. Kept disparities become
metres with z = fx * baseline / d; everything else is 0 (invalid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StereoParams:
    """StereoSGBM settings and the consistency threshold (pixels)."""

    num_disparities: int = 64
    block_size: int = 5
    max_lr_diff: float = 1.0
    uniqueness_ratio: int = 10
    speckle_window: int = 100
    speckle_range: int = 2

    def __post_init__(self) -> None:
        if self.num_disparities <= 0 or self.num_disparities % 16:
            raise ValueError(f"num_disparities must be a positive multiple of 16, got {self.num_disparities}")
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f"block_size must be a positive odd number, got {self.block_size}")
        if self.max_lr_diff < 0:
            raise ValueError(f"max_lr_diff must be >= 0, got {self.max_lr_diff}")


def _matcher(params: StereoParams):
    import cv2

    area = params.block_size * params.block_size
    return cv2.StereoSGBM_create(
        minDisparity=0,
        numDisparities=params.num_disparities,
        blockSize=params.block_size,
        P1=8 * 3 * area,
        P2=32 * 3 * area,
        disp12MaxDiff=-1,  # the explicit left-right check below replaces OpenCV's
        uniquenessRatio=params.uniqueness_ratio,
        speckleWindowSize=params.speckle_window,
        speckleRange=params.speckle_range,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )


def sgbm_disparity(left: np.ndarray, right: np.ndarray, params: StereoParams = StereoParams()) -> tuple[np.ndarray, np.ndarray]:
    """Left and right disparity maps (float32 pixels, <= 0 where unmatched) of a rectified pair."""
    if left.shape != right.shape:
        raise ValueError(f"stereo images differ in shape: left {left.shape}, right {right.shape}")
    matcher = _matcher(params)
    disp_left = matcher.compute(left, right).astype(np.float32) / 16.0
    # The right view's disparity is the left view's disparity of the mirrored pair, mirrored back.
    flipped = matcher.compute(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))
    disp_right = np.ascontiguousarray(flipped[:, ::-1]).astype(np.float32) / 16.0
    return disp_left, disp_right


def left_right_check(disp_left: np.ndarray, disp_right: np.ndarray, max_diff: float = 1.0) -> np.ndarray:
    """Mask of left pixels whose disparity d agrees with the right view's at x - d (within max_diff)."""
    h, w = disp_left.shape
    cols = np.arange(w, dtype=np.float32)[None, :]
    target = np.rint(cols - disp_left).astype(np.int64)
    inside = (disp_left > 0) & (target >= 0) & (target < w)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    back = disp_right[rows, np.clip(target, 0, w - 1)]
    return inside & (back > 0) & (np.abs(back - disp_left) <= max_diff)


def compute_proxy_depth(left_rgb: np.ndarray, right_rgb: np.ndarray, fx: float, baseline: float,
                        params: StereoParams = StereoParams()) -> np.ndarray:
    """Metric depth (float32, 0 = invalid) of the left image from a rectified RGB stereo pair."""
    import cv2

    if fx <= 0 or baseline <= 0:
        raise ValueError(f"fx and baseline must be positive, got fx={fx}, baseline={baseline}")
    gray_l = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2GRAY) if left_rgb.ndim == 3 else left_rgb
    gray_r = cv2.cvtColor(right_rgb, cv2.COLOR_RGB2GRAY) if right_rgb.ndim == 3 else right_rgb
    disp_left, disp_right = sgbm_disparity(gray_l, gray_r, params)
    keep = left_right_check(disp_left, disp_right, params.max_lr_diff)
    depth = np.zeros(disp_left.shape, dtype=np.float32)
    depth[keep] = np.float32(fx * baseline) / disp_left[keep]
    return depth


@dataclass
class ProxyStats:
    """How proxy depth compares with exact depth over the frames seen so far."""

    kept: int = 0
    total: int = 0
    rel_errors: list[np.ndarray] | None = None

    def add(self, proxy: np.ndarray, exact: np.ndarray | None) -> None:
        """Count kept pixels (of those with valid exact depth when it is given) and their errors."""
        if exact is None:
            self.kept += int((proxy > 0).sum())
            self.total += proxy.size
            return
        valid = exact > 0
        both = valid & (proxy > 0)
        self.kept += int(both.sum())
        self.total += int(valid.sum())
        if self.rel_errors is None:
            self.rel_errors = []
        self.rel_errors.append(np.abs(proxy[both] - exact[both]) / exact[both])

    def summary(self) -> dict[str, float]:
        """kept fraction, and median / mean absolute relative error where exact depth was given."""
        out = {"kept_fraction": self.kept / self.total if self.total else 0.0}
        if self.rel_errors:
            errors = np.concatenate(self.rel_errors)
            if errors.size:
                out["median_abs_rel"] = float(np.median(errors))
                out["mean_abs_rel"] = float(np.mean(errors))
                out["within_5pct"] = float(np.mean(errors < 0.05))
        return out
