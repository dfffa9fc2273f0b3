"""MaxPoolRTL: FINN's ``Pool`` (Function "MaxPool") implemented by the project's rtl/max_pool.sv.

Why: FINN's Pool layer has only an HLS backend, and Vitis HLS is not available. This op
subclasses FINN's abstract ``Pool``, so it keeps its attributes (Channels, PE, KernelSize,
Function, OutImgDims, BatchSize, InputDataType, OutputDataType) and its shape, stream-width and
cycle-estimate methods; a ``Pool`` / ``Pool_hls`` node becomes a MaxPoolRTL by changing op_type
and domain only (flows/custom_ops/convert_to_max_pool.py). ``execute_node`` runs the model of
the RTL (integer maximum per channel over each window), and ``generate_hdl`` writes the Verilog
wrapper named after the node.

Two orders of the same window data exist, and FINN uses both:
  * graph order (qonnx Im2Col, FINN's abstract ConvolutionInputGenerator and Pool): each
    output pixel's input holds its window as (K_H, K_W, C), channels innermost;
  * stream order, what FINN's depthwise ConvolutionInputGenerator_rtl emits (in hardware, and
    in its Python "cppsim" execution, which interleaves the channels to match) and what the RTL
    consumes: (C/PE, K_H, K_W, PE) per output pixel (see FINN's Pool docstring). FINN's
    Pool_hls reads this order too.
The two coincide when PE = Channels, which is what InferPool sets. ``execute_node`` reads stream
order, like Pool_hls, unless the node is fed (directly or through FIFOs / width converters) by
an abstract ConvolutionInputGenerator or an Im2Col, whose output is in graph order; so a graph
is executed correctly before and after SpecializeLayers, folded or not. The output (NHWC, PE
channels per stream word) is the same in both cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from finn.custom_op.fpgadataflow.pool import Pool
from onnx import GraphProto
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from flows.custom_ops.rtl_sim import MAX_POOL_RTL, rtl_sources

# producers whose Python execution emits windows in graph order (K_H, K_W, C)
GRAPH_ORDER_PRODUCERS = ("ConvolutionInputGenerator", "Im2Col")
# nodes whose Python execution passes the data through unchanged (op_type prefixes)
PASS_THROUGH = ("StreamingFIFO", "StreamingDataWidthConverter")


def max_pool_windows(x: np.ndarray, k: int, channels: int) -> np.ndarray:
    """Integer maximum over each window: (..., k*channels) in (K_H, K_W, C) order ->
    (pixels, channels)."""
    x = np.asarray(x, dtype=np.int64).reshape(-1, k, channels)
    return x.max(axis=1)


def to_stream_order(x: np.ndarray, k: int, channels: int, pe: int) -> np.ndarray:
    """Graph-order windows (..., k*channels) -> stream words (n_words, pe) in the depthwise SWG
    order (pixel, C/PE, K, PE)."""
    x = np.asarray(x).reshape(-1, k, channels // pe, pe)
    return x.transpose(0, 2, 1, 3).reshape(-1, pe)


def max_pool_stream(words: np.ndarray, k: int) -> np.ndarray:
    """What rtl/max_pool.sv computes on lane values: every k consecutive words (n, pe) -> one
    word of lane maxima (n/k, pe)."""
    words = np.asarray(words, dtype=np.int64)
    return words.reshape(-1, k, words.shape[-1]).max(axis=1)


class MaxPoolRTL(Pool):
    """FINN Pool (MaxPool) node implemented by rtl/max_pool.sv (instance ``core`` in the
    wrapper)."""

    def _check(self) -> None:
        """Refuse what the RTL cannot compute (it is a max-pool on integer codes only)."""
        name = self.onnx_node.name
        if self.get_nodeattr("Function") != "MaxPool":
            raise ValueError(f"{name}: MaxPoolRTL implements Function=MaxPool only, "
                             f"not {self.get_nodeattr('Function')!r}")
        idt = self.get_input_datatype()
        if not idt.is_integer():
            raise ValueError(f"{name}: MaxPoolRTL needs an integer input datatype, not {idt.name}")
        if self.get_nodeattr("Channels") % self.get_nodeattr("PE"):
            raise ValueError(f"{name}: PE must divide Channels")

    def kernel_elems(self) -> int:
        """K = K_H * K_W, the number of stream words per window and channel group."""
        return int(np.prod(self.get_nodeattr("KernelSize")))

    def rtl_params(self) -> dict:
        """Parameters of max_pool.sv for this node. BIPOLAR values travel as codes 0/1 (1 = +1),
        whose unsigned order is the order of the values, so they compare unsigned."""
        self._check()
        idt = self.get_input_datatype()
        return dict(PE=self.get_nodeattr("PE"), W=idt.bitwidth(), K=self.kernel_elems(),
                    SIGNED=int(idt.signed() and idt != DataType["BIPOLAR"]))

    def input_codes(self, x: np.ndarray) -> np.ndarray:
        """Graph values -> integer stream codes (BIPOLAR -1/+1 -> 0/1); raises on values the
        W-bit stream cannot carry, since the RTL could not reproduce them."""
        idt = self.get_input_datatype()
        x = np.asarray(x, dtype=np.float64)
        xi = np.rint(x).astype(np.int64)
        if not np.array_equal(xi, x) or xi.min(initial=idt.min()) < idt.min() \
                or xi.max(initial=idt.max()) > idt.max():
            raise ValueError(f"{self.onnx_node.name}: input values outside {idt.name}")
        return (xi + 1) // 2 if idt == DataType["BIPOLAR"] else xi

    def output_values(self, codes: np.ndarray) -> np.ndarray:
        """Inverse of input_codes for the output (same datatype)."""
        if self.get_output_datatype() == DataType["BIPOLAR"]:
            return 2 * np.asarray(codes) - 1
        return np.asarray(codes)

    def compute(self, x: np.ndarray, graph_order: bool = False) -> np.ndarray:
        """Output values (pixels, Channels) of the RTL for input windows x in stream order
        (or in graph order with ``graph_order``)."""
        self._check()
        k, ch, pe = self.kernel_elems(), self.get_nodeattr("Channels"), self.get_nodeattr("PE")
        codes = self.input_codes(x)
        if graph_order:
            y = max_pool_windows(codes, k, ch)
        else:
            y = max_pool_stream(codes.reshape(-1, pe), k)
        return self.output_values(y).reshape(-1, ch)

    def input_in_graph_order(self, graph: GraphProto | None) -> bool:
        """True if the Python execution of ``graph`` delivers this node's input in graph order
        (producer an abstract ConvolutionInputGenerator / Im2Col, possibly behind FIFOs or
        width converters); see the module docstring. Irrelevant, hence False, if PE = C."""
        if self.get_nodeattr("PE") == self.get_nodeattr("Channels") or graph is None:
            return False
        producers = {out: n for n in graph.node for out in n.output}
        prod = producers.get(self.onnx_node.input[0])
        while prod is not None and prod.op_type.startswith(PASS_THROUGH):
            prod = producers.get(prod.input[0])
        return prod is not None and prod.op_type in GRAPH_ORDER_PRODUCERS

    def execute_node(self, context: dict[str, np.ndarray], graph: GraphProto | None) -> None:
        node = self.onnx_node
        out = self.compute(context[node.input[0]], self.input_in_graph_order(graph))
        oshape = context[node.output[0]].shape
        context[node.output[0]] = out.reshape(oshape).astype(np.float32)

    # ------------------------------------------------------------ HDL generation

    def generate_hdl(self, model: ModelWrapper | None, out_dir: str | Path) -> list[Path]:
        """Write max_pool.sv and <node>.v (wrapper module named after the node, FINN's port
        names, instance ``core``) into out_dir; returns the HDL file list, dependencies first.
        Sets code_gen_dir_ipgen / ipgen_path. ``model`` is unused (the node has no parameters
        in the graph); it keeps BinMVAU's signature so the flow can treat both alike."""
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for src in rtl_sources(*MAX_POOL_RTL):
            shutil.copy(src, out / src.name)
            files.append(out / src.name)
        wrapper = out / f"{self.onnx_node.name}.v"
        wrapper.write_text(self._wrapper(self.rtl_params()))
        files.append(wrapper)
        self.set_nodeattr("code_gen_dir_ipgen", str(out))
        self.set_nodeattr("ipgen_path", str(out))
        return files

    def get_rtl_file_list(self, abspath: bool = False) -> list[str]:
        """Files written by generate_hdl (FINN's RTLBackend method of the same name)."""
        names = [f"{n}.sv" for n in MAX_POOL_RTL] + [f"{self.onnx_node.name}.v"]
        if not abspath:
            return names
        cg = Path(self.get_nodeattr("code_gen_dir_ipgen"))
        return [str(cg / n) for n in names]

    def _wrapper(self, params: dict) -> str:
        name = self.onnx_node.name
        iw, ow = self.get_instream_width_padded(0), self.get_outstream_width_padded(0)
        plist = ", ".join(f".{k}({v})" for k, v in params.items())
        return f"""// {name}: MaxPoolRTL node, generated by flows/custom_ops/max_pool.py
module {name} (
  input ap_clk,
  input ap_rst_n,
  input [{iw - 1}:0] in0_V_TDATA,
  input in0_V_TVALID,
  output in0_V_TREADY,
  output [{ow - 1}:0] out0_V_TDATA,
  output out0_V_TVALID,
  input out0_V_TREADY
);
  max_pool #({plist}) core (
    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),
    .in0_V_TDATA(in0_V_TDATA), .in0_V_TVALID(in0_V_TVALID), .in0_V_TREADY(in0_V_TREADY),
    .out0_V_TDATA(out0_V_TDATA), .out0_V_TVALID(out0_V_TVALID), .out0_V_TREADY(out0_V_TREADY)
  );
endmodule
"""
