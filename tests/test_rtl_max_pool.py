"""rtl/max_pool.sv and the MaxPoolRTL op, against the op's Python model and torch's max_pool2d.

Why: FINN's max-pool exists only as HLS, so the project's CNNs pool with its own RTL. The
fault-injection results compare the simulated accelerator with FINN's Python execution of the
graph, so the RTL must equal the op's execute_node word for word, and the op must equal the
network's pooling (torch) for the shapes the flow produces: odd feature maps (7x7 pooled by 2
gives 3x3, the last row and column are dropped), channel folding (PE < C), signed inputs
including the most negative value, unsigned and bipolar inputs.

The pytest side builds one-node graphs (or goes through FINN's InferPool / InferConvInpGen),
writes the op's HDL with generate_hdl and builds a Verilator model of the node's wrapper (and,
once, of FINN's own depthwise SWG RTL feeding it, which checks the stream order the op assumes);
the cocotb tests at the bottom run inside the simulator and only compare stream words written
to a case file by the pytest side.

Run: .venv/bin/python -m pytest tests/test_rtl_max_pool.py   (about 30 s with ccache warm;
the first Verilator build of a cold cache takes 40-80 s more)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# name -> feature map (square), pooling kernel and stride, channels, PE, datatype, images
CASES = {
    "odd7_k2s2_c8_pe2_uint4": dict(ifm=7, k=2, s=2, C=8, PE=2, dt="UINT4", n=3),
    "k3s2_c4_pe4_int8": dict(ifm=8, k=3, s=2, C=4, PE=4, dt="INT8", n=3),
    "odd5_k3s3_c6_pe1_int2": dict(ifm=5, k=3, s=3, C=6, PE=1, dt="INT2", n=4),
}


def out_dim(ifm: int, k: int, s: int) -> int:
    """Output size without padding: FINN's SWG and torch (ceil_mode=False) both use floor."""
    return (ifm - k) // s + 1


def make_images(c: dict, seed: int) -> np.ndarray:
    """Random NHWC images over the whole range of the datatype, with the extremes forced in:
    a window of the datatype minimum only (the max-pool of it must be the minimum, e.g. -128)
    and one of the maximum only."""
    from qonnx.core.datatype import DataType

    dt = DataType[c["dt"]]
    rng = np.random.default_rng(seed)
    x = rng.integers(dt.min(), dt.max() + 1, size=(c["n"], c["ifm"], c["ifm"], c["C"]))
    x[0, : c["k"], : c["k"], :] = dt.min()
    x[-1, -c["k"]:, : c["k"], :] = dt.max()
    if dt == DataType["BIPOLAR"]:
        x = 2 * rng.integers(0, 2, size=x.shape) - 1
        x[0, : c["k"], : c["k"], :] = -1
    return x


def im2col_windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """NHWC images -> (N, OH, OW, K*K*C) windows in FINN's graph order (K_H, K_W, C), what the
    depthwise ConvolutionInputGenerator's Python execution feeds a Pool node."""
    n, h, _, c = x.shape
    o = out_dim(h, k, s)
    win = np.empty((n, o, o, k, k, c), dtype=x.dtype)
    for i in range(o):
        for j in range(o):
            win[:, i, j] = x[:, i * s: i * s + k, j * s: j * s + k, :]
    return win.reshape(n, o, o, k * k * c)


def torch_max_pool_nhwc(x: np.ndarray, k: int, s: int) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.asarray(x, dtype=np.float32)).permute(0, 3, 1, 2)
    return torch.nn.functional.max_pool2d(t, k, s).permute(0, 2, 3, 1).numpy()


