"""FASTDDS_BUILTIN_TRANSPORTS as the node reads and states it, the oversized-camera_info warning
and the lost-frame count, with known values (atdt_ros/transport.py, no DDS).

The count is also wired to rclpy's message_lost event in the node (test_node_inputs.py checks
the 'lost' key over DDS); a loss cannot be provoked deterministically, so the counting and its
message are checked here with the event values Fast DDS reports (total_count_change)."""

from __future__ import annotations

import pytest

from atdt_ros.transport import (
    SHM_IMPLICIT_SEGMENT,
    LostFrames,
    TransportSettingError,
    describe,
    frame_bytes,
    oversize_warning,
    parse_builtin_transports,
    parse_size,
    size_text,
)

PROJECT = "SHM?max_msg_size=4MB&sockets_size=16MB"


def test_the_projects_setting_is_read_as_16_mb_segments_and_4_mb_messages() -> None:
    t = parse_builtin_transports(PROJECT)
    assert (t.kind, t.max_msg_size, t.sockets_size, t.segment_size) == \
        ("SHM", 4_000_000, 16_000_000, 16_000_000)
    line = describe(t)
    assert line.startswith("transport: Fast DDS SHM, 16 MB segments, 4 MB messages "
                           f"(FASTDDS_BUILTIN_TRANSPORTS='{PROJECT}')")
    assert "larger than 4 MB are fragmented" in line and "docs/node.md" in line
    assert "limit" not in line  # no frame-size limit is claimed


@pytest.mark.parametrize("text, expected", [
    ("16MB", 16_000_000), ("16mb", 16_000_000), ("512KiB", 524_288), ("1GiB", 1 << 30),
    ("65500", 65_500), ("3B", 3), ("2GB", 2_000_000_000), ("8MiB", 8 << 20),
])
def test_sizes_take_fast_dds_units(text: str, expected: int) -> None:
    assert parse_size(text, "sockets_size") == expected


def test_unset_means_fast_dds_defaults_and_other_modes_are_named() -> None:
    t = parse_builtin_transports(None)
    assert (t.kind, t.segment_size) == ("DEFAULT", SHM_IMPLICIT_SEGMENT)
    assert describe(t).startswith("transport: Fast DDS UDPv4 + SHM, 512 KiB segments (Fast DDS "
                                  "default) (FASTDDS_BUILTIN_TRANSPORTS unset")
    udp = parse_builtin_transports("UDPv4?max_msg_size=64KB&non_blocking=true")
    assert (udp.shm, udp.segment_size, udp.max_msg_size) == (False, None, 64_000)
    assert oversize_warning("/cam/camera_info", 4000, 3000, None, udp) is None  # no segment
    large = parse_builtin_transports("LARGE_DATA?max_msg_size=1MB&sockets_size=1MB"
                                     "&tcp_negotiation_timeout=50")
    assert (large.kind, large.segment_size) == ("LARGE_DATA", 1_000_000)


@pytest.mark.parametrize("value, words", [
    ("SHMEM", "unknown transport 'SHMEM'"),
    ("SHM?sockets_size=16XB", "sockets_size='16XB' is not a size"),
    ("SHM?max_msg_size", "option 'max_msg_size' has no value"),
    ("SHM?segment=16MB", "unknown option 'segment'"),
])
def test_unreadable_values_are_named(value: str, words: str) -> None:
    with pytest.raises(TransportSettingError, match="FASTDDS_BUILTIN_TRANSPORTS") as err:
        parse_builtin_transports(value)
    assert words in str(err.value)


def test_a_4000x3000_rgb8_camera_exceeds_the_16_mb_segment_and_vga_does_not() -> None:
    t = parse_builtin_transports(PROJECT)
    assert frame_bytes(4000, 3000, None) == (36_000_000, "3 bytes per pixel (rgb8/bgr8 assumed: "
                                                         "no image received yet)")
    warning = oversize_warning("/cam/camera_info", 4000, 3000, None, t)
    assert warning is not None
    assert warning.startswith("/cam/camera_info advertises 4000x3000 frames, 36 MB at 3 bytes "
                              "per pixel (rgb8/bgr8 assumed: no image received yet), more than "
                              f"the 16 MB shared-memory segment of FASTDDS_BUILTIN_TRANSPORTS="
                              f"'{PROJECT}'")
    assert "sockets_size=128MB" in warning and "input_qos: reliable" in warning
    assert oversize_warning("/cam/camera_info", 640, 480, None, t) is None        # 0.92 MB
    assert oversize_warning("/cam/camera_info", 4000, 3000, "mono8", t) is None  # 12 MB fits
    assert "(rgba8)" in oversize_warning("/c", 2000, 2001, "rgba8", t)            # 16.008 MB


def test_lost_frames_add_up_the_events_total_count_change() -> None:
    lost = LostFrames()
    assert lost.add(1) == 1 and lost.add(3) == 4 and lost.add(0) == 4
    message = lost.warning("/cam/image", 3)
    assert message.startswith("3 frame(s) lost on /cam/image by the transport (4 since start, "
                              "'lost' in /diagnostics)")
    assert "sockets_size" in message and "input_qos: reliable" in message


def test_size_text() -> None:
    assert [size_text(n) for n in (16_000_000, 36_000_001, 524_288, 900, 921_601)] == \
        ["16 MB", "36 MB", "512 KiB", "900 B", "922 KB"]
