"""Book-keeping of one replay: each frame's record and the counts reported beside the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np



@dataclass
class FrameRecord:
    """One camera frame of the bag: when it was sent, what came back, its ground truth."""

    index: int
    stamp: int
    malformed: str = ""
    published: float | None = None  # perf_counter at (first) publish
    sends: int = 0
    depth_at: float | None = None
    semantic_at: float | None = None
    depth: np.ndarray | None = None
    semantic: np.ndarray | None = None
    gt_depth: np.ndarray | None = None
    gt_semantic: np.ndarray | None = None
    rgb: np.ndarray | None = None
    keep: bool = False  # for the qualitative figure
    scored: bool = False
    expired: bool = False

    @property
    def answered(self) -> bool:
        """Both outputs received."""
        return self.depth_at is not None and self.semantic_at is not None

    @property
    def latency(self) -> float | None:
        """Seconds from publish to the last of the two outputs."""
        if not self.answered or self.published is None:
            return None
        return max(self.depth_at, self.semantic_at) - self.published  # type: ignore[type-var]


@dataclass
class Tally:
    """Counts reported beside the metrics."""

    published: int = 0
    answered: int = 0
    malformed: int = 0
    resent: int = 0
    late_outputs: int = 0
    unmatched_outputs: int = 0
    gt_unreadable: int = 0
    gt_mismatch: int = 0
    scored_frames: int = 0
    malformed_reasons: list[str] = field(default_factory=list)
