"""BinMVAU: FINN MVAU node for 1-bit (bipolar) weights, executed bit-exactly like rtl/bin_mvau.sv.

Why: FINN's binarized MVAU (binaryXnorMode) has only an HLS backend, and Vitis HLS is not
available. This op keeps FINN's MVAU attributes (MW, MH, PE, SIMD, inputDataType,
weightDataType, outputDataType, binaryXnorMode, noActivation, ActVal, numInputVectors), so a
FINN MVAU node becomes a BinMVAU by changing op_type to "BinMVAU" and domain to
"flows.custom_ops" (see convert_to_bin_mvau.py). Its execute_node runs the golden model of the
RTL (integer, with the RTL's accumulator width), and generate_hdl writes the Verilog wrapper and
the $readmemh files.

Semantics, as in FINN's MVAU.execute_node:
  * binaryXnorMode=1 (inputs and weights BINARY {0,1}, read as bipolar), or both BIPOLAR:
    acc = XNOR-popcount (number of matching bits), in [0, MW].
  * otherwise (integer inputs, BIPOLAR weights): acc = x @ W.
  * noActivation=0: out = #{k: acc >= T[r,k]} (+ActVal), BIPOLAR outputs as -1/+1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from finn.custom_op.fpgadataflow.matrixvectoractivation import MVAU
from qonnx.core.datatype import DataType

from flows.custom_ops import bin_mvau_model as bm
from flows.custom_ops.rtl_sim import BIN_MVAU_RTL, rtl_sources


class BinMVAU(MVAU):
    """MVAU with 1-bit weights implemented by rtl/bin_mvau.sv (instance ``core`` in the wrapper)."""

    def get_nodeattr_types(self):
        attrs = super().get_nodeattr_types()
        # signed accumulator/threshold width of the RTL; 0 = derive (worst case over all weights)
        attrs["accuWidth"] = ("i", False, 0)
        # 1 (bipolar inputs only): the accumulator is the bipolar dot product 2*popcount - MW
        # (RTL XNOR_POPCOUNT=0), which FINN's MVAU cannot express; used for the last layer of
        # a binarized network so the accelerator outputs the integer logits
        attrs["bipolarDot"] = ("i", False, 0)
        return attrs

    def minimize_accumulator_width(self, model, datatype_only=False):
        """Keep the RTL's width: it is already the worst case over all weight values, and FINN's
        MVAU version would re-type a noActivation output away from ``INT<ACCU_WIDTH>``."""
        node = self.onnx_node
        t = model.get_initializer(node.input[2]) if len(node.input) > 2 else None
        adt = DataType[f"INT{self.get_accu_width(self.rtl_thresholds(t))}"]
        self.set_nodeattr("accDataType", adt.name)
        return adt

    # ------------------------------------------------------------ what the RTL computes

    def xnor_popcount(self) -> bool:
        """True when the accumulator is a popcount (FINN's binaryXnorMode / BIPOLAR x BIPOLAR)."""
        idt, wdt = self.get_input_datatype(0), self.get_input_datatype(1)
        return bool(self.get_nodeattr("binaryXnorMode")) or (
            idt == DataType["BIPOLAR"] and wdt == DataType["BIPOLAR"])

    def bipolar_weights(self, w: np.ndarray) -> np.ndarray:
        """Initializer -> (MW, MH) matrix in {-1,+1} (BINARY initializers hold 1 = +1, 0 = -1)."""
        w = np.asarray(w).reshape(self.get_nodeattr("MW"), self.get_nodeattr("MH"))
        if self.get_input_datatype(1) == DataType["BINARY"]:
            w = 2 * w - 1
        return w.astype(np.int64)

    def rtl_thresholds(self, t) -> np.ndarray | None:
        """Integer (MH, NT) thresholds: acc >= T equals acc >= ceil(T) for integer acc."""
        if self.get_nodeattr("noActivation") or t is None:
            return None
        t = np.ceil(np.asarray(t, dtype=np.float64)).astype(np.int64)
        if t.shape[0] == 1:
            t = np.tile(t, (self.get_nodeattr("MH"), 1))
        return t

    def get_accu_width(self, thresholds=None) -> int:
        """Signed width holding any accumulator for ANY weight values (so weight faults cannot
        overflow) and every threshold."""
        if self.get_nodeattr("accuWidth"):
            return self.get_nodeattr("accuWidth")
        mw = self.get_nodeattr("MW")
        idt = self.get_input_datatype(0)
        if self.xnor_popcount() and self.get_nodeattr("bipolarDot"):
            lo, hi = -mw, mw
        elif self.xnor_popcount():
            lo, hi = 0, mw
        else:
            m = max(abs(idt.min()), abs(idt.max()))
            lo, hi = -mw * m, mw * m
        if thresholds is not None and np.size(thresholds):
            lo, hi = min(lo, int(np.min(thresholds))), max(hi, int(np.max(thresholds)))
        bits = 2
        while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
            bits += 1
        return bits

    def rtl_params(self, thresholds=None) -> dict:
        """Parameters of bin_mvau.sv for this node (files not included)."""
        idt, odt = self.get_input_datatype(0), self.get_output_datatype()
        no_act = int(self.get_nodeattr("noActivation"))
        ibits = 1 if self.xnor_popcount() else idt.bitwidth()
        p = dict(MW=self.get_nodeattr("MW"), MH=self.get_nodeattr("MH"),
                 PE=self.get_nodeattr("PE"), SIMD=self.get_nodeattr("SIMD"), IBITS=ibits,
                 SIGNED_IN=int(ibits > 1 and idt.signed()),
                 XNOR_POPCOUNT=int(ibits == 1 and not self.get_nodeattr("bipolarDot")),
                 ACCU_WIDTH=self.get_accu_width(thresholds), NO_ACT=no_act, NT=1, OBITS=1,
                 ACT_VAL=0, RUNTIME_WRITEABLE=int(self.get_nodeattr("runtime_writeable_weights")))
        if ibits > 1 and idt == DataType["BIPOLAR"]:
            raise ValueError("BIPOLAR inputs need BIPOLAR/BINARY weights (XNOR mode)")
        if not no_act:
            p["NT"] = int(np.shape(thresholds)[1])
            if odt == DataType["BIPOLAR"]:
                p["OBITS"] = 1
            else:
                p["OBITS"] = odt.bitwidth()
                p["ACT_VAL"] = int(self.get_nodeattr("ActVal"))
        return p

    def input_codes(self, x: np.ndarray) -> np.ndarray:
        """Stream codes of the input: BIPOLAR -1/+1 -> 0/1; BINARY and integers unchanged."""
        x = np.asarray(x).reshape(-1, self.get_nodeattr("MW"))
        if self.get_input_datatype(0) == DataType["BIPOLAR"]:
            x = (x + 1) / 2
        return np.rint(x).astype(np.int64)

    def compute(self, x, w, t=None) -> np.ndarray:
        """Output values (FINN's meaning, e.g. -1/+1 for BIPOLAR) of the RTL for inputs x."""
        T = self.rtl_thresholds(t)
        p = self.rtl_params(T)
        codes = bm.bin_mvau(self.bipolar_weights(w), self.input_codes(x), p["IBITS"],
                            p["ACCU_WIDTH"], T, p["ACT_VAL"], p["OBITS"], bool(p["SIGNED_IN"]),
                            bool(p["XNOR_POPCOUNT"]))
        if p["NO_ACT"]:
            return codes
        odt = self.get_output_datatype()
        if odt == DataType["BIPOLAR"]:
            return 2 * codes - 1
        if odt.signed():
            return np.where(codes >> (p["OBITS"] - 1), codes - (1 << p["OBITS"]), codes)
        return codes

    def execute_node(self, context, graph):
        node = self.onnx_node
        t = context[node.input[2]] if len(node.input) > 2 else None
        out = self.compute(context[node.input[0]], context[node.input[1]], t)
        oshape = context[node.output[0]].shape
        context[node.output[0]] = out.reshape(oshape).astype(np.float32)

    # ------------------------------------------------------------ HDL generation

    def generate_hdl(self, model, out_dir, abs_paths: bool = True) -> list[Path]:
        """Write <node>.v (wrapper module named after the node, instance ``core``), the RTL
        sources and <node>_weights.dat / <node>_thresholds.dat into out_dir; returns the HDL
        file list (dependencies first). Sets code_gen_dir_ipgen / ipgen_path."""
        node = self.onnx_node
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        W = self.bipolar_weights(model.get_initializer(node.input[1]))
        T = self.rtl_thresholds(model.get_initializer(node.input[2])
                                if len(node.input) > 2 else None)
        p = self.rtl_params(T)
        files = []
        for src in rtl_sources(*BIN_MVAU_RTL):
            shutil.copy(src, out / src.name)
            files.append(out / src.name)
        wfile = out / f"{node.name}_weights.dat"
        bm.write_memh(wfile, bm.pack_weights_memstream(W, p["PE"], p["SIMD"]), p["PE"] * p["SIMD"])
        params = dict(p, WEIGHT_FILE=f'"{wfile if abs_paths else wfile.name}"')
        if T is not None:
            tfile = out / f"{node.name}_thresholds.dat"
            bm.write_memh(tfile, bm.pack_thresholds(T, p["PE"], p["ACCU_WIDTH"]),
                          p["PE"] * p["NT"] * p["ACCU_WIDTH"])
            params["THRESH_FILE"] = f'"{tfile if abs_paths else tfile.name}"'
        (out / f"{node.name}.v").write_text(self._wrapper(params))
        files.append(out / f"{node.name}.v")
        self.set_nodeattr("code_gen_dir_ipgen", str(out))
        self.set_nodeattr("ipgen_path", str(out))
        return files

    def axilite_addr_width(self) -> int:
        """Address width of the wrapper's s_axilite port (FINN memstream map, >= 3)."""
        depth = self.calc_wmem()
        fold = (self.get_nodeattr("PE") * self.get_nodeattr("SIMD") + 31) // 32
        aw = (depth - 1).bit_length() + (fold - 1).bit_length() + 2
        return max(aw, 3)

    def _wrapper(self, params: dict) -> str:
        """Verilog wrapper named after the node with FINN's port names; the s_axilite port
        exists only with runtime_writeable_weights=1 (as in FINN's MVAU)."""
        name = self.onnx_node.name
        iw, ow = self.get_instream_width_padded(0), self.get_outstream_width_padded(0)
        # the memory files are parameters of the wrapper too, so a stitched top level can point
        # them at its own copies (new weights need a new file, not a new wrapper)
        files = {k: v for k, v in params.items() if k in ("WEIGHT_FILE", "THRESH_FILE")}
        header = ", ".join(f"parameter {k} = {v}" for k, v in files.items())
        plist = ",\n".join(f"    .{k}({k if k in files else v})" for k, v in params.items())
        ports = [
            "input ap_clk", "input ap_rst_n",
            f"input [{iw - 1}:0] in0_V_TDATA", "input in0_V_TVALID", "output in0_V_TREADY",
            f"output [{ow - 1}:0] out0_V_TDATA", "output out0_V_TVALID", "input out0_V_TREADY"]
        conns = ["ap_clk", "ap_rst_n", "in0_V_TDATA", "in0_V_TVALID", "in0_V_TREADY",
                 "out0_V_TDATA", "out0_V_TVALID", "out0_V_TREADY"]
        aw = self.axilite_addr_width()
        axil = [("input", "AWVALID", 1), ("output", "AWREADY", 1), ("input", "AWADDR", aw),
                ("input", "WVALID", 1), ("output", "WREADY", 1), ("input", "WDATA", 32),
                ("output", "BVALID", 1), ("input", "BREADY", 1), ("output", "BRESP", 2),
                ("input", "ARVALID", 1), ("output", "ARREADY", 1), ("input", "ARADDR", aw),
                ("output", "RVALID", 1), ("input", "RREADY", 1), ("output", "RDATA", 32),
                ("output", "RRESP", 2)]
        pins = [f".{c}({c})" for c in conns]
        for d, sig, w in axil:
            s = f"s_axilite_{sig}"
            if params["RUNTIME_WRITEABLE"]:
                ports.append(f"{d} [{w - 1}:0] {s}" if w > 1 else f"{d} {s}")
                pins.append(f".{s}({s})")
            elif d == "input":
                tie = "1'b0" if w == 1 else f"{w}'d0"
                pins.append(f".{s}({tie})")
            else:
                pins.append(f".{s}()")
        plist_ports = ",\n  ".join(ports)
        pin_list = ",\n    ".join(pins)
        lint = "" if params["RUNTIME_WRITEABLE"] else (
            "/* verilator lint_off PINCONNECTEMPTY */  // unused AXI-lite outputs\n")
        return f"""// {name}: BinMVAU node, generated by flows/custom_ops/bin_mvau.py
{lint}module {name} #({header}) (
  {plist_ports}
);
  bin_mvau #(
{plist}
  ) core (
    {pin_list}
  );
endmodule
"""

    def fault_memories(self, thresholds=None) -> list[dict]:
        """On-chip memories that can hold faults, paths relative to the wrapper module
        (entries for the build manifest). ``layout`` of the weights is mcel_train.memory's
        ``finn_mvau`` type (bipolar, 1 bit); the thresholds use ``bin_mvau_thresholds``: word
        nf, bits [(pe*NT + k)*element_bits +: element_bits] = T[nf*PE + pe, k], signed."""
        T = self.rtl_thresholds(thresholds)
        p = self.rtl_params(T)
        sf, nf = p["MW"] // p["SIMD"], p["MH"] // p["PE"]
        mems = [dict(kind="weights", path="core.wmem.Mem", depth=sf * nf,
                     width=p["PE"] * p["SIMD"],
                     layout=dict(type="finn_mvau", mh=p["MH"], mw=p["MW"], pe=p["PE"],
                                 simd=p["SIMD"], element_bits=1, signed=False, bipolar=True))]
        if T is not None:
            mems.append(dict(kind="thresholds", path="core.gen_thr.tmem.Mem", depth=nf,
                             width=p["PE"] * p["NT"] * p["ACCU_WIDTH"],
                             layout=dict(type="bin_mvau_thresholds", mh=p["MH"], pe=p["PE"],
                                         nt=p["NT"], element_bits=p["ACCU_WIDTH"],
                                         signed=True)))
        return mems
