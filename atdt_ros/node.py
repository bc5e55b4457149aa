"""The ROS 2 perception node ``atdt_perception``: one camera stream in, depth and semantics out.

Both outputs come from one pass of the exported chain (Eq. 4: task 1 = D1(E1(x)), task 2 =
D2(G(E1(x)))). Real-time by default: the subscription callback drops the newest frame into a
one-slot mailbox (a frame replaced before it was processed counts as dropped) and a worker
thread runs inference, so a slow model never builds a backlog. With ``process_all`` every
frame is queued instead (accuracy mode for bag replay). The camera is subscribed only while
some output has a subscriber, and each output is computed only for its subscribers.

This module holds the lifecycle and the per-frame path (callback, inference thread,
diagnostics), which share the node's state; what does not need the node lives beside it:
parameters (:mod:`atdt_ros.parameters`), message builders, QoS and camera_info geometry
(:mod:`atdt_ros.ros_messages`), the mailbox and counters (:mod:`atdt_ros.frames`).

Start it with ``atdt_perception --ros-args --params-file config/perception.yaml`` or with
``ros2 launch atdt_ros perception.launch.py`` on a full ROS 2 install.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.task import Future
from rclpy.time_source import USE_SIM_TIME_NAME
from rclpy.type_description_service import START_TYPE_DESCRIPTION_SERVICE_PARAM
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from atdt_ros.artifact import ArtifactError, load_metadata
from atdt_ros.backends import BackendUnavailable, open_backend, tensorrt_status
from atdt_ros.frames import Counters, InferenceThread, Mailbox
from atdt_ros.imgproc import (
    COMPRESSED_FORMATS,
    InputError,
    Postprocessor,
    Preprocessor,
    decode_compressed,
    image_to_array,
)
from atdt_ros.interface import (  # the interface, defined once
    CAMERA_INFO,
    CLASS_MAP,
    DEPTH,
    DIAGNOSTIC_KEYS,
    DIAGNOSTICS,
    IMAGE,
    LABEL_INFO,
    LOST,
    NODE_NAME,
    OUTPUT_CAMERA_INFO,
    POINTS,
    SEMANTIC,
    SEMANTIC_COLOR,
    STEPS,
    step_key,
)
from atdt_ros.library_output import captured, summary
from atdt_ros.parameters import DEFAULTS, NodeParameters, ParameterError, node_parameters
from atdt_ros.pointcloud import PointCloudBuilder
from atdt_ros.ros_messages import (
    LATCHED,
    cloud_message,
    image_geometry,
    image_message,
    qos_profile,
    scale_camera_info,
)
from atdt_ros.sanitize import MAX_MESSAGE, printable
from atdt_ros.timing import StepTimes
from atdt_ros.transport import (
    ENV as TRANSPORT_ENV,
    LostFrames,
    TransportSettingError,
    describe,
    oversize_warning,
    parse_builtin_transports,
)

GOMP_SPINCOUNT = "50000"
"""How long torch's idle OpenMP threads spin before they sleep (libgomp's unit; about 1 ms
here), set by :func:`main` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is: long enough to
bridge the gaps between a compiled chain's kernels (waking a sleeping thread for each, as with
``OMP_WAIT_POLICY=PASSIVE`` or a spin count of 10000, made the chain about 1.8x slower), short enough not to hold a core through the frame's publishing and
delivery as libgomp's default (300000, about 8 ms after every frame) does (docs/performance.md)."""

RCLPY_PARAMETERS = frozenset({USE_SIM_TIME_NAME, START_TYPE_DESCRIPTION_SERVICE_PARAM})
"""Parameters rclpy declares on every node itself: accepted in a params file, not the node's."""

RECEIVE, WAIT, DECODE, PREPROCESS, INFERENCE, POSTPROCESS, MESSAGES, PUBLISH = (
    STEPS.index(s) for s in ("receive", "wait", "decode", "preprocess", "inference",
                             "postprocess", "messages", "publish"))
