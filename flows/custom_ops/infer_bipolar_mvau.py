"""InferBipolarMVAU: bipolar x bipolar MatMuls (binarized networks, w1a1) -> matrix-vector units.

Why not FINN's own route: FINN's BNN recipe (``ConvertBipolarMatMulToXnorPopcount`` +
``InferBinaryMatrixVectorActivation``) re-types the graph input from BIPOLAR to BINARY, which
breaks the step-by-step check with the same +-1 images, and leaves ``Mul(2), Add(-MW)`` after
the last layer (the logits are ``2*popcount - MW``), which cannot be in hardware as FINN RTL.
This transformation keeps BIPOLAR tensors and maps, after streamlining:

* ``MatMul(BIPOLAR x, BIPOLAR W) -> MultiThreshold(out BIPOLAR, scale 2, bias -1)`` to one FINN
  ``MVAU`` (BIPOLAR in/out/weights, thresholds embedded). FINN's MVAU executes BIPOLAR x BIPOLAR
  as an XNOR-popcount (``acc`` = matches in ``[0, MW]``), so the thresholds move to that domain:
  ``2*pc - MW >= T  <=>  pc >= ceil((T + MW) / 2)``, clipped to ``[0, MW + 1]`` (exact for every
  reachable popcount, also with faulty weights). ``ConvertToBinMVAU`` later turns it into the
  project's ``BinMVAU``.
* a bare ``MatMul(BIPOLAR x, BIPOLAR W)`` (the last layer, no activation) to a ``BinMVAU`` with
  ``bipolarDot=1``: its accumulator is the true dot product ``2*pc - MW``, i.e. the integer
  logits, as in the multi-bit flow. FINN's MVAU has no such mode (it would output the popcount).

* ``MatMul(integer x, BIPOLAR W) -> MultiThreshold(out BIPOLAR, scale 2, bias -1)``: a binarized
  layer fed multi-bit inputs (8-bit pixels into the first layer, as in FINN's CNV) to one MVAU
  with embedded thresholds in the dot-product domain (``acc = x @ W``, no popcount), which
  ``ConvertToBinMVAU`` turns into a ``BinMVAU`` in its multi-bit-input mode.

Run it after streamlining, before ``InferThresholdingLayer`` (which rejects ``out_scale=2``).
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

from flows.custom_ops.convert_to_bin_mvau import DOMAIN

FINN_DOMAIN = "finn.custom_op.fpgadataflow"


def popcount_thresholds(t: np.ndarray, mw: int) -> np.ndarray:
    """Dot-product thresholds -> XNOR-popcount thresholds (integer, in ``[0, MW + 1]``)."""
    pc = np.ceil((np.asarray(t, dtype=np.float64) + mw) / 2.0)
    return np.clip(pc, 0, mw + 1).astype(np.float32)


def _covering_datatype(t: np.ndarray) -> DataType:
    """The smallest integer datatype holding every value of ``t`` (thresholds may be negative)."""
    lo, hi = int(np.min(t)), int(np.max(t))
    if lo >= 0:
        return DataType.get_smallest_possible(hi)
    return DataType[f"INT{max(hi.bit_length(), (-lo - 1).bit_length()) + 1}"]


def _bipolar_mt(node) -> bool:
    if node is None or node.op_type != "MultiThreshold":
        return False
    dt = get_by_name(node.attribute, "out_dtype")
    return dt is not None and dt.s.decode() == "BIPOLAR"


def _attr(node, name, default):
    a = get_by_name(node.attribute, name)
    return default if a is None else helper.get_attribute_value(a)


class InferBipolarMVAU(Transformation):
    """MatMul nodes whose input and weights are BIPOLAR -> MVAU (with thresholds) / BinMVAU."""

    def apply(self, model):
        graph = model.graph
        modified = False
        for n in list(graph.node):
            if n.op_type != "MatMul":
                continue
            x, w = n.input
            if model.get_initializer(w) is None:
                continue
            if model.get_tensor_datatype(w) != DataType["BIPOLAR"]:
                continue
            idt = model.get_tensor_datatype(x)
            consumer = model.find_consumer(n.output[0])
            bipolar_in = idt == DataType["BIPOLAR"]
            if not bipolar_in and not (idt.is_integer() and _bipolar_mt(consumer)):
                continue  # integer x bipolar without a sign activation: FINN's MVAU handles it
            mw, mh = model.get_tensor_shape(w)
            nvec = list(model.get_tensor_shape(x)[:-1])
            index = list(graph.node).index(n)
            common = dict(domain=FINN_DOMAIN, backend="fpgadataflow", MW=mw, MH=mh, SIMD=1, PE=1,
                          inputDataType=idt.name, weightDataType="BIPOLAR", ActVal=0,
                          binaryXnorMode=0, numInputVectors=nvec, name=n.name)
            if _bipolar_mt(consumer):
                if (_attr(consumer, "out_scale", 1.0), _attr(consumer, "out_bias", 0.0)) != (2.0, -1.0):
                    raise ValueError(f"{consumer.name}: BIPOLAR MultiThreshold needs scale 2, bias -1")
                t_name = consumer.input[1]
                if bipolar_in:  # FINN executes BIPOLAR x BIPOLAR as an XNOR-popcount
                    t = popcount_thresholds(model.get_initializer(t_name), mw)
                else:  # integer inputs: the accumulator is the dot product itself
                    t = np.ceil(np.asarray(model.get_initializer(t_name), dtype=np.float64)).astype(np.float32)
                model.set_initializer(t_name, t)
                model.set_tensor_datatype(t_name, _covering_datatype(t))
                new = helper.make_node("MVAU", [x, w, t_name], [consumer.output[0]],
                                       outputDataType="BIPOLAR", noActivation=0, **common)
                graph.node.remove(consumer)
            else:
                common["domain"] = DOMAIN
                new = helper.make_node("BinMVAU", [x, w], [n.output[0]], noActivation=1,
                                       bipolarDot=1, outputDataType="INT32", **common)
            graph.node.insert(index, new)
            graph.node.remove(n)
            if new.op_type == "BinMVAU":
                from qonnx.custom_op.registry import getCustomOp

                inst = getCustomOp(graph.node[index])  # insert() stored a copy of ``new``
                odt = DataType[f"INT{inst.get_accu_width()}"]
                inst.set_nodeattr("outputDataType", odt.name)
                model.set_tensor_datatype(new.output[0], odt)
            modified = True
        if modified:
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
        return model, False
