"""The node with ``compile: true`` (torch.compile at start-up) over real DDS, in its own module:
the module-scoped node of test_node.py holds rclpy's context until that module ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

import chain_helpers
from test_node import Client, _expected, _frame, _image_array, _params_file, _start, _stop
from atdt_ros.imgproc import SKY_ID


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return chain_helpers.exported_chain(tmp_path_factory)


def test_compiled_node_publishes_the_chain_outputs(chain, tmp_path) -> None:
    """compile: true compiles at start-up (before subscribing) and serves the same outputs."""
    params = _params_file(tmp_path, chain, backend="torch", compile=True, trust_model_code=True,
                          input_qos="reliable",
                          threads=1, diagnostics_period=0.3, publish_semantic_color=False)
    proc = _start(params)
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        rgb = _frame(3)
        client.pub_image.publish(client.image(rgb, "rgb8", (9, 1)))
        assert client.wait(lambda: client.got["depth"] and client.got["semantic"]
                           and client.got["diag"] and int(client.diagnostics()["processed"]) >= 1)
        exp_depth, exp_labels = _expected(chain, rgb)
        exp_depth[~(exp_depth > 0)] = np.nan
        exp_depth[_image_array(client.got["semantic"][-1]) == SKY_ID] = np.inf  # depth_sky: inf
        tol = json.loads((chain / "metadata.json").read_text())["parity_tolerance"]
        np.testing.assert_allclose(_image_array(client.got["depth"][-1]), exp_depth, rtol=0,
                                   atol=tol["depth_max_abs"], equal_nan=True)
        assert (_image_array(client.got["semantic"][-1]) == exp_labels).mean() >= 0.999
        diag = client.diagnostics()
        assert (diag["backend"], diag["compiled"], diag["precision"]) == ("torch", "true", "fp32")
    finally:
        out = _stop(proc, client)
    assert "backend torch (fp32, torch.compile took " in out
