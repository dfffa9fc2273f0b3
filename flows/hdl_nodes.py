"""Node -> HDL adapters: how each RTL layer of the dataflow graph is instantiated in ``accel_top``.

The stitcher knows nothing about layer types; it asks this registry. An adapter turns one ONNX
node (after FINN's ``PrepareIP``) into a :class:`NodeHdl`: its source files, its AXI-stream
widths, the SystemVerilog text that instantiates it between two stream bundles, and the on-chip
memories fault injection may target. Layers without an adapter raise
:class:`UnsupportedLayerError`. This module holds the registry and the helpers adapters share;
the adapters live in their own modules (flows/hdl_finn.py for FINN's RTL nodes,
flows/hdl_bin_mvau.py and flows/hdl_max_pool.py for the project's own RTL), which
flows/hdl_adapters.py imports so that they register themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mcel_train.errors import UserInputError


class UnsupportedLayerError(UserInputError):
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


# Memory init files live in the build's ``hdl/mem``; the RTL names them relative to the
# simulator's working directory, where the runners link that folder (hw_sim/verilate.py).
MEM_DIR = "mem"


def init_param_path(path: Path) -> str:
    """The init-file parameter value of a memory file (relative: ``mem/<file name>``)."""
    return f"{MEM_DIR}/{Path(path).name}"


Adapter = Callable[[object, object], NodeHdl]
REGISTRY: dict[str, Adapter] = {}


def register_hdl(op_type: str) -> Callable[[Adapter], Adapter]:
    """Decorator: register ``fn(node, model) -> NodeHdl`` as the adapter of ``op_type``."""

    def deco(fn: Adapter) -> Adapter:
        REGISTRY[op_type] = fn
        return fn

    return deco


def pad8(bits: int) -> int:
    return (int(bits) + 7) // 8 * 8


def stream_pins(prefix: str, bundle: str) -> str:
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


def custom_op(node):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node)


def codegen_dir(inst) -> Path:
    return Path(inst.get_nodeattr("code_gen_dir_ipgen"))