def make_pool_model(name: str, c: dict, op_type: str = "MaxPoolRTL", function: str = "MaxPool"):
    """One pooling node as InferPool creates it (attributes of FINN's Pool), with BatchSize
    images, as op ``op_type`` (MaxPoolRTL, or FINN's Pool / Pool_hls)."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    domain = {"MaxPoolRTL": "flows.custom_ops", "Pool": "finn.custom_op.fpgadataflow",
              "Pool_hls": "finn.custom_op.fpgadataflow.hls"}[op_type]
    o = out_dim(c["ifm"], c["k"], c["s"])
    node = helper.make_node(
        op_type, ["x"], ["y"], domain=domain, backend="fpgadataflow", name=f"MaxPool_{name}",
        Channels=c["C"], PE=c["PE"], KernelSize=[c["k"], c["k"]], Function=function,
        OutImgDims=[o, o], InputDataType=c["dt"], OutputDataType=c["dt"], BatchSize=c["n"])
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       [c["n"], o, o, c["k"] ** 2 * c["C"]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [c["n"], o, o, c["C"]])])
    model = ModelWrapper(qonnx_make_model(g, producer_name="test"))
    model.set_tensor_datatype("x", DataType[c["dt"]])
    model.set_tensor_datatype("y", DataType[c["dt"]])
    return model


def _run(model, x: np.ndarray) -> np.ndarray:
    from qonnx.core.onnx_exec import execute_onnx

    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    return execute_onnx(model, {iname: x.astype(np.float32)})[oname]


# ---------------------------------------------------------------- the op (seconds, no builds)


@pytest.mark.parametrize("name", list(CASES) + ["bipolar"])
def test_op_equals_torch_and_finn_pool(name):
    """execute_node of a MaxPoolRTL node fed with the SWG's stream order = torch max_pool2d on
    NHWC data = FINN's abstract Pool fed with the same windows in graph order."""
    from flows.custom_ops.max_pool import to_stream_order

    c = CASES.get(name, dict(ifm=6, k=2, s=2, C=4, PE=2, dt="BIPOLAR", n=2))
    x = make_images(c, 7)
    win = im2col_windows(x, c["k"], c["s"])
    ref = torch_max_pool_nhwc(x, c["k"], c["s"])
    stream = to_stream_order(win, c["k"] ** 2, c["C"], c["PE"]).reshape(win.shape)
    y = _run(make_pool_model(name, c), stream)
    assert y.shape == ref.shape
    assert np.array_equal(y, ref)
    assert np.array_equal(_run(make_pool_model(name, c, "Pool"), win), ref)


def test_stream_order_model_equals_graph_model():
    """On the SWG's stream order (C/PE, K, PE), the RTL's rule 'max over K consecutive words'
    gives the graph-order result packed PE channels per word."""
    from flows.custom_ops.max_pool import max_pool_stream, max_pool_windows, to_stream_order

    rng = np.random.default_rng(3)
    k, ch, pe = 9, 12, 3
    win = rng.integers(-50, 50, size=(2, 4, 4, k * ch))
    words = max_pool_stream(to_stream_order(win, k, ch, pe), k)
    assert np.array_equal(words, max_pool_windows(win, k, ch).reshape(-1, pe))
    # the orders really differ for PE < C (the test would be vacuous otherwise)
    assert not np.array_equal(to_stream_order(win, k, ch, pe), win.reshape(-1, pe))
    assert not np.array_equal(max_pool_stream(win.reshape(-1, pe), k), words)


PART = "xczu3eg-sbva484-1-e"


def finn_pool_graph(ifm: int, k: int, s: int, ch: int, pe: int, dt: str):
    """MaxPoolNHWC on a (1, ifm, ifm, ch) input through FINN's InferPool and InferConvInpGen
    (depthwise SWG + Pool, the graph FINN's CNN flow makes), folded to SIMD = PE = pe.
    Call init_finn first."""
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.basic import qonnx_make_model

    o = out_dim(ifm, k, s)
    node = helper.make_node("MaxPoolNHWC", ["x"], ["y"], domain="qonnx.custom_op.general",
                            kernel_shape=[k, k], strides=[s, s], pads=[0, 0, 0, 0])
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ifm, ifm, ch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, o, ch])])
    model = ModelWrapper(qonnx_make_model(g, producer_name="test"))
    model.set_tensor_datatype("x", DataType[dt])
    model = model.transform(InferShapes()).transform(InferDataTypes())
    model = model.transform(InferPool()).transform(InferConvInpGen())
    model = model.transform(GiveUniqueNodeNames())
    assert [n.op_type for n in model.graph.node] == ["ConvolutionInputGenerator", "Pool"]
    swg, pool = (getCustomOp(n) for n in model.graph.node)
    assert swg.get_nodeattr("depthwise") == 1
    assert list(swg.get_nodeattr("OFMDim")) == [o, o]
    assert list(swg.get_nodeattr("IFMDim")) == [ifm, ifm]
    assert list(pool.get_nodeattr("OutImgDims")) == [o, o]
    swg.set_nodeattr("SIMD", pe)
    pool.set_nodeattr("PE", pe)
    return model


@pytest.mark.parametrize("ifm,k,s,ch,pe,dt", [(7, 2, 2, 8, 2, "UINT2"), (9, 3, 2, 4, 4, "INT4"),
                                              (6, 3, 3, 6, 3, "INT8")])
