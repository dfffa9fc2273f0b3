"""The exception types that mean "the user's input is wrong" (printed as one line, exit 2).

Stages raise these (or subclasses) for bad configs, missing files and refused overwrites; the CLI
turns them into a single ``error:`` message instead of a traceback.
"""

from __future__ import annotations

from mcel_train.config import ConfigError
from mcel_train.data import DatasetNotFoundError
from mcel_train.train import RunExistsError


class UserInputError(ValueError):
    """Generic bad input from the user (a stage's own checks)."""


def _optional(module: str, name: str) -> tuple[type[BaseException], ...]:
    try:
        mod = __import__(module, fromlist=[name])
        return (getattr(mod, name),)
    except (ImportError, AttributeError):
        return ()


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetNotFoundError,
    RunExistsError,
    UserInputError,
    FileNotFoundError,
    FileExistsError,
    *_optional("mcel_train.faults", "FaultMapError"),
    *_optional("mcel_train.faults.generate", "FaultModelError"),
    *_optional("hw_sim.sim", "SimulationHangError"),
    *_optional("flows.hdl_nodes", "UnsupportedLayerError"),
    *_optional("flows.folding", "FoldingError"),
    *_optional("flows.verilate", "VerilatorError"),
)
