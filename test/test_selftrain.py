"""Stage st (self-training of G and D2 on B's pseudo-labels): the class-balanced selection with
known values, the pseudo-label files, the configuration checks, and the stage end to end on the
tiny domains of test_stages (training, evaluation row, the networks the export loads)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from atdt_train.cli import main
from atdt_train.config import ConfigError, experiment_from_dict, load_experiment
from atdt_train.selftrain import (LABELS_FILE, PseudoLabelled, class_mix, class_thresholds, read_pseudo_labels,
                                  select, write_pseudo_labels)
from test_stages import H, W, domains, experiment, write_yaml  # noqa: F401 (domains is a fixture)


def test_class_balanced_thresholds_keep_the_same_share_of_every_predicted_class() -> None:
    pred = torch.tensor([[0, 0, 0, 0, 1, 1]])
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    t = class_thresholds(pred, conf, portion=0.5, num_classes=3)
    assert t[0].item() == pytest.approx(0.8) and t[1].item() == pytest.approx(0.5)
    assert t[2].item() == float("inf")  # predicted nowhere
    # a single global threshold at 0.5 would keep 5 of 6 pixels, class 1's least confident too
    assert select(pred, conf, t).tolist() == [[0, 0, 255, 255, 1, 255]]
    everything = class_thresholds(pred, conf, portion=1.0, num_classes=3)
    assert select(pred, conf, everything).tolist() == pred.tolist()


def test_pseudo_labels_round_trip_and_refuse_what_does_not_match(tmp_path) -> None:
    labels = torch.tensor([[[0, 255], [7, 10]], [[1, 1], [255, 255]]], dtype=torch.uint8)
    record = write_pseudo_labels(tmp_path, labels, torch.tensor([0.9] + [float("inf")] * 10), "B.txt", 0.5)
    assert record["kept_pixels"][:2] == [1, 2] and record["kept_pixels"][7] == 1 and record["kept_fraction"] == 0.625
    assert record["thresholds"][0] == 0.9 and record["thresholds"][1] is None
    assert np.array_equal(read_pseudo_labels(tmp_path, 2, (2, 2)), labels.numpy())
    assert read_pseudo_labels(tmp_path, 3, (2, 2)) is None  # another number of frames
    assert read_pseudo_labels(tmp_path, 2, (4, 2)) is None  # another size
    np.save(tmp_path / LABELS_FILE, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    assert read_pseudo_labels(tmp_path, 2, (2, 2)) is None  # an object array is never unpickled


def test_pseudo_labelled_frames_flip_image_and_labels_together() -> None:
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).expand(3, 2, 3, 4).clone()
    frame = {"image": image[0], "semantic": torch.zeros(2, 4, dtype=torch.long),
             "depth": torch.arange(8.0).reshape(2, 4), "depth_valid": torch.ones(2, 4, dtype=torch.bool)}
    labels = np.array([[[0, 1, 2, 3], [4, 5, 6, 7]]], dtype=np.uint8)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        item = PseudoLabelled([frame], labels, flip=True)[0]
        flipped = item["semantic"][0, 0].item() == 3
        seen.add(flipped)
        assert torch.equal(item["image"], frame["image"].flip(-1) if flipped else frame["image"])
        assert torch.equal(item["depth"], frame["depth"].flip(-1) if flipped else frame["depth"])
    assert seen == {True, False}
    with pytest.raises(ValueError, match="2 pseudo-labels for 1 frames"):
        PseudoLabelled([frame], np.zeros((2, 2, 4), np.uint8), flip=False)


def test_class_mix_pastes_half_the_source_classes_with_their_labels() -> None:
    # B frame: pseudo-labels 5 (left half) and 255 (right half); A frame: classes 1, 2, 3 and 255
    target_labels = torch.tensor([[[5, 5, 255, 255]] * 2])
    source_labels = torch.tensor([[[1, 1, 2, 3], [255, 3, 3, 2]]])
    target_image = torch.zeros(1, 3, 2, 4)
    source_image = torch.arange(24.0).reshape(1, 3, 2, 4) + 1
    seen = set()
    for seed in range(12):
        image, labels = class_mix(target_image, target_labels, source_image, source_labels,
                                  torch.Generator().manual_seed(seed))
        chosen = frozenset(torch.unique(labels).tolist()) - {5, 255}  # B's labels are not 1, 2 or 3
        assert len(chosen) == 2 and chosen <= {1, 2, 3}  # half of 3 classes, rounded up
        mask = torch.isin(source_labels, torch.tensor(sorted(chosen)))
        assert torch.equal(labels, torch.where(mask, source_labels, target_labels))
        assert torch.equal(image, torch.where(mask[:, None], source_image, target_image))
        assert labels[0, 1, 0].item() == 5  # A's unlabelled pixel is never pasted
        seen.add(chosen)
    assert len(seen) == 3  # every pair of the three classes is drawn
    # a source frame without labels leaves its pair unchanged; shapes must agree
    image, labels = class_mix(target_image, target_labels, source_image, torch.full_like(source_labels, 255))
    assert torch.equal(image, target_image) and torch.equal(labels, target_labels)
    with pytest.raises(ValueError, match="differ in shape"):
        class_mix(target_image, target_labels, source_image[..., :2], source_labels[..., :2])


def test_selftrain_settings_are_checked(domains, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="task 2 of sem2dep is depth"):
        experiment_from_dict(experiment(domains, tmp_path, "sem2dep"), ["steps.st=5"])
    with pytest.raises(ConfigError, match="selftrain.teacher: expected one of"):
        experiment_from_dict(experiment(domains, tmp_path), ["selftrain.teacher=oracle"])
    with pytest.raises(ConfigError, match="selftrain.mix: expected one of"):
        experiment_from_dict(experiment(domains, tmp_path), ["selftrain.mix=cutmix"])
    with pytest.raises(ConfigError, match="selftrain.portion.*got 1.5"):
        experiment_from_dict(experiment(domains, tmp_path, selftrain={"portion": 1.5}))
    with pytest.raises(ConfigError, match="selftrain.source_weight"):
        experiment_from_dict(experiment(domains, tmp_path, selftrain={"source_weight": -1}))


def test_stage_keys_follow_the_selftrain_settings(domains, tmp_path) -> None:  # noqa: F811
    from atdt_train.suite import stage_key

    base = experiment(domains, tmp_path)
    base["steps"]["st"] = 4
    a = experiment_from_dict(base)
    b = experiment_from_dict(base, ["selftrain.portion=0.8"])
    assert stage_key(a, "st") != stage_key(b, "st")
    assert stage_key(a, "st") != stage_key(experiment_from_dict(base, ["selftrain.mix=classmix"]), "st")
    for stage in ("n1", "n2", "g", "oracle"):  # they do not depend on it: shared between the rows
        assert stage_key(a, stage) == stage_key(b, stage)


@pytest.fixture(scope="module")
def selftrain_run(domains, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("selftrain")
    data = experiment(domains, root / "out", selftrain={"portion": 0.5})
    data["steps"]["st"] = 3
    path = write_yaml(root / "exp.yaml", data)
    assert main(["run", path]) == 0
    return load_experiment(path)


def test_stage_st_trains_g_and_d2_on_pseudo_labels_and_is_what_the_export_loads(selftrain_run) -> None:
    from atdt_train.checkpoints import load_task_net, load_transfer_net
    from atdt_train.stages import load_networks

    exp = selftrain_run
    folder = exp.output_dir / "stages" / "st"
    assert json.loads((folder / "done.json").read_text())["steps"] == 3
    record = json.loads((folder / "pseudo_labels.json").read_text())
    assert record["frames"] == 6 and record["size"] == [H, W]
    # every class keeps about half of its pixels (rounding per class): about half in all
    assert 0.45 <= record["kept_fraction"] <= 0.55
    labels = np.load(folder / LABELS_FILE, allow_pickle=False)
    assert labels.shape == (6, H, W) and set(np.unique(labels)) <= set(range(11)) | {255}

    results = json.loads((exp.output_dir / "results.json").read_text())
    for domain in ("A", "B"):
        assert {"atdt", "atdt_st"} <= results["domains"][domain]["task2"].keys()
    assert "AT/DT+ST" in (exp.output_dir / "report.md").read_text()

    n1, n2, g, info = load_networks(exp)
    assert info["selftrained"] and info["checkpoints"]["st"].endswith("st/weights.pt")
    paper_g, paper_n2 = load_transfer_net(exp), load_task_net(exp, "n2")
    moved = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert moved(g, paper_g) and moved(n2.decoder, paper_n2.decoder)  # G and D2 were refined
    assert not moved(n2.encoder, paper_n2.encoder)
    assert not moved(n1.encoder, load_task_net(exp, "n1").encoder)  # E1 stayed frozen
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        assert n2.decoder(g(n1.encoder(x)), (H, W)).shape == (1, 11, H, W)


def _bn_stats(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in modules for layer in m.modules() if isinstance(layer, torch.nn.BatchNorm2d)
            for t in (layer.running_mean, layer.running_var)]


def _stats_after_adabn_on_b(exp, g: torch.nn.Module, d2: torch.nn.Module, e1: torch.nn.Module) -> list[torch.Tensor]:
    from atdt_train.adabn import adapt_batchnorm, eval_loader
    from atdt_train.models import transfer_features
    from atdt_train.stages import make_dataset

    loader = eval_loader(make_dataset(exp, "B", "train"), exp.evaluation.batch_size, True, exp.seed)
    forward = lambda x: transfer_features(g, d2, e1(x), tuple(x.shape[-2:]))  # noqa: E731
    adapt_batchnorm([g, d2], forward, loader, exp.evaluation.adabn_batches, lambda x: x)
    return _bn_stats(g, d2)


def test_stage_st_with_class_mix_and_final_adabn(selftrain_run, tmp_path) -> None:
    from atdt_train.stages import load_networks

    exp = selftrain_run
    out = tmp_path / "mixed"
    (out / "stages").mkdir(parents=True)
    for stage in ("n1", "n2", "g", "oracle"):  # shared with the fixture's run, as a suite does
        (out / "stages" / stage).symlink_to(exp.output_dir / "stages" / stage, target_is_directory=True)
    path = str(exp.output_dir.parent / "exp.yaml")
    overrides = [f"out_dir={out}", "steps.st=2", "selftrain.mix=classmix", "selftrain.final_adabn=true"]
    assert main(["run", path] + [a for o in overrides for a in ("--set", o)]) == 0
    mixed = load_experiment(path, overrides)
    assert json.loads((out / "stages" / "st" / "done.json").read_text())["steps"] == 2
    assert "atdt_st" in json.loads((out / "results.json").read_text())["domains"]["B"]["task2"]

    n1, n2, g, info = load_networks(mixed)
    assert info["selftrained"]
    _, _, paper_g, _ = load_networks(exp)
    assert any(not torch.equal(x, y) for x, y in zip(g.state_dict().values(), paper_g.state_dict().values()))
    # final_adabn: the stored statistics are B's (AdaBN again on the same batches changes nothing) ...
    stored = _bn_stats(g, n2.decoder)
    again = _stats_after_adabn_on_b(mixed, g, n2.decoder, n1.encoder)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(stored, again))
    # ... while the default stage keeps the statistics of its A∪B training batches
    n1, n2, g, _ = load_networks(exp)
    stored = _bn_stats(g, n2.decoder)
    again = _stats_after_adabn_on_b(exp, g, n2.decoder, n1.encoder)
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(stored, again))


def test_a_rerun_stage_st_reads_its_pseudo_labels_back(selftrain_run, caplog) -> None:
    exp = selftrain_run
    labels = exp.output_dir / "stages" / "st" / LABELS_FILE
    before = labels.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(["stage", "st", exp.source.split()[0], "--force"]) == 0
    assert "pseudo-labels of 6 frames of B read from" in caplog.text
    assert labels.stat().st_mtime_ns == before


def test_stage_st_needs_g_first(domains, tmp_path, caplog) -> None:  # noqa: F811
    data = experiment(domains, tmp_path / "out")
    data["steps"]["st"] = 2
    path = write_yaml(tmp_path / "exp.yaml", data)
    with caplog.at_level(logging.ERROR):
        assert main(["stage", "st", path]) == 2
    assert "stage st needs stage n1 first" in caplog.text


def test_reports_name_the_self_trained_row_and_what_the_node_runs() -> None:
    from atdt_train.demo import summary_table
    from atdt_train.report import render_report

    def row(miou: float) -> dict:
        return {"iou": [miou] * 11, "miou": miou, "accuracy": 0.9}

    cfg = {"shared": True, "domains": {"A": {"train": "a.txt"}, "B": {"train": "b.txt"}},
           "model": {"depth": 18, "feature_level": 4, "norm": "batch"}, "data": {"height": 32, "width": 64, "batch_size": 2},
           "steps": {"n1": 1, "n2": 1, "g": 1, "oracle": 1, "st": 7}, "optimizer": {"lr": 0.001},
           "trainer": {"precision": "32"}, "depth": {"min_depth": 0.5, "max_depth": 80.0, "focal_normalised": False},
           "selftrain": {"portion": 0.5, "adabn": True, "source_weight": 1.0, "teacher": "atdt"}}
    rows = {"baseline": row(0.2), "atdt": row(0.3), "atdt_st": row(0.4), "oracle": row(0.6)}
    results = {"experiment": "x", "direction": "dep2sem", "task1": "depth", "task2": "semantic", "config": cfg,
               "domains": {"B": {"frames": 3, "task2": rows, "task1": {
                   m: 0.1 for m in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")}}}}
    report = render_report(results)
    assert "G and D2 refined for 7 steps on B's class-balanced pseudo-labels" in report
    assert "| AT/DT+ST | 40.0 |" in report
    # (30-20)/(60-20) = 25 %; (40-20)/(60-20) = 50 %
    assert "AT/DT closes 25% of the" in report and "AT/DT+ST closes 50% of the" in report
    replay = {"semantic": row(0.4), "latency": {"p50_ms": 1.0, "p95_ms": 1.0, "max_ms": 1.0},
              "throughput_hz": 1.0, "frames": {"answered": 3, "published": 3, "dropped": 0},
              "node_diagnostics": {"backend": "onnxruntime"}}
    table = summary_table(results, "semantic", {"accuracy": replay})
    assert "AT/DT + self-training" in table and "node, bag replay (AT/DT + self-training)" in table
    assert "AT/DT + self-training closes 50% of the Baseline->Oracle mIoU gap on B" in table


def test_the_exported_chain_is_the_self_trained_one(selftrain_run, tmp_path) -> None:
    from atdt_ros.artifact import load_metadata, sha256_file
    from atdt_ros.backends import open_backend
    from atdt_train.checkpoints import weights_path
    from atdt_train.stages import load_networks

    exp = selftrain_run
    out = tmp_path / "chain"
    assert main(["export", str(exp.output_dir), "--out", str(out), "--formats", "onnx", "--parity-frames", "2"]) == 0
    md = load_metadata(out)
    assert md.sources == {k: sha256_file(weights_path(exp, k)) for k in ("n1", "n2", "g", "st")}
    n1, n2, g, _ = load_networks(exp)
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        expected = n2.decoder(g(n1.encoder(x)), (H, W)).argmax(1).numpy()
    backend = open_backend(out, "onnxruntime")
    labels = backend.infer(x.numpy())["semantic"]
    assert (labels == expected).mean() > 0.99


def test_stage_st_trains_under_two_process_ddp(domains, tmp_path) -> None:  # noqa: F811
    """Both processes label B alike (the same seeded AdaBN batches), rank 0 writes the labels,
    and the combined A+B loader is split between the processes by Lightning's sampler; with
    ClassMix and the final AdaBN on B, which every process runs on the same batches."""
    import os
    import subprocess
    import sys

    data = experiment(domains, tmp_path / "out", trainer={"strategy": "ddp", "devices": 2, "checkpoint_every": 2},
                      selftrain={"mix": "classmix", "final_adabn": True})
    data["steps"]["st"] = 2
    path = write_yaml(tmp_path / "ddp.yaml", data)
    for stage in ("n1", "n2", "g"):  # one process for the stages before
        assert main(["stage", stage, path, "--set", "trainer.strategy=auto", "--set", "trainer.devices=1"]) == 0
    env = {**os.environ, "MASTER_PORT": str(20000 + (os.getpid() + 7) % 20000)}
    proc = subprocess.run([sys.executable, "-m", "atdt_train.cli", "stage", "st", path], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout
    # both processes re-estimate B's statistics after training (rank 0's are written)
    assert (proc.stderr + proc.stdout).count("batch-norm statistics from 1 batches of B after training") == 2
    folder = tmp_path / "out" / "stages" / "st"
    assert json.loads((folder / "done.json").read_text())["steps"] == 2
    assert read_pseudo_labels(folder, 6, (H, W)) is not None
