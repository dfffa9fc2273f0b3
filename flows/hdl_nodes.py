"""Node -> HDL adapters: how each RTL layer of the dataflow graph is instantiated in ``accel_top``.

The stitcher knows nothing about layer types; it asks this registry. An adapter turns one ONNX
node (after FINN's ``PrepareIP``) into a :class:`NodeHdl`: its source files, its AXI-stream
widths, the SystemVerilog text that instantiates it between two stream bundles, and the on-chip
memories fault injection may target. Layers without an adapter (for example binarized MVAUs,
which FINN offers only as HLS) raise :class:`UnsupportedLayerError`; the project's own RTL for
them plugs in with :func:`register_hdl` without touching the stitcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class UnsupportedLayerError(ValueError):
    """A node type has no HDL adapter (no RTL available for it in this flow)."""


@dataclass
class MemoryInfo:
    """One on-chip memory array of a node (filled in further by :mod:`flows.manifest`)."""

    kind: str  # "weights" or "thresholds"
    rel_path: str  # hierarchical path below the node's instance root, e.g. "<inst>_wmem.core..."
    depth: int
    width: int
    init_file: Path
    extra: dict = field(default_factory=dict)


@dataclass
class NodeHdl:
    """Everything the stitcher needs to know about one node."""

    name: str
    op_type: str
    sources: list[Path]  # generated, node-specific files (copied into the build's hdl/ folder)
    lib_sources: list[str]  # finn-rtllib files, relative to the finn-rtllib root
    in_width: int  # AXI-stream tdata width (bytes-padded)
    out_width: int
    instantiate: Callable[..., str]  # (input bundle, output bundle, init_file, axil_prefix)
    memories: list[MemoryInfo] = field(default_factory=list)
    # address width of the node's weight-memory AXI-lite port (None: the node has none); the
    # stitcher exposes it at accel_top as ``s_axilite_<node>_*`` when asked (runtime_writeable)
    axilite_addr_width: int | None = None


Adapter = Callable[[object, object], NodeHdl]
_REGISTRY: dict[str, Adapter] = {}


def register_hdl(op_type: str) -> Callable[[Adapter], Adapter]:
    """Decorator: register ``fn(node, model) -> NodeHdl`` as the adapter of ``op_type``."""

    def deco(fn: Adapter) -> Adapter:
        _REGISTRY[op_type] = fn
        return fn

    return deco


def supported_op_types() -> list[str]:
    return sorted(_REGISTRY)


def require_supported(model) -> None:
    """Raise :class:`UnsupportedLayerError` for the first node whose op type has no adapter."""
    for node in model.graph.node:
        if node.op_type not in _REGISTRY:
            raise UnsupportedLayerError(
                f"unsupported layer {node.name} ({node.op_type}): no RTL adapter; supported op "
                f"types are {', '.join(supported_op_types())}"
            )


def node_hdl(node, model) -> NodeHdl:
    """The adapter's description of ``node``; raises for node types without RTL."""
    fn = _REGISTRY.get(node.op_type)
    if fn is None:
        raise UnsupportedLayerError(
            f"unsupported layer {node.name} ({node.op_type}): no RTL adapter; supported op types "
            f"are {', '.join(supported_op_types())}"
        )
    return fn(node, model)


def _pad8(bits: int) -> int:
    return (int(bits) + 7) // 8 * 8


def _stream(prefix: str, bundle: str) -> str:
    """Port connections of a FINN ``<prefix>_TDATA/TVALID/TREADY`` port to a wire bundle."""
    return (
        f".{prefix}_TDATA({bundle}_tdata), .{prefix}_TVALID({bundle}_tvalid), "
        f".{prefix}_TREADY({bundle}_tready)"
    )


# AXI-lite signals at accel_top (hw_sim/harness.py's naming: ``<prefix>_<suffix>``, lower case,
# 32-bit data): (direction at accel_top, suffix, width; None = the port's address width)
AXILITE_TOP_SIGNALS = (
    ("input", "awvalid", 1), ("output", "awready", 1), ("input", "awaddr", None),
    ("input", "awprot", 3), ("input", "wvalid", 1), ("output", "wready", 1),
    ("input", "wdata", 32), ("input", "wstrb", 4), ("output", "bvalid", 1),
    ("input", "bready", 1), ("output", "bresp", 2), ("input", "arvalid", 1),
    ("output", "arready", 1), ("input", "araddr", None), ("input", "arprot", 3),
    ("output", "rvalid", 1), ("input", "rready", 1), ("output", "rdata", 32),
    ("output", "rresp", 2),
)


