"""Bring your own network: ``mcel import MODEL.onnx`` and :func:`import_brevitas` for a module.

The pipeline after training needs no zoo model: ``mcel build`` compiles the export stage's QONNX
graph, the simulator's prediction and ``mcel sweep`` use the build's integer network. So an
imported network becomes a run folder whose ``export/`` stage holds the user's graph and an
``export.json`` with a ``source`` record (file name, SHA-256, dataset, input encoding) instead of
a training stage. The import checks what it can before writing anything: the graph loads, every
node is of a type the FINN flow here lowers, the dataset's images fit the graph's input, and the
graph classifies the first test images (QONNX execution) with an accuracy printed at once, so a
wrong dataset or input encoding shows immediately.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flows.export import QONNX_FILE, export_qonnx_model, qonnx_execute
from flows.finn_steps import check_conv_layers
from mcel_train.data import DATASET_FACTS, DATASET_NAMES, INPUT_KINDS
from mcel_train.errors import UserInputError
from mcel_train.finn_graph import load_graph
from mcel_train.runio import EXPORT_RECORD, ImportedRun
from mcel_train.stage import atomic_stage, blocking_file, check_writable

# Node types of a Brevitas QONNX export that the FINN flow here (flows/finn_steps.py) lowers.
SUPPORTED_OPS = ("Quant", "BipolarQuant", "BatchNormalization", "Relu", "Conv", "MaxPool", "Transpose",
                 "MatMul", "Gemm", "Flatten", "Reshape", "Mul", "Add", "Identity")
INPUT_KIND_KEY = "mcel.input_kind"  # optional ONNX metadata: how the graph's pixels are encoded
DATASET_KEY = "mcel.dataset"


def _metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.model.metadata_props}


def check_supported(model, input_kind: str = "uint8") -> None:
    """One line naming the first node the flow cannot lower, and what is supported; a graph
    without nodes, a graph with no quantizer on its weights (a float network: the FINN flow
    finds no layer to put in hardware), and a quantizer whose bit width is not a whole number
    >= 1 are refused too (each used to import, then fail in mcel build with FINN's traceback)."""
    if not len(model.graph.node):
        raise UserInputError("the graph has no nodes: give mcel import a QONNX file as Brevitas or qonnx saves it")
    for node in model.graph.node:
        if node.op_type not in SUPPORTED_OPS:
            raise UserInputError(
                f"node {node.name or '?'} ({node.op_type}) is not supported by the FINN flow here; "
                f"supported: {', '.join(SUPPORTED_OPS)} (a Brevitas QONNX export of quantized "
                "Linear/Conv2d layers with BatchNorm, QuantReLU/QuantIdentity and MaxPool2d)")
    check_conv_layers(model)  # the build's own refusal of a conv or pool geometry, at import already
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserInputError(f"the graph must have exactly one input and one output, it has {len(inputs)} "
                             f"and {len(model.graph.output)}")
    quants = [n for n in model.graph.node if n.op_type in ("Quant", "BipolarQuant")]
    for node in quants:
        if node.op_type == "Quant":
            width = model.get_initializer(node.input[3]) if len(node.input) > 3 else None
            if width is None:  # computed in the graph: FINN's own checks judge it
                continue
            if np.asarray(width).size != 1 or float(width) != int(width) or float(width) < 1:
                raise UserInputError(f"node {node.name or '?'} (Quant) has bit width {width}: FINN takes whole "
                                     "numbers >= 1 (export the network from Brevitas with integer bit widths)")
    problem = _tail_problem(model) or _conv_problem(model)
    if problem:
        raise UserInputError(problem)
    weighted = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    if weighted and not any(_quantized(model, n.input[1]) for n in weighted if len(n.input) > 1):
        raise UserInputError("no layer's weights are quantized (no Quant/BipolarQuant before a MatMul, Gemm or "
                             "Conv): a float network has nothing FINN puts in hardware; export a Brevitas network "
                             "with quantized layers")
    problem = _layer_problem(model, input_kind)  # layer by layer, once some layer is quantized
    if problem:
        raise UserInputError(problem)


def _tail_problem(model) -> str | None:
    """What stands between the last matrix layer and the graph's output that the flow cannot
    keep: the accelerator's outputs are the last layer's accumulators (scaled by one positive
    factor at most), which the fault simulation and the hardware comparison read. A quantizer
    there imported and built, then mcel sweep and mcel sim failed with a traceback; a bias or a
    BatchNorm there imported, then failed the build naming no fix."""
    tensor = model.graph.output[0].name
    for _ in range(32):
        node = model.find_producer(tensor)
        if node is None or node.op_type in ("MatMul", "Conv"):
            return None
        name = f"node {node.name or '?'} ({node.op_type})"
        if node.op_type == "Gemm":
            if len(node.input) > 2 and node.input[2]:
                return (f"{name}: the last layer has a bias; the accelerator's outputs are its accumulators, "
                        "so give the last layer bias=False (QuantLinear(..., bias=False)) and export again")
            return None
        if node.op_type == "Add" and any(model.get_initializer(i) is not None for i in node.input):
            return (f"{name} adds a bias after the last layer; the accelerator's outputs are its accumulators, so "
                    "give the last layer bias=False (QuantLinear(..., bias=False)) and export again")
        if node.op_type in ("Quant", "BipolarQuant", "Relu"):
            return (f"{name} quantizes the network's outputs; the accelerator's outputs are the last layer's "
                    "accumulators, so remove the quantizer or activation after the last layer and export again")
        if node.op_type == "BatchNormalization":
            return (f"{name} normalizes the logits; its per-class scale and shift would stay outside the "
                    "accelerator, so remove the BatchNorm after the last layer and export again")
        tensor = node.input[0]
    return None


def _conv_problem(model) -> str | None:
    """The two CNN shapes that FINN's partition here cannot map (its step failed with "cycle-free
    graph violated"): a quantizer on the input of a network with convolutions, and a max-pool
    on anything but a quantized activation."""
    if not any(n.op_type == "Conv" for n in model.graph.node):
        return None
    tensor = model.graph.input[0].name
    for _ in range(8):  # through layout nodes to the first real node
        consumer = model.find_consumer(tensor)
        if consumer is None:
            break
        if consumer.op_type in ("Quant", "BipolarQuant"):
            return (f"node {consumer.name or '?'} ({consumer.op_type}) quantizes the input of a network with "
                    "convolutions, which the FINN flow here cannot map; drop the input quantizer and import with "
                    "--input-kind uint8 (the first conv then takes the 8-bit pixels)")
        if consumer.op_type not in ("Transpose", "Reshape", "Identity"):
            break
        tensor = consumer.output[0]
    for pool in (n for n in model.graph.node if n.op_type == "MaxPool"):
        if not _quantized(model, pool.input[0]):
            producer = model.find_producer(pool.input[0])
            what = "the input" if producer is None else f"{producer.name or '?'} ({producer.op_type})"
            return (f"node {pool.name or '?'} (MaxPool) pools {what}, not a quantized activation, which the FINN "
                    "flow here cannot map; put the max-pool after the activation (conv, BatchNorm, QuantReLU, "
                    "MaxPool2d) and export again")
    return None


_PASS = ("Transpose", "Reshape", "Identity", "Flatten", "MaxPool")  # keep a tensor's values (or pick among them)


def _source(model, tensor: str):
    """Where a layer's input comes from, through layout nodes, max-pools and a multiplication
    or division by a constant (a network wrapped as ``net(x / 255)``): the producing node, or
    ``None`` for the graph's input."""
    for _ in range(16):
        producer = model.find_producer(tensor)
        if producer is None:
            return None
        constant = producer.op_type in ("Mul", "Div") and any(model.get_initializer(i) is not None
                                                                for i in producer.input)
        if producer.op_type not in _PASS and not constant:
            return producer
        tensor = next((i for i in producer.input if model.get_initializer(i) is None), producer.input[0])
    return None


def _layer_problem(model, input_kind: str) -> str | None:
    """Layers the build cannot map, found at import (each imported, then failed in mcel build,
    several with a message naming another cause): a float layer, a layer fed by anything but the
    pixels or a quantized activation (a float ReLU, no activation after a conv), a skip
    connection, and for +-1 pixels an input quantizer or a first layer without binarized weights."""
    for node in model.graph.node:
        name = f"node {node.name or '?'} ({node.op_type})"
        if node.op_type == "Add" and all(model.get_initializer(i) is None for i in node.input):
            return (f"{name} adds two computed tensors (a skip connection), which FINN's streaming partition here "
                    "cannot map; import a network without skip connections")
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        if not _quantized(model, node.input[1]):
            return (f"{name} has float weights; the flow puts quantized layers only in hardware: make every layer "
                    "a QuantLinear/QuantConv2d and export again")
        source = _source(model, node.input[0])
        if source is None:  # the first layer, on the pixels
            weights = _source(model, node.input[1])  # its weights' quantizer
            if input_kind == "bipolar" and (weights is None or weights.op_type != "BipolarQuant"):
                return (f"{name} takes the +-1 pixels (--input-kind bipolar) with multi-bit weights, which FINN's "
                        "units here cannot take: give the first layer binarized weights, or train and import it on "
                        "0..255 pixels (--input-kind uint8)")
        elif source.op_type not in ("Quant", "BipolarQuant"):
            return (f"{name} takes the output of {source.name or '?'} ({source.op_type}), not a quantized activation, "
                    "which the flow cannot map: put a QuantReLU or QuantIdentity before every layer but the first "
                    "(a float ReLU, or no activation after a conv, leaves the values unquantized) and export again")
        elif input_kind == "bipolar" and _source(model, source.input[0]) is None:
            return (f"{source.name or '?'} ({source.op_type}) quantizes the +-1 pixels (--input-kind bipolar), which "
                    "the flow cannot map (FINN's thresholds on them need a scale of 1): drop the input quantizer, "
                    "the +-1 pixels go into the first layer as they are")
    return None


def _quantized(model, tensor: str) -> bool:
    """Whether ``tensor`` comes from a quantizer, through layout nodes (Brevitas puts a
    Transpose between a Linear layer's weight Quant and its MatMul)."""
    for _ in range(8):
        producer = model.find_producer(tensor)
        if producer is None:
            return False
        if producer.op_type in ("Quant", "BipolarQuant"):
            return True
        if producer.op_type not in ("Transpose", "Reshape", "Identity", "Flatten"):
            return False
        tensor = producer.input[0]
    return False


MORE_IMAGES = 500  # a comparison that leans one way on the check images is decided on this many


def _clearly_more(gained: int, lost: int) -> bool:
    """A paired (McNemar-style) comparison on the same images: at least 5 more images right and
    the surplus at least 3 standard deviations of the count that differs."""
    return gained - lost >= 5 and gained - lost >= 3 * np.sqrt(gained + lost)


def _encoding_note(model_path: Path, inputs, right: np.ndarray, classes: int,
                   test_size: int) -> tuple[str, float, float, int] | None:
    """Which other encoding of the pixels the graph classifies clearly better: ``(name, its
    accuracy, the accuracy on 0..255, images compared)`` of the best one, or ``None``.

    A network trained on [0, 1] inputs (torchvision's ``ToTensor``) or on +-1 pixels imports
    without error with the 0..255 pixels the hardware streams, since its first layer takes any
    float, and then classifies them worse (a user's 4-bit input quantizer on the digits: 79 %
    against 93 % scaled, on 300 images). ``inputs(name, n)``: the first ``n`` test images as
    ``"uint8"``, ``"0_1"`` or ``"bipolar"``, and their labels; ``right``: which of the check
    images the graph classified right as 0..255. A comparison that leans to the other encoding
    without being clear on the check images is decided on up to :data:`MORE_IMAGES` (a network
    trained 30 steps on [0, 1]: 13 more right of 100, 76 % against 89 % on 359). An accuracy at
    chance (a network never trained) gets no note.
    """
    best = None
    for name in ("0_1", "bipolar"):
        base, n = right, len(right)
        try:
            x, labels = inputs(name, n)
            other = qonnx_execute(model_path, x).argmax(1) == labels
            gained, lost = int((other & ~base).sum()), int((base & ~other).sum())
            if not _clearly_more(gained, lost) and gained > lost + 2 and test_size > n:
                n = min(MORE_IMAGES, test_size)
                x, labels = inputs("uint8", n)
                base = qonnx_execute(model_path, x).argmax(1) == labels
                x, labels = inputs(name, n)
                other = qonnx_execute(model_path, x).argmax(1) == labels
                gained, lost = int((other & ~base).sum()), int((base & ~other).sum())
        except Exception:  # noqa: BLE001 - the graph ran on 0..255; a failure here only drops the note
            continue
        accuracy = float(other.mean())
        if _clearly_more(gained, lost) and accuracy >= 2.0 / classes and (best is None or accuracy > best[1]):
            best = (name, accuracy, float(base.mean()), n)
    return best


_NOTE_FIX = {
    "0_1": ("with the pixels divided by 255", "accuracy_on_0_1_inputs",
            "it was probably trained on [0, 1] inputs; divide its input by 255 inside the network "
            "(forward(x) = net(x / 255): FINN folds the constant into the first thresholds) or train it on 0..255 "
            "pixels, and import it again"),
    "bipolar": ("with the pixels as +-1", "accuracy_on_bipolar_inputs",
                "it was probably trained on +-1 pixels; import it with --input-kind bipolar"),
}


def import_qonnx(model_path: str | Path, dataset: str | None, out: str | Path, input_kind: str | None = None,
                 n_check: int = 100, force: bool = False) -> dict:
    """Check a QONNX model and write it as the export stage of the run folder ``out``.

    ``dataset`` / ``input_kind`` default to the model's ``mcel.dataset`` / ``mcel.input_kind``
    metadata when present. Returns the record written to ``out/export/export.json``.
    """
    model_path, out = Path(model_path), Path(out)
    if model_path.is_dir():
        raise UserInputError(f"{model_path} is a folder: give mcel import the QONNX file (.onnx) itself")
    if not model_path.is_file():
        raise UserInputError(f"{model_path} not found")
    if model_path.stat().st_size == 0:  # protobuf reads an empty file as an empty graph
        raise UserInputError(f"{model_path} is empty, not a readable ONNX graph: give mcel import a QONNX file "
                             "as Brevitas or qonnx saves it")
    if n_check < 1:
        raise UserInputError(f"--check-images must be >= 1, got {n_check}")
    blocker = blocking_file(out)
    if blocker is not None:
        raise UserInputError(f"--out {out}: {blocker} is a file; give a run folder")
    if (out / "train").exists():  # its trained network would still be the run's source (load_source)
        raise UserInputError(f"--out {out} holds a trained run; import into a new --out")
    check_writable(out / "export", force)
    model = load_graph(model_path, fix="give mcel import a QONNX file as Brevitas or qonnx saves it")
    meta = _metadata(model)
    dataset = dataset or meta.get(DATASET_KEY)
    missing = {}  # flag name -> its choices; both at once: one round trip, not two
    if dataset is None:
        missing["dataset"] = DATASET_NAMES
    if not (input_kind or meta.get(INPUT_KIND_KEY)):
        missing["input-kind"] = INPUT_KINDS
    if missing:
        raise UserInputError(f"{model_path} names no {' and no '.join(missing)} (no {DATASET_KEY} / "
                             f"{INPUT_KIND_KEY} metadata): give "
                             + " and ".join(f"--{flag} ({', '.join(choices)})" for flag, choices in missing.items()))
    if dataset not in DATASET_NAMES:
        raise UserInputError(f"--dataset must be one of {', '.join(DATASET_NAMES)}, got {dataset!r}")
    input_kind = input_kind or meta.get(INPUT_KIND_KEY)
    if input_kind not in INPUT_KINDS:
        raise UserInputError(f"--input-kind must be one of {', '.join(INPUT_KINDS)} (how the graph's pixels "
                             f"are encoded; the model has no {INPUT_KIND_KEY} metadata), got {input_kind!r}")
    check_supported(model, input_kind)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [int(d.dim_value) for d in dims]
    named = [d.dim_param for d in dims if d.dim_param]
    if named:  # a dynamic dimension has a name and no value (0): say which
        raise UserInputError(f"the graph's input shape has dynamic dimensions ({', '.join(named)}): export it "
                             "with a fixed shape (batch 1), e.g. brevitas' export_qonnx(model, torch.zeros(1, ...))")
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UserInputError(f"the graph's input shape {shape} is not static (batch, features...)")
    input_shape = tuple(shape[1:])
    source = {"kind": "import", "file": model_path.name, "dataset": dataset, "seed": 0,
              "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()}
    run = ImportedRun(out, dataset, input_kind, input_shape, source)
    try:
        x, labels = run.test_inputs(n_check)
    except RuntimeError as exc:  # reshape: the dataset's images do not fit the graph
        raise UserInputError(f"the {dataset} images do not fit the graph's input shape {list(input_shape)} "
                             f"({str(exc).splitlines()[0][:100]}); check --dataset") from None
    t0 = time.perf_counter()
    try:
        logits = qonnx_execute(model_path, x)
    except Exception as exc:  # noqa: BLE001 - onnxruntime / qonnx raise many kinds; the first line says why
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserInputError(f"the graph does not run on the {dataset} images as {input_kind} "
                             f"({first}); check the graph's input type and shape, --dataset and --input-kind") from None
    classes = DATASET_FACTS[dataset][1]
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise UserInputError(f"the graph gives {list(logits.shape[1:])} outputs per image, but {dataset} has "
                             f"{classes} classes: import a network with {classes} outputs, or check --dataset")
    right = logits.argmax(1) == labels
    accuracy = float(right.mean())
    check = {"images": len(x), "accuracy": accuracy, "seconds": round(time.perf_counter() - t0, 2)}
    if input_kind == "uint8":
        def inputs(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
            kind = "bipolar" if name == "bipolar" else "uint8"
            images, labels = ImportedRun(out, dataset, kind, input_shape, source).test_inputs(n)
            return (images / 255.0 if name == "0_1" else images), labels

        note = _encoding_note(model_path, inputs, right, classes, len(run.test_set()[1]))
        if note is not None:
            name, other, base, images = note
            how, field, fix = _NOTE_FIX[name]
            check[field] = other
            print(f"note: the imported graph classifies {base:.0%} of the first {images} test images as the flow "
                  f"feeds them (pixel values 0..255, input kind uint8) but {other:.0%} {how}: {fix}", file=sys.stderr)
    record = {"stage": "export", "qonnx": QONNX_FILE, "input_shape": list(input_shape), "input_kind": input_kind,
              "source": source, "check": check}
    try:  # an earlier import, replaced with --force: its network
        before = json.loads((out / "export" / EXPORT_RECORD).read_text()).get("source") or {}
    except (OSError, ValueError, AttributeError):
        before = None
    with atomic_stage(out / "export", force) as tmp:
        shutil.copyfile(model_path, tmp / QONNX_FILE)
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if before is not None and before.get("sha256") != source["sha256"]:
        # the stages made from the network this import replaced describe that network, not this
        # one (a sweep after `--force` read the old build's integer network); the same file
        # imported again keeps them, and a folder that held no import keeps what it holds
        stale = [name for name in ("build", "sweep", "sim") if (out / name).exists()]
        for name in stale:
            shutil.rmtree(out / name, ignore_errors=True)
        if stale:
            print(f"note: removed {', '.join(stale)} of {out}: they were made from the network this import "
                  "replaced", file=sys.stderr)
    return record


def import_brevitas(module, example_input, dataset: str, out: str | Path, input_kind: str = "uint8",
                    n_check: int = 100, force: bool = False) -> dict:
    """Export a Brevitas ``nn.Module`` (in eval mode) with ``example_input`` and import it.

    ``example_input``: one input in the network's shape, batch dimension included, encoded as
    ``input_kind`` (uint8: pixel values 0..255 as float; bipolar: +-1). The QONNX file is
    written to a temporary folder and imported into ``out`` like ``mcel import`` would.
    """
    shape = tuple(np.shape(example_input))
    if len(shape) < 2 or shape[0] != 1:
        raise UserInputError(f"example_input must have a batch dimension of 1, got shape {shape}")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_qonnx_model(module, shape[1:], input_kind, Path(tmp))
        return import_qonnx(path, dataset, out, input_kind, n_check, force)
