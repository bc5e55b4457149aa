"""The rclpy side of the replay: publishes camera frames to the node and collects its outputs."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from typing import Any

import numpy as np

from atdt_ros.sanitize import printable
from atdt_ros.interface import (CAMERA_INFO, DEPTH, DIAGNOSTICS, IMAGE, SEMANTIC, input_topic,
                                output_topic)
from atdt_ros.replay.common import ReplayError, log, stamp_ns


class NodeLink:
    """rclpy side of the replay: publishes camera frames, collects the node's outputs."""

    def __init__(self, namespace: str, node_name: str, mode: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image

        from atdt_ros.ros_messages import qos_profile

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("atdt_replay", context=self.context)
        self.Image, self.CameraInfo = Image, CameraInfo
        # accuracy: every frame delivered; real time: what a camera driver offers (sensor data, depth 5)
        pub_qos = qos_profile("reliable", 10) if mode == "accuracy" else qos_profile("sensor_data", 5)
        self.image_topic = input_topic(namespace, IMAGE)
        self.info_topic = input_topic(namespace, CAMERA_INFO)
        self.depth_topic = output_topic(namespace, DEPTH, node_name)
        self.semantic_topic = output_topic(namespace, SEMANTIC, node_name)
        self.pub_image = self.node.create_publisher(Image, self.image_topic, pub_qos)
        self.pub_info = self.node.create_publisher(CameraInfo, self.info_topic, pub_qos)
        self.outputs: queue.Queue = queue.Queue()
        self.subs: list[Any] = []
        self.node_fqn = input_topic(namespace, node_name)
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0  # perf_counter of the last one
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, name="replay_spin", daemon=True)
        self._spin.start()

    def _spin_loop(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # context shut down under us at exit
            pass

    def _callback(self, kind: str):
        dtypes = {"32FC1": np.float32, "mono8": np.uint8}

        def on_output(msg: Any) -> None:
            received = time.perf_counter()
            try:
                dtype = dtypes[msg.encoding]
                flat = np.frombuffer(msg.data, dtype=np.uint8)
                rows = flat.reshape(msg.height, msg.step)[:, : msg.width * np.dtype(dtype).itemsize]
                array = np.ascontiguousarray(rows).view(
                    np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")).astype(dtype)
            except (KeyError, ValueError) as exc:
                log.error("unreadable %s output (%s %dx%d step %d): %s", kind, printable(msg.encoding, 32),
                          msg.width, msg.height, msg.step, printable(exc, 200))
                return
            self.outputs.put((kind, stamp_ns(msg.header.stamp), array, received))

        return on_output

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(self.node_fqn + ":"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["message"] = status.message
                self.diagnostics_at = time.perf_counter()

    def connect(self, timeout: float, node_process: subprocess.Popen | None = None) -> None:
        """Wait for the node's outputs, subscribe to them, and wait until it subscribes the camera."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        deadline = time.monotonic() + timeout
        while min(self.node.count_publishers(self.depth_topic),
                  self.node.count_publishers(self.semantic_topic)) == 0:
            self._check_alive(node_process)
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"no node publishes {self.depth_topic} and {self.semantic_topic} after {timeout:.0f} s "
                    f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); start atdt_perception in "
                    f"namespace '{input_topic(self._namespace_of(), '')}' or pass --model")
            time.sleep(0.05)
        # BEST_AVAILABLE takes the node's reliability; a deep history absorbs bursts
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                         reliability=ReliabilityPolicy.BEST_AVAILABLE)
        self.subs = [
            self.node.create_subscription(self.Image, self.depth_topic, self._callback("depth"), qos),
            self.node.create_subscription(self.Image, self.semantic_topic, self._callback("semantic"), qos),
        ]
        while self.pub_image.get_subscription_count() == 0 or any(s.get_publisher_count() == 0 for s in self.subs):
            self._check_alive(node_process)
            if time.monotonic() > deadline:
                raise ReplayError(f"the node did not subscribe to {self.image_topic} within {timeout:.0f} s")
            time.sleep(0.05)

    def _namespace_of(self) -> str:
        return self.image_topic.rsplit("/", 1)[0]

    @staticmethod
    def _check_alive(process: subprocess.Popen | None) -> None:
        if process is not None and process.poll() is not None:
            raise ReplayError(f"the node exited with status {process.returncode} before answering "
                              f"(see its log)")

    def publish(self, image: Any, info: Any | None) -> float:
        """Publish camera_info (if any) then the image; returns the perf_counter at publish."""
        if info is not None:
            self.pub_info.publish(info)
        t = time.perf_counter()
        self.pub_image.publish(image)
        return t

    def close(self) -> None:
        """Shut this context down."""
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self.rclpy.shutdown(context=self.context)
            self._spin.join(timeout=2.0)
