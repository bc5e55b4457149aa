"""``atdt_train demo``: the whole system end to end on embedded defaults (what ``make demo`` runs).

1. simulate domain A (``synthetic`` preset) and domain B (``realistic`` preset), train and test
   splits, at the demo experiment's resolution;
2. run the four AT/DT stages of ``config/experiments/demo.yaml`` (Dep->Sem: depth is task 1,
   labelled in both domains; semantics is task 2, labelled in A only), then evaluate Baseline,
   AT/DT and Oracle (and the AdaBN variants) on B and A;
3. export the Eq. 4 chain (pt2 + onnx, parity-checked);
4. write a rosbag2 of B's test split at the network resolution;
5. start the perception node on the chain and replay the bag through it, in accuracy mode
   (every frame, scored like offline evaluation) and then in real time (the recorded rate);
6. print the Baseline / AT/DT / Oracle table and the node's latency.

Every step keeps its outputs under ``--out`` and a re-run reuses what is complete (rendered
frames, finished stages, an up-to-date evaluation, export and bag); only the replays run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from atdt_train.cliargs import positive_int

log = logging.getLogger(__name__)

DEFAULT_OUT = "runs/demo"
DEFAULT_EXPERIMENT = "config/experiments/demo.yaml"
DOMAINS: dict[str, tuple[str, int]] = {"A": ("synthetic", 1), "B": ("realistic", 2)}
"""Demo domain -> (simulator preset, dataset seed)."""
NAMESPACE = "/atdt_demo"
STEPS: tuple[str, ...] = ("simulate", "train", "evaluate", "export", "bag", "replay", "report")


def _repo_path(path: str) -> Path:
    """A path relative to the working directory, else to the repository (for an installed CLI)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parent.parent / p
    return repo if repo.exists() else p


class _Steps:
    """Numbered step headers and their wall times."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self.started = time.monotonic()

    def begin(self, name: str, what: str) -> None:
        self.end()
        index = STEPS.index(name) + 1
        print(f"\n==> [{index}/{len(STEPS)}] {what}", flush=True)
        self._current = (name, time.monotonic())

    def end(self) -> None:
        if self._current is not None:
            name, t0 = self._current
            self.times[name] = round(self.times.get(name, 0.0) + time.monotonic() - t0, 1)
            self._current = None


def simulate_domains(out: Path, size: tuple[int, int], train_frames: int, test_frames: int) -> dict[str, dict[str, Path]]:
    """Render (or complete) A and B train/test splits under ``out/data``; returns their filelists."""
    from atdt_train.sim.command import simulate

    lists: dict[str, dict[str, Path]] = {}
    for domain, (preset, seed) in DOMAINS.items():
        root = out / "data" / domain
        lists[domain] = {}
        for split, frames in (("train", train_frames), ("test", test_frames)):
            lists[domain][split] = simulate(preset, frames, size, split, seed, False, root)
    return lists


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def train_and_evaluate(exp: Any, steps: _Steps) -> dict[str, Any]:
    """The four stages (finished ones skipped), then evaluation unless results.json is up to date."""
    from atdt_train.checkpoints import stage_dir
    from atdt_train.stages import save_experiment_copy, train_stage, training_stages

    save_experiment_copy(exp)
    steps.begin("train", f"AT/DT stages {', '.join(training_stages(exp))} ({exp.direction}) -> {exp.output_dir}")
    for name in training_stages(exp):
        train_stage(exp, name)
    results_path = exp.output_dir / "results.json"
    newest_stage = max(_mtime(stage_dir(exp, n) / "done.json") for n in training_stages(exp))
    if results_path.is_file() and _mtime(results_path) > newest_stage:
        steps.begin("evaluate", f"evaluation: up to date, reusing {results_path}")
        return json.loads(results_path.read_text())
    from atdt_train.evaluate import evaluate_experiment

    steps.begin("evaluate", "evaluation of Baseline, AT/DT and Oracle on B and A")
    return evaluate_experiment(exp)


def export_demo_chain(exp: Any, chain: Path, formats: tuple[str, ...] = ("pt2", "onnx")) -> Path:
    """``atdt_train export`` of the trained experiment, unless ``chain`` already holds that chain."""
    from atdt_ros.artifact import ArtifactError, load_metadata, sha256_file
    from atdt_train.cli import main as cli_main
    from atdt_train.checkpoints import weights_path
    from atdt_train.stages import e1_stage

    stages = (("n1", e1_stage(exp, "B")), ("n2", "n2"), ("g", "g")) + ((("st", "st"),) if exp.steps.st > 0 else ())
    sources = {name: sha256_file(weights_path(exp, stage)) for name, stage in stages}  # as the export records
    try:
        meta = load_metadata(chain)
        if meta.sources == sources and all(f in meta.formats for f in formats):
            print(f"chain up to date: {chain} ({', '.join(meta.formats)})", flush=True)
            return chain
    except ArtifactError:
        pass
    code = cli_main(["export", str(exp.output_dir), "--out", str(chain), "--formats", ",".join(formats),
                     "--parity-frames", "4"])
    if code != 0:
        raise RuntimeError(f"atdt_train export {exp.output_dir} --out {chain} failed (status {code})")
    return chain


def make_demo_bag(exp: Any, bag: Path, rate_hz: float) -> Path:
    """B's test split as a rosbag2 at the network resolution, unless it exists already."""
    from atdt_train.bag import dataset_frames, write_bag

    if (bag / "metadata.yaml").is_file():
        print(f"bag exists: {bag}", flush=True)
        return bag
    size = (exp.data.height, exp.data.width)
    n, frames = dataset_frames(exp.domains.B.test, exp.domains.B.kind, size)
    write_bag(frames, bag, rate_hz=rate_hz, progress=True, total=n)
    return bag