def test_finn_flow_with_max_pool_rtl_equals_torch(ifm, k, s, ch, pe, dt, tmp_path):
    """MaxPoolNHWC -> InferPool -> InferConvInpGen (depthwise SWG) -> folding, then
    ConvertPoolToMaxPoolRTL before or after SpecializeLayers, FIFOs inserted: shapes as FINN
    makes them (odd sizes drop the last row/column), and FINN's Python execution of every
    graph (abstract SWG: graph order; SWG_rtl in cppsim: stream order) equals torch."""
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames

    from flows.custom_ops.convert_to_max_pool import ConvertPoolToMaxPoolRTL
    from flows.finn_env import init_finn

    init_finn(tmp_path / "finn")
    model = finn_pool_graph(ifm, k, s, ch, pe, dt)
    o = out_dim(ifm, k, s)
    x = make_images(dict(ifm=ifm, k=k, C=ch, dt=dt, n=1), ifm + ch)
    ref = torch_max_pool_nhwc(x, k, s)
    assert np.array_equal(_run(model, x), ref)  # FINN's own abstract graph

    def finish(m):  # FIFOs between the layers, everything specialized, Python execution mode
        m = m.transform(SpecializeLayers(PART)).transform(InsertFIFO(create_shallow_fifos=True))
        m = m.transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
        return m.transform(SetExecMode("cppsim"))

    before = model.transform(ConvertPoolToMaxPoolRTL())  # abstract SWG -> MaxPoolRTL
    assert np.array_equal(_run(before, x), ref)
    before = finish(before)
    specialized = model.transform(SpecializeLayers(PART))
    assert [n.op_type for n in specialized.graph.node] == ["ConvolutionInputGenerator_rtl",
                                                            "Pool_hls"]
    after = finish(specialized.transform(ConvertPoolToMaxPoolRTL()))
    for m in (before, after):
        types = [n.op_type for n in m.graph.node]
        assert "ConvolutionInputGenerator_rtl" in types and "MaxPoolRTL" in types
        assert types[types.index("MaxPoolRTL") - 1].startswith("StreamingFIFO")
        assert np.array_equal(_run(m, x), ref)
    mp = next(n for n in after.graph.node if n.op_type == "MaxPoolRTL")
    assert mp.domain == "flows.custom_ops"
    inst = getCustomOp(mp)
    assert type(inst).__name__ == "MaxPoolRTL"
    assert inst.rtl_params() == dict(PE=pe, W=DataType[dt].bitwidth(), K=k * k,
                                     SIGNED=int(DataType[dt].signed()))
    # FINN's Pool attributes and methods still hold: one input word per cycle
    assert inst.get_exp_cycles() == o * o * k * k * ch // pe
    assert inst.get_instream_width() == inst.get_outstream_width() == pe * DataType[dt].bitwidth()
    assert tuple(inst.get_folded_input_shape()) == (1, o, o, k * k * ch // pe, pe)


def test_convert_refuses_avg_pool():
    from flows.custom_ops.convert_to_max_pool import ConvertPoolToMaxPoolRTL, UnsupportedPoolError

    c = CASES["k3s2_c4_pe4_int8"]
    model = make_pool_model("avg", c, "Pool_hls", function="AvgPool")
    with pytest.raises(UnsupportedPoolError, match="MaxPool_avg.*AvgPool"):
        model.transform(ConvertPoolToMaxPoolRTL())
    assert model.graph.node[0].op_type == "Pool_hls"


@pytest.mark.filterwarnings("ignore:The values of tensor x")
def test_op_refuses_values_outside_datatype():
    c = CASES["k3s2_c4_pe4_int8"]
    win = im2col_windows(make_images(c, 1), c["k"], c["s"])
    win[0, 0, 0, 0] = 128
    with pytest.raises(ValueError, match="outside INT8"):
        _run(make_pool_model("range", c), win)


def test_generated_hdl_and_stitcher_adapter(tmp_path):
    from qonnx.custom_op.registry import getCustomOp

    import flows.hdl_max_pool  # noqa: F401 - registers the adapter
    from flows.hdl_nodes import REGISTRY

    c = CASES["odd7_k2s2_c8_pe2_uint4"]
    model = make_pool_model("hdl", c)
    node = model.graph.node[0]
    files = getCustomOp(node).generate_hdl(model, tmp_path)
    assert [f.name for f in files] == ["max_pool.sv", "MaxPool_hdl.v"]
    text = files[-1].read_text()
    assert "module MaxPool_hdl (" in text
    assert "max_pool #(.PE(2), .W(4), .K(4), .SIGNED(0)) core" in text
    hdl = REGISTRY["MaxPoolRTL"](node, model)
    assert hdl.sources == files and hdl.memories == [] and hdl.lib_sources == []
    assert hdl.in_width == hdl.out_width == 8
    inst_text = hdl.instantiate("a", "b")
    assert inst_text.startswith("  MaxPool_hdl MaxPool_hdl (") and ".out0_V_TREADY(b_tready)" in inst_text


# ---------------------------------------------------------------- RTL (Verilator builds)


def make_case(name: str, work: Path) -> tuple[list[Path], str]:
    """Images -> windows -> the op's execute_node; input words in the SWG's stream order and
    expected output words; the node's HDL. Returns (sources, top module)."""
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops import bin_mvau_model as bm
    from flows.custom_ops.max_pool import to_stream_order

    c = CASES[name]
    x = make_images(c, sum(map(ord, name)))
    win = im2col_windows(x, c["k"], c["s"])
    model = make_pool_model(name, c)
    node = model.graph.node[0]
    inst = getCustomOp(node)
    p = inst.rtl_params()
    stream = to_stream_order(win, p["K"], c["C"], p["PE"])
    y = _run(model, stream.reshape(win.shape))
    assert np.array_equal(y, torch_max_pool_nhwc(x, c["k"], c["s"]))
    in_words = bm.pack_stream(inst.input_codes(stream), p["PE"], p["W"])
    exp_words = bm.pack_stream(inst.input_codes(y).reshape(-1, p["PE"]), p["PE"], p["W"])
    files = inst.generate_hdl(model, work / "hdl")
    (work / "case.json").write_text(json.dumps(dict(params=p, in_words=in_words,
                                                    exp_words=exp_words)))
    return files, node.name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_max_pool_rtl(name):
    from flows.custom_ops import rtl_sim

    work = (REPO / "build" / "rtl_tests" / "max_pool" / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files, top = make_case(name, work)
    runner = rtl_sim.build(files, top, work / "sim_build")
    rtl_sim.run(runner, top, "test_rtl_max_pool", work,
                extra_env={"MAX_POOL_CASE": str(work / "case.json")},
                module_dir=Path(__file__).parent)


@pytest.mark.slow
def test_finn_swg_rtl_feeding_max_pool_rtl():
    """FINN's own depthwise SWG RTL (7x7 INT4 input, C=8, SIMD=PE=2) feeding the generated
    MaxPoolRTL wrapper: the hardware stream order and the odd size (last row and column never
    pooled) agree with torch over two images back to back, under gaps and backpressure."""
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    from flows.custom_ops import bin_mvau_model as bm
    from flows.custom_ops import rtl_sim
    from flows.custom_ops.convert_to_max_pool import ConvertPoolToMaxPoolRTL
    from flows.finn_env import finn_rtllib_dir, init_finn

    ifm, k, s, ch, pe, dt = 7, 2, 2, 8, 2, "INT4"
    work = (REPO / "build" / "rtl_tests" / "max_pool" / "swg_chain").resolve()
    work.mkdir(parents=True, exist_ok=True)
    init_finn(work / "finn")
    model = finn_pool_graph(ifm, k, s, ch, pe, dt).transform(SpecializeLayers(PART))
    model = model.transform(ConvertPoolToMaxPoolRTL()).transform(PrepareIP(PART, 5.0))
    swg_node, mp_node = model.graph.node
    swg, mp = getCustomOp(swg_node), getCustomOp(mp_node)
    mp_files = mp.generate_hdl(model, work / "hdl")
    swg_files = [Path(f) for f in swg.get_rtl_file_list(abspath=True)]
    assert all(f.is_file() for f in swg_files) and str(finn_rtllib_dir()) in str(swg_files[0])
    iw, mw, ow = swg.get_instream_width_padded(), mp.get_instream_width_padded(), \
        mp.get_outstream_width_padded()
    assert swg.get_outstream_width_padded() == mw
    top = work / "hdl" / "swg_max_pool_top.sv"
    top.write_text(f"""module swg_max_pool_top (
  input logic ap_clk, input logic ap_rst_n,
  input logic [{iw - 1}:0] in0_V_TDATA, input logic in0_V_TVALID, output logic in0_V_TREADY,
  output logic [{ow - 1}:0] out0_V_TDATA, output logic out0_V_TVALID, input logic out0_V_TREADY
);
  logic [{mw - 1}:0] mid_tdata;
  logic mid_tvalid, mid_tready;
  {swg.get_nodeattr("gen_top_module")} swg (.ap_clk, .ap_rst_n, .in0_V_TDATA, .in0_V_TVALID,
    .in0_V_TREADY, .out0_V_TDATA(mid_tdata), .out0_V_TVALID(mid_tvalid), .out0_V_TREADY(mid_tready));
  {mp_node.name} pool (.ap_clk, .ap_rst_n, .in0_V_TDATA(mid_tdata), .in0_V_TVALID(mid_tvalid),
    .in0_V_TREADY(mid_tready), .out0_V_TDATA, .out0_V_TVALID, .out0_V_TREADY);
endmodule
""")
    x = make_images(dict(ifm=ifm, k=k, C=ch, dt=dt, n=2), 11)
    y = torch_max_pool_nhwc(x, k, s)
    bits = mp.rtl_params()["W"]
    case = dict(params=mp.rtl_params(), in_words=bm.pack_stream(x.reshape(-1, pe), pe, bits),
                exp_words=bm.pack_stream(y.astype(np.int64).reshape(-1, pe), pe, bits))
    (work / "case.json").write_text(json.dumps(case))
    runner = rtl_sim.build(swg_files + mp_files + [top], "swg_max_pool_top", work / "sim_build")
    rtl_sim.run(runner, "swg_max_pool_top", "test_rtl_max_pool", work,
                testcase="matches_model_with_gaps_and_backpressure",
                extra_env={"MAX_POOL_CASE": str(work / "case.json")},
                module_dir=Path(__file__).parent)


# ---------------------------------------------------------------- cocotb side (in the simulator)

try:
    import cocotb
    from cocotb.triggers import ReadOnly, RisingEdge

    from tests.axis_stream import reset, stream
except ImportError:  # pragma: no cover
    cocotb = None


def _case() -> dict:
    return json.loads(Path(os.environ["MAX_POOL_CASE"]).read_text())


if cocotb is not None:

    @cocotb.test()
    async def matches_model_with_gaps_and_backpressure(dut):
        """Random input gaps and output backpressure: every word equals the op's model."""
        case = _case()
        await reset(dut)
        for seed, p_in, p_out in [(1, 0.7, 0.5), (2, 1.0, 0.2), (3, 0.3, 0.9)]:
            got, _, _ = await stream(dut, case["in_words"], len(case["exp_words"]),
                                      random.Random(seed), p_in, p_out)
            assert got == case["exp_words"], f"pass with seed {seed}"

    @cocotb.test()
    async def one_word_per_cycle(dut):
        """With the output always ready, the input is taken every cycle and each window's
        result leaves one cycle after its last word."""
        case = _case()
        k = case["params"]["K"]
        await reset(dut)
        got, in_c, out_c = await stream(dut, case["in_words"], len(case["exp_words"]),
                                         random.Random(4))
        assert got == case["exp_words"]
        assert in_c == list(range(in_c[0], in_c[0] + len(case["in_words"])))
        assert out_c == [in_c[(j + 1) * k - 1] + 1 for j in range(len(out_c))]

    @cocotb.test()
    async def output_stall_stops_input_at_window_end(dut):
        """With out0 never ready, the module completes one window, then accepts the next
        window's first K-1 words and stops (only a window's last word needs the output
        register); the held word is the first result."""
        case = _case()
        k = case["params"]["K"]
        words = case["in_words"]
        await reset(dut)
        taken = 0
        for _ in range(4 * k + 10):
            dut.in0_V_TDATA.value = words[taken]
            dut.in0_V_TVALID.value = 1
            await ReadOnly()
            if dut.in0_V_TREADY.value:
                taken += 1
            await RisingEdge(dut.ap_clk)
        dut.in0_V_TVALID.value = 0
        await ReadOnly()
        assert taken == 2 * k - 1
        assert dut.out0_V_TVALID.value and dut.out0_V_TDATA.value.to_unsigned() == case["exp_words"][0]
        await RisingEdge(dut.ap_clk)
        rest, _, _ = await stream(dut, words[taken:], len(case["exp_words"]), random.Random(6),
                                   0.8, 0.6)
        assert rest == case["exp_words"]
