"""The staged FINN transformation sequence, QONNX graph -> RTL nodes with generated HDL.

FINN's builder needs Vivado at import time, so the steps call the transformations directly via
``ModelWrapper.transform``. Each step saves its graph as ``steps/NN_<step>.onnx`` and is checked
with FINN's Python execution against the previous step on a few images
(:func:`flows.step_check.compare_step`); a step that changes the outputs raises, naming itself.

Decisions recorded here (and in the build record) because fault injection depends on them:

* **Output of the accelerator**: the integer accumulators of the last MVAU (``noActivation``),
  i.e. integer logits. The final scalar ``Mul`` (the last layer's weight scale) stays outside,
  in the software tail saved as ``parent.onnx``. No LabelSelect/TopK in hardware: the logits
  make hardware-versus-software comparison maximally informative.
* **Weights keep their full datatype width** (no ``MinimizeWeightBitWidth``): a flipped bit of an
  INT2 weight must be able to produce any INT2 value, including -2 outside the narrow range.
* **Accumulators are sized for the full weight datatype range** (``MinimizeAccumulatorWidth``
  with ``datatype_only=True``), so no flipped weight can overflow them; thresholds are then
  clipped to that range (``RoundAndClipThresholds``), which changes no decision for any
  reachable accumulator value.
* **Thresholds are standalone layers** (``InferThresholdingLayer`` before
  ``InferQuantizedMatrixVectorActivation``), so MVAUs have ``noActivation=1`` and become
  ``MVAU_rtl``; every node is asked for its RTL implementation.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flows.folding import apply_folding, auto_folding, default_folding
from flows.hdl_nodes import UnsupportedLayerError
from flows.step_check import compare_step
from mcel_train.errors import UserError
from mcel_train.progress import progress_bar

INPUT_DATATYPES = {"uint8": "UINT8", "bipolar": "BIPOLAR"}
DEFAULT_PART = "xczu3eg-sbva484-1-e"  # UltraScale+ (DSP48E2): non-narrow weights are allowed
DEFAULT_CLK_NS = 5.0


class FlowError(UserError, RuntimeError):
    """The graph cannot be mapped by this flow (with the reason): a property of the user's
    network (a layer left outside the accelerator, a colour input stream), so ``mcel build``
    says it in one line, exit 2, as it does an unsupported layer."""


@dataclass
class FlowOptions:
    """Inputs of the transformation sequence."""

    input_kind: str
    part: str = DEFAULT_PART
    clk_ns: float = DEFAULT_CLK_NS
    folding: dict[str, dict[str, int]] | None = None
    target_cycles: int | None = None
    check_inputs: np.ndarray | None = None
    runtime_writeable: bool = False  # weight memories get live AXI-lite ports


@dataclass
class FlowState:
    """What the steps pass along besides the graph."""

    options: FlowOptions
    steps_dir: Path
    parent: object = None
    records: list[dict] = field(default_factory=list)
    default_folding: dict | None = None  # the choice of step_folding when no folding was asked for


Step = Callable[[object, FlowState], object]


def step_tidy(model, state: FlowState):
    """QONNX cleanup: constant folding, shape and datatype inference, unique names."""
    from qonnx.util.cleanup import cleanup_model

    return cleanup_model(model)


def step_convert_to_finn(model, state: FlowState):
    """QONNX ``Quant`` nodes -> FINN's ``MultiThreshold`` and initializers of integer weights."""
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN

    return model.transform(ConvertQONNXtoFINN())


def step_input_datatype(model, state: FlowState):
    """Annotate the graph input (UINT8 pixels or BIPOLAR) so streamlining sees integer inputs."""
    from qonnx.core.datatype import DataType
    from qonnx.transformation.infer_datatypes import InferDataTypes

    kind = state.options.input_kind
    if kind not in INPUT_DATATYPES:
        raise FlowError(f"input_kind must be one of {sorted(INPUT_DATATYPES)}, got {kind!r}")
    model.set_tensor_datatype(model.graph.input[0].name, DataType[INPUT_DATATYPES[kind]])
    return model.transform(InferDataTypes())


