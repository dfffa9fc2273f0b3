"""Convolutional networks through the whole hardware loop, on the bundled 8x8 digits.

Each small CNN is trained by Brevitas, built by the FINN flow (FMPadding + sliding window
generator + MVAU per conv, the project's RTL max-pool, BinMVAU for binarized layers) at two
foldings, verified RTL == FINN's execution == torch (argmax and integer logits) on 200 images,
then simulated under cocotb with fault maps at three rates, through simulator handles and over
AXI-lite: every output must equal the software prediction.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow

# name -> (config, overrides): 2- and 4-bit VGG3s, the binarized CNV with 8-bit pixels, w1a2
CNNS = {
    "vgg3_w2a2": ("smoke_digits_vgg3.yaml", {}),
    "vgg3_w4a4": ("smoke_digits_vgg3.yaml", {"model": {"name": "vgg3_w4a4", "channels": [8, 16], "hidden": [32]}}),
    "cnv_w1a1_u8": ("smoke_digits_cnv.yaml", {}),
    "vgg3_w1a2": ("smoke_digits_vgg3.yaml", {"model": {"name": "vgg3_w1a2", "channels": [8, 16], "hidden": [32]}}),
}
FOLDINGS = {"fast": 64, "slow": 512}  # target cycles per image
BERS = [0.0, 0.005, 0.01, 0.03]
MAPS = 5


def _train(name: str, root) -> object:
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    config, over = CNNS[name]
    cfg = load_config(CONFIGS / config, overrides=[f"{k}={json.dumps(v)}" for k, v in over.items()])
    run = root / name
    run_train(cfg, run, show_progress=False)
    return run


@pytest.fixture(scope="module")
def cnn_runs(tmp_path_factory):
    """Every CNN trained once, then built at both foldings (the fast one with AXI-lite ports)."""
    from flows.build import build_run

    root = tmp_path_factory.mktemp("cnn")
    out = {}
    for name in CNNS:
        trained = _train(name, root / "trained")
        for fold, cycles in FOLDINGS.items():
            run = root / f"{name}_{fold}"
            shutil.copytree(trained, run)
            record = build_run(run, folding="auto", target_cycles=cycles, n_verify=200,
                               runtime_writeable=fold == "fast")
            out[(name, fold)] = (run, record)
    return out


@pytest.mark.parametrize("fold", FOLDINGS)
@pytest.mark.parametrize("name", CNNS)
def test_rtl_equals_finn_and_torch(cnn_runs, name, fold):
    run, record = cnn_runs[(name, fold)]
    v = record["verification"]
    assert v["n"] == 200 and v["bit_exact"] and v["hw_equal_finn"] == 200
    assert v["argmax_equal_torch"] == 200
    assert v["int_equal_torch"] == 200  # the integer logits themselves, not only the argmax
    nodes = " ".join(record["steps"][-1]["nodes"])
    assert "ConvolutionInputGenerator_rtl" in nodes and "MaxPoolRTL" in nodes
    if name.startswith(("cnv", "vgg3_w1")):
        assert "BinMVAU" in nodes
    measured = v["cycles_per_image_vs_estimate"]["measured"]
    expected = v["cycles_per_image_vs_estimate"]["finn_expected_ii"]
    assert abs(measured - expected) <= 0.1 * expected


def test_foldings_differ(cnn_runs):
    for name in CNNS:
        fast = cnn_runs[(name, "fast")][1]["verification"]["sim"]["cycles_per_image"]
        slow = cnn_runs[(name, "slow")][1]["verification"]["sim"]["cycles_per_image"]
        assert fast < slow, name


def test_a_cnn_sweep_refuses_the_builds_layout_in_one_line(cnn_runs, tmp_path):
    """``mcel sweep --manifest`` maps a build's memories onto the run's torch-made network; a
    conv layer's memory columns are in FINN's order, so a CNN is refused in one line, before
    any work, and nothing is written."""
    from mcel_train.errors import UserInputError
    from mcel_train.sweep import run_sweep

    run = cnn_runs[(next(iter(CNNS)), "fast")][0]
    with pytest.raises(UserInputError, match=r"--manifest .* does not fit this run's network .*FINN's order"):
        run_sweep(run, [0.01], maps=2, manifest=run / "build", progress=False)
    assert not (run / "sweep").exists()


def test_conv_layout_maps_every_weight_to_the_torch_tensor(cnn_runs):
    """(word, bit) -> (out channel, kernel row, kernel column, in channel): the manifest's layout
    decodes the init files to exactly the Brevitas layers' integer weights, and back."""
    import torch

    from flows.manifest import write_weights_to_init
    from mcel_train.manifest import load_manifest
    from mcel_train.memory import to_torch_order, weight_index
    from mcel_train.models import quant_layers
    from mcel_train.runio import load_run

    for name in ("vgg3_w2a2", "cnv_w1a1_u8"):
        run, _ = cnn_runs[(name, "fast")]
        man = load_manifest(run / "build")
        layers = quant_layers(load_run(run).model)
        entries = list(man.weights.values())
        assert len(entries) == len(layers)
        kinds = [e.layout["input"]["kind"] for e in entries]
        assert kinds[:2] == ["conv", "conv"] and "flatten" in kinds
        for entry, layer in zip(entries, layers, strict=True):
            with torch.no_grad():
                qw = layer.quant_weight()
                ints = torch.round(qw.value / qw.scale).to(torch.int64).numpy()
            mat = man.weight_matrix(entry.name)
            torch_order = to_torch_order(mat, entry.layout)
            np.testing.assert_array_equal(torch_order.reshape(ints.shape), ints, err_msg=entry.name)
            if entry.layout["input"]["kind"] == "conv":
                oc, kh, kw, ic = weight_index(entry.layout, 3 % mat.shape[0], mat.shape[1] - 1)
                assert mat[3 % mat.shape[0], mat.shape[1] - 1] == ints[oc, ic, kh, kw]
            path = write_weights_to_init(man, entry.name, mat, run / f"{entry.name}.dat")
            assert path.read_text() == man.resolve(entry.init_file).read_text()