def axilite_top_ports(prefix: str, addr_width: int) -> list[str]:
    """Port declarations of one exposed AXI-lite port of ``accel_top``."""
    out = []
    for direction, suffix, width in AXILITE_TOP_SIGNALS:
        w = addr_width if width is None else width
        rng = f"[{w - 1}:0] " if w > 1 else ""
        out.append(f"  {direction:6} logic {rng}{prefix}_{suffix}")
    return out


def axilite_pins(prefix: str, suffixes=None) -> str:
    """``.s_axilite_<SUFFIX>(<prefix>_<suffix>)`` for the wrapper's AXI-lite pins (all by default)."""
    names = [s for _, s, _ in AXILITE_TOP_SIGNALS if suffixes is None or s in suffixes]
    return ", ".join(f".s_axilite_{s.upper()}({prefix}_{s})" for s in names)


def memstream_addr_width(wrapper: Path) -> int:
    """``AXILITE_ADDR_WIDTH`` of a FINN memstream wrapper, from its DEPTH/WIDTH defaults."""
    import re

    text = Path(wrapper).read_text()
    depth = int(re.search(r"parameter\s+DEPTH\s*=\s*(\d+)", text).group(1))
    width = int(re.search(r"parameter\s+WIDTH\s*=\s*(\d+)", text).group(1))
    sets = int(re.search(r"parameter\s+SETS\s*=\s*(\d+)", text).group(1))
    k = 1 << ((width + 31) // 32 - 1).bit_length()
    return (sets * depth * k - 1).bit_length() + 2


AXILITE_TIEOFF = (
    ".s_axilite_AWVALID(1'b0), .s_axilite_AWREADY(), .s_axilite_AWADDR('0), "
    ".s_axilite_WVALID(1'b0), .s_axilite_WREADY(), .s_axilite_WDATA('0), .s_axilite_WSTRB('0), "
    ".s_axilite_BVALID(), .s_axilite_BREADY(1'b1), .s_axilite_BRESP(), "
    ".s_axilite_ARVALID(1'b0), .s_axilite_ARREADY(), .s_axilite_ARADDR('0), "
    ".s_axilite_RVALID(), .s_axilite_RREADY(1'b1), .s_axilite_RDATA(), .s_axilite_RRESP()"
)


def _inst(node):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node)


def _codegen(inst) -> Path:
    return Path(inst.get_nodeattr("code_gen_dir_ipgen"))


@register_hdl("MVAU_rtl")
def mvau_rtl(node, model) -> NodeHdl:
    """FINN's RTL MVU plus its weight memstream (mem_mode ``internal_decoupled``).

    ``NARROW_WEIGHTS`` is forced to 0: FINN sets it to 1 when no trained weight equals the
    datatype minimum, which lets the DSP lane packing assume weights in (-W, W). A bit flip can
    produce -W, so the fault-injected design must compute every datatype value exactly.
    """
    inst = _inst(node)
    name = node.name
    if inst.get_nodeattr("mem_mode") != "internal_decoupled":
        raise UnsupportedLayerError(
            f"unsupported layer {name} ({node.op_type}): mem_mode "
            f"{inst.get_nodeattr('mem_mode')!r}, only 'internal_decoupled' is stitched"
        )
    if inst.get_nodeattr("binaryXnorMode"):
        raise UnsupportedLayerError(f"unsupported layer {name} ({node.op_type}): binaryXnorMode")
    cg = _codegen(inst)
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
            f"  wire [{_pad8(width) - 1}:0] {w}_tdata;\n  wire {w}_tvalid, {w}_tready;\n"
            f"  {top}_memstream_wrapper #(.INIT_FILE(\"{init_file or init}\")) {wmem} (\n"
            f"    .ap_clk(ap_clk), .ap_clk2x(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    {axil},\n"
            f"    .s_axis_0_tready(), .s_axis_0_tvalid(1'b0), .s_axis_0_tdata('0),\n"
            f"    .m_axis_0_tready({w}_tready), .m_axis_0_tvalid({w}_tvalid), "
            f".m_axis_0_tdata({w}_tdata)\n  );\n"
            f"  {top} #(.NARROW_WEIGHTS(0)) {name} (\n"
            f"    .ap_clk(ap_clk), .ap_clk2x(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    .in1_V_TDATA({w}_tdata), .in1_V_TVALID({w}_tvalid), .in1_V_TREADY({w}_tready),\n"
            f"    {_stream('in0_V', i)},\n    {_stream('out0_V', o)}\n  );\n"
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
        lib_sources=lib, in_width=_pad8(inst.get_instream_width()),
        out_width=_pad8(inst.get_outstream_width()), instantiate=instantiate, memories=[mem],
        axilite_addr_width=memstream_addr_width(cg / f"{top}_memstream_wrapper.v"),
    )


