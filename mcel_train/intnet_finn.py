"""The integer network of a FINN build, for fast bit-exact prediction of the accelerator.

Why: ``hw_sim.predict.finn_predict`` runs FINN's Python execution once per fault map, which
is far too slow for sweeps of hundreds of maps. The build's dataflow graph of an MLP is a chain
of matrix-vector units and thresholds, which is exactly an :class:`IntNetwork` with
:class:`ThresholdPostOp` post-ops, so :class:`mcel_train.evaluate.MapEvaluator` can evaluate
all maps at once. The weights are decoded from the memory init files through the manifest's
layout (the same words the RTL loads), not taken from the graph, so a layout error shows up as
a mismatch against ``finn_predict`` instead of being hidden.

Supported nodes (dataflow graph of ``mcel build``): ``MVAU_rtl`` (weights ``(MW, MH)``,
optional embedded thresholds), ``Thresholding_rtl`` and the project's ``BinMVAU``; for
convolutions ``FMPadding_rtl`` + ``ConvolutionInputGenerator_rtl`` before an MVAU (a conv
layer whose weight columns keep FINN's ``(kh, kw, ic)`` order), a depthwise window generator +
the project's ``MaxPoolRTL`` after a thresholding (the layer's max-pool), and the first FC
layer after convolutions reading the feature map in NHWC order. Stream plumbing (FIFOs, width
converters) is skipped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mcel_train.finn_graph import dataflow_graph_path, load_graph
from mcel_train.intnet import (
    INPUT_POST,
    ConvGeometry,
    IdentityPostOp,
    IntLayer,
    IntNetError,
    IntNetwork,
    PostOp,
    SearchThresholdPostOp,
    ThresholdPostOp,
)
from mcel_train.manifest import Manifest, load_manifest
from mcel_train.memory import Memory

PLUMBING = ("StreamingFIFO", "StreamingDataWidthConverter")
MATRIX_OPS = ("MVAU_rtl", "MVAU_hls", "BinMVAU")


def _attr(node, name: str, default=None):
    """A node attribute as a Python value (bytes decoded), ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            if a.type == a.STRING:
                return a.s.decode()
            if a.type == a.INT:
                return int(a.i)
            if a.type == a.FLOAT:
                return float(a.f)
            return default
    return default


def _attr_ints(node, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in a.ints]
    raise IntNetError(f"{node.name}: no attribute {name}")


