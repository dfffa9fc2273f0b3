"""The stitcher: one ``accel_top`` module chaining the generated RTL nodes of a dataflow graph.

FINN's ``CreateStitchedIP`` needs Vivado, so this module writes the top level itself. The graph
must be a chain (one stream in, one stream out, as an MLP gives). Everything the simulator needs
is copied into the build's ``hdl/`` folder, so the build never points into site-packages and
the FINN library can be patched on the copy:

* ``hdl/gen/``        node wrappers written by FINN's ``PrepareIP``
* ``hdl/finn-rtllib/`` the library files those wrappers use (``add_multi.sv`` patched, see below)
* ``hdl/mem/``        memory init files (weights ``<node>_memblock.dat``, thresholds
  ``<node>_threshs_<pe>_<stage>.dat``); ``accel_top`` passes their absolute paths as parameters,
  so new weights need a new file, not a new Verilator build
* ``hdl/accel_top.sv`` and ``hdl/filelist.f`` (packages first)

Instance names are the node names (``MVAU_rtl_0``; its weight memory is ``MVAU_rtl_0_wmem``),
so memory paths in the manifest are stable across foldings.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from flows.finn_env import finn_rtllib_dir
from flows.hdl_adapters import node_hdl
from flows.hdl_nodes import MEM_DIR, NodeHdl, axilite_top_ports, init_param_path

TOP = "accel_top"

# finn-plus 1.6.1's add_multi.sv declares a constant function inside a generate block, which
# Verilator 5.48 rejects. The same function at module scope (it only depends on N) is equivalent.
_ADD_MULTI_FUNC = re.compile(
    r"\n(\t\t// Compute the count of decendents.*?endfunction : init_leaf_loads\n)", re.S
)


class StitchError(RuntimeError):
    """The graph cannot be stitched (not a chain, mismatched stream widths)."""


@dataclass
class StitchResult:
    """Paths and facts of the stitched design."""

    top: str
    top_file: Path
    filelist: Path
    sources: list[Path]
    nodes: list[NodeHdl]
    in_width: int
    out_width: int
    init_files: dict[str, Path]  # node name -> init file (weights) or prefix (thresholds)
    axilite_ports: list[dict] = field(default_factory=list)  # {"prefix", "addr_width", "node"}


def patch_add_multi(text: str) -> str:
    """Move ``init_leaf_loads`` (and its typedef) from the generate block to module scope."""
    m = _ADD_MULTI_FUNC.search(text)
    if not m:
        func, gen = text.find("function leaf_load_t init_leaf_loads"), text.find("begin : genTree")
        if func < 0 or (0 <= func < gen):  # nothing to move, or already patched
            return text
        raise StitchError("add_multi.sv changed: cannot find init_leaf_loads to move")
    block = m.group(1)
    text = text.replace(block, "")
    lines = block.split("\n")
    unindented = "\n".join(line[1:] if line.startswith("\t") else line for line in lines)
    anchor = "\tlocalparam int unsigned  L = $clog2(N);"
    if anchor not in text:
        raise StitchError("add_multi.sv changed: cannot find the anchor for init_leaf_loads")
    return text.replace(anchor, unindented + "\n" + anchor, 1)


def _check_chain(model) -> None:
    nodes = list(model.graph.node)
    for a, b in zip(nodes, nodes[1:], strict=False):
        if list(a.output) != list(b.input[:1]) or len(a.output) != 1:
            raise StitchError(f"graph is not a chain between {a.name} and {b.name}")


def _copy_lib(lib_files: list[str], dest: Path) -> list[Path]:
    src_root = finn_rtllib_dir()
    out = []
    for rel in lib_files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (src_root / rel).read_text()
        if rel.endswith("mvu/add_multi.sv"):
            text = patch_add_multi(text)
        target.write_text(text)
        out.append(target)
    return out


def _copy_memories(nodes: list[NodeHdl], mem_dir: Path) -> dict[str, str]:
    """Copy init files into ``mem_dir``; returns node -> init parameter, updates memory records.

    The parameters are relative (``mem/<file>``, :func:`flows.hdl_nodes.init_param_path`): the
    simulator resolves them against its working directory, where the runners link the build's
    ``hdl/mem`` folder, so a moved or copied build simulates without a rebuild.
    """
    mem_dir.mkdir(parents=True, exist_ok=True)
    params: dict[str, str] = {}
    for n in nodes:
        for mem in n.memories:
            if mem.kind == "weights":
                target = mem_dir / f"{n.name}_memblock.dat"
                params[n.name] = init_param_path(target)
            else:
                target = mem_dir / mem.init_file.name
                params[n.name] = f"{MEM_DIR}/{n.name}_"
            shutil.copyfile(mem.init_file, target)
            mem.init_file = target.resolve()
    return params


def axilite_prefix(node_name: str) -> str:
    """Signal prefix of a node's weight AXI-lite port at ``accel_top`` (FINN's ``s_axilite``)."""
    return f"s_axilite_{node_name}"


def exposed_axilite(nodes: list[NodeHdl]) -> list[dict]:
    """The weight AXI-lite ports ``accel_top`` exposes (nodes that have one)."""
    return [{"prefix": axilite_prefix(n.name), "addr_width": n.axilite_addr_width, "node": n.name}
            for n in nodes if n.axilite_addr_width]


def render_top(nodes: list[NodeHdl], init_files: dict[str, str],
               expose_axilite: bool = False) -> str:
    """SystemVerilog text of ``accel_top``: AXI-stream in/out, the nodes chained by wires, and
    (``expose_axilite``) every weight memory's AXI-lite port as ``s_axilite_<node>_*``."""
    in_w, out_w = nodes[0].in_width, nodes[-1].out_width
    axil = exposed_axilite(nodes) if expose_axilite else []
    axil_decl = [f"{p}," for a in axil for p in axilite_top_ports(a["prefix"], a["addr_width"])]
    lines = [
        "// Generated by flows/stitch.py: FINN RTL nodes chained into one AXI-stream top level.",
        f"module {TOP} (",
        "  input  logic ap_clk,",
        "  input  logic ap_rst_n,",
        *axil_decl,
        f"  input  logic [{in_w - 1}:0] s_axis_0_tdata,",
        "  input  logic s_axis_0_tvalid,",
        "  output logic s_axis_0_tready,",
        f"  output logic [{out_w - 1}:0] m_axis_0_tdata,",
        "  output logic m_axis_0_tvalid,",
        "  input  logic m_axis_0_tready",
        ");",
    ]
    prev = "s_axis_0"
    for i, n in enumerate(nodes):
        if i and nodes[i - 1].out_width != n.in_width:
            raise StitchError(
                f"stream width mismatch {nodes[i - 1].name} ({nodes[i - 1].out_width} bits) -> "
                f"{n.name} ({n.in_width} bits)"
            )
        out = "m_axis_0" if i == len(nodes) - 1 else f"{n.name}_out"
        if out != "m_axis_0":
            lines.append(
                f"  wire [{n.out_width - 1}:0] {out}_tdata;\n  wire {out}_tvalid, {out}_tready;"
            )
        init = init_files.get(n.name)
        kw = {"axil_prefix": axilite_prefix(n.name)} if any(a["node"] == n.name
                                                           for a in axil) else {}
        lines.append(n.instantiate(prev, out, str(init) if init else None, **kw))
        prev = out
    lines.append(f"endmodule : {TOP}\n")
    return "\n".join(lines)


