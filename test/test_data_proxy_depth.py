"""Proxy depth: SGBM + left-right check on a synthetic stereo pair of known disparity."""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from atdt_train.cli import main
from atdt_train.data import Frame, FrameDataset, read_filelist, write_filelist
from atdt_train.data.proxy_depth import (SATURATION_SHARE, StereoParams, compute_proxy_depth, disparity_range,
                                         left_right_check, stereo_proxy_depth)

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


def ramp_pair(d_top: float, d_bottom: float, h: int = 64, w: int = 256,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plane slanted like a road: the disparity grows linearly from the top row to the bottom one.

    left(x) = right(x - d(y)) with sub-pixel d (bilinear); returns left, right and d (H, W).
    """
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 1.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    disparity = np.repeat(np.linspace(d_top, d_bottom, h, dtype=np.float32)[:, None], w, 1)
    map_x = np.arange(w, dtype=np.float32)[None, :] - disparity
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    left = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.dstack([left.astype(np.uint8)] * 3), np.dstack([texture.astype(np.uint8)] * 3), disparity


def test_disparity_range_follows_baseline_focal_and_min_depth() -> None:
    assert disparity_range(100.0, 0.6, 0.5) == 128  # 120 px rounded up to a multiple of 16
    assert disparity_range(100.0, 0.6, 0.5, doffs=8.0) == 112  # 112 px exactly
    assert disparity_range(100.0, 0.6, 0.5, doffs=-20.0) == 144
    assert disparity_range(100.0, 0.6, 100.0) == 16  # at least one step
    assert disparity_range(2000.0, 0.5, 0.5, width=300) == 304  # no more than the image is wide
    with pytest.raises(ValueError, match="min_depth must be a positive number of metres, got 0"):
        disparity_range(100.0, 0.6, 0.0)
    with pytest.raises(ValueError, match="num_disparities must be a positive multiple of 16"):
        StereoParams(num_disparities=100)


def test_derived_range_recovers_disparities_beyond_the_old_default() -> None:
    left, right, disparity = ramp_pair(70, 110)  # 0.86 .. 0.55 m, all beyond a 64 px range
    true_depth = FX * BASELINE / disparity
    derived = stereo_proxy_depth(left, right, FX, BASELINE)  # min_depth 0.5 m: 120 px -> 128
    assert derived.num_disparities == 128 and derived.nearest_depth == pytest.approx(60 / 128)
    kept = derived.kept
    rel = np.abs(derived.depth[kept] - true_depth[kept]) / true_depth[kept]
    assert derived.kept_fraction > 0.5 and np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.95
    assert derived.saturated_share == 0.0
    forced = stereo_proxy_depth(left, right, FX, BASELINE, StereoParams(num_disparities=64))
    assert forced.saturated_share > 0.5 >= SATURATION_SHARE  # piled up at the top of the range
    assert forced.kept_fraction < 0.2


def test_doffs_shifts_disparity_before_depth() -> None:
    left, right = textured_pair()
    depth = compute_proxy_depth(left, right, FX, BASELINE, doffs=8.0)
    kept = depth > 0
    assert kept.mean() > 0.5
    assert np.median(depth[kept]) == np.float32(FX * BASELINE / (DISPARITY + 8.0))  # 60 / 20 = 3 m
    with pytest.raises(ValueError, match="doffs must be a finite number of pixels, got nan"):
        compute_proxy_depth(left, right, FX, BASELINE, doffs=float("nan"))


def test_left_right_check_rejects_inconsistent_pixels() -> None:
    disp_left = np.array([[0, 1, 2, 2, 2]], np.float32)
    disp_right = np.array([[1, 1, 2, 5, 2]], np.float32)
    # x=1 -> x-d=0 (dR 1, kept); x=2 -> 0 (dR 1 vs 2, kept at diff 1); x=3 -> 1 (1 vs 2);
    # x=4 -> 2 (2 vs 2, kept); x=0 has no disparity
    assert left_right_check(disp_left, disp_right, 1.0).tolist() == [[False, True, True, True, True]]
    assert left_right_check(disp_left, disp_right, 0.5).tolist() == [[False, True, False, False, True]]


def sim_stereo_list(root: Path, left: np.ndarray, right: np.ndarray, depth: np.ndarray | float,
                    frames: int = 2, camera: dict | None = None) -> Path:
    """A ``sim`` layout under ``root`` with ``frames`` copies of a pair, its exact depth and camera.json."""
    split = root / "sim/train"
    listed = []
    for i in range(frames):
        for sub, image in (("rgb", left), ("right", right)):
            (split / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(split / sub / f"{i:06d}.png"), image)
        (split / "depth").mkdir(exist_ok=True)
        metres = np.broadcast_to(np.asarray(depth, np.float64), left.shape[:2])
        cv2.imwrite(str(split / "depth" / f"{i:06d}.png"), np.rint(metres * 256).astype(np.uint16))
        listed.append(Frame(split / "rgb" / f"{i:06d}.png", split / "right" / f"{i:06d}.png", None,
                            split / "depth" / f"{i:06d}.png"))
    (split / "camera.json").write_text(json.dumps(camera or {"fx": FX, "width": left.shape[1], "baseline": BASELINE}))
    return write_filelist(root / "sim/train.txt", listed)


def test_command_writes_labels_list_and_stats(tmp_path: Path) -> None:
    left, right = textured_pair()
    listing = sim_stereo_list(tmp_path, left, right, TRUE_DEPTH)
    frames = read_filelist(listing)
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
    assert stats["warnings"] == [] and stats["saturated_frames"] == [] and stats["num_disparities_used"] == [32]


def test_command_warns_when_the_range_saturates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    left, right, disparity = ramp_pair(70, 110)
    listing = sim_stereo_list(tmp_path, left, right, FX * BASELINE / disparity, frames=1)
    with caplog.at_level(logging.WARNING):
        assert main(["proxy-depth", "--kind", "sim", "--list", str(listing), "--out", str(tmp_path / "forced"),
                     "--num-disparities", "64", "--compare"]) == 0
    frame = str(tmp_path / "sim/train/rgb/000000.png")
    saturation = [r.getMessage() for r in caplog.records if "top of the searched range" in r.getMessage()]
    assert len(saturation) == 1 and saturation[0].startswith(frame)
    assert "(0..64 px, depths from 0.938 m on)" in saturation[0] and "--num-disparities 128" in saturation[0]
    assert any("of the pixels were kept (below 40 %)" in r.getMessage() for r in caplog.records)
    stats = json.loads((tmp_path / "forced/proxy_depth_stats.json").read_text())
    assert [s["frame"] for s in stats["saturated_frames"]] == [frame] and len(stats["warnings"]) == 2

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the range derived from --min-depth 0.5 reaches 0.55 m
        assert main(["proxy-depth", "--kind", "sim", "--list", str(listing), "--out", str(tmp_path / "derived"),
                     "--compare"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    stats = json.loads((tmp_path / "derived/proxy_depth_stats.json").read_text())
    assert stats["num_disparities_used"] == [128] and stats["params"]["num_disparities"] is None
    assert stats["kept_fraction"] > 0.5 and stats["median_abs_rel"] < 0.01 and stats["warnings"] == []
    # a lower --min-depth widens the range; both range options at once are refused
    assert main(["proxy-depth", "--kind", "sim", "--list", str(listing), "--out", str(tmp_path / "near"),
                 "--min-depth", "0.2"]) == 0
    assert json.loads((tmp_path / "near/proxy_depth_stats.json").read_text())["num_disparities_used"] == [256]
    caplog.clear()
    assert main(["proxy-depth", "--kind", "sim", "--list", str(listing), "--out", str(tmp_path / "both"),
                 "--num-disparities", "64", "--min-depth", "0.2"]) == 2
    assert "give --num-disparities (64) or --min-depth (0.2), not both" in caplog.text


def test_command_doffs_is_scaled_with_the_image(tmp_path: Path) -> None:
    left, right = textured_pair()  # camera.json at twice the width: fx 200 -> 100, doffs 16 -> 8 px
    depth = FX * BASELINE / (DISPARITY + 8.0)  # 3 m
    listing = sim_stereo_list(tmp_path, left, right, depth, frames=1,
                              camera={"fx": 2 * FX, "width": 2 * left.shape[1], "baseline": BASELINE})
    assert main(["proxy-depth", "--kind", "sim", "--list", str(listing), "--out", str(tmp_path / "proxy"),
                 "--doffs", "16", "--compare"]) == 0
    stats = json.loads((tmp_path / "proxy/proxy_depth_stats.json").read_text())
    assert stats["doffs"] == 16.0 and stats["num_disparities_used"] == [112]  # 120 - 8 px
    assert stats["kept_fraction"] > 0.5 and stats["median_abs_rel"] == 0.0


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
