"""What the DDS transport settings of this process say about large camera frames.

Fast DDS reads ``FASTDDS_BUILTIN_TRANSPORTS`` (e.g. ``SHM?max_msg_size=4MB&sockets_size=16MB``):
``max_msg_size`` is the largest transport message (larger samples are fragmented, not refused)
and, for the shared-memory transport, ``sockets_size`` is the size of the segment a process
writes its outgoing samples into. A frame larger than the *sending* process's segment still
arrives when the reader keeps up, but back-to-back frames overwrite fragments not yet read and
are lost (measured in docs/node.md). This module parses the setting, states it in one line and
builds the node's warnings; it states what the settings are, never a frame-size limit.
Plain Python (no numpy, no rclpy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ENV: str = "FASTDDS_BUILTIN_TRANSPORTS"
DOC: str = "docs/node.md (large frames)"

KINDS: dict[str, str] = {
    "DEFAULT": "UDPv4 + SHM", "DEFAULTv6": "UDPv6 + SHM", "SHM": "SHM", "UDPv4": "UDPv4",
    "UDPv6": "UDPv6", "LARGE_DATA": "UDPv4 discovery, TCPv4 + SHM",
    "LARGE_DATAv6": "UDPv6 discovery, TCPv6 + SHM", "P2P": "P2P", "NONE": "none",
}
"""Fast DDS builtin transport modes and the transports each one instantiates."""

SHM_KINDS: frozenset[str] = frozenset({"DEFAULT", "DEFAULTv6", "SHM", "LARGE_DATA", "LARGE_DATAv6"})

UNITS: dict[str, int] = {"": 1, "B": 1, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3,
                         "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3}
"""Size units Fast DDS accepts in the option values (case-insensitive)."""

SHM_IMPLICIT_SEGMENT: int = 512 * 1024
"""Fast DDS's shared-memory segment size when none is set (SharedMemTransportDescriptor)."""

ENCODING_BYTES: dict[str, int] = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "rgb16": 6,
    "bgr16": 6, "rgba16": 8, "bgra16": 8, "16UC1": 2, "32FC1": 4, "bayer_rggb8": 1,
    "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1, "yuv422": 2, "uyvy": 2, "yuyv": 2,
}
"""Bytes per pixel of common sensor_msgs/Image encodings."""

ASSUMED_BYTES: int = 3
"""Bytes per pixel assumed for a camera whose encoding is not known yet (rgb8/bgr8)."""


class TransportSettingError(ValueError):
    """FASTDDS_BUILTIN_TRANSPORTS holds a value this module cannot read."""


@dataclass(frozen=True)
class Transport:
    """The builtin transports of this process and their large-message settings."""

    value: str | None           # the variable as set (None: unset, Fast DDS defaults)
    kind: str                   # DEFAULT, SHM, UDPv4, LARGE_DATA, ...
    max_msg_size: int | None    # bytes; None: Fast DDS's default
    sockets_size: int | None    # bytes; None: Fast DDS's default

    @property
    def shm(self) -> bool:
        """Whether the shared-memory transport is among those instantiated."""
        return self.kind in SHM_KINDS

    @property
    def segment_size(self) -> int | None:
        """Shared-memory segment size in bytes (None without SHM)."""
        if not self.shm:
            return None
        return self.sockets_size or SHM_IMPLICIT_SEGMENT


def parse_size(text: str, option: str) -> int:
    """Bytes of an option value such as ``16MB``, ``512KiB`` or ``65500``."""
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", text.strip())
    if not m or m.group(2).upper() not in UNITS:
        raise TransportSettingError(
            f"{ENV}: {option}={text!r} is not a size (accepted: a number with B, KB, MB, GB, "
            f"KiB, MiB or GiB)")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


def parse_builtin_transports(value: str | None) -> Transport:
    """The :class:`Transport` a ``FASTDDS_BUILTIN_TRANSPORTS`` value selects (None or empty:
    Fast DDS's DEFAULT)."""
    if value is None or not value.strip():
        return Transport(None, "DEFAULT", None, None)
    kind, _, options = value.strip().partition("?")
    if kind not in KINDS:
        raise TransportSettingError(f"{ENV}={value!r}: unknown transport '{kind}' (accepted: "
                                    f"{', '.join(KINDS)})")
    sizes: dict[str, int] = {}
    for item in filter(None, options.split("&")):
        key, sep, text = item.partition("=")
        if not sep:
            raise TransportSettingError(f"{ENV}={value!r}: option '{item}' has no value")
        if key in ("max_msg_size", "sockets_size"):
            sizes[key] = parse_size(text, key)
        elif key not in ("non_blocking", "tcp_negotiation_timeout"):
            raise TransportSettingError(
                f"{ENV}={value!r}: unknown option '{key}' (accepted: max_msg_size, "
                f"sockets_size, non_blocking, tcp_negotiation_timeout)")
    return Transport(value, kind, sizes.get("max_msg_size"), sizes.get("sockets_size"))


