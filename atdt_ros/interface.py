"""The node's interface, defined once: its name, topics, parameters' QoS choices, diagnostics keys,
and the bag topics ``atdt_train make-bag`` writes and ``atdt_replay`` reads.

The node (:mod:`atdt_ros.node`), the replay (:mod:`atdt_ros.replay`), the bag writer
(:mod:`atdt_train.bag`) and the tests take these names from here. Plain strings only (no rclpy),
so the training side and tools can import it anywhere.
"""

from __future__ import annotations

NODE_NAME: str = "atdt_perception"

# inputs, relative to the node's namespace (remap them onto a camera's topics)
IMAGE: str = "image"
CAMERA_INFO: str = "camera_info"

# outputs, private to the node (~/NAME)
DEPTH: str = "depth"                    # sensor_msgs/Image 32FC1, metres
OUTPUT_CAMERA_INFO: str = "camera_info"  # sensor_msgs/CameraInfo of ~/depth
SEMANTIC: str = "semantic"              # sensor_msgs/Image mono8 class ids
SEMANTIC_COLOR: str = "semantic_color"  # sensor_msgs/Image rgb8
POINTS: str = "points"                  # sensor_msgs/PointCloud2, organised xyz + label
CLASS_MAP: str = "class_map"            # atdt_msgs/ClassMap, latched
LABEL_INFO: str = "label_info"          # vision_msgs/LabelInfo, latched (where vision_msgs imports)
DIAGNOSTICS: str = "/diagnostics"       # diagnostic_msgs/DiagnosticArray

QOS_CHOICES: tuple[str, ...] = ("sensor_data", "reliable", "best_effort")

LOST: str = "lost"
"""Diagnostics key: camera frames the middleware reported lost (message_lost events)."""

STEPS: tuple[str, ...] = (
    "receive", "wait", "decode", "preprocess", "inference", "postprocess", "messages", "publish",
)
"""The node's per-frame steps, in order (timed by :mod:`atdt_ros.timing`): ``receive`` the
subscription callback (checks, into the mailbox; rclpy's deserialisation before it is not
included), ``wait`` in the mailbox until the inference thread takes the frame, ``decode`` the
pixels viewed (raw) or decompressed, ``preprocess`` resize and normalise into the network's batch,
``inference`` the backend call alone, ``postprocess`` depth and labels at the camera size (sky,
range limits, colours, points), ``messages`` the output messages built (pixels copied in),
``publish`` the publish calls (serialisation into the middleware). Their sum is the latency."""


def step_key(step: str, stat: str) -> str:
    """Diagnostics key of a step's statistic (``mean`` or ``p50``): ``decode_mean_ms``."""
    return f"{step}_{stat}_ms"


STEP_KEYS: tuple[str, ...] = tuple(step_key(s, stat) for s in STEPS for stat in ("mean", "p50"))
"""Diagnostics keys of the per-step times, last 200 frames (``inference_p50_ms`` among them)."""

DIAGNOSTIC_KEYS: tuple[str, ...] = (
    "backend", "device", "precision", "compiled", "model_hash", "input_rate_hz",
    "processed_rate_hz", "received", "processed", "dropped", "rejected", LOST, "latency_p50_ms",
    "latency_p95_ms", "latency_max_ms", *STEP_KEYS, "last_rejection",
)
"""Keys of the node's DiagnosticStatus values, in the order it publishes them."""

# bag topics (atdt_train make-bag writes them; atdt_replay reads them by default)
BAG_IMAGE: str = "/camera/image_raw"
BAG_CAMERA_INFO: str = "/camera/camera_info"
BAG_DEPTH: str = "/ground_truth/depth"
BAG_SEMANTIC: str = "/ground_truth/semantic"


def output_topic(namespace: str, leaf: str, node_name: str = NODE_NAME) -> str:
    """Full name of the node's output ``leaf`` (``/ns/atdt_perception/depth``)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{node_name}/{leaf}"


def input_topic(namespace: str, leaf: str) -> str:
    """Full name of the node's input ``leaf`` (``/ns/image``)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{leaf}"
