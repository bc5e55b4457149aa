"""The node's parameters (atdt_ros.parameters) without ROS: the values rclpy would hand out,
checked by atdt_ros.schema; known values in, known NodeParameters or messages out."""

from __future__ import annotations

import re

import pytest

from atdt_ros.parameters import DEFAULTS, NodeParameters, ParameterError, node_parameters

MODEL = {"model_path": "/models/chain"}


def test_the_defaults_with_a_model_are_the_dataclass_defaults() -> None:
    p = node_parameters(MODEL)
    assert p == NodeParameters(model_path="/models/chain")
    assert list(DEFAULTS) == [f for f in NodeParameters.__dataclass_fields__]
    assert p.depth_sky == "inf"


def test_an_int_is_taken_for_a_float_and_a_float_is_not_taken_for_an_int() -> None:
    p = node_parameters({**MODEL, "diagnostics_period": 1, "error_throttle": 0})
    assert p.diagnostics_period == 1.0 and type(p.diagnostics_period) is float
    assert p.error_throttle == 0.0 and type(p.error_throttle) is float
    with pytest.raises(ParameterError, match=re.escape("parameter input_depth: expected int, got float 2.5")):
        node_parameters({**MODEL, "input_depth": 2.5})


@pytest.mark.parametrize("override, message", [
    ({"backend": "cuda"}, "parameter backend: expected one of 'auto', 'tensorrt', 'onnxruntime', 'torch', got 'cuda'"),
    ({"precision": "int8"}, "parameter precision: expected one of 'fp32', 'fp16', 'bf16', got 'int8'"),
    ({"image_transport": "theora"}, "parameter image_transport: expected one of 'raw', 'compressed', got 'theora'"),
    ({"input_qos": "fast"}, "parameter input_qos: expected one of 'sensor_data', 'reliable', 'best_effort', got 'fast'"),
    ({"threads": -1}, "parameter threads: -1 must be >= 0"),
    ({"output_depth": 0}, "parameter output_depth: 0 is outside 1..10000"),
    ({"diagnostics_period": 7200}, "parameter diagnostics_period: 7200.0 s is outside 0.01..3600 s"),
    ({"device": "cuda:x"}, "parameter device: 'cuda:x' is not one of cpu, cuda, cuda:N"),
    ({"autostart": 1}, "parameter autostart: expected bool (true/false), got int 1"),
    ({"model_path": ""}, "parameter model_path is empty"),
    ({"publish_depth": False, "publish_semantic": False, "publish_semantic_color": False,
      "publish_pointcloud": False}, "are all false: nothing to publish"),
    ({"input_qos_typo": "reliable"}, "parameter input_qos_typo: unknown key; accepted keys: model_path, backend,"),
])
def test_bad_values_name_the_parameter_the_value_and_what_is_accepted(override, message) -> None:
    with pytest.raises(ParameterError, match=re.escape(message)):
        node_parameters({**MODEL, **override})


def test_a_long_value_is_escaped_and_capped_in_the_message() -> None:
    with pytest.raises(ParameterError) as caught:
        node_parameters({**MODEL, "depth_encoding": "\x1b[31m" + "x" * 100_000})
    text = str(caught.value)
    assert text.startswith("parameter depth_encoding: expected one of '32FC1', '16UC1', got ")
    assert len(text) < 1000 and "\x1b" not in text and "chars)" in text
