"""The replay's report: report.json, report.md, the latency plot and the qualitative figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from atdt_ros import classmap
from atdt_ros.files import atomic_write
from atdt_ros.metrics import DEPTH_METRICS, LOWER_IS_BETTER
from atdt_ros.present import DEPTH_NAMES, depth_colormap, number, pyplot, save_figure, save_grid
from atdt_ros.replay.records import FrameRecord


def markdown_report(results: dict[str, Any]) -> str:
    """report.md: counts, latency, segmentation (per class) and depth tables."""
    f = results["frames"]
    lat = results["latency"]
    seg, dep = results["semantic"], results["depth"]
    lines = [
        f"# Replay report ({results['mode']} mode)",
        "",
        f"Bag `{results['bag']}`, camera published on `{results['topics']['image']}`; outputs "
        f"`{results['topics']['depth']}` and `{results['topics']['semantic']}` matched to the bag's ground "
        f"truth by header stamp.",
        "",
        "| frames in bag | published | answered | dropped | malformed | resent | scored |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {f['in_bag']} | {f['published']} | {f['answered']} | {f['dropped']} | {f['malformed']} "
        f"| {f['resent']} | {f['scored']} |",
        "",
        "| latency p50 (ms) | p95 (ms) | max (ms) | throughput (Hz) | input rate (Hz) | recorded rate (Hz) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {number(lat['p50_ms'], 1)} | {number(lat['p95_ms'], 1)} | {number(lat['max_ms'], 1)} "
        f"| {number(results['throughput_hz'], 2)} | {number(results['input_rate_hz'], 2)} "
        f"| {number(results['recorded_rate_hz'], 2)} |",
        "",
        "Latency: publish of a frame to receipt of the last of its two outputs (depth, semantic).",
        "",
        *_node_lines(results.get("node_diagnostics") or {}),
        "## Semantic segmentation",
        "",
        "| " + " | ".join(classmap.TABLE_NAMES) + " | mIoU | Acc |",
        "|" + "---:|" * (len(classmap.TABLE_NAMES) + 2),
        "| " + " | ".join(number(v, 2, 100) for v in seg["iou"]) + f" | {number(seg['miou'], 2, 100)} "
        f"| {number(seg['accuracy'], 2, 100)} |",
        "",
        f"IoU and accuracy in %, over {seg['pixels']} labelled pixels (ignore id {classmap.UNLABELED}).",
        "",
        "## Depth",
        "",
        "| " + " | ".join(DEPTH_NAMES[m] for m in DEPTH_METRICS) + " |",
        "|" + "---:|" * len(DEPTH_METRICS),
        "| " + " | ".join(number(dep[m], 3) for m in DEPTH_METRICS) + " |",
        "",
        f"Over {dep['pixels']} pixels with ground truth in ({results['depth_range_m'][0]}, "
        f"{results['depth_range_m'][1]}) m; lower is better for "
        f"{', '.join(DEPTH_NAMES[m] for m in DEPTH_METRICS if m in LOWER_IS_BETTER)}.",
        "",
        "![latency](latency.png)",
        "",
        "![qualitative](qualitative.png)",
        "",
    ]
    if results["malformed_frames"]:
        lines += ["## Malformed frames", ""] + [f"- {m}" for m in results["malformed_frames"]] + [""]
    return "\n".join(lines)


def _node_lines(diag: dict[str, str]) -> list[str]:
    if not diag:
        return []
    return [f"Node (its last /diagnostics; counters since it started): backend {diag.get('backend', '?')} on {diag.get('device', '?')}, "
            f"precision {diag.get('precision', '?')}"
            f"{' (torch.compile)' if diag.get('compiled') == 'true' else ''}, model {diag.get('model_hash', '?')}; "
            f"received {diag.get('received', '?')}, processed {diag.get('processed', '?')}, "
            f"dropped {diag.get('dropped', '?')}, rejected {diag.get('rejected', '?')}; receipt to published "
            f"p50 {diag.get('latency_p50_ms', '?')} ms, p95 {diag.get('latency_p95_ms', '?')} ms, of which "
            f"the backend call p50 {diag.get('inference_p50_ms', '?')} ms.", ""]


def latency_figure(results: dict[str, Any], path: Path) -> None:
    """latency.png: latency of each answered frame over publish time; unanswered frames marked."""
    plt = pyplot()
    frames = [p for p in results["per_frame"] if p["published_s"] is not None]
    ok = [(p["published_s"], p["latency_ms"]) for p in frames if p["latency_ms"] is not None]
    lost = [p["published_s"] for p in frames if p["latency_ms"] is None]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if ok:
        t, v = zip(*ok)
        ax.plot(t, v, ".-", lw=0.8, ms=3, label="latency")
        p50, p95 = results["latency"]["p50_ms"], results["latency"]["p95_ms"]
        ax.axhline(p50, color="tab:green", lw=0.8, ls="--", label=f"p50 {p50:.1f} ms")
        ax.axhline(p95, color="tab:orange", lw=0.8, ls="--", label=f"p95 {p95:.1f} ms")
    if lost:
        ax.plot(lost, [0] * len(lost), "x", color="tab:red", label=f"unanswered ({len(lost)})")
    ax.set_xlabel("publish time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"atdt_perception latency, {results['mode']} replay")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, path)


def qualitative_figure(records: list[FrameRecord], path: Path, min_depth: float, max_depth: float) -> bool:
    """qualitative.png (Fig. 3 style): RGB | semantic output | GT semantic | depth output | GT depth;
    each row's depth colours span its ground truth's range within (min_depth, max_depth)."""
    rows = [r for r in sorted(records, key=lambda r: r.index) if r.answered and r.rgb is not None]
    if not rows:
        return False
    h, w = rows[0].rgb.shape[:2]
    grid = []
    for r in rows:
        gt = r.gt_depth[np.isfinite(r.gt_depth)] if r.gt_depth is not None else np.array([])
        near = max(min_depth, float(gt.min()) if gt.size else min_depth)
        far = min(max_depth, float(gt.max()) if gt.size else max_depth)
        if far <= near:
            near, far = min_depth, max_depth
        blank = np.zeros((h, w, 3), np.uint8)
        grid.append((
            r.rgb,
            classmap.colorize(r.semantic) if r.semantic is not None else blank,
            classmap.colorize(r.gt_semantic) if r.gt_semantic is not None else blank,
            depth_colormap(r.depth, (near, far)) if r.depth is not None else blank,
            depth_colormap(r.gt_depth, (near, far)) if r.gt_depth is not None else blank,
        ))
    save_grid(grid, ("RGB", "semantic (node)", "semantic (GT)", "depth (node)", "depth (GT)"), path,
              row_labels=[f"frame {r.index}" for r in rows])
    return True


def write_report(replay: Any, out: Path) -> dict[str, Any]:
    """Write report.json, report.md, latency.png and qualitative.png into ``out`` for a finished
    :class:`atdt_ros.replay.run.Replay` (its ``results()``, ``kept`` frames and ``opts``)."""
    out.mkdir(parents=True, exist_ok=True)
    results = replay.results()
    latency_figure(results, out / "latency.png")
    has_grid = qualitative_figure(replay.kept, out / "qualitative.png", replay.opts.min_depth, replay.opts.max_depth)
    results["files"] = {"markdown": "report.md", "latency_plot": "latency.png",
                        "qualitative": "qualitative.png" if has_grid else None}
    atomic_write(out / "report.json", json.dumps(results, indent=2, allow_nan=True) + "\n")
    atomic_write(out / "report.md", markdown_report(results))
    return results
