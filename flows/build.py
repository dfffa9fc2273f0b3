"""Stage functions: ``export_run`` (QONNX) and ``build_run`` (FINN -> RTL -> Verilator model).

Both read only the run folder's files (``train/model.pt`` and ``train/config.yaml``, through
:func:`mcel_train.runio.load_run`) and write only
under ``runs/NAME/export/`` and ``runs/NAME/build/``, each with a JSON record of inputs, versions
and results. ``build_run`` refuses to overwrite an existing build folder unless ``force=True``.

Layout of ``runs/NAME/build/``::

    build.json          the record (options, decisions, per-step checks, timings, verification)
    manifest.json       memories, layouts, streams, estimates (flows/manifest.py)
    steps/NN_<step>.onnx  graph after every FINN step; steps/parent.onnx holds the software tail
    finn/               FINN's own code generation folders (FINN_BUILD_DIR)
    hdl/                accel_top.sv, filelist.f, gen/, finn-rtllib/, mem/ (flows/stitch.py)
    verilator/          the Verilated model with the C++ harness (verilator/accel_sim)
    verify/             inputs/outputs of the bit-exactness check
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flows.export import QONNX_FILE, check_export, export_qonnx_model, qonnx_execute, torch_logits
from flows.finn_env import init_finn
from flows.finn_steps import DEFAULT_CLK_NS, DEFAULT_PART, FlowOptions, run_steps
from flows.folding import folding_of, load_folding
from flows.manifest import build_manifest, tool_versions, write_manifest
from flows.relocate import relative_build_paths
from flows.stitch import stitch
from hw_sim.verilate import CppHarnessFormat, build_simulator, check_memory_paths, run_simulator, whitespace_problem
from mcel_train.errors import UserInputError
from mcel_train.finn_graph import BUILD_RECORD, load_graph, output_of
from mcel_train.manifest import MANIFEST_FILE, Manifest
from mcel_train.models import ModelSpec
from mcel_train.provenance import (
    MEMORY_FIELD,
    NETWORK_FIELD,
    check_export_is_the_runs,
    export_network,
    memory_digest,
    network_digest,
)
from mcel_train.runio import first_images, load_run, load_source
from mcel_train.stage import atomic_stage, check_writable


class VerificationMismatchError(RuntimeError):
    """The Verilated build's outputs differ from FINN's execution or torch's on some image: not
    the user's input (exit 1), though a stale export made before exports recorded their network
    can cause it."""


DATAFLOW_FILE = "dataflow.onnx"  # the final dataflow graph (build.json's dataflow_model)

DECISIONS = {
    "accelerator_output": "integer logits = accumulators of the last MVAU (noActivation); the "
    "final scalar Mul (weight scale) stays in software (steps/parent.onnx); no LabelSelect",
    "weight_width": "weights keep their full datatype width (MinimizeWeightBitWidth not run): a "
    "flipped bit can produce any value of the datatype",
    "accumulator_width": "MinimizeAccumulatorWidth(datatype_only=True): sized for the full weight "
    "datatype range (including the value outside the narrow range), so no flipped weight can "
    "overflow the accumulator",
    "thresholds": "standalone Thresholding_rtl layers; thresholds clipped to the accumulator "
    "range (RoundAndClipThresholds), threshold memories keep that width",
    "narrow_weights": "MVAU_rtl instantiated with NARROW_WEIGHTS=0 so -2**(B-1) weights compute "
    "exactly (FINN would set 1 when no trained weight is the datatype minimum)",
    "fifos": "depth-2 RTL FIFOs between all nodes (gauge FIFOs under FINN_SIMULATION)",
    "binarized_layers": "MVAUs with 1-bit weights become the project's BinMVAU (rtl/bin_mvau.sv; "
    "FINN has them only in HLS). Sign activations stay embedded as BinMVAU thresholds (XNOR-"
    "popcount domain); the last binarized layer outputs the bipolar dot product (integer "
    "logits, bipolarDot=1); 2-bit ReLUs after 1-bit weights are standalone Thresholding_rtl",
}
RUNTIME_WRITEABLE = {
    False: "off: AXI-lite weight ports are tied off in accel_top; weights change through the "
    "init files (no rebuild) or through simulator memory handles",
    True: "on: every weight memory's AXI-lite port is a port group s_axilite_<node>_* of "
    "accel_top (manifest axilite_ports); FINN memstreams read up to 8 lines ahead, so stream "
    "flush images after a write (manifest axilite.flush_images)",
}


def refuse_software_only(spec: ModelSpec) -> None:
    """Refuse recipes the FINN flow cannot build, before any stage folder is made."""
    if spec.weight_scaling == "minmax":
        raise UserInputError(
            "this run uses min/max weight quantization (unsigned codes with a zero point), a "
            "software-only recipe: FINN's MVAU takes signed weights without a zero point. Use "
            "mcel sweep for it, or train with --set model.weight_scaling=stats (or const) to build")


def export_run(run_dir: Path, n_check: int = 16, force: bool = False) -> Path:
    """Export the run's model to ``export/model.qonnx.onnx`` and check it against torch."""
    run_dir = Path(run_dir)
    out = run_dir / "export"
    check_writable(out, force)
    run = load_run(run_dir)
    model, spec = run.model, run.spec
    refuse_software_only(spec)
    t0 = time.perf_counter()
    with atomic_stage(out, force) as tmp:
        path = export_qonnx_model(model, tuple(model.input_shape), spec.input_kind, tmp)
        x, _ = run.test_inputs(n_check)
        check = check_export(model, path, x)
        record = {
            "stage": "export", "qonnx": path.name, NETWORK_FIELD: network_digest(run_dir),
            "input_shape": list(model.input_shape),
            "input_kind": spec.input_kind, "model": spec.to_dict(), "check": check.to_dict(),
            "seconds": round(time.perf_counter() - t0, 3), "versions": tool_versions(),
        }
        (tmp / "export.json").write_text(json.dumps(record, indent=1))
    return out / path.name


