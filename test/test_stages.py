"""The AT/DT stages end to end on tiny domains written in the simulator's layout.

The frames are drawn directly (sky, road plane with depth growing to the horizon, a building and
a car), so the tests need no renderer; domain B has other colours and another camera.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from atdt_ros.metrics import DEPTH_METRICS
from atdt_ros.present import depth_value, percent
from atdt_train.cli import main
from chain_helpers import write_sim_split
from atdt_train.config import ConfigError, experiment_from_dict, load_experiment

PALETTES = {
    "A": {0: (90, 90, 90), 1: (200, 200, 160), 7: (20, 40, 200), 9: (150, 60, 40), 10: (120, 180, 250)},
    "B": {0: (60, 70, 60), 1: (140, 130, 120), 7: (160, 30, 30), 9: (110, 110, 120), 10: (200, 200, 200)},
}
H, W = 32, 64


def write_domain(root: Path, domain: str, frames: int = 6) -> dict[str, str]:
    """Train and test splits of a tiny domain in the ``atdt_train simulate`` layout."""
    fx = W * (0.8 if domain == "A" else 1.1)
    rng = np.random.default_rng(ord(domain))

    def frame():
        horizon = int(H * rng.uniform(0.35, 0.5))
        sem = np.full((H, W), 10, np.uint8)  # sky: no depth
        depth = np.zeros((H, W), np.float32)
        rows = np.arange(horizon, H)
        sem[horizon:] = 0
        depth[horizon:] = np.clip(1.5 * fx / (rows - horizon + 1) / (W / 64), 1.0, 70.0)[:, None]
        sem[horizon:, : int(W * rng.uniform(0.1, 0.3))] = 1
        b0, b1 = sorted(rng.integers(0, W, 2))
        top = max(1, horizon - int(H * rng.uniform(0.1, 0.3)))
        sem[top:horizon, b0:b1 + 1] = 9
        depth[top:horizon, b0:b1 + 1] = 40.0
        c0, c_top = int(rng.integers(0, W - W // 4)), horizon + H // 10
        sem[c_top:c_top + H // 6, c0:c0 + W // 5] = 7
        depth[c_top:c_top + H // 6, c0:c0 + W // 5] = 6.0
        rgb = np.zeros((H, W, 3), np.uint8)
        for cls, colour in PALETTES[domain].items():
            rgb[sem == cls] = colour
        rgb = np.clip(rgb.astype(np.int16) + rng.integers(-12, 13, rgb.shape), 0, 255).astype(np.uint8)
        return rgb, sem, depth

    return {split: write_sim_split(root, split, [frame() for _ in range(frames)], fx, domain)
            for split in ("train", "test")}


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("domains")
    return {d: write_domain(root / d, d) for d in ("A", "B")}


def experiment(domains, out: Path, direction: str = "dep2sem", steps: int = 2, **sections) -> dict:
    """A tiny experiment as plain data; ``sections`` update its sub-mappings."""
    exp = {
        "name": f"tiny_{direction}",
        "out_dir": str(out),
        "direction": direction,
        "domains": {d: {"train": domains[d]["train"], "test": domains[d]["test"], "kind": "sim"} for d in "AB"},
        "model": {"depth": 18, "feature_level": 4, "norm": "batch", "transfer_hidden": 32},
        "data": {"height": H, "width": W, "batch_size": 2, "num_workers": 0},
        "steps": {"n1": steps, "n2": steps, "g": steps, "oracle": steps},
        "optimizer": {"lr": 1e-3},
        "trainer": {"accelerator": "cpu", "devices": 1, "threads": 1, "checkpoint_every": 100,
                    "log_every": 1, "progress_bar": False},
        "evaluation": {"batch_size": 6, "adabn_batches": 1, "figure_samples": 2},
    }
    for key, value in sections.items():
        exp[key] = {**exp.get(key, {}), **value} if isinstance(value, dict) else value
    return exp


def write_yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def dep2sem_run(domains, tmp_path_factory):
    """One complete Dep->Sem run through ``atdt_train run`` (2 steps per stage)."""
    root = tmp_path_factory.mktemp("dep2sem")
    path = write_yaml(root / "exp.yaml", experiment(domains, root / "out"))
    assert main(["run", path]) == 0
    return load_experiment(path)


def test_config_errors_name_the_key(domains, tmp_path):
    good = experiment(domains, tmp_path / "out")
    cases = [
        ({"model": {"depth": 19}}, "model.depth: expected one of 18, 34, 50"),
        ({"model": {"dpeth": 18}}, "model.dpeth: unknown key"),
        ({"data": {"batch_size": "8"}}, "data.batch_size: expected int"),
        ({"trainer": {"precision": "64"}}, "trainer.precision"),
        ({"shared": "yes"}, "shared: expected bool"),
        ({"data": {"height": 30}}, "multiples of 16"),
        ({"direction": "sem2sem"}, "direction"),
        ({"model": {"decoder_widths": [64, 0]}}, "model.decoder_widths: decoder_widths="),
        ({"model": {"decoder_widths": [8, 8, 8, 8, 8, 8]}}, "1 to 5 positive integers"),
        ({"model": {"transfer_hidden": 0}}, "model.transfer_hidden: must be > 0"),
    ]
    for change, message in cases:
        bad = {**good, **{k: {**good[k], **v} if isinstance(v, dict) else v for k, v in change.items()}}
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            experiment_from_dict(bad)
    del good["domains"]["B"]["test"]
    with pytest.raises(ConfigError, match=r"domains\.B\.test: missing required key"):
        experiment_from_dict(good)
    path = write_yaml(tmp_path / "bad.yaml", {**experiment(domains, tmp_path), "steps": {"n3": 1}})
    with pytest.raises(ConfigError, match=r"bad\.yaml: steps\.n3: unknown key"):
        load_experiment(path)
    assert experiment_from_dict(experiment(domains, tmp_path), ["steps.g=7"]).steps.g == 7
    base = experiment(domains, tmp_path)
    with pytest.raises(ConfigError, match=r"transfer\.task_loss: must be >= 0"):
        experiment_from_dict(base, ["transfer.task_loss=-1"])
    with pytest.raises(ConfigError, match=r"transfer\.class_weights: .* task 2 of sem2dep is depth"):
        experiment_from_dict(base, ["direction=sem2dep", "transfer.class_weights=inverse_sqrt"])
    for shipped in sorted(Path(__file__).parent.parent.glob("config/experiments/*.yaml")):
        load_experiment(shipped)  # every shipped experiment follows the schema


def test_run_writes_results_report_and_figures(dep2sem_run):
    out = dep2sem_run.output_dir
    results = json.loads((out / "results.json").read_text())
    assert results["task1"] == "depth" and results["task2"] == "semantic"
    for domain in ("A", "B"):
        rows = results["domains"][domain]["task2"]
        assert list(rows) == ["baseline", "baseline_adabn", "atdt", "atdt_adabn", "oracle"]
        for metrics in rows.values():
            assert len(metrics["iou"]) == 11
            assert metrics["pixels"] == 6 * H * W  # every pixel of the tiny domains is labelled
        assert set(results["domains"][domain]["task1"]) >= {"abs_rel", "delta1"}
        png = cv2.imread(str(out / f"figure_{domain}.png"))
        assert png is not None and png.shape[0] > 50
    report = (out / "report.md").read_text()
    for row in ("| Baseline |", "| Baseline+AdaBN |", "| AT/DT |", "| AT/DT+AdaBN |", "| Oracle |", "mIoU", "Tr. Signs"):
        assert row in report
    for domain in ("B", "A"):  # the tables print results.json's numbers, row by row
        for key, metrics in results["domains"][domain]["task2"].items():
            assert f"| **{percent(metrics['miou'])}** | {percent(metrics['accuracy'])} |" in report, (domain, key)
    assert "G trained by Eq. 3 (paper)" in report
    for stage in ("n1", "n2", "g", "oracle"):
        assert json.loads((out / "stages" / stage / "done.json").read_text())["steps"] == 2


def test_report_names_g_beyond_the_paper_and_the_thin_classes_mean():
    from atdt_train.demo import summary_table
    from atdt_train.report import render_report, thin_iou

    iou = [0.9, 0.8, 0.5, 0.4, 0.10, 0.20, 0.7, 0.8, 0.30, 0.6, 0.9]
    row = {"iou": iou, "miou": 0.55, "accuracy": 0.9}
    assert thin_iou(row) == pytest.approx(0.2)  # person 0.1, pole 0.2, sign 0.3
    cfg = {"shared": True, "domains": {"A": {"train": "a.txt"}, "B": {"train": "b.txt"}},
           "model": {"depth": 18, "feature_level": 4, "norm": "batch"}, "data": {"height": 32, "width": 64, "batch_size": 2},
           "steps": {"n1": 1, "n2": 1, "g": 1, "oracle": 1}, "optimizer": {"lr": 0.001},
           "trainer": {"precision": "32"}, "depth": {"min_depth": 0.5, "max_depth": 80.0, "focal_normalised": False},
           "transfer": {"task_loss": 1.0, "class_weights": "inverse_sqrt"}}
    results = {"experiment": "x", "direction": "dep2sem", "task1": "depth", "task2": "semantic", "config": cfg,
               "domains": {"B": {"frames": 3, "task2": {"baseline": row, "atdt": row}, "task1": {
                   m: 0.1 for m in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")}}}}
    report = render_report(results)
    assert "G trained by Eq. 3 + 1 x task loss through D2, inverse-sqrt class weights" in report
    assert "| AT/DT+ | 90.0 |" in report and "| **55.0** | 90.0 | 20.0 |" in report
    table = summary_table(results, "semantic", {})
    assert "AT/DT+  D2(G(E1(x)))" in table and table.splitlines()[2].split()[-1] == "20.0"


def test_finished_stages_are_skipped_and_networks_load(dep2sem_run, caplog):
    from atdt_train.stages import load_networks, train_stage

    before = (dep2sem_run.output_dir / "stages" / "n1" / "weights.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        for stage in ("n1", "n2", "g", "oracle"):
            train_stage(dep2sem_run, stage)
    assert caplog.text.count("skipped") == 4
    assert (dep2sem_run.output_dir / "stages" / "n1" / "weights.pt").stat().st_mtime_ns == before
    n1, n2, g, info = load_networks(dep2sem_run.output_dir)  # from the experiment's output folder
    assert info["task1"] == "depth" and info["input_size"] == [H, W]
    assert Path(info["checkpoints"]["g"]).is_file()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        semantic = n2.decoder(g(n1.encoder(x)), (H, W))  # Eq. 4
    assert semantic.shape == (1, 11, H, W) and n1(x).shape == (1, 1, H, W)


def test_frozen_encoders_stay_frozen_while_g_trains(dep2sem_run):
    import lightning as L

    from atdt_train.lit import TransferModule
    from atdt_train.checkpoints import load_task_net
    from atdt_train.stages import train_loader

    e1 = load_task_net(dep2sem_run, "n1").encoder
    e2 = load_task_net(dep2sem_run, "n2").encoder
    before = {k: v.clone() for k, v in {**{f"e1.{k}": v for k, v in e1.state_dict().items()},
                                        **{f"e2.{k}": v for k, v in e2.state_dict().items()}}.items()}
    module = TransferModule(dep2sem_run, e1, e2, max_steps=3)
    g_before = {k: v.clone() for k, v in module.g.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=train_loader(dep2sem_run, ("A",)))
    after = {**{f"e1.{k}": v for k, v in e1.state_dict().items()}, **{f"e2.{k}": v for k, v in e2.state_dict().items()}}
    assert before.keys() == after.keys()
    for key, value in before.items():  # weights and batch-norm statistics, bit for bit
        assert torch.equal(value, after[key]), key
    assert not e1.training and not e2.training
    assert any(not torch.equal(v, module.g.state_dict()[k]) for k, v in g_before.items())


def test_inverse_sqrt_weights_have_known_values():
    from atdt_train.lit import inverse_sqrt_weights

    w = inverse_sqrt_weights(torch.tensor([64.0, 16.0, 0.0, 16.0]))
    # frequencies 2/3, 1/6, 0, 1/6 -> 1/sqrt: 1.2247, 2.4495, (max present), 2.4495; scaled so that
    # the mean weight of a labelled pixel is 1: divide by 2/3*1.2247 + 2*1/6*2.4495 = 1.6330
    assert torch.allclose(w, torch.tensor([0.75, 1.5, 1.5, 1.5]), atol=1e-6)
    assert torch.equal(inverse_sqrt_weights(torch.zeros(3)), torch.ones(3))


def test_g_task_loss_flows_through_the_frozen_d2(dep2sem_run):
    """transfer.task_loss: loss = Eq. 3 + λ · weighted CE of D2(G(E1(x))); D2 never changes."""
    import dataclasses

    import lightning as L
    import torch.nn.functional as F

    from atdt_train.lit import TransferModule
    from atdt_train.checkpoints import load_task_net
    from atdt_train.stages import class_pixel_counts, train_loader

    exp = dataclasses.replace(dep2sem_run, transfer=dataclasses.replace(dep2sem_run.transfer, task_loss=0.5,
                                                                        class_weights="inverse_sqrt"))
    counts = class_pixel_counts(exp, "A")
    assert counts[[0, 1, 7, 9, 10]].min() > 0 and counts.sum() == counts[[0, 1, 7, 9, 10]].sum()
    weight = torch.linspace(0.5, 2.0, 11)
    n2 = load_task_net(exp, "n2")
    e1 = load_task_net(exp, "n1").encoder
    d2_before = {k: v.clone() for k, v in n2.decoder.state_dict().items()}
    module = TransferModule(exp, e1, n2.encoder, max_steps=2, d2=n2.decoder, class_weight=weight)
    batch = next(iter(train_loader(exp, ("A",))))
    with torch.no_grad():
        f1, f2 = e1(batch["image"]), n2.encoder(batch["image"])
        mapped = module.g(f1)
        expected = F.mse_loss(mapped, f2) + 0.5 * F.cross_entropy(
            n2.decoder(mapped, (H, W)), batch["semantic"], weight=weight, ignore_index=255)
        module.log = lambda *a, **k: None  # outside a Trainer
        module._check_finite = lambda loss: None
        assert torch.allclose(module.training_step(batch, 0), expected, rtol=1e-5)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = TransferModule(exp, e1, n2.encoder, max_steps=2, d2=n2.decoder, class_weight=weight)
    g_before = {k: v.clone() for k, v in module.g.state_dict().items()}
    trainer.fit(module, train_dataloaders=train_loader(exp, ("A",)))
    for key, value in d2_before.items():
        assert torch.equal(value, n2.decoder.state_dict()[key]), key
    assert not n2.decoder.training
    assert any(not torch.equal(v, module.g.state_dict()[k]) for k, v in g_before.items())
    with pytest.raises(ValueError, match="needs D2"):
        TransferModule(exp, e1, n2.encoder, max_steps=2)


def _logged_steps(stage_folder: Path, version: int) -> list[int]:
    with open(stage_folder / "logs" / f"version_{version}" / "metrics.csv") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh) if row.get("loss")]


def test_resumed_stage_continues_from_its_checkpoint(domains, tmp_path, caplog):
    from atdt_train.checkpoints import stage_dir
    from atdt_train.stages import train_stage

    data = experiment(domains, tmp_path / "out", steps=2, trainer={"checkpoint_every": 2})
    exp = experiment_from_dict(data)
    train_stage(exp, "n2")
    folder = stage_dir(exp, "n2")
    # plain data: it loads with weights_only=True, as the resume reads it
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    # as if the stage had been killed after its step-2 checkpoint, in a run of 4 steps
    (folder / "done.json").unlink()
    (folder / "weights.pt").unlink()
    exp = experiment_from_dict(data, ["steps.n2=4"])
    with caplog.at_level(logging.INFO):
        done = train_stage(exp, "n2")
    assert "resuming from" in caplog.text
    assert done["steps"] == 4
    assert torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["global_step"] == 4
    assert min(_logged_steps(folder, 0)) == 0
    assert min(_logged_steps(folder, 1)) >= 2  # the resumed run trained steps 2..3 only


def test_stage_force_retrains_from_step_zero(domains, tmp_path, caplog):
    from atdt_train.checkpoints import load_weights, stage_dir, weights_path

    data = experiment(domains, tmp_path / "out", steps=2, trainer={"checkpoint_every": 1})
    path = write_yaml(tmp_path / "exp.yaml", data)
    assert main(["stage", "n2", path]) == 0
    exp = load_experiment(path)
    folder = stage_dir(exp, "n2")
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    first = load_weights(weights_path(exp, "n2"))["state_dict"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["stage", "n2", path, "--force", "--set", "seed=1"]) == 0
    assert "resuming from" not in caplog.text and "done already" not in caplog.text
    assert min(_logged_steps(folder, 1)) == 0 and max(_logged_steps(folder, 1)) == 1  # trained again
    again = load_weights(weights_path(exp, "n2"))["state_dict"]
    assert any(not torch.equal(v, again[k]) for k, v in first.items())  # new weights (seed 1)


def test_a_seeded_stage_repeats_bit_for_bit(domains, tmp_path):
    from atdt_train.checkpoints import load_weights, weights_path
    from atdt_train.stages import train_stage

    def weights(out: str, seed: int) -> dict[str, torch.Tensor]:
        exp = experiment_from_dict(experiment(domains, tmp_path / out, steps=3, seed=seed))
        train_stage(exp, "n2")
        return load_weights(weights_path(exp, "n2"))["state_dict"]

    first, second, other = weights("a", 0), weights("b", 0), weights("c", 1)
    assert first.keys() == second.keys()
    for key, value in first.items():  # weights and batch-norm statistics alike
        assert torch.equal(value, second[key]), key
    assert any(not torch.equal(v, other[k]) for k, v in first.items())  # the seed matters


def test_bf16_training_runs_or_falls_back_to_fp32_with_a_warning(domains, tmp_path, caplog):
    from atdt_train.checkpoints import load_weights, stage_dir, weights_path
    from atdt_train.stages import train_stage

    exp = experiment_from_dict(experiment(domains, tmp_path / "out", steps=2,
                                          trainer={"precision": "bf16-mixed", "channels_last": True}))
    with caplog.at_level(logging.WARNING):
        train_stage(exp, "n2")
    used = json.loads((stage_dir(exp, "n2") / "done.json").read_text())["precision"]
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert used == ("bf16-mixed" if native else "32")
    if not native:  # emulated bf16 would be ~10x slower: the run says so and trains in fp32
        assert "precision bf16-mixed is slow on this CPU" in caplog.text
    weights = load_weights(weights_path(exp, "n2"))["state_dict"]
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in weights.values())


def test_weights_record_their_decoder_and_older_records_load(domains, tmp_path):
    from atdt_train.models import FULL_RESOLUTION_WIDTHS, TaskNet
    from atdt_ros.files import atomic_path
    from atdt_train.checkpoints import load_task_net, weights_path
    from atdt_train.stages import train_stage

    exp = experiment_from_dict(experiment(domains, tmp_path / "out", steps=1,
                                          model={"decoder_widths": [32, 16]}))
    train_stage(exp, "n2")
    net = load_task_net(exp, "n2")
    assert net.decoder.widths == (32, 16)
    assert net(torch.randn(1, 3, H, W)).shape == (1, 11, H, W)  # last layer at 1/8, up-sampled
    # a record from before decoder widths were configurable holds the full-resolution decoder
    legacy = TaskNet("semantic", 18, "batch", 4, FULL_RESOLUTION_WIDTHS)
    with atomic_path(weights_path(exp, "n2")) as tmp:
        torch.save({"kind": "task_net", "task": "semantic", "depth": 18, "norm": "batch",
                    "feature_level": 4, "state_dict": legacy.state_dict()}, tmp)
    assert load_task_net(exp, "n2").decoder.widths == FULL_RESOLUTION_WIDTHS


def test_g_records_its_halvings_and_older_records_load_as_the_paper_g(domains, tmp_path):
    from atdt_ros.files import atomic_path
    from atdt_train.checkpoints import load_transfer_net, load_weights, weights_path
    from atdt_train.models import TransferNet
    from atdt_train.stages import train_stage

    exp = experiment_from_dict(experiment(domains, tmp_path / "out", steps=1), ["model.transfer_down=0"])
    for stage in ("n1", "n2", "g"):
        train_stage(exp, stage)
    record = load_weights(weights_path(exp, "g"))
    assert record["down"] == 0
    g = load_transfer_net(exp)
    assert g.down_steps == 0 and not any(m.stride == (2, 2) for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    # a record from before transfer_down existed holds the paper's G: two halvings
    paper = TransferNet(record["channels"], record["norm"], record["hidden"], record["out_channels"])
    legacy = {k: v for k, v in record.items() if k != "down"} | {"state_dict": paper.state_dict()}
    with atomic_path(weights_path(exp, "g")) as tmp:
        torch.save(legacy, tmp)
    assert load_transfer_net(exp).down_steps == 2


def test_non_finite_loss_stops_the_stage_naming_the_step(domains, tmp_path, caplog):
    # an absurd learning rate blows the weights up after the first Adam step
    path = write_yaml(tmp_path / "exp.yaml", experiment(domains, tmp_path / "out", steps=5,
                                                         optimizer={"lr": 1e38, "schedule": "constant"}))
    with caplog.at_level(logging.ERROR):
        assert main(["stage", "n2", path]) == 1
    assert "non-finite loss" in caplog.text and "at step 1" in caplog.text
    assert not (tmp_path / "out" / "stages" / "n2" / "done.json").exists()


def test_missing_dataset_file_is_reported_by_path(domains, tmp_path, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.txt").write_text("rgb/missing.png;;semantic/missing.png;depth/missing.png\n")
    data = experiment(domains, tmp_path / "out")
    data["domains"]["A"] = {"train": str(broken / "train.txt"), "test": str(broken / "train.txt"), "kind": "sim"}
    with caplog.at_level(logging.ERROR):
        assert main(["stage", "n2", write_yaml(tmp_path / "exp.yaml", data)]) == 2
    assert str(broken / "rgb" / "missing.png") in caplog.text


def test_sem2dep_with_separate_n1_and_focal_normalised_depth(domains, tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", experiment(
        domains, tmp_path / "out", direction="sem2dep", steps=1, shared=False,
        depth={"focal_normalised": True}, evaluation={"figure_samples": 0, "adabn_batches": 1, "batch_size": 6}))
    assert main(["run", path]) == 0
    out = tmp_path / "out"
    assert {p.name for p in (out / "stages").iterdir()} == {"n1_A", "n1_B", "n2", "g", "oracle"}
    results = json.loads((out / "results.json").read_text())
    assert results["focal_ref"] == pytest.approx(W * 0.8)  # fx of A's first training frame
    rows = results["domains"]["B"]["task2"]
    assert set(rows) == {"baseline", "baseline_adabn", "atdt", "atdt_adabn", "oracle"}
    report = (out / "report.md").read_text()
    assert "Abs Rel ↓" in report
    for key, metrics in rows.items():  # the Tab. 2 rows print results.json's numbers
        assert metrics["pixels"] > 0
        assert f" | {' | '.join(depth_value(m, metrics[m]) for m in DEPTH_METRICS)} |" in report, key


def test_two_process_ddp_trains_the_weights_of_one_process_on_the_same_data(domains, tmp_path):
    """N2 trained by two DDP processes (3 of A's 6 frames each per step) ends with the weights of
    one process that sees all 6 frames per step, from the same seed: the gradients are averaged
    over both halves, the initial weights agree, every frame is used. Group norm, because batch
    norm normalises each process's half by its own statistics under DDP (no SyncBatchNorm), so
    there the two runs differ by design; no flips, which are drawn per process."""
    same = {"model": {"norm": "group"}, "data": {"flip": False}}
    single_exp = experiment(domains, tmp_path / "single", model=same["model"], data={**same["data"], "batch_size": 6})
    ddp_exp = experiment(domains, tmp_path / "ddp", model=same["model"], data={**same["data"], "batch_size": 3},
                         trainer={"strategy": "ddp", "devices": 2, "checkpoint_every": 2})
    assert main(["stage", "n2", write_yaml(tmp_path / "single.yaml", single_exp)]) == 0
    env = {**os.environ, "MASTER_PORT": str(20000 + os.getpid() % 20000)}
    proc = subprocess.run([sys.executable, "-m", "atdt_train.cli", "stage", "n2", write_yaml(tmp_path / "ddp.yaml", ddp_exp)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout  # both processes joined the group
    folder = tmp_path / "ddp" / "stages" / "n2"
    assert json.loads((folder / "done.json").read_text())["steps"] == 2
    # plain data: it loads with weights_only=True, as the resume reads it
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    single = torch.load(tmp_path / "single" / "stages" / "n2" / "weights.pt", weights_only=True)["state_dict"]
    ddp = torch.load(folder / "weights.pt", weights_only=True)["state_dict"]
    import lightning as L

    from atdt_train.lit import TaskModule

    L.seed_everything(0, workers=True, verbose=False)  # N2's initial weights, as the stage draws them
    init = TaskModule(experiment_from_dict(single_exp), "semantic", 2, None).net.state_dict()
    assert single.keys() == ddp.keys() == init.keys()
    # Compared per tensor as the training update (trained - initial): Adam moves a weight by about
    # lr wherever its gradient is not ~0, so where a gradient is ~0, summation-order noise
    # (all-reduce of two half sums against one sum) can flip a step's sign, and single weights
    # differ by up to 1e-5 (measured on a 2-core EPYC) although the runs agree. Measured: the
    # DDP update differs from the one-process update by at most 6.3e-6 of its norm in any tensor;
    # one process on 3 frames per step (no averaging over the other half) differs by 2.5e-2 to 0.9
    # of it. 1e-4 lies between, 16x above the first.
    for key in single:
        update = (single[key] - init[key]).double()
        assert update.norm() > 0, f"{key}: not trained"
        error = ((ddp[key] - single[key]).double().norm() / update.norm()).item()
        assert error < 1e-4, f"{key}: the DDP update differs by {error:.2e} of the one-process update"


def test_adabn_replaces_the_statistics_with_those_of_the_new_domain():
    """adapt_batchnorm: each batch-norm layer ends with the cumulative mean and variance of what
    reaches it on the new domain's images (here brighter, more contrasted ones than at training)."""
    from atdt_train.adabn import adapt_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    for _ in range(20):  # "domain A": statistics of N(0, 1) images
        net.train()(torch.randn(4, 3, 16, 16))
    net.eval()
    before = net[1].running_mean.clone()
    batches = [{"image": 3.0 + 2.0 * torch.randn(4, 3, 16, 16)} for _ in range(3)]  # "domain B"
    used = adapt_batchnorm([net], net, batches + batches, max_batches=3, prepare=lambda x: x)
    assert used == 3
    assert not net[1].training and net[1].momentum == 0.1  # back to eval, momentum restored
    with torch.no_grad():
        first = [net[0](b["image"]) for b in batches]
        mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in first]).mean(0)
        var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in first]).mean(0)
        second = [net[3](torch.relu(torch.nn.functional.batch_norm(
            f, f.mean(dim=(0, 2, 3)), f.var(dim=(0, 2, 3), unbiased=False), net[1].weight,
            net[1].bias, eps=net[1].eps))) for f in first]
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    torch.testing.assert_close(net[4].running_mean, torch.stack([s.mean(dim=(0, 2, 3)) for s in second]).mean(0))
    assert (net[1].running_mean - before).abs().max() > 0.5  # it really moved towards B's
