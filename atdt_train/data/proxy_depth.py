"""Proxy depth labels from stereo (the paper's Cityscapes procedure).

Disparity from OpenCV's semi-global matcher (StereoSGBM), filtered by a left-right consistency
check: the right view's disparity is matched on mirrored images, and a left pixel is kept only
when the right view maps it back to within ``max_lr_diff`` pixels. Kept disparities become
metres with z = fx * baseline / (d + doffs), ``doffs`` being the principal-point offset of the
two cameras (0 for a usual rectified pair, Middlebury's ``doffs``); everything else is 0 (invalid).

The searched range is derived from the nearest depth to expect unless given:
``num_disparities = fx * baseline / min_depth - doffs``, rounded up to a multiple of 16. A range
too small for the scene shows as disparities piling up at its top (:func:`saturated_share`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

DEFAULT_MIN_DEPTH_M = 0.5
"""Nearest depth the derived disparity range reaches; the training configs' ``depth.min_depth``
(ground truth nearer than this is ignored by the depth metrics anyway)."""

SATURATION_MARGIN_PX = 2.0
"""A disparity within this many pixels of ``num_disparities`` counts as at the top of the range."""

SATURATION_SHARE = 0.01
"""A frame is saturated when at least this share of its matched disparities is at the top."""

LOW_KEPT_FRACTION = 0.4
"""Below this share of pixels kept, the run's summary warns (the simulated pairs keep 81-85 %)."""


@dataclass(frozen=True)
class StereoParams:
    """StereoSGBM settings and the consistency threshold (pixels).

    ``num_disparities`` None derives the range per frame from fx, baseline, ``min_depth``
    (metres) and doffs (:func:`disparity_range`); ``min_depth`` is used only then.
    """

    num_disparities: int | None = None
    block_size: int = 5
    max_lr_diff: float = 1.0
    uniqueness_ratio: int = 10
    speckle_window: int = 100
    speckle_range: int = 2
    min_depth: float = DEFAULT_MIN_DEPTH_M

    def __post_init__(self) -> None:
        if self.num_disparities is not None and (self.num_disparities <= 0 or self.num_disparities % 16):
            raise ValueError(f"num_disparities must be a positive multiple of 16 (or None to derive it "
                             f"from min_depth), got {self.num_disparities}")
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f"block_size must be a positive odd number, got {self.block_size}")
        if self.max_lr_diff < 0:
            raise ValueError(f"max_lr_diff must be >= 0, got {self.max_lr_diff}")
        if not (math.isfinite(self.min_depth) and self.min_depth > 0):
            raise ValueError(f"min_depth must be a positive number of metres, got {self.min_depth}")


def disparity_range(fx: float, baseline: float, min_depth: float = DEFAULT_MIN_DEPTH_M,
                    doffs: float = 0.0, width: int | None = None) -> int:
    """SGBM ``num_disparities`` reaching depth ``min_depth``: fx * baseline / min_depth - doffs,
    rounded up to a multiple of 16 (at least 16; at most the image ``width`` rounded up, since a
    larger disparity leaves no overlap)."""
    if fx <= 0 or baseline <= 0:
        raise ValueError(f"fx and baseline must be positive, got fx={fx}, baseline={baseline}")
    if not (math.isfinite(min_depth) and min_depth > 0):
        raise ValueError(f"min_depth must be a positive number of metres, got {min_depth}")
    if not math.isfinite(doffs):
        raise ValueError(f"doffs must be a finite number of pixels, got {doffs}")
    needed = fx * baseline / min_depth - doffs
    steps = max(1, math.ceil(needed / 16.0 - 1e-9))
    if width is not None:
        steps = min(steps, max(1, math.ceil(width / 16.0)))
    return 16 * steps


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


