"""The node's other inputs and its lifecycle, each with a node of its own over real DDS (in its own
module: the module-scoped node of test_node.py holds rclpy's context until that module ends)."""

from __future__ import annotations

import time

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
