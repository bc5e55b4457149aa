"""The node's other inputs and its lifecycle, each with a node of its own over real DDS (in its own
module: the module-scoped node of test_node.py holds rclpy's context until that module ends)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import chain_helpers
from test_node import NS, STARTUP_TIMEOUT, Client, _expected, _frame, _image_array, _params_file, _start, _stop


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return chain_helpers.exported_chain(tmp_path_factory)


def test_compressed_input_is_decoded_and_a_corrupt_jpeg_is_counted(tmp_path, chain) -> None:
    import cv2
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    proc = _start(_params_file(tmp_path, chain, image_transport="compressed", input_qos="reliable",
                               input_depth=10, process_all=True, diagnostics_period=0.3,
                               error_throttle=0.0))
    client = None
    try:
        client = Client()
        pub = client.node.create_publisher(CompressedImage, f"{NS}/image/compressed",
                                           QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while pub.get_subscription_count() == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "never subscribed"
            time.sleep(0.05)
        assert client.pub_image.get_subscription_count() == 0  # not the raw topic
        rgb = _frame(5)

        def compressed(data: bytes, fmt: str, sec: int) -> CompressedImage:
            msg = CompressedImage()
            msg.header.stamp.sec, msg.header.frame_id, msg.format, msg.data = sec, "cam", fmt, data
            return msg
        png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()        # lossless: exact pixels
        jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
        pub.publish(compressed(jpeg[: len(jpeg) // 4], "jpeg", 70))        # truncated
        pub.publish(compressed(b"not an image", "png", 71))                # garbage
        pub.publish(compressed(png, "rgb8; png compressed bgr8", 72))
        assert client.wait(lambda: any(m.header.stamp.sec == 72 for m in client.got["semantic"]))
        sem = next(m for m in client.got["semantic"] if m.header.stamp.sec == 72)
        assert (sem.height, sem.width, sem.header.frame_id) == (64, 128, "cam")
        _, exp_labels = _expected(chain, rgb)
        assert (_image_array(sem) == exp_labels).mean() >= 0.999
        assert client.wait(lambda: client.got["diag"] and int(client.diagnostics()["rejected"]) >= 2)
        time.sleep(0.7)
        diag = client.diagnostics()
        assert int(diag["rejected"]) == 2 and int(diag["processed"]) == 1, diag
        assert "does not decode: corrupt or truncated" in diag["last_rejection"]
        assert not any(m.header.stamp.sec in (70, 71) for m in client.got["semantic"])
    finally:
        print(_stop(proc, client))


def test_a_lifecycle_manager_drives_every_transition(tmp_path, chain) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    from test_node import NODE

    proc = _start(_params_file(tmp_path, chain, autostart=False, input_qos="reliable"))
    client = None
    try:
        client = Client()
        get = client.node.create_client(GetState, f"{NODE}/get_state")
        change = client.node.create_client(ChangeState, f"{NODE}/change_state")
        assert get.wait_for_service(timeout_sec=STARTUP_TIMEOUT) and change.wait_for_service(timeout_sec=10)

        def call(cli, request):
            future = cli.call_async(request)
            deadline = time.monotonic() + 60
            while not future.done():
                assert time.monotonic() < deadline and proc.poll() is None, "no answer"
                time.sleep(0.02)
            return future.result()

        def state() -> int:
            return call(get, GetState.Request()).current_state.id

        def transition(tid: int) -> bool:
            request = ChangeState.Request()
            request.transition.id = tid
            return call(change, request).success

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        time.sleep(0.5)
        assert client.pub_image.get_subscription_count() == 0  # nothing subscribed before active
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        time.sleep(0.5)
        assert client.pub_image.get_subscription_count() == 0 and not client.got["diag"]
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        client.wait_for_node_subscription(proc)
        client.pub_image.publish(client.image(_frame(6), "rgb8", (80, 0)))
        assert client.wait(lambda: any(m.header.stamp.sec == 80 for m in client.got["semantic"]))
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        deadline = time.monotonic() + 10
        while client.pub_image.get_subscription_count() > 0:  # camera released
            assert time.monotonic() < deadline, "camera still subscribed when inactive"
            time.sleep(0.05)
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        client.wait_for_node_subscription(proc)  # re-activated: subscribed again
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert proc.wait(timeout=20) == 0  # finalized: the process ends cleanly
    finally:
        out = _stop(proc, client)
    assert "Traceback" not in out, out


def _read_cloud(msg) -> dict[str, np.ndarray]:
    """PointCloud2 -> one (height, width) array per field, read by the message's own field list
    (an independent reader: sensor_msgs_py is not installed in this venv)."""
    from sensor_msgs.msg import PointField

    types = {PointField.FLOAT32: "f4", PointField.UINT32: "u4", PointField.UINT8: "u1"}
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [order + types[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.row_step)
    points = rows[:, :msg.width * msg.point_step].copy().view(dtype).reshape(msg.height, msg.width)
    return {name: points[name] for name in dtype.names}


def test_the_point_cloud_is_the_published_depth_back_projected_with_its_labels(tmp_path, chain) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

    from atdt_ros.interface import POINTS
    from test_node import NODE

    proc = _start(_params_file(tmp_path, chain, input_qos="reliable", input_depth=10,
                               process_all=True, threads=1))
    client = None
    try:
        client = Client()
        client.got["points"] = []
        points_sub = client.node.create_subscription(
            PointCloud2, f"{NODE}/{POINTS}", lambda m: client._store("points", m),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        client.wait_for_node_subscription(proc)
        # a 256x128 camera binned 2x2: the 128x64 image's fx 100, cx 60, fy 110, cy 30
        info = CameraInfo()
        info.width, info.height, info.binning_x, info.binning_y = 256, 128, 2, 2
        info.k = [200.0, 0.0, 120.0, 0.0, 220.0, 60.0, 0.0, 0.0, 1.0]
        info.p = [200.0, 0.0, 120.0, 0.0, 0.0, 220.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        rgb = _frame(7)
        for sec in range(90, 110):  # until camera_info has reached the node before a frame
            info.header.stamp.sec = sec
            client.pub_info.publish(info)
            client.pub_image.publish(client.image(rgb, "rgb8", (sec, 5), frame_id="cam_optical"))
            if client.wait(lambda: client.got["points"], timeout=3.0):
                break
        assert client.got["points"], "no point cloud arrived"
        cloud = client.got["points"][0]
        stamp = (cloud.header.stamp.sec, cloud.header.stamp.nanosec)
        assert client.wait(lambda: any((m.header.stamp.sec, m.header.stamp.nanosec) == stamp
                                       for m in client.got["semantic"]))
        depth = next(m for m in client.got["depth"] if m.header.stamp.sec == stamp[0])
        semantic = next(m for m in client.got["semantic"] if m.header.stamp.sec == stamp[0])
        assert cloud.header == depth.header and cloud.header.frame_id == "cam_optical"
        assert stamp[1] == 5
        assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
            ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
            ("z", 8, PointField.FLOAT32, 1), ("label", 12, PointField.UINT32, 1)]
        assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (64, 128, 16, 16 * 128)
        assert cloud.is_dense is False
        got = _read_cloud(cloud)
        d = _image_array(depth).astype(np.float64)
        valid = np.isfinite(d) & (d > 0)
        u, v = np.meshgrid(np.arange(128), np.arange(64))
        rays = np.linalg.inv(np.array([[100.0, 0, 60], [0, 110.0, 30], [0, 0, 1]])) @ \
            np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        expected = np.where(valid, d, np.nan)[None] * rays.reshape(3, 64, 128)  # NaN: no point
        for axis, name in enumerate("xyz"):
            np.testing.assert_allclose(got[name], expected[axis], rtol=1e-5, atol=1e-6,
                                       equal_nan=True, err_msg=name)
        assert valid.any()
        assert np.array_equal(got["label"], _image_array(semantic).astype(np.uint32))
        # the cloud counts as an output: with only it subscribed the camera stays subscribed
        for name in list(client.subs):
            client.node.destroy_subscription(client.subs.pop(name))
        time.sleep(1.0)
        assert client.pub_image.get_subscription_count() == 1
        client.node.destroy_subscription(points_sub)
        deadline = time.monotonic() + 20
        while client.pub_image.get_subscription_count() > 0:  # nobody wants any output
            assert time.monotonic() < deadline, "camera still subscribed without subscribers"
            time.sleep(0.05)
    finally:
        print(_stop(proc, client))


def test_publish_pointcloud_false_advertises_no_cloud(tmp_path, chain) -> None:
    from atdt_ros.interface import POINTS
    from test_node import NODE

    proc = _start(_params_file(tmp_path, chain, publish_pointcloud=False))
    client = None
    try:
        client = Client()
        client.wait_for_node_subscription(proc)
        deadline = time.monotonic() + 20
        while not client.node.get_publishers_info_by_topic(f"{NODE}/depth"):
            assert time.monotonic() < deadline, "the node's ~/depth was never seen"
            time.sleep(0.05)
        assert client.node.get_publishers_info_by_topic(f"{NODE}/{POINTS}") == []
    finally:
        print(_stop(proc, client))


def test_transport_is_stated_and_an_oversized_camera_info_warned_once(tmp_path, chain) -> None:
    """The start-up line states the node's FASTDDS_BUILTIN_TRANSPORTS; a camera_info of
    4000x3000 (36 MB at an assumed 3 bytes per pixel, over the 8 MB segment) is warned about
    once however often it comes, a 640x480 one never; the lost-frame count is published."""
    import os

    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    from atdt_ros.interface import LOST

    setting = "SHM?max_msg_size=2MB&sockets_size=8MB"
    before = os.environ["FASTDDS_BUILTIN_TRANSPORTS"]
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = setting  # the node's process only
    try:
        proc = _start(_params_file(tmp_path, chain, input_qos="reliable", diagnostics_period=0.3))
    finally:
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = before
    client = None
    try:
        client = Client()
        logs: list[str] = []
        client.got["rosout"] = logs
        client.node.create_subscription(
            Log, "/rosout", lambda m: client._store("rosout", m.msg),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        client.wait_for_node_subscription(proc)

        def info(width: int, height: int) -> CameraInfo:
            msg = CameraInfo()
            msg.width, msg.height = width, height
            msg.k = [1000.0, 0, width / 2, 0, 1000.0, height / 2, 0, 0, 1]
            return msg
        for size in [(4000, 3000)] * 3 + [(640, 480)] * 3 + [(4000, 3000), (5000, 4000)]:
            client.pub_info.publish(info(*size))  # reliable, in order: 5000x4000 comes last
        assert client.wait(lambda: any("5000x4000" in m for m in logs))
        client.pub_image.publish(client.image(_frame(3), "rgb8", (90, 0)))
        assert client.wait(lambda: any(m.header.stamp.sec == 90 for m in client.got["semantic"]))
        assert client.wait(lambda: client.got["diag"] and client.diagnostics()["processed"] == "1")
        assert client.diagnostics()[LOST] == "0"
    finally:
        out = _stop(proc, client)
        print(out)
    assert f"transport: Fast DDS SHM, 8 MB segments, 2 MB messages " \
           f"(FASTDDS_BUILTIN_TRANSPORTS='{setting}')" in out
    big = [line for line in out.splitlines() if "advertises 4000x3000 frames" in line]
    assert len(big) == 1, out
    assert "36 MB at 3 bytes per pixel (rgb8/bgr8 assumed" in big[0]
    assert "more than the 8 MB shared-memory segment" in big[0]
    assert "640x480" not in out
