"""``atdt_replay``: a bag played through the real node over DDS, scored like offline evaluation.

The chain is a seeded, untrained ResNet-18 Eq. 4 chain (what it learned does not matter here):
the same networks are scored offline by ``atdt_train evaluate``'s own ``evaluate_domain`` and,
exported, by the node through a replayed bag of the same frames at the same resolution.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from atdt_ros.replay import ReplayOptions, replay, start_node, stop_node
from atdt_train.bag import (CAMERA_INFO_TOPIC, DEPTH_TOPIC, IMAGE_TOPIC, SEMANTIC_TOPIC, BagFrame,
                            stamp_of, write_bag)
from atdt_train.cli import main as cli_main

SIZE = (32, 64)  # the tiny domains' native size = the experiment's input size
NAMESPACE = "/replay_test"


def tiny_experiment(root: Path) -> Path:
    """An experiment file whose domain B test split is six tiny frames in the simulator's layout."""
    from test_bag import make_sim_dataset

    test_list, _ = make_sim_dataset(root / "data_B", frames=6, height=SIZE[0], width=SIZE[1], seed=5)
    exp = {
        "name": "replay_tiny", "direction": "dep2sem", "out_dir": str(root / "run"),
        "domains": {d: {"train": str(test_list), "test": str(test_list), "kind": "sim"} for d in ("A", "B")},
        "data": {"height": SIZE[0], "width": SIZE[1], "batch_size": 2, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "precision": "32"},
        "evaluation": {"adabn_batches": 0, "figure_samples": 0, "batch_size": 4},
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny experiment, seeded networks, their exported chain, a bag of B's test split, the node."""
    import torch

    from atdt_train.config import load_experiment
    from atdt_train.export import export_chain
    from chain_helpers import parity_frames, seeded_networks

    tmp = tmp_path_factory.mktemp("replay")
    exp = load_experiment(tiny_experiment(tmp))
    assert (exp.data.height, exp.data.width) == SIZE
    n1, n2, g = seeded_networks()
    torch.manual_seed(0)
    chain = tmp / "chain"
    frames = parity_frames(2)[:, :, : SIZE[0], : SIZE[1]].copy()
    export_chain(n1, n2, g, chain, direction="dep2sem", input_size=SIZE, frames=frames, formats=("pt2",))
    bag = tmp / "bag_B"
    assert cli_main(["make-bag", "--list", exp.domains.B.test, "--out", str(bag), "--rate", "20"]) == 0
    # the node, started the way `atdt_replay --model` starts it, serves every test of this module
    node = start_node(str(chain), NAMESPACE, None, "torch", tmp / "node.log", trust_model_code=True)
    try:
        yield {"tmp": tmp, "exp": exp, "nets": (n1, n2, g), "chain": chain, "bag": bag, "node": node}
    finally:
        assert stop_node(node) == 0, (tmp / "node.log").read_text()


def test_accuracy_replay_equals_offline_evaluation(setup) -> None:
    import torch

    from atdt_train.evaluate import evaluate_domain

    n1, n2, g = setup["nets"]
    offline, _ = evaluate_domain(setup["exp"], "B", {"n1_B": n1, "n2": n2, "g": g}, torch.device("cpu"), None)
    out = setup["tmp"] / "report_accuracy"
    results = replay(ReplayOptions(bag=str(setup["bag"]), out=str(out), mode="accuracy",
                                   namespace=NAMESPACE, timeout=60, progress=False))
    frames = results["frames"]
    assert frames["published"] == frames["answered"] == frames["scored"] == offline["frames"] == 6
    assert frames["dropped"] == frames["malformed"] == 0

    seg_off, seg_on = offline["task2"]["atdt"], results["semantic"]  # dep2sem: task 2 = D2(G(E1(x)))
    assert seg_on["pixels"] == seg_off["pixels"] > 0
    assert seg_on["miou"] == pytest.approx(seg_off["miou"], abs=1e-6)
    assert seg_on["accuracy"] == pytest.approx(seg_off["accuracy"], abs=1e-6)
    for on, off in zip(seg_on["iou"], seg_off["iou"], strict=True):
        assert (math.isnan(on) and math.isnan(off)) or on == pytest.approx(off, abs=1e-6)
    dep_off, dep_on = offline["task1"], results["depth"]  # task 1 = D1(E1(x))
    assert dep_on["pixels"] == dep_off["pixels"] > 0
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"):
        assert dep_on[key] == pytest.approx(dep_off[key], rel=1e-6, abs=1e-6), key

    lat = results["latency"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["semantic"]["miou"] == pytest.approx(seg_on["miou"])
    assert [p["latency_ms"] is not None for p in saved["per_frame"]] == [True] * 6
    report = (out / "report.md").read_text()
    assert "| Road | Sidewalk |" in report and "Abs Rel" in report
    assert f"{100 * seg_on['miou']:.2f}" in report
    for png in ("latency.png", "qualitative.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["node_diagnostics"]["backend"] == "torch"
    assert int(results["node_diagnostics"]["processed"]) >= 6


def _malformed_bag(path: Path, frames: int = 6) -> None:
    """A bag whose frame 1 has too little data and frame 3 an unsupported encoding."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    rng = np.random.default_rng(3)
    good = [BagFrame(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8),
                     rng.integers(0, 11, SIZE, dtype=np.uint8),
                     rng.uniform(2, 50, SIZE).astype(np.float32), 40.0) for _ in range(frames)]
    clean = path.with_name(path.name + "_clean")
    write_bag(good, clean, rate_hz=20.0)
    store = get_typestore(Stores.ROS2_KILTED)
    from rosbags.rosbag2 import Reader

    with Reader(clean) as reader, Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            if conn.topic == IMAGE_TOPIC and timestamp in (stamp_of(1, 20.0), stamp_of(3, 20.0)):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if timestamp == stamp_of(1, 20.0):
                    msg.data = msg.data[:-7]
                else:
                    msg.encoding = "yuv422_yuy2"
                raw = store.serialize_cdr(msg, conn.msgtype)
            writer.write(conns[conn.topic], timestamp, raw)
    assert {CAMERA_INFO_TOPIC, DEPTH_TOPIC, SEMANTIC_TOPIC} <= set(conns)


def test_malformed_frames_are_counted_and_replay_keeps_going(setup, tmp_path) -> None:
    bag = tmp_path / "bad_bag"
    _malformed_bag(bag)
    acc = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "acc"), mode="accuracy",
                               namespace=NAMESPACE, timeout=60, malformed_wait=0.5, progress=False))
    f = acc["frames"]
    assert (f["published"], f["answered"], f["malformed"], f["dropped"], f["scored"]) == (6, 4, 2, 2, 4)
    bad = acc["malformed_frames"]
    assert len(bad) == 2 and "frame 1: data length" in bad[0] and "yuv422_yuy2" in bad[1]
    answered = [p["index"] for p in acc["per_frame"] if p["answered"]]
    assert answered == [0, 2, 4, 5]  # frames after each malformed one are still answered
    assert int(acc["node_diagnostics"]["rejected"]) >= 2  # the node saw and rejected them too
    assert "Malformed frames" in (tmp_path / "acc" / "report.md").read_text()

    rt = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "rt"), mode="realtime",
                              namespace=NAMESPACE, timeout=20, progress=False))
    f = rt["frames"]
    assert f["published"] == 6 and f["malformed"] == 2
    assert f["answered"] + f["dropped"] == 6 and 1 <= f["answered"] <= 4
    assert rt["recorded_rate_hz"] == pytest.approx(20.0)
    assert (tmp_path / "rt" / "report.md").is_file()

    first3 = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "limit"), mode="accuracy", namespace=NAMESPACE,
                                  timeout=60, malformed_wait=0.5, limit=3, progress=False))
    assert (first3["frames"]["published"], first3["frames"]["answered"], first3["frames"]["scored"]) == (3, 2, 2)
    assert setup["node"].poll() is None  # the node survived every run


def test_missing_camera_topic_and_missing_bag_are_named(tmp_path, setup, caplog) -> None:
    from atdt_ros.replay import main

    assert main(["--bag", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--timeout", "1"]) == 1
    assert "nothing does not exist (accepted: a rosbag2 directory" in caplog.text
    assert main(["--bag", str(setup["bag"]), "--out", str(tmp_path / "o"), "--image-topic", "/cam/none",
                 "--timeout", "1"]) == 1
    assert "no camera topic /cam/none" in caplog.text and "/camera/image_raw (sensor_msgs/msg/Image)" in caplog.text


def test_a_bare_mcap_replays_like_its_bag_directory(setup, tmp_path) -> None:
    """The bag's .mcap alone (no metadata.yaml), as rosbag2 plays it: same frames, same scores."""
    import shutil

    (mcap,) = Path(setup["bag"]).glob("*.mcap")
    bare = tmp_path / "recorded.mcap"
    shutil.copy(mcap, bare)
    runs = {}
    for name, bag in (("directory", setup["bag"]), ("bare", bare)):
        runs[name] = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / name), mode="accuracy",
                                          namespace=NAMESPACE, timeout=60, limit=3, progress=False))
    frames = runs["bare"]["frames"]
    assert (frames["in_bag"], frames["published"], frames["answered"], frames["scored"]) == (6, 3, 3, 3)
    assert runs["bare"]["bag"] == str(bare)
    assert runs["bare"]["semantic"]["miou"] == pytest.approx(runs["directory"]["semantic"]["miou"], abs=1e-9)
    assert runs["bare"]["depth"]["abs_rel"] == pytest.approx(runs["directory"]["depth"]["abs_rel"], abs=1e-9)


def test_the_depth_range_comes_from_the_chain_unless_given(tmp_path_factory) -> None:
    import chain_helpers
    from atdt_ros.replay import ReplayError, resolve_depth_range

    chain = chain_helpers.exported_chain(tmp_path_factory)
    raw = json.loads((chain / "metadata.json").read_text())["depth"]
    own = ReplayOptions(bag="b", out="o", model=str(chain))
    got = resolve_depth_range(own)
    assert (got.min_depth, got.max_depth) == (raw["min"], raw["max"])  # what offline evaluation used
    got = resolve_depth_range(ReplayOptions(bag="b", out="o", model=str(chain), max_depth=40.0))
    assert (got.min_depth, got.max_depth) == (raw["min"], 40.0)
    got = resolve_depth_range(ReplayOptions(bag="b", out="o"))  # a node started elsewhere
    assert (got.min_depth, got.max_depth) == (0.5, 80.0)
    with pytest.raises(ReplayError, match="minimum must be below"):
        resolve_depth_range(ReplayOptions(bag="b", out="o", model=str(chain), min_depth=500.0))
