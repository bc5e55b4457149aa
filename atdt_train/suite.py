"""The ``suite`` command: a set of experiments (the paper's Sec. 5-6, say) as one resumable run.

A suite file (``config/suites/*.yaml``) names rows, each an experiment file plus ``--set``
overrides, and sections that lay the rows out like the paper's tables and figures::

    name: paper_sim
    out_dir: runs/paper_sim          # rows land in OUT/<row> unless a row names its own out_dir
    report: docs/paper.md            # also written to OUT/report.md
    rows:
      dep2sem: {experiment: config/experiments/sim_dep2sem.yaml}
      dep2sem_level3: {experiment: config/experiments/sim_dep2sem.yaml, set: [model.feature_level=3]}
    sections:
      - {kind: levels, title: "Fig. 4", rows: {3: dep2sem_level3, 4: dep2sem}, paper: {...}}

Rows share every trained network that does not depend on what tells them apart: a stage's
*key* hashes the settings it is trained with (data, model, optimiser, its own steps, seed,
precision), and a row whose stage has the key of an earlier row's gets a link to that row's
stage folder instead of training it again. N1, N2 and the Oracle do not depend on G or on the
feature level (``load_task_net`` cuts one trained N wherever the experiment transfers), so
Fig. 4's four rows train four Gs and one N1, N2 and Oracle. Stages resume and finished rows
are not evaluated again, so a killed suite picks up where it stopped; a stage being trained by
another process is waited for (``stages.stage_lock``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atdt_ros.files import atomic_write
from atdt_ros.present import MISSING, number, percent, pyplot, save_figure, signed

from .config import ConfigError, Experiment, build_dataclass, load_experiment, read_yaml

log = logging.getLogger(__name__)

SECTION_KINDS: tuple[str, ...] = ("methods", "levels", "compare", "da", "seeds")
TRENDS: tuple[str, ...] = ("increases", "decreases", "flat")
DA_METHODS: tuple[str, ...] = ("baseline", "atdt", "da", "atdt_da")
"""Tab. 3/4's rows (a)-(d)."""
FLAT_POINTS = 2.0
"""A change of at most this many points (mIoU or Acc, in %) counts as "flat" when a paper trend is
stated in words (Fig. 4 has no printed numbers)."""


@dataclass
class Row:
    """One experiment of a suite: a file, overrides, and optionally its own output folder."""

    experiment: str
    set: list = field(default_factory=list)
    out_dir: str | None = None


@dataclass
class Section:
    """One table or figure of the suite's report.

    ``methods``: ``row``'s Baseline / AdaBN / AT/DT / Oracle on B, laid out like Tab. 1 / Tab. 2,
    beside ``paper: {setting, baseline, atdt, oracle}`` (mIoU in %, or Abs Rel).
    ``levels``: ``rows: {level: row}``, AT/DT's mIoU and Acc on A and B per feature level (Fig. 4),
    beside ``paper: {A: {miou: trend, accuracy: trend}, B: ...}`` with trends in words.
    ``compare``: ``rows: {label: row}``, two settings (without, with), AT/DT's mIoU, Acc and
    thin-class IoU on A and B (Tab. 5 / Tab. 6), beside ``paper: {A: {miou: [without, with], accuracy: [...]}, B: ...}``.
    ``da``: ``rows: {label: row}``, the same experiment without and with pixel-level DA of B's
    images (``atdt_train translate``): (a) Baseline, (b) AT/DT, (c) DA, (d) AT/DT + DA on B, laid
    out like Tab. 3 / Tab. 4, beside ``paper: {baseline, atdt, da, atdt_da}`` (mIoU in %, or Abs Rel).
    ``seeds``: ``rows: {label: row}``, the same experiment with other seeds: every method's score
    on B (mIoU and thin-class IoU, or Abs Rel and δ1) as mean ± sample standard deviation over the
    rows, each row's value beside it, and the share of the Baseline→Oracle gap each AT/DT row closes.
    """

    kind: Literal["methods", "levels", "compare", "da", "seeds"]
    title: str
    row: str | None = None
    rows: dict | None = None
    paper: dict | None = None
    note: str | None = None


