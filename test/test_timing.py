"""atdt_ros.timing: per-step durations of a frame, fed with known marks (no clocks read)."""

import pytest

from atdt_ros.timing import StepTimes

MS = 1_000_000  # ns


def _frame(times: StepTimes, start: int, laps: list[tuple[str, int]]) -> None:
    times.start(at_ns=start)
    for step, at in laps:
        times.lap(times.index(step), now_ns=at)
    times.commit()


def test_steps_are_the_gaps_between_marks_and_repeated_steps_add_up() -> None:
    times = StepTimes(("decode", "inference", "messages"))
    # decode 2 ms, inference 10 ms, messages 1 ms + 3 ms (lapped twice), total 16 ms
    _frame(times, 100 * MS, [("decode", 102 * MS), ("inference", 112 * MS),
                             ("messages", 113 * MS), ("messages", 116 * MS)])
    b = times.breakdown()
    assert b.frames == 1
    assert b.mean_ms == pytest.approx({"decode": 2.0, "inference": 10.0, "messages": 4.0})
    assert b.p50_ms == pytest.approx({"decode": 2.0, "inference": 10.0, "messages": 4.0})
    assert (b.total_p50_ms, b.total_p95_ms, b.total_max_ms) == pytest.approx((16.0, 16.0, 16.0))


def test_mean_p50_and_total_over_frames() -> None:
    times = StepTimes(("decode", "inference"))
    for i, inference in enumerate((10, 20, 60)):  # decode 1 ms each
        t0 = i * 1000 * MS
        _frame(times, t0, [("decode", t0 + MS), ("inference", t0 + (1 + inference) * MS)])
    b = times.breakdown()
    assert b.frames == 3
    assert b.mean_ms == pytest.approx({"decode": 1.0, "inference": 30.0})
    assert b.p50_ms == pytest.approx({"decode": 1.0, "inference": 20.0})
    assert b.total_p50_ms == pytest.approx(21.0) and b.total_max_ms == pytest.approx(61.0)
    assert b.total_p95_ms == pytest.approx(21.0 + 0.9 * 40.0)  # numpy's linear interpolation


def test_window_keeps_the_last_frames_and_uncommitted_frames_leave_no_trace() -> None:
    times = StepTimes(("inference",), window=2)
    for ms in (100, 5, 7):
        _frame(times, 0, [("inference", ms * MS)])
    times.start(at_ns=0)
    times.lap(0, now_ns=999 * MS)  # rejected half way: never committed
    b = times.breakdown()
    assert times.frames == 3 and b.frames == 2
    assert b.mean_ms["inference"] == pytest.approx(6.0)  # 5 and 7; 100 left the window
    assert b.total_max_ms == pytest.approx(7.0)


def test_a_new_frame_starts_from_zero() -> None:
    times = StepTimes(("decode", "inference"))
    _frame(times, 0, [("decode", 4 * MS), ("inference", 10 * MS)])
    _frame(times, 0, [("inference", 2 * MS)])  # no decode step this time
    b = times.breakdown()
    assert b.mean_ms == pytest.approx({"decode": 2.0, "inference": 4.0})  # (4+0)/2, (6+2)/2


def test_lap_returns_the_mark_and_reads_the_clock_when_not_given() -> None:
    times = StepTimes(("decode",))
    times.start()
    mark = times.lap(0)
    assert mark > 0 and times.lap(0, now_ns=mark + 5 * MS) == mark + 5 * MS
    times.commit()
    assert times.breakdown().mean_ms["decode"] >= 5.0  # the clock's own gap is >= 0


def test_empty_window_and_bad_arguments() -> None:
    b = StepTimes(("decode", "inference")).breakdown()
    assert b.frames == 0 and b.mean_ms == {"decode": 0.0, "inference": 0.0} and b.total_max_ms == 0
    with pytest.raises(ValueError, match="unknown step 'resize' .accepted: decode, inference"):
        StepTimes(("decode", "inference")).index("resize")
    with pytest.raises(ValueError, match="distinct"):
        StepTimes(("decode", "decode"))
    with pytest.raises(ValueError, match="window must be >= 1"):
        StepTimes(("decode",), window=0)
