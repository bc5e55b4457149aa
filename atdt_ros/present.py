"""The one presentation layer of offline reports, replay reports, the demo table and the suite:
number formats, metric labels, the depth colour map and the figure grid (numpy and matplotlib
only, so that the vehicle side can draw what the training side draws)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atdt_ros.files import atomic_path
from atdt_ros.metrics import LOWER_IS_BETTER

MISSING = "–"
"""What a table shows for a value that does not exist (None, NaN, ±Inf)."""

DEPTH_NAMES: dict[str, str] = {
    "abs_rel": "Abs Rel", "sq_rel": "Sq Rel", "rmse": "RMSE", "rmse_log": "RMSE log",
    "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³",
}
"""The seven depth metrics' names as tables print them (keys of ``atdt_ros.metrics.DEPTH_METRICS``)."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def number(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    """``value * scale`` with ``digits`` decimals, or :data:`MISSING`."""
    return MISSING if _missing(value) else f"{value * scale:.{digits}f}"


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction in percent (0.554 -> "55.4"), or :data:`MISSING`."""
    return number(value, digits, 100.0)


def signed(value: float | None, digits: int, scale: float = 1.0) -> str:
    """A difference with its sign ("+1.2", "-0.034"), or :data:`MISSING`."""
    return MISSING if _missing(value) else f"{value * scale:+.{digits}f}"


def depth_header(metric: str) -> str:
    """A depth metric's column header with the direction that is better ("Abs Rel ↓", "δ<1.25 ↑")."""
    return f"{DEPTH_NAMES[metric]} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def depth_value(metric: str, value: float | None) -> str:
    """A depth metric as the tables print it: the δ ratios in %, the errors with 3 decimals."""
    return percent(value) if metric.startswith("delta") else number(value)


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


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (no partial file) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return path


def save_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: Path,
              row_labels: Sequence[str] | None = None, panel_height: float = 2.4) -> Path:
    """A Fig. 3-like grid (PNG, atomic): one row of RGB uint8 panels per sample, ``titles`` over
    the first row, optional ``row_labels`` at the left; panels keep the first one's aspect ratio."""
    if not rows or any(len(r) != len(titles) for r in rows):
        raise ValueError(f"save_grid: every row needs {len(titles)} panels ({', '.join(titles)}), "
                         f"got {[len(r) for r in rows] or 'no rows'}")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"save_grid: {len(row_labels)} row labels for {len(rows)} rows")
    plt = pyplot()
    h, w = rows[0][0].shape[:2]
    fig, axes = plt.subplots(len(rows), len(titles), squeeze=False,
                             figsize=(len(titles) * panel_height * w / h, len(rows) * panel_height + 0.4))
    for i, panels in enumerate(rows):
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=10)
        if row_labels is not None:
            axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
