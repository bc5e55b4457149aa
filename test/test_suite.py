"""The ``suite`` command: rows that share networks, feature levels cut one trained N, a resumable
run, the paper-layout report; on the tiny domains of test_stages.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from atdt_train.cli import main
from atdt_train.config import ConfigError, experiment_from_dict
from atdt_train.models import TaskNet, resplit_state_dict
from atdt_train.suite import load_suite, share_plan, stage_key
from test_stages import domains, experiment, write_yaml  # noqa: F401  (domains is a fixture)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_one_trained_network_cut_at_any_level_computes_the_same(level):
    torch.manual_seed(0)
    whole = TaskNet("semantic", 18, "batch", 4, (16, 8)).eval()
    cut = TaskNet("semantic", 18, "batch", level, (16, 8)).eval()
    cut.load_state_dict(resplit_state_dict(whole.state_dict(), 4, level))
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(cut(x), whole(x))
        features = cut.encoder(x)
    assert features.shape[1] == {1: 64, 2: 128, 3: 256}[level]
    assert not any(k.startswith(f"encoder.layer{level + 1}") for k in cut.state_dict())
    # and back: level -> 4 restores the original names exactly
    assert resplit_state_dict(cut.state_dict(), level, 4).keys() == whole.state_dict().keys()


def test_stage_keys_change_with_what_a_stage_is_trained_with(domains, tmp_path):
    def exp(**sections):
        return experiment_from_dict(experiment(domains, tmp_path / "x", **sections))

    base = exp()
    level3 = exp(model={"depth": 18, "feature_level": 3, "norm": "batch", "transfer_hidden": 32})
    seed1 = exp(seed=1)
    task_loss = exp(transfer={"task_loss": 1.0})
    flat_g = experiment_from_dict(experiment(domains, tmp_path / "x"), ["model.transfer_down=0"])
    for stage in ("n1", "n2", "oracle"):
        assert stage_key(level3, stage) == stage_key(base, stage)
        assert stage_key(task_loss, stage) == stage_key(base, stage)
        assert stage_key(flat_g, stage) == stage_key(base, stage)
        assert stage_key(seed1, stage) != stage_key(base, stage)
    for other in (level3, seed1, task_loss, flat_g):
        assert stage_key(other, "g") != stage_key(base, "g")
    more_n1 = experiment_from_dict(experiment(domains, tmp_path / "x"), ["steps.n1=3"])
    assert stage_key(more_n1, "n1") != stage_key(base, "n1")
    assert stage_key(more_n1, "n2") == stage_key(base, "n2")
    assert stage_key(more_n1, "g") != stage_key(base, "g")  # G is trained on that N1
    # B's images translated (pixel-level DA): N2 never sees B, everything else does
    other_b = experiment_from_dict(experiment(domains, tmp_path / "x"), [f"domains.B.train={domains['A']['train']}"])
    assert stage_key(other_b, "n2") == stage_key(base, "n2")
    for stage in ("n1", "g", "oracle"):
        assert stage_key(other_b, stage) != stage_key(base, stage)
    other_test = experiment_from_dict(experiment(domains, tmp_path / "x"), [f"domains.B.test={domains['A']['train']}"])
    for stage in ("n1", "n2", "g", "oracle"):  # test lists train nothing
        assert stage_key(other_test, stage) == stage_key(base, stage)


def _suite_file(domains, root: Path) -> str:
    exp_path = write_yaml(root / "exp.yaml", experiment(domains, root / "unused"))
    suite = {
        "name": "tiny_suite",
        "out_dir": str(root / "suite"),
        "report": str(root / "docs" / "paper.md"),
        "rows": {
            "base": {"experiment": exp_path},
            "level3": {"experiment": exp_path, "set": ["model.feature_level=3"]},
        },
        "sections": [
            {"kind": "methods", "title": "Tab. 1", "row": "base",
             "paper": {"setting": "Synthia→Cityscapes", "baseline": 7.72, "atdt": 23.24, "oracle": 68.02}},
            {"kind": "levels", "title": "Fig. 4", "rows": {3: "level3", 4: "base"},
             "paper": {"A": {"miou": "decreases", "accuracy": "flat"}, "B": {"miou": "increases"}}},
        ],
    }
    return write_yaml(root / "suite.yaml", suite)


def test_suite_shares_networks_resumes_and_writes_the_paper_layout(domains, tmp_path, caplog):
    path = _suite_file(domains, tmp_path)
    caplog.set_level(logging.INFO)
    assert main(["suite", path]) == 0
    base, level3 = tmp_path / "suite" / "base", tmp_path / "suite" / "level3"
    for stage in ("n1", "n2", "oracle"):  # shared: a link to the base row's folder, trained once
        link = level3 / "stages" / stage
        assert link.is_symlink() and link.resolve() == (base / "stages" / stage).resolve()
    g3, g4 = (torch.load(r / "stages" / "g" / "weights.pt", weights_only=True) for r in (level3, base))
    assert not (level3 / "stages" / "g").is_symlink()
    assert g3["channels"] == 256 and g4["channels"] == 512  # layer3 vs layer4 of ResNet-18
    r3, r4 = (json.loads((r / "results.json").read_text()) for r in (level3, base))
    # same N2 and Oracle: the rows that do not involve G agree exactly; AT/DT differs
    for method in ("baseline", "oracle"):
        assert r3["domains"]["B"]["task2"][method] == r4["domains"]["B"]["task2"][method]
    assert r3["domains"]["B"]["task2"]["atdt"] != r4["domains"]["B"]["task2"]["atdt"]

    report = (tmp_path / "docs" / "paper.md").read_text()
    assert report == (tmp_path / "suite" / "report.md").read_text()
    assert "## Tab. 1" in report and "| paper, Synthia→Cityscapes | 7.7 | 23.2 | 68.0 | 25.7 % | yes |" in report
    miou_b = {lv: 100 * r["domains"]["B"]["task2"]["atdt"]["miou"] for lv, r in ((3, r3), (4, r4))}
    assert f"| mIoU on B | {miou_b[4] - miou_b[3]:+.1f} | increases |" in report
    assert "| 3 | 256 ch at 1/16 |" in report and "| 4 | 512 ch at 1/16 |" in report
    assert (tmp_path / "docs" / "paper_levels_1.png").stat().st_size > 1000
    assert "| level3 |" in report and "n1 ← base" in report

    caplog.clear()  # a second run trains and evaluates nothing
    mtime = (base / "results.json").stat().st_mtime_ns
    assert main(["suite", path]) == 0
    assert sum("results are current" in r.getMessage() for r in caplog.records) == 2
    assert (base / "results.json").stat().st_mtime_ns == mtime


def test_suite_file_errors_name_the_key(domains, tmp_path, caplog):
    path = Path(_suite_file(domains, tmp_path))
    data = yaml.safe_load(path.read_text())
    data["sections"][1]["rows"][5] = "base"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"sections\[1\].rows: feature level 5 is not one of 1, 2, 3, 4"):
        load_suite(path)
    data["sections"][1]["rows"] = {3: "nope"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"row 'nope' is not in rows; accepted: base, level3"):
        load_suite(path)
    data["rows"]["base"]["extra"] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"rows.base.extra: unknown key"):
        load_suite(path)
    assert main(["suite", str(path)]) == 2
    assert main(["suite", str(tmp_path / "missing.yaml")]) == 2


def test_share_plan_of_the_shipped_paper_suite():
    suite, rows, _ = load_suite("config/suites/paper_sim.yaml")
    from atdt_train.suite import row_experiment

    plan = share_plan({n: row_experiment(suite, n, r) for n, r in rows.items()})
    for level in (1, 2, 3):
        assert {s: plan.get((f"dep2sem_level{level}", s)) for s in ("n1", "n2", "g", "oracle")} == \
            {"n1": "dep2sem", "n2": "dep2sem", "g": None, "oracle": "dep2sem"}
    assert plan.get(("dep2sem_separate_n1", "n2")) == "dep2sem"
    assert not any(row == "dep2sem_no_norm" for row, _ in plan)  # no normalisation: nothing in common
    assert not any(row == "sem2dep" for row, _ in plan)
    assert {s: plan.get(("dep2sem_fda", s)) for s in ("n1", "n2", "g", "oracle")} == \
        {"n1": None, "n2": "dep2sem", "g": None, "oracle": None}
    assert {s: plan.get(("sem2dep_fda", s)) for s in ("n1", "n2", "g", "oracle")} == \
        {"n1": None, "n2": "sem2dep", "g": None, "oracle": None}


def _results_json(task2: str, values: dict[str, float]) -> dict:
    """A results.json holding only what a 'da' section reads: B's task-2 rows with known values."""
    def row(v: float) -> dict:
        if task2 == "semantic":
            return {"miou": v, "accuracy": v + 0.1, "iou": [v] * 11}
        return {"abs_rel": v, "sq_rel": v, "rmse": v, "rmse_log": v, "delta1": v, "delta2": v, "delta3": v}
    return {"task2": task2, "domains": {"B": {"task2": {k: row(v) for k, v in values.items()}}}}


