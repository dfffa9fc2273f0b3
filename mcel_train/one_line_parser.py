"""argparse whose errors are one line, like every other error the user can fix.

A leaf module: the ``mcel`` CLI (flows/cli.py), ``python -m flows.paper_reproduction`` and the
bench scripts (bench/flags.py, which must not import the hw_sim package) all parse with it.
"""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong flag or value is one ``error:`` line (naming the flag and where the
    help is), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


__all__ = ["OneLineParser"]
