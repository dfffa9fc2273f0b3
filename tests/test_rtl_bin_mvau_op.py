"""The BinMVAU custom op: same outputs as FINN's MVAU, and its generated HDL matches its model.

Why: a FINN MVAU(binaryXnorMode=1 / BIPOLAR weights) node is converted to BinMVAU by changing
op_type and domain only; the FINN graph's behaviour must not change, and the RTL generated from
the node (wrapper + .dat files) must be bit-exact with the node's execute_node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# name -> (MW, MH, PE, SIMD, idt, wdt, odt, noActivation, NT, ActVal)
NODES = {
    "w1a1_hidden": (32, 16, 4, 8, "BINARY", "BINARY", "BIPOLAR", 0, 1, 0),
    "w1a1_last_noact": (24, 10, 2, 6, "BINARY", "BINARY", "UINT5", 1, 0, 0),
    "w1a2_first": (48, 12, 3, 8, "UINT8", "BIPOLAR", "UINT2", 0, 3, 0),
    "w1a2_signed_out": (20, 8, 2, 5, "INT2", "BIPOLAR", "INT2", 0, 3, -2),
}


def make_node_model(name: str, nvec: int = 3, seed: int = 0):
    """A one-node FINN graph with an MVAU as InferBinaryMatrixVectorActivation /
    InferQuantizedMatrixVectorActivation would create it, plus a random input."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    mw, mh, pe, simd, idt, wdt, odt, noact, nt, actval = NODES[name]
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    idt_, wdt_, odt_ = DataType[idt], DataType[wdt], DataType[odt]
    W = rng.integers(0, 2, size=(mw, mh)) if wdt == "BINARY" else rng.choice([-1, 1], (mw, mh))
    X = rng.integers(idt_.min(), idt_.max() + 1, size=(nvec, mw))
    inputs = ["x", "w"] + ([] if noact else ["t"])
    node = helper.make_node(
        "MVAU", inputs, ["y"], domain="finn.custom_op.fpgadataflow", backend="fpgadataflow",
        MW=mw, MH=mh, SIMD=simd, PE=pe, inputDataType=idt, weightDataType=wdt,
        outputDataType=odt, ActVal=actval, binaryXnorMode=int(wdt == "BINARY"),
        noActivation=noact, numInputVectors=[nvec], name=f"BinMVAU_{name}")
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [nvec, mw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [nvec, mh])])
    model = ModelWrapper(qonnx_make_model(g, producer_name="test"))
    model.set_tensor_datatype("x", idt_)
    model.set_tensor_datatype("w", wdt_)
    model.set_tensor_datatype("y", odt_)
    model.set_initializer("w", W.astype(np.float32))
    if not noact:
        # accumulators of the FINN semantics, thresholds at random quantiles (every code occurs)
        Wb = 2 * W - 1 if wdt == "BINARY" else W
        acc = ((2 * X - 1) @ Wb + mw) / 2 if wdt == "BINARY" else X @ Wb
        q = np.sort(rng.uniform(0, 1, (mh, nt)), axis=1)
        T = np.stack([np.quantile(acc[:, r], q[r], method="nearest") for r in range(mh)])
        T = np.sort(T + rng.integers(0, 2, T.shape), axis=1).astype(np.float32)
        model.set_initializer("t", T)
    return model, X.astype(np.float32)


def _run(model, X):
    from qonnx.core.onnx_exec import execute_onnx

    return execute_onnx(model, {"x": X})["y"]


@pytest.mark.parametrize("name", list(NODES))
def test_bin_mvau_op_equals_finn_mvau(name):
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops.convert_to_bin_mvau import ConvertToBinMVAU

    model, X = make_node_model(name)
    ref = _run(model, X)
    model = model.transform(ConvertToBinMVAU())
    node = model.graph.node[0]
    assert (node.op_type, node.domain) == ("BinMVAU", "flows.custom_ops")
    assert type(getCustomOp(node)).__name__ == "BinMVAU"
    assert np.array_equal(_run(model, X), ref)


@pytest.mark.parametrize("name", ["w1a1_hidden", "w1a2_first"])
def test_weight_file_identical_to_finn_memblock(name, tmp_path):
    """pack_weights_memstream + write_memh give byte for byte FINN's own memblock.dat."""
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops import bin_mvau_model as bm

    model, _ = make_node_model(name)
    finn_node = getCustomOp(model.graph.node[0])
    W = model.get_initializer("w")
    finn_node.make_weight_file(W, "decoupled_verilog_dat", str(tmp_path / "memblock.dat"))
    pe, simd = finn_node.get_nodeattr("PE"), finn_node.get_nodeattr("SIMD")
    Wb = (2 * W - 1 if finn_node.get_nodeattr("weightDataType") == "BINARY" else W).astype(int)
    bm.write_memh(tmp_path / "mine.dat", bm.pack_weights_memstream(Wb, pe, simd), pe * simd)
    assert (tmp_path / "mine.dat").read_text() == (tmp_path / "memblock.dat").read_text()


