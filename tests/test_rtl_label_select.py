"""rtl/label_select.sv (top-1) against numpy argmax and FINN's LabelSelect (ONNX TopK) semantics.

Why: the hardware-measured accuracy is read from this module's output, so its tie rule must be
the same as the software model's (smallest index wins, as ONNX TopK and np.argmax do).
Scores are drawn from a narrow range so that ties are frequent.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from flows.custom_ops import bin_mvau_model as bm

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 40
CASES = {
    "l10_pe1_s16": dict(LABELS=10, PE=1, IBITS=16, SIGNED_IN=1),
    "l10_pe5_u7": dict(LABELS=10, PE=5, IBITS=7, SIGNED_IN=0),
    "l12_pe4_s4": dict(LABELS=12, PE=4, IBITS=4, SIGNED_IN=1),
}


def make_scores(p: dict, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (p["IBITS"] - 1)), 1 << (p["IBITS"] - 1)) if p["SIGNED_IN"] else \
        (0, 1 << p["IBITS"])
    span = rng.integers(lo, hi, size=(N_IMAGES, 1))
    # narrow spread around a random centre: many ties, extremes of the range included
    X = np.clip(span + rng.integers(-2, 3, size=(N_IMAGES, p["LABELS"])), lo, hi - 1)
    X[0] = lo
    X[1] = hi - 1
    return X


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_label_select_rtl(name):
    from flows.custom_ops import rtl_sim

    p = CASES[name]
    work = (REPO / "build" / "rtl_tests" / "label_select" / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    X = make_scores(p, sum(map(ord, name)))
    (work / "case.json").write_text(json.dumps(dict(params=p, X=X.tolist())))
    runner = rtl_sim.build(rtl_sim.rtl_sources(*rtl_sim.LABEL_SELECT_RTL), "label_select",
                           work / "sim_build", p)
    rtl_sim.run(runner, "label_select", "test_rtl_label_select", work,
                extra_env={"LABEL_SELECT_CASE": str(work / "case.json")},
                module_dir=Path(__file__).parent)


def test_tie_rule_matches_onnx_topk():
    """ONNX TopK (FINN LabelSelect's execute_node) returns the smallest index among ties."""
    import onnxruntime as rt
    from onnx import TensorProto, helper

    X = np.array([[3, 7, 7, 1], [5, 5, 5, 5], [-1, -2, -1, -3]], dtype=np.float32)
    g = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape)),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [3, 1]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [3, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    idx = rt.InferenceSession(m.SerializeToString()).run(None, {"x": X, "k": np.array([1])})[1]
    assert idx.ravel().tolist() == np.argmax(X, axis=1).tolist() == [1, 0, 0]


try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ReadOnly, RisingEdge
except ImportError:  # pragma: no cover
    cocotb = None

if cocotb is not None:

    @cocotb.test()
    async def argmax_with_backpressure(dut):
        """Random input gaps and output backpressure; output = np.argmax per image."""
        case = json.loads(Path(os.environ["LABEL_SELECT_CASE"]).read_text())
        p, X = case["params"], np.array(case["X"])
        words = bm.pack_stream(X, p["PE"], p["IBITS"])
        exp = np.argmax(X, axis=1).tolist()
        cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
        dut.ap_rst_n.value = 0
        dut.in0_V_TVALID.value = 0
        dut.out0_V_TREADY.value = 0
        for _ in range(3):
            await RisingEdge(dut.ap_clk)
        dut.ap_rst_n.value = 1
        rng = random.Random(2)
        got, i, valid = [], 0, 0
        for _ in range(20000):
            if not valid and i < len(words) and rng.random() < 0.8:
                valid = 1
                dut.in0_V_TDATA.value = words[i]
            dut.in0_V_TVALID.value = valid
            dut.out0_V_TREADY.value = int(rng.random() < 0.5)
            await ReadOnly()
            if valid and dut.in0_V_TREADY.value:
                i, valid = i + 1, 0
            if dut.out0_V_TVALID.value and dut.out0_V_TREADY.value:
                got.append(dut.out0_V_TDATA.value.to_unsigned())
            await RisingEdge(dut.ap_clk)
            if len(got) == len(exp):
                break
        assert got == exp
