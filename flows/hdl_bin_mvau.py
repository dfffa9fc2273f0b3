"""HDL adapter of the project's ``BinMVAU`` (rtl/bin_mvau.sv) for the stitcher.

Why a module of its own: FINN has binarized MVAUs only as HLS, so the flow converts them to
``BinMVAU`` (flows/custom_ops) and writes their HDL with ``BinMVAU.generate_hdl``; this adapter
tells the stitcher how to instantiate the generated wrapper (module and instance named after the
node) and which memories fault injection may target:

* weights ``<node>.core.wmem.Mem``: ``finn_mvau`` layout, 1-bit elements, bit 1 = +1
  (byte-identical to FINN's ``memblock.dat`` for the same node), init parameter ``WEIGHT_FILE``;
* embedded thresholds (w1a1 hidden layers) ``<node>.core.gen_thr.tmem.Mem``: layout
  ``bin_mvau_thresholds`` (see :mod:`mcel_train.memory`), init parameter ``THRESH_FILE``.
"""

from __future__ import annotations

from pathlib import Path

from flows.hdl_nodes import (
    MemoryInfo,
    NodeHdl,
    axilite_pins,
    codegen_dir,
    custom_op,
    init_param_path,
    pad8,
    register_hdl,
    stream_pins,
)

AXIL_SIGNALS = (  # (direction at the wrapper, FINN port suffix, width or None = address width)
    ("input", "AWVALID", 1), ("output", "AWREADY", 1), ("input", "AWADDR", None),
    ("input", "WVALID", 1), ("output", "WREADY", 1), ("input", "WDATA", 32),
    ("output", "BVALID", 1), ("input", "BREADY", 1), ("output", "BRESP", 2),
    ("input", "ARVALID", 1), ("output", "ARREADY", 1), ("input", "ARADDR", None),
    ("output", "RVALID", 1), ("input", "RREADY", 1), ("output", "RDATA", 32),
    ("output", "RRESP", 2),
)


def _tie(direction: str, signal: str) -> str:
    """Tie-off of an unused AXI-lite pin: inputs idle (ready inputs high), outputs open."""
    if direction == "output":
        return ""
    return "1'b1" if signal.endswith("READY") else "'0"


def _graph_thresholds(node, model):
    return model.get_initializer(node.input[2]) if len(node.input) > 2 else None


@register_hdl("BinMVAU")
def bin_mvau(node, model) -> NodeHdl:
    """The wrapper written by ``BinMVAU.generate_hdl`` (step ``generate_hdl``)."""
    inst = custom_op(node)
    name = node.name
    cg = codegen_dir(inst)
    if not (cg / f"{name}.v").exists():
        raise FileNotFoundError(f"{name}: no generated wrapper in {cg} (run generate_hdl first)")
    T = inst.rtl_thresholds(_graph_thresholds(node, model))
    p = inst.rtl_params(T)
    writeable = bool(p["RUNTIME_WRITEABLE"])
    aw = inst.axilite_addr_width()
    memories = []
    for m in inst.fault_memories(_graph_thresholds(node, model)):
        if m["kind"] == "weights":
            init, param = cg / f"{name}_weights.dat", "WEIGHT_FILE"
            extra = {"mh": p["MH"], "mw": p["MW"], "pe": p["PE"], "simd": p["SIMD"],
                     "element_bits": 1, "data_bits": p["PE"] * p["SIMD"], "datatype": "BIPOLAR",
                     "axilite_addr_width": aw}
        else:
            init, param = cg / f"{name}_thresholds.dat", "THRESH_FILE"
            extra = {"element_bits": p["ACCU_WIDTH"], "datatype": f"INT{p['ACCU_WIDTH']}",
                     "pe": p["PE"]}
        extra.update(instance=name, init_param=param, layout=m["layout"])
        memories.append(MemoryInfo(kind=m["kind"], rel_path=f"{name}.{m['path']}",
                                   depth=m["depth"], width=m["width"], init_file=init,
                                   extra=extra))

    def instantiate(i: str, o: str, init_file: str | None = None,
                    axil_prefix: str | None = None) -> str:
        # init files: the (copied) paths of the memory records, updated by the stitcher
        params = ", ".join(f".{m.extra['init_param']}(\"{init_param_path(m.init_file)}\")" for m in memories)
        pins = ""
        if writeable:
            if axil_prefix:  # no AWPROT/ARPROT/WSTRB on bin_mvau: those top inputs are unused
                pins = ",\n    " + axilite_pins(axil_prefix, {s.lower() for _, s, _ in AXIL_SIGNALS})
            else:  # port present but unused: tie it off
                pins = "".join(f",\n    .s_axilite_{s}({_tie(d, s)})" for d, s, _ in AXIL_SIGNALS)
        return (
            f"  {name} #({params}) {name} (\n"
            f"    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    {stream_pins('in0_V', i)},\n    {stream_pins('out0_V', o)}{pins}\n  );\n"
        )

    sources = [cg / f"{s}.sv" for s in ("param_mem", "axil_mem_port", "bin_mvau")]
    return NodeHdl(
        name=name, op_type=node.op_type, sources=sources + [Path(cg / f"{name}.v")],
        lib_sources=[], in_width=pad8(inst.get_instream_width()),
        out_width=pad8(inst.get_outstream_width()), instantiate=instantiate, memories=memories,
        axilite_addr_width=aw if writeable else None,
    )
