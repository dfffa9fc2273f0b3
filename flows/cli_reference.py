"""``docs/cli.md``: every ``mcel`` command's ``--help``, generated from the parser itself, so the
reference lists every flag the code has and nothing it lacks (tests/test_architecture.py checks
that the committed file is what this gives). Regenerate after changing a flag:
``.venv/bin/python -m flows.cli_reference > docs/cli.md``."""

from __future__ import annotations

import argparse
import os
import sys

WIDTH = "100"  # help is wrapped to the terminal's width: fixed, so the file does not depend on it


def reference() -> str:
    """The markdown text of docs/cli.md."""
    from flows.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        helps = {name: command.format_help().rstrip() for name, command in sub.choices.items()}
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    parts = ["# `mcel` command reference", "",
             "Generated from the parser (`.venv/bin/python -m flows.cli_reference > docs/cli.md`); the README",
             "explains what each command is for. Every command takes the global `--debug` before it",
             "(`mcel --debug COMMAND ...`): a traceback for every error instead of the one `error:` line.", ""]
    for name, text in helps.items():
        parts += [f"## `mcel {name}`", "", "```text", text, "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
