"""The replay's bag reading: a rosbag2 directory, a bare .mcap file and a folder holding one
.mcap without metadata.yaml give the same messages; anything else is refused, naming the path
and what is accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from atdt_ros.replay.bag import ACCEPTED, BagSource, resolve_bag
from atdt_ros.replay.common import DEFAULT_TOPICS, ReplayError
from atdt_train.bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC
from atdt_train.cli import main as cli_main
from test_bag import make_sim_dataset


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> tuple[Path, list]:
    """A make-bag directory of three frames and their true arrays."""
    tmp = tmp_path_factory.mktemp("bag_source")
    filelist, truth = make_sim_dataset(tmp / "data", frames=3)
    path = tmp / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(path)]) == 0
    return path, truth


def _read(path: Path, topics: dict[str, str] = DEFAULT_TOPICS) -> tuple[int, list[tuple[str, int, bytes]]]:
    source = BagSource(path, topics)
    try:
        return source.frame_count, [(role, t, bytes(raw)) for role, t, raw in source.messages()]
    finally:
        source.close()


def test_a_bare_mcap_reads_like_its_bag_directory(bag, tmp_path: Path) -> None:
    from mcap_records import read_mcap
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    directory, truth = bag
    (mcap,) = directory.glob("*.mcap")
    alone = tmp_path / "recording.mcap"
    shutil.copy(mcap, alone)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(mcap, folder / "rosbag2_2026_01_01-00_00_00_0.mcap")
    (folder / "notes.txt").write_text("not a bag file")

    assert resolve_bag(directory) == ("rosbag2", directory)
    assert resolve_bag(alone) == ("mcap", alone)
    assert resolve_bag(folder) == ("mcap", folder / "rosbag2_2026_01_01-00_00_00_0.mcap")
    count, reference = _read(directory)
    assert count == 3 and len(reference) == 12
    for path in (alone, folder):
        assert _read(path) == (count, reference)
    # the same bytes, independently: the test's own MCAP parser
    content = read_mcap(alone)
    roles = {cid: role for role, topic in DEFAULT_TOPICS.items()
             for cid, (t, *_) in content.channels.items() if t == topic}
    assert sorted(reference) == sorted((roles[cid], t, raw) for cid, t, raw in content.messages)
    images = [deserialize_message(raw, Image) for role, _, raw in reference if role == "image"]
    for image, frame in zip(images, truth, strict=True):
        np.testing.assert_array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(8, 12, 3), frame["rgb"])


def test_a_bare_mcap_says_its_topics_from_its_own_channels(bag, tmp_path: Path) -> None:
    """Topics and types come from the mcap's schemas and channels: a wrong --image-topic lists them."""
    directory, _ = bag
    (mcap,) = directory.glob("*.mcap")
    alone = tmp_path / "only.mcap"
    shutil.copy(mcap, alone)
    source = BagSource(alone, DEFAULT_TOPICS)
    try:
        types = {c.topic: c.msgtype for cs in source.connections.values() for c in cs}
        assert types[IMAGE_TOPIC] == "sensor_msgs/msg/Image"
        assert types[CAMERA_INFO_TOPIC] == "sensor_msgs/msg/CameraInfo"
    finally:
        source.close()
    with pytest.raises(ReplayError, match=r"no camera topic /cam/none .*/camera/camera_info \(sensor_msgs/msg/CameraInfo\)"):
        BagSource(alone, dict(DEFAULT_TOPICS, image="/cam/none"))


def test_what_is_not_a_bag_is_named_with_what_is_accepted(bag, tmp_path: Path) -> None:
    directory, _ = bag
    (mcap,) = directory.glob("*.mcap")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.mcap", "b.mcap"):
        shutil.copy(mcap, two / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "bag.txt"
    text.write_text("hello")
    garbage = tmp_path / "broken.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    cases = {
        tmp_path / "missing": "does not exist",
        empty: "no metadata.yaml) and holds no .mcap file",
        two: "holds 2 .mcap files (a.mcap, b.mcap); pass one of them",
        text: "is not a bag",
        garbage: "cannot open MCAP file",
    }
    for path, why in cases.items():
        with pytest.raises(ReplayError) as err:
            BagSource(path, DEFAULT_TOPICS)
        message = str(err.value)
        assert str(path) in message and why in message and ACCEPTED in message, message
