"""Shared checks of the FINN build tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def assert_edited_weights_bit_exact(run: Path, edit: Callable[[dict, np.ndarray, np.random.Generator], None],
                                    seed: int) -> None:
    """Edit every weight memory's init file (``edit(entry, weights, rng)`` in place), rerun the
    same Verilated binary (no rebuild), and require it to equal FINN's execution of the graph
    with the same edited weights, and to differ from the clean outputs."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flows.build import cpp_harness_format, load_run_model, run_inputs
    from flows.finn_env import init_finn
    from flows.manifest import load_manifest, read_weights_from_init, write_weights_to_init
    from flows.step_check import output_of
    from flows.verilate import run_simulator

    build = run / "build"
    init_finn(build / "finn")
    man = load_manifest(build / "manifest.json")
    model = ModelWrapper(str(next((build / "steps").glob("*_generate_hdl.onnx"))))
    _, _, trained = load_run_model(run)
    x, _ = run_inputs(trained, 100)
    clean = np.load(build / "verify" / "hw_logits.npy")[:100]
    rng = np.random.default_rng(seed)
    for entry in (m for m in man["memories"] if m["kind"] == "weights"):
        w = read_weights_from_init(entry)
        edit(entry, w, rng)
        write_weights_to_init(entry, w)
        node = next(n for n in model.graph.node if n.name == entry["layer"])
        model.set_initializer(node.input[1], w.T.astype(np.float32))
    hw, _ = run_simulator(build / "verilator" / "accel_sim", x, cpp_harness_format(man), build / "verify_faults")
    assert not np.array_equal(hw, clean)
    np.testing.assert_array_equal(hw, output_of(model, x).astype(np.int64))
