"""The street simulator: presets, exact depth on analytic scenes, labels, determinism, resume,
stereo geometry. Frames are tiny so the whole file runs in seconds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from atdt_ros.classmap import CLASS_NAMES, NUM_CLASSES, UNLABELED
from atdt_train.sim.command import simulate
from atdt_train.sim.domain import DomainError, load_domain, parse_preset
from atdt_train.sim.render import StreetRenderer
from atdt_train.sim.scene import (
    CameraPose,
    StreetGeoms,
    camera_rotation,
    compose_scene,
    intrinsics,
)

ROAD, SKY, VEHICLE = (CLASS_NAMES.index(n) for n in ("road", "sky", "vehicle"))


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


@pytest.fixture(scope="module")
def renderer():
    r = StreetRenderer(96, 48)
    yield r
    r.close()


def test_shipped_presets_load_and_differ():
    syn, real = load_domain("synthetic"), load_domain("realistic")
    assert (syn.name, real.name) == ("synthetic", "realistic")
    assert syn.camera.hfov_deg > real.camera.hfov_deg
    assert min(syn.camera.height_m) > max(real.camera.height_m)
    assert syn.look.texture_style == "flat" and real.look.texture_style == "photo"
    assert real.look.haze_per_km > 0.0 and real.lens.noise_std > 0.0 and real.lens.vignette > 0
    assert syn.street.moving_cars_per_100m != real.street.moving_cars_per_100m
    # the preset round-trips through its plain form
    assert parse_preset(syn.to_dict()) == syn


def test_bad_preset_fails_naming_the_key(tmp_path):
    with pytest.raises(DomainError, match=r"camera\.hieght_m"):
        parse_preset({"name": "x", "camera": {"hieght_m": [1.0, 2.0]}})
    with pytest.raises(DomainError, match=r"street\.trees_per_100m.*number"):
        parse_preset({"name": "x", "street": {"trees_per_100m": "many"}})
    with pytest.raises(DomainError, match=r"camera\.height_m.*lo <= hi"):
        parse_preset({"name": "x", "camera": {"height_m": [2.0, 1.0]}})
    with pytest.raises(DomainError, match=r"look\.texture_style"):
        parse_preset({"name": "x", "look": {"texture_style": "cartoon"}})
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nlens:\n  blur: 1.0\n")
    with pytest.raises(DomainError, match=r"mine\.yaml.*lens\.blur"):
        load_domain(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("camera:\n  hfov_deg: 75\n")
    assert load_domain(str(good)).camera.hfov_deg == 75.0
    with pytest.raises(DomainError, match="unknown domain 'nosuch'.*realistic"):
        load_domain("nosuch")


def test_flat_road_depth_matches_the_analytic_plane(renderer):
    preset = load_domain("synthetic")
    w = StreetGeoms()
    w.add("road", "box", (400.0, 0.0, -0.5), (600.0, 600.0, 0.5))  # top face at z = 0
    renderer.load(compose_scene(preset, w, 96, 48))
    h, pitch = 1.7, math.radians(-8.0)
    semantic, depth = renderer.render_labels(
        CameraPose(np.array([0.0, 0.0, h]), camera_rotation(0.0, pitch, 0.0)))
    k = intrinsics(preset.camera.hfov_deg, 96, 48)
    v = np.arange(48, dtype=np.float64)[:, None].repeat(96, axis=1)
    # ray through row v: forward + (-(v - cy) / fy) * up; it meets z = 0 at depth t
    down = (v - k["cy"]) / k["fy"] * math.cos(pitch) - math.sin(pitch)
    with np.errstate(divide="ignore"):
        expected = np.where(down > 0, h / down, np.inf)
    near = expected < 150.0
    assert near.sum() > 48 * 96 // 3
    assert np.all(semantic[near] == ROAD)
    np.testing.assert_allclose(depth[near], expected[near], rtol=2e-3)
    sky = ~np.isfinite(expected)
    assert sky.sum() > 48 * 96 // 4
    assert np.all(semantic[sky] == SKY) and np.all(depth[sky] == 0.0)


def test_stereo_right_view_is_shifted_by_the_baseline_disparity():
    preset = load_domain("realistic")
    width, height, z_front, baseline = 192, 96, 12.0, 0.5
    w = StreetGeoms()
    w.add("vehicle", "box", (z_front + 0.5, 0.0, 1.5), (0.5, 0.6, 1.0), rgba=(1, 0, 0, 1))
    r = StreetRenderer(width, height)
    try:
        r.load(compose_scene(preset, w, width, height))
        left = CameraPose(np.array([0.0, 0.0, 1.5]), camera_rotation(0.0, 0.0, 0.0))
        semantic, depth = r.render_labels(left)
        rgb_l, rgb_r = r.render_rgb(left), r.render_rgb(left.shifted_right(baseline))
    finally:
        r.close()
    box = semantic == VEHICLE
    assert box.sum() > 50
    np.testing.assert_allclose(depth[box], z_front, rtol=1e-3)
    fx = intrinsics(preset.camera.hfov_deg, width, height)["fx"]

    def centre_column(rgb: np.ndarray) -> float:
        red = (rgb[..., 0].astype(int) - rgb[..., 2].astype(int)) > 60
        return float(np.nonzero(red)[1].mean())

    disparity = centre_column(rgb_l) - centre_column(rgb_r)
    assert disparity == pytest.approx(fx * baseline / z_front, abs=0.6)
    assert centre_column(rgb_l) == pytest.approx((width - 1) / 2.0, abs=0.6)


def _sim(out: Path, **kw) -> Path:
    args = dict(domain="synthetic", frames=4, size=(48, 96), split="train", seed=3,
                stereo=False, out=out, progress=False)
    args.update(kw)
    return simulate(**args)


def test_simulate_writes_the_dataset_layout(tmp_path):
    filelist = _sim(tmp_path, frames=8, stereo=True)
    _sim(tmp_path, frames=2, split="val")
    lines = filelist.read_text().splitlines()
    assert len(lines) == 8
    assert lines[0] == ("train/rgb/000000.png;train/right/000000.png;"
                        "train/semantic/000000.png;train/depth/000000.png")
    val = (tmp_path / "val.txt").read_text().splitlines()
    assert val[1] == "val/rgb/000001.png;;val/semantic/000001.png;val/depth/000001.png"
    camera = json.loads((tmp_path / "train" / "camera.json").read_text())
    assert camera["width"] == 96 and camera["height"] == 48 and camera["baseline"] == 0.54
    assert camera["fx"] == pytest.approx(48.0)  # 90 degrees across 96 pixels
    assert camera["mount_height_m"] == pytest.approx(2.1)  # the middle of the preset's 1.9-2.3 m
    import yaml

    meta = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert meta["kind"] == "sim" and meta["domain"] == "synthetic"
    assert set(meta["splits"]) == {"train", "val"} and meta["preset"]["camera"]["hfov_deg"] == 90
    seen = set()
    for line in lines:
        rgb, right, sem, dep = (tmp_path / p for p in line.split(";"))
        assert read(rgb).shape == (48, 96, 3) and read(right).shape == (48, 96, 3)
        s, d = read(sem), read(dep)
        assert s.dtype == np.uint8 and s.shape == (48, 96)
        assert d.dtype == np.uint16 and d.shape == (48, 96)
        assert set(np.unique(s)) <= set(range(NUM_CLASSES)) | {UNLABELED}
        assert np.all((d == 0) == (s == SKY))  # depth is valid everywhere but the sky
        seen |= set(np.unique(s).tolist())
    assert {ROAD, SKY, VEHICLE} <= seen
    # a different domain cannot go into the same directory
    with pytest.raises(ValueError, match="realistic"):
        _sim(tmp_path, domain="realistic")


def test_simulate_is_deterministic_and_splits_differ(tmp_path):
    _sim(tmp_path / "a", domain="realistic")  # with every lens effect, noise included
    _sim(tmp_path / "b", domain="realistic")
    _sim(tmp_path / "b", domain="realistic", split="val")
    for kind in ("semantic", "depth", "rgb"):  # RGB: same machine only (llvmpipe)
        for i in range(4):
            name = f"{i:06d}.png"
            a = read(tmp_path / "a" / "train" / kind / name)
            b = read(tmp_path / "b" / "train" / kind / name)
            assert np.array_equal(a, b), (kind, name)
    a0 = read(tmp_path / "a" / "train" / "depth" / "000000.png")
    v0 = read(tmp_path / "b" / "val" / "depth" / "000000.png")
    assert not np.array_equal(a0, v0)


def test_simulate_resumes_only_missing_frames(tmp_path):
    _sim(tmp_path)
    split = tmp_path / "train"
    files = sorted(split.glob("*/*.png"))
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    victim = split / "depth" / "000002.png"
    victim.unlink()
    _sim(tmp_path)
    for f in files:
        assert f.read_bytes() == before[f][1]
        if "000002" not in f.name:
            assert f.stat().st_mtime_ns == before[f][0], f  # untouched
    assert victim.stat().st_mtime_ns != before[victim][0]
    assert not list(split.glob("*/.*.tmp"))


def test_preset_path_and_override(tmp_path):
    preset = dataclasses.replace(load_domain("synthetic"), name="tiny")
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(preset.to_dict()))
    _sim(tmp_path / "out", domain=str(path), frames=1)
    meta = yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())
    assert meta["domain"] == "tiny"


def test_haze_and_vignette_follow_their_formulas():
    from atdt_train.sim.domain import LensSpec
    from atdt_train.sim.render import apply_lens, lens_maps

    base = load_domain("synthetic")
    preset = dataclasses.replace(
        base, look=dataclasses.replace(base.look, haze_per_km=10.0, haze_rgb=(0.8, 0.6, 0.4)),
        lens=LensSpec())
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    depth = np.full((4, 6), 100.0, dtype=np.float32)
    depth[0, 0] = 0.0  # sky: hazed as if 1 km away
    out = apply_lens(rgb, lens_maps(depth, preset), preset, np.random.default_rng(0))
    expected = np.rint(np.array([0.8, 0.6, 0.4]) * 255.0 * (1.0 - math.exp(-1.0)))
    np.testing.assert_array_equal(out[2, 3], expected)
    np.testing.assert_array_equal(out[0, 0], np.rint(np.array([0.8, 0.6, 0.4]) * 255.0
                                                      * (1.0 - math.exp(-10.0))))
    # a vignette darkens the corners, not the centre; an ideal lens changes nothing
    vig = dataclasses.replace(base, lens=LensSpec(vignette=0.5))
    grey = np.full((5, 9, 3), 200, dtype=np.uint8)
    out = apply_lens(grey, lens_maps(np.ones((5, 9), np.float32), vig), vig,
                     np.random.default_rng(0))
    assert out[2, 4, 0] == 200 and out[0, 0, 0] < 180
    ideal = apply_lens(grey, lens_maps(np.ones((5, 9), np.float32), base), base,
                       np.random.default_rng(0))
    assert np.array_equal(ideal, grey)
