"""Invalid depth in ~/depth (REP 117 / 118): sky -> +Inf, beyond the chain's range -> +Inf,
below it -> -Inf, NaN = no reading, and the 16UC1 millimetre encoding (0 = no depth).

Hand-made arrays with known outputs, the parameter checks, and one node run over real DDS
(conftest: shared memory only, a random domain) with only ~/depth subscribed.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from atdt_ros.artifact import DepthSpec
from atdt_ros.classmap import UNLABELED
from atdt_ros.imgproc import SKY_ID, Postprocessor, array_to_image_fields, depth_to_publish

INF, NAN = np.inf, np.nan
RANGE = (0.5, 80.0)
# row 0: in range, beyond max, below min, no reading; row 1: at max, at min, in range twice
DEPTH = np.array([[2.0, 100.0, 0.2, NAN],
                  [80.0, 0.5, 30.0, 45.0]], np.float32)
LABELS = np.array([[0, 9, 4, 10],
                   [7, 1, 10, 6]], np.uint8)  # two sky pixels: (0, 3) no reading, (1, 2) 30 m


def test_defaults_sky_and_range_give_rep117_infinities() -> None:
    got = depth_to_publish(DEPTH, LABELS, RANGE)
    np.testing.assert_array_equal(got, [[2.0, INF, -INF, INF],
                                        [80.0, 0.5, INF, 45.0]])
    assert got.dtype == np.float32
    assert np.isnan(DEPTH[0, 3]) and DEPTH[0, 1] == 100.0  # the input is not modified


def test_sky_nan_keep_and_no_labels() -> None:
    nan_sky = depth_to_publish(DEPTH, LABELS, RANGE, sky="nan")
    np.testing.assert_array_equal(nan_sky, [[2.0, INF, -INF, NAN], [80.0, 0.5, NAN, 45.0]])
    kept = depth_to_publish(DEPTH, LABELS, RANGE, sky="keep")
    np.testing.assert_array_equal(kept, [[2.0, INF, -INF, NAN], [80.0, 0.5, 30.0, 45.0]])
    no_labels = depth_to_publish(DEPTH, None, RANGE)
    np.testing.assert_array_equal(no_labels, kept)


def test_range_limits_off_leaves_predictions_and_sky_still_applies() -> None:
    got = depth_to_publish(DEPTH, LABELS, RANGE, range_limits=False)
    np.testing.assert_array_equal(got, np.array([[2.0, 100.0, 0.2, INF], [80.0, 0.5, INF, 45.0]],
                                                np.float32))
    plain = depth_to_publish(DEPTH, LABELS, RANGE, sky="keep", range_limits=False)
    np.testing.assert_array_equal(plain, DEPTH)


def test_16uc1_is_rounded_millimetres_with_zero_for_no_depth() -> None:
    depth = np.array([[1.2344, 1.2346, 0.0004, 70.0, NAN, 3.0],
                      [0.2, 90.0, 5.0, 2.0, 0.0, -1.0]], np.float32)
    labels = np.zeros((2, 6), np.uint8)
    labels[1, 2] = SKY_ID
    got = depth_to_publish(depth, labels, (0.0, 100.0), encoding="16UC1")
    assert got.dtype == np.uint16
    # 0.4 mm rounds to 0 but is a reading: 1; 70 m clips to 65535; NaN, sky, <= 0: 0
    np.testing.assert_array_equal(got, [[1234, 1235, 1, 65535, 0, 3000],
                                        [200, 65535, 0, 2000, 0, 0]])
    limited = depth_to_publish(depth, labels, (0.5, 80.0), encoding="16UC1")
    np.testing.assert_array_equal(limited, [[1234, 1235, 0, 65535, 0, 3000],  # -Inf -> 0
                                            [0, 0, 0, 2000, 0, 0]])           # +Inf -> 0
    h, w, step, data = array_to_image_fields(got, "16UC1")
    assert (h, w, step, len(data)) == (2, 6, 12, 24)
    np.testing.assert_array_equal(np.frombuffer(data, np.uint16).reshape(2, 6), got)


def test_bad_options_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="sky 'zero' is not one of inf, nan, keep"):
        depth_to_publish(DEPTH, LABELS, RANGE, sky="zero")
    with pytest.raises(ValueError, match="encoding 'mono16' is not one of 32FC1, 16UC1"):
        depth_to_publish(DEPTH, LABELS, RANGE, encoding="mono16")
    with pytest.raises(ValueError, match="differ in size"):
        depth_to_publish(DEPTH, LABELS[:, :2], RANGE)


def test_postprocessor_uses_the_metadata_range_in_its_own_buffers() -> None:
    post = Postprocessor(DepthSpec("m", 1.0, 10.0, False, 100.0, 50.0), range(11), UNLABELED, 4)
    depth = post.depth_metres(np.array([[[[0.5, 5.0], [20.0, -1.0]]]], np.float32), 2, 2, None)
    labels = post.semantic_ids(np.array([[[0, 0], [0, SKY_ID]]]), 2, 2)
    got = post.depth_output(depth, labels, "inf", True, "32FC1")
    assert got is post.depth  # in place: no allocation per frame
    np.testing.assert_array_equal(got, [[-INF, 5.0], [INF, INF]])
    depth = post.depth_metres(np.array([[[[0.5, 5.0], [20.0, -1.0]]]], np.float32), 2, 2, None)
    mm = post.depth_output(depth, labels, "nan", False, "16UC1")
    assert mm is post.depth16
    np.testing.assert_array_equal(mm, [[500, 5000], [20000, 0]])


def test_inf_and_nan_read_as_doubles_name_the_choices() -> None:
    from atdt_ros.parameters import depth_sky_name

    assert depth_sky_name(float("inf")) == "inf" and depth_sky_name(float("nan")) == "nan"
    assert depth_sky_name("keep") == "keep" and depth_sky_name(-float("inf")) == "-inf"


@pytest.mark.parametrize("override, message", [
    ({"depth_sky": "zero"}, "parameter depth_sky: expected one of 'inf', 'nan', 'keep', got 'zero'"),
    ({"depth_sky": -float("inf")}, "parameter depth_sky: expected one of 'inf', 'nan', 'keep', got '-inf'"),
    ({"depth_encoding": "mono16"},
     "parameter depth_encoding: expected one of '32FC1', '16UC1', got 'mono16'"),
])
def test_bad_depth_parameters_name_the_parameter_and_the_choices(override, message) -> None:
    from atdt_ros.parameters import ParameterError, node_parameters

    model = {"model_path": "/models/chain"}
    assert node_parameters(model).depth_sky == "inf"  # the defaults pass
    assert node_parameters({**model, "depth_sky": float("nan")}).depth_sky == "nan"  # rcl's double
    with pytest.raises(ParameterError, match=re.escape(message)):
        node_parameters({**model, **override})


def test_node_masks_sky_and_range_with_only_depth_subscribed(tmp_path_factory) -> None:
    """The node's default: sky and out-of-range pixels as +-Inf, although nobody subscribes to
    ~/semantic (the labels are computed for the mask)."""
    import chain_helpers
    from test_node import Client, _expected, _frame, _image_array, _params_file, _start, _stop

    chain = chain_helpers.exported_chain(tmp_path_factory)
    model = Path(shutil.copytree(chain, tmp_path_factory.mktemp("depth") / "model"))
    raw = json.loads((model / "metadata.json").read_text())
    raw["depth"].update(min=10.0, max=30.0)  # a narrow range, so both limits are hit
    (model / "metadata.json").write_text(json.dumps(raw))
    proc = _start(_params_file(model.parent, model, input_qos="reliable", threads=1))
    client = None
    try:
        client = Client()
        for name in ("semantic", "semantic_color"):
            client.node.destroy_subscription(client.subs.pop(name))
        client.wait_for_node_subscription(proc)
        rgb = _frame(1)
        time.sleep(0.5)  # the node sees the semantic subscriptions gone (checked every 0.2 s)
        client.pub_image.publish(client.image(rgb, "rgb8", (60, 0)))
        assert client.wait(lambda: client.got["depth"]), "no depth"
        msg = client.got["depth"][-1]
        assert (msg.encoding, msg.height, msg.width) == ("32FC1", 64, 128)
        assert not client.got["semantic"]
        depth = _image_array(msg)
        exp_depth, exp_labels = _expected(chain, rgb)
        sky = exp_labels == SKY_ID
        assert 0.05 < sky.mean() < 0.95
        assert (np.isposinf(depth) == (sky | (exp_depth > 30.0))).mean() >= 0.999
        near = ~sky & (exp_depth > 0) & (exp_depth < 10.0)
        far = ~sky & (exp_depth > 30.0)
        inside = ~sky & (exp_depth >= 10.05) & (exp_depth <= 29.95)  # clear of the limits
        assert near.any() and far.any() and inside.mean() > 0.1
        assert (depth[near] == -INF).mean() >= 0.999 and (depth[far] == INF).mean() >= 0.999
        assert np.isnan(depth[~sky & ~(exp_depth > 0)]).mean() >= 0.999
        tol = raw["parity_tolerance"]["depth_max_abs"]
        ok = np.isfinite(depth) & inside
        assert ok.sum() >= 0.999 * inside.sum()
        np.testing.assert_allclose(depth[ok], exp_depth[ok], rtol=0, atol=tol)
    finally:
        print(_stop(proc, client))
