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
                     seed: int = 0, camera: dict | None = None) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Write a tiny dataset in the simulator's layout; return its filelist and the true arrays.
    ``camera`` replaces the camera.json (default: fx = fy = FX, principal point (W/2, H/2))."""
    rng = np.random.default_rng(seed)
    split = root / "test"
    for sub in ("rgb", "semantic", "depth"):
        (split / sub).mkdir(parents=True, exist_ok=True)
    (split / "camera.json").write_text(json.dumps(camera if camera is not None else
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
        np.testing.assert_allclose(info.k, [FX, 0, 6, 0, FX, 4, 0, 0, 1])  # camera.json's own cx, cy


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


QOS_KEYS = {"history", "depth", "reliability", "durability", "deadline", "lifespan", "liveliness",
            "liveliness_lease_duration", "avoid_ros_namespace_conventions"}
"""What rosbag2 (Jazzy, Kilted: rosbag2_storage qos.cpp) writes per profile in metadata version 9."""


def test_offered_qos_is_recorded_as_rosbag2_writes_it(tmp_path: Path) -> None:
    """metadata.yaml v9 holds each topic's profiles as a YAML list (enum names as strings,
    durations as sec/nsec), and the mcap channel metadata holds the same list serialised as a
    YAML string: what rosbag2's mcap plugin reads when the bag is played without metadata.yaml.
    The mcap is parsed with the test's own reader (mcap_records, from the MCAP specification)."""
    from mcap_records import read_mcap

    filelist, _ = make_sim_dataset(tmp_path / "data", frames=1)
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag)]) == 0
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9
    in_yaml = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
               for t in meta["topics_with_message_count"]}
    sensor_data = {"history": "keep_last", "depth": 5, "reliability": "best_effort",
                   "durability": "volatile", "liveliness": "automatic",
                   "deadline": {"sec": 0, "nsec": 0}, "lifespan": {"sec": 0, "nsec": 0},
                   "liveliness_lease_duration": {"sec": 0, "nsec": 0},
                   "avoid_ros_namespace_conventions": False}
    reliable = dict(sensor_data, depth=10, reliability="reliable")
    expected = {IMAGE_TOPIC: [sensor_data], CAMERA_INFO_TOPIC: [sensor_data],
                DEPTH_TOPIC: [reliable], SEMANTIC_TOPIC: [reliable]}
    assert in_yaml == expected  # a list, not the pre-v9 string of integers
    assert all(set(p) == QOS_KEYS for profiles in in_yaml.values() for p in profiles)

    content = read_mcap(bag / meta["relative_file_paths"][0])
    assert content.profile == "ros2"
    in_mcap = {topic: yaml.safe_load(md["offered_qos_profiles"]) for topic, _, _, md in content.channels.values()}
    assert in_mcap == expected
    stored = yaml.safe_load(content.metadata["rosbag2"]["serialized_metadata"])
    assert stored["version"] == 9  # the version rosbag2 decodes the channel QoS strings with


