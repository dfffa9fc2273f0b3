"""Folding (PE/SIMD per layer): explicit from a JSON file, or FINN's SetFolding for a target.

Explicit files map node names of the specialized graph to attributes, the same shape FINN's
``folding_config_file`` uses::

    {"MVAU_rtl_0": {"PE": 4, "SIMD": 8}, "Thresholding_rtl_0": {"PE": 4}}

A ``"Defaults"`` entry (as in FINN) applies to every node that has the attribute. Values are
checked against the layer shape (MH % PE == 0, MW % SIMD == 0) here, so a bad folding is one
clear error instead of a FINN assertion deep inside HDL generation.
"""

from __future__ import annotations

import json
from pathlib import Path

from mcel_train.errors import UserInputError

FOLD_ATTRS = ("PE", "SIMD")


class FoldingError(UserInputError):
    """A folding value does not divide the layer dimension it folds."""


def load_folding(source: str | Path | dict, flag: str = "--folding") -> dict[str, dict[str, int]]:
    """A folding (node name -> {PE/SIMD: value}) from a JSON file or a mapping, checked for
    shape: every problem is one :class:`FoldingError` naming ``flag`` (the CLI flag or the
    campaign key the folding came from)."""
    data, at = source, f"{flag}: " if flag else ""
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise FoldingError(f"{at}{path}: no such file; give 'auto' or a JSON file of node name -> "
                               "{PE, SIMD}")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise FoldingError(f"{at}{path} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise FoldingError(f"{at}folding must be a JSON object of node name -> attributes")
    out: dict[str, dict[str, int]] = {}
    for name, attrs in data.items():
        if not isinstance(attrs, dict) or not attrs:
            raise FoldingError(f"{at}node {name!r} must map to attributes such as {{\"PE\": 2}}, "
                               f"got {attrs!r}")
        for attr, value in attrs.items():  # whether the node has the attribute: apply_folding
            least = 1 if attr in FOLD_ATTRS else 0
            if isinstance(value, str) and attr not in FOLD_ATTRS:  # FINN configs carry ram_style: "block"
                raise FoldingError(f"{at}node {name!r}: {attr} {value!r} is an implementation style for "
                                   "synthesis, which this flow (no Vivado) does not run; it applies whole-number "
                                   "attributes (PE, SIMD, depths) only: remove it from the file")
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise FoldingError(f"{at}node {name!r}: {attr} must be a whole number >= {least}, "
                                   f"got {value!r}")
        out[str(name)] = {str(a): int(v) for a, v in attrs.items()}
    return out


def _check_divides(name: str, attr: str, value: int, dim_name: str, dim: int) -> None:
    if value < 1 or dim % value != 0:
        raise FoldingError(
            f"folding of {name}: {attr}={value} must divide {dim_name}={dim} "
            f"(choose one of {[d for d in range(1, dim + 1) if dim % d == 0]})"
        )


def validate_folding(model) -> None:
    """Raise :class:`FoldingError` for any node whose PE/SIMD does not divide its dimensions."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        if node.op_type.startswith("MVAU") or node.op_type == "BinMVAU":
            _check_divides(node.name, "PE", inst.get_nodeattr("PE"), "MH", inst.get_nodeattr("MH"))
            _check_divides(
                node.name, "SIMD", inst.get_nodeattr("SIMD"), "MW", inst.get_nodeattr("MW")
            )
        elif node.op_type == "MaxPoolRTL":
            _check_divides(node.name, "PE", inst.get_nodeattr("PE"), "Channels", inst.get_nodeattr("Channels"))
        elif node.op_type.startswith("Thresholding") and "NumChannels" in types:
            _check_divides(
                node.name, "PE", inst.get_nodeattr("PE"), "NumChannels",
                inst.get_nodeattr("NumChannels"),
            )


def apply_folding(model, folding: dict[str, dict[str, int]]):
    """Set the attributes of ``folding`` on the named nodes; unknown node names are an error."""
    from qonnx.custom_op.registry import getCustomOp

    names = {n.name for n in model.graph.node}
    unknown = sorted(set(folding) - names - {"Defaults"})
    if unknown:
        raise FoldingError(
            f"folding names unknown nodes {unknown}; the graph has {sorted(names)}"
        )
    defaults = folding.get("Defaults", {})
    for node in model.graph.node:
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        for attr, value in {**defaults, **folding.get(node.name, {})}.items():
            if attr not in types:
                if node.name in folding and attr in folding[node.name]:
                    raise FoldingError(f"node {node.name} ({node.op_type}) has no attribute {attr}")
                continue
            inst.set_nodeattr(attr, int(value))
    validate_folding(model)
    sync_pool_windows(model)
    return model


def auto_folding(model, target_cycles: int, mvau_wwidth_max: int = 1024):
    """FINN's SetFolding: the least parallelism that reaches ``target_cycles`` per image.

    ``BinMVAU`` nodes are folded by :func:`fold_bin_mvau` with the same rule. FINN's second
    pass (relax the target to the slowest node when the target cannot be met) uses an analysis
    that cannot see ``BinMVAU``, so with such nodes it is done here over all nodes.
    """
    from finn.transformation.fpgadataflow.set_folding import SetFolding

    own = any(n.op_type in ("BinMVAU", "MaxPoolRTL") for n in model.graph.node)

    def one_pass(m, target: int, relax: bool):
        m = m.transform(SetFolding(target_cycles_per_frame=int(target),
                                   mvau_wwidth_max=mvau_wwidth_max, two_pass_relaxation=relax))
        fold_bin_mvau(m, int(target), mvau_wwidth_max)
        fold_max_pool(m, int(target))
        return m

    model = one_pass(model, target_cycles, relax=not own)
    if own:
        slowest = max(_exp_cycles(model).values(), default=0)
        if slowest > target_cycles:
            model = one_pass(model, slowest, relax=False)
    validate_folding(model)
    return model


# Resources of the default part (xczu3eg, AMD DS891): what a default folding must fit.
PART_RESOURCES = {"xczu3eg-sbva484-1-e": {"LUT": 70560, "BRAM_18K": 432, "DSP": 360}}
# Candidate cycles per image for the default folding, fastest first. Simulation cost follows the
# work (lanes x cycles), not the folding, so the default is the most parallel design that fits.
DEFAULT_TARGETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def resource_estimate(model, part: str) -> dict[str, float]:
    """FINN's LUT/BRAM/DSP estimate of the whole design (the project's nodes included)."""
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from qonnx.custom_op.registry import getCustomOp

    per_node = model.analysis(lambda m: res_estimation(m, part))
    for node in model.graph.node:
        if node.op_type in ("BinMVAU",) and node.name not in per_node:
            try:
                per_node[node.name] = getCustomOp(node).node_res_estimation(part)
            except Exception:  # noqa: BLE001 - estimates are informational
                pass
    total = {"LUT": 0.0, "BRAM_18K": 0.0, "DSP": 0.0}
    for res in per_node.values():
        for key in total:
            if isinstance(res.get(key, 0), (int, float)):
                total[key] += float(res.get(key, 0))
    return total


def default_folding(model, part: str):
    """The most parallel of :data:`DEFAULT_TARGETS` (256 cycles per image and slower: never
    faster, since simulation cost follows lanes x cycles) whose design fits ``part`` by FINN's
    estimates (the slowest candidate when none fits, with ``fits: False``). A part without an
    entry in :data:`PART_RESOURCES` is not checked: the fastest candidate, ``fits: None``.
    Returns the folded model and a record: target, FINN's expected cycles per image, the
    resource estimate and the part's."""
    import copy

    capacity = PART_RESOURCES.get(part)
    record = None
    for target in DEFAULT_TARGETS:
        folded = auto_folding(copy.deepcopy(model), target)
        res = resource_estimate(folded, part)
        fits = None if capacity is None else all(res[k] <= capacity[k] for k in capacity)
        cycles = max(_exp_cycles(folded).values(), default=0)
        record = {"target_cycles": target, "expected_cycles_per_image": cycles, "resources": res,
                  "part": part, "part_resources": capacity, "fits": fits}
        if fits or capacity is None:
            return folded, record
    return folded, record


