"""Filelists: the official AT/DT ``rgb;right;semantic;depth`` format, round trip and errors."""

from pathlib import Path

import pytest

from atdt_train.data import DatasetError, Frame, read_filelist, read_list_kind, write_filelist


def test_round_trip_relative_paths_and_empty_fields(tmp_path: Path) -> None:
    frames = [
        Frame(tmp_path / "a/rgb/0.png", tmp_path / "a/right/0.png", tmp_path / "a/sem/0.png", tmp_path / "a/d/0.png"),
        Frame(tmp_path / "a/rgb/1.png", None, tmp_path / "a/sem/1.png", None),
        Frame(tmp_path / "other/x.png"),
    ]
    listing = write_filelist(tmp_path / "lists/train.txt", frames)
    text = listing.read_text()
    assert text.splitlines() == [
        "../a/rgb/0.png;../a/right/0.png;../a/sem/0.png;../a/d/0.png",
        "../a/rgb/1.png;;../a/sem/1.png;",
        "../other/x.png;;;",
    ]
    back = read_filelist(listing)
    assert [f.rgb for f in back] == [f.rgb.resolve() for f in frames]
    assert back[1].right is None and back[1].depth is None and back[2].semantic is None
    assert back[0].depth == (tmp_path / "a/d/0.png").resolve()
    assert not list(listing.parent.glob(".*tmp"))  # the atomic write leaves no temporary file


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text("x.png;;;\n\n  \ny.png;;s.png;\n")
    assert [f.rgb.name for f in read_filelist(listing)] == ["x.png", "y.png"]


@pytest.mark.parametrize(
    "line, message",
    [("a.png;b.png", "expected 4 fields"), ("a;b;c;d;e", "found 5"), (";r.png;s.png;d.png", "rgb field")],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text(f"ok.png;;;\n{line}\n")
    with pytest.raises(DatasetError, match=message) as info:
        read_filelist(listing)
    assert f"{listing}:2" in str(info.value)


def test_missing_list_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.txt"):
        read_filelist(tmp_path / "nope.txt")


def test_separator_in_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="contains ';'"):
        write_filelist(tmp_path / "l.txt", [Frame(tmp_path / "a;b.png")])


def test_kind_from_dataset_yaml(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("")
    assert read_list_kind(tmp_path / "l.txt") is None
    (tmp_path / "dataset.yaml").write_text("kind: carla\ndomain: x\n")
    assert read_list_kind(tmp_path / "l.txt") == "carla"
