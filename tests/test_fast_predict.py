"""The fast software prediction of a FINN build equals FINN's execution, map for map.

Why: ``fast_predict`` (the build's integer network in the batched evaluator) is what sweeps of
hundreds of maps use; ``finn_predict`` (FINN's Python execution of each faulty graph) shares no
code with it. For the same maps both must give identical integer outputs on every image
(DESIGN.md principle 1), including maps dense enough to push weights out of their trained range.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _maps(build_dir, rates):
    from mcel_train.faults.generate import generate_map
    from mcel_train.memory import memories_from_manifest

    mems = memories_from_manifest(json.loads((build_dir / "manifest.json").read_text()))
    return [generate_map(mems, "flip", rate, 7, i) for i, rate in enumerate(rates)]


def test_fast_predict_equals_finn_predict(smoke_build):
    from flows.build import load_run_model, run_inputs
    from hw_sim.predict import fast_predict, finn_predict

    build = smoke_build / "build"
    _, _, run = load_run_model(smoke_build)
    x, _ = run_inputs(run, 60)
    maps = [None, *_maps(build, [1e-3, 5e-3, 1e-2, 3e-2, 0.1, 0.3])]
    assert sum(len(m) for m in maps[1:]) > 0
    fast = fast_predict(build, x, maps)
    ref = finn_predict(build, x, maps)
    assert fast.shape == ref.shape == (len(maps), len(x), 10)
    np.testing.assert_array_equal(fast, ref)
    # Faults must matter, or the comparison would prove nothing.
    assert (fast[-1] != fast[0]).any()


def test_from_finn_build_layers(smoke_build):
    from mcel_train.intnet import IdentityPostOp, ThresholdPostOp
    from mcel_train.intnet_finn import build_memories, from_finn_build

    net = from_finn_build(smoke_build / "build")
    assert [type(layer.post) for layer in net.layers] == [ThresholdPostOp, ThresholdPostOp,
                                                          IdentityPostOp]
    mems = build_memories(smoke_build / "build", net)
    assert sorted(m.layer_index for m in mems) == [0, 1, 2]
    for m in mems:
        assert net.layers[m.layer_index].weight.shape == (m.rows, m.cols)
