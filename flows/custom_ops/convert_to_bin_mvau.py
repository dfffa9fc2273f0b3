"""ConvertToBinMVAU: turn FINN MVAU nodes with 1-bit weights into BinMVAU (own RTL).

Why: FINN can only implement binarized MVAUs in HLS. Apply after InferBinaryMatrixVectorActivation
/ InferQuantizedMatrixVectorActivation (op_type "MVAU") or after SpecializeLayers ("MVAU_hls").
Only op_type and domain change, plus, for noActivation nodes, the output datatype: the RTL emits
its signed ACCU_WIDTH-bit accumulator, so the output becomes INT<ACCU_WIDTH> (consumers'
inputDataType attributes are updated to match).
"""

from __future__ import annotations

from qonnx.core.datatype import DataType
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation

DOMAIN = "flows.custom_ops"
ONE_BIT = ("BINARY", "BIPOLAR")


def _convertible(node, inst) -> bool:
    wdt = inst.get_nodeattr("weightDataType")
    if wdt == "BINARY":  # {0,1} weights mean bipolar only in XNOR mode
        return bool(inst.get_nodeattr("binaryXnorMode"))
    return wdt == "BIPOLAR"


class ConvertToBinMVAU(Transformation):
    """MVAU / MVAU_hls nodes with BIPOLAR (or XNOR-mode BINARY) weights -> BinMVAU."""

    def apply(self, model):
        for node in model.graph.node:
            if node.op_type not in ("MVAU", "MVAU_hls"):
                continue
            if not _convertible(node, getCustomOp(node)):
                continue
            node.op_type, node.domain = "BinMVAU", DOMAIN
            inst = getCustomOp(node)
            if inst.get_nodeattr("noActivation"):
                odt = DataType[f"INT{inst.get_accu_width()}"]
                inst.set_nodeattr("outputDataType", odt.name)
                model.set_tensor_datatype(node.output[0], odt)
                for succ in model.find_consumers(node.output[0]) or []:
                    sinst = getCustomOp(succ)
                    if "inputDataType" in sinst.get_nodeattr_types():
                        sinst.set_nodeattr("inputDataType", odt.name)
        # converted nodes never match again, so one pass is enough
        return model, False