def cpp_harness_format(manifest: Manifest) -> CppHarnessFormat:
    s_in, s_out = manifest.streams.input, manifest.streams.output
    kind = {"uint8": "u", "bipolar": "b"}.get(s_in.kind or "", "s")
    return CppHarnessFormat(
        in_elems=s_in.elements, in_bits=s_in.element_bits,
        in_simd=s_in.elements_per_beat, in_kind=kind, out_elems=s_out.elements,
        out_bits=s_out.element_bits, out_pe=s_out.elements_per_beat,
    )


def _torch_integer_logits(torch_model, x: np.ndarray) -> np.ndarray | None:
    """torch's logits divided by their quantization scale (the integer accumulators), if any."""
    import torch

    if not hasattr(torch_model, "logits_and_scale"):
        return None
    with torch.no_grad():
        logits, scale = torch_model.eval().logits_and_scale(torch.from_numpy(x))
    return (logits / scale).numpy().astype(np.float64)


def verify_build(build_dir: Path, dataflow_model, torch_model, x: np.ndarray, manifest: Manifest,
                 sim_binary: Path, reference: np.ndarray | None = None) -> dict:
    """Verilated outputs == FINN Python execution (bit for bit); argmax agrees with torch.

    Agreement with torch counts an image when torch's argmax is one of the hardware's maximal
    logits: integer logits can tie, and ties are broken differently once torch multiplies by
    the float scale. ``int_equal_torch`` also reports how many images have exactly torch's
    integer logits (``logits / scale``), which is informational: FINN's thresholds are folded
    from BatchNorm in float and may differ from torch at an exact boundary.
    """
    hw, stats = run_simulator(sim_binary, x, cpp_harness_format(manifest), build_dir / "verify",
                              mem_dir=build_dir / "hdl" / "mem")
    finn_out = output_of(dataflow_model, x).astype(np.int64)
    ref = torch_logits(torch_model, x) if reference is None else reference
    hw_equal_finn = int(np.sum(np.all(hw == finn_out, axis=1)))
    top = hw == hw.max(axis=1, keepdims=True)
    argmax_equal = int(np.sum(top[np.arange(len(x)), ref.argmax(1)]))
    ints = None if torch_model is None else _torch_integer_logits(torch_model, x)
    result = {
        # argmax_equal_torch (its name kept for older records' readers) counts against the
        # reference: torch for a trained run, the imported graph's QONNX execution otherwise
        "n": len(x), "hw_equal_finn": hw_equal_finn, "argmax_equal_torch": argmax_equal,
        "argmax_reference": "torch" if torch_model is not None else "qonnx",
        "int_equal_torch": None if ints is None else int(np.sum(np.all(
            np.abs(hw - ints) < 1e-3, axis=1))),
        "hw_logit_ties": int(np.sum(top.sum(1) > 1)),
        "bit_exact": hw_equal_finn == len(x), "sim": stats,
    }
    np.save(build_dir / "verify" / "hw_logits.npy", hw)
    np.save(build_dir / "verify" / "finn_logits.npy", finn_out)
    if hw_equal_finn != len(x) or argmax_equal != len(x):
        raise VerificationMismatchError(
            f"the built accelerator disagrees with the network it was built from on some of {len(x)} images "
            f"(RTL == FINN on {hw_equal_finn}, argmax == {'torch' if torch_model is not None else 'the QONNX graph'} "
            f"on {argmax_equal}); "
            "nothing was built. If the run was trained again after its export, export again (mcel export RUN "
            "--force); otherwise this is a bug of the flow: build with --debug and report it")
    return result


