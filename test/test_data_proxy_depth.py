"""Proxy depth: SGBM + left-right check on a synthetic stereo pair of known disparity."""

import json
from pathlib import Path

import cv2
import numpy as np

from atdt_train.cli import main
from atdt_train.data import Frame, FrameDataset, read_filelist, write_filelist
from atdt_train.data.proxy_depth import StereoParams, compute_proxy_depth, left_right_check

FX, BASELINE, DISPARITY = 100.0, 0.6, 12
TRUE_DEPTH = FX * BASELINE / DISPARITY  # 5 m


def textured_pair(h: int = 64, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fronto-parallel textured plane seen by a rectified pair: left(x) = right(x - DISPARITY)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 2, (w + 32) // 2), dtype=np.uint8)
    texture = cv2.resize(coarse, (w + 32, h), interpolation=cv2.INTER_NEAREST)
    left = texture[:, 16:16 + w]
    right = texture[:, 16 + DISPARITY:16 + DISPARITY + w]
    return np.dstack([left] * 3), np.dstack([right] * 3)


def test_known_disparity_gives_known_depth_on_kept_pixels() -> None:
    left, right = textured_pair()
    depth = compute_proxy_depth(left, right, FX, BASELINE, StereoParams(num_disparities=32))
    kept = depth > 0
    assert kept.mean() > 0.5
    assert np.median(depth[kept]) == np.float32(TRUE_DEPTH)
    assert np.abs(depth[kept] - TRUE_DEPTH).max() < 0.05 * TRUE_DEPTH
    assert not kept[:, :DISPARITY].any()  # no match exists left of the disparity


def test_left_right_check_rejects_inconsistent_pixels() -> None:
    disp_left = np.array([[0, 1, 2, 2, 2]], np.float32)
    disp_right = np.array([[1, 1, 2, 5, 2]], np.float32)
    # x=1 -> x-d=0 (dR 1, kept); x=2 -> 0 (dR 1 vs 2, kept at diff 1); x=3 -> 1 (1 vs 2);
    # x=4 -> 2 (2 vs 2, kept); x=0 has no disparity
    assert left_right_check(disp_left, disp_right, 1.0).tolist() == [[False, True, True, True, True]]
    assert left_right_check(disp_left, disp_right, 0.5).tolist() == [[False, True, False, False, True]]


def test_command_writes_labels_list_and_stats(tmp_path: Path) -> None:
    split = tmp_path / "sim/train"
    left, right = textured_pair()
    frames = []
    for i in range(2):
        for sub, image in (("rgb", left), ("right", right)):
            (split / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(split / sub / f"{i:06d}.png"), image)
        (split / "depth").mkdir(exist_ok=True)
        cv2.imwrite(str(split / "depth" / f"{i:06d}.png"), np.full(left.shape[:2], int(TRUE_DEPTH * 256), np.uint16))
        frames.append(Frame(split / "rgb" / f"{i:06d}.png", split / "right" / f"{i:06d}.png", None,
                            split / "depth" / f"{i:06d}.png"))
    (split / "camera.json").write_text(json.dumps({"fx": FX, "width": left.shape[1], "baseline": BASELINE}))
    listing = write_filelist(tmp_path / "sim/train.txt", frames)
    out = tmp_path / "proxy"
    code = main(["proxy-depth", "--list", str(listing), "--out", str(out), "--kind", "sim",
                 "--num-disparities", "32", "--compare"])
    assert code == 0
    written = read_filelist(out / "train.txt")
    assert [f.rgb for f in written] == [f.rgb for f in frames]
    assert all(f.depth is not None and f.depth.parent == out / "depth" for f in written)
    stats = json.loads((out / "proxy_depth_stats.json").read_text())
    assert stats["frames"] == 2 and stats["kept_fraction"] > 0.5 and stats["median_abs_rel"] == 0.0
    sample = FrameDataset(out / "train.txt")[0]  # kind from the dataset.yaml written beside it
    valid = sample["depth_valid"]
    assert valid.float().mean() > 0.5 and (sample["depth"][valid] - TRUE_DEPTH).abs().max() < 0.25


def test_filelist_command(tmp_path: Path) -> None:
    for sub in ("rgb", "semantic"):
        (tmp_path / "root/val" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "root/val" / sub / "000000.png"), np.zeros((2, 2), np.uint8))
    assert main(["filelist", "--kind", "sim", "--root", str(tmp_path / "root"), "--split", "val",
                 "--out", str(tmp_path / "lists/val.txt")]) == 0
    assert (tmp_path / "lists/val.txt").read_text() == "../root/val/rgb/000000.png;;../root/val/semantic/000000.png;\n"
    assert (tmp_path / "lists/dataset.yaml").read_text() == "kind: sim\n"
    assert main(["filelist", "--kind", "sim", "--root", str(tmp_path / "root"), "--split", "test",
                 "--out", str(tmp_path / "lists/test.txt")]) == 2
