"""The ``atdt_replay`` command line."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any


from atdt_ros.replay.common import DEFAULT_TOPICS, MODES, NODE_NAME, ReplayError, log
from atdt_ros.present import number
from atdt_ros.replay.run import ReplayOptions, replay


def summary_line(results: dict[str, Any]) -> str:
    """One line for the terminal: counts, latency, mIoU and Abs Rel."""
    f, lat = results["frames"], results["latency"]
    return (f"{results['mode']}: {f['answered']}/{f['published']} frames answered "
            f"({f['dropped']} dropped, {f['malformed']} malformed); latency p50 {number(lat['p50_ms'], 1)} ms, "
            f"p95 {number(lat['p95_ms'], 1)} ms, max {number(lat['max_ms'], 1)} ms; "
            f"{number(results['throughput_hz'], 1)} Hz; mIoU {number(results['semantic']['miou'], 2, 100)}, "
            f"Abs Rel {number(results['depth']['abs_rel'], 3)}")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``atdt_replay`` command line."""
    p = argparse.ArgumentParser(prog="atdt_replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True,
                   help="rosbag2 directory (metadata.yaml + mcap or sqlite3), a bare .mcap file, or a "
                        "directory holding one .mcap file")
    p.add_argument("--mode", choices=MODES, default="accuracy",
                   help="realtime: recorded rate, drops allowed; accuracy: one frame at a time (default)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--node-namespace", default="", help="namespace of the node (its input is NS/image)")
    p.add_argument("--node-name", default=NODE_NAME, help=f"node name (outputs NS/NAME/depth...; default {NODE_NAME})")
    p.add_argument("--timeout", type=_positive, default=30.0,
                   help="seconds to wait for the node (discovery, warm-up, each answer); default 30")
    p.add_argument("--malformed-wait", type=_positive, default=1.0,
                   help="accuracy mode: seconds to wait for an answer to a malformed frame (default 1)")
    p.add_argument("--speed", type=_positive, default=1.0, help="realtime mode: multiple of the recorded rate")
    p.add_argument("--min-depth", type=_positive, default=None,
                   help="depth metric range, metres (default: the chain's metadata with --model, else 0.5)")
    p.add_argument("--max-depth", type=_positive, default=None,
                   help="depth metric range, metres (default: the chain's metadata with --model, else 80)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N frames")
    p.add_argument("--figure-rows", type=int, default=4, help="frames in the qualitative figure (default 4)")
    for role, topic in DEFAULT_TOPICS.items():
        p.add_argument(f"--{role.replace('_', '-')}-topic", default=topic, help=f"bag topic of the {role} (default {topic})")
    p.add_argument("--model", default=None, help="start atdt_perception on this exported chain for the replay")
    p.add_argument("--params-file", default=None, help="with --model: the node's ROS parameters file")
    p.add_argument("--backend", default=None, help="with --model: the node's backend parameter")
    p.add_argument("--trust-model-code", action="store_true",
                   help="with --model: let the node load chain.pt2 (backends torch/tensorrt "
                        "unpickle it, which can run code); only for a model you trust")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console script ``atdt_replay``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.min_depth is not None and args.max_depth is not None and args.min_depth >= args.max_depth:
        log.error("--min-depth %g must be below --max-depth %g", args.min_depth, args.max_depth)
        return 2
    if args.limit is not None and args.limit <= 0:
        log.error("--limit must be positive, got %d", args.limit)
        return 2
    opts = ReplayOptions(
        bag=args.bag, out=args.out, mode=args.mode, namespace=args.node_namespace, node_name=args.node_name,
        topics={role: getattr(args, f"{role}_topic") for role in DEFAULT_TOPICS},
        timeout=args.timeout, malformed_wait=args.malformed_wait, speed=args.speed,
        min_depth=args.min_depth, max_depth=args.max_depth, limit=args.limit,
        figure_rows=max(0, args.figure_rows), model=args.model, params_file=args.params_file,
        backend=args.backend, trust_model_code=args.trust_model_code,
        progress=not args.no_progress)
    try:
        results = replay(opts)
    except ReplayError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary_line(results))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
