"""vision_msgs/LabelInfo on the node's ~/label_info: upstream's definitions (the type hash a real
vision_msgs consumer checks), received latched by a late subscriber over real DDS with the chain's
class map, and the node without vision_msgs (one warning, ClassMap only). Nodes of their own, in
their own module, as in test_node_inputs.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chain_helpers
from test_node import NODE, NS, STARTUP_TIMEOUT, Client, _params_file, _stop

from atdt_ros.classmap import CLASSES, UNLABELED
from atdt_ros.classmap_msg import LABEL_INFO_THRESHOLD, label_info_message

# RIHS01 type hashes of upstream's definitions (ros-perception/vision_msgs 4.1.1, branch ros2,
# commit e77fa2d, vision_msgs/msg/{LabelInfo,VisionClass}.msg), computed with rosbags'
# independent hasher from those files. A vision_msgs consumer on a full ROS 2 install advertises
# these; msg/vision_msgs must keep producing them.
UPSTREAM_HASH = {
    "vision_msgs/msg/LabelInfo":
        "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "vision_msgs/msg/VisionClass":
        "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}
LABEL_INFO_TOPIC = f"{NODE}/label_info"
MISSING = "~/label_info is not published: vision_msgs is not importable"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return chain_helpers.exported_chain(tmp_path_factory)


def _latched():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _start(params: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "atdt_ros.node", "--ros-args", "-r", f"__ns:={NS}",
         "--params-file", str(params)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _receive(client: Client, kind, topic: str, key: str, timeout: float = 30.0) -> list:
    """Subscribe (transient local) now and wait for the latched message."""
    received: list = []
    client.got[key] = received
    client.node.create_subscription(kind, topic, lambda m: client._store(key, m), _latched())
    assert client.wait(lambda: bool(received), timeout), f"nothing received on {topic}"
    return received


def test_the_messages_have_upstreams_fields_and_type_hashes() -> None:
    from vision_msgs.msg import LabelInfo, VisionClass

    assert LabelInfo.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "class_map": "sequence<vision_msgs/VisionClass>",
        "threshold": "float"}
    assert VisionClass.get_fields_and_field_types() == {
        "class_id": "uint16", "class_name": "string"}
    import vision_msgs

    prefix = Path(vision_msgs.__file__).resolve()  # the install prefix holds share/vision_msgs
    while not (prefix / "share" / "vision_msgs").is_dir():
        assert prefix != prefix.parent, "vision_msgs' share/ directory not found"
        prefix = prefix.parent
    for name, want in UPSTREAM_HASH.items():
        description = prefix / "share" / f"{name}.json"
        hashes = json.loads(description.read_text())["type_hashes"]
        assert next(h["hash_string"] for h in hashes if h["type_name"] == name) == want


def test_message_holds_every_class_and_no_threshold() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import LabelInfo

    msg = deserialize_message(serialize_message(label_info_message(frame_id="cam")), LabelInfo)
    assert msg.header.frame_id == "cam"
    assert [(c.class_id, c.class_name) for c in msg.class_map] == \
        [(c.id, c.name) for c in CLASSES]
    assert len(msg.class_map) == 11 and UNLABELED not in [c.class_id for c in msg.class_map]
    assert msg.threshold == LABEL_INFO_THRESHOLD == 0.0


def test_late_subscriber_receives_the_latched_label_info(tmp_path, chain) -> None:
    from vision_msgs.msg import LabelInfo

    proc = _start(_params_file(tmp_path, chain, input_qos="reliable"), os.environ.copy())
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)  # active: LabelInfo was published before this
        time.sleep(0.5)
        joined = time.time()
        msg = _receive(client, LabelInfo, LABEL_INFO_TOPIC, "label_info")[0]
        publishers = client.node.get_publishers_info_by_topic(LABEL_INFO_TOPIC)
    finally:
        out = _stop(proc, client)
    classes = json.loads((chain / "metadata.json").read_text())["classes"]
    assert [(c.class_id, c.class_name) for c in msg.class_map] == \
        list(zip(classes["ids"], classes["names"]))
    assert len(msg.class_map) == 11
    assert msg.threshold == 0.0
    assert msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 < joined  # sent before we joined
    assert [(p.topic_type, str(p.topic_type_hash)) for p in publishers] == \
        [("vision_msgs/msg/LabelInfo", UPSTREAM_HASH["vision_msgs/msg/LabelInfo"])]
    assert MISSING not in out and "Traceback" not in out, out


def test_without_vision_msgs_the_node_says_so_once_and_keeps_the_class_map(tmp_path, chain) -> None:
    from atdt_msgs.msg import ClassMap
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    hidden = tmp_path / "hide"
    (hidden / "vision_msgs").mkdir(parents=True)
    (hidden / "vision_msgs" / "__init__.py").write_text(
        'raise ImportError("hidden by test_label_info.py")\n')
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), env.get("PYTHONPATH")]))
    proc = _start(_params_file(tmp_path, chain, input_qos="reliable"), env)
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        classes = _receive(client, ClassMap, f"{NODE}/class_map", "class_map")[0].classes
        assert [(c.id, c.name) for c in classes] == [(c.id, c.name) for c in CLASSES]
        assert client.node.get_publishers_info_by_topic(LABEL_INFO_TOPIC) == []
        change = client.node.create_client(ChangeState, f"{NODE}/change_state")
        assert change.wait_for_service(timeout_sec=10)
        for tid in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request()
            request.transition.id = tid
            future = change.call_async(request)
            deadline = time.monotonic() + 60
            while not future.done():
                assert time.monotonic() < deadline and proc.poll() is None, "no answer"
                time.sleep(0.02)
            assert future.result().success
        client.wait_for_node_subscription(proc)  # active again
        assert _receive(client, ClassMap, f"{NODE}/class_map", "class_map_again")
        assert client.node.get_publishers_info_by_topic(LABEL_INFO_TOPIC) == []
    finally:
        out = _stop(proc, client)
    assert out.count(MISSING) == 1, out  # once, not at every activation
    assert "hidden by test_label_info.py" in out and "Traceback" not in out, out