@dataclass
class Suite:
    """A suite file: rows and the sections of its report."""

    name: str
    rows: dict
    out_dir: str | None = None
    report: str | None = None
    sections: list = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def load_suite(path: str | Path) -> tuple[Suite, dict[str, Row], list[Section]]:
    """Read and check a suite file; errors name the file, the key, the value and what is accepted."""
    path = Path(path)
    data = read_yaml(path, "suite")
    try:
        suite = build_dataclass(Suite, data)
        if not suite.rows:
            raise ConfigError("rows: at least one row is needed")
        rows = {str(name): build_dataclass(Row, spec, f"rows.{name}") for name, spec in suite.rows.items()}
        sections = []
        for i, spec in enumerate(suite.sections):
            section = build_dataclass(Section, spec, f"sections[{i}]")
            _check_section(section, rows, f"sections[{i}]")
            sections.append(section)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return suite, rows, sections


def _check_section(section: Section, rows: dict[str, Row], where: str) -> None:
    named = [section.row] if section.kind == "methods" else list((section.rows or {}).values())
    if section.kind == "methods" and section.row is None:
        raise ConfigError(f"{where}.row: a 'methods' section needs the row it shows")
    if section.kind != "methods" and not section.rows:
        raise ConfigError(f"{where}.rows: a '{section.kind}' section needs rows ({{label: row}})")
    if section.kind in ("compare", "da") and len(section.rows) != 2:
        raise ConfigError(f"{where}.rows: a '{section.kind}' section takes two rows (without, with), "
                          f"got {len(section.rows)}")
    if section.kind == "da" and section.paper and not set(section.paper) <= set(DA_METHODS):
        raise ConfigError(f"{where}.paper: keys {sorted(set(section.paper) - set(DA_METHODS))} are not "
                          f"accepted; accepted: {', '.join(DA_METHODS)}")
    if section.kind == "levels":
        for level in section.rows:
            if level not in (1, 2, 3, 4):
                raise ConfigError(f"{where}.rows: feature level {level!r} is not one of 1, 2, 3, 4")
        for domain, trends in (section.paper or {}).items():
            for metric, trend in (trends or {}).items():
                if trend not in TRENDS:
                    raise ConfigError(f"{where}.paper.{domain}.{metric}: {trend!r}; accepted: {', '.join(TRENDS)}")
    for name in named:
        if name not in rows:
            raise ConfigError(f"{where}: row {name!r} is not in rows; accepted: {', '.join(rows)}")


def row_experiment(suite: Suite, name: str, row: Row) -> Experiment:
    """The experiment of one row, its output folder under the suite's unless it names its own."""
    out = row.out_dir or str(suite.output_dir / name)
    return load_experiment(row.experiment, [*map(str, row.set), f"out_dir={out}"])


# ----------------------------------------------------------------------------- sharing stages

_NOT_TRAINING = ("threads", "checkpoint_every", "log_every", "tensorboard", "progress_bar")


