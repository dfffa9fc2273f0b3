"""A FINN build's dataflow graph: where it is, and FINN's Python execution of it.

Why here, in the lowest package: the build flow checks every transformation step with this
execution (flows/step_check.py), the simulation side cross-checks its fast predictor against it
(hw_sim/predict.py), and the integer model of a build (mcel_train/intnet_finn.py) reads the same
graph. One module owns "the graph of a build" for all three.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mcel_train.errors import ArtifactError

BUILD_RECORD = "build.json"


def load_graph(path: str | Path, fix: str = "export or build the run again with --force"):
    """An ONNX graph as FINN's ``ModelWrapper``; a truncated or foreign file is one clear error
    ending in ``fix`` (the default fits a run's own artifacts: a user's file needs another)."""
    from google.protobuf.message import DecodeError
    from qonnx.core.modelwrapper import ModelWrapper

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found")
    try:
        return ModelWrapper(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is not a readable ONNX graph ({str(exc)[:120]}); {fix}") from None


def dataflow_graph_path(build_dir: str | Path) -> Path:
    """The build's final dataflow graph (the one whose nodes became RTL), from ``build.json``.

    The record stores it relative to the build folder (``dataflow_model``), so a moved build
    still finds it.
    """
    build_dir = Path(build_dir)
    record_path = build_dir / BUILD_RECORD
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{record_path} not found: run `mcel build` for this run first") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{record_path} is not valid JSON ({exc}); rebuild with `mcel build --force`") from None
    rel = record.get("dataflow_model")
    if not rel:
        raise ArtifactError(f"{record_path} names no dataflow_model; rebuild with `mcel build --force`")
    path = build_dir / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} (the build's dataflow graph) is missing; rebuild with `mcel build --force`")
    return path


def _prepare(model):
    """Executable copy: HW nodes run their Python model (FINN calls this exec mode 'cppsim')."""
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
    from finn.util.fpgadataflow import is_fpgadataflow_node

    if any(is_fpgadataflow_node(n) for n in model.graph.node):
        model = model.transform(SetExecMode("cppsim"))
    return model


def execute(model, inputs: np.ndarray, full_context: bool = False) -> list[dict[str, np.ndarray]]:
    """FINN Python execution of ``model`` on each input (batch 1); one result dict per input."""
    import finn.core.onnx_exec as oxe

    model = _prepare(model)
    iname = model.graph.input[0].name
    ishape = tuple(model.get_tensor_shape(iname))
    results = []
    for x in inputs:
        ctx = {iname: np.asarray(x, dtype=np.float32).reshape(ishape)}
        results.append(oxe.execute_onnx(model, ctx, return_full_exec_context=full_context))
    return results


def output_of(model, inputs: np.ndarray) -> np.ndarray:
    """The graph's single output on every input, flattened per input, as float64."""
    oname = model.graph.output[0].name
    return np.stack([r[oname].reshape(-1) for r in execute(model, inputs)]).astype(np.float64)
