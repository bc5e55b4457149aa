"""The one presentation of depth for figures, offline reports and replay reports alike."""

from __future__ import annotations

import numpy as np


def depth_colormap(depth: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """Depth in metres -> RGB uint8: log depth over ``depth_range`` on matplotlib's magma, near
    bright and far dark; no reading (NaN, <= 0) black."""
    import matplotlib

    lo = max(float(depth_range[0]), 1e-3)  # a range starting at 0 m has no log scale
    hi = max(float(depth_range[1]), lo * 1.001)
    valid = np.isfinite(depth) & (depth > 0)
    norm = np.zeros(depth.shape, dtype=np.float64)
    norm[valid] = 1.0 - np.log(np.clip(depth[valid], lo, hi) / lo) / np.log(hi / lo)
    rgb = (matplotlib.colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb
