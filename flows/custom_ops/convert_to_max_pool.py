"""ConvertPoolToMaxPoolRTL: turn FINN max-pool nodes into MaxPoolRTL (own RTL, rtl/max_pool.sv).

Why: FINN implements ``Pool`` only in HLS, which cannot be built here. Apply after InferPool
(op_type "Pool") or after SpecializeLayers (which falls back to "Pool_hls"). Only op_type and
domain change; every FINN attribute is kept, so shapes, stream widths, folding (PE) and cycle
estimates stay those of FINN's Pool. Pooling functions other than MaxPool (AvgPool, AccPool,
QuantAvgPool) have no RTL here: they are refused, naming the node, rather than left as HLS
nodes that would only fail much later (at HDL generation or stitching).
"""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation

DOMAIN = "flows.custom_ops"
FINN_POOL_OPS = ("Pool", "Pool_hls")
FINN_DOMAINS = ("finn.custom_op.fpgadataflow", "finn.custom_op.fpgadataflow.hls")


class UnsupportedPoolError(ValueError):
    """A FINN Pool node the project's RTL cannot implement (not a max-pool)."""


class ConvertPoolToMaxPoolRTL(Transformation):
    """Pool / Pool_hls nodes with Function "MaxPool" -> MaxPoolRTL; anything else raises."""

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        for node in model.graph.node:
            if node.op_type not in FINN_POOL_OPS or node.domain not in FINN_DOMAINS:
                continue
            fxn = getCustomOp(node).get_nodeattr("Function")
            if fxn != "MaxPool":
                raise UnsupportedPoolError(
                    f"{node.name} ({node.op_type}): Function {fxn!r} has no RTL implementation; "
                    "only MaxPool can become MaxPoolRTL")
            old = node.op_type, node.domain
            node.op_type, node.domain = "MaxPoolRTL", DOMAIN
            try:
                getCustomOp(node).rtl_params()  # refuses what the RTL cannot compute
            except ValueError as e:
                node.op_type, node.domain = old
                raise UnsupportedPoolError(str(e)) from e  # names the node
        # converted nodes never match again, so one pass is enough
        return model, False