def step_streamline(model, state: FlowState):
    """Move scales and BatchNorm into thresholds; integer thresholds rounded and clipped.

    Convolutional graphs are lowered FINN's way on the way: each Conv becomes Im2Col + MatMul
    (NHWC), max-pools become NHWC max-pools, and the transposes between them are absorbed into
    the thresholds or cancelled, so only one layout change is left: the input's NCHW -> NHWC
    (a no-op for one input channel, see :func:`step_dataflow_partition`).
    """
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.absorb import (
        AbsorbConsecutiveTransposes,
        AbsorbScalarBiasIntoMultiThreshold,
        AbsorbTransposeIntoMultiThreshold,
    )
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC, MoveScalarLinearPastInvariants
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    conv = any(n.op_type in ("Conv", "MaxPool") for n in model.graph.node)
    if conv:
        check_conv_layers(model)
        model = model.transform(MoveScalarLinearPastInvariants())
    model = model.transform(Streamline())
    if conv:
        model = model.transform(AbsorbScalarBiasIntoMultiThreshold())
        model = model.transform(LowerConvsToMatMul())
        model = model.transform(MakeMaxPoolNHWC())
        model = model.transform(AbsorbTransposeIntoMultiThreshold())
        model = model.transform(MakeMaxPoolNHWC())
        model = model.transform(AbsorbConsecutiveTransposes())
        model = model.transform(Streamline())
        model = model.transform(InferDataLayouts())
    model = model.transform(InferDataTypes())
    return model.transform(RoundAndClipThresholds())


def check_conv_layers(model) -> None:
    """One clear error for a convolution or pooling the RTL flow cannot build (before FINN's own,
    less readable ones): 2D, square kernel, stride 1, no dilation, no groups; max-pool with kernel
    == stride and no padding."""
    from qonnx.util.basic import get_by_name

    def ints(node, name, default):
        a = get_by_name(node.attribute, name)
        return list(a.ints) if a is not None else default

    for node in model.graph.node:
        if node.op_type == "Conv":
            k = ints(node, "kernel_shape", [])
            group = get_by_name(node.attribute, "group")
            problems = []
            if len(k) != 2 or k[0] != k[1]:
                problems.append(f"kernel {k} (square 2D kernels only)")
            if any(s != 1 for s in ints(node, "strides", [1, 1])):
                problems.append(f"stride {ints(node, 'strides', [])} (stride 1 only)")
            if any(d != 1 for d in ints(node, "dilations", [1, 1])):
                problems.append(f"dilation {ints(node, 'dilations', [])} (no dilation)")
            if group is not None and group.i != 1:
                problems.append(f"groups={group.i} (no grouped or depthwise convolutions)")
            pads = ints(node, "pads", [0, 0, 0, 0])
            if len(set(pads)) > 1:
                problems.append(f"padding {pads} (the same padding on every side)")
            if problems:
                raise UnsupportedLayerError(f"unsupported layer {node.name} (Conv): {'; '.join(problems)}; "
                                            "supported: 2D convolutions, square kernel, stride 1, "
                                            "no dilation, no groups, symmetric padding")
        elif node.op_type == "MaxPool":
            k, s = ints(node, "kernel_shape", []), ints(node, "strides", [])
            if len(k) != 2 or k[0] != k[1] or (s and s != k) or any(ints(node, "pads", [0])):
                raise UnsupportedLayerError(
                    f"unsupported layer {node.name} (MaxPool kernel {k}, strides {s}): supported are "
                    "square, non-overlapping max-pools (stride = kernel) without padding")
        elif node.op_type in ("AveragePool", "GlobalAveragePool", "ConvTranspose"):
            raise UnsupportedLayerError(f"unsupported layer {node.name} ({node.op_type}): the RTL flow "
                                        "builds Conv, MaxPool, MatMul/Gemm and quantized activations")


