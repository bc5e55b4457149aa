"""atdt_ros: the vehicle side of AT/DT.

The exported E1 -> (D1, G -> D2) chain format, inference backends, image pre/post-processing,
the one metrics module and the ROS 2 perception node. Imports neither Lightning, MuJoCo nor any
training code; rclpy only in :mod:`atdt_ros.node` (and the replay tool).
"""

__version__ = "0.1.0"

from atdt_ros import privacy as _privacy

# before any library loads: ONNX Runtime reads its telemetry switch once, at initialisation
_privacy.disable_telemetry()
# before torch can default them to the shared /tmp: compiler caches in ~/.cache/atdt
_privacy.point_compiler_caches()