def stitch(model, hdl_dir: Path, expose_axilite: bool = False) -> StitchResult:
    """Write ``accel_top.sv``, the file list and copies of all sources into ``hdl_dir``.

    ``expose_axilite``: route each weight memory's AXI-lite port to ``accel_top`` (nodes built
    with ``runtime_writeable_weights=1``); otherwise the ports are tied off inside.
    """
    hdl_dir = Path(hdl_dir)
    if not len(model.graph.node):
        raise StitchError("empty dataflow graph")
    _check_chain(model)
    nodes = [node_hdl(n, model) for n in model.graph.node]
    gen_dir, lib_dir = hdl_dir / "gen", hdl_dir / "finn-rtllib"
    gen_dir.mkdir(parents=True, exist_ok=True)
    gen = []
    for n in nodes:
        for src in n.sources:
            target = gen_dir / src.name
            if target in gen:  # shared sources (the project's RTL) are listed once
                continue
            gen.append(Path(shutil.copyfile(src, target)))
    lib_rel = list(dict.fromkeys(rel for n in nodes for rel in n.lib_sources))
    lib = _copy_lib(lib_rel, lib_dir)
    init_files = _copy_memories(nodes, hdl_dir / "mem")
    top_file = hdl_dir / f"{TOP}.sv"
    top_file.write_text(render_top(nodes, init_files, expose_axilite))
    # Packages first, then library modules, generated wrappers, the top.
    sources = sorted(lib, key=lambda p: not p.name.endswith("_pkg.sv")) + gen + [top_file]
    sources = [p.resolve() for p in sources]
    filelist = hdl_dir / "filelist.f"
    # Relative to the file list's folder: read with verilator -F, or through design_sources().
    filelist.write_text("".join(f"{p.relative_to(hdl_dir.resolve())}\n" for p in sources))
    return StitchResult(
        top=TOP, top_file=top_file.resolve(), filelist=filelist.resolve(), sources=sources,
        nodes=nodes, in_width=nodes[0].in_width, out_width=nodes[-1].out_width,
        init_files=init_files,
        axilite_ports=exposed_axilite(nodes) if expose_axilite else [],
    )