@pytest.mark.parametrize("task2", ["semantic", "depth"])
def test_da_section_lays_out_tab3_with_known_values(tmp_path, task2):
    from atdt_train.suite import Section, Suite, render_suite_report

    exps = {}
    for name, values in (("plain", {"baseline": 0.30, "atdt": 0.40}), ("fda", {"baseline": 0.35, "atdt": 0.38})):
        exp = experiment_from_dict({**experiment({d: {"train": "t.txt", "test": "t.txt"} for d in "AB"}, tmp_path / name)})
        exp.output_dir.mkdir(parents=True)
        (exp.output_dir / "results.json").write_text(json.dumps(_results_json(task2, values)))
        exps[name] = exp
    section = Section(kind="da", title="Tab. 3", rows={"no DA": "plain", "FDA": "fda"},
                      paper={"baseline": 37.88, "atdt": 39.66, "da": 42.33, "atdt_da": 43.20})
    report = render_suite_report(Suite(name="s", rows={}), [section], {"plain": exps["plain"], "fda": exps["fda"]},
                                 {}, Path("s.yaml"))
    if task2 == "semantic":
        assert "| (c) FDA | " in report and "| **35.0** | 45.0 |" in report
        assert "| (d) AT/DT + FDA | " in report and "| **38.0** | 48.0 |" in report
        # DA vs Baseline +5.0 (paper +4.45, printed +4.4: float rounding; agrees); AT/DT + DA vs AT/DT -2.0 (paper +3.54, disagrees)
        assert "| DA vs Baseline | +5.0 | +4.4 | yes |" in report
        assert "| AT/DT + DA vs AT/DT | -2.0 | +3.5 | no |" in report
    else:  # Abs Rel: lower is better, so +0.050 is a loss and agrees only with a paper loss
        assert "| (c) FDA | 0.350 |" in report
        assert "| DA vs Baseline | +0.050 | +4.450 | yes |" in report
        assert "| AT/DT vs Baseline | +0.100 | +1.780 | yes |" in report


