"""The ``mcel`` command line: one entry point, one sub-command per pipeline stage.

Each stage's command lives in its own module and registers itself through an
``add_parsers(subparsers)`` function, so this file only dispatches. Expected user errors
(bad config, missing data, existing run folder, ...) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands; a module whose optional dependencies are missing is
# skipped so that the remaining stages still work.
COMMAND_MODULES = (
    "mcel_train.commands_train",
    "mcel_train.commands_faults",
    "mcel_train.commands_experiment",
    "flows.commands",
    "flows.campaign.commands",
    "hw_sim.commands",
)


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcel",
        description="Bit-error tolerance of quantized networks: train (MCEL), build (FINN), simulate (cocotb).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mcel_train.errors import USER_ERRORS

    try:
        code = args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
