"""The ``run``, ``stage`` and ``evaluate`` commands: the stages of stages.py, then evaluate.py.

Orchestration only: training lives in :mod:`atdt_train.stages`, evaluation and reports in
:mod:`atdt_train.evaluate`; this module is the one that imports both.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from typing import Any

from .config import ConfigError, Experiment, load_experiment
from .evaluate import evaluate_experiment
from .checkpoints import stage_dir
from .runtime import global_rank
from .stages import STAGE_NAMES, save_experiment_copy, train_stage, training_stages

log = logging.getLogger(__name__)


def run_experiment(exp: Experiment) -> dict[str, Any] | None:
    """All stages in order, skipping completed ones, then evaluation (on rank zero only)."""
    save_experiment_copy(exp)
    for name in training_stages(exp):
        train_stage(exp, name)
    if global_rank() != 0:
        return None
    return evaluate_experiment(exp)


# ----------------------------------------------------------------------------- CLI

def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file (config/experiments/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set steps.n1=100 (repeatable)")


def register(subparsers: Any) -> None:
    """Add the ``run``, ``stage`` and ``evaluate`` subcommands."""
    p = subparsers.add_parser("run", help="run every AT/DT stage of an experiment, then evaluate",
                              description="Train N1, N2, G and the Oracle (skipping finished stages, "
                                          "resuming killed ones), evaluate, write results.json, report.md, figures.")
    _add_common(p)
    p.set_defaults(func=_cmd_run)
    p = subparsers.add_parser("stage", help="run one stage of an experiment")
    p.add_argument("name", choices=STAGE_NAMES, help="stage to run")
    _add_common(p)
    p.add_argument("--force", action="store_true", help="re-run a finished stage (its outputs are replaced)")
    p.set_defaults(func=_cmd_stage)
    p = subparsers.add_parser("evaluate", help="evaluate a trained experiment and write its report")
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)


def guarded(fn):
    """A command function whose expected errors (config, files, data) print one line and exit 2."""
    def wrapper(args: argparse.Namespace) -> int:
        from .lit import NonFiniteLossError

        try:
            return fn(args)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            log.error("%s", exc)
            return 2
        except NonFiniteLossError as exc:
            log.error("%s", exc)
            return 1
        except Exception as exc:
            from .data import DatasetError

            if isinstance(exc, DatasetError):
                log.error("%s", exc)
                return 2
            raise
    return wrapper


@guarded
def _cmd_run(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.overrides)
    results = run_experiment(exp)
    if results is not None:
        print(f"results: {exp.output_dir / 'results.json'}\nreport:  {exp.output_dir / 'report.md'}")
    return 0


@guarded
def _cmd_stage(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.overrides)
    save_experiment_copy(exp)
    if args.name == "evaluate":
        return _evaluate(exp)
    names = [args.name]
    if args.name == "n1" and not exp.shared:
        names = ["n1_A", "n1_B"]
    for name in names:
        if args.force and global_rank() == 0:
            # a forced stage trains from step 0: its checkpoints go too, or it would resume from
            # last.ckpt at its final step and finish at once without training (logs are kept)
            folder = stage_dir(exp, name)
            for f in ("done.json", "weights.pt", "time.json"):
                (folder / f).unlink(missing_ok=True)
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        train_stage(exp, name)
    return 0


def _evaluate(exp: Experiment) -> int:
    if global_rank() != 0:
        return 0
    evaluate_experiment(exp)
    print(f"results: {exp.output_dir / 'results.json'}\nreport:  {exp.output_dir / 'report.md'}")
    return 0


@guarded
def _cmd_evaluate(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment, args.overrides)
    return _evaluate(exp)