@register_hdl("Thresholding_rtl")
def thresholding_rtl(node, model) -> NodeHdl:
    """FINN's RTL thresholding: a binary search over per-stage threshold memories."""
    inst = _inst(node)
    name = node.name
    cg = _codegen(inst)
    top = inst.get_nodeattr("gen_top_module") or name
    pe, ch = inst.get_nodeattr("PE"), inst.get_nodeattr("NumChannels")
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
                           "instance": name, "init_param": "THRESHOLDS_PATH"},
                )
            )

    def instantiate(i: str, o: str, init_file: str | None = None) -> str:
        return (
            f"  {top} #(.THRESHOLDS_PATH(\"{init_file or prefix}\")) {name} (\n"
            f"    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n    {AXILITE_TIEOFF},\n"
            f"    .in1_V_TREADY(), .in1_V_TVALID(1'b0), .in1_V_TDATA('0),\n"
            f"    {_stream('in0_V', i)},\n    {_stream('out0_V', o)}\n  );\n"
        )

    return NodeHdl(
        name=name, op_type=node.op_type, sources=[cg / f"{top}.v"],
        lib_sources=["axi/hdl/axilite.sv", "thresholding/hdl/thresholding.sv",
                     "thresholding/hdl/thresholding_axi.sv"],
        in_width=_pad8(inst.get_instream_width()), out_width=_pad8(inst.get_outstream_width()),
        instantiate=instantiate, memories=memories,
    )


@register_hdl("StreamingFIFO_rtl")
def fifo_rtl(node, model) -> NodeHdl:
    """FINN's RTL FIFO (a gauge FIFO under ``FINN_SIMULATION``)."""
    inst = _inst(node)
    name = node.name
    cg = _codegen(inst)
    top = inst.get_nodeattr("gen_top_module") or name

    def instantiate(i: str, o: str, init_file: str | None = None) -> str:
        return (
            f"  {top} {name} (\n    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n), .count(), .maxcount(),\n"
            f"    {_stream('in0_V', i)},\n    {_stream('out0_V', o)}\n  );\n"
        )

    lib = ["fifo/hdl/fifo_gauge.sv", "fifo/hdl/fifo.sv"]
    return NodeHdl(
        name=name, op_type=node.op_type, sources=[cg / f"{top}.v"], lib_sources=lib,
        in_width=_pad8(inst.get_instream_width()), out_width=_pad8(inst.get_outstream_width()),
        instantiate=instantiate,
    )


@register_hdl("StreamingDataWidthConverter_rtl")
def dwc_rtl(node, model) -> NodeHdl:
    """FINN's RTL data width converter (inserted where neighbouring PE/SIMD differ)."""
    inst = _inst(node)
    name = node.name
    cg = _codegen(inst)
    top = inst.get_nodeattr("gen_top_module") or name

    def instantiate(i: str, o: str, init_file: str | None = None) -> str:
        return (
            f"  {top} {name} (\n    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    {_stream('in0_V', i)},\n    {_stream('out0_V', o)}\n  );\n"
        )

    return NodeHdl(
        name=name, op_type=node.op_type, sources=[cg / f"{top}.v"],
        lib_sources=["dwc/hdl/vpc.sv", "dwc/hdl/dwc_axi.sv"],
        in_width=_pad8(inst.get_instream_width()), out_width=_pad8(inst.get_outstream_width()),
        instantiate=instantiate,
    )


# The project's own RTL layers register themselves on import (kept in their own modules).
import flows.hdl_bin_mvau  # noqa: E402,F401