def _exp_cycles(model) -> dict[str, int]:
    """Expected cycles per image of every dataflow node (FINN's ``get_exp_cycles``)."""
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.graph.node:
        inst = getCustomOp(node)
        if hasattr(inst, "get_exp_cycles"):
            out[node.name] = int(inst.get_exp_cycles())
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fold_bin_mvau(model, target_cycles: int, mvau_wwidth_max: int = 1024) -> None:
    """SetFolding's MVAU rule for the project's ``BinMVAU`` nodes (SetFolding skips them, they
    are not in FINN's HLS/RTL domains): raise SIMD over the divisors of MW until the node meets
    ``target_cycles`` (or SIMD 1-bit weights exceed ``mvau_wwidth_max``), then PE over MH."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type != "BinMVAU":
            continue
        inst = getCustomOp(node)
        inst.set_nodeattr("PE", 1)
        inst.set_nodeattr("SIMD", 1)
        for simd in _divisors(inst.get_nodeattr("MW")):
            if simd > mvau_wwidth_max:
                break
            inst.set_nodeattr("SIMD", simd)
            if inst.get_exp_cycles() <= target_cycles:
                break
        for pe in _divisors(inst.get_nodeattr("MH")):
            inst.set_nodeattr("PE", pe)
            if inst.get_exp_cycles() <= target_cycles:
                break


def _window_generator(model, node):
    """The depthwise sliding window generator feeding a pool node (FINN's InferPool makes one)."""
    swg = model.find_producer(node.input[0])
    if swg is None or not swg.op_type.startswith("ConvolutionInputGenerator"):
        raise FoldingError(f"{node.name}: expected a sliding window generator before it, found "
                           f"{swg.op_type if swg is not None else 'the graph input'}")
    return swg


def sync_pool_windows(model) -> None:
    """A max-pool consumes its window generator's words lane for lane: the generator's SIMD must
    equal the pool's PE (as FINN's SetFolding does for ``Pool_hls``)."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type == "MaxPoolRTL":
            swg = getCustomOp(_window_generator(model, node))
            swg.set_nodeattr("SIMD", getCustomOp(node).get_nodeattr("PE"))
            if "parallel_window" in swg.get_nodeattr_types():
                swg.set_nodeattr("parallel_window", 0)


def fold_max_pool(model, target_cycles: int) -> None:
    """SetFolding's ``Pool_hls`` rule for the project's ``MaxPoolRTL`` (SetFolding skips nodes
    outside FINN's domains): raise PE over the divisors of the channels until both the pool and
    its window generator (whose SIMD follows the PE) meet ``target_cycles``."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type != "MaxPoolRTL":
            continue
        inst = getCustomOp(node)
        swg = getCustomOp(_window_generator(model, node))
        for pe in _divisors(inst.get_nodeattr("Channels")):
            inst.set_nodeattr("PE", pe)
            swg.set_nodeattr("SIMD", pe)
            if max(inst.get_exp_cycles(), swg.get_exp_cycles()) <= target_cycles:
                break
    sync_pool_windows(model)


def folding_of(model) -> dict[str, dict[str, int]]:
    """The PE/SIMD of every node that has them (what a folding file would contain)."""
    from qonnx.custom_op.registry import getCustomOp

    out: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        attrs = {a: int(inst.get_nodeattr(a)) for a in FOLD_ATTRS if a in types}
        if attrs:
            out[node.name] = attrs
    return out