def test_seeds_section_gives_mean_and_spread_with_known_values(tmp_path):
    from atdt_train.suite import Section, Suite, render_suite_report

    exps = {}
    for seed, atdt in ((0, 0.40), (1, 0.44), (2, 0.48)):
        name = f"seed{seed}"
        exp = experiment_from_dict(experiment({d: {"train": "t.txt", "test": "t.txt"} for d in "AB"}, tmp_path / name),
                                   [f"seed={seed}"])
        exp.output_dir.mkdir(parents=True)
        values = {"baseline": 0.20, "atdt": atdt, "atdt_st": atdt + 0.05, "oracle": 0.60}
        (exp.output_dir / "results.json").write_text(json.dumps(_results_json("semantic", values)))
        exps[name] = exp
    section = Section(kind="seeds", title="3 seeds", rows={"0": "seed0", "1": "seed1", "2": "seed2"})
    report = render_suite_report(Suite(name="s", rows={}), [section], exps, {}, Path("s.yaml"))
    # mean 44.0, sample sd 4.0; thin = the mean of three classes holding the same value here
    assert "| AT/DT | 44.0 ± 4.0 | 44.0 ± 4.0 | 40.0 | 44.0 | 48.0 |" in report
    assert "| AT/DT+ST | 49.0 ± 4.0 |" in report
    assert "| Baseline | 20.0 ± 0.0 |" in report and "Baseline+AdaBN" not in report
    # gap closed: (40-20)/(60-20) = 50 %, 60 %, 70 %
    assert "AT/DT closes 60 ± 10 % of the Baseline→Oracle gap (50, 60, 70)." in report
    assert "Rows `seed0`, `seed1`, `seed2` (seeds 0, 1, 2)." in report


def test_a_stage_held_by_another_process_is_waited_for_then_skipped(domains, tmp_path, caplog):
    import fcntl
    import shutil
    import threading

    from atdt_train.checkpoints import stage_dir
    from atdt_train.stages import train_stage

    done_exp = experiment_from_dict(experiment(domains, tmp_path / "done"))
    assert main(["stage", "n2", write_yaml(tmp_path / "done.yaml", experiment(domains, tmp_path / "done"))]) == 0
    exp = experiment_from_dict(experiment(domains, tmp_path / "waits"))
    folder = stage_dir(exp, "n2")
    folder.mkdir(parents=True)
    caplog.set_level(logging.INFO)
    with open(folder / ".lock", "a") as other:  # "another process" is training n2
        fcntl.flock(other, fcntl.LOCK_EX)
        result = {}
        worker = threading.Thread(target=lambda: result.update(train_stage(exp, "n2")))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and not (folder / "done.json").exists()
        assert any("another process is training it" in r.getMessage() for r in caplog.records)
        for name in ("weights.pt", "done.json"):  # ... and finishes it
            shutil.copy(stage_dir(done_exp, "n2") / name, folder / name)
        fcntl.flock(other, fcntl.LOCK_UN)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert result == json.loads((stage_dir(done_exp, "n2") / "done.json").read_text())
    assert not (folder / "checkpoints").exists()  # nothing was trained here
    assert any("done already" in r.getMessage() for r in caplog.records)


