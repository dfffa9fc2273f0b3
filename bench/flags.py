"""The bench scripts' flags, checked the way the mcel CLI checks its own.

Why: a benchmark runs for minutes before it writes its record, so a wrong flag must stop it at
once in one line naming the flag (mcel_train/one_line_parser.py, as the mcel CLI), not end in a traceback
after the work (``--out`` into a folder) or write a record measured on nothing (``--maps 0``).
:func:`run_main` turns the errors a run raises on bad input (a run folder without a training
stage, a build missing) into the same one line. Records name runs by their folder name
(mcel_train.stage.run_name), never by a path of the machine they ran on.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mcel_train.errors import UserError
from mcel_train.faults.generate import rate_problem
from mcel_train.one_line_parser import OneLineParser
from mcel_train.stage import blocking_file, stage_folder_problem


class BenchParser(OneLineParser):
    """A bench script's parser: ``--force`` is added, and an existing ``--out`` record is refused
    without it (the committed records under ``bench/results/`` are cited by the README; a rerun
    must not replace one by accident)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_argument("--force", action="store_true", help="replace an existing --out record")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        out = getattr(parsed, "out", None)
        if out is not None and Path(out).exists() and not parsed.force:
            self.error(f"argument --out: {out} exists; pass --force to replace it, or give another --out")
        return parsed


def parser(doc: str | None, prog: str | None = None) -> BenchParser:
    """The script's argument parser (its docstring's first paragraph as the description)."""
    return BenchParser(prog=prog or Path(sys.argv[0]).name, description=(doc or "").split("\n\n")[0])


def count(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum`` (``type=count(1)``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"want a whole number >= {minimum}, got {value}")
        return value
    return parse


def _number(text: str, ok: Callable[[float], bool], want: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want {want}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"want {want}, got {text!r}")
    return value


def rate(text: str) -> float:
    """A bit error rate in [0, 1]."""
    return _number(text, lambda v: 0.0 <= v <= 1.0, "a bit error rate in [0, 1]")


def rates(text: str) -> list[float]:
    """Comma-separated bit error rates, at least one, none twice (as ``mcel sweep --ber``: the
    same maps twice measure nothing new, and a path choice made at the first would be reused)."""
    values = [rate(t.strip()) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"want comma-separated bit error rates, got {text!r}")
    problem = rate_problem(values, "flip")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return values


def ascending_rates(text: str) -> list[float]:
    """:func:`rates` in ascending order, as a sweep takes them."""
    values = rates(text)
    if values != sorted(values):
        raise argparse.ArgumentTypeError(f"want the rates in ascending order, as a sweep takes them, got {text!r}")
    return values


def positive(text: str) -> float:
    """A finite number > 0."""
    return _number(text, lambda v: v > 0, "a number > 0")


def run_folder(text: str) -> Path:
    """An existing run folder (what is inside is checked by the code that reads it); a stage
    folder given instead is named with its run, as the mcel CLI does."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no run folder {text!r}")
    problem = stage_folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def record_path(text: str) -> Path:
    """Where the JSON record goes: a ``.json`` file whose folder can be made (checked now, not
    after the benchmark)."""
    path = Path(text)
    if path.suffix != ".json":
        raise argparse.ArgumentTypeError(f"want a .json file, got {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; want a .json file")
    blocker = blocking_file(path.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{blocker} is a file, not a folder")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:  # a file made and removed where the record's folder will be made (root passes os.access)
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot write under {ancestor} ({exc.strerror}); give another --out") from None
    return path


def run_main(main: Callable[[], int | None]) -> int:
    """Call ``main``; an error the user can fix (mcel_train.errors.UserError) is one line, exit 2."""
    try:
        return main() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
