"""The one atomic write (atdt_ros.files): all or nothing, usual permissions, no leftovers."""

from __future__ import annotations

import os

import pytest

from atdt_ros.files import atomic_path, atomic_write


def test_atomic_write_replaces_the_file_with_the_usual_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "sub" / "report.json"
        atomic_write(target, "first\n")
        atomic_write(target, b"second\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"second\n"
    assert (target.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600: others can read it
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "weights.pt"
    atomic_write(target, b"good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".pt"  # savers see the real suffix
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]