def step_to_hw(model, state: FlowState):
    """MatMul/MultiThreshold -> MVAU and standalone Thresholding HW layers."""
    from finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation import (
        InferBinaryMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import (
        InferThresholdingLayer,
    )
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames

    from flows.custom_ops.infer_bipolar_mvau import InferBipolarMVAU

    model = model.transform(InferBipolarMVAU())  # binarized layers (w1a1); a no-op otherwise
    model = model.transform(InferThresholdingLayer())
    model = model.transform(InferBinaryMatrixVectorActivation())
    model = model.transform(InferQuantizedMatrixVectorActivation())
    # Convolutions: Im2Col -> FMPadding + sliding window generator; NHWC max-pools -> a
    # depthwise sliding window + Pool; the flatten before the first FC layer folded into its
    # weights (NHWC order).
    model = model.transform(InferPool())  # before InferConvInpGen: it leaves an Im2Col for the SWG
    model = model.transform(InferConvInpGen())  # padding of a bipolar map: refused after the step (run_steps)
    model = model.transform(RemoveCNVtoFCFlatten())
    model = model.transform(GiveUniqueNodeNames())
    return model.transform(GiveReadableTensorNames())


def _refuse_bipolar_padding(model) -> None:
    """A bipolar stream has no zero: padding a binarized feature map would pad with -1, where
    Brevitas pads 0. FINN's CNV uses unpadded convolutions for this reason."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        padded_bipolar = (node.op_type.startswith("FMPadding")
                          and getCustomOp(node).get_nodeattr("inputDataType") == "BIPOLAR")
        if node.op_type == "Im2Col":  # the lowered form, before it becomes a window generator:
            # checked after every step, as executing it on a bipolar input fails in qonnx itself
            padded_bipolar = (any(getCustomOp(node).get_nodeattr("pad_amount"))
                              and str(model.get_tensor_datatype(node.input[0])) == "BIPOLAR")
        if padded_bipolar:
            raise UnsupportedLayerError(
                f"unsupported layer {node.name} (padding of a binarized feature map): a bipolar stream "
                "cannot hold the zeros of the padding; use padding 0 for convolutions on bipolar "
                "activations (as the cnv zoo models and FINN's CNV do), or activations of 2 bits or more")


def step_dataflow_partition(model, state: FlowState):
    """Split off the dataflow part; the software tail (final scalar Mul) stays in the parent."""
    from finn.transformation.fpgadataflow.create_dataflow_partition import (
        CreateDataflowPartition,
    )
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    model = _drop_input_transpose(model)
    parent = model.transform(CreateDataflowPartition(partition_model_dir=str(state.steps_dir)))
    sdps = [n for n in parent.graph.node if n.op_type == "StreamingDataflowPartition"]
    if len(sdps) != 1:
        raise FlowError(f"expected exactly one dataflow partition, got {len(sdps)}")
    first = parent.graph.node[0]
    if first.op_type != "StreamingDataflowPartition":
        raise FlowError(
            f"the graph starts with {first.name} ({first.op_type}) outside the dataflow partition;"
            " only a software tail after the accelerator is supported"
        )
    tail = [f"{n.name} ({n.op_type})" for n in parent.graph.node[1:]]
    bad_tail = [t for t in tail if not t.endswith("(Mul)")]
    for n in parent.graph.node[1:]:
        # the tail's scale must not change which class wins: one positive value for every
        # output. A per-output-channel scale (a last layer with per-channel weight scaling)
        # stays in software, and the accelerator's integer outputs, which the fault simulation
        # and the hardware comparison read, would rank the classes otherwise (9 of 359 digits).
        factors = [parent.get_initializer(i) for i in n.input] if n.op_type == "Mul" else []
        factors = [np.asarray(f) for f in factors if f is not None]
        if factors and not all(f.size and (f > 0).all() and np.all(f == f.flat[0]) for f in factors):
            raise FlowError(f"{n.name}: the last layer's output scale differs per output channel (or is not "
                            "positive), so the accelerator's outputs would rank the classes otherwise; give the "
                            "last layer per-tensor weight scaling")
    if bad_tail:
        raise FlowError(f"unsupported layer(s) left outside the accelerator: {', '.join(bad_tail)}")
    state.parent = parent
    return ModelWrapper(getCustomOp(sdps[0]).get_nodeattr("model"))


def _drop_input_transpose(model):
    """A CNN's graph starts with the NCHW -> NHWC Transpose of its input. With one input channel
    (the grayscale images here) it moves no element, so it is dropped and the graph takes the
    NHWC image directly: the accelerator streams the pixels in the order they are stored."""
    first = model.graph.node[0]
    if first.op_type != "Transpose":
        return model
    from qonnx.util.basic import get_by_name

    perm = list(get_by_name(first.attribute, "perm").ints)
    shape = model.get_tensor_shape(first.input[0])
    if perm != [0, 2, 3, 1] or len(shape) != 4:
        raise FlowError(f"{first.name}: input Transpose {perm} of {shape} is not NCHW -> NHWC")
    if shape[1] != 1:
        raise FlowError(f"{first.name}: images with {shape[1]} channels need an NHWC input stream, "
                        "which this flow does not build; only single-channel (grayscale) CNNs are supported")
    old_in, new_in = model.graph.input[0], first.output[0]
    dtype = model.get_tensor_datatype(old_in.name)
    vi = next(v for v in model.graph.value_info if v.name == new_in)
    model.graph.value_info.remove(vi)
    model.graph.input.remove(old_in)
    model.graph.input.insert(0, vi)
    model.graph.node.remove(first)
    model.set_tensor_datatype(new_in, dtype)
    return model


def step_bin_mvau(model, state: FlowState):
    """MVAUs with 1-bit weights -> the project's ``BinMVAU`` (FINN has them only as HLS).

    Runs before RTL specialization, which leaves ``BinMVAU`` nodes alone (not FINN's domain).
    Nodes are renamed (``BinMVAU_0``, ...) so folding files can name them.
    """
    from qonnx.transformation.general import GiveUniqueNodeNames

    from flows.custom_ops.convert_to_bin_mvau import ConvertToBinMVAU

    model = model.transform(ConvertToBinMVAU())
    return model.transform(GiveUniqueNodeNames())


def step_specialize(model, state: FlowState):
    """HW layers -> their RTL variants (``preferred_impl_style='rtl'`` on every node)."""
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
    model = model.transform(SpecializeLayers(state.options.part))
    # FINN falls back to a node's HLS variant where no RTL one fits; that needs Vitis HLS (not
    # here), and the step check's execution of it ended in a traceback
    hls = next((n for n in model.graph.node if n.op_type.endswith("_hls")), None)
    if hls is not None:
        types = ", ".join(f"{what} {model.get_tensor_datatype(t).name}"
                          for what, t in zip(("inputs", "weights"), hls.input[:2], strict=False))
        raise UnsupportedLayerError(
            f"unsupported layer {hls.name} ({hls.op_type.removesuffix('_hls')}: {types}): FINN has no RTL variant "
            "for it, and its HLS one needs Vitis HLS; the RTL matrix-vector units take integer inputs and weights "
            "of up to 8 bits, or bipolar inputs with 1-bit weights (retrain with --set model.input_kind=uint8, or "
            "with 1-bit weights; an imported network: give that layer 1-bit weights, or train it on uint8 pixels "
            "and import it with --input-kind uint8)")
    return model


def step_fault_safe_widths(model, state: FlowState):
    """Accumulators for the full weight datatype range; thresholds clipped to it (module doc)."""
    from finn.transformation.fpgadataflow.minimize_accumulator_width import (
        MinimizeAccumulatorWidth,
    )
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    model = model.transform(MinimizeAccumulatorWidth(datatype_only=True))
    model = model.transform(InferDataTypes())
    return model.transform(RoundAndClipThresholds())


def step_folding(model, state: FlowState):
    """PE/SIMD from the explicit folding dict, FINN's SetFolding for ``target_cycles``, or by
    default the most parallel folding that fits the part (flows/folding.py, ``default_folding``)."""
    opts = state.options
    if opts.folding is not None:
        return apply_folding(model, opts.folding)
    if opts.target_cycles is not None:
        return auto_folding(model, opts.target_cycles)
    model, state.default_folding = default_folding(model, opts.part)
    return model


def step_max_pool_rtl(model, state: FlowState):
    """FINN's max-pool (HLS only: ``Pool_hls`` after specialization) -> the project's
    ``MaxPoolRTL`` (rtl/max_pool.sv), before specialization (which would pick the HLS variant,
    which cannot execute here). Its folding, and that of the sliding window generator feeding
    it, is set by flows/folding.py."""
    from flows.custom_ops.convert_to_max_pool import ConvertPoolToMaxPoolRTL

    return model.transform(ConvertPoolToMaxPoolRTL())


def step_dwc_fifo(model, state: FlowState):
    """Width converters where PE differs between neighbours; shallow FIFOs between all nodes."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames

    model = model.transform(InsertDWC())
    model = model.transform(InsertFIFO(create_shallow_fifos=True))
    for node in model.graph.node:
        inst = getCustomOp(node)
        if "preferred_impl_style" in inst.get_nodeattr_types():
            inst.set_nodeattr("preferred_impl_style", "rtl")
    model = model.transform(SpecializeLayers(state.options.part))
    return model.transform(GiveUniqueNodeNames())


def step_generate_hdl(model, state: FlowState):
    """FINN's PrepareIP: writes each RTL node's wrapper and memory init files (no Vivado).

    Nodes without an HDL adapter are rejected first: PrepareIP would otherwise try to run
    Vitis HLS for them and fail with an unrelated error.
    """
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP

    from flows.hdl_adapters import require_supported

    require_supported(model)
    if state.options.runtime_writeable:
        set_runtime_writeable(model)
    generate_own_hdl(model)
    return model.transform(PrepareIP(state.options.part, state.options.clk_ns))


def set_runtime_writeable(model) -> None:
    """``runtime_writeable_weights=1`` on every weight-holding node (MVAU_rtl, BinMVAU).

    For MVAU_rtl this changes no HDL (FINN's memstream always has the AXI-lite port; the flag
    only makes FINN's IP integration expose it); BinMVAU then generates a live port instead of
    a tied-off one. Set after the accumulator widths are fixed: they are already worst-case.
    """
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type in ("MVAU_rtl", "BinMVAU"):
            getCustomOp(node).set_nodeattr("runtime_writeable_weights", 1)


OWN_RTL_OPS = ("BinMVAU", "MaxPoolRTL")  # the project's own RTL layers (flows/custom_ops)


def generate_own_hdl(model) -> None:
    """``generate_hdl`` of every node with the project's own RTL (PrepareIP only visits FINN's
    HLS/RTL domains), into ``code_gen_ipgen_<node>_*`` under FINN's build folder like FINN's nodes."""
    from finn.util.basic import make_build_dir
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.op_type in OWN_RTL_OPS:
            getCustomOp(node).generate_hdl(model, make_build_dir(f"code_gen_ipgen_{node.name}_"))


STEPS: list[tuple[str, Step]] = [
    ("tidy", step_tidy),
    ("convert_to_finn", step_convert_to_finn),
    ("input_datatype", step_input_datatype),
    ("streamline", step_streamline),
    ("to_hw", step_to_hw),
    ("dataflow_partition", step_dataflow_partition),
    ("bin_mvau", step_bin_mvau),
    ("max_pool_rtl", step_max_pool_rtl),
    ("specialize_rtl", step_specialize),
    ("fault_safe_widths", step_fault_safe_widths),
    ("folding", step_folding),
    ("dwc_fifo", step_dwc_fifo),
    ("generate_hdl", step_generate_hdl),
]


def _raised_in_finn(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is FINN's, qonnx's or onnx's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).parts if tb is not None else ()
    return any(part in ("finn", "qonnx", "onnx", "onnxruntime") for part in path)


def _mapped(name: str, fn: Callable, model, state: FlowState):
    """One step; FINN's own failure on a network it cannot map (a cycle in the partition of an
    input quantizer before a conv, a rounding check, an activation it only takes bipolar) is one
    line naming the step, not FINN's traceback (``mcel --debug`` shows it)."""
    try:
        return fn(model, state)
    except (UserError, MemoryError, OSError):  # the machine's, not the network's: as they are
        raise
    except Exception as exc:  # noqa: BLE001 - FINN and qonnx raise anything, AssertionError included
        if not _raised_in_finn(exc):  # this project's own step code: a bug, with its traceback
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FlowError(f"FINN's step {name!r} cannot map this network ({type(exc).__name__}: {first}); "
                        "README 'Bring your own network' lists what the flow builds") from exc


def run_steps(model, options: FlowOptions, steps_dir: Path, steps=None) -> tuple[object, FlowState]:
    """Run ``steps`` (default :data:`STEPS`) in order, saving and checking after each one.

    Returns the final dataflow graph and the state (with ``parent``: the graph holding the
    software tail, and ``records``: per-step name, file, seconds and check result).
    """
    steps_dir = Path(steps_dir)
    steps_dir.mkdir(parents=True, exist_ok=True)
    state = FlowState(options=options, steps_dir=steps_dir)
    inputs = options.check_inputs
    model = _mapped("tidy", step_tidy, model, state)  # the reference for step 0 needs inferred shapes
    steps = list(steps if steps is not None else STEPS)
    # on stdout: an error stays the one line on stderr
    with progress_bar(len(steps), "FINN flow", unit="step", file=sys.stdout) as bar:
        for index, (name, fn) in enumerate(steps):
            bar.set_postfix_str(name)
            model = _run_step(index, name, fn, model, state, steps_dir, inputs)
            bar.update(1)
    if state.parent is not None:
        state.parent.save(str(steps_dir / "parent.onnx"))
    return model, state


def _run_step(index: int, name: str, fn, model, state: FlowState, steps_dir: Path, inputs):
    """One step of :func:`run_steps`: run, save, check against the graph before it."""
    t0 = time.perf_counter()
    new = _mapped(name, fn, copy.deepcopy(model), state)  # steps may mutate; keep the reference intact
    _refuse_bipolar_padding(new)
    seconds = time.perf_counter() - t0
    path = steps_dir / f"{index:02d}_{name}.onnx"
    new.save(str(path))
    check = None
    if inputs is not None and len(inputs):
        check = compare_step(name, model, new, inputs).to_dict()
    state.records.append(
        {"step": name, "file": path.name, "seconds": round(seconds, 3), "check": check,
         "nodes": [f"{n.name}:{n.op_type}" for n in new.graph.node]}
    )
    return new