def test_experiment_and_suite_files_that_cannot_be_read_are_named(tmp_path):
    from atdt_train.config import load_experiment

    broken = tmp_path / "broken.yaml"
    broken.write_text("rows: [unclosed\n")
    for load, what in ((load_experiment, "experiment"), (load_suite, "suite")):
        with pytest.raises(ConfigError, match=rf"{what} file not found: {tmp_path / 'none.yaml'}"):
            load(tmp_path / "none.yaml")
        with pytest.raises(ConfigError, match=rf"^{broken}: not valid YAML"):
            load(broken)


def test_compare_section_gives_miou_acc_and_thin_on_both_domains_with_known_values(tmp_path):
    from atdt_train.suite import Section, Suite, render_suite_report

    exps = {}
    for name, miou in (("paper_g", 0.30), ("flat_g", 0.36)):
        exp = experiment_from_dict(experiment({d: {"train": "t.txt", "test": "t.txt"} for d in "AB"}, tmp_path / name))
        exp.output_dir.mkdir(parents=True)
        results = _results_json("semantic", {"atdt": miou})
        iou = [miou] * 11
        iou[4] = iou[5] = iou[8] = miou / 3  # person, pole, traffic sign
        results["domains"]["B"]["task2"]["atdt"]["iou"] = iou
        results["domains"]["A"] = {"task2": {"atdt": {"miou": miou + 0.2, "accuracy": 0.9, "iou": [0.5] * 11}}}
        (exp.output_dir / "results.json").write_text(json.dumps(results))
        exps[name] = exp
    section = Section(kind="compare", title="G", rows={"paper's G": "paper_g", "flat G": "flat_g"})
    report = render_suite_report(Suite(name="s", rows={}), [section], exps, {}, Path("s.yaml"))
    assert "| paper's G | A | 50.0 | 90.0 | 50.0 | – | – |" in report
    assert "| flat G | B | 36.0 | 46.0 | 12.0 | – | – |" in report
    assert "| mIoU on B | +6.0 |" in report


def test_a_compare_section_of_sem2dep_rows_is_refused_before_training(domains, tmp_path):
    from atdt_train.suite import run_suite

    exp_path = write_yaml(tmp_path / "exp.yaml", experiment(domains, tmp_path / "unused") | {"direction": "sem2dep"})
    suite = {"name": "s", "out_dir": str(tmp_path / "suite"),
             "rows": {"a": {"experiment": exp_path}, "b": {"experiment": exp_path, "set": ["model.transfer_down=0"]}},
             "sections": [{"kind": "compare", "title": "G", "rows": {"paper": "a", "flat": "b"}}]}
    with pytest.raises(ConfigError, match=r"section 'G': a 'compare' section shows Dep→Sem rows .*row\(s\) a, b are Sem→Dep"):
        run_suite(write_yaml(tmp_path / "suite.yaml", suite))
    assert not (tmp_path / "suite").exists()  # nothing trained


def test_seeds_section_labels_a_g_beyond_the_paper(tmp_path):
    from atdt_train.suite import Section, Suite, render_suite_report

    exps = {}
    for seed in (0, 1):
        exp = experiment_from_dict(experiment({d: {"train": "t.txt", "test": "t.txt"} for d in "AB"}, tmp_path / f"s{seed}"),
                                   [f"seed={seed}"])
        exp.output_dir.mkdir(parents=True)
        results = _results_json("semantic", {"baseline": 0.2, "atdt": 0.3 + seed / 10, "oracle": 0.6})
        results["config"] = {"model": {"transfer_down": 0}}
        (exp.output_dir / "results.json").write_text(json.dumps(results))
        exps[f"s{seed}"] = exp
    section = Section(kind="seeds", title="flat G", rows={"0": "s0", "1": "s1"})
    report = render_suite_report(Suite(name="s", rows={}), [section], exps, {}, Path("s.yaml"))
    assert "| AT/DT+ | 35.0 ± 7.1 |" in report and "| AT/DT | " not in report
    assert "AT/DT+ closes 38 ± 18 % of the Baseline→Oracle gap (25, 50)." in report
