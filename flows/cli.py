"""The ``mcel`` command line: one entry point, one sub-command per pipeline stage.

Each stage's command lives in its own module and registers itself through an
``add_parsers(subparsers)`` function, so this file only dispatches. It lives in ``flows``, the
top package, because it fronts all three (docs/architecture.md). Every error the user can fix
derives from :class:`mcel_train.errors.UserError` and prints one ``error:`` line, exit 2; a
traceback appears only for real bugs, or for every error with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows import commands as build_commands
from flows import commands_experiment
from flows.campaign import commands as campaign_commands
from hw_sim import commands as sim_commands
from mcel_train import commands_faults, commands_train
from mcel_train.errors import UserError, UserInputError
from mcel_train.one_line_parser import OneLineParser
from mcel_train.stage import stage_folder_problem

# Modules that contribute sub-commands, in the order of the pipeline.
COMMAND_MODULES = (commands_train, commands_faults, commands_experiment, build_commands,
                   campaign_commands, sim_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mcel",
        description="Bit-error tolerance of quantized networks: train (MCEL), build (FINN), simulate (cocotb).",
    )
    parser.add_argument("--debug", action="store_true", help="show a traceback for every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        problem = stage_folder_problem(getattr(args, "run", None))
        if problem:
            raise UserInputError(problem)
        code = args.func(args)
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def _one_line(exc: BaseException) -> str:
    """The message on one line (a multi-line message keeps its first line)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