def test_fault_memories_describe_rtl_paths():
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops.convert_to_bin_mvau import ConvertToBinMVAU

    model, _ = make_node_model("w1a2_first")
    model = model.transform(ConvertToBinMVAU())
    inst = getCustomOp(model.graph.node[0])
    mems = inst.fault_memories(model.get_initializer("t"))
    assert [m["path"] for m in mems] == ["core.wmem.Mem", "core.gen_thr.tmem.Mem"]
    assert mems[0]["depth"] == 48 * 12 // (3 * 8) and mems[0]["width"] == 24


def test_weight_layout_decodes_with_the_memory_layout():
    """The weights' layout entry is understood by the manifest's decoder (MH x MW = W.T)."""
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops import bin_mvau_model as bm
    from flows.custom_ops.convert_to_bin_mvau import ConvertToBinMVAU
    from mcel_train import memory as mem_layout

    model, _ = make_node_model("w1a1_hidden")
    model = model.transform(ConvertToBinMVAU())
    inst = getCustomOp(model.graph.node[0])
    W = inst.bipolar_weights(model.get_initializer("w"))
    layout = inst.fault_memories(model.get_initializer("t"))[0]["layout"]
    words = bm.pack_weights_memstream(W, 4, 8)
    assert np.array_equal(mem_layout.decode_mvau(words, layout), W.T)
    assert mem_layout.encode_mvau(W.T, layout) == words


@pytest.mark.slow
@pytest.mark.parametrize("name", ["w1a1_hidden", "w1a2_first"])
def test_generated_hdl_matches_node(name, tmp_path):
    """generate_hdl -> Verilator model of the wrapper; the cocotb tests of test_rtl_bin_mvau
    (backpressure, throughput, weight/threshold flips) run against the node's own data."""
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops import bin_mvau_model as bm
    from flows.custom_ops import rtl_sim
    from flows.custom_ops.convert_to_bin_mvau import ConvertToBinMVAU

    model, X = make_node_model(name, nvec=6)
    model = model.transform(ConvertToBinMVAU())
    node = model.graph.node[0]
    inst = getCustomOp(node)
    inst.set_nodeattr("runtime_writeable_weights", int(name == "w1a2_first"))
    work = (REPO / "build" / "rtl_tests" / "bin_mvau_op" / name).resolve()
    files = inst.generate_hdl(model, work / "hdl")
    t = model.get_initializer("t") if len(node.input) > 2 else None
    T = inst.rtl_thresholds(t)
    p = inst.rtl_params(T)
    Xc = inst.input_codes(X)
    case = dict(name=name, params=p, core="core", X=Xc.tolist(),
                W=inst.bipolar_weights(model.get_initializer("w")).tolist())
    if T is not None:
        case["T"] = T.tolist()
    (work / "case.json").write_text(json.dumps(case))
    # the node's execute_node output, in stream codes, is what the cocotb tests expect
    y = _run(model, X)
    codes = bm.bin_mvau(np.array(case["W"]), Xc, p["IBITS"], p["ACCU_WIDTH"], T, p["ACT_VAL"],
                        p["OBITS"], bool(p["SIGNED_IN"]), bool(p["XNOR_POPCOUNT"]))
    assert np.array_equal(np.where(y < 0, (y + (1 << p["OBITS"])) % (1 << p["OBITS"]), y)
                          if inst.get_output_datatype().name != "BIPOLAR" else (y + 1) // 2,
                          codes)
    runner = rtl_sim.build(files, node.name, work / "sim_build")
    rtl_sim.run(runner, node.name, "test_rtl_bin_mvau", work,
                extra_env={"BIN_MVAU_CASE": str(work / "case.json")},
                module_dir=Path(__file__).parent)


def test_stream_packing_matches_finn_rtlsim_packing():
    """Element s of a stream word at bits [s*bits +: bits], as FINN packs rtlsim inputs."""
    from finn.util.data_packing import pack_innermost_dim_as_hex_string
    from qonnx.core.datatype import DataType

    from flows.custom_ops import bin_mvau_model as bm

    for X, dt, bits in [(np.array([[1, 2, 3, 250], [0, 255, 7, 9]]), "UINT8", 8),
                        (np.array([[-1, 1, 0, -2, 1]]), "INT2", 2)]:
        fold = X.shape[1]
        finn = pack_innermost_dim_as_hex_string(X, DataType[dt], bm.stream_width(fold, bits),
                                                reverse_inner=True)
        assert [int(h, 16) for h in finn] == bm.pack_stream(X, fold, bits)
