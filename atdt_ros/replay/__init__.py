"""``atdt_replay``: play a rosbag's camera into the running perception node and score its outputs.

The bag (rosbag2, mcap or sqlite3, as written by ``atdt_train make-bag``, or a bare .mcap file
without metadata.yaml, as ``ros2 bag record`` leaves them) is read with ``rosbags``
and its camera topic published over DDS to the node (real rclpy). The node's ``~/depth`` and
``~/semantic`` outputs are matched to the bag's ground truth by header stamp and scored with the
same metrics as offline evaluation (:mod:`atdt_ros.metrics`).

Two modes:

- ``realtime``: frames are published at the rate recorded in the bag. A node that cannot keep up
  drops frames, as it would on a vehicle; dropped = published - answered.
- ``accuracy``: the next frame is published only once both outputs for the previous one arrived
  (a frame lost in transport is sent again), so nothing is dropped and the metrics cover every
  frame: they equal ``atdt_train evaluate`` on the same frames at the same resolution.

Before the measured run one warm-up frame (stamp 0 s + n ns, not counted) is sent until the node
answers: this proves discovery in both directions and keeps the node's first-inference cost out
of the latency figures. Latency is the time from publishing a frame to receiving the last of its
two outputs. A frame the replay itself finds malformed (unsupported encoding, data length not
matching step x height) is still published, so the node's robustness is exercised too, and is
counted as malformed.

Writes ``report.json``, ``report.md``, ``latency.png`` (latency over time, drops marked) and
``qualitative.png`` (RGB | semantic output | GT semantic | depth output | GT depth) into ``--out``.
With ``--model DIR`` the node is started here as a subprocess (``atdt_perception``) and stopped
at the end; its log goes to ``--out/node.log``.

Its parts, one job each: :mod:`.bag` (reading and decoding the bag), :mod:`.link` (the rclpy
side), :mod:`.process` (the node as a subprocess), :mod:`.records`, :mod:`.run` (one replay),
:mod:`.report` (files written) and :mod:`.cli` (the console script).
"""

from atdt_ros.replay.cli import build_parser, main, summary_line
from atdt_ros.replay.common import DEFAULT_TOPICS, MODES, NODE_NAME, ReplayError
from atdt_ros.replay.process import start_node, stop_node
from atdt_ros.replay.run import DEFAULT_DEPTH_RANGE, Replay, ReplayOptions, replay, resolve_depth_range

__all__ = ["DEFAULT_DEPTH_RANGE", "DEFAULT_TOPICS", "MODES", "NODE_NAME", "Replay", "ReplayError",
           "ReplayOptions", "build_parser", "main", "replay", "resolve_depth_range", "start_node",
           "stop_node", "summary_line"]
