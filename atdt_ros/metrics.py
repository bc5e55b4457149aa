"""The one metrics module of AT/DT (numpy only): segmentation and depth metrics.

Used by offline evaluation (``atdt_train evaluate``) and by rosbag replay (``atdt_replay``).

- ``SegmentationMetric``: a confusion matrix accumulated over all pixels of all images, then
  per-class IoU = TP / (TP + FP + FN), mIoU and pixel accuracy (Cityscapes definition). Pixels
  whose ground truth is ``ignore_index`` are left out; a class absent from both ground truth and
  prediction has IoU NaN and is excluded from the mean.
- ``DepthMetric``: the Eigen et al. metrics (Abs Rel, Sq Rel, RMSE, RMSE log, δ<1.25^k) pooled
  over the valid pixels of all images; valid means ground truth in (min_depth, max_depth),
  predictions are clipped to that range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEPTH_METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
"""Names of the seven depth metrics, in the paper's table order."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log"})


class SegmentationMetric:
    """Accumulates a confusion matrix; ``compute()`` gives per-class IoU, mIoU and accuracy."""

    def __init__(self, num_classes: int = 11, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        # rows: ground truth; columns: prediction, the extra last column = out-of-range prediction
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add one image or a batch: integer class ids of the same shape."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {target.shape}")
        target = target.reshape(-1).astype(np.int64)
        pred = pred.reshape(-1).astype(np.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(f"ground truth holds class ids {np.unique(target[bad]).tolist()} outside "
                             f"0..{self.num_classes - 1} (and ignore {self.ignore_index})")
        pred = np.where((pred < 0) | (pred >= self.num_classes), self.num_classes, pred)
        idx = target * (self.num_classes + 1) + pred
        self.confusion += np.bincount(idx, minlength=self.num_classes * (self.num_classes + 1)).reshape(
            self.num_classes, self.num_classes + 1)

    def merge(self, other: "SegmentationMetric") -> None:
        """Add another accumulator's counts (e.g. from another process)."""
        self.confusion += other.confusion

    def compute(self) -> dict[str, Any]:
        """``iou`` (per-class list, NaN when absent), ``miou``, ``accuracy`` (fractions 0..1)."""
        cm = self.confusion
        tp = np.diag(cm[:, : self.num_classes]).astype(np.float64)
        gt = cm.sum(axis=1).astype(np.float64)  # TP + FN
        predicted = cm[:, : self.num_classes].sum(axis=0).astype(np.float64)  # TP + FP
        union = gt + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        present = ~np.isnan(iou)
        total = gt.sum()
        return {
            "iou": [float(v) for v in iou],
            "miou": float(iou[present].mean()) if present.any() else math.nan,
            "accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "pixels": int(total),
        }


class DepthMetric:
    """Accumulates Eigen depth-error sums over valid pixels; ``compute()`` gives the seven metrics."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0) -> None:
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.sums = dict.fromkeys(("count", "abs_rel", "sq_rel", "sq", "sq_log", "delta1", "delta2", "delta3"), 0.0)

    def update(self, pred: Any, target: Any, valid: Any | None = None) -> None:
        """Add one image or a batch of depths in metres; ``valid`` optionally masks pixels further."""
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {target.shape}")
        mask = np.isfinite(target) & (target > self.min_depth) & (target < self.max_depth)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != target.shape:
                raise ValueError(f"valid mask shape {valid.shape} differs from ground truth shape {target.shape}")
            mask &= valid
        t = target[mask]
        p = np.clip(np.nan_to_num(pred[mask], nan=self.min_depth), self.min_depth, self.max_depth)
        if t.size == 0:
            return
        diff = p - t
        ratio = np.maximum(p / t, t / p)
        s = self.sums
        s["count"] += t.size
        s["abs_rel"] += float(np.sum(np.abs(diff) / t))
        s["sq_rel"] += float(np.sum(diff**2 / t))
        s["sq"] += float(np.sum(diff**2))
        s["sq_log"] += float(np.sum((np.log(p) - np.log(t)) ** 2))
        for k in (1, 2, 3):
            s[f"delta{k}"] += float(np.sum(ratio < 1.25**k))

    def merge(self, other: "DepthMetric") -> None:
        """Add another accumulator's sums (e.g. from another process)."""
        for key, value in other.sums.items():
            self.sums[key] += value

    def compute(self) -> dict[str, float]:
        """abs_rel, sq_rel, rmse, rmse_log, delta1..3 (deltas as fractions); NaN when no pixel."""
        s = self.sums
        n = s["count"]
        if n == 0:
            return dict.fromkeys(DEPTH_METRICS, math.nan) | {"pixels": 0}
        return {
            "abs_rel": s["abs_rel"] / n,
            "sq_rel": s["sq_rel"] / n,
            "rmse": math.sqrt(s["sq"] / n),
            "rmse_log": math.sqrt(s["sq_log"] / n),
            "delta1": s["delta1"] / n,
            "delta2": s["delta2"] / n,
            "delta3": s["delta3"] / n,
            "pixels": int(n),
        }
