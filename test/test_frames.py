"""InferenceThread: every call, the start-up ones and the frame loop, on one thread."""

from __future__ import annotations

import threading

import pytest

from atdt_ros.frames import InferenceThread, Mailbox


def test_calls_and_loop_run_on_one_thread_that_close_ends() -> None:
    runner = InferenceThread()
    seen: list[threading.Thread] = []

    def where(value: int) -> int:
        seen.append(threading.current_thread())
        return value * 2

    assert runner.call(where, 21) == 42  # opening the backend
    assert runner.call(where, 5) == 10  # the start-up check
    box, results = Mailbox(keep_all=True), []

    def loop() -> None:  # the node's frame loop, here until three frames are done
        while len(results) < 3 and (item := box.get(timeout=5)) is not None:
            results.append(where(item))
    runner.start(loop)
    for v in (1, 2, 3):
        box.put(v)
    assert runner.join(timeout=10)
    assert results == [2, 4, 6]
    assert runner.call(where, 0) == 0  # again after the loop (a second activation)
    assert len({t.ident for t in seen}) == 1 and seen[0] is not threading.current_thread()
    assert seen[0].name.startswith("atdt_inference")
    runner.close()
    assert not seen[0].is_alive()


def test_an_exception_reaches_the_caller() -> None:
    runner = InferenceThread()

    def fails() -> None:
        raise ValueError("model does not fit")
    with pytest.raises(ValueError, match="model does not fit"):
        runner.call(fails)
    assert runner.call(lambda: "still serving") == "still serving"
    runner.close()


def test_join_waits_for_the_loop_and_calls_wait_for_it_to_stop() -> None:
    runner, stop = InferenceThread(), threading.Event()
    runner.start(lambda: stop.wait(10))
    assert not runner.join(timeout=0.05)  # still running
    with pytest.raises(RuntimeError, match="busy running its loop"):
        runner.call(lambda: None)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(lambda: None)
    stop.set()
    assert runner.join(timeout=10)
    runner.close()
