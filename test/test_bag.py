"""``atdt_train make-bag``: a tiny dataset written as a rosbag2 and read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from atdt_train.bag import (CAMERA_INFO_TOPIC, DEFAULT_START_NS, DEPTH_TOPIC, IMAGE_TOPIC,
                            SEMANTIC_TOPIC, stamp_of)
from atdt_train.cli import main as cli_main

FX = 10.0


def make_sim_dataset(root: Path, frames: int = 3, height: int = 8, width: int = 12,
                     seed: int = 0) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Write a tiny dataset in the simulator's layout; return its filelist and the true arrays."""
    rng = np.random.default_rng(seed)
    split = root / "test"
    for sub in ("rgb", "semantic", "depth"):
        (split / sub).mkdir(parents=True, exist_ok=True)
    (split / "camera.json").write_text(json.dumps(
        {"fx": FX, "fy": FX, "cx": width / 2, "cy": height / 2, "width": width, "height": height,
         "baseline": 0.5}))
    (root / "dataset.yaml").write_text(yaml.safe_dump({"kind": "sim", "domain": "tiny"}))
    truth, lines = [], []
    for i in range(frames):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        semantic = rng.integers(0, 11, (height, width), dtype=np.uint8)
        semantic[0, :3] = 255
        depth_raw = rng.integers(256, 256 * 60, (height, width), dtype=np.uint16)  # 1..60 m
        depth_raw[-1, :4] = 0  # invalid (sky)
        name = f"{i:06d}.png"
        assert cv2.imwrite(str(split / "rgb" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert cv2.imwrite(str(split / "semantic" / name), semantic)
        assert cv2.imwrite(str(split / "depth" / name), depth_raw)
        lines.append(f"test/rgb/{name};;test/semantic/{name};test/depth/{name}")
        truth.append({"rgb": rgb, "semantic": semantic, "depth": depth_raw.astype(np.float32) / 256.0})
    filelist = root / "test.txt"
    filelist.write_text("\n".join(lines) + "\n")
    return filelist, truth


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Topic -> [(bag timestamp, deserialised message)] with the rosbags reader."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, timestamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def pixels(msg) -> np.ndarray:
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    channels = {"rgb8": 3, "mono8": 1, "32FC1": 1}[msg.encoding]
    arr = np.frombuffer(msg.data.tobytes(), dtype=dtype)
    assert arr.size * arr.itemsize == msg.step * msg.height
    return arr.reshape(msg.height, msg.width, channels).squeeze(-1) if channels == 1 else \
        arr.reshape(msg.height, msg.width, channels)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_identical_pixels_and_stamps(tmp_path: Path, storage: str) -> None:
    filelist, truth = make_sim_dataset(tmp_path / "data")
    bag = tmp_path / f"bag_{storage}"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag), "--storage", storage,
                     "--rate", "4", "--frame-id", "cam0"]) == 0

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage
    assert meta["message_count"] == 4 * len(truth)
    files = meta["relative_file_paths"]
    assert len(files) == 1 and (bag / files[0]).is_file()
    assert files[0].endswith(".mcap" if storage == "mcap" else ".db3")
    # the offered QoS is recorded, so `ros2 bag play` replays the camera as a driver offers it
    offered = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
               for t in meta["topics_with_message_count"]}
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, DEPTH_TOPIC, SEMANTIC_TOPIC):
        profiles = offered[topic]
        profiles = yaml.safe_load(profiles) if isinstance(profiles, str) else profiles
        assert len(profiles) == 1, (topic, profiles)
        camera = topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC)
        assert profiles[0]["reliability"] == ("best_effort" if camera else "reliable")
        assert (profiles[0]["history"], profiles[0]["depth"]) == ("keep_last", 5 if camera else 10)
        assert profiles[0]["durability"] == "volatile"

    topics = read_bag(bag)
    assert set(topics) == {IMAGE_TOPIC, CAMERA_INFO_TOPIC, DEPTH_TOPIC, SEMANTIC_TOPIC}
    expected_stamps = [DEFAULT_START_NS + i * 250_000_000 for i in range(len(truth))]
    assert expected_stamps == [stamp_of(i, 4.0) for i in range(len(truth))]
    for topic, entries in topics.items():
        assert [t for t, _ in entries] == expected_stamps, topic
        for t, msg in entries:
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
            assert msg.header.frame_id == "cam0"

    for i, frame in enumerate(truth):
        image = topics[IMAGE_TOPIC][i][1]
        assert image.encoding == "rgb8" and image.step == 12 * 3
        np.testing.assert_array_equal(pixels(image), frame["rgb"])
        semantic = topics[SEMANTIC_TOPIC][i][1]
        assert semantic.encoding == "mono8"
        np.testing.assert_array_equal(pixels(semantic), frame["semantic"])
        depth_msg = topics[DEPTH_TOPIC][i][1]
        assert depth_msg.encoding == "32FC1" and depth_msg.is_bigendian == 0
        depth = pixels(depth_msg)
        invalid = frame["depth"] == 0
        assert np.isnan(depth[invalid]).all() and invalid.sum() == 4
        np.testing.assert_array_equal(depth[~invalid], frame["depth"][~invalid])
        info = topics[CAMERA_INFO_TOPIC][i][1]
        assert (info.height, info.width) == (8, 12)
        np.testing.assert_allclose(info.k, [FX, 0, 5.5, 0, FX, 3.5, 0, 0, 1])