def stage_key(exp: Experiment, stage: str) -> str:
    """A hash of every setting stage ``stage`` of ``exp`` is trained with; equal keys, equal networks.

    Left out: names, output folders, test lists, evaluation and logging settings, for every stage;
    for the task networks also the domains they are not trained on, G's settings (``transfer``,
    ``model.transfer_hidden``, ``model.transfer_down``), the self-training settings, the other stages' steps and
    ``model.feature_level`` (where N is cut does not change N); for G the self-training settings.
    """
    from .stages import stage_spec

    task, domains, steps = stage_spec(exp, stage)
    config = exp.to_dict()
    for key in ("name", "out_dir", "evaluation"):
        config.pop(key)
    for key in _NOT_TRAINING:
        config["trainer"].pop(key)
    all_steps = config.pop("steps")
    for spec in config["domains"].values():  # test lists and display names train nothing
        spec.pop("test")
        spec.pop("name")
    if task is None:  # G (and st, which refines it): trained on the N1 and N2 of this experiment
        config["steps"] = {k: all_steps[k] for k in ("n1", "n2", "g") + (("st",) if stage == "st" else ())}
        if stage == "g":
            config.pop("selftrain")
    else:
        config["steps"] = steps
        config.pop("transfer")
        config.pop("selftrain")
        config.pop("shared")  # the stage's name says which N1
        for key in ("feature_level", "transfer_hidden", "transfer_down"):
            config["model"].pop(key)
        config["domains"] = {d: config["domains"][d] for d in domains}  # N2 never sees B
        if task == "semantic":  # depth settings train only depth networks
            config.pop("depth")
        if stage == "oracle":  # the auxiliary tasks shape N1 and N2 only
            config.pop("auxiliary")
        config["task"], config["on"] = task, list(domains)
    text = json.dumps({"stage": stage, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def share_plan(experiments: dict[str, Experiment]) -> dict[tuple[str, str], str]:
    """(row, stage) -> the earlier row whose stage it reuses (rows in suite order)."""
    from .stages import training_stages

    owners: dict[str, str] = {}
    plan = {}
    for name, exp in experiments.items():
        for stage in training_stages(exp):
            key = stage_key(exp, stage)
            if key in owners:
                plan[(name, stage)] = owners[key]
            else:
                owners[key] = name
    return plan


def link_shared(row: str, experiments: dict[str, Experiment], plan: dict[tuple[str, str], str]) -> None:
    """Point the row's shared stage folders at their owners' (relative symlinks)."""
    from .checkpoints import is_done, stage_dir
    from .stages import training_stages

    exp = experiments[row]
    for stage in training_stages(exp):
        owner = plan.get((row, stage))
        if owner is None:
            continue
        link, target = stage_dir(exp, stage), stage_dir(experiments[owner], stage)
        target.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(target, link.parent)
        if link.is_symlink():
            if os.readlink(link) == relative:
                continue
            link.unlink()
        elif link.exists():  # trained before the rows were shared: kept, never deleted
            log.info("row %s: stage %s has a folder of its own (%s%s), used instead of row %s's",
                     row, stage, link, "" if is_done(exp, stage) else ", not finished", owner)
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(relative, target_is_directory=True)
        log.info("row %s: stage %s shared with row %s (%s)", row, stage, owner, target)


def row_is_current(exp: Experiment) -> bool:
    """True when the row's results.json was written from the stages as they are now."""
    from .evaluate import training_summary

    path = exp.output_dir / "results.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("training") == training_summary(exp)
    except (OSError, ValueError):
        return False


def run_suite(path: str | Path, only: list[str] | None = None, report_only: bool = False) -> Path:
    """Train and evaluate every row (or those in ``only``) that is not current, then write the report."""
    from .run import run_experiment

    suite, rows, sections = load_suite(path)
    for name in only or ():
        if name not in rows:
            raise ConfigError(f"--only {name}: not a row of {path}; accepted: {', '.join(rows)}")
    experiments = {name: row_experiment(suite, name, row) for name, row in rows.items()}
    check_sections(sections, experiments)
    plan = share_plan(experiments)
    if not report_only:
        for name, exp in experiments.items():
            if only and name not in only:
                continue
            link_shared(name, experiments, plan)
            if row_is_current(exp):
                log.info("row %s: results are current (%s), skipped", name, exp.output_dir / "results.json")
                continue
            log.info("row %s: %s", name, exp.source)
            run_experiment(exp)
    text = render_suite_report(suite, sections, experiments, plan, Path(path))
    out = suite.output_dir / "report.md"
    atomic_write(out, text)
    if suite.report:
        atomic_write(Path(suite.report), text)
    return out


# ----------------------------------------------------------------------------- report

def _results(exp: Experiment) -> dict[str, Any] | None:
    path = exp.output_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _agrees(ours: float, paper: float, flat: bool = False) -> str:
    if math.isnan(ours) or math.isnan(paper):
        return MISSING
    if flat:
        return "yes" if abs(ours) <= FLAT_POINTS else "no"
    return "yes" if (ours > 0) == (paper > 0) else "no"


def _methods_section(section: Section, exp: Experiment, results: dict[str, Any]) -> list[str]:
    from .report import depth_table, gap_closed, method_labels, semantic_table

    rows = results["domains"]["B"]["task2"]
    labels = method_labels(results["config"])
    semantic = results["task2"] == "semantic"
    lines = (semantic_table if semantic else depth_table)(rows, labels)
    key = "miou" if semantic else "abs_rel"
    paper = section.paper or {}
    if {"baseline", "atdt"} <= paper.keys():
        scale = 100.0 if semantic else 1.0
        ours = {k: rows[k][key] * scale for k in ("baseline", "atdt", "oracle") if k in rows}
        digits = 1 if semantic else 3
        gain_ours, gain_paper = ours["atdt"] - ours["baseline"], paper["atdt"] - paper["baseline"]
        if not semantic:
            gain_ours, gain_paper = -gain_ours, -gain_paper  # an improvement is a lower Abs Rel
        gap = gap_closed(rows, key)
        p_gap = ((paper["atdt"] - paper["baseline"]) / (paper["oracle"] - paper["baseline"])
                 if "oracle" in paper else math.nan)
        metric = "mIoU" if semantic else "Abs Rel"
        lines += ["", f"| {metric} on B | Baseline | AT/DT | Oracle | gap closed | AT/DT better than Baseline |",
                  "|---|---|---|---|---|---|",
                  f"| ours | {number(ours['baseline'], digits)} | {number(ours['atdt'], digits)} | "
                  f"{number(ours.get('oracle'), digits)} | {percent(gap)} % | "
                  f"{'yes' if gain_ours > 0 else 'no'} |",
                  f"| paper, {paper.get('setting', '')} | {number(paper['baseline'], digits)} | "
                  f"{number(paper['atdt'], digits)} | {number(paper.get('oracle'), digits)} | {percent(p_gap)} % | "
                  f"{'yes' if gain_paper > 0 else 'no'} |",
                  "", f"Sign of the effect (AT/DT − Baseline) agrees with the paper: "
                      f"**{_agrees(gain_ours, gain_paper)}**."]
    return lines


def _atdt(results: dict[str, Any] | None, domain: str, metric: str) -> float:
    if results is None:
        return math.nan
    return float(results["domains"][domain]["task2"]["atdt"][metric])


def _levels_section(section: Section, experiments: dict[str, Experiment], figure: Path | None) -> list[str]:
    from .report import thin_iou

    levels = sorted(section.rows)
    res = {lv: _results(experiments[section.rows[lv]]) for lv in levels}
    lines = ["| feature level | E1 output | mIoU A | Acc A | mIoU B | Acc B | thin B |", "|---|---|---|---|---|---|---|"]
    from .models import stage_channels, stage_stride

    for lv in levels:
        exp, r = experiments[section.rows[lv]], res[lv]
        thin = thin_iou(r["domains"]["B"]["task2"]["atdt"]) if r else math.nan
        lines.append(f"| {lv} | {stage_channels(exp.model.depth, lv)} ch at 1/{stage_stride(lv)} | "
                     + " | ".join(percent(_atdt(r, d, m)) for d in ("A", "B") for m in ("miou", "accuracy"))
                     + f" | {percent(thin)} |")
    lo, hi = levels[0], levels[-1]
    lines += ["", f"| trend, level {lo} → {hi} | ours (points) | paper (Fig. 4) | agrees |", "|---|---|---|---|"]
    for domain in ("A", "B"):
        for metric, label in (("miou", "mIoU"), ("accuracy", "Acc")):
            delta = 100 * (_atdt(res[hi], domain, metric) - _atdt(res[lo], domain, metric))
            trend = ((section.paper or {}).get(domain) or {}).get(metric)
            agrees = MISSING if trend is None else _agrees(
                delta, {"increases": 1.0, "decreases": -1.0, "flat": 0.0}[trend], flat=trend == "flat")
            lines.append(f"| {label} on {domain} | {signed(delta, 1)} | {trend or MISSING} | {agrees} |")
    if figure is not None:
        lines += ["", f"![Fig. 4: AT/DT per feature level]({figure.name})"]
    return lines


def check_sections(sections: list[Section], experiments: dict[str, Experiment]) -> None:
    """What needs the rows' experiments, checked before anything trains: a ``compare`` section
    lays out mIoU and Acc, so its rows must be Dep→Sem."""
    for section in sections:
        if section.kind != "compare":
            continue
        depth_rows = [row for row in section.rows.values() if experiments[row].direction == "sem2dep"]
        if depth_rows:
            raise ConfigError(f"section {section.title!r}: a 'compare' section shows Dep→Sem rows (mIoU, Acc); "
                              f"row(s) {', '.join(sorted(depth_rows))} are Sem→Dep (show them with 'methods' sections)")


def _compare_section(section: Section, experiments: dict[str, Experiment]) -> list[str]:
    from .report import thin_iou

    labels = list(section.rows)
    res = [_results(experiments[section.rows[label]]) for label in labels]
    paper = section.paper or {}

    def thin(r: dict[str, Any] | None, domain: str) -> float:  # rows are Dep→Sem (check_sections)
        return thin_iou(r["domains"][domain]["task2"]["atdt"]) if r else math.nan

    lines = ["| setting | domain | mIoU | Acc | thin | paper mIoU | paper Acc |", "|---|---|---|---|---|---|---|"]
    for domain in ("A", "B"):
        for i, label in enumerate(labels):
            p = paper.get(domain) or {}
            pm, pa = (p.get("miou") or [None, None])[i], (p.get("accuracy") or [None, None])[i]
            lines.append(f"| {label} | {domain} | {percent(_atdt(res[i], domain, 'miou'))} | "
                         f"{percent(_atdt(res[i], domain, 'accuracy'))} | {percent(thin(res[i], domain))} | "
                         f"{pm if pm is not None else MISSING} | {pa if pa is not None else MISSING} |")
    lines += ["", f"| effect of {labels[1]} vs {labels[0]} | ours (points) | paper (points) | agrees |",
              "|---|---|---|---|"]
    for domain in ("A", "B"):
        for metric, label in (("miou", "mIoU"), ("accuracy", "Acc")):
            ours = 100 * (_atdt(res[1], domain, metric) - _atdt(res[0], domain, metric))
            pv = (paper.get(domain) or {}).get(metric)
            theirs = float(pv[1] - pv[0]) if pv else math.nan
            lines.append(f"| {label} on {domain} | {signed(ours, 1)} | {signed(theirs, 2)} | "
                         f"{_agrees(ours, theirs)} |")
    return lines


def _da_section(section: Section, experiments: dict[str, Experiment]) -> list[str]:
    """Tab. 3 / Tab. 4: Baseline and AT/DT without (a, b) and with (c, d) pixel-level DA of B."""
    from .report import depth_table, semantic_table

    without, with_da = (_results(experiments[row]) for row in section.rows.values())
    if without is None or with_da is None:
        missing = [row for row, r in zip(section.rows.values(), (without, with_da)) if r is None]
        return [f"Row(s) {', '.join(missing)} have no results yet."]
    semantic = without["task2"] == "semantic"
    b0, b1 = without["domains"]["B"]["task2"], with_da["domains"]["B"]["task2"]
    rows = {"baseline": b0["baseline"], "atdt": b0["atdt"], "da": b1["baseline"], "atdt_da": b1["atdt"]}
    da_name = list(section.rows)[1]
    labels = {"baseline": "(a) Baseline", "atdt": "(b) AT/DT", "da": f"(c) {da_name}",
              "atdt_da": f"(d) AT/DT + {da_name}"}
    lines = [f"Rows `{list(section.rows.values())[0]}` (a, b) and `{list(section.rows.values())[1]}` (c, d).", "",
             *(semantic_table if semantic else depth_table)(rows, labels)]
    key, scale, sign = ("miou", 100.0, 1.0) if semantic else ("abs_rel", 1.0, -1.0)
    ours = {k: scale * float(v[key]) for k, v in rows.items()}
    paper = section.paper or {}
    metric = "mIoU" if semantic else "Abs Rel (lower is better)"
    lines += ["", f"| effect on {metric} | ours | paper | agrees |", "|---|---|---|---|"]
    for a, b, what in (("baseline", "da", "DA vs Baseline"), ("baseline", "atdt", "AT/DT vs Baseline"),
                       ("da", "atdt_da", "AT/DT + DA vs DA"), ("atdt", "atdt_da", "AT/DT + DA vs AT/DT")):
        mine = ours[b] - ours[a]
        theirs = float(paper[b]) - float(paper[a]) if {a, b} <= paper.keys() else math.nan
        digits = 1 if semantic else 3
        lines.append(f"| {what} | {signed(mine, digits)} | {signed(theirs, digits)} | "
                     f"{_agrees(sign * mine, sign * theirs)} |")
    return lines


def _seeds_section(section: Section, experiments: dict[str, Experiment]) -> list[str]:
    """Every method on B over rows that differ by seed: mean ± standard deviation, and each row's value."""
    import numpy as np

    from .evaluate import METHODS
    from .report import gap_closed, method_labels, thin_iou

    names = list(section.rows.values())
    res = {name: _results(experiments[name]) for name in names}
    done = [n for n in names if res[n] is not None]
    if not done:
        return [f"Rows {', '.join(names)} have no results yet."]
    semantic = res[done[0]]["task2"] == "semantic"
    labels = method_labels(res[done[0]].get("config", {}))  # AT/DT+ when G is built or trained beyond the paper
    metrics = ((("mIoU", lambda r: 100 * r["miou"]), ("thin", lambda r: 100 * thin_iou(r))) if semantic else
               (("Abs Rel", lambda r: r["abs_rel"]), ("δ1 %", lambda r: 100 * r["delta1"])))
    digits = 1 if semantic else 3
    seeds = [str(experiments[n].seed) for n in done]
    head = ["Method"] + [f"{m} mean ± sd" for m, _ in metrics] + [f"{metrics[0][0]}, seed {s}" for s in seeds]
    lines = [f"Rows {', '.join(f'`{n}`' for n in done)} (seeds {', '.join(seeds)})"
             + (f"; no results yet: {', '.join(n for n in names if n not in done)}" if len(done) < len(names) else "")
             + ".", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def spread(values: list[float], d: int) -> str:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return MISSING
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        return f"{number(float(np.mean(values)), d)} ± {number(sd, d)}"

    for method in METHODS:
        rows = [res[n]["domains"]["B"]["task2"].get(method) for n in done]
        if any(r is None for r in rows):
            continue
        cells = [labels[method]] + [spread([f(r) for r in rows], digits) for _, f in metrics]
        cells += [number(metrics[0][1](r), digits) for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    key = "miou" if semantic else "abs_rel"
    for method in ("atdt", "atdt_st"):
        gaps = [100 * gap_closed(res[n]["domains"]["B"]["task2"], key, method) for n in done]
        if any(not math.isnan(g) for g in gaps):
            lines += ["", f"{labels[method]} closes {spread(gaps, 0)} % of the Baseline→Oracle gap "
                          f"({', '.join(number(g, 0) for g in gaps)})."]
    return lines


def save_levels_figure(section: Section, experiments: dict[str, Experiment], path: Path) -> Path | None:
    """Fig. 4's two plots (Acc, mIoU against the feature level; A and B), or None without results."""
    levels = sorted(section.rows)
    res = {lv: _results(experiments[section.rows[lv]]) for lv in levels}
    if all(r is None for r in res.values()):
        return None
    fig, axes = pyplot().subplots(2, 1, figsize=(4.5, 5.5), sharex=True)
    for ax, (metric, label) in zip(axes, (("accuracy", "Acc. (%)"), ("miou", "mIoU (%)"))):
        for domain, colour in (("A", "tab:orange"), ("B", "tab:blue")):
            ax.plot(levels, [100 * _atdt(res[lv], domain, metric) for lv in levels], "o-", color=colour,
                    label=f"test on {domain}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[-1].set_xlabel("feature level (E/D split)")
    axes[-1].set_xticks(levels)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def render_suite_report(suite: Suite, sections: list[Section], experiments: dict[str, Experiment],
                        plan: dict[tuple[str, str], str], source: Path) -> str:
    """The suite's Markdown report: one block per section, then the rows and what they share."""
    lines = [f"# {suite.name}", "", f"Written by `atdt_train suite {source}`. AT/DT rows are D2(G(E1(x))) "
             "(Eq. 4); numbers in %, except depth errors. \"agrees\" compares the sign of each effect "
             "with the paper's.", ""]
    report_dir = Path(suite.report).parent if suite.report else suite.output_dir
    for i, section in enumerate(sections):
        lines += [f"## {section.title}", ""]
        if section.kind == "methods":
            exp = experiments[section.row]
            results = _results(exp)
            if results is None:
                lines += [f"Row {section.row} has no results yet ({exp.output_dir / 'results.json'}).", ""]
                continue
            lines += [f"Row `{section.row}`: `{results['source']}`.", "", *_methods_section(section, exp, results)]
        elif section.kind == "levels":
            stem = Path(suite.report).stem if suite.report else "report"
            figure = save_levels_figure(section, experiments, report_dir / f"{stem}_levels_{i}.png")
            lines += _levels_section(section, experiments, figure)
        elif section.kind == "da":
            lines += _da_section(section, experiments)
        elif section.kind == "seeds":
            lines += _seeds_section(section, experiments)
        else:
            lines += _compare_section(section, experiments)
        if section.note:
            lines += ["", section.note.strip()]
        lines.append("")
    lines += ["## Rows", "", "| row | experiment | trained | shared with | AT/DT mIoU or Abs Rel on B |",
              "|---|---|---|---|---|"]
    from .stages import training_stages

    for name, exp in experiments.items():
        results = _results(exp)
        own = [s for s in training_stages(exp) if (name, s) not in plan]
        shared = sorted({f"{s} ← {plan[(name, s)]}" for s in training_stages(exp) if (name, s) in plan})
        score = MISSING
        if results is not None:
            atdt = results["domains"]["B"]["task2"]["atdt"]
            score = percent(atdt["miou"]) if results["task2"] == "semantic" else number(atdt["abs_rel"])
        seconds = sum(float((results or {}).get("training", {}).get(s, {}).get("seconds", 0.0)) for s in own)
        lines.append(f"| {name} | `{exp.source}` | {', '.join(own)} ({seconds / 60:.1f} min) | "
                     f"{', '.join(shared) or MISSING} | {score} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI

def register(subparsers: Any) -> None:
    """Add the ``suite`` subcommand."""
    p = subparsers.add_parser("suite", help="run a suite of experiments (config/suites/*.yaml) and write its report",
                              description="Train and evaluate every row of a suite file, sharing the networks "
                                          "rows have in common, resuming where a killed run stopped; then write "
                                          "the report (the paper's tables and figures beside the paper's numbers).")
    p.add_argument("suite", help="suite YAML file, e.g. config/suites/paper_sim.yaml")
    p.add_argument("--only", action="append", default=[], metavar="ROW",
                   help="run only this row (repeatable); the report still shows every row that has results")
    p.add_argument("--report-only", action="store_true", help="train nothing: write the report from the results there are")
    p.set_defaults(func=_cmd_suite)


def _cmd_suite(args: argparse.Namespace) -> int:
    from .run import guarded

    @guarded
    def suite(a: argparse.Namespace) -> int:
        print(f"report: {run_suite(a.suite, a.only or None, a.report_only)}")
        return 0

    return suite(args)
