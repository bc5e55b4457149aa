"""Focal- and height-normalised depth from the experiment file to the node's ~/depth.

An experiment with ``depth.focal_normalised: true`` is trained for one step per stage on tiny
domains whose cameras have known focal lengths (A: fx 50 px, B: fx 40 px, at the 32x64 input),
exported with ``atdt_train export``, and served by the node in its own process over DDS. The
network predicts depth for a camera of focal f_ref = fx of A's first training frame, so the node
must publish the network's output times fx / f_ref: fx from the camera_info it received, or the
B frames' fx recorded at export when it has none. Doubling fx doubles the depth. With
``depth.height_normalised: true`` as well the unit is f x h: cameras 2.0 m (A) and 1.25 m (B)
above the road, and the node scales by its ``camera_height`` parameter over A's 2.0 m.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import chain_helpers
from test_node import Client, _image_array, _params_file, _start, _stop

SIZE = (32, 64)
FX_A, FX_B = 50.0, 40.0
H_A, H_B = 2.0, 1.25  # camera heights above the road (m), height-normalised chain


def _experiment(tmp: Path, depth: dict, heights: dict | None = None) -> Path:
    """A sem2dep experiment on tiny domains of fx FX_A / FX_B (and camera heights ``heights``)."""
    heights = heights or {}
    lists = {d: chain_helpers.write_tiny_domain(tmp / d, d, size=SIZE, fx=fx, mount_height=heights.get(d))
             for d, fx in (("A", FX_A), ("B", FX_B))}
    exp_path = tmp / "focal.yaml"
    exp_path.write_text(json.dumps({
        "name": "focal", "direction": "sem2dep", "out_dir": str(tmp / "run"),
        "domains": {d: {"train": lists[d]["train"], "test": lists[d]["test"], "kind": "sim"}
                    for d in "AB"},
        "data": {"height": SIZE[0], "width": SIZE[1], "batch_size": 2, "num_workers": 0,
                 "flip": False},
        "steps": {"n1": 1, "n2": 1, "g": 1, "oracle": 1},
        "depth": depth,
        "trainer": {"progress_bar": False, "threads": 1},
    }))
    return exp_path


def _train_and_export(exp_path: Path, out: Path) -> Path:
    from atdt_train.cli import main
    from atdt_train.config import load_experiment
    from atdt_train.stages import train_stage

    exp = load_experiment(exp_path)
    for stage in ("n1", "n2", "g"):
        train_stage(exp, stage)
    assert main(["export", str(exp_path), "--out", str(out), "--formats", "pt2",
                 "--parity-frames", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def focal_chain(tmp_path_factory) -> Path:
    """The chain exported from a focal-normalised sem2dep experiment (depth = D2(G(E1(x))))."""
    tmp = tmp_path_factory.mktemp("focal")
    return _train_and_export(_experiment(tmp, {"focal_normalised": True}), tmp / "chain")


@pytest.fixture(scope="module")
def height_chain(tmp_path_factory) -> Path:
    """The chain of the same experiment with ``depth.height_normalised`` (unit f x h)."""
    tmp = tmp_path_factory.mktemp("height")
    exp = _experiment(tmp, {"focal_normalised": True, "height_normalised": True}, {"A": H_A, "B": H_B})
    return _train_and_export(exp, tmp / "chain")


def _network_depth(chain: Path, rgb: np.ndarray) -> np.ndarray:
    """The exported program's own depth output on one frame (focal-normalised units)."""
    import torch

    from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD

    x = (rgb.astype(np.float32) / 255.0 - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    with torch.inference_mode():
        depth, _ = torch.export.load(str(chain / "chain.pt2")).module()(x)
    return depth[0, 0].numpy()


def _camera_info(fx: float, binning: int = 1, roi: bool = False):
    """A camera_info for the 32x64 image: plain; of a 2x2-binned 64x128 sensor (K, P at full
    resolution, REP 104); or a 32x64 ROI of a 64x128 sensor at offset (x 20, y 10)."""
    from sensor_msgs.msg import CameraInfo

    h, w = SIZE
    info = CameraInfo()
    if binning > 1 or roi:
        h, w = 2 * h, 2 * w
        info.binning_x = info.binning_y = binning
        if roi:
            info.roi.x_offset, info.roi.y_offset = 20, 10
            info.roi.height, info.roi.width = SIZE
    info.height, info.width = h, w
    info.k = [fx, 0.0, w / 2, 0.0, fx, h / 2, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, w / 2, 0.0, 0.0, fx, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _stamped(messages: list, stamp: tuple[int, int]) -> list:
    return [m for m in list(messages) if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]


def test_the_export_records_the_training_focal_and_the_default_one(focal_chain) -> None:
    from atdt_ros.artifact import load_metadata

    depth = load_metadata(focal_chain).depth
    assert depth.focal_normalised is True
    assert depth.focal_ref == FX_A      # fx of A's first training frame at the input size
    assert depth.default_focal == FX_B  # fx of the parity frames (B's test split)


def test_the_node_publishes_the_output_times_fx_over_the_training_focal(focal_chain, tmp_path) -> None:
    rng = np.random.default_rng(3)
    rgb = np.kron(rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    raw = _network_depth(focal_chain, rgb)
    positive = raw > 0  # the node publishes no reading (NaN) where the output is not positive
    assert 0.1 < positive.mean()
    params = _params_file(tmp_path, focal_chain, backend="torch", trust_model_code=True,
                          input_qos="reliable", threads=1, depth_sky="keep",
                          depth_range_limits=False)
    proc = _start(params)
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        depth_at: dict[float | None, np.ndarray] = {}

        def frame(sec: int, fx: float | None, binning: int = 1, roi: bool = False) -> None:
            """Publish the frame (after its camera_info, as a camera does) until the node answers
            one with the camera_info of ``fx``."""
            for attempt in range(50):
                stamp = (sec, attempt)
                if fx is not None:
                    client.pub_info.publish(_camera_info(fx, binning, roi))
                client.pub_image.publish(client.image(rgb, "rgb8", stamp))
                wanted = ("depth",) if fx is None else ("depth", "camera_info")  # both go out
                assert client.wait(lambda: all(_stamped(client.got[k], stamp) for k in wanted)), \
                    f"no {' and '.join(wanted)} for the frame"
                infos = _stamped(client.got["camera_info"], stamp)
                if fx is None:
                    assert not infos  # none received yet: the node used default_focal
                elif infos[0].k[0] != fx:
                    continue  # the image overtook the camera_info on its way: once more
                (msg,) = _stamped(client.got["depth"], stamp)
                assert (msg.encoding, msg.height, msg.width) == ("32FC1", *SIZE)
                depth_at[(fx, binning, roi) if binning > 1 or roi else fx] = _image_array(msg).copy()
                return
            raise AssertionError(f"the node never used the camera_info with fx {fx}")

        frame(1, None)
        frame(2, 100.0)
        frame(3, 200.0)
        frame(4, 200.0, binning=2)  # the 32x64 image of a 2x2-binned sensor: fx 100 in its pixels
        frame(5, 100.0, roi=True)   # a 32x64 window of a 64x128 sensor: the focal stays 100
        for fx, scale in ((None, FX_B / FX_A), (100.0, 100.0 / FX_A), (200.0, 200.0 / FX_A)):
            depth = depth_at[fx]
            assert np.isnan(depth[~positive]).all(), fx
            # the node's pre-processing and backend round differently from this process's
            # (measured: <= 2e-6 in network units); a wrong focal is off by 20 % or more
            np.testing.assert_allclose(depth[positive], raw[positive] * scale, rtol=1e-5,
                                       atol=1e-5 * scale, err_msg=f"fx {fx}")
        # binning and ROI: the image's own focal is 100 px in both, so the depth equals fx 100's
        # (ROI scaled like a resize would give fx 50 and half the depth; binning ignored, fx 200)
        for key in ((200.0, 2, False), (100.0, 1, True)):
            np.testing.assert_array_equal(depth_at[key][positive], depth_at[100.0][positive], err_msg=str(key))
        # doubling fx doubles the depth (a factor of 2 is exact in float32)
        np.testing.assert_array_equal(depth_at[200.0][positive], 2 * depth_at[100.0][positive])
        np.testing.assert_allclose(depth_at[100.0][positive], 2.5 * depth_at[None][positive],
                                   rtol=1e-6, atol=0)
    finally:
        print(_stop(proc, client))


def test_the_export_records_the_training_height_and_the_default_one(height_chain) -> None:
    from atdt_ros.artifact import load_metadata

    depth = load_metadata(height_chain).depth
    assert (depth.focal_normalised, depth.height_normalised) == (True, True)
    assert (depth.focal_ref, depth.default_focal) == (FX_A, FX_B)
    assert depth.height_ref == H_A               # camera height of A's first training frame
    assert depth.default_camera_height == H_B    # that of the parity frames (B's test split)


def test_the_focal_chain_ignores_camera_height(focal_chain) -> None:
    from atdt_ros.artifact import depth_to_metres_scale, load_metadata

    depth = load_metadata(focal_chain).depth
    assert depth.height_normalised is False  # optional key: absent in older metadata, False here
    assert depth_to_metres_scale(depth, 100.0, 64, 64, camera_height=3.0) == pytest.approx(100.0 / FX_A)


def test_the_node_scales_depth_by_its_camera_height_parameter(height_chain, tmp_path) -> None:
    rng = np.random.default_rng(4)
    rgb = np.kron(rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    raw = _network_depth(height_chain, rgb)
    positive = raw > 0
    assert 0.1 < positive.mean()
    params = _params_file(tmp_path, height_chain, backend="torch", trust_model_code=True,
                          input_qos="reliable", threads=1, depth_sky="keep",
                          depth_range_limits=False, camera_height=3.0)
    proc = _start(params)
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        for attempt in range(50):  # fx 100 from camera_info, height 3.0 m from the parameter
            stamp = (1, attempt)
            client.pub_info.publish(_camera_info(100.0))
            client.pub_image.publish(client.image(rgb, "rgb8", stamp))
            assert client.wait(lambda: all(_stamped(client.got[k], stamp) for k in ("depth", "camera_info")))
            if _stamped(client.got["camera_info"], stamp)[0].k[0] == 100.0:
                break
        else:
            raise AssertionError("the node never used the camera_info with fx 100")
        (msg,) = _stamped(client.got["depth"], stamp)
        depth = _image_array(msg)
        scale = (100.0 / FX_A) * (3.0 / H_A)  # 3.0: a focal-only chain would publish 2.0
        np.testing.assert_allclose(depth[positive], raw[positive] * scale, rtol=1e-5, atol=1e-5 * scale)
        assert np.isnan(depth[~positive]).all()
    finally:
        print(_stop(proc, client))


def test_height_normalisation_needs_focal_normalisation_and_a_camera_height(tmp_path) -> None:
    from atdt_train.config import ConfigError, load_experiment
    from atdt_train.stages import resolve_depth_ref

    with pytest.raises(ConfigError, match="needs depth.focal_normalised: true"):
        load_experiment(_experiment(tmp_path / "a", {"height_normalised": True}))
    no_height = _experiment(tmp_path / "b", {"focal_normalised": True, "height_normalised": True})
    with pytest.raises(ConfigError, match=r"domains\.A\.train.*set domains\.A\.camera_height"):
        resolve_depth_ref(load_experiment(no_height))
    given = load_experiment(no_height, ["domains.A.camera_height=2.4", "domains.B.camera_height=1.2"])
    ref = resolve_depth_ref(given)
    assert (ref.focal, ref.height) == (FX_A, 2.4)
    with pytest.raises(ConfigError, match="domains.B.camera_height"):
        load_experiment(no_height, ["domains.B.camera_height=-1"])


def test_depth_scale_of_a_batch_is_f_times_h_over_the_reference() -> None:
    import torch

    from atdt_train.lit import DepthRef, depth_loss, depth_scale, depth_to_metres

    batch = {"focal": torch.tensor([50.0, 100.0]), "camera_height": torch.tensor([2.0, 1.0])}
    assert depth_scale(batch, None) is None
    assert depth_scale(batch, DepthRef(50.0)).tolist() == [1.0, 2.0]
    scale = depth_scale(batch, DepthRef(50.0, 2.0))
    assert scale.tolist() == [1.0, 1.0]  # twice the focal at half the height: the same road image
    assert depth_to_metres(torch.ones(2, 1, 1), depth_scale(batch, DepthRef(25.0, 4.0))).flatten().tolist() == [1.0, 1.0]
    # the target of a 10 m pixel is 10 units where f h equals the reference's, 5 where it is twice
    depth, valid = torch.full((2, 1, 1), 10.0), torch.ones(2, 1, 1, dtype=torch.bool)
    batch["camera_height"] = torch.tensor([2.0, 0.5])
    ref = DepthRef(50.0, 1.0)  # frame 0: f h twice the reference's; frame 1: the same
    assert depth_scale(batch, ref).tolist() == [2.0, 1.0]
    assert depth_loss(torch.tensor([5.0, 10.0]).view(2, 1, 1, 1), depth, valid, depth_scale(batch, ref)) == 0
    batch["camera_height"][1] = float("nan")
    with pytest.raises(ValueError, match="camera_height"):
        depth_scale(batch, ref)
