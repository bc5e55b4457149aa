"""The organised point cloud of a depth image (atdt_ros.pointcloud) against hand-computed points."""

from __future__ import annotations

import numpy as np
import pytest

from atdt_ros.camera import image_matrices
from atdt_ros.pointcloud import POINT_DTYPE, POINT_STEP, PointCloudBuilder

NAN, INF = np.nan, np.inf


def test_points_are_depth_times_the_inverse_intrinsics_and_invalid_depth_is_nan() -> None:
    k = [[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]]   # fx 2, fy 4, cx 1, cy 0.5
    depth = np.array([[1.0, 2.0, NAN], [INF, 4.0, -INF]], np.float32)
    labels = np.array([[0, 7, 255], [10, 3, 1]], np.uint8)
    cloud = PointCloudBuilder()(depth, labels, k)
    assert cloud.shape == (2, 3) and cloud.dtype == POINT_DTYPE and cloud.itemsize == POINT_STEP
    # x = (u - 1) z / 2, y = (v - 0.5) z / 4
    expected = np.array([[(-0.5, -0.125, 1.0), (0.0, -0.25, 2.0), (NAN, NAN, NAN)],
                         [(NAN, NAN, NAN), (0.0, 0.5, 4.0), (NAN, NAN, NAN)]], np.float32)
    got = np.stack([cloud["x"], cloud["y"], cloud["z"]], -1)
    np.testing.assert_array_equal(got, expected)       # NaN where NaN, exact elsewhere
    assert cloud["label"].tolist() == [[0, 7, 255], [10, 3, 1]]


def test_a_binned_roi_camera_uses_the_intrinsics_of_the_image_as_published() -> None:
    # a 1280x960 camera, ROI 640x480 at (320, 240), binned 2x2: a 320x240 image; P's fx 990,
    # cx 630, fy 995, cy 470 become fx 495, cx (630 - 320) / 2 = 155, fy 497.5, cy 115
    k = [1000.0, 0.0, 640.0, 0.0, 1010.0, 480.0, 0.0, 0.0, 1.0]
    p = [990.0, 0.0, 630.0, -99.0, 0.0, 995.0, 470.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    g = image_matrices(k, p, 1280, 960, 2, 2, (320, 240, 640, 480), (240, 320))
    assert g.intrinsics.tolist() == [[495.0, 0.0, 155.0], [0.0, 497.5, 115.0], [0.0, 0.0, 1.0]]
    depth = np.full((240, 320), NAN, np.float32)
    depth[130, 170] = 10.0
    depth[0, 0] = 5.0
    cloud = PointCloudBuilder()(depth, np.zeros((240, 320), np.uint8), g.intrinsics)
    point = cloud[130, 170]
    np.testing.assert_allclose([point["x"], point["y"], point["z"]],
                               [15 * 10 / 495, 15 * 10 / 497.5, 10.0], rtol=1e-6)
    np.testing.assert_allclose([cloud[0, 0]["x"], cloud[0, 0]["y"]],
                               [-155 * 5 / 495, -115 * 5 / 497.5], rtol=1e-6)
    assert np.isnan(cloud["z"]).sum() == 240 * 320 - 2


def test_16uc1_millimetres_are_metres_and_zero_is_no_point() -> None:
    k = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]])
    depth = np.array([[0, 1500], [65535, 2000]], np.uint16)
    cloud = PointCloudBuilder()(depth, np.zeros((2, 2), np.uint8), k)
    np.testing.assert_allclose(cloud["z"], [[NAN, 1.5], [65.535, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(cloud["x"], [[NAN, 0.15], [0.0, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(cloud["y"], [[NAN, 0.0], [6.5535, 0.2]], rtol=1e-6)


def test_buffers_are_reused_until_the_size_or_the_intrinsics_change() -> None:
    build, k = PointCloudBuilder(), np.diag([100.0, 100.0, 1.0])
    labels = np.zeros((4, 6), np.uint8)
    first = build(np.ones((4, 6), np.float32), labels, k)
    again = build(np.full((4, 6), 2.0, np.float32), labels, k)
    assert again is first and float(again["z"][0, 0]) == 2.0
    assert build(np.ones((5, 6), np.float32), np.zeros((5, 6), np.uint8), k) is not first
    other_k = build(np.ones((5, 6), np.float32), np.zeros((5, 6), np.uint8), np.diag([50.0, 50.0, 1.0]))
    assert other_k["x"][0, 5] == np.float32(5 / 50)


@pytest.mark.parametrize("depth, labels, k, message", [
    (np.ones((2, 2), np.float64), np.zeros((2, 2), np.uint8), np.eye(3), "float32 metres or uint16"),
    (np.ones((2, 2), np.float32), np.zeros((2, 3), np.uint8), np.eye(3), "differ in size"),
    (np.ones((2, 2), np.float32), np.zeros((2, 2), np.uint8), np.zeros((3, 3)), "must be positive"),
])
def test_bad_arguments_are_refused_naming_them(depth, labels, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        PointCloudBuilder()(depth, labels, k)