def sgbm_disparity(left: np.ndarray, right: np.ndarray, params: StereoParams) -> tuple[np.ndarray, np.ndarray]:
    """Left and right disparity maps (float32 pixels, <= 0 where unmatched) of a rectified pair.

    Both images are padded with ``num_disparities`` black columns on the side SGBM leaves
    unmatched (its first ``num_disparities`` columns), so every column is searched over the whole
    range; pixels whose match would fall in the padding are removed by :func:`left_right_check`.
    """
    import cv2

    if params.num_disparities is None:
        raise ValueError("sgbm_disparity needs num_disparities; compute_proxy_depth derives it "
                         "from fx, baseline and min_depth")
    if left.shape != right.shape:
        raise ValueError(f"stereo images differ in shape: left {left.shape}, right {right.shape}")
    matcher = _matcher(params)
    pad = params.num_disparities

    def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = cv2.copyMakeBorder(np.ascontiguousarray(a), 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0)
        b = cv2.copyMakeBorder(np.ascontiguousarray(b), 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0)
        return matcher.compute(a, b)[:, pad:].astype(np.float32) / 16.0

    disp_left = match(left, right)
    # The right view's disparity is the left view's disparity of the mirrored pair, mirrored back.
    disp_right = np.ascontiguousarray(match(right[:, ::-1], left[:, ::-1])[:, ::-1])
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


def saturated_share(disparity: np.ndarray, num_disparities: int, margin: float = SATURATION_MARGIN_PX) -> float:
    """Share of the matched (> 0) disparities within ``margin`` pixels of the top of the range.

    SGM cannot go past ``num_disparities``: where the scene is nearer, its smoothness term piles
    the disparities up just below the limit (or matches wrongly).
    """
    matched = disparity > 0
    count = int(matched.sum())
    if count == 0:
        return 0.0
    return float((matched & (disparity >= num_disparities - margin)).sum()) / count


@dataclass(frozen=True)
class ProxyDepth:
    """One frame's proxy depth and what produced it."""

    depth: np.ndarray  # float32 metres, 0 = invalid
    disparity: np.ndarray  # the left view's SGBM disparity (pixels, <= 0 unmatched), before the check
    kept: np.ndarray  # bool, pixels that passed the left-right check (and d + doffs > 0)
    num_disparities: int  # the range searched
    nearest_depth: float  # metres, the nearest depth that range reaches: fx * baseline / (num_disparities + doffs)

    @property
    def kept_fraction(self) -> float:
        """Share of the image's pixels with a depth."""
        return float(self.kept.mean()) if self.kept.size else 0.0

    @property
    def saturated_share(self) -> float:
        """:func:`saturated_share` of this frame's disparity."""
        return saturated_share(self.disparity, self.num_disparities)


def stereo_proxy_depth(left_rgb: np.ndarray, right_rgb: np.ndarray, fx: float, baseline: float,
                       params: StereoParams = StereoParams(), doffs: float = 0.0) -> ProxyDepth:
    """Proxy depth of the left image of a rectified RGB (or grey) pair, with the disparity behind it.

    ``fx`` and ``doffs`` are in pixels at the images' width, ``baseline`` in metres.
    """
    import cv2

    if fx <= 0 or baseline <= 0:
        raise ValueError(f"fx and baseline must be positive, got fx={fx}, baseline={baseline}")
    if not math.isfinite(doffs):
        raise ValueError(f"doffs must be a finite number of pixels, got {doffs}")
    if params.num_disparities is None:
        params = replace(params, num_disparities=disparity_range(fx, baseline, params.min_depth, doffs,
                                                                  left_rgb.shape[1]))
    assert params.num_disparities is not None
    gray_l = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2GRAY) if left_rgb.ndim == 3 else left_rgb
    gray_r = cv2.cvtColor(right_rgb, cv2.COLOR_RGB2GRAY) if right_rgb.ndim == 3 else right_rgb
    disp_left, disp_right = sgbm_disparity(gray_l, gray_r, params)
    keep = left_right_check(disp_left, disp_right, params.max_lr_diff) & (disp_left + np.float32(doffs) > 0)
    depth = np.zeros(disp_left.shape, dtype=np.float32)
    depth[keep] = np.float32(fx * baseline) / (disp_left[keep] + np.float32(doffs))
    top = params.num_disparities + doffs
    nearest = fx * baseline / top if top > 0 else math.inf
    return ProxyDepth(depth, disp_left, keep, params.num_disparities, nearest)


def compute_proxy_depth(left_rgb: np.ndarray, right_rgb: np.ndarray, fx: float, baseline: float,
                        params: StereoParams = StereoParams(), doffs: float = 0.0) -> np.ndarray:
    """Metric depth (float32, 0 = invalid) of the left image: :func:`stereo_proxy_depth`'s depth."""
    return stereo_proxy_depth(left_rgb, right_rgb, fx, baseline, params, doffs).depth


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
