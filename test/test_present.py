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


def test_numbers_percentages_and_differences_have_one_format_and_one_missing_mark() -> None:
    from atdt_ros.present import MISSING, depth_header, depth_value, number, percent, signed

    assert (number(0.12345), number(0.12345, 2, 100), percent(0.5549), percent(0.5549, 2)) == \
        ("0.123", "12.35", "55.5", "55.49")
    assert (signed(1.25, 1), signed(-0.0344, 3), signed(0.5, 1, 100)) == ("+1.2", "-0.034", "+50.0")
    for absent in (None, float("nan"), float("inf"), -float("inf")):
        assert number(absent) == percent(absent) == signed(absent, 1) == MISSING == "–"
    assert (depth_value("delta1", 0.9123), depth_value("abs_rel", 0.0876)) == ("91.2", "0.088")
    assert (depth_header("abs_rel"), depth_header("delta2")) == ("Abs Rel ↓", "δ<1.25² ↑")


def test_the_figure_grid_writes_one_png_with_a_panel_per_cell(tmp_path) -> None:
    import cv2
    import pytest

    from atdt_ros.present import save_grid

    red = np.zeros((20, 40, 3), np.uint8)
    red[..., 0] = 255
    rows = [(red, red, red), (red, red, red)]
    path = save_grid(rows, ("a", "b", "c"), tmp_path / "sub" / "grid.png", row_labels=["one", "two"])
    png = cv2.imread(str(path))
    assert path == tmp_path / "sub" / "grid.png" and sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]
    assert png.shape[1] > png.shape[0]  # three 2:1 panels side by side, two rows: wider than tall
    assert ((png[..., 2] > 200) & (png[..., 1] < 50)).mean() > 0.3  # the red panels fill the figure
    with pytest.raises(ValueError, match=r"every row needs 3 panels \(a, b, c\), got \[3, 2\]"):
        save_grid([(red, red, red), (red, red)], ("a", "b", "c"), tmp_path / "bad.png")
