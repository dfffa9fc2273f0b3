"""HDL adapters of FINN's own RTL nodes: MVAU, thresholding, FIFO, width converter, and for
convolutions the feature-map padding and the sliding window generator.

Each adapter turns one node (after FINN's ``PrepareIP``) into a :class:`flows.hdl_nodes.NodeHdl`
for the stitcher, registered by op type (flows/hdl_nodes.py).
"""

from __future__ import annotations

from pathlib import Path

from flows.hdl_nodes import (
    AXILITE_TIEOFF,
    MemoryInfo,
    NodeHdl,
    UnsupportedLayerError,
    axilite_pins,
    codegen_dir,
    custom_op,
    memstream_addr_width,
    pad8,
    register_hdl,
    stream_pins,
)


@register_hdl("MVAU_rtl")
def mvau_rtl(node, model) -> NodeHdl:
    """FINN's RTL MVU plus its weight memstream (mem_mode ``internal_decoupled``).

    ``NARROW_WEIGHTS`` is forced to 0: FINN sets it to 1 when no trained weight equals the
    datatype minimum, which lets the DSP lane packing assume weights in (-W, W). A bit flip can
    produce -W, so the fault-injected design must compute every datatype value exactly.
    """
    inst = custom_op(node)
    name = node.name
    if inst.get_nodeattr("mem_mode") != "internal_decoupled":
        raise UnsupportedLayerError(
            f"unsupported layer {name} ({node.op_type}): mem_mode "
            f"{inst.get_nodeattr('mem_mode')!r}, only 'internal_decoupled' is stitched"
        )
    if inst.get_nodeattr("binaryXnorMode"):
        raise UnsupportedLayerError(f"unsupported layer {name} ({node.op_type}): binaryXnorMode")
    cg = codegen_dir(inst)
    top = inst.get_nodeattr("gen_top_module") or name
    pe, simd = inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")
    mw, mh = inst.get_nodeattr("MW"), inst.get_nodeattr("MH")
    wbits = inst.get_input_datatype(1).bitwidth()
    # The memory word is the weight stream width padded to whole bytes (FINN's memstream
    # WIDTH); only the low PE*SIMD*B bits feed the MVU, the padding bits are never read.
    depth, data_bits = inst.calc_wmem(), pe * simd * wbits
    width = int(inst.get_instream_width_padded(1))
    init = cg / "memblock.dat"
    wmem = f"{name}_wmem"

    def instantiate(i: str, o: str, init_file: str | None = None,
                    axil_prefix: str | None = None) -> str:
        w = f"{name}_w"
        axil = (axilite_pins(axil_prefix) if axil_prefix else
                f"{AXILITE_TIEOFF},\n    .s_axilite_AWPROT('0), .s_axilite_ARPROT('0)")
        return (
            f"  wire [{pad8(width) - 1}:0] {w}_tdata;\n  wire {w}_tvalid, {w}_tready;\n"
            f"  {top}_memstream_wrapper #(.INIT_FILE(\"{init_file or init}\")) {wmem} (\n"
            f"    .ap_clk(ap_clk), .ap_clk2x(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    {axil},\n"
            f"    .s_axis_0_tready(), .s_axis_0_tvalid(1'b0), .s_axis_0_tdata('0),\n"
            f"    .m_axis_0_tready({w}_tready), .m_axis_0_tvalid({w}_tvalid), "
            f".m_axis_0_tdata({w}_tdata)\n  );\n"
            f"  {top} #(.NARROW_WEIGHTS(0)) {name} (\n"
            f"    .ap_clk(ap_clk), .ap_clk2x(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    .in1_V_TDATA({w}_tdata), .in1_V_TVALID({w}_tvalid), .in1_V_TREADY({w}_tready),\n"
            f"    {stream_pins('in0_V', i)},\n    {stream_pins('out0_V', o)}\n  );\n"
        )

    mem = MemoryInfo(
        kind="weights",
        rel_path=f"{wmem}.core.genUnpumped.mem.blkMem.Mem",
        depth=depth,
        width=width,
        init_file=init,
        extra={"mh": mh, "mw": mw, "pe": pe, "simd": simd, "element_bits": wbits,
               "data_bits": data_bits,
               "datatype": inst.get_input_datatype(1).name, "instance": wmem,
               "init_param": "INIT_FILE"},
    )
    lib = [
        "axi/hdl/axilite.sv", "memstream/hdl/memstream_axi.sv", "memstream/hdl/memstream.sv",
    ] + [f"mvu/{f}" for f in ("mvu_pkg.sv", "mvu_vvu_axi.sv", "replay_buffer.sv", "mvu.sv",
                              "mvu_vvu_8sx9_dsp58.sv", "add_multi.sv")]
    return NodeHdl(
        name=name, op_type=node.op_type,
        sources=[cg / f"{top}_wrapper.v", cg / f"{top}_memstream_wrapper.v"],
        lib_sources=lib, in_width=pad8(inst.get_instream_width()),
        out_width=pad8(inst.get_outstream_width()), instantiate=instantiate, memories=[mem],
        axilite_addr_width=memstream_addr_width(cg / f"{top}_memstream_wrapper.v"),
    )