def _row(metrics: dict[str, Any], task: str) -> list[str]:
    from atdt_ros.present import depth_value, percent

    if task == "semantic":
        from .report import thin_iou

        thin = thin_iou(metrics) if "iou" in metrics else None
        return [percent(metrics.get("miou")), percent(metrics.get("accuracy")), percent(thin)]
    return [depth_value(m, metrics.get(m)) for m in ("abs_rel", "rmse", "delta1")]


def summary_table(results: dict[str, Any], task: str, replays: dict[str, dict[str, Any]],
                  precision: str = "32") -> str:
    """The Baseline / AT/DT / Oracle table on B (and A), with the node's replay rows and latency."""
    from atdt_ros.present import DEPTH_NAMES

    from .report import gap_closed, method_labels, transfer_name

    head = (["mIoU %", "Acc %", "thin %"] if task == "semantic"
            else [DEPTH_NAMES["abs_rel"], DEPTH_NAMES["rmse"], f"{DEPTH_NAMES['delta1']} %"])
    cfg = results.get("config", {})
    atdt = method_labels(cfg)["atdt"]
    names = {"baseline": "Baseline (N2 trained on A)", "baseline_adabn": "Baseline + AdaBN",
             "atdt": f"{atdt}  D2(G(E1(x)))", "atdt_adabn": f"{atdt} + AdaBN",
             "atdt_st": f"{atdt} + self-training", "oracle": "Oracle (N2 trained on B)"}
    node_chain = names["atdt_st"] if cfg.get("steps", {}).get("st", 0) > 0 else atdt
    lines = []
    for domain in ("B", "A"):
        rows = results.get("domains", {}).get(domain, {}).get("task2", {})
        if not rows:
            continue
        lines.append(f"{task} on domain {domain} ({results['domains'][domain].get('frames', '?')} test frames)")
        lines.append(f"  {'':28s}" + "".join(f"{h:>10s}" for h in head))
        for key, label in names.items():
            if key in rows:
                lines.append(f"  {label:28s}" + "".join(f"{v:>10s}" for v in _row(rows[key], task)))
        if domain == "B" and "accuracy" in replays:
            node = replays["accuracy"]
            lines.append(f"  {f'node, bag replay ({node_chain})':28s}"
                         + "".join(f"{v:>10s}" for v in _row(node[task], task)))
        if domain == "B" and "accuracy" in replays and precision != "32":
            lines.append(f"  (offline rows computed with {precision} autocast, the node runs the fp32 export)")
        for method in ("atdt", "atdt_st"):
            closed = gap_closed(rows, "miou" if task == "semantic" else "abs_rel", method) \
                if domain == "B" else math.nan
            if not math.isnan(closed):
                lines.append(f"  {names[method].split('  ')[0]} closes {100 * closed:.0f}% of the Baseline->Oracle "
                             f"{'mIoU' if task == 'semantic' else 'Abs Rel'} gap on B")
        lines.append("")
    if task == "semantic":
        lines.append(f"G trained by {transfer_name(cfg)}; thin = mean IoU of person, pole and traffic sign")
    for mode, r in replays.items():
        lat, f = r["latency"], r["frames"]
        lines.append(f"node latency ({mode} replay, {r['node_diagnostics'].get('backend', '?')} backend): "
                     f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, max {lat['max_ms']:.1f} ms; "
                     f"{r['throughput_hz']:.1f} frames/s answered; {f['answered']}/{f['published']} frames "
                     f"answered, {f['dropped']} dropped"
                     + (f" (bag recorded at {r['recorded_rate_hz']:.0f} Hz)" if mode == "realtime" else ""))
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """The ``demo`` command."""
    from atdt_ros.replay import ReplayError, ReplayOptions, replay, start_node, stop_node
    from atdt_train.config import ConfigError, load_experiment

    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM?max_msg_size=4MB&sockets_size=16MB")
    os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps()
    template = _repo_path(args.experiment)
    try:
        probe = load_experiment(template, args.overrides)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    size = (probe.data.height, probe.data.width)

    steps.begin("simulate", f"simulating A (synthetic) and B (realistic), {args.train_frames} train + "
                            f"{args.test_frames} test frames each at {size[1]}x{size[0]}")
    lists = simulate_domains(out, size, args.train_frames, args.test_frames)
    overrides = [f"out_dir={out / 'experiment'}"]
    for domain, (preset, _) in DOMAINS.items():
        overrides += [f"domains.{domain}.train={lists[domain]['train']}", f"domains.{domain}.test={lists[domain]['test']}",
                      f"domains.{domain}.kind=sim", f"domains.{domain}.name={preset}"]
    exp = load_experiment(template, overrides + list(args.overrides))

    results = train_and_evaluate(exp, steps)
    steps.begin("export", f"exporting the Eq. 4 chain -> {out / 'chain'}")
    chain = export_demo_chain(exp, out / "chain")
    steps.begin("bag", f"writing B's test split as a rosbag2 -> {out / 'bag_B'}")
    bag = make_demo_bag(exp, out / "bag_B", args.rate)

    steps.begin("replay", "starting atdt_perception and replaying the bag (accuracy, then real time)")
    params = _repo_path("config/perception.yaml")
    # trusted: this run exported the chain a moment ago (backend torch would unpickle it)
    node = start_node(str(chain), NAMESPACE, str(params) if params.is_file() else None, args.backend,
                      out / "node.log", trust_model_code=True)
    replays: dict[str, dict[str, Any]] = {}
    try:
        for mode in ("accuracy", "realtime"):
            replays[mode] = replay(ReplayOptions(
                bag=str(bag), out=str(out / f"replay_{mode}"), mode=mode, namespace=NAMESPACE,
                timeout=args.timeout, min_depth=exp.depth.min_depth, max_depth=exp.depth.max_depth))
    except ReplayError as exc:
        log.error("%s (node log: %s)", exc, out / "node.log")
        return 1
    finally:
        code = stop_node(node)
        if code not in (0, -signal.SIGINT):
            log.warning("the node exited with status %s (log %s)", code, out / "node.log")

    steps.begin("report", "summary")
    steps.end()
    table = summary_table(results, exp.task2, replays, str(exp.trainer.precision))
    summary = {"out": str(out), "experiment": str(exp.output_dir), "direction": exp.direction,
               "step_seconds": steps.times, "total_seconds": round(time.monotonic() - steps.started, 1),
               "replays": {m: {"report": str(out / f"replay_{m}" / "report.md"), "latency": r["latency"],
                               "frames": r["frames"], "semantic_miou": r["semantic"]["miou"],
                               "depth_abs_rel": r["depth"]["abs_rel"]} for m, r in replays.items()}}
    from atdt_ros.files import atomic_write

    atomic_write(out / "demo.json", json.dumps(summary, indent=2, allow_nan=True) + "\n")
    print()
    print(f"AT/DT demo ({'Dep->Sem' if exp.direction == 'dep2sem' else 'Sem->Dep'}: {exp.task1} is "
          f"task 1, {exp.task2} task 2; A = synthetic, B = realistic)")
    print(table)
    print()
    print("step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.times.items())
          + f"; total {summary['total_seconds']:.0f}")
    print(f"results: {exp.output_dir / 'report.md'} (tables, figures)")
    print(f"replays: {out / 'replay_accuracy' / 'report.md'}, {out / 'replay_realtime' / 'report.md'}")
    print(f"output directory: {out.resolve()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser("demo", help="the whole job end to end on embedded defaults (make demo)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help=f"experiment template (default {DEFAULT_EXPERIMENT}); its filelists are replaced")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment setting, e.g. --set steps.n1=100 (repeatable)")
    p.add_argument("--train-frames", type=positive_int, default=240, help="training frames per domain (default 240)")
    p.add_argument("--test-frames", type=positive_int, default=40, help="test frames per domain (default 40)")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the B bag, Hz (default 10)")
    p.add_argument("--backend", default=None, help="node backend (default: the params file's, auto)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the node (default 120)")
    p.set_defaults(func=_guarded)


def _guarded(args: argparse.Namespace) -> int:
    from atdt_train.config import ConfigError
    from atdt_train.data import DatasetError

    try:
        return run_demo(args)
    except (ConfigError, DatasetError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    from atdt_train.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