"""Indices of the per-frame steps in :data:`atdt_ros.interface.STEPS` (:class:`StepTimes`)."""


class StartupError(RuntimeError):
    """The node cannot start: bad parameters, missing/corrupt model, unavailable backend."""


def one_line(exc: BaseException) -> str:
    """An error message on one line (a library's reason may hold line breaks)."""
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip()


class PerceptionNode(LifecycleNode):
    """Depth (32FC1 metres) and semantics (mono8 + rgb8) from one camera, via the Eq. 4 chain.

    A ROS 2 lifecycle node: ``configure`` loads and verifies the model and opens (builds,
    compiles) the backend on the inference thread, the one thread that ever calls it;
    ``activate`` creates the publishers, the camera subscriptions, the timers and starts that
    thread's frame loop; ``deactivate`` and ``cleanup`` release them again, in that order; ``shutdown`` releases whatever is held. With ``autostart`` (the default) the node
    walks itself to active, so a plain start behaves like a plain node.
    """

    def __init__(self, **kwargs: Any) -> None:
        # every override becomes a declared parameter, so unknown names are seen (and refused)
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **kwargs)
        self.p = self._read_parameters()
        self.build_only = self.p.build_only
        self.metadata = self.backend = None
        self._inference: InferenceThread | None = None  # every backend call runs on it
        self.startup_error: StartupError | None = None
        self._running = False
        self._active: list[Any] = []  # publishers, subscriptions and timers made by activate
        self.sub_image = None
        self._no_vision_msgs = False  # vision_msgs failed to import (said once)
        self._no_message_lost = False  # the rmw cannot report lost messages (said once)
        self.transport = None  # FASTDDS_BUILTIN_TRANSPORTS read, stated at the first activation
        self._transport_stated = False
        self.finished = Future()  # done once the node reaches Finalized

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.metadata = self._load_model()
            # opened (compiled) on the thread that will infer: one OpenMP pool (frames.py)
            self._inference = InferenceThread()
            self.backend = self._inference.call(self._open_backend)
        except StartupError as exc:
            self.startup_error = exc
            if not self.p.autostart:  # with autostart, main reports it once and exits 2
                self.get_logger().error(f"configure failed: {one_line(exc)}")
            self.metadata = self.backend = None
            self._end_inference()
            return TransitionCallbackReturn.FAILURE
        self.startup_error = None
        inp = self.metadata.input
        self.pre = Preprocessor(inp.height, inp.width, inp.mean, inp.std)
        self.post = Postprocessor(self.metadata.depth, self.metadata.classes.ids,
                                  self.metadata.classes.unlabeled_id, inp.width)
        self.get_logger().info(
            f"configured: model {self.p.model_path} ({self.metadata.direction}, input "
            f"{inp.width}x{inp.height}), backend {self.backend.name} "
            f"({self.backend.precision}{self._compiled_note()}) on {self.backend.device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        inp = self.metadata.input
        self.counters = Counters()
        self.steps = StepTimes(STEPS, window=200)  # where each frame's time goes
        self._lock = threading.Lock()
        self._camera_info: CameraInfo | None = None
        self._encoding: str | None = None  # of the last raw image (sizes of camera_info frames)
        self._oversize_said: set[tuple[int, int, str | None]] = set()
        self.lost = LostFrames()
        if not self._transport_stated:  # after configure: a failed start stays one line
            self.transport, self._transport_stated = self._state_transport(), True
        self._window_start = time.monotonic()

        self.input_qos = qos_profile(self.p.input_qos, self.p.input_depth)
        out_qos = qos_profile(self.p.output_qos, self.p.output_depth)
        self.pub_depth = self.create_publisher(Image, f"~/{DEPTH}", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, f"~/{OUTPUT_CAMERA_INFO}", out_qos)
        self.pub_semantic = self.create_publisher(Image, f"~/{SEMANTIC}", out_qos)
        self.pub_color = self.create_publisher(Image, f"~/{SEMANTIC_COLOR}", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, f"~/{POINTS}", out_qos) \
            if self.p.publish_pointcloud else None
        self.cloud = PointCloudBuilder()
        self.pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self._publish_class_map()
        self.pub_label_info = self._publish_label_info()

        self.mailbox = Mailbox(keep_all=self.p.process_all)
        self.sub_image = None
        self.sub_info = self.create_subscription(CameraInfo, CAMERA_INFO, self._on_camera_info,
                                                 self.input_qos)
        self._active = [self.pub_depth, self.pub_info, self.pub_semantic, self.pub_color,
                        self.pub_diag, self.pub_class_map, self.sub_info,
                        *([self.pub_label_info] if self.pub_label_info else []),
                        *([self.pub_points] if self.pub_points else []),
                        self.create_timer(0.2, self._update_subscription),
                        self.create_timer(self.p.diagnostics_period,
                                          self._publish_diagnostics)]
        self._running = True
        self._inference.start(self._work)
        self._update_subscription()
        self.get_logger().info(
            f"ready: model {self.p.model_path} ({self.metadata.direction}, input "
            f"{inp.width}x{inp.height}), backend {self.backend.name} "
            f"({self.backend.precision}{self._compiled_note()}) "
            f"on {self.backend.device}; "
            f"{'processing every frame' if self.p.process_all else 'newest frame only'}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._release_active()
        self.get_logger().info("deactivated: camera unsubscribed, outputs withdrawn")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.metadata = self.backend = None
        self._end_inference()
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release_active()
        self.metadata = self.backend = None
        self._end_inference()
        if not self.finished.done():
            self.finished.set_result(True)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._release_active()
        return TransitionCallbackReturn.SUCCESS

    def _release_active(self) -> None:
        """Stop the frame loop and destroy what activate made."""
        self.shutdown()
        if self.sub_image is not None:
            self.destroy_subscription(self.sub_image)
            self.sub_image = None
        for entity in self._active:
            if hasattr(entity, "cancel"):
                self.destroy_timer(entity)
            elif hasattr(entity, "publish"):
                self.destroy_publisher(entity)
            else:
                self.destroy_subscription(entity)
        self._active = []

    # ---- start-up -------------------------------------------------------------------------
    def _compiled_note(self) -> str:
        if not self.backend.compiled:
            return ""
        return f", torch.compile took {self.backend.compile_seconds:.1f} s"

    def _state_transport(self):
        """Parse FASTDDS_BUILTIN_TRANSPORTS and say in one line what it sets for large messages
        (None, with a warning, when the value cannot be read)."""
        try:
            transport = parse_builtin_transports(os.environ.get(TRANSPORT_ENV))
        except TransportSettingError as exc:
            self.get_logger().warning(f"{exc}; transport settings not stated, frame sizes not "
                                      f"checked")
            return None
        self.get_logger().info(describe(transport))
        return transport

    def _read_parameters(self) -> NodeParameters:
        """Every parameter declared with its default (rclpy has declared the params file's and
        ``-p`` ones from the overrides), then all of them checked as one NodeParameters."""
        for name, default in DEFAULTS.items():
            if not self.has_parameter(name):
                self.declare_parameter(name, default)
        values = {name: parameter.value
                  for name, parameter in self.get_parameters_by_prefix("").items()
                  if name not in RCLPY_PARAMETERS}
        try:
            return node_parameters(values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None

    def _load_model(self):
        from atdt_ros import classmap

        try:
            metadata = load_metadata(self.p.model_path)
        except ArtifactError as exc:
            raise StartupError(f"cannot load model: {exc}") from exc
        cls = metadata.classes
        ours = (tuple(c.id for c in classmap.CLASSES), tuple(c.name for c in classmap.CLASSES),
                tuple(c.color for c in classmap.CLASSES), classmap.UNLABELED)
        if (cls.ids, cls.names, cls.colors, cls.unlabeled_id) != ours:
            raise StartupError(f"incompatible model {self.p.model_path}: its class map "
                               f"({len(cls.ids)} classes: {', '.join(cls.names)}) differs from "
                               f"this node's atdt_ros.classmap ({', '.join(ours[1])})")
        return metadata

    def _open_backend(self):
        name = self.p.backend
        try:
            backend = open_backend(self.p.model_path, name, self.p.device,
                                   self.p.threads, self.p.precision,
                                   build_only=self.p.build_only, metadata=self.metadata,
                                   compile=self.p.compile,
                                   trust_model_code=self.p.trust_model_code)
        except (BackendUnavailable, ArtifactError) as exc:
            raise StartupError(f"backend {name}: {exc}") from exc
        if name == "auto":
            why = "" if backend.name == "tensorrt" else f"; tensorrt: {tensorrt_status()[1]}"
            self.get_logger().info(f"backend auto chose {backend.name} on {backend.device}{why}")
        self._check_on_blank_frame(backend)
        return backend

    def _check_on_blank_frame(self, backend: Any) -> None:
        """Run the chain once on a blank frame of metadata.json's input size: a size (or model)
        that does not fit stops the node here, not as a rejection of every camera frame."""
        inp = self.metadata.input
        where = f"{self.p.model_path}/metadata.json"
        try:  # what the library prints on the way is folded into the one message
            with captured("torch.export") as held:
                out = backend.infer(np.zeros((1, 3, inp.height, inp.width), np.float32))
        except Exception as exc:
            raise StartupError(
                f"the model does not run on a blank {inp.width}x{inp.height} frame, the input "
                f"size {where} gives: {printable(summary(exc, held), 400)}") from exc
        want = {"depth": (1, 1, inp.height, inp.width), "semantic": (1, inp.height, inp.width)}
        got = {k: tuple(np.shape(out.get(k))) for k in want}
        if got != want:
            raise StartupError(f"the model's outputs on a {inp.width}x{inp.height} frame have "
                               f"shapes {got}, not {want} as {where} declares")

    def _chain_classes(self) -> list[Any]:
        """The chain's class map (metadata.json) as SemanticClass entries."""
        from atdt_ros.classmap import SemanticClass

        cls = self.metadata.classes
        return [SemanticClass(i, n, tuple(c)) for i, n, c in zip(cls.ids, cls.names, cls.colors)]

    def _publish_class_map(self) -> None:
        from atdt_ros.classmap_msg import classmap_message

        msg = classmap_message(stamp=self.get_clock().now().to_msg(),
                               unlabeled=self.metadata.classes.unlabeled_id,
                               classes=self._chain_classes())
        self.pub_class_map = self.create_publisher(type(msg), f"~/{CLASS_MAP}", LATCHED)
        self.pub_class_map.publish(msg)

    def _publish_label_info(self) -> Any | None:
        """The chain's class map as the standard vision_msgs/LabelInfo on ~/label_info, latched
        (the colours stay on ~/class_map). Without vision_msgs: logged once, None."""
        from atdt_ros.classmap_msg import label_info_message

        if self._no_vision_msgs:  # said at the first activation
            return None
        try:
            msg = label_info_message(stamp=self.get_clock().now().to_msg(),
                                     unlabeled=self.metadata.classes.unlabeled_id,
                                     classes=self._chain_classes())
        except ImportError as exc:
            self._no_vision_msgs = True
            self.get_logger().warning(f"~/{LABEL_INFO} is not published: {exc}; the class map is "
                                      f"on ~/{CLASS_MAP} (atdt_msgs/ClassMap) only")
            return None
        publisher = self.create_publisher(type(msg), f"~/{LABEL_INFO}", LATCHED)
        publisher.publish(msg)
        return publisher

    # ---- subscriptions --------------------------------------------------------------------
    def _wanted(self) -> tuple[bool, bool, bool, bool]:
        """Which outputs (depth, semantic, colour, points) are enabled and have subscribers."""
        depth = self.p.publish_depth and (self.pub_depth.get_subscription_count() > 0
                                             or self.pub_info.get_subscription_count() > 0)
        semantic = self.p.publish_semantic and self.pub_semantic.get_subscription_count() > 0
        color = self.p.publish_semantic_color and self.pub_color.get_subscription_count() > 0
        points = self.pub_points is not None and self.pub_points.get_subscription_count() > 0
        return bool(depth), bool(semantic), bool(color), bool(points)

    def _update_subscription(self) -> None:
        """Subscribe to the camera only while some output has a subscriber."""
        active = any(self._wanted())
        if active and self.sub_image is None:
            if self.p.image_transport == "compressed":  # image_transport's convention
                kind, topic = CompressedImage, f"{IMAGE}/compressed"
            else:
                kind, topic = Image, IMAGE
            self.sub_image = self._subscribe_counting_losses(kind, topic)
            self.get_logger().info(f"subscribed to {self.sub_image.topic_name}")
        elif not active and self.sub_image is not None:
            self.destroy_subscription(self.sub_image)
            self.sub_image = None
            self.get_logger().info("no subscribers on any output: camera unsubscribed")

    def _subscribe_counting_losses(self, kind: type, topic: str) -> Any:
        """The camera subscription, with the middleware's message_lost event counted (where the
        rmw supports it; otherwise said once and subscribed without it)."""
        if not self._no_message_lost:
            try:
                return self.create_subscription(
                    kind, topic, self._on_image, self.input_qos,
                    event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_lost))
            except UnsupportedEventTypeError as exc:
                self._no_message_lost = True
                self.get_logger().warning(f"lost frames on {topic} cannot be counted: "
                                          f"{rclpy.get_rmw_implementation_identifier()} does not "
                                          f"report message_lost ({one_line(exc)})")
        return self.create_subscription(kind, topic, self._on_image, self.input_qos)

    def _on_lost(self, info: Any) -> None:
        """message_lost: frames the transport dropped before they reached the node."""
        change = int(info.total_count_change)
        with self._lock:
            self.lost.add(change)
            warning = self.lost.warning(self.sub_image.topic_name if self.sub_image else IMAGE,
                                        change)
        self.get_logger().warning(warning, throttle_duration_sec=self.p.error_throttle)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg
        if self.transport is None or self.p.image_transport != "raw" \
                or not (msg.width and msg.height):
            return
        size = image_geometry(msg)
        key = (size.width, size.height, self._encoding)
        if key in self._oversize_said:
            return
        self._oversize_said.add(key)
        warning = oversize_warning(self.sub_info.topic_name, size.width, size.height,
                                   self._encoding, self.transport)
        if warning is not None:
            self.get_logger().warning(warning)

    def _on_image(self, msg: Image) -> None:
        arrived = time.perf_counter_ns()
        with self._lock:
            self.counters.received += 1
            self.counters.window_received += 1
        try:
            if isinstance(msg, CompressedImage):  # decoded by the worker; format checked here
                if not msg.data:
                    raise InputError("empty compressed image")
                if not any(k in msg.format.lower() for k in COMPRESSED_FORMATS):
                    raise InputError(f"unsupported compressed format "
                                     f"'{printable(msg.format, 40)}' (accepted: jpeg, png)")
            else:
                self._encoding = msg.encoding
                image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except InputError as exc:
            self._reject(msg, str(exc))
            return
        if self.mailbox.put((msg, arrived, time.perf_counter_ns())):
            with self._lock:
                self.counters.dropped += 1

    def _reject(self, msg: Image, why: str) -> None:
        # text from the message (encoding, frame_id) is escaped and capped before it is echoed
        why = printable(why, MAX_MESSAGE)
        with self._lock:
            self.counters.rejected += 1
            self.counters.window_rejected += 1
            self.counters.last_rejection = why
        self.get_logger().error(
            f"rejected image on {self.sub_image.topic_name if self.sub_image else 'image'} "
            f"(frame_id '{printable(msg.header.frame_id)}'): {why}",
            throttle_duration_sec=self.p.error_throttle)

    # ---- inference --------------------------------------------------------------------------
    def _work(self) -> None:
        while self._running:
            item = self.mailbox.get(timeout=0.5)
            if item is None:
                continue
            msg, arrived, queued = item
            try:
                self._process(msg, arrived, queued)
            except InputError as exc:
                self._reject(msg, str(exc))
            except Exception as exc:  # keep serving; the message says what failed
                self._reject(msg, f"processing failed: {type(exc).__name__}: {exc}")

    def _process(self, msg: Image, arrived: int, queued: int) -> None:
        """One frame: outputs computed, built and published; each step timed (``arrived`` and
        ``queued``: perf_counter_ns at the callback's start and at its hand-over)."""
        steps = self.steps
        steps.start(at_ns=arrived)
        steps.lap(RECEIVE, now_ns=queued)
        steps.lap(WAIT)
        want_depth, want_semantic, want_color, want_points = self._wanted()
        info = self._camera_info
        calibrated = info is not None and (info.p[0] > 0 or info.k[0] > 0)
        if want_points and not calibrated:  # no intrinsics, no points
            self.get_logger().warning(f"~/{POINTS} has subscribers but no calibrated "
                                      f"{self.sub_info.topic_name} has arrived: no point cloud "
                                      f"until one does", once=True)
            want_points = False
        if not (want_depth or want_semantic or want_color or want_points):
            return
        if isinstance(msg, CompressedImage):
            pixels, encoding = decode_compressed(msg.format, msg.data), "bgr8"
        else:
            pixels = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data)
            encoding = msg.encoding
        steps.lap(DECODE)
        batch = self.pre(pixels, encoding)
        steps.lap(PREPROCESS)
        out = self.backend.infer(batch)
        steps.lap(INFERENCE)
        height, width = pixels.shape[:2]
        # every output message is built before the first is published: once a subscriber starts
        # receiving, its threads compete with this one for the CPU
        ready = []
        labels = None
        if want_depth or want_points:
            geometry = image_geometry(info, height, width) if calibrated else None  # P, binning, ROI
            focal = geometry.focal_x if geometry is not None else None
            depth = self.post.depth_metres(out["depth"], height, width, focal, self.p.camera_height or None)
            if self.p.depth_sky != "keep" or want_points:  # sky mask, cloud labels
                labels = self.post.semantic_ids(out["semantic"], height, width)
            depth_encoding = self.p.depth_encoding
            depth = self.post.depth_output(depth, labels, self.p.depth_sky,
                                           self.p.depth_range_limits, depth_encoding)
            steps.lap(POSTPROCESS)
            if want_depth:
                ready.append((self.pub_depth, image_message(msg, depth, depth_encoding)))
                if info is not None:
                    scaled = scale_camera_info(info, height, width)
                    scaled.header = msg.header
                    ready.append((self.pub_info, scaled))
                steps.lap(MESSAGES)
            if want_points:  # from the depth as published (sky, range limits, 16UC1 rounding)
                cloud = self.cloud(depth, labels, geometry.intrinsics)
                steps.lap(POSTPROCESS)
                ready.append((self.pub_points, cloud_message(msg, cloud)))
                steps.lap(MESSAGES)
        if want_semantic or want_color:
            if labels is None:
                labels = self.post.semantic_ids(out["semantic"], height, width)
                steps.lap(POSTPROCESS)
            if want_semantic:
                ready.append((self.pub_semantic, image_message(msg, labels, "mono8")))
                steps.lap(MESSAGES)
            if want_color:
                color = self.post.semantic_color(labels)
                steps.lap(POSTPROCESS)
                ready.append((self.pub_color, image_message(msg, color, "rgb8")))
                steps.lap(MESSAGES)
        for publisher, message in ready:
            publisher.publish(message)
        steps.lap(PUBLISH)
        with self._lock:
            self.counters.processed += 1
            self.counters.window_processed += 1
            steps.commit()


    # ---- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            c = self.counters
            span = max(now - self._window_start, 1e-6)
            in_rate, out_rate = c.window_received / span, c.window_processed / span
            window_rejected = c.window_rejected
            c.window_received = c.window_processed = c.window_rejected = 0
            self._window_start = now
            times = self.steps.breakdown()
            totals = (c.received, c.processed, c.dropped, c.rejected, c.last_rejection)
            lost = self.lost.total
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: inference"
        status.hardware_id = self.backend.device
        if window_rejected:
            status.level = DiagnosticStatus.WARN
            status.message = f"{window_rejected} image(s) rejected: {totals[4]}"
        elif self.sub_image is None:
            status.level = DiagnosticStatus.OK
            status.message = "idle: no subscriber on any output"
        else:
            status.level = DiagnosticStatus.OK
            status.message = "running"
        values = {
            "backend": self.backend.name, "device": self.backend.device,
            "precision": self.backend.precision,
            "compiled": str(self.backend.compiled).lower(),
            "model_hash": self.metadata.model_hash[:16],
            "input_rate_hz": f"{in_rate:.2f}", "processed_rate_hz": f"{out_rate:.2f}",
            "received": str(totals[0]), "processed": str(totals[1]),
            "dropped": str(totals[2]), "rejected": str(totals[3]), LOST: str(lost),
            "latency_p50_ms": f"{times.total_p50_ms:.1f}",
            "latency_p95_ms": f"{times.total_p95_ms:.1f}",
            "latency_max_ms": f"{times.total_max_ms:.1f}",
            **{step_key(step, "mean"): f"{times.mean_ms[step]:.2f}" for step in STEPS},
            **{step_key(step, "p50"): f"{times.p50_ms[step]:.2f}" for step in STEPS},
            "last_rejection": totals[4],
        }
        values = {key: values[key] for key in DIAGNOSTIC_KEYS}  # the interface's order
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        """Stop the inference loop (its thread stays, holding the backend, until cleanup)."""
        if self._running:
            self._running = False
            self.mailbox.close()
            if not self._inference.join(timeout=5.0):
                self.get_logger().warning("the inference thread is still busy 5 s after stop")

    def _end_inference(self) -> None:
        """End the inference thread once its loop has stopped."""
        if self._inference is not None and not self._running:
            self._inference.close()
            self._inference = None


def main(argv: list[str] | None = None) -> int:
    """Console script ``atdt_perception``: run the node until shut down; non-zero on start-up errors."""
    if "OMP_WAIT_POLICY" not in os.environ:  # read when torch loads, at configure
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    try:
        rclpy.init(args=argv if argv is not None else sys.argv)
    except Exception as exc:  # rcl refuses the arguments: a broken params file, a bad remap
        why = str(exc).split(", at /")[0]  # rcl appends its own source locations
        print(f"{NODE_NAME}: cannot start: {printable(why, 400)}", file=sys.stderr, flush=True)
        return 2
    node = None
    try:
        try:
            node = PerceptionNode()
            if node.p.autostart or node.build_only:  # walk itself to active (or configured)
                node.trigger_configure()
                if node.startup_error is not None:
                    raise node.startup_error
                if node.backend is None:
                    raise StartupError("configure failed (the log above says why)")
                if not node.build_only:
                    node.trigger_activate()
        except StartupError as exc:  # one line (stderr, /rosout, the log file), no traceback
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {one_line(exc)}")
            return 2
        if not node.p.autostart and not node.build_only:
            node.get_logger().info("autostart false: unconfigured, waiting for a lifecycle manager")
        if node.build_only:
            where = getattr(node.backend, "engine_path", None)
            node.get_logger().info(
                f"build_only: backend {node.backend.name} ready"
                + (f", engine {where}" if where else " (nothing to build for this backend)"))
            return 0
        try:
            rclpy.spin_until_future_complete(node, node.finished)  # until Finalized or a signal
        except Exception:
            if node.context.ok():
                raise
            # SIGINT/SIGTERM shut the context down while the executor was between waits; rclpy
            # then raises (RCLError: context not valid) instead of ExternalShutdownException
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node._end_inference()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
