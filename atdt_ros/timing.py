"""Where a frame's time goes: per-step durations of the node's per-frame path, kept cheaply.

The node marks the end of each step of a frame (receive, wait, decode, pre-processing, inference,
post-processing, message building, publishing; the names are :data:`atdt_ros.interface.STEPS`)
with ``time.perf_counter_ns``. A frame's durations go into a preallocated window of the last
frames; nothing is allocated per frame, and the statistics (mean, p50 per step; p50/p95/max of
the total) are computed only when asked for, by the diagnostics timer. Plain Python and numpy
(no rclpy), so it can be tested, and used by the benchmarks, anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Breakdown:
    """Statistics over the frames in the window, in milliseconds."""

    frames: int                  # frames the statistics cover (at most the window)
    mean_ms: dict[str, float]    # per step
    p50_ms: dict[str, float]     # per step
    total_p50_ms: float          # first mark to last mark of a frame (the sum of its steps)
    total_p95_ms: float
    total_max_ms: float


class StepTimes:
    """Durations of each frame's steps over the last ``window`` frames.

    One frame at a time: :meth:`start` (optionally at a time taken earlier, e.g. on receipt),
    then :meth:`lap` at the end of each step (a step may be lapped several times in a frame:
    its durations add up), then :meth:`commit`. A frame that is never committed (rejected half
    way) leaves no trace. Step arguments are indices into ``steps`` (:meth:`index`), so the
    per-frame path does no look-ups. Not thread-safe: the caller serialises :meth:`commit` and
    :meth:`breakdown` (the node does both under its lock).
    """

    def __init__(self, steps: Sequence[str], window: int = 200) -> None:
        steps = tuple(steps)
        if not steps or len(set(steps)) != len(steps):
            raise ValueError(f"steps must be distinct names, at least one; got {steps!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.steps = steps
        self._index = {name: i for i, name in enumerate(steps)}
        self._window = np.zeros((window, len(steps)), dtype=np.int64)  # ns, one row per frame
        self._frame = np.zeros(len(steps), dtype=np.int64)             # the frame in progress
        self._committed = 0
        self._mark = 0

    def index(self, step: str) -> int:
        """The index of step name ``step`` (ValueError naming the accepted steps otherwise)."""
        try:
            return self._index[step]
        except KeyError:
            raise ValueError(f"unknown step '{step}' (accepted: {', '.join(self.steps)})") from None

    @property
    def frames(self) -> int:
        """Frames committed since creation (the window holds the last of them)."""
        return self._committed

    def start(self, at_ns: int | None = None) -> None:
        """Begin a frame at ``at_ns`` (a ``time.perf_counter_ns()`` value) or now."""
        self._frame.fill(0)
        self._mark = time.perf_counter_ns() if at_ns is None else at_ns

    def lap(self, step: int, now_ns: int | None = None) -> int:
        """Add the time since the previous mark to step index ``step``; returns the new mark."""
        now = time.perf_counter_ns() if now_ns is None else now_ns
        self._frame[step] += now - self._mark
        self._mark = now
        return now

    def commit(self) -> None:
        """Store the frame's durations in the window (the oldest frame leaves it when full)."""
        self._window[self._committed % len(self._window)] = self._frame
        self._committed += 1

    def breakdown(self) -> Breakdown:
        """Mean and p50 of each step, and p50/p95/max of the total, over the window."""
        rows = self._window[:min(self._committed, len(self._window))]
        if not len(rows):
            zeros = {name: 0.0 for name in self.steps}
            return Breakdown(0, zeros, dict(zeros), 0.0, 0.0, 0.0)
        ms = rows * 1e-6
        mean, p50 = ms.mean(axis=0), np.percentile(ms, 50, axis=0)
        total = ms.sum(axis=1)
        p50_total, p95_total = np.percentile(total, [50, 95])
        return Breakdown(len(rows), dict(zip(self.steps, mean.tolist())),
                         dict(zip(self.steps, p50.tolist())), float(p50_total),
                         float(p95_total), float(total.max()))