@pytest.mark.parametrize("inject", ["backdoor", "axilite"])
@pytest.mark.parametrize("name", CNNS)
def test_fault_maps_in_the_rtl_equal_software(cnn_runs, name, inject):
    from hw_sim.compare import compare_run
    from hw_sim.sim import run_sim

    run, _ = cnn_runs[(name, "fast")]
    record = json.loads(run_sim(run, BERS, maps=MAPS, images=40, seed=2, inject=inject, force=True,
                                jobs=1).read_text())
    assert len(record["maps"]) == 1 + 3 * MAPS
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    hw = np.load(run / "sim" / "hw_outputs.npz")["outputs"]
    assert any(not np.array_equal(hw[m["id"]], hw[0]) for m in record["maps"] if m["rate"] == 0.03)
    assert compare_run(run)["identical"]


@pytest.mark.parametrize("name", ["vgg3_w2a2", "cnv_w1a1_u8"])
def test_weight_and_threshold_faults_without_a_clean_rate(cnn_runs, name):
    """``--memories all`` with no rate 0 in the list, two simulator processes: FINN's
    Thresholding_rtl (vgg3) and the thresholds embedded in BinMVAU (cnv) hold faults too."""
    from hw_sim.sim import run_sim

    run, _ = cnn_runs[(name, "fast")]
    record = json.loads(run_sim(run, [0.01, 0.03], maps=3, images=40, seed=4, memories="all", force=True,
                                jobs=2).read_text())
    assert record["simulator_processes"] == 2 and len(record["maps"]) == 6
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    from mcel_train.faults.faultmap import FaultMap
    from mcel_train.manifest import load_manifest

    thresholds = set(load_manifest(run / "build").thresholds)
    hit = {FaultMap.load(run / "sim" / m["file"]).memory_names[i] for m in record["maps"]
           for i in np.unique(FaultMap.load(run / "sim" / m["file"]).memory)}
    assert hit & thresholds, "no map put a fault into a threshold memory"


def test_transient_upset_in_a_cnn(cnn_runs):
    from hw_sim.sim import run_sim

    run, _ = cnn_runs[("vgg3_w2a2", "fast")]
    record = json.loads(run_sim(run, [0.03], maps=2, images=30, seed=6, transient_cycle=200, force=True,
                                jobs=1).read_text())
    assert all(m["identical_to_software"] for m in record["maps"])
    assert all(m["transient"]["images_after"] > 5 for m in record["maps"])
