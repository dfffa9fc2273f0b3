"""Shared checks of the FINN build tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def assert_edited_weights_bit_exact(run: Path, edit: Callable[[object, np.ndarray, np.random.Generator], None],
                                    seed: int) -> None:
    """Edit every weight memory's init file (``edit(entry, weights, rng)`` in place), rerun the
    same Verilated binary (no rebuild), and require it to equal FINN's execution of the graph
    with the same edited weights, and to differ from the clean outputs."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flows.build import cpp_harness_format
    from flows.finn_env import init_finn
    from flows.manifest import write_weights_to_init
    from hw_sim.verilate import run_simulator
    from mcel_train.finn_graph import dataflow_graph_path, output_of
    from mcel_train.manifest import load_manifest
    from mcel_train.runio import load_run

    build = run / "build"
    init_finn(build / "finn")
    man = load_manifest(build)
    model = ModelWrapper(str(dataflow_graph_path(build)))
    x, _ = load_run(run).test_inputs(100)
    clean = np.load(build / "verify" / "hw_logits.npy")[:100]
    rng = np.random.default_rng(seed)
    for entry in man.weights.values():
        w = man.weight_matrix(entry.name)
        edit(entry, w, rng)
        write_weights_to_init(man, entry.name, w)
        node = next(n for n in model.graph.node if n.name == entry.layer)
        model.set_initializer(node.input[1], w.T.astype(np.float32))
    hw, _ = run_simulator(build / "verilator" / "accel_sim", x, cpp_harness_format(man), build / "verify_faults",
                          mem_dir=build / "hdl" / "mem")
    assert not np.array_equal(hw, clean)
    np.testing.assert_array_equal(hw, output_of(model, x).astype(np.int64))


def assert_init_files_hold_graph_weights(build: Path) -> None:
    """Every weight memory's init file, decoded through the manifest's layout, equals the weight
    initializer of its node in the dataflow graph (FINN stores W as (MW, MH) = in x out; binary
    initializers hold 1 for +1, 0 for -1): the layout checked against an independent source,
    not against its own inverse."""
    from qonnx.core.modelwrapper import ModelWrapper

    from mcel_train.finn_graph import dataflow_graph_path
    from mcel_train.manifest import load_manifest

    man = load_manifest(build)
    model = ModelWrapper(str(dataflow_graph_path(build)))
    assert man.weights
    for entry in man.weights.values():
        node = next(n for n in model.graph.node if n.name == entry.layer)
        expected = np.asarray(model.get_initializer(node.input[1])).T.astype(np.int64)
        if entry.bipolar and expected.min() >= 0:
            expected = 2 * expected - 1
        np.testing.assert_array_equal(man.weight_matrix(entry.name), expected, err_msg=entry.name)
