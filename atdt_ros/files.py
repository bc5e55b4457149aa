"""The one way the project writes a file: atomically, durably, with the usual permissions.

A reader sees either the old file or the complete new one, never half of it, even when the
writer is killed: the bytes go to a temporary file in the same directory, are flushed to disk
(fsync), get the permissions a plain ``open()`` would have given (0666 minus the umask; mkstemp
alone leaves 0600, which other users, e.g. a node running as another user, cannot read), and
are renamed over the target. :func:`atomic_path` does the same for writers that want a path of
their own (``torch.save``, ``savefig``, ``torch.export.save``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual permissions, flush it, rename it into place."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix: savers pick the format from it) that is
    published onto ``path`` when the block ends normally and removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
