"""Pixel-level DA (FDA): the spectrum swap against hand-computed values, and the translated dataset."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from atdt_train.cli import main
from atdt_train.data import DatasetError, FrameDataset
from atdt_train.data.pixel_da import fda, translate
from test_data_dataset import make_sim_split


def textured(seed: int, level: int, shape=(32, 48)) -> np.ndarray:
    """Mid-level image with small texture, so no pixel clips after the swap."""
    rng = np.random.default_rng(seed)
    return np.clip(level + rng.integers(-20, 21, size=shape + (3,)), 0, 255).astype(np.uint8)


def test_beta_zero_keeps_all_but_the_mean_of_the_style() -> None:
    # b = floor(32 * 0) = 0: the window is the DC term alone, so the result is the source with
    # the style's mean colour (DC amplitude = H*W*mean; the source's DC phase is 0, its mean > 0).
    source, style = textured(0, 100), textured(1, 180)
    out = fda(source, style, beta=0.0).astype(float)
    expected = source - source.mean(axis=(0, 1)) + style.mean(axis=(0, 1))
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_style_equal_to_source_is_the_identity() -> None:
    source = textured(2, 120)
    assert np.array_equal(fda(source, source.copy(), beta=0.1), source)


def test_low_frequencies_come_from_the_style_high_ones_from_the_source() -> None:
    source, style = textured(3, 90), textured(4, 160)
    beta = 0.1  # b = 3: a 7x7 window of the shifted spectrum
    out = fda(source, style, beta).astype(float)
    spec = lambda im: np.fft.fftshift(np.fft.fft2(im.astype(float), axes=(0, 1)), axes=(0, 1))
    low = (slice(16 - 3, 16 + 4), slice(24 - 3, 24 + 4))
    # rounding to uint8 adds at most 0.5 per pixel: |ΔF| <= 0.5 * H * W
    tolerance = 0.5 * 32 * 48
    assert np.abs(np.abs(spec(out))[low] - np.abs(spec(style))[low]).max() < tolerance
    high = np.ones((32, 48), bool)
    high[low] = False
    assert np.abs(spec(out)[high] - spec(source)[high]).max() < tolerance
    assert np.abs(spec(out)[low] - spec(source)[low]).max() > 10 * tolerance  # it did change


def test_style_of_another_size_is_resized_and_beta_checked() -> None:
    source = textured(5, 100)
    out = fda(source, np.full((64, 96, 3), 200, np.uint8), beta=0.0)
    assert abs(out.mean() - 200.0) < 0.5
    with pytest.raises(ValueError, match="beta must be in"):
        fda(source, source, beta=0.7)


def _make_style(root: Path) -> Path:
    from atdt_train.data import Frame, write_filelist

    (root / "rgb").mkdir(parents=True)
    path = root / "rgb" / "s.png"
    cv2.imwrite(str(path), np.full((8, 16, 3), (40, 90, 200), np.uint8))  # BGR on disk
    return write_filelist(root / "style.txt", [Frame(path)])


def test_translated_dataset_keeps_labels_depth_camera_and_resumes(tmp_path: Path) -> None:
    source_list = make_sim_split(tmp_path / "B")
    style_list = _make_style(tmp_path / "A")
    out = tmp_path / "B_fda"
    assert main(["translate", "--list", str(source_list), "--style", str(style_list),
                 "--out", str(out), "--beta", "0"]) == 0

    before, after = FrameDataset(source_list), FrameDataset(out / "train.txt")
    assert [f.rgb for f in after.frames] == [out / "train" / "rgb" / f"{i:06d}.png" for i in range(2)]
    for i in range(2):
        a, b = before[i], after[i]
        assert np.array_equal(a["semantic"].numpy(), b["semantic"].numpy())
        assert np.array_equal(a["depth"].numpy(), b["depth"].numpy())
        assert float(a["focal"]) == float(b["focal"]) == 20.0  # camera.json found through the link
        # the source is pure red; beta 0 gives it the style's mean colour, RGB (200, 90, 40)
        rgb = cv2.cvtColor(cv2.imread(str(out / "train" / "rgb" / f"{i:06d}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb[0, 0], [200, 90, 40])
    assert (out / "train" / "semantic").is_symlink() and (out / "dataset.yaml").is_symlink()
    assert not (out / "train.txt").is_symlink()
    assert json.loads((out / "pixel_da.json").read_text())["beta"] == 0.0

    # resume: an existing image is kept, a missing one is written again
    first = out / "train" / "rgb" / "000000.png"
    stamp = first.stat().st_mtime_ns
    (out / "train" / "rgb" / "000001.png").unlink()
    assert main(["translate", "--list", str(source_list), "--style", str(style_list),
                 "--out", str(out), "--beta", "0"]) == 0
    assert first.stat().st_mtime_ns == stamp and (out / "train" / "rgb" / "000001.png").is_file()


def test_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    source_list = make_sim_split(tmp_path / "B")
    style_list = _make_style(tmp_path / "A")
    out = tmp_path / "B_fda"
    translate([source_list], style_list, out, beta=0.0)
    with pytest.raises(DatasetError, match="other settings"):
        translate([source_list], style_list, out, beta=0.05)
    with pytest.raises(DatasetError, match="outside the source dataset"):
        translate([source_list], style_list, tmp_path / "B" / "inside")
    with pytest.raises(DatasetError, match="unknown pixel-level DA method 'cyclegan'; accepted: fda"):
        translate([source_list], style_list, tmp_path / "x", method="cyclegan")
