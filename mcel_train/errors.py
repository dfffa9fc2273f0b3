"""The one base class of errors the user can fix, and the kinds the CLI reports as one line.

Why a leaf module: every package raises these (bad input, a corrupted or incompatible artifact,
a missing tool, a refused overwrite), and the CLI (flows/cli.py) catches the base class only, so
no module has to know the others' exception types and no import can go the wrong way.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: printed as one ``error:`` line, exit status 2, no traceback."""


class UserInputError(UserError, ValueError):
    """A wrong value of a flag, a config field or a make variable."""


class ArtifactError(UserError, ValueError):
    """A file a stage reads is truncated, of another version, or inconsistent with its build."""


class ToolMissingError(UserError, RuntimeError):
    """A program or package a stage needs is not installed (the message names the package)."""


class StageExistsError(UserError, FileExistsError):
    """A stage's output exists and ``--force`` was not given."""
