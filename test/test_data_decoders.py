"""Decoders of every dataset kind on small files written in the native on-disk formats."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from atdt_train.data import DatasetError, Frame, FrameDataset, get_decoder, scan_dataset
from atdt_train.data.decoders import CARLA_TO_ATDT, CITYSCAPES_TO_ATDT, SYNTHIA_TO_ATDT

ROAD, SIDEWALK, WALL, FENCE, PERSON, POLE, VEGETATION, VEHICLE, SIGN, BUILDING, SKY = range(11)


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def rgb24(code: np.ndarray) -> np.ndarray:
    """An OpenCV BGR image whose R + G*256 + B*65536 equals ``code``."""
    r, g, b = code & 255, (code >> 8) & 255, (code >> 16) & 255
    return np.stack([b, g, r], axis=-1).astype(np.uint8)


def test_cityscapes_labels_disparity_and_camera(tmp_path: Path) -> None:
    stem = "aachen_000000_000019"
    rgb = write(tmp_path / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
    write(tmp_path / f"rightImg8bit/train/aachen/{stem}_rightImg8bit.png", np.zeros((2, 4, 3), np.uint8))
    ids = np.array([[7, 8, 26, 23], [0, 24, 25, 9]], np.uint8)
    sem = write(tmp_path / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", ids)
    # p = 0 invalid; p = 1 -> d = 0 (invalid); p = 257 -> d = 1 px; p = 2561 -> d = 10 px
    raw = np.array([[0, 1, 257, 2561], [513, 257, 257, 257]], np.uint16)
    disp = write(tmp_path / f"disparity/train/aachen/{stem}_disparity.png", raw)
    cam = tmp_path / f"camera/train/aachen/{stem}_camera.json"
    cam.parent.mkdir(parents=True)
    cam.write_text(json.dumps({"extrinsic": {"baseline": 0.25, "z": 1.22},
                               "intrinsic": {"fx": 2000.0, "fy": 2000.0}}))

    decoder = get_decoder("cityscapes")
    frame = Frame(rgb, None, sem, disp)
    assert decoder.semantic(sem).tolist() == [[ROAD, SIDEWALK, VEHICLE, SKY], [255, PERSON, PERSON, 255]]
    depth = decoder.depth(disp, frame)
    assert depth.dtype == np.float32
    assert depth.tolist() == [[0.0, 0.0, 500.0, 50.0], [250.0, 500.0, 500.0, 500.0]]

    frames = scan_dataset("cityscapes", tmp_path, ["train"])
    assert frames == [Frame(rgb, frames[0].right, sem, disp)] and frames[0].right is not None
    sample = FrameDataset(frames, kind="cityscapes")[0]
    assert float(sample["focal"]) == 2000.0
    assert float(sample["camera_height"]) == pytest.approx(1.22)  # extrinsic.z: metres above the road

    cam.unlink()
    with pytest.raises(DatasetError, match="camera JSON"):
        get_decoder("cityscapes").depth(disp, Frame(rgb))


def test_cityscapes_table_covers_the_eleven_classes() -> None:
    assert set(CITYSCAPES_TO_ATDT.values()) == set(range(11))
    assert set(CARLA_TO_ATDT.values()) == set(range(11))
    assert set(SYNTHIA_TO_ATDT.values()) == set(range(11))


def test_carla_depth_and_tags(tmp_path: Path) -> None:
    code = np.array([[0, 1, 16777215, 8388608], [65536, 256, 1677722, 12345]], np.int64)
    depth_png = write(tmp_path / "ep0/CameraDepth/000.png", rgb24(code))
    tags = np.array([[7, 6, 13, 0], [4, 10, 12, 22]], np.uint8)
    sem_bgr = np.zeros((2, 4, 3), np.uint8)
    sem_bgr[..., 2] = tags  # tag in R; B and G hold other data in newer CARLA versions
    sem_bgr[..., 0] = 99
    sem_png = write(tmp_path / "ep0/CameraSemSeg/000.png", sem_bgr)
    rgb = write(tmp_path / "ep0/CameraRGB/000.png", np.zeros((2, 4, 4), np.uint8))  # BGRA as CARLA saves

    decoder = get_decoder("carla")
    depth = decoder.depth(depth_png, Frame(rgb))
    expected = (code / 16777215.0 * 1000.0).astype(np.float32)
    expected[0, 2] = 0.0  # the far plane (sky) is invalid
    assert np.array_equal(depth, expected)
    assert depth[1, 0] == np.float32(65536 / 16777215 * 1000)
    assert decoder.semantic(sem_png).tolist() == [[ROAD, ROAD, SKY, 255], [PERSON, VEHICLE, SIGN, VEGETATION]]

    frames = scan_dataset("carla", tmp_path)
    assert frames == [Frame(rgb, None, sem_png, depth_png)]
    sample = FrameDataset(frames, kind="carla")[0]
    assert float(sample["focal"]) == 2.0  # 90 degree FOV: width / 2
    assert sample["image"].shape == (3, 2, 4)


def test_kitti_depth_disparity_and_semantics(tmp_path: Path) -> None:
    base = tmp_path / "training"
    rgb = write(base / "image_2/000000_10.png", np.zeros((1, 3, 3), np.uint8))
    write(base / "image_3/000000_10.png", np.zeros((1, 3, 3), np.uint8))
    sem = write(base / "semantic/000000_10.png", np.array([[7, 21, 20]], np.uint8))
    disp = write(base / "disp_occ_0/000000_10.png", np.array([[0, 256, 512 + 128]], np.uint16))
    depth = write(tmp_path / "proj_depth/groundtruth/0000000005.png", np.array([[0, 2560, 300]], np.uint16))

    decoder = get_decoder("kitti", fx=700.0, baseline=0.5)
    assert decoder.semantic(sem).tolist() == [[ROAD, VEGETATION, SIGN]]
    assert decoder.depth(disp, Frame(rgb)).tolist() == [[0.0, 350.0, 140.0]]
    assert decoder.depth(depth, Frame(rgb)).tolist() == [[0.0, 10.0, 300 / 256]]
    default = get_decoder("kitti").depth(disp, Frame(rgb))
    assert default[0, 1] == np.float32(721.5377 * 0.54)

    frames = scan_dataset("kitti", tmp_path, ["training"])
    assert frames[0].semantic == sem and frames[0].depth == disp and frames[0].right is not None
    sample = FrameDataset(frames, kind="kitti")[0]
    assert float(sample["camera_height"]) == pytest.approx(1.65)  # KITTI's colour cameras


def test_synthia_sf_labels_and_depth(tmp_path: Path) -> None:
    seq = tmp_path / "SEQ1"
    rgb = write(seq / "RGBLeft/0000000.png", np.zeros((2, 3, 3), np.uint8))
    write(seq / "RGBRight/0000000.png", np.zeros((2, 3, 3), np.uint8))
    ids = np.array([[1, 2, 11], [20, 0, 21]], np.uint16)
    gt = np.zeros((2, 3, 3), np.uint16)
    gt[..., 2] = ids  # class id in R (OpenCV's BGR index 2); instance ids in G
    gt[..., 1] = 7
    gt_png = write(seq / "GTLeft/0000000.png", gt)
    code = np.array([[0, 3355443, 16777215], [1, 65536, 100]], np.int64)
    depth_png = write(seq / "DepthLeft/0000000.png", rgb24(code))

    decoder = get_decoder("synthia")
    assert decoder.semantic(gt_png).tolist() == [[ROAD, SIDEWALK, SKY], [ROAD, 255, 255]]
    depth = decoder.depth(depth_png, Frame(rgb))
    expected = (code / 16777215.0 * 5000.0).astype(np.float32)
    expected[0, 2] = 0.0
    assert np.array_equal(depth, expected)
    assert abs(float(depth[0, 1]) - 1000.0) < 1e-3

    frames = scan_dataset("synthia", tmp_path)
    assert frames == [Frame(rgb, seq / "RGBRight/0000000.png", gt_png, depth_png)]


def test_sim_labels_outside_the_class_range_are_ignored(tmp_path: Path) -> None:
    sem = write(tmp_path / "s.png", np.array([[0, 10, 11, 255]], np.uint8))
    assert get_decoder("sim").semantic(sem).tolist() == [[0, 10, 255, 255]]
    depth = write(tmp_path / "d.png", np.array([[0, 256, 65535]], np.uint16))
    assert get_decoder("sim").depth(depth, Frame(tmp_path / "x.png")).tolist() == [[0.0, 1.0, 65535 / 256]]
    rgb_depth = write(tmp_path / "bad.png", np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel uint16.*bad.png|bad.png.*single-channel uint16"):
        get_decoder("sim").depth(rgb_depth, Frame(tmp_path / "x.png"))


def test_scan_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="leftImg8bit/val"):
        scan_dataset("cityscapes", tmp_path, ["val"])
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        scan_dataset("nyu", tmp_path)
