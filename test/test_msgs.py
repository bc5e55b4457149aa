"""atdt_msgs/ClassMap: built from the class map, and received latched by a late joiner in
another process over real DDS (shared memory, the random domain of conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from atdt_ros.classmap import CLASSES, UNLABELED, SemanticClass
from atdt_ros.classmap_msg import classes_from_message, classmap_message

TOPIC = "/atdt_test/class_map"

PUBLISHER = textwrap.dedent(f"""
    import sys
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from atdt_ros.classmap_msg import classmap_message

    rclpy.init()
    node = rclpy.create_node("class_map_publisher")
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(classmap_message().__class__, "{TOPIC}", qos)
    pub.publish(classmap_message(frame_id="camera_optical", stamp=Time(sec=1234, nanosec=5678)))
    print("PUBLISHED", flush=True)
    # Stay alive (the latched sample lives in this writer) until the test closes stdin.
    sys.stdin.read()
    node.destroy_node()
    rclpy.shutdown()
""")

SUBSCRIBER = textwrap.dedent(f"""
    import json
    import time
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from atdt_msgs.msg import ClassMap

    rclpy.init()
    node = rclpy.create_node("class_map_late_joiner")
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
    received = []
    node.create_subscription(ClassMap, "{TOPIC}", received.append, qos)
    deadline = time.monotonic() + 20.0
    while not received and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    if not received:
        raise SystemExit("no ClassMap received on {TOPIC} within 20 s")
    m = received[0]
    print(json.dumps({{
        "count": len(received),
        "frame_id": m.header.frame_id,
        "stamp": [m.header.stamp.sec, m.header.stamp.nanosec],
        "classes": [[c.id, c.name, [c.r, c.g, c.b]] for c in m.classes],
        "unlabeled_id": m.unlabeled_id,
    }}))
    node.destroy_node()
    rclpy.shutdown()
""")


def test_message_holds_every_class_of_the_class_map() -> None:
    msg = classmap_message(frame_id="cam")
    assert msg.header.frame_id == "cam"
    assert msg.unlabeled_id == 255
    assert [(c.id, c.name, (c.r, c.g, c.b)) for c in msg.classes] == [
        (0, "road", (128, 64, 128)), (1, "sidewalk", (244, 35, 232)), (2, "wall", (102, 102, 156)),
        (3, "fence", (190, 153, 153)), (4, "person", (220, 20, 60)), (5, "pole", (153, 153, 153)),
        (6, "vegetation", (107, 142, 35)), (7, "vehicle", (0, 0, 142)),
        (8, "traffic_sign", (220, 220, 0)), (9, "building", (70, 70, 70)),
        (10, "sky", (70, 130, 180)),
    ]
    assert classes_from_message(msg) == (CLASSES, UNLABELED)


def test_message_round_trips_through_cdr_serialization() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from atdt_msgs.msg import ClassMap

    data = serialize_message(classmap_message(frame_id="cam"))
    assert classes_from_message(deserialize_message(data, ClassMap)) == (CLASSES, UNLABELED)


@pytest.mark.parametrize("classes, unlabeled, match", [
    ((SemanticClass(0, "road", (1, 2, 3)), SemanticClass(0, "wall", (1, 2, 3))), 255,
     "repeats id 0"),
    ((SemanticClass(255, "road", (1, 2, 3)),), 255, "has id 255"),
    ((SemanticClass(3, "road", (1, 2, 300)),), 255, r"colour \(1, 2, 300\)"),
    ((SemanticClass(0, "road", (1, 2, 3)),), 256, "unlabeled id 256"),
])
def test_bad_class_map_is_refused_naming_the_fault(classes, unlabeled, match) -> None:
    with pytest.raises(ValueError, match=match):
        classmap_message(classes=classes, unlabeled=unlabeled)


def test_late_joiner_in_another_process_receives_the_latched_class_map(tmp_path: Path) -> None:
    (tmp_path / "pub.py").write_text(PUBLISHER)
    (tmp_path / "sub.py").write_text(SUBSCRIBER)
    pub = subprocess.Popen([sys.executable, str(tmp_path / "pub.py")], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = pub.stdout.readline()
        if line.strip() != "PUBLISHED":
            pub.kill()
            pytest.fail(f"publisher failed before publishing:\n{pub.stderr.read()}")
        time.sleep(0.5)  # the sample is in the writer's history before the reader exists
        sub = subprocess.run([sys.executable, str(tmp_path / "sub.py")], capture_output=True,
                             text=True, timeout=60)
        assert sub.returncode == 0, f"subscriber failed:\n{sub.stderr}"
    finally:
        pub.stdin.close()
        try:
            pub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pub.kill()
            pub.wait()
    got = json.loads(sub.stdout.strip().splitlines()[-1])
    assert got["count"] == 1
    assert got["frame_id"] == "camera_optical"
    assert got["stamp"] == [1234, 5678]
    assert got["unlabeled_id"] == UNLABELED == 255
    assert got["classes"] == [[c.id, c.name, list(c.color)] for c in CLASSES]
    assert len(got["classes"]) == 11
