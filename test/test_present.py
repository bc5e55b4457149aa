"""The one depth colour map (atdt_ros.present), shared by offline and replay reports."""

from __future__ import annotations

import numpy as np

from atdt_ros.present import depth_colormap


def test_depth_colours_run_from_bright_near_to_dark_far_and_no_reading_is_black() -> None:
    depth = np.array([[0.5, 5.0, 80.0, 200.0], [0.0, np.nan, -1.0, 0.1]])
    rgb = depth_colormap(depth, (0.5, 80.0))
    brightness = rgb.astype(int).sum(-1)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert brightness[0, 0] > brightness[0, 1] > brightness[0, 2]  # near bright, far dark
    np.testing.assert_array_equal(rgb[0, 3], rgb[0, 2])           # beyond the range: clipped
    np.testing.assert_array_equal(rgb[1, 3], rgb[0, 0])           # nearer than the range: clipped
    assert (rgb[1, :3] == 0).all()                                # 0, NaN, negative: black
    assert np.isfinite(depth_colormap(depth, (0.0, 100.0)).astype(float)).all()  # 0 m start