def check_part(part: str) -> None:
    """``--part``: a device FINN knows (its part maps), checked before FINN starts (an unknown
    one was taken without a word until the IP preparation)."""
    from finn.util.basic import part_map

    known = sorted(set(part_map.values()))
    if part not in known:
        raise UserInputError(f"--part {part!r} is not a device FINN knows; choose one of {', '.join(known)}")


def build_run(
    run_dir: Path,
    folding: str | Path | dict = "auto",
    target_cycles: int | None = None,
    part: str = DEFAULT_PART,
    clk_ns: float = DEFAULT_CLK_NS,
    n_verify: int = 200,
    n_step_check: int = 3,
    force: bool = False,
    runtime_writeable: bool = False,
) -> dict:
    """FINN flow + stitch + manifest + Verilator build + bit-exactness check for one run.

    ``folding``: ``"auto"`` (FINN's SetFolding for ``target_cycles``; when it is None, the
    fastest default target that fits ``part``: :func:`flows.folding.default_folding`), a JSON
    file path, or a dict (see :mod:`flows.folding`).
    ``n_verify`` images go through the Verilated design (0 skips the check). Returns the record
    also written to ``build/build.json``. ``runtime_writeable``: every weight memory's AXI-lite
    port is exposed at ``accel_top`` as ``s_axilite_<node>_*`` (manifest ``axilite_ports``).
    """
    typed = Path(run_dir)  # named in messages as the user gave it (no machine path)
    given = typed / "build"
    run_dir = typed.resolve()
    target = run_dir / "build"
    # the flags first (a bad one is named even when a build exists), then the folders
    fold_dict = None if isinstance(folding, str | Path) and str(folding) == "auto" else load_folding(folding)
    check_part(part)
    problem = whitespace_problem(run_dir)
    if problem:
        raise UserInputError(f"{run_dir}: {problem}")
    if (run_dir / "export" / QONNX_FILE).exists():  # before the build's own check: this is the first fix
        check_export_is_the_runs(typed)
    check_writable(given, force)
    run = load_source(run_dir)
    if not run.imported:
        refuse_software_only(run.spec)
    if not (run_dir / "export" / QONNX_FILE).exists():
        export_run(run_dir)
    graph = load_graph(run_dir / "export" / QONNX_FILE)  # a corrupted export fails here, before any work
    with atomic_stage(target, force) as build_dir:
        # FINN's and qonnx's warnings ("Assuming 2D input is NC", "no RTL variant for ...") go into
        # the record, not onto stderr: a failed build's error stays its one line there
        with warnings.catch_warnings(record=True) as caught, _finn_log() as logged:
            warnings.simplefilter("always")
            record = _build(graph, build_dir, run, folding, fold_dict, target_cycles, part, clk_ns, n_verify,
                            n_step_check, runtime_writeable)
        relative_build_paths(build_dir)  # FINN's absolute paths name the temporary folder
        record["tool_warnings"] = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}"
                                          for w in caught} | {f"FINN: {' '.join(m.split())[:200]}" for m in logged})
        (build_dir / BUILD_RECORD).write_text(json.dumps(record, indent=1, default=str))
    return record


