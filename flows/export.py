"""Brevitas model -> QONNX file, and the check that the file computes what torch computes.

The exported graph takes the unscaled integer input (uint8 pixels as float, or +-1) in the
model's own input shape and returns the float logits (integer accumulator times the last layer's
scale). ``check_export`` runs QONNX's reference executor on real images and compares with torch:
an export that changes a prediction is an error here, before FINN ever sees the graph.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

QONNX_FILE = "model.qonnx.onnx"
INPUT_KINDS = ("uint8", "bipolar")


class ExportMismatchError(RuntimeError):
    """The exported graph's outputs differ from torch's."""


@dataclass(frozen=True)
class ExportCheck:
    """Result of comparing QONNX execution with torch on ``n`` inputs."""

    n: int
    argmax_equal: int
    max_abs_diff: float
    atol: float

    def to_dict(self) -> dict:
        return asdict(self)


def export_qonnx_model(
    model: torch.nn.Module, input_shape: tuple[int, ...], input_kind: str, out_dir: Path
) -> Path:
    """Export ``model`` (in eval mode) to ``out_dir/model.qonnx.onnx`` and return the path.

    ``input_shape`` excludes the batch dimension. The TorchScript exporter is used
    (``dynamo=False``): torch 2.13's dynamo exporter cannot trace Brevitas' quant tensors.
    """
    with warnings.catch_warnings():  # an optional kernel package Brevitas mentions on import, not used here
        warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
        from brevitas.export import export_qonnx

    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / QONNX_FILE
    model = model.eval()
    example = torch.ones((1, *input_shape), dtype=torch.float32)
    with torch.no_grad():
        export_qonnx(model, example, export_path=str(path), dynamo=False)
    return path


def qonnx_execute(onnx_path: Path, inputs: np.ndarray) -> np.ndarray:
    """Run the QONNX graph image by image (batch 1, as exported) and stack the outputs."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(onnx_path)))
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    outs = [
        execute_onnx(model, {iname: x[None].astype(np.float32)})[oname].reshape(-1)
        for x in inputs
    ]
    return np.stack(outs)


def torch_logits(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Float logits of ``model`` on ``inputs`` (already in the model's input encoding)."""
    with torch.no_grad():
        return model.eval()(torch.from_numpy(inputs.astype(np.float32))).numpy()


def check_export(
    model: torch.nn.Module, onnx_path: Path, inputs: np.ndarray, atol: float = 1e-4
) -> ExportCheck:
    """Compare QONNX execution with torch on ``inputs``; raise if any argmax or value differs.

    ``atol`` is relative to the largest logit magnitude (float re-association in onnxruntime
    versus torch); the integer structure makes larger differences a real bug.
    """
    ref = torch_logits(model, inputs)
    got = qonnx_execute(Path(onnx_path), inputs)
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    tol = atol * max(1.0, float(np.max(np.abs(ref))))
    # Integer logits tie often; the class is decided on the integer accumulators (logits / scale,
    # rounded), where float re-association noise cannot flip a tie.
    scale = 1.0
    if hasattr(model, "logits_and_scale"):
        with torch.no_grad():
            scale = float(model.logits_and_scale(torch.from_numpy(inputs[:1].astype(np.float32)))[1])
    same = int(np.sum(np.round(ref / scale).argmax(1) == np.round(got / scale).argmax(1)))
    check = ExportCheck(n=len(inputs), argmax_equal=same, max_abs_diff=diff, atol=tol)
    if same != len(inputs) or diff > tol:
        raise ExportMismatchError(
            f"the QONNX export differs from torch: argmax equal on {same}/{len(inputs)}"
            f" inputs, max |diff| {diff:.3g} (tolerance {tol:.3g})"
        )
    return check
