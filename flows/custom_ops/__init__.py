"""The project's own FINN/qonnx custom ops (domain "flows.custom_ops") and their golden models.

qonnx's registry imports the module named by a node's domain and looks up ``custom_op``; it is
resolved lazily here so that importing the golden models (e.g. inside a cocotb simulation) does
not import FINN.
"""


def __getattr__(name):
    if name == "custom_op":
        from flows.custom_ops.bin_mvau import BinMVAU
        from flows.custom_ops.max_pool import MaxPoolRTL

        return {"BinMVAU": BinMVAU, "MaxPoolRTL": MaxPoolRTL}
    raise AttributeError(name)