def test_bag_bytes_are_standard_cdr_for_rclpy(tmp_path: Path) -> None:
    """The bag's raw bytes deserialise with ROS 2's own (rclpy) serialisation, as ros2 bag play needs."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CameraInfo, Image

    filelist, truth = make_sim_dataset(tmp_path / "data", frames=1)
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag)]) == 0
    with Reader(bag) as reader:
        raws = {conn.topic: (conn.msgtype, raw) for conn, _, raw in reader.messages()}
    assert raws[IMAGE_TOPIC][0] == "sensor_msgs/msg/Image"
    image = deserialize_message(raws[IMAGE_TOPIC][1], Image)
    assert (image.height, image.width, image.encoding) == (8, 12, "rgb8")
    np.testing.assert_array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(8, 12, 3), truth[0]["rgb"])
    info = deserialize_message(raws[CAMERA_INFO_TOPIC][1], CameraInfo)
    assert info.k[0] == FX and info.distortion_model == "plumb_bob"


def test_size_resizes_like_frame_dataset(tmp_path: Path) -> None:
    from atdt_train.data import FrameDataset

    filelist, _ = make_sim_dataset(tmp_path / "data", frames=2)
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag), "--size", "4x6"]) == 0
    topics = read_bag(bag)
    dataset = FrameDataset(filelist, size=(4, 6))
    for i in range(2):
        rgb, semantic, depth, fx = dataset.load(i)
        np.testing.assert_array_equal(pixels(topics[IMAGE_TOPIC][i][1]), rgb)
        np.testing.assert_array_equal(pixels(topics[SEMANTIC_TOPIC][i][1]), semantic)
        got = pixels(topics[DEPTH_TOPIC][i][1])
        np.testing.assert_array_equal(np.nan_to_num(got, nan=0.0), depth)
        assert topics[CAMERA_INFO_TOPIC][i][1].k[0] == pytest.approx(fx) == pytest.approx(FX / 2)


def test_existing_output_and_bad_arguments_are_refused(tmp_path: Path, capsys) -> None:
    filelist, _ = make_sim_dataset(tmp_path / "data", frames=1)
    bag = tmp_path / "bag"
    bag.mkdir()
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag)]) == 2
    assert list(bag.iterdir()) == []  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bag.")]  # no staging left
    for bad in (["--size", "4by6"], ["--rate", "0"], ["--storage", "rosbag1"]):
        with pytest.raises(SystemExit):
            cli_main(["make-bag", "--list", str(filelist), "--out", str(tmp_path / "b2"), *bad])
    assert "HxW" in capsys.readouterr().err
    assert cli_main(["make-bag", "--list", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "b3")]) == 2
    assert not (tmp_path / "b3").exists()
