"""Frames between the node's camera callback and its inference thread: the :class:`Mailbox`
they wait in and the :class:`Counters` of what happened to them. Plain Python (no rclpy)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any


class Mailbox:
    """Frames waiting for inference: one slot (newest wins) or, with keep_all, a FIFO."""

    def __init__(self, keep_all: bool) -> None:
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._keep_all = keep_all
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store a frame; returns True when an unprocessed frame was replaced (dropped)."""
        with self._cv:
            dropped = bool(self._items) and not self._keep_all
            if dropped:
                self._items.clear()
            self._items.append(item)
            self._cv.notify()
            return dropped

    def get(self, timeout: float) -> Any | None:
        """The next frame, or None after ``timeout`` seconds or once closed."""
        with self._cv:
            if not self._items and not self._closed:
                self._cv.wait(timeout)
            return self._items.popleft() if self._items and not self._closed else None

    def close(self) -> None:
        """Wake the worker for shutdown."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


@dataclass
class Counters:
    """Totals since start and the window since the last diagnostics message."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    window_received: int = 0
    window_processed: int = 0
    window_rejected: int = 0
    last_rejection: str = ""
