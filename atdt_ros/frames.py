"""Frames between the node's camera callback and its inference thread: the :class:`Mailbox`
they wait in, the :class:`Counters` of what happened to them and the :class:`InferenceThread`
that runs every backend call. Plain Python (no rclpy)."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable


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


class InferenceThread:
    """One thread for every call into the backend: opening (compiling) it, the start-up check
    and the frames.

    OpenMP (torch's CPU threads) keeps a pool of worker threads per calling thread. Opening the
    backend on one thread and inferring on another leaves two pools, and with more pool
    threads than cores libgomp stops letting idle workers spin between parallel regions: each
    of the compiled chain's few hundred regions then wakes a sleeping thread, which made the
    compiled bf16 chain 1.6-1.9x slower on a 2-core VM (docs/performance.md).
    """

    def __init__(self, name: str = "atdt_inference") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._loop: concurrent.futures.Future | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run on the thread; its result returned, its exception raised here."""
        if self._loop is not None and not self._loop.done():
            raise RuntimeError("InferenceThread.call: the thread is busy running its loop; "
                               "stop the loop first")
        return self._pool.submit(fn, *args).result()

    def start(self, loop: Callable[[], None]) -> None:
        """Run ``loop()`` on the thread until it returns (the node's frame loop)."""
        if self._loop is not None and not self._loop.done():
            raise RuntimeError("InferenceThread.start: a loop is already running")
        self._loop = self._pool.submit(loop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the loop to return (it must be told to stop
        first); False when it is still running. An exception that ended it is raised here."""
        if self._loop is None:
            return True
        done, _ = concurrent.futures.wait([self._loop], timeout)
        if not done:
            return False
        loop, self._loop = self._loop, None
        loop.result()
        return True

    def close(self) -> None:
        """End the thread once what was submitted has run (its OpenMP pool goes with it)."""
        self._pool.shutdown(wait=True)
