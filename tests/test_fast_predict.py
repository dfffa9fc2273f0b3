"""The fast software prediction of a FINN build equals FINN's execution, map for map.

Why: ``fast_predict`` (the build's integer network in the batched evaluator) is what sweeps of
hundreds of maps use; ``finn_predict`` (FINN's Python execution of each faulty graph) shares no
code with it. For the same maps both must give identical integer outputs on every image
(docs/architecture.md, principle 1), including maps dense enough to push weights out of their trained range.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _maps(build_dir, rates):
    from mcel_train.faults.generate import generate_map
    from mcel_train.manifest import load_manifest

    mems = load_manifest(build_dir).fault_memories()
    return [generate_map(mems, "flip", rate, 7, i) for i, rate in enumerate(rates)]


def test_fast_predict_equals_finn_predict(smoke_build):
    from hw_sim.predict import fast_predict, finn_predict
    from mcel_train.runio import load_run

    build = smoke_build / "build"
    x, _ = load_run(smoke_build).test_inputs(60)
    maps = [None, *_maps(build, [1e-3, 5e-3, 1e-2, 3e-2, 0.1, 0.3])]
    assert sum(len(m) for m in maps[1:]) > 0
    ref = finn_predict(build, x, maps)
    for method in ("dense", "difference", "auto"):  # every evaluator path against FINN
        fast = fast_predict(build, x, maps, method=method)
        assert fast.shape == ref.shape == (len(maps), len(x), 10)
        np.testing.assert_array_equal(fast, ref, err_msg=method)
    # Faults must matter, or the comparison would prove nothing.
    assert (fast[-1] != fast[0]).any()


def test_threshold_faults_same_on_both_evaluator_paths(smoke_build):
    """Threshold-memory faults (FINN cannot execute the RTL's binary search on unsorted
    thresholds): the dense path swaps the rebuilt post-ops in, the difference path takes them
    as faulty post-ops; both must agree on every output."""
    from hw_sim.predict import fast_predict
    from mcel_train.faults.generate import generate_map
    from mcel_train.manifest import load_manifest
    from mcel_train.runio import load_run

    build = smoke_build / "build"
    x, _ = load_run(smoke_build).test_inputs(60)
    manifest = load_manifest(build)
    thr = manifest.fault_memories(("thresholds",))
    assert thr, "the smoke build has threshold memories"
    everything = manifest.fault_memories(("weights", "thresholds"))
    maps = [generate_map(thr, "flip", 0.05, 3, 0), generate_map(everything, "flip", 0.02, 3, 1)]
    dense = fast_predict(build, x, maps, method="dense")
    diff = fast_predict(build, x, maps, method="difference")
    np.testing.assert_array_equal(dense, diff)
    clean = fast_predict(build, x, [None], method="dense")[0]
    assert (dense[0] != clean).any()  # the threshold faults changed outputs


def test_from_finn_build_layers(smoke_build):
    from mcel_train.intnet import IdentityPostOp, ThresholdPostOp
    from mcel_train.intnet_finn import build_memories, from_finn_build
    from mcel_train.manifest import load_manifest

    net = from_finn_build(smoke_build / "build")
    assert [type(layer.post) for layer in net.layers] == [ThresholdPostOp, ThresholdPostOp,
                                                          IdentityPostOp]
    mems = build_memories(load_manifest(smoke_build / "build"), net)
    assert sorted(m.layer_index for m in mems) == [0, 1, 2]
    for m in mems:
        assert net.layers[m.layer_index].weight.shape == (m.rows, m.cols)


def test_a_sweep_in_a_builds_layout_predicts_as_the_build(smoke_build, tmp_path):
    """``mcel sweep --manifest``: the run's own network with the build's memories (the (word,
    bit) -> weight layout the accelerator holds). Each map's accuracy must equal the build's
    integer network's under the same map, and the record must name the build's memories (the
    memories used to all point at layer 0, and the sweep failed with a traceback)."""
    import json
    import shutil

    from hw_sim.predict import fast_predict
    from mcel_train.faults.generate import generate_map
    from mcel_train.manifest import load_manifest
    from mcel_train.runio import load_run
    from mcel_train.sweep import run_sweep

    run = tmp_path / "run"
    shutil.copytree(smoke_build / "train", run / "train")
    build = smoke_build / "build"
    record = run_sweep(run, [0.0, 0.05], maps=4, seed=5, manifest=build, progress=False, test_images=120,
                       method="difference")
    weights = load_manifest(build).fault_memories(("weights",))
    # which build, relative to the run folder (it said "manifest:build" for any build)
    assert record["memory_source"] == f"manifest:{os.path.relpath(build.resolve(), run.resolve())}"
    assert record["memory_source"].endswith("/build") and not record["memory_source"].startswith("manifest:/")
    assert [m["name"] for m in record["memories"]] == [m.name for m in weights]
    assert json.loads((run / "sweep" / "sw_ber.json").read_text())["results"] == record["results"]
    x, labels = load_run(run).test_inputs(120)
    maps = [generate_map(weights, "flip", 0.05, 5, i) for i in range(4)]
    hw = fast_predict(build, x, maps).argmax(-1)
    assert record["results"][1]["accuracies"] == [float(a) for a in (hw == labels[None, :]).mean(1)]
    assert len(set(record["results"][1]["accuracies"])) > 1  # the maps differ in effect


@pytest.mark.parametrize("p01, p10, stored", [(0, 1, 1), (1, 0, 0)])
def test_simulated_asym_maps_hit_bits_by_their_stored_value(smoke_build, tmp_path, p01, p10, stored):
    """``mcel sim --fault-model asym``: a stored 1 may fall (``p10``), a 0 rise (``p01``). The
    simulation's maps read the stored bits from the build (they used to fail: 'the asym fault
    model needs the stored contents'); checked against bits encoded independently, from the
    Brevitas model's integer weights: with only falls every fault sits on a stored 1, with
    only rises on a 0."""
    from hw_sim.sim import make_maps
    from mcel_train.evaluate import memory_contents
    from mcel_train.faults.faultmap import FaultMap
    from mcel_train.faults.generate import stored_bits
    from mcel_train.intnet import from_brevitas
    from mcel_train.intnet_finn import memories_in_layer_order
    from mcel_train.manifest import load_manifest
    from mcel_train.runio import load_run

    manifest = load_manifest(smoke_build / "build")
    entries = make_maps(manifest, [0.2], 2, 3, f"asym:p01={p01},p10={p10}", tmp_path)
    mems = manifest.fault_memories(("weights",))
    net = from_brevitas(load_run(smoke_build).model)
    bits = stored_bits(mems, memory_contents(net, memories_in_layer_order(manifest, net)))
    starts = np.concatenate([[0], np.cumsum([m.n_bits for m in mems])[:-1]])
    widths = np.array([m.width for m in mems])
    for entry in entries:
        fmap = FaultMap.load(entry["file"])
        assert len(fmap) > 20
        pos = starts[fmap.memory] + fmap.word * widths[fmap.memory] + fmap.bit
        assert (bits[pos] == stored).all()