def size_text(n: int) -> str:
    """A byte count as people write it: 16 MB, 512 KiB, 36 MB (rounded), 900 B."""
    for unit, scale in (("GB", 1000 ** 3), ("MB", 1000 ** 2), ("KB", 1000),
                        ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    for unit, scale in (("GB", 1000 ** 3), ("MB", 1000 ** 2), ("KB", 1000)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def describe(t: Transport) -> str:
    """The start-up line: which transport carries this process's messages, its segment and
    message sizes and what happens to larger frames."""
    source = f"{ENV}='{t.value}'" if t.value is not None else f"{ENV} unset: Fast DDS defaults"
    parts = [f"transport: Fast DDS {KINDS[t.kind]}"]
    if t.shm:
        seg = size_text(t.segment_size) + (" segments" if t.sockets_size else
                                           " segments (Fast DDS default)")
        parts.append(seg)
    if t.max_msg_size is not None:
        parts.append(f"{size_text(t.max_msg_size)} messages")
    line = ", ".join(parts) + f" ({source})"
    if t.shm:
        largest = size_text(t.max_msg_size) if t.max_msg_size else "the maximum message size"
        line += (f"; samples larger than {largest} are fragmented, "
                 f"and frames larger than the sending process's segment "
                 f"({size_text(t.segment_size)} here) arrive only while the reader keeps up "
                 f"(lost ones are counted as 'lost'); see {DOC}")
    else:
        line += f"; large samples are fragmented (lost ones are counted as 'lost'); see {DOC}"
    return line


def carriers() -> str:
    """The settings that carry frames larger than the segment (measured in docs/node.md)."""
    return ("carried by a larger sockets_size in the camera's process (e.g. "
            f"{ENV}='SHM?max_msg_size=4MB&sockets_size=128MB', a segment that holds several "
            "frames) or input_qos: reliable with a camera that publishes reliable; "
            f"see {DOC}")


def frame_bytes(width: int, height: int, encoding: str | None) -> tuple[int, str]:
    """Raw size of a width x height frame and how its bytes per pixel were found."""
    if encoding in ENCODING_BYTES:
        per_pixel = ENCODING_BYTES[encoding]
        return width * height * per_pixel, f"{per_pixel} bytes per pixel ({encoding})"
    return width * height * ASSUMED_BYTES, (f"{ASSUMED_BYTES} bytes per pixel (rgb8/bgr8 assumed: "
                                            f"no image received yet)")


def oversize_warning(topic: str, width: int, height: int, encoding: str | None,
                     t: Transport) -> str | None:
    """The warning for a camera_info whose frames exceed this process's shared-memory segment
    (None when they fit or no SHM transport is used)."""
    if t.segment_size is None or width <= 0 or height <= 0:
        return None
    nbytes, how = frame_bytes(width, height, encoding)
    if nbytes <= t.segment_size:
        return None
    setting = f"{ENV}='{t.value}'" if t.value is not None else f"Fast DDS's default"
    return (f"{topic} advertises {width}x{height} frames, {size_text(nbytes)} at {how}, more "
            f"than the {size_text(t.segment_size)} shared-memory segment of {setting}: with "
            f"these settings in the camera's process such frames may be lost under load; "
            f"{carriers()}")


class LostFrames:
    """Frames the middleware reported lost on the camera subscription (message_lost events)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, change: int) -> int:
        """Count ``change`` more lost frames (an event's total_count_change); the new total."""
        self.total += max(int(change), 0)
        return self.total

    def warning(self, topic: str, change: int) -> str:
        """The warning for one message_lost event of ``change`` frames."""
        return (f"{change} frame(s) lost on {topic} by the transport ({self.total} since start, "
                f"'lost' in /diagnostics); large frames are {carriers()}")
