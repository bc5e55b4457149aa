"""The perception node in its own process over real DDS (shared memory, conftest's random domain).

Frames in -> depth, camera_info, semantic and colour out with the input header and values equal
to the exported chain's on the same frame; bad inputs rejected and counted while the node keeps
going; parameters from the YAML file; the latched class map for a late subscriber; start-up
errors with a non-zero exit naming the file or backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import chain_helpers

from atdt_ros.interface import NODE_NAME  # noqa: E402
from atdt_ros.imgproc import SKY_ID  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NS = "/atdt_test"
NODE = f"{NS}/{NODE_NAME}"
STARTUP_TIMEOUT = 120.0  # seconds for the node to import torch and load the chain on a busy CI machine


def _params_file(tmp: Path, model: Path, **overrides) -> Path:
    """The shipped config/perception.yaml with model_path and a few overrides."""
    params = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    p = params["/**/atdt_perception"]["ros__parameters"]
    p.update(model_path=str(model), **overrides)
    path = tmp / "perception.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _start(params: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "atdt_ros.node", "--ros-args", "-r", f"__ns:={NS}",
         "--params-file", str(params), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


class Client:
    """Test-side node: publishes camera frames, records every output."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        rclpy.init()
        self.node = rclpy.create_node("atdt_test_client")
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.got: dict[str, list] = {k: [] for k in
                                     ("depth", "camera_info", "semantic", "semantic_color", "diag")}
        self.cv = threading.Condition()
        self.subs = {}
        for name, kind in (("depth", Image), ("camera_info", CameraInfo), ("semantic", Image),
                           ("semantic_color", Image)):
            self.subs[name] = self.node.create_subscription(
                kind, f"{NODE}/{name}", lambda m, k=name: self._store(k, m), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda m: self._store("diag", m), 10)
        self.pub_image = self.node.create_publisher(Image, f"{NS}/image", reliable)
        self.pub_info = self.node.create_publisher(CameraInfo, f"{NS}/camera_info", reliable)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _store(self, key: str, msg) -> None:
        with self.cv:
            self.got[key].append(msg)
            self.cv.notify_all()

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.2))
        return True

    def wait_for_node_subscription(self, proc: subprocess.Popen | None = None,
                                   timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the node subscribed; fail at once, with its output, if it exited."""
        deadline = time.monotonic() + timeout
        while self.pub_image.get_subscription_count() == 0 or \
                self.pub_info.get_subscription_count() == 0:
            if proc is not None and proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"the node exited with {proc.returncode}:\n{out}")
            assert time.monotonic() < deadline, \
                f"the node never subscribed to the image topic within {timeout:.0f} s"
            time.sleep(0.05)

    def image(self, pixels: np.ndarray, encoding: str, stamp: tuple[int, int],
              frame_id: str = "camera_optical", step: int | None = None, data: bytes | None = None):
        from sensor_msgs.msg import Image

        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = frame_id
        msg.height, msg.width = pixels.shape[:2]
        row = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
        msg.step = step or row
        msg.encoding = encoding
        if data is None:
            padded = np.zeros((msg.height, msg.step), np.uint8)
            padded[:, :row] = pixels.reshape(msg.height, row)
            data = padded.tobytes()
        msg.data = data
        return msg

    def diagnostics(self) -> dict[str, str]:
        with self.cv:
            last = self.got["diag"][-1]
        return {kv.key: kv.value for kv in last.status[0].values}

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown()


def _stop(proc: subprocess.Popen, client: Client | None, timeout: float = 20.0) -> str:
    """Close the test client (if it started) and stop the node; the node's output."""
    if client is not None:
        client.close()
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    return chain_helpers.exported_chain(tmp_path_factory)


@pytest.fixture(scope="module")
def running(chain, tmp_path_factory):
    """The node (backend torch, reliable input, from the YAML file) and a connected client."""
    tmp = tmp_path_factory.mktemp("node")
    params = _params_file(tmp, chain, backend="torch", trust_model_code=True, input_qos="reliable",
                          input_depth=10,
                          threads=1, diagnostics_period=0.3, error_throttle=0.1)
    proc = _start(params)
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        yield proc, client, chain
    finally:
        print(_stop(proc, client))


def _expected(chain: Path, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw depth and uint8 labels of the exported program on one frame."""
    import torch

    from atdt_ros.artifact import IMAGE_MEAN, IMAGE_STD

    x = (rgb.astype(np.float32) / 255.0 - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    module = torch.export.load(str(chain / "chain.pt2")).module()
    with torch.inference_mode():
        depth, semantic = module(x)
    return depth[0, 0].numpy().astype(np.float32), semantic[0].numpy().astype(np.uint8)


def _image_array(msg) -> np.ndarray:
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    channels = {"32FC1": 1, "mono8": 1, "rgb8": 3}[msg.encoding]
    arr = np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, -1)
    arr = arr[:, :msg.width * channels]
    return arr.reshape(msg.height, msg.width, channels) if channels > 1 else arr


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))  # 64x128, the network input size


def test_outputs_equal_the_exported_chain_with_the_input_header(running) -> None:
    from sensor_msgs.msg import CameraInfo

    from atdt_ros.classmap import colorize

    proc, client, chain = running
    rgb = _frame(1)
    info = CameraInfo()
    info.header.frame_id = "camera_optical"
    info.width, info.height = 128, 64
    info.k = [100.0, 0.0, 64.0, 0.0, 100.0, 32.0, 0.0, 0.0, 1.0]
    info.p = [100.0, 0.0, 64.0, 0.0, 0.0, 100.0, 32.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    client.pub_info.publish(info)
    time.sleep(0.3)  # camera_info first, so the depth frame carries it
    client.pub_image.publish(client.image(rgb[:, :, ::-1].copy(), "bgr8", (42, 7)))
    assert client.wait(lambda: all(client.got[k] for k in
                                   ("depth", "camera_info", "semantic", "semantic_color"))), \
        f"outputs missing: { {k: len(v) for k, v in client.got.items()} }"
    depth_msg, sem_msg = client.got["depth"][-1], client.got["semantic"][-1]
    color_msg, info_msg = client.got["semantic_color"][-1], client.got["camera_info"][-1]
    for m in (depth_msg, sem_msg, color_msg, info_msg):
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (42, 7)
        assert m.header.frame_id == "camera_optical"
    assert (depth_msg.encoding, sem_msg.encoding, color_msg.encoding) == ("32FC1", "mono8", "rgb8")
    for m in (depth_msg, sem_msg, color_msg):
        assert (m.height, m.width) == (64, 128)
    assert list(info_msg.k) == list(info.k) and (info_msg.width, info_msg.height) == (128, 64)

    exp_depth, exp_labels = _expected(chain, rgb)
    exp_depth[~(exp_depth > 0)] = np.nan  # REP 118: no reading
    exp_depth[_image_array(sem_msg) == SKY_ID] = np.inf  # depth_sky: inf (REP 117: too far)
    depth = _image_array(depth_msg)
    assert np.isfinite(exp_depth).mean() > 0.5  # the comparison covers real values
    # float rounding only (thread count, normalisation order): the artifact's parity tolerance
    tol = json.loads((chain / "metadata.json").read_text())["parity_tolerance"]
    np.testing.assert_allclose(depth, exp_depth, rtol=0, atol=tol["depth_max_abs"], equal_nan=True)
    labels = _image_array(sem_msg)
    assert (labels == exp_labels).mean() >= 0.999
    np.testing.assert_array_equal(_image_array(color_msg), colorize(labels))


def test_other_resolution_and_padded_rows_come_back_at_input_resolution(running) -> None:
    import cv2

    proc, client, chain = running
    rgb = cv2.resize(_frame(2), (256, 128), interpolation=cv2.INTER_NEAREST)  # 2x the input
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    n = len(client.got["semantic"])
    client.pub_image.publish(client.image(rgba, "rgba8", (43, 0), step=256 * 4 + 12))
    assert client.wait(lambda: len(client.got["semantic"]) > n and
                       len(client.got["depth"]) > n)
    sem, depth = client.got["semantic"][-1], client.got["depth"][-1]
    assert (sem.height, sem.width, depth.height, depth.width) == (128, 256, 128, 256)
    small = cv2.resize(rgb, (128, 64), interpolation=cv2.INTER_AREA)
    exp_depth, exp_labels = _expected(chain, small)
    labels = _image_array(sem)
    assert (labels[::2, ::2] == exp_labels).mean() >= 0.999  # nearest: each 2x2 block
    np.testing.assert_array_equal(labels[::2, ::2], labels[1::2, 1::2])
    exp_full = cv2.resize(exp_depth, (256, 128), interpolation=cv2.INTER_LINEAR)
    got = _image_array(depth)
    both = np.isfinite(got) & (exp_full > 0)
    assert both.mean() > 0.5
    np.testing.assert_allclose(got[both], exp_full[both], rtol=0, atol=1e-3)


def test_bad_inputs_are_rejected_and_counted_and_the_node_keeps_going(running) -> None:
    proc, client, chain = running
    good = _frame(3)
    bad = [
        client.image(good, "16UC1", (50, 0)),                                   # encoding
        client.image(good, "rgb8", (51, 0), data=good.tobytes()[:-5]),          # length
        client.image(np.zeros((0, 0, 3), np.uint8), "rgb8", (52, 0), step=0),   # zero size
        client.image(good, "rgb8", (53, 0), step=100, data=bytes(100 * 64)),    # step < row
    ]
    for msg in bad:
        client.pub_image.publish(msg)
    client.pub_image.publish(client.image(good, "rgb8", (54, 0)))
    assert client.wait(lambda: any(m.header.stamp.sec == 54 for m in client.got["depth"]))
    assert not any(m.header.stamp.sec in (50, 51, 52, 53) for k in ("depth", "semantic")
                   for m in client.got[k])
    assert client.wait(lambda: client.got["diag"] and int(client.diagnostics()["rejected"]) >= 4)
    diag = client.diagnostics()
    assert int(diag["rejected"]) == 4
    assert proc.poll() is None


def test_text_from_a_bad_message_is_escaped_and_capped_in_diagnostics(running) -> None:
    from atdt_ros.sanitize import MAX_MESSAGE

    proc, client, chain = running
    good = _frame(4)
    forged = "cam\n[FATAL] [atdt_perception]: forged line\x1b[31m"
    client.pub_image.publish(client.image(good, "X" * 1_000_000, (60, 0), frame_id=forged))
    client.pub_image.publish(client.image(good, "rgb8", (61, 0)))
    assert client.wait(lambda: any(m.header.stamp.sec == 61 for m in client.got["depth"]))
    assert client.wait(lambda: client.got["diag"] and
                       client.diagnostics()["last_rejection"].startswith("unsupported encoding"))
    with client.cv:
        status = client.got["diag"][-1].status[0]
    why = client.diagnostics()["last_rejection"]
    assert why.startswith("unsupported encoding 'XXXX") and "...(+999968 chars)" in why
    assert "accepted: rgb8" in why  # the useful part survives the cap
    for text in [status.message] + [kv.value for kv in status.values]:
        assert len(text) <= MAX_MESSAGE + 100 and "\n" not in text and "\x1b" not in text


def test_parameters_come_from_the_yaml_file(running) -> None:
    proc, client, chain = running
    assert client.wait(lambda: len(client.got["diag"]) >= 2)
    diag = client.diagnostics()
    from atdt_ros.interface import DIAGNOSTIC_KEYS
    assert tuple(diag) == DIAGNOSTIC_KEYS      # the keys the interface module defines, in order
    assert diag["backend"] == "torch"          # YAML says torch; auto would pick onnxruntime
    assert diag["model_hash"] == json.loads((chain / "metadata.json").read_text())["model_hash"][:16]
    with client.cv:
        stamps = [m.header.stamp for m in client.got["diag"][-3:]]
    gaps = [(b.sec + b.nanosec * 1e-9) - (a.sec + a.nanosec * 1e-9) for a, b in zip(stamps, stamps[1:])]
    assert all(0.1 < g < 1.0 for g in gaps), gaps  # diagnostics_period 0.3 s, not the default 1 s


def test_diagnostics_break_each_frame_down_into_its_steps(running) -> None:
    from atdt_ros.interface import STEPS, step_key

    proc, client, chain = running
    client.pub_image.publish(client.image(_frame(7), "rgb8", (70, 0)))
    assert client.wait(lambda: any(m.header.stamp.sec == 70 for m in client.got["semantic"]))
    assert client.wait(lambda: int(client.diagnostics().get("processed", "0")) >= 1)
    diag = client.diagnostics()
    means = {s: float(diag[step_key(s, "mean")]) for s in STEPS}
    p50s = {s: float(diag[step_key(s, "p50")]) for s in STEPS}
    assert all(v >= 0 for v in [*means.values(), *p50s.values()]), diag
    assert means["inference"] > 0 and means["messages"] > 0 and means["publish"] > 0
    # the steps tile each frame from its receipt to its last publish: their means add up to the
    # mean latency, which lies between the fastest frame and the slowest
    assert sum(means.values()) <= float(diag["latency_max_ms"]) + 0.05 * len(STEPS)
    assert p50s["inference"] <= float(diag["latency_max_ms"])


def test_late_subscriber_receives_the_latched_class_map(running) -> None:
    from atdt_msgs.msg import ClassMap
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from atdt_ros.classmap import CLASSES, UNLABELED

    proc, client, chain = running
    received = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    client.node.create_subscription(ClassMap, f"{NODE}/class_map",
                                    lambda m: client._store("class_map", m), qos)
    client.got["class_map"] = received
    assert client.wait(lambda: bool(received))
    assert received[0].unlabeled_id == UNLABELED
    assert [(c.id, c.name, (c.r, c.g, c.b)) for c in received[0].classes] == \
        [(c.id, c.name, c.color) for c in CLASSES]


def test_newest_frame_is_always_processed_and_stale_ones_are_dropped(running) -> None:
    proc, client, chain = running
    frames = [client.image(_frame(10 + i), "rgb8", (100 + i, 0)) for i in range(15)]
    for msg in frames:
        client.pub_image.publish(msg)
    assert client.wait(lambda: any(m.header.stamp.sec == 114 for m in client.got["semantic"]))
    stamps = [m.header.stamp.sec for m in client.got["semantic"] if 100 <= m.header.stamp.sec < 115]
    assert stamps == sorted(stamps)  # never out of order
    time.sleep(0.8)
    diag = client.diagnostics()
    assert int(diag["processed"]) + int(diag["dropped"]) + int(diag["rejected"]) \
        == int(diag["received"])


def test_camera_is_unsubscribed_when_no_output_has_subscribers(running) -> None:
    proc, client, chain = running
    for name in list(client.subs):
        client.node.destroy_subscription(client.subs.pop(name))
    deadline = time.monotonic() + 20
    while client.pub_image.get_subscription_count() > 0:
        assert time.monotonic() < deadline, "the node kept its camera subscription"
        time.sleep(0.05)
    assert proc.poll() is None


def _run_to_exit(params: Path, timeout: float = 60) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "atdt_ros.node", "--ros-args", "--params-file", str(params)],
        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    return proc.returncode, proc.stdout + proc.stderr


def test_missing_model_stops_with_the_path_in_the_message(tmp_path) -> None:
    missing = tmp_path / "no_such_chain"
    code, out = _run_to_exit(_params_file(tmp_path, missing))
    assert code != 0
    assert str(missing) in out and "does not exist" in out


def test_corrupt_metadata_stops_naming_the_file(tmp_path, chain) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text('{"format_version": 1, "input": ')
    code, out = _run_to_exit(_params_file(tmp_path, broken))
    assert code != 0
    assert str(broken / "metadata.json") in out and "corrupt" in out


def test_unavailable_explicit_backend_stops_naming_it(tmp_path, chain) -> None:
    code, out = _run_to_exit(_params_file(tmp_path, chain, backend="tensorrt", trust_model_code=True))
    assert code != 0
    assert "backend tensorrt" in out
    assert "CUDA is not available" in out or "torch-tensorrt" in out


def test_compile_with_another_backend_stops_naming_both(tmp_path, chain) -> None:
    code, out = _run_to_exit(_params_file(tmp_path, chain, backend="onnxruntime", compile=True))
    assert code != 0
    assert "backend onnxruntime: compile applies to backend torch" in out


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_node_cleanly(tmp_path, chain, signal_name) -> None:
    import signal

    # a shutdown while a timer callback runs made rclpy raise RCLError (context not valid)
    # instead of ExternalShutdownException
    proc = _start(_params_file(tmp_path, chain, backend="torch", trust_model_code=True))
    lines = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not any("ready:" in line for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"the node exited early:\n{''.join(lines)}"
            lines.append(line)
            assert time.monotonic() < deadline, "the node never said it was ready"
        time.sleep(1.0)  # let the executor settle into its wait loop
        proc.send_signal(getattr(signal, signal_name))
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, "".join(lines) + out
    assert "Traceback" not in out, out


def test_mailbox_keeps_the_newest_frame_or_every_frame_in_accuracy_mode() -> None:
    from atdt_ros.frames import Mailbox

    newest = Mailbox(keep_all=False)
    assert [newest.put(i) for i in range(3)] == [False, True, True]  # two frames dropped
    assert newest.get(0.01) == 2 and newest.get(0.01) is None
    every = Mailbox(keep_all=True)
    assert [every.put(i) for i in range(3)] == [False, False, False]
    assert [every.get(0.01) for _ in range(4)] == [0, 1, 2, None]
    every.put(5)
    every.close()
    assert every.get(0.01) is None  # closed: the worker stops


def test_camera_info_is_scaled_to_the_depth_image_size() -> None:
    from sensor_msgs.msg import CameraInfo

    from atdt_ros.ros_messages import scale_camera_info

    info = CameraInfo()
    info.width, info.height, info.distortion_model = 640, 480, "plumb_bob"
    info.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [500.0, 0.0, 320.0, -25.0, 0.0, 510.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    same = scale_camera_info(info, 480, 640)
    assert list(same.k) == list(info.k) and list(same.p) == list(info.p)
    half = scale_camera_info(info, 240, 320)
    assert (half.width, half.height, half.distortion_model) == (320, 240, "plumb_bob")
    assert list(half.k) == [250.0, 0.0, 160.0, 0.0, 255.0, 120.0, 0.0, 0.0, 1.0]
    assert list(half.p) == [250.0, 0.0, 160.0, -12.5, 0.0, 255.0, 120.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_unknown_parameter_in_the_yaml_stops_naming_it(tmp_path, chain) -> None:
    code, out = _run_to_exit(_params_file(tmp_path, chain, input_qos_typo="reliable"))
    assert code != 0
    assert "parameter input_qos_typo: unknown key; accepted keys: model_path," in out, out


@pytest.mark.parametrize("override, message", [
    ({"device": "foo"}, "parameter device: 'foo' is not one of cpu, cuda, cuda:N"),
    ({"error_throttle": -1.0}, "parameter error_throttle: -1.0 s must be >= 0"),
    ({"diagnostics_period": 0.0001}, "parameter diagnostics_period: 0.0001 s is outside 0.01..3600"),
    ({"input_depth": 2 ** 31}, f"parameter input_depth: {2 ** 31} is outside 1..10000"),
    ({"diagnostics_period": "fast"}, "parameter diagnostics_period"),
    ({"publish_pointcloud": "yes"}, "parameter publish_pointcloud"),
])
def test_bad_parameter_values_stop_the_node_naming_them(tmp_path, chain, override, message) -> None:
    code, out = _run_to_exit(_params_file(tmp_path, chain, **override))
    assert code == 2, out
    assert message in out and "Traceback" not in out, out


def test_an_integer_is_taken_for_a_float_parameter(tmp_path, chain) -> None:
    # `diagnostics_period: 1` in a params file means 1.0 s; build_only loads the model and exits
    code, out = _run_to_exit(_params_file(tmp_path, chain, diagnostics_period=1, error_throttle=0,
                                          build_only=True))
    assert code == 0, out
    assert "build_only: backend onnxruntime ready" in out


def test_an_input_size_the_model_cannot_take_stops_the_node_at_start_up(tmp_path, chain) -> None:
    import shutil

    model = Path(shutil.copytree(chain, tmp_path / "model"))
    raw = json.loads((model / "metadata.json").read_text())
    raw["input"].update(height=60, width=100)  # not a multiple of the encoder's stride
    (model / "metadata.json").write_text(json.dumps(raw))
    code, out = _run_to_exit(_params_file(tmp_path, model, backend="onnxruntime"))
    assert code == 2, out
    assert "does not run on a blank 100x60 frame" in out or "have shapes" in out, out
    assert str(model / "metadata.json") in out


def _info(width=1280, height=960, binning=(0, 0), roi=(0, 0, 0, 0)):
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    info = CameraInfo()
    info.width, info.height, info.distortion_model = width, height, "plumb_bob"
    info.k = [1000.0, 0.0, 640.0, 0.0, 1010.0, 480.0, 0.0, 0.0, 1.0]
    info.p = [990.0, 0.0, 630.0, -99.0, 0.0, 995.0, 470.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.binning_x, info.binning_y = binning
    info.roi = RegionOfInterest(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3])
    return info


def test_binned_camera_info_is_passed_on_and_its_focal_is_the_binned_one() -> None:
    from atdt_ros.ros_messages import image_geometry, scale_camera_info

    info = _info(binning=(2, 2))                      # a 640x480 image of a 1280x960 camera
    out = scale_camera_info(info, 480, 640)
    assert (out.binning_x, out.binning_y, out.width, out.height) == (2, 2, 1280, 960)
    assert list(out.k) == list(info.k) and list(out.p) == list(info.p)  # consumers bin it themselves
    g = image_geometry(info, 480, 640)
    assert g.focal_x == 495.0                          # P's fx / 2, not K's and not halved twice
    assert g.p.ravel().tolist() == [495.0, 0.0, 315.0, -49.5, 0.0, 497.5, 235.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_roi_camera_info_keeps_the_focal_and_moves_the_principal_point() -> None:
    from atdt_ros.ros_messages import image_geometry, scale_camera_info

    info = _info(roi=(320, 240, 640, 480))            # the centre 640x480 of the 1280x960 camera
    out = scale_camera_info(info, 480, 640)
    assert (out.roi.x_offset, out.roi.width, out.width) == (320, 640, 1280)  # passed on as it is
    g = image_geometry(info, 480, 640)
    assert g.focal_x == 990.0                          # an ROI crops, it does not scale
    assert g.k.ravel().tolist() == [1000.0, 0.0, 320.0, 0.0, 1010.0, 240.0, 0.0, 0.0, 1.0]
    assert g.p.ravel().tolist() == [990.0, 0.0, 310.0, -99.0, 0.0, 995.0, 230.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_roi_and_binning_on_an_image_of_another_size_give_a_plain_camera_info() -> None:
    from atdt_ros.ros_messages import image_geometry, scale_camera_info

    # ROI 640x480 at (320, 240), binned 2x2 -> described 320x240; the image received is 160x120
    info = _info(binning=(2, 2), roi=(320, 240, 640, 480))
    out = scale_camera_info(info, 120, 160)
    assert (out.binning_x, out.binning_y, out.roi.width, out.width, out.height) == (0, 0, 0, 160, 120)
    # fx = 1000 / 2 * 0.5; cx = (640 - 320) / 2 * 0.5; fy = 1010 / 2 * 0.5; cy = (480 - 240) / 2 * 0.5
    assert list(out.k) == [250.0, 0.0, 80.0, 0.0, 252.5, 60.0, 0.0, 0.0, 1.0]
    assert list(out.p) == [247.5, 0.0, 77.5, -24.75, 0.0, 248.75, 57.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert image_geometry(info, 120, 160).focal_x == 247.5



def test_a_broken_params_file_stops_with_one_line(tmp_path) -> None:
    params = tmp_path / "broken.yaml"
    params.write_text("/**:\n  ros__parameters:\n    model_path: [unclosed\n")
    code, out = _run_to_exit(params)
    assert code == 2 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    ours = [line for line in lines if "cannot start" in line]
    assert len(ours) == 1 and "Couldn't parse params file" in ours[0] and str(params) in ours[0]
    assert len(lines) <= 2, out  # at most rcl's own "[ERROR] [rcl]: Failed to parse" beside ours


def test_a_corrupt_pt2_stops_the_node_without_library_tracebacks(tmp_path, chain) -> None:
    import shutil

    from atdt_ros.artifact import sha256_file

    model = Path(shutil.copytree(chain, tmp_path / "model"))
    (model / "chain.pt2").write_bytes((model / "chain.pt2").read_bytes()[:5000])  # truncated
    raw = json.loads((model / "metadata.json").read_text())
    raw["files"]["chain.pt2"] = sha256_file(model / "chain.pt2")  # as if exported that way
    (model / "metadata.json").write_text(json.dumps(raw))
    code, out = _run_to_exit(_params_file(tmp_path, model, backend="torch", trust_model_code=True))
    assert code == 2, out
    assert f"{model / 'chain.pt2'} cannot be loaded by torch" in out
    assert "Traceback" not in out, out


def _linked_model(chain: Path, dst: Path, edit: dict) -> Path:
    """A model directory of hard links to ``chain``'s files except those ``edit`` rewrites
    (name -> function of the old bytes), metadata.json re-hashed as if exported that way."""
    from atdt_ros.artifact import sha256_file

    dst.mkdir()
    for src in chain.iterdir():
        if src.is_file() and src.name not in edit and src.name != "metadata.json":
            os.link(src, dst / src.name)
    raw = json.loads((chain / "metadata.json").read_text())
    for name, change in edit.items():
        if name == "metadata.json":
            change(raw)
            continue
        (dst / name).write_bytes(change((chain / name).read_bytes()))
        raw["files"][name] = sha256_file(dst / name)
    (dst / "metadata.json").write_text(json.dumps(raw))
    return dst


def _pt2_without_weight(data: bytes) -> bytes:
    """A torch.export archive with one weight truncated: torch.export.load logs a traceback."""
    import copy
    import io
    import zipfile

    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data/weights/weight_0"):
                body = body[:100]
            dst.writestr(copy.copy(info), body)
    return out.getvalue()


@pytest.mark.parametrize("case, backend, edit, file, why", [
    ("onnx_data_truncated", "onnxruntime", {"chain.onnx.data": lambda b: b[:5_000_000]},
     "chain.onnx", "External initializer"),
    ("onnx_truncated", "onnxruntime", {"chain.onnx": lambda b: b[:5000]},
     "chain.onnx", "Protobuf parsing failed"),
    ("input_size_onnx", "onnxruntime",
     {"metadata.json": lambda r: r["input"].update(height=60, width=100)},
     "metadata.json", "does not run on a blank 100x60 frame"),
    ("input_size_torch", "torch",
     {"metadata.json": lambda r: r["input"].update(height=60, width=100)},
     "metadata.json", "does not run on a blank 100x60 frame"),
    ("pt2_weight_truncated", "torch", {"chain.pt2": _pt2_without_weight},
     "chain.pt2", "out of bounds for storage"),
    ("mean_not_numeric", "onnxruntime", {"metadata.json": lambda r: r["input"].update(
        mean=["a", 0.4, 0.4])}, "metadata.json", "input.mean: expected a list of numbers"),
    ("colours_not_lists", "onnxruntime", {"metadata.json": lambda r: r["classes"].update(
        colors=[1] * len(r["classes"]["ids"]))}, "metadata.json", "classes.colors: expected"),
    ("depth_range_inverted", "onnxruntime", {"metadata.json": lambda r: r["depth"].update(
        min=90.0, max=80.0)}, "metadata.json", "depth: min 90 must be below max 80"),
])
def test_a_model_that_cannot_be_loaded_stops_with_one_line_and_no_library_output(
        tmp_path, chain, case, backend, edit, file, why) -> None:
    # ONNX Runtime's logger printed `[E:onnxruntime:...]` and torch.export its traceback (then
    # "check the warnings above") before the node's own line, which came twice (log and print)
    model = _linked_model(chain, tmp_path / case, edit)
    proc = subprocess.run(
        [sys.executable, "-m", "atdt_ros.node", "--ros-args", "--params-file",
         str(_params_file(tmp_path, model, backend=backend, trust_model_code=True))],
        capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "[E:onnxruntime" not in proc.stderr, proc.stderr
    assert "warnings above" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cannot start" in lines[0] and str(model / file) in lines[0] and why in lines[0], lines[0]
    assert proc.stdout.strip() == "", proc.stdout
