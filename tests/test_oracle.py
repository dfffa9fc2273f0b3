"""An oracle for faulty hardware that shares no code with the build's predictor.

Every other faulty-map check compares the RTL with the project's predictor, which decodes the
build's init files. Here each fault map (in the build's memory coordinates) is applied to the
memory words, decoded through the manifest's layout, turned back into the torch weight tensor
(``to_torch_order``), and loaded into the integer network extracted from the *Brevitas* model
(``from_brevitas``: Brevitas' own BatchNorm/activation thresholds). That network's predictions
must equal the RTL's, image by image: the chain Brevitas -> FINN layout -> RTL.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_brevitas_with_faulty_weights_predicts_the_rtl(smoke_build):
    from hw_sim.injection import faulty_words
    from hw_sim.sim import run_sim
    from mcel_train.faults.faultmap import FaultMap
    from mcel_train.intnet import from_brevitas
    from mcel_train.manifest import load_manifest
    from mcel_train.memory import decode_mvau, to_torch_order
    from mcel_train.runio import load_run

    run = smoke_build
    record = json.loads(run_sim(run, [0.0, 0.01, 0.03], maps=3, images=80, seed=9, force=True,
                                jobs=1).read_text())
    hw = np.load(run / "sim" / "hw_outputs.npz")["outputs"]
    man = load_manifest(run / "build")
    golden = {name: man.words(name) for name in man.weights}
    trained = load_run(run)
    x, _ = trained.test_inputs(80)
    net = from_brevitas(trained.model)
    entries = list(man.weights.values())
    assert len(entries) == len(net.layers)
    clean = [layer.weight.copy() for layer in net.layers]
    changed = 0
    for m in record["maps"]:
        fmap = FaultMap.load(run / "sim" / m["file"])
        words = {n: list(w) for n, w in golden.items()}
        for name, updates in faulty_words(fmap, golden).items():
            for w, v in updates.items():
                words[name][w] = v
        for layer, entry, w0 in zip(net.layers, entries, clean, strict=True):
            faulty = to_torch_order(decode_mvau(words[entry.name], entry.layout), entry.layout)
            layer.weight = faulty.reshape(w0.shape).astype(w0.dtype)
        with torch.no_grad():
            logits = net.forward(torch.from_numpy(x.reshape(len(x), -1)))[0].numpy()
        brevitas_pred = logits.argmax(1)
        rtl_pred = hw[m["id"]].argmax(1)
        np.testing.assert_array_equal(brevitas_pred, rtl_pred, err_msg=f"map {m['id']} (rate {m['rate']})")
        changed += int((rtl_pred != hw[0].argmax(1)).sum())
    for layer, w0 in zip(net.layers, clean, strict=True):
        layer.weight = w0
    assert changed > 0, "no fault changed a prediction: the oracle would prove nothing"
