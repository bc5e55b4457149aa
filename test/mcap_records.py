"""A minimal MCAP reader for tests, written from the MCAP specification (mcap.dev/spec) and
independent of the ``rosbags`` library that writes and replays the bags: schemas, channels (with
their metadata), metadata records and messages of an unchunked or uncompressed-chunked file."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
HEADER, FOOTER, SCHEMA, CHANNEL, MESSAGE, CHUNK, METADATA = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C


@dataclass
class McapContent:
    """What the file holds: profile, schemas by id, channels by id, metadata records, messages."""

    profile: str = ""
    schemas: dict[int, tuple[str, str, bytes]] = field(default_factory=dict)   # id -> (name, encoding, data)
    channels: dict[int, tuple[str, int, str, dict[str, str]]] = field(default_factory=dict)  # id -> (topic, schema id, encoding, metadata)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)          # record name -> map
    messages: list[tuple[int, int, bytes]] = field(default_factory=list)      # (channel id, log time, data)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def raw(self, size: int) -> bytes:
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def string(self) -> str:
        return self.raw(self.take("I")).decode()

    def string_map(self) -> dict[str, str]:
        end = self.take("I") + self.pos
        out = {}
        while self.pos < end:
            key = self.string()
            out[key] = self.string()
        return out

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _records(cursor: _Cursor, content: McapContent) -> None:
    while not cursor.done():
        op, length = cursor.take("BQ")
        body = _Cursor(cursor.raw(length))
        if op == HEADER:
            content.profile = body.string()
        elif op == SCHEMA:
            sid = body.take("H")
            name, encoding = body.string(), body.string()
            content.schemas[sid] = (name, encoding, body.raw(body.take("I")))
        elif op == CHANNEL:
            cid, sid = body.take("HH")
            topic, encoding = body.string(), body.string()
            content.channels[cid] = (topic, sid, encoding, body.string_map())
        elif op == MESSAGE:
            cid, _sequence, log_time, _publish_time = body.take("HIQQ")
            content.messages.append((cid, log_time, body.data[body.pos:]))
        elif op == CHUNK:
            body.take("QQQI")
            compression = body.string()
            assert compression == "", f"chunk compression {compression!r} not supported here"
            _records(_Cursor(body.raw(body.take("Q"))), content)
        elif op == METADATA:
            name = body.string()
            content.metadata[name] = body.string_map()
        elif op == FOOTER:
            return


def read_mcap(path: Path) -> McapContent:
    """Parse ``path``; asserts the magic at both ends."""
    data = Path(path).read_bytes()
    assert data[:8] == MAGIC and data[-8:] == MAGIC, f"{path} is not an MCAP file"
    content = McapContent()
    _records(_Cursor(data[8:-8]), content)
    return content
