"""FrameDataset over a simulator-layout split: tensors, resize, focal scaling, cache, errors."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from atdt_train.data import DatasetError, Frame, FrameDataset, IMAGE_MEAN, IMAGE_STD, write_filelist


def make_sim_split(root: Path, frames: int = 2, size=(8, 16)) -> Path:
    """A tiny dataset in the layout of ``atdt_train simulate``; returns its filelist."""
    h, w = size
    split = root / "train"
    for sub in ("rgb", "semantic", "depth"):
        (split / sub).mkdir(parents=True, exist_ok=True)
    (split / "camera.json").write_text(json.dumps(
        {"fx": 20.0, "fy": 20.0, "cx": w / 2, "cy": h / 2, "width": w, "height": h, "baseline": 0.5}))
    listed = []
    for i in range(frames):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = 255  # pure red in RGB
        semantic = (np.arange(h * w).reshape(h, w) % 11).astype(np.uint8)
        semantic[0, 0] = 255
        semantic[0, 1] = 42  # not a class: ignored
        depth = np.full((h, w), 10 * 256 + 128, np.uint16)  # 10.5 m
        depth[-1, :] = 0  # invalid row
        names = [split / sub / f"{i:06d}.png" for sub in ("rgb", "semantic", "depth")]
        cv2.imwrite(str(names[0]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(names[1]), semantic)
        cv2.imwrite(str(names[2]), depth)
        listed.append(Frame(names[0], None, names[1], names[2]))
    (root / "dataset.yaml").write_text("kind: sim\n")
    return write_filelist(root / "train.txt", listed)


def test_sample_values_at_native_size(tmp_path: Path) -> None:
    ds = FrameDataset(make_sim_split(tmp_path))  # kind from dataset.yaml
    s = ds[1]
    assert s["index"] == 1 and len(ds) == 2
    assert s["image"].shape == (3, 8, 16) and s["image"].dtype == torch.float32
    expected = [(c - m) / sd for c, m, sd in zip((1.0, 0.0, 0.0), IMAGE_MEAN, IMAGE_STD)]
    assert torch.allclose(s["image"][:, 3, 3], torch.tensor(expected), atol=1e-6)
    sem = s["semantic"]
    assert sem.dtype == torch.int64
    assert sem[0, 0] == 255 and sem[0, 1] == 255 and sem[0, 2] == 2 and sem[1, 0] == 16 % 11
    assert s["depth"].dtype == torch.float32 and s["depth"][0, 0] == 10.5
    assert s["depth_valid"].dtype == torch.bool
    assert not s["depth_valid"][-1].any() and s["depth_valid"][:-1].all()
    assert s["focal"].dtype == torch.float32 and float(s["focal"]) == 20.0
    assert torch.isnan(s["camera_height"])  # this camera.json records no mount height
    assert float(FrameDataset(make_sim_split(tmp_path), camera_height=1.4)[0]["camera_height"]) \
        == pytest.approx(1.4)  # the default given, where the dataset has none


def test_resize_scales_focal_and_keeps_labels_exact(tmp_path: Path) -> None:
    ds = FrameDataset(make_sim_split(tmp_path), kind="sim", size=(4, 8), cache=True)
    s = ds[0]
    assert s["image"].shape == (3, 4, 8) and s["semantic"].shape == (4, 8)
    assert float(s["focal"]) == 10.0
    assert set(s["semantic"].unique().tolist()) <= set(range(11)) | {255}
    assert set(s["depth"].unique().tolist()) <= {0.0, 10.5}
    again = ds[0]
    assert torch.equal(again["semantic"], s["semantic"]) and 0 in ds.cache


def test_crop_and_augment(tmp_path: Path) -> None:
    ds = FrameDataset(make_sim_split(tmp_path), kind="sim", crop=(4, 6), augment=True)
    torch.manual_seed(0)
    shapes = {tuple(ds[0]["semantic"].shape) for _ in range(5)}
    assert shapes == {(4, 6)}
    centre = FrameDataset(make_sim_split(tmp_path), kind="sim", crop=(4, 6))[0]
    full = FrameDataset(make_sim_split(tmp_path), kind="sim")[0]
    assert torch.equal(centre["semantic"], full["semantic"][2:6, 5:11])


def test_missing_labels_give_ignore_and_invalid(tmp_path: Path) -> None:
    listing = make_sim_split(tmp_path)
    rgb = tmp_path / "train/rgb/000000.png"
    s = FrameDataset([Frame(rgb)], kind="sim")[0]
    assert (s["semantic"] == 255).all() and (s["depth"] == 0).all() and not s["depth_valid"].any()
    assert listing.exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    make_sim_split(tmp_path)
    (tmp_path / "train/depth/000001.png").unlink()
    ds = FrameDataset(tmp_path / "train.txt", kind="sim")
    with pytest.raises(DatasetError, match=r"depth file not found: .*000001\.png"):
        ds[1]


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    make_sim_split(tmp_path)
    (tmp_path / "train/semantic/000000.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"not a readable image: .*semantic/000000\.png"):
        FrameDataset(tmp_path / "train.txt", kind="sim")[0]


def test_size_mismatch_and_unknown_kind(tmp_path: Path) -> None:
    make_sim_split(tmp_path)
    cv2.imwrite(str(tmp_path / "train/depth/000000.png"), np.zeros((3, 3), np.uint16))
    with pytest.raises(DatasetError, match="000000.png is 3x3 but its image"):
        FrameDataset(tmp_path / "train.txt", kind="sim")[0]
    with pytest.raises(DatasetError, match="unknown dataset kind 'nyu'.*sim, carla"):
        FrameDataset(tmp_path / "train.txt", kind="nyu")
