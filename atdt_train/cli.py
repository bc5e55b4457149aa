"""The ``atdt_train`` command line: one subcommand per step of the AT/DT workflow.

Each subcommand lives in the module that does the work; that module exposes
``register(subparsers)`` which adds its parser and sets ``func`` (called with the parsed
arguments, returning an exit status). Heavy imports stay inside the command functions so that
``atdt_train --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, what it provides) in the order the workflow uses them.
COMMAND_MODULES: tuple[str, ...] = (
    "atdt_train.sim.command",      # simulate
    "atdt_train.data.commands",    # filelist, proxy-depth
    "atdt_train.data.pixel_da",    # translate
    "atdt_train.run",              # run, stage, evaluate
    "atdt_train.suite",            # suite
    "atdt_train.export",           # export
    "atdt_train.bag",              # make-bag
    "atdt_train.demo",             # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atdt_train",
        description="AT/DT: learn across tasks and domains (Zama Ramirez et al., ICCV 2019).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part not installed in this build
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