def _threshold_post(thresholds: np.ndarray, channels: int, out_dtype: str, act_val: int,
                    scale: float = 1.0, offset: float = 0.0) -> ThresholdPostOp:
    """FINN MultiThreshold as a post-op on ``acc`` where the hardware compares ``acc * scale +
    offset``; thresholds are moved into acc units exactly (``scale`` is 1 or 2)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.shape[0] == 1 and channels != 1:
        t = np.tile(t, (channels, 1))
    if t.shape[0] != channels:
        raise IntNetError(f"{t.shape[0]} threshold rows for {channels} channels")
    # acc is an integer: acc * scale + offset >= T  <=>  acc >= ceil((T - offset) / scale).
    t = np.ceil((np.ceil(t) - offset) / scale)
    if out_dtype == "BIPOLAR":
        if t.shape[1] != 1:
            raise IntNetError("bipolar outputs need exactly one threshold per channel")
        return ThresholdPostOp(torch.from_numpy(t), out_bias=-1.0, out_mult=2.0)
    return ThresholdPostOp(torch.from_numpy(t), out_bias=float(act_val))


def _bin_mvau_attrs(node) -> dict:
    """What the thresholding of a BinMVAU depends on (kept, so faulty thresholds can be re-applied)."""
    odt = _attr(node, "outputDataType")
    return {"MH": _attr(node, "MH"), "MW": _attr(node, "MW"), "no_activation": bool(_attr(node, "noActivation", 0)),
            "xnor": _attr(node, "inputDataType") == "BIPOLAR" or bool(_attr(node, "binaryXnorMode", 0)),
            "odt": odt, "act_val": 0 if odt == "BIPOLAR" else int(_attr(node, "ActVal", 0) or 0)}


def threshold_post(owner: dict, thresholds: np.ndarray, out_bits: int | None = None) -> PostOp:
    """The post-op of a layer whose threshold memory holds ``thresholds`` (faulty or not).

    ``search`` (FINN's Thresholding_rtl): the RTL's binary search (:class:`SearchThresholdPostOp`);
    ``bin_mvau`` (the project's BinMVAU, which counts ``acc >= T[k]`` in rtl/bin_mvau.sv): the count.
    """
    if owner["semantics"] == "bin_mvau":
        return _bin_mvau_post(owner, thresholds)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape[0] != owner["channels"]:  # shared sets, one per PE lane: channel c uses set c % PE
        t = t[np.arange(owner["channels"]) % t.shape[0]]
    if owner["odt"] == "BIPOLAR":
        return SearchThresholdPostOp(torch.from_numpy(t), 1, out_bias=-1.0, out_mult=2.0)
    return SearchThresholdPostOp(torch.from_numpy(t), int(out_bits), out_bias=float(owner["act_val"]))


def _bin_mvau_post(attrs: dict, t: np.ndarray | None) -> PostOp | None:
    """BinMVAU (``attrs`` from :func:`_bin_mvau_attrs`): in XNOR mode the RTL thresholds the
    popcount ``(dot + MW) / 2``; the :class:`IntLayer` computes the bipolar dot product, so
    ``pop >= T <=> dot >= 2T - MW``."""
    if attrs["no_activation"] or t is None:
        return None
    if attrs["xnor"]:
        return _threshold_post(t, attrs["MH"], attrs["odt"], attrs["act_val"], scale=0.5, offset=attrs["MW"] / 2)
    return _threshold_post(t, attrs["MH"], attrs["odt"], attrs["act_val"])


def from_finn_build(build_dir: str | Path) -> IntNetwork:
    """The integer network the build's accelerator computes, outputs = integer accumulators.

    Layer ``i`` is the ``i``-th matrix unit of the dataflow graph, named after its FINN node
    (the manifest's ``layer``); its weights ``(MH, MW)`` are decoded from the init file of its
    weight memory. Its post-op is the thresholding that follows it (separate
    ``Thresholding_rtl`` or embedded); the last layer has none, so its accumulators are the
    network's integer outputs. A thresholding unit before the first matrix unit (an input
    quantizer) becomes the network's ``input_post``; its threshold owner has layer index
    ``INPUT_POST``.
    """

    build_dir = Path(build_dir)
    manifest = load_manifest(build_dir)
    weight_entries = {m.layer: m for m in manifest.weights.values()}
    model = load_graph(dataflow_graph_path(build_dir))
    layers: list[IntLayer] = []
    pending: list[PostOp | None] = []
    threshold_owners: dict[str, dict] = {}  # threshold-memory layer -> how to rebuild its post-op
    padding = (0, 0)
    conv: ConvGeometry | None = None  # the window generator seen since the last matrix unit
    pool_window = 0  # a depthwise window generator waiting for its max-pool
    input_post: PostOp | None = None  # a thresholding unit before the first matrix unit
    for node in model.graph.node:
        op = node.op_type
        if op.startswith(PLUMBING):
            continue
        if op == "FMPadding_rtl":
            pad = [int(v) for v in _attr_ints(node, "Padding")]
            if len(set(pad)) != 1:
                raise IntNetError(f"{node.name}: asymmetric padding {pad}")
            padding = (pad[0], pad[0])
        elif op.startswith("ConvolutionInputGenerator"):
            kernel = tuple(_attr_ints(node, "ConvKernelDim"))
            stride = tuple(_attr_ints(node, "Stride"))
            if _attr(node, "depthwise", 0):
                if kernel[0] != kernel[1] or stride != kernel or padding != (0, 0):
                    raise IntNetError(f"{node.name}: only non-overlapping square max-pools")
                pool_window = kernel[0]
            else:
                conv = ConvGeometry(in_channels=_attr(node, "IFMChannels"), kernel=kernel, stride=stride,
                                    padding=padding, weight_hwc=True)
            padding = (0, 0)
        elif op == "MaxPoolRTL":
            if not pool_window or not layers:
                raise IntNetError(f"{node.name}: max-pool without a window generator or a layer before it")
            layers[-1].pool, pool_window = pool_window, 0
        elif op in MATRIX_OPS:
            if pending and pending[-1] is None and layers:
                raise IntNetError(f"{node.name}: two matrix units without thresholds between")
            if _attr(node, "inputDataType") == "BINARY":
                raise IntNetError(f"{node.name}: BINARY {{0,1}} inputs are not supported")
            mh = _attr(node, "MH")
            entry = weight_entries.get(node.name)
            if entry is None:
                raise IntNetError(f"{node.name}: no weight memory in the manifest")
            w = manifest.weight_matrix(entry.name)
            # No comparison with the graph's initializer: the init files are the truth (they are
            # what the RTL loads, and experiments may edit them); the build checked the layout.
            t = model.get_initializer(node.input[2]) if len(node.input) > 2 else None
            bits = 1 if entry.bipolar else entry.element_bits
            if op == "BinMVAU":
                attrs = _bin_mvau_attrs(node)
                post = _bin_mvau_post(attrs, t)
                threshold_owners[node.name] = {"layer_index": len(layers), "semantics": "bin_mvau", **attrs}
            elif t is not None and not _attr(node, "noActivation", 0):
                odt = _attr(node, "outputDataType")
                post = _threshold_post(t, mh, odt, int(_attr(node, "ActVal", 0) or 0))
            else:
                post = None
            layer = IntLayer(node.name, w, 1.0, bits, IdentityPostOp(1.0), conv=conv)
            if conv is None and entry.layout.get("input", {}).get("kind") == "flatten":
                layer.flatten_before, layer.flatten_order = True, "hwc"
            layers.append(layer)
            pending.append(post)
            conv = None
        elif op.startswith("Thresholding"):
            if (pending and pending[-1] is not None) or (not layers and input_post is not None):
                raise IntNetError(f"{node.name}: two thresholding units in a row")
            if conv is not None or pool_window:
                raise IntNetError(f"{node.name}: thresholding between a window generator and its consumer")
            t = model.get_initializer(node.input[1])
            post = _threshold_post(t, _attr(node, "NumChannels"), _attr(node, "outputDataType"),
                                   int(_attr(node, "ActVal", 0) or 0))
            if layers:
                pending[-1] = post
            else:  # before any matrix unit: the input quantizer, on the raw pixels
                input_post = post
            threshold_owners[node.name] = {"layer_index": len(layers) - 1 if layers else INPUT_POST,
                                           "semantics": "search", "channels": _attr(node, "NumChannels"),
                                           "odt": _attr(node, "outputDataType"),
                                           "act_val": int(_attr(node, "ActVal", 0) or 0)}
        else:
            raise IntNetError(f"{node.name}: node type {op} is not supported by the fast model")
    if not layers:
        raise IntNetError(f"{build_dir}: no matrix units in the dataflow graph")
    if pending[-1] is not None:
        raise IntNetError("the last matrix unit is thresholded: outputs are not accumulators")
    for layer, post in zip(layers[:-1], pending[:-1], strict=True):
        if post is None:
            raise IntNetError(f"{layer.name}: hidden layer without thresholds")
        layer.post = post
    in_name = model.graph.input[0].name
    input_kind = "bipolar" if str(model.get_tensor_datatype(in_name)) == "BIPOLAR" else "uint8"
    shape = tuple(int(s) for s in model.get_tensor_shape(in_name)[1:])
    if len(shape) == 3:  # NHWC image; the network computes NCHW (the same order for one channel)
        if shape[2] != 1:
            raise IntNetError(f"{build_dir}: multi-channel image input {shape} is not supported")
        shape = (shape[2], shape[0], shape[1])
    return IntNetwork(layers, shape, input_kind, {"threshold_owners": threshold_owners}, input_post)


def build_memories(manifest: Manifest, net: IntNetwork) -> list[Memory]:
    """The build's weight memories, each pointing at its layer of ``net`` (``layer_index``)."""
    index = {layer.name: i for i, layer in enumerate(net.layers)}
    return [replace(m, layer_index=index[manifest.weights[m.name].layer])
            for m in manifest.fault_memories(("weights",))]


def memories_in_layer_order(manifest: Manifest, net: IntNetwork) -> list[Memory]:
    """The build's weight memories on another integer network of the same model (a Brevitas
    run's, whose layers do not carry the build's names): the manifest lists them in dataflow
    order, so the k-th holds layer k's weights. Shapes and column orders are checked where the
    evaluator maps them (:func:`mcel_train.intnet.layer_memories`)."""
    memories = manifest.fault_memories(("weights",))
    if len(memories) != len(net.layers):
        raise ValueError(f"the build has {len(memories)} weight memories, the network {len(net.layers)} layers")
    return [replace(m, layer_index=k) for k, m in enumerate(memories)]