def test_camera_info_keeps_the_datasets_calibration(tmp_path: Path) -> None:
    """fx != fy and an off-centre principal point in camera.json reach K and P unchanged at the
    native size and rescaled with --size (hand-computed; cv2.resize's pixel-centre mapping
    u' = (u + 0.5) s - 0.5); headers name the optical frame by default. Read back with the test's
    own mcap reader and rclpy's deserialisation."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo

    from mcap_records import read_mcap

    camera = {"fx": 10.0, "fy": 12.0, "cx": 4.25, "cy": 3.0, "width": 12, "height": 8, "baseline": 0.5}
    filelist, _ = make_sim_dataset(tmp_path / "data", frames=2, camera=camera)
    cases = {
        None: (10.0, 12.0, 4.25, 3.0, 12, 8),
        # 8x12 -> 16x6: sx = 0.5, sy = 2: fx 5, fy 24, cx (4.25 + 0.5) * 0.5 - 0.5, cy (3 + 0.5) * 2 - 0.5
        "16x6": (5.0, 24.0, 1.875, 6.5, 6, 16),
    }
    for size, (fx, fy, cx, cy, width, height) in cases.items():
        bag = tmp_path / f"bag_{size}"
        assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag),
                         *(["--size", size] if size else [])]) == 0
        content = read_mcap(next(bag.glob("*.mcap")))
        info_channel = next(cid for cid, (topic, *_) in content.channels.items() if topic == CAMERA_INFO_TOPIC)
        infos = [deserialize_message(raw, CameraInfo) for cid, _, raw in content.messages if cid == info_channel]
        assert len(infos) == 2
        for info in infos:
            assert (info.width, info.height) == (width, height)
            np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1], rtol=0, atol=1e-12)
            np.testing.assert_allclose(info.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], rtol=0, atol=1e-12)
            np.testing.assert_array_equal(info.r, np.eye(3).reshape(-1))
            assert info.distortion_model == "plumb_bob" and not any(info.d)
            assert (info.binning_x, info.binning_y, info.roi.width, info.roi.height) == (0, 0, 0, 0)
            assert info.header.frame_id == "camera_optical_frame"
        for topic, *_ in content.channels.values():
            assert topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, DEPTH_TOPIC, SEMANTIC_TOPIC)
    headers = read_bag(tmp_path / "bag_None")
    assert {msg.header.frame_id for entries in headers.values() for _, msg in entries} == {"camera_optical_frame"}


def test_cityscapes_calibration_reaches_camera_info(tmp_path: Path) -> None:
    """A Cityscapes frame (2048x1024, camera JSON with the real aachen intrinsics) written at
    512x256: K and P hand-computed from fx, fy, u0, v0 scaled by 1/4."""
    from atdt_train.data import scan_dataset, write_filelist
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo

    from mcap_records import read_mcap

    stem = "aachen_000000_000019"
    root = tmp_path / "cityscapes"
    for sub, name, image in (("leftImg8bit", "leftImg8bit", np.zeros((1024, 2048, 3), np.uint8)),
                             ("gtFine", "gtFine_labelIds", np.full((1024, 2048), 7, np.uint8))):
        path = root / f"{sub}/val/aachen/{stem}_{name}.png"
        path.parent.mkdir(parents=True)
        assert cv2.imwrite(str(path), image)
    cam = root / f"camera/val/aachen/{stem}_camera.json"
    cam.parent.mkdir(parents=True)
    intrinsic = {"fx": 2262.52, "fy": 2265.3017905988554, "u0": 1096.98, "v0": 513.137}
    cam.write_text(json.dumps({"extrinsic": {"baseline": 0.209313}, "intrinsic": intrinsic}))
    filelist = write_filelist(root / "val.txt", scan_dataset("cityscapes", root, ["val"]))
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--kind", "cityscapes", "--out", str(bag),
                     "--size", "256x512"]) == 0
    content = read_mcap(next(bag.glob("*.mcap")))
    channel = next(cid for cid, (topic, *_) in content.channels.items() if topic == CAMERA_INFO_TOPIC)
    (info,) = [deserialize_message(raw, CameraInfo) for cid, _, raw in content.messages if cid == channel]
    fx, fy = 2262.52 / 4, 2265.3017905988554 / 4
    cx, cy = (1096.98 + 0.5) / 4 - 0.5, (513.137 + 0.5) / 4 - 0.5  # 273.87, 127.90925
    assert (info.width, info.height) == (512, 256)
    np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(info.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], rtol=0, atol=1e-9)


def test_a_dataset_with_fx_only_gets_square_pixels_and_a_centred_principal_point(tmp_path: Path, caplog) -> None:
    filelist, _ = make_sim_dataset(tmp_path / "data", frames=2, camera={"fx": FX, "width": 12})
    bag = tmp_path / "bag"
    assert cli_main(["make-bag", "--list", str(filelist), "--out", str(bag), "--frame-id", "cam_optical"]) == 0
    assert caplog.text.count("gives fx only") == 1
    for _, info in read_bag(bag)[CAMERA_INFO_TOPIC]:
        np.testing.assert_allclose(info.k, [FX, 0, 5.5, 0, FX, 3.5, 0, 0, 1])
        assert info.header.frame_id == "cam_optical"
    with pytest.raises(ValueError, match="frame_id must not be empty"):
        from atdt_train.bag import BagFrame, write_bag
        write_bag([BagFrame(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8),
                            np.ones((2, 2), np.float32), 1.0)], tmp_path / "b2", frame_id="")


def test_a_camera_file_describing_another_size_is_rescaled_to_the_image() -> None:
    from atdt_train.data import Camera, Intrinsics, camera_intrinsics

    # calibrated at 24x16, image 12x8: s = 0.5; cx (10.5 + 0.5) * 0.5 - 0.5 = 5, cy (7.5 + 0.5) * 0.5 - 0.5 = 3.5
    got = camera_intrinsics(Camera(20.0, None, 24, fy=24.0, cx=10.5, cy=7.5, height=16), 8, 12)
    assert got == Intrinsics(10.0, 12.0, 5.0, 3.5, 12, 8, measured=True)
    # no height in the file: the width's scale for both axes
    assert camera_intrinsics(Camera(20.0, None, 24, fy=24.0, cx=10.5, cy=7.5), 8, 12) == got
    assert camera_intrinsics(Camera(20.0), 8, 12) == Intrinsics(20.0, 20.0, 5.5, 3.5, 12, 8, measured=False)
    assert got.resized(16, 24) == Intrinsics(20.0, 24.0, 10.5, 7.5, 24, 16, measured=True)
