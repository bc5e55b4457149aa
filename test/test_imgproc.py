"""Image encodings <-> numpy, validation messages, pre- and post-processing with known values."""

from __future__ import annotations

import numpy as np
import pytest

from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD, DepthSpec, depth_to_metres_scale
from atdt_ros.classmap import UNLABELED, colorize
from atdt_ros.imgproc import (
    InputError, Postprocessor, Preprocessor, array_to_image_fields, image_to_array, normalise,
)

RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # 2x3 image, distinct values


def _padded(pixels: np.ndarray, pad: int) -> tuple[int, bytes]:
    rows = pixels.reshape(pixels.shape[0], -1)
    step = rows.shape[1] + pad
    out = np.full((rows.shape[0], step), 77, np.uint8)  # padding bytes must be ignored
    out[:, :rows.shape[1]] = rows
    return step, out.tobytes()


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full((2, 3), 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((2, 3), 9, np.uint8)])),
    ("mono8", RGB[:, :, 0]),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_every_encoding_decodes_with_and_without_row_padding(encoding, pixels, pad) -> None:
    step, data = _padded(np.ascontiguousarray(pixels), pad)
    arr = image_to_array(encoding, 2, 3, step, data)
    np.testing.assert_array_equal(arr, pixels)


def test_array_to_image_fields_round_trips() -> None:
    h, w, step, data = array_to_image_fields(RGB, "rgb8")
    assert (h, w, step, len(data)) == (2, 3, 9, 18)
    np.testing.assert_array_equal(image_to_array("rgb8", h, w, step, data), RGB)
    depth = np.array([[1.5, np.nan]], np.float32)
    h, w, step, data = array_to_image_fields(depth, "32FC1")
    assert (h, w, step) == (1, 2, 8)
    np.testing.assert_array_equal(np.frombuffer(data, np.float32), [1.5, np.nan])
    with pytest.raises(InputError, match="does not fit encoding mono8"):
        array_to_image_fields(depth, "mono8")


@pytest.mark.parametrize("args, message", [
    (("16UC1", 2, 3, 6, bytes(12)), "unsupported encoding '16UC1' \\(accepted: rgb8, bgr8"),
    (("rgb8", 2, 3, 9, bytes(17)), "data length 17 != step\\*height = 9\\*2 = 18"),
    (("rgb8", 0, 3, 9, b""), "zero-size image 3x0"),
    (("mono8", 2, 0, 0, b""), "zero-size image 0x2"),
    (("rgb8", 2, 3, 8, bytes(16)), "step 8 is smaller than width\\*channels = 3\\*3 = 9"),
])
def test_bad_images_are_rejected_naming_the_problem(args, message) -> None:
    with pytest.raises(InputError, match=message):
        image_to_array(*args)


def test_preprocessing_normalises_rgb_into_the_reused_buffer() -> None:
    pre = Preprocessor(2, 3, IMAGE_MEAN, IMAGE_STD)
    out = pre(RGB[:, :, ::-1], "bgr8")
    expected = (RGB.astype(np.float64) / 255 - IMAGE_MEAN) / IMAGE_STD
    np.testing.assert_allclose(out[0], expected.transpose(2, 0, 1), atol=1e-5)
    assert out is pre(RGB, "rgb8")  # same buffer every frame
    np.testing.assert_allclose(out, normalise(RGB, IMAGE_MEAN, IMAGE_STD)[None], atol=0)
    mono = pre(RGB[:, :, 1], "mono8")[0]
    for c in range(3):
        np.testing.assert_allclose(mono[c], (RGB[:, :, 1] / 255 - IMAGE_MEAN[c]) / IMAGE_STD[c],
                                   atol=1e-5)


def test_preprocessing_resizes_with_the_training_filter() -> None:
    big = np.kron(RGB, np.ones((4, 4, 1), np.uint8))  # each pixel a 4x4 block
    pre = Preprocessor(2, 3, (0, 0, 0), (1 / 255, 1 / 255, 1 / 255))  # identity normalisation
    out = pre(big, "rgb8")
    np.testing.assert_allclose(out[0].transpose(1, 2, 0), RGB, atol=1e-3)  # area: block means
    small = Preprocessor(4, 6, (0, 0, 0), (1 / 255,) * 3)(RGB, "rgb8")
    assert small.shape == (1, 3, 4, 6)


def _post(focal_normalised: bool = False) -> Postprocessor:
    spec = DepthSpec("m", 0.5, 80.0, focal_normalised, focal_ref=100.0, default_focal=50.0)
    return Postprocessor(spec, range(11), UNLABELED, network_width=4)


def test_depth_is_resized_to_input_resolution_in_metres_with_nan_for_no_reading() -> None:
    post = _post()
    out = np.array([[[[2.0, 4.0], [-1.0, 8.0]]]], np.float32)  # (1,1,2,2) network output
    same = post.depth_metres(out, 2, 2, None)
    np.testing.assert_array_equal(same, [[2.0, 4.0], [np.nan, 8.0]])
    big = post.depth_metres(np.full((1, 1, 2, 2), 3.0, np.float32), 4, 6, None)
    assert big.shape == (4, 6) and big.dtype == np.float32
    np.testing.assert_allclose(big, 3.0)


def test_focal_normalised_depth_uses_the_camera_focal_at_network_resolution() -> None:
    spec = DepthSpec("m", 0.5, 80.0, True, focal_ref=100.0, default_focal=50.0)
    # camera 8 px wide with fx 400 -> fx 200 at the 4 px network input: x2
    assert depth_to_metres_scale(spec, 400.0, 8, 4) == pytest.approx(2.0)
    assert depth_to_metres_scale(spec, None, 8, 4) == pytest.approx(0.5)  # default_focal
    post = _post(focal_normalised=True)
    out = post.depth_metres(np.full((1, 1, 2, 4), 10.0, np.float32), 2, 8, 400.0)
    np.testing.assert_allclose(out, 20.0)


def test_semantic_nearest_resize_unlabeled_for_unknown_ids_and_colours() -> None:
    post = _post()
    ids = np.array([[[0, 3], [10, 42]]], np.int64)  # 42 is no class
    labels = post.semantic_ids(ids, 4, 4)
    np.testing.assert_array_equal(labels, [[0, 0, 3, 3], [0, 0, 3, 3],
                                           [10, 10, UNLABELED, UNLABELED],
                                           [10, 10, UNLABELED, UNLABELED]])
    assert labels.dtype == np.uint8
    color = post.semantic_color(labels)
    np.testing.assert_array_equal(color, colorize(labels))
    assert tuple(color[0, 0]) == (128, 64, 128) and tuple(color[3, 3]) == (0, 0, 0)


def test_node_and_training_loader_normalise_bit_identically() -> None:
    from atdt_train.data.dataset import normalize_image

    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    node_input = Preprocessor(5, 7, IMAGE_MEAN, IMAGE_STD)(rgb, "rgb8")[0]
    np.testing.assert_array_equal(node_input, normalize_image(rgb))
