"""argparse whose errors are one line, like every other error the user can fix.

A leaf module: the ``mcel`` CLI (flows/cli.py), ``python -m flows.paper_reproduction`` and the
bench scripts (bench/flags.py, which must not import the hw_sim package) all parse with it.
"""

from __future__ import annotations

import argparse
import re

# A negative number as a value, also in scientific notation: argparse's own pattern takes only
# "-3" and "-0.5", so "--ber -1e-3" was "expected one argument" instead of the value's own check
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong flag or value is one ``error:`` line (naming the flag and where the
    help is), exit 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = _NEGATIVE_NUMBER  # read by parse_args (CPython's argparse)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


__all__ = ["OneLineParser"]
