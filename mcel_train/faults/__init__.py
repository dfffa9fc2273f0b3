"""Fault maps, the fault models that generate them, and their application to stored integers."""

from mcel_train.faults.apply import apply_map, apply_maps_stacked, apply_to_values
from mcel_train.faults.faultmap import FAULT_KINDS, FaultMap, FaultMapError
from mcel_train.faults.generate import (
    FAULT_MODELS,
    FaultModel,
    FaultModelError,
    generate_map,
    stored_bits,
)

__all__ = [
    "FAULT_KINDS",
    "FAULT_MODELS",
    "FaultMap",
    "FaultMapError",
    "FaultModel",
    "FaultModelError",
    "apply_map",
    "apply_maps_stacked",
    "apply_to_values",
    "generate_map",
    "stored_bits",
]
