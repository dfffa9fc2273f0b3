"""Accuracy of an integer network under many fault maps at once.

Batched over images *and* maps: the faulty weights of ``M`` maps are stacked into
``(M, out, in)`` tensors and every layer is one batched matmul (or grouped conv). The first
layer sees the same input under every map, so its accumulators are computed once for the clean
weights and each map only adds a sparse correction ``x @ (W_faulty - W_clean)^T`` — a few
thousand non-zeros per map instead of a dense matmul. All arithmetic stays exact (see
:mod:`mcel_train.intnet`), so at rate 0 the clean accuracy is reproduced exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mcel_train.faults.apply import apply_maps_stacked
from mcel_train.faults.faultmap import FaultMap
from mcel_train.intnet import FLOAT32_EXACT, IntNetwork
from mcel_train.memory import Memory


@dataclass
class MapEvaluation:
    """Per-map accuracy ``(M,)`` and per-image predictions ``(M, N)``."""

    accuracy: np.ndarray
    predictions: np.ndarray


def layer_memories(net: IntNetwork, memories: Sequence[Memory] | None) -> list[Memory | None]:
    """The memory holding each layer's weights (matched by ``layer_index``), shape-checked."""
    memories = net.memories() if memories is None else list(memories)
    out: list[Memory | None] = [None] * len(net.layers)
    for mem in memories:
        if mem.kind != "weights":
            raise ValueError(f"memory {mem.name!r}: only weight memories map onto this network")
        i = mem.layer_index
        if not 0 <= i < len(net.layers):
            raise ValueError(f"memory {mem.name!r}: layer_index {i} outside the network")
        shape = net.layers[i].weight.shape
        if (mem.rows, mem.cols) != tuple(shape):
            raise ValueError(
                f"memory {mem.name!r} is {mem.rows}x{mem.cols}, layer {i} weights are {shape}"
            )
        if out[i] is not None:
            raise ValueError(f"two memories for layer {i}")
        out[i] = mem
    return out


class MapEvaluator:
    """Evaluates fault maps on a fixed test set; reuse it across calls (it caches layer 0).

    ``rows`` bounds the (map, image) pairs processed at once, so the memory use is about
    ``rows * widest layer * 4`` bytes per activation tensor.
    """

    def __init__(
        self, net: IntNetwork, x: torch.Tensor, labels: np.ndarray,
        memories: Sequence[Memory] | None = None, rows: int = 65536,
        sparse_first_layer: bool = True,
    ) -> None:
        self.net = net
        self.x = x.to(torch.float32)
        self.labels = np.asarray(labels)
        self.memories = layer_memories(net, memories)
        self.rows = int(rows)
        self.max_abs_input = float(self.x.abs().max())
        first = net.layers[0]
        self.sparse_first = sparse_first_layer and first.conv is None
        self._clean_acc0: torch.Tensor | None = None
        if self.sparse_first:
            self._clean_acc0 = self._dense_acc0(torch.as_tensor(first.weight))

    def _dense_acc0(self, w: torch.Tensor) -> torch.Tensor:
        bound = self.max_abs_input * float(w.abs().sum(-1).max())
        dtype = torch.float32 if bound < FLOAT32_EXACT else torch.float64
        return self.x.to(dtype) @ w.to(dtype).T

    def stacked_weights(self, fmaps: Sequence[FaultMap]) -> list[torch.Tensor | None]:
        """Per layer, the ``(M, out, in)`` faulty integer weights (``None``: no faults there)."""
        out: list[torch.Tensor | None] = []
        for layer, mem in zip(self.net.layers, self.memories, strict=True):
            hit = mem is not None and any(len(f.for_memory(mem.name)[0]) for f in fmaps)
            if not hit:
                out.append(None)
                continue
            stacked = apply_maps_stacked(layer.weight, mem, fmaps)
            out.append(torch.from_numpy(stacked))
        return out

    def _first_acc(
        self, w0: torch.Tensor | None, m: int, lo: int, hi: int, dtype: torch.dtype
    ) -> torch.Tensor:
        clean = self._clean_acc0[lo:hi].to(dtype)
        if w0 is None:
            return clean.unsqueeze(0).expand(m, *clean.shape)
        delta = (w0 - torch.as_tensor(self.net.layers[0].weight)).reshape(-1, w0.shape[-1])
        nz = delta.nonzero(as_tuple=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            d = torch.sparse_coo_tensor(torch.stack(nz), delta[nz].to(dtype), delta.shape,
                                        check_invariants=False)
            corr = torch.sparse.mm(d.to_sparse_csr(), self.x[lo:hi].to(dtype).T)
        corr = corr.reshape(m, -1, hi - lo).transpose(1, 2)
        return corr + clean.unsqueeze(0)

    def evaluate(self, fmaps: Sequence[FaultMap]) -> MapEvaluation:
        """Accuracy and predictions for each of ``fmaps`` (an empty map = the clean network)."""
        m = len(fmaps)
        weights = self.stacked_weights(fmaps)
        n = len(self.labels)
        preds = np.empty((m, n), dtype=np.int64)
        batch = max(1, self.rows // max(1, m))
        w0 = weights[0]
        dtype0 = torch.float32
        if w0 is not None:
            bound = self.max_abs_input * float(w0.abs().sum(-1).max())
            dtype0 = torch.float32 if bound < FLOAT32_EXACT else torch.float64
        with torch.no_grad():
            for lo in range(0, n, batch):
                hi = min(n, lo + batch)
                first = None
                if self.sparse_first:
                    first = self._first_acc(w0, m, lo, hi, dtype0)
                logits = self.net.forward(
                    self.x[lo:hi], weights, max_abs_input=self.max_abs_input, first_acc=first
                )
                if logits.shape[0] != m:
                    logits = logits.expand(m, *logits.shape[1:])
                preds[:, lo:hi] = predict(logits).numpy()
        acc = (preds == self.labels[None, :]).mean(axis=1)
        return MapEvaluation(accuracy=acc, predictions=preds)


def predict(int_logits: torch.Tensor) -> torch.Tensor:
    """Predicted class from integer logits: the largest, ties to the lowest class index.

    Ties are real in integer networks (and common under faults). Deciding them on the integer
    accumulators, as the hardware's label select does, keeps the prediction free of the float
    rounding that a Brevitas float forward would let break them.
    """
    return int_logits.argmax(-1)  # torch documents: the first maximal index


def clean_accuracy(net: IntNetwork, x: torch.Tensor, labels: np.ndarray) -> float:
    """Accuracy of the fault-free integer network."""
    with torch.no_grad():
        logits = net.forward(x.to(torch.float32))[0]
    return float((predict(logits).numpy() == np.asarray(labels)).mean())
