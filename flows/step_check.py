"""Checking that a FINN transformation step did not change what the graph computes.

Every step of :mod:`flows.finn_steps` is followed by FINN's Python execution of the new graph on
a few images and a comparison with the previous graph. Graphs change shape across the flow (the
dataflow partition drops the software tail, for example), so the comparison follows tensor
names: the new graph's output is looked up among all tensors of the previous execution, and
falls back to the previous graph's output when the name is not there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mcel_train.errors import UserError
from mcel_train.finn_graph import execute, output_of


class StepChangedOutputError(UserError, RuntimeError):
    """A transformation step changed the outputs of the graph (on this network: one line, exit 2)."""


@dataclass(frozen=True)
class StepCheck:
    """Outcome of one step's comparison."""

    n: int
    output: str
    max_abs_diff: float
    exact: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare_step(
    step: str, previous, current, inputs: np.ndarray, rel_tol: float = 1e-5
) -> StepCheck:
    """Raise :class:`StepChangedOutputError` naming ``step`` if ``current`` computes otherwise."""
    prev_runs = execute(previous, inputs, full_context=True)
    oname = current.graph.output[0].name
    key = oname if oname in prev_runs[0] else previous.graph.output[0].name
    ref = np.stack([r[key].reshape(-1) for r in prev_runs]).astype(np.float64)
    got = output_of(current, inputs)
    if ref.shape != got.shape:
        raise StepChangedOutputError(
            f"step {step!r} changed the output shape of {key!r}: {ref.shape} -> {got.shape}"
        )
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    # Integer tensors (everything after the software tail is split off) must match exactly;
    # float logits before that may differ by re-associated float rounding only.
    exact = bool(np.all(ref == np.round(ref)))
    tol = 0.0 if exact else rel_tol * max(1.0, float(np.max(np.abs(ref))))
    # a class change counts where the new output's top class is not a top class of the
    # reference (within the tolerance): on tied outputs (an untrained network) argmax picked
    # another of the tied classes after a rounding of 6e-8
    chosen = ref[np.arange(len(ref)), got.argmax(1)] if ref.size else ref
    if diff > tol or (ref.size and bool((chosen < ref.max(1) - tol).any())):
        bad = int(np.sum(np.any(ref != got, axis=1)))
        raise StepChangedOutputError(
            f"step {step!r} changed the outputs ({key!r} vs {oname!r}) on {bad}/{len(inputs)} "
            f"inputs, max |diff| {diff:.6g} (tolerance {tol:.3g})"
        )
    return StepCheck(n=len(inputs), output=oname, max_abs_diff=diff, exact=exact)