@register_hdl("Thresholding_rtl")
def thresholding_rtl(node, model) -> NodeHdl:
    """FINN's RTL thresholding: a binary search over per-stage threshold memories."""
    inst = custom_op(node)
    name = node.name
    cg = codegen_dir(inst)
    top = inst.get_nodeattr("gen_top_module") or name
    pe, ch = inst.get_nodeattr("PE"), inst.get_nodeattr("NumChannels")
    if model.get_initializer(node.input[1]).shape[0] == 1:
        # One threshold set for all channels (a per-tensor quantizer): FINN's RTL then holds
        # PE copies of it, one per lane, and channel c reads lane c % PE's copy.
        ch = pe
    obits = inst.get_output_datatype().bitwidth()
    wt = inst.get_input_datatype(1).bitwidth()
    prefix = cg / f"{name}_"
    memories = []
    for stage in range(obits):
        for p in range(pe):
            memories.append(
                MemoryInfo(
                    kind="thresholds",
                    rel_path=f"{name}.core.impl.genStages[{stage}].genPE[{p}].blkThresh.Threshs",
                    depth=(ch // pe) * 2**stage,
                    width=wt,
                    init_file=Path(f"{prefix}threshs_{p}_{stage}.dat"),
                    extra={"channels": ch, "pe": pe, "pe_index": p, "stage": stage,
                           "out_bits": obits, "num_steps": inst.get_nodeattr("numSteps"),
                           "element_bits": wt, "datatype": inst.get_input_datatype(1).name,
                           # the RTL compares thresholds as signed only if its input is signed
                           "signed": bool(inst.get_input_datatype(0).signed()),
                           "instance": name, "init_param": "THRESHOLDS_PATH"},
                )
            )

    def instantiate(i: str, o: str, init_file: str | None = None) -> str:
        return (
            f"  {top} #(.THRESHOLDS_PATH(\"{init_file or prefix}\")) {name} (\n"
            f"    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n    {AXILITE_TIEOFF},\n"
            f"    .in1_V_TREADY(), .in1_V_TVALID(1'b0), .in1_V_TDATA('0),\n"
            f"    {stream_pins('in0_V', i)},\n    {stream_pins('out0_V', o)}\n  );\n"
        )

    return NodeHdl(
        name=name, op_type=node.op_type, sources=[cg / f"{top}.v"],
        lib_sources=["axi/hdl/axilite.sv", "thresholding/hdl/thresholding.sv",
                     "thresholding/hdl/thresholding_axi.sv"],
        in_width=pad8(inst.get_instream_width()), out_width=pad8(inst.get_outstream_width()),
        instantiate=instantiate, memories=memories,
    )


def _stream_node(node, sources: list[str], lib: list[str], axilite: bool = False, pins: str = "") -> NodeHdl:
    """A node with only clock, reset and its two streams (plus, for FINN's FMPadding, an AXI-lite
    port for run-time reconfiguration, tied off: the geometry is fixed at build time). ``sources``
    are file name patterns in the node's code generation folder, ``{top}`` its module; ``pins``
    extra port connections after reset."""
    inst = custom_op(node)
    cg = codegen_dir(inst)
    top = inst.get_nodeattr("gen_top_module") or node.name
    tie = f"    {AXILITE_TIEOFF},\n" if axilite else ""

    def instantiate(i: str, o: str, init_file: str | None = None) -> str:
        return (
            f"  {top} {node.name} (\n    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),{pins}\n{tie}"
            f"    {stream_pins('in0_V', i)},\n    {stream_pins('out0_V', o)}\n  );\n"
        )

    return NodeHdl(
        name=node.name, op_type=node.op_type, sources=[cg / s.format(top=top) for s in sources],
        lib_sources=lib, in_width=pad8(inst.get_instream_width()), out_width=pad8(inst.get_outstream_width()),
        instantiate=instantiate,
    )


@register_hdl("StreamingFIFO_rtl")
def fifo_rtl(node, model) -> NodeHdl:
    """FINN's RTL FIFO (a gauge FIFO under ``FINN_SIMULATION``)."""
    return _stream_node(node, ["{top}.v"], ["fifo/hdl/fifo_gauge.sv", "fifo/hdl/fifo.sv"],
                        pins=" .count(), .maxcount(),")


@register_hdl("StreamingDataWidthConverter_rtl")
def dwc_rtl(node, model) -> NodeHdl:
    """FINN's RTL data width converter (inserted where neighbouring PE/SIMD differ)."""
    return _stream_node(node, ["{top}.v"], ["dwc/hdl/vpc.sv", "dwc/hdl/dwc_axi.sv"])


@register_hdl("FMPadding_rtl")
def fmpadding_rtl(node, model) -> NodeHdl:
    """FINN's RTL feature-map padding (zeros around each image, NHWC)."""
    lib = [f"fmpadding/hdl/{f}" for f in ("axi2we.sv", "fmpadding.sv", "fmpadding_axi.sv")]
    return _stream_node(node, ["{top}.v"], lib, axilite=True)


@register_hdl("ConvolutionInputGenerator_rtl")
def swg_rtl(node, model) -> NodeHdl:
    """FINN's RTL sliding window generator: im2col windows for a convolution, or (depthwise)
    the windows a max-pool reduces. Its implementation module is generated per node."""
    if custom_op(node).get_nodeattr("dynamic_mode"):
        raise UnsupportedLayerError(f"unsupported layer {node.name} ({node.op_type}): dynamic_mode")
    return _stream_node(node, ["{top}_wrapper.v", "{top}_impl.sv"], ["swg/swg_pkg.sv", "swg/swg_common.sv"])