@contextmanager
def _finn_log() -> Iterator[list[str]]:
    """FINN's log messages (its logger "finn_logger" has no handler, so Python printed its
    warnings on stderr, several lines each) collected instead, for the build record."""
    logger, messages = logging.getLogger("finn_logger"), []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _phase(text: str) -> None:
    """One progress line per build phase after the FINN steps (they have their own bar), on stdout:
    an error stays the one line on stderr."""
    print(f"build: {text}", flush=True)


def _build(graph, build_dir: Path, run, folding, fold_dict, target_cycles, part, clk_ns, n_verify,
           n_step_check, runtime_writeable) -> dict:
    """The build proper, into ``build_dir`` (a temporary folder renamed into place by the caller)."""
    model, spec = run.model, run.spec
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    n_inputs = max(n_verify, n_step_check)
    x, labels = first_images(*run.test_inputs(0), n_inputs, "--verify-images")  # a note if the set is smaller
    options = FlowOptions(
        input_kind=run.input_kind, part=part, clk_ns=clk_ns, folding=fold_dict,
        target_cycles=target_cycles if fold_dict is None else None,
        check_inputs=x[:n_step_check], runtime_writeable=runtime_writeable,
    )
    init_finn(build_dir / "finn")
    t0 = time.perf_counter()
    dataflow, state = run_steps(graph, options, build_dir / "steps")
    dataflow.save(str(build_dir / DATAFLOW_FILE))
    relative_build_paths(build_dir, graphs=False)  # before the RTL is read: see flows/relocate.py
    times["finn_steps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _phase("stitching the RTL and its memory manifest")
    stitched = stitch(dataflow, build_dir / "hdl", expose_axilite=runtime_writeable)
    manifest = build_manifest(dataflow, stitched, run.input_kind, part, build_dir)
    write_manifest(manifest, build_dir / MANIFEST_FILE)
    times["stitch_manifest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_memory_paths(
        stitched.filelist, stitched.top,
        {m.path: m.width for m in manifest.memories}, build_dir / "verilator" / "paths",
    )
    times["memory_path_check"] = time.perf_counter() - t0

    _phase("verilating the accelerator (C++ build, minutes for a large network)")
    sim = build_simulator(stitched.filelist, stitched.top, build_dir / "verilator")
    times["verilator_build"] = sim.build_seconds

    verification = None
    if n_verify:
        t0 = time.perf_counter()
        _phase(f"checking {n_verify} images through the verilated accelerator against the network")
        # the reference: torch for a trained run, the imported QONNX graph's execution otherwise
        reference = (torch_logits(model, x[:n_verify]) if model is not None
                     else qonnx_execute(run.run_dir / "export" / QONNX_FILE, x[:n_verify]))
        verification = verify_build(build_dir, dataflow, model, x[:n_verify], manifest, sim.path, reference)
        verification["accuracy_vs_labels"] = float(
            np.mean(np.load(build_dir / "verify" / "hw_logits.npy").argmax(1) == labels[:n_verify])
        )
        times["verify"] = time.perf_counter() - t0
        cpi = verification["sim"]["cycles_per_image"]
        verification["cycles_per_image_vs_estimate"] = {
            "measured": cpi, "finn_expected_ii": manifest.expected_ii(),
        }

    record = {
        "stage": "build", NETWORK_FIELD: export_network(run.run_dir), MEMORY_FIELD: memory_digest(manifest),
        "model": spec.to_dict() if spec is not None else None,
        "source": run.source if run.imported else {"kind": "trained"}, "part": part,
        "clk_ns": clk_ns, "dataflow_model": DATAFLOW_FILE,
        "folding_request": folding if isinstance(folding, (dict, str)) else Path(folding).name,
        "target_cycles": target_cycles, "folding": folding_of(dataflow),
        "default_folding": state.default_folding,
        "runtime_writeable": runtime_writeable,
        "decisions": {**DECISIONS, "runtime_writeable_weights": RUNTIME_WRITEABLE[
            runtime_writeable]}, "steps": state.records,
        "simulator": {"binary": str(sim.path.relative_to(build_dir)), "ccache": sim.ccache},
        "memory_paths_checked": len(manifest.memories),
        "verification": verification,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "versions": tool_versions(), "python": platform.python_version(),
    }
    (build_dir / BUILD_RECORD).write_text(json.dumps(record, indent=1, default=str))
    return record
