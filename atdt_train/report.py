"""Reports of an evaluated experiment: Markdown tables laid out like the paper's Tables 1 and 2,
and a Fig. 3-like figure (RGB | Baseline | AT/DT | ground truth)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from atdt_ros.classmap import TABLE_NAMES, THIN_CLASSES, colorize
from atdt_ros.files import atomic_write
from atdt_ros.metrics import DEPTH_METRICS
from atdt_ros.present import DEPTH_NAMES, depth_colormap, depth_header, depth_value, percent, save_grid, signed

METHOD_LABELS: dict[str, str] = {
    "baseline": "Baseline", "baseline_adabn": "Baseline+AdaBN", "atdt": "AT/DT",
    "atdt_adabn": "AT/DT+AdaBN", "atdt_st": "AT/DT+ST", "oracle": "Oracle",
}


def thin_iou(row: dict[str, Any]) -> float:
    """Mean IoU of the thin classes (person, pole, traffic sign) of a semantic row."""
    values = [row["iou"][c] for c in THIN_CLASSES]
    return math.nan if any(v is None or math.isnan(v) for v in values) else float(np.mean(values))


def transfer_name(cfg: dict[str, Any]) -> str:
    """How G was built and trained: "Eq. 3 (paper)" or the options beyond the paper, as configured."""
    t = cfg.get("transfer") or {}
    down = int((cfg.get("model") or {}).get("transfer_down", 2))
    shape = "" if down == 2 else f", G with {down} halving{'s' if down != 1 else ''} (paper: 2)"
    if not t or float(t.get("task_loss", 0.0)) == 0.0:
        return "Eq. 3" + shape if shape else "Eq. 3 (paper)"
    name = f"Eq. 3 + {float(t['task_loss']):g} x task loss through D2"
    if t.get("class_weights", "none") != "none":
        name += f", {t['class_weights'].replace('_', '-')} class weights"
    return name + shape


def method_labels(cfg: dict[str, Any]) -> dict[str, str]:
    """Row labels of a report: AT/DT rows are AT/DT+ when G was trained beyond the paper."""
    if transfer_name(cfg) == "Eq. 3 (paper)":
        return dict(METHOD_LABELS)
    return {**METHOD_LABELS, "atdt": "AT/DT+", "atdt_adabn": "AT/DT++AdaBN", "atdt_st": "AT/DT++ST"}


DOMAIN_TITLES = {"B": "domain B (target: no task-2 labels used, except by the Oracle)",
                 "A": "domain A (source)"}


def gap_closed(rows: dict[str, dict[str, Any]], key: str, method: str = "atdt") -> float:
    """(method − Baseline) / (Oracle − Baseline) for metric ``key`` (NaN without an Oracle);
    ``method`` is the AT/DT row by default."""
    if not {"baseline", method, "oracle"} <= rows.keys():
        return math.nan
    base, atdt, oracle = rows["baseline"][key], rows[method][key], rows["oracle"][key]
    if oracle == base or any(math.isnan(v) for v in (base, atdt, oracle)):
        return math.nan
    return (atdt - base) / (oracle - base)


def semantic_table(rows: dict[str, dict[str, Any]], labels: dict[str, str] = METHOD_LABELS) -> list[str]:
    """Table 1 layout: per-class IoU, mIoU, Acc, the thin classes' mean IoU, and the gains over the Baseline."""
    head = ["Method", *TABLE_NAMES, "mIoU", "Acc", "thin", "Δ mIoU", "Δ Acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows.get("baseline")
    for key, label in labels.items():
        if key not in rows:
            continue
        r = rows[key]
        gains = ["", ""]
        if base is not None and key != "baseline":
            gains = [signed(100 * (r["miou"] - base["miou"]), 1), signed(100 * (r["accuracy"] - base["accuracy"]), 1)]
        cells = [label, *(percent(v) for v in r["iou"]), f"**{percent(r['miou'])}**", percent(r["accuracy"]),
                 percent(thin_iou(r)), *gains]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def depth_table(rows: dict[str, dict[str, Any]], labels: dict[str, str] = METHOD_LABELS) -> list[str]:
    """Table 2 layout: the seven depth metrics, then the gains over the Baseline."""
    head = ["Method", *(depth_header(m) for m in DEPTH_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in labels.items():
        if key in rows:
            lines.append("| " + " | ".join([label, *(depth_value(m, rows[key][m]) for m in DEPTH_METRICS)]) + " |")
    base = rows.get("baseline")
    if base is not None:
        for key, label in labels.items():
            if key in rows and key != "baseline":
                cells = []
                for m in DEPTH_METRICS:
                    delta = rows[key][m] - base[m]
                    cells.append(signed(100 * delta, 1) if m.startswith("delta") else signed(delta, 3))
                lines.append("| " + " | ".join([f"Δ {label} vs Baseline", *cells]) + " |")
    return lines


def _task1_line(task: str, metrics: dict[str, Any]) -> str:
    if task == "semantic":
        return f"mIoU {percent(metrics['miou'])}, Acc {percent(metrics['accuracy'])}"
    return ", ".join(f"{DEPTH_NAMES[m]} {depth_value(m, metrics[m])}" for m in DEPTH_METRICS)


def render_report(results: dict[str, Any]) -> str:
    """The Markdown report of ``results.json``."""
    cfg = results["config"]
    task1, task2 = results["task1"], results["task2"]
    arrow = {"dep2sem": "Dep→Sem", "sem2dep": "Sem→Dep"}[results["direction"]]
    m, d, s = cfg["model"], cfg["data"], cfg["steps"]
    lines = [
        f"# AT/DT results: {results['experiment']} ({arrow})",
        "",
        f"- Command: `atdt_train run {results.get('source') or 'EXPERIMENT.yaml'}`",
        f"- Task 1 = {task1} (labels in A and B), task 2 = {task2} (labels in A only); "
        f"N1 {'shared on A∪B' if cfg['shared'] else 'trained separately per domain (N1^A, N1^B)'}",
        f"- Domains: A = `{cfg['domains']['A']['train']}`, B = `{cfg['domains']['B']['train']}` (train lists)",
        f"- Networks: dilated ResNet-{m['depth']}, feature level {m['feature_level']}, norm {m['norm']}, "
        f"input {d['height']}x{d['width']}, batch {d['batch_size']}, precision {cfg['trainer']['precision']}",
        f"- Steps: N1 {s['n1']}, N2 {s['n2']}, G {s['g']}, Oracle {s['oracle']}; Adam lr {cfg['optimizer']['lr']}",
        f"- G trained by {transfer_name(cfg)}",
    ]
    if s.get("st", 0) > 0:
        st = cfg["selftrain"]
        lines.append(f"- Self-training (stage st, beyond the paper): G and D2 refined for {s['st']} steps on "
                     f"B's class-balanced pseudo-labels (portion {st['portion']}, "
                     f"{'after' if st['adabn'] else 'without'} AdaBN) and A's labels (weight "
                     f"{st['source_weight']}); the exported chain is the AT/DT+ST row")
    labels = method_labels(cfg)
    if "depth" in (task1, task2):
        dep = cfg["depth"]
        if dep.get("height_normalised") and results.get("height_ref") is not None:
            units = (f"focal x height normalisation on (f_ref = {results['focal_ref']:.1f} px, "
                     f"h_ref = {results['height_ref']:.2f} m)")
        elif dep["focal_normalised"]:
            units = f"focal normalisation on (f_ref = {results['focal_ref']:.1f} px)"
        else:
            units = "focal normalisation off"
        lines.append(f"- Depth: metrics on ground truth in ({dep['min_depth']}, {dep['max_depth']}) m; {units}")
    training = results.get("training", {})
    if training:
        total = sum(t.get("seconds", 0.0) for t in training.values())
        parts = ", ".join(f"{k} {t.get('seconds', 0.0) / 60:.1f} min" for k, t in training.items())
        lines.append(f"- Training time: {total / 60:.1f} min ({parts})")
    for domain in ("B", "A"):
        res = results["domains"].get(domain)
        if res is None:
            continue
        rows = res["task2"]
        lines += ["", f"## {task2.capitalize()} on {DOMAIN_TITLES[domain]}: {res['frames']} test frames", ""]
        lines += semantic_table(rows, labels) if task2 == "semantic" else depth_table(rows, labels)
        key = "miou" if task2 == "semantic" else "abs_rel"
        for method in ("atdt", "atdt_st"):
            closed = gap_closed(rows, key, method) if domain == "B" else math.nan  # the Oracle is B's
            if not math.isnan(closed):
                lines += ["", f"{labels[method]} closes {100 * closed:.0f}% of the Baseline→Oracle gap in "
                              f"{'mIoU' if key == 'miou' else 'Abs Rel'}."]
        if not res.get("adabn"):
            lines += ["", "AdaBN rows: not applicable (no batch normalisation)."]
        lines += ["", f"Task 1 ({task1}, N1) on {domain}: {_task1_line(task1, res['task1'])}."]
        if res.get("figure"):
            lines += ["", f"![RGB | Baseline | AT/DT | ground truth on {domain}]({res['figure']})"]
    lines += ["", f"Rows: Baseline = N2 trained on A; {labels['atdt']} = D2(G(E1(x))) (Eq. 4, G trained by "
              f"{transfer_name(cfg)}); thin = mean IoU of person, pole and traffic sign; +AdaBN = batch-norm "
              "statistics re-estimated on the evaluated domain's unlabelled training images (for AT/DT: "
              "those of G and D2; E1 is kept); +ST = G and D2 self-trained on B's pseudo-labels; "
              "Oracle = N2 trained on B's task-2 labels.", ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], path: Path) -> Path:
    """Write ``report.md`` atomically."""

    atomic_write(Path(path), render_report(results))
    return Path(path)


def save_figure(samples: list[dict[str, np.ndarray]], task: str, path: Path,
                depth_range: tuple[float, float] = (0.5, 80.0)) -> Path:
    """Fig. 3-like grid, one row per sample: RGB | Baseline | AT/DT | ground truth (PNG, atomic)."""

    def show(array: np.ndarray) -> np.ndarray:
        if task == "semantic":
            return colorize(array.astype(np.int64))
        return depth_colormap(array, depth_range)

    rows = [(s["rgb"], show(s["baseline"]), show(s["atdt"]), show(s["gt"])) for s in samples]
    return save_grid(rows, ("RGB", "Baseline", "AT/DT", "Ground truth"), path)
