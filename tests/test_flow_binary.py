"""End-to-end for binarized MLPs: tfc_w1a1 and tfc_w1a2 -> BinMVAU RTL -> Verilator, bit-exact.

Why: FINN implements 1-bit-weight MVAUs only in HLS; the flow maps them to the project's
``BinMVAU`` (rtl/bin_mvau.sv). For two tiny models on the 8x8 digits (bipolar inputs with sign
activations, and uint8 inputs with 2-bit ReLUs), each at two foldings (one with width
converters between layers), every build must keep the multi-bit flow's guarantees: each FINN
step checked by Python execution, Verilated outputs == FINN execution bit for bit on 200 images
and torch's argmax, cycles per image == FINN's estimate. The manifest's 1-bit weight layout
(``finn_mvau``, bit 1 = +1) and the embedded threshold layout must decode the init files to the
graph's tensors, and flipped weights written to the init files must change the outputs of the
same binary exactly as FINN's execution of the modified graph predicts.
About 1 minute cold on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mcel_train.data import load_dataset
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import quick_train, test_accuracy, write_run
from tests.flow_helpers import assert_edited_weights_bit_exact

pytestmark = pytest.mark.slow

MODELS = {
    "tfc_w1a1": ModelSpec(arch="tfc", weight_bits=1, act_bits=1, hidden=(32, 32),
                          image_shape=(8, 8)),
    "tfc_w1a2": ModelSpec(arch="tfc", weight_bits=1, act_bits=2, hidden=(32, 32),
                          image_shape=(8, 8)),
}
BUILDS = [
    ("tfc_w1a1", "ones", {"Defaults": {"PE": 1, "SIMD": 1}}, None),
    ("tfc_w1a1", "explicit", {"BinMVAU_0": {"PE": 8, "SIMD": 16},
                              "BinMVAU_1": {"PE": 2, "SIMD": 4},
                              "BinMVAU_2": {"PE": 5, "SIMD": 8}}, None),
    ("tfc_w1a2", "auto32", "auto", 32),
    ("tfc_w1a2", "explicit", {"BinMVAU_0": {"PE": 4, "SIMD": 8},
                              "Thresholding_rtl_0": {"PE": 2},
                              "BinMVAU_1": {"PE": 2, "SIMD": 4},
                              "Thresholding_rtl_1": {"PE": 2},
                              "BinMVAU_2": {"PE": 2, "SIMD": 2}}, None),
]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    digits = load_dataset("digits")
    runs = {}
    for name, spec in MODELS.items():
        run = tmp_path_factory.mktemp("runs") / name
        model = quick_train(spec, digits, steps=100)
        write_run(run, model, spec.resolved(), "digits",
                  {"test_acc": test_accuracy(model, digits, spec.resolved())})
        runs[name] = run
    return runs


@pytest.fixture(scope="module")
def builds(trained_runs, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    import shutil

    from flows.build import build_run

    tmp = tmp_path_factory.mktemp("builds")
    out = {}
    for model_name, tag, folding, target in BUILDS:
        run = tmp / f"{model_name}_{tag}"
        shutil.copytree(trained_runs[model_name] / "train", run / "train")
        out[f"{model_name}-{tag}"] = (run, build_run(run, folding=folding, target_cycles=target,
                                                     n_verify=200))
    return out


@pytest.mark.parametrize("key", [f"{m}-{t}" for m, t, _, _ in BUILDS])
def test_binary_build_is_bit_exact(builds, key):
    run, record = builds[key]
    v = record["verification"]
    assert v["n"] == 200 and v["bit_exact"]
    assert v["hw_equal_finn"] == 200 and v["argmax_equal_torch"] == 200
    assert v["int_equal_torch"] == 200  # binarized logits are integers in torch too
    assert v["sim"]["cycles_per_image"] == v["cycles_per_image_vs_estimate"]["finn_expected_ii"]
    steps = [s["step"] for s in record["steps"]]
    assert "bin_mvau" in steps and steps[-1] == "generate_hdl"
    assert all(s["check"] is not None for s in record["steps"])
    final_nodes = record["steps"][-1]["nodes"]
    assert sum(n.endswith(":BinMVAU") for n in final_nodes) == 3
    assert not any(":MVAU" in n for n in final_nodes)


def test_explicit_folding_inserts_width_converters(builds):
    for key in ("tfc_w1a1-explicit", "tfc_w1a2-explicit"):
        nodes = builds[key][1]["steps"][-1]["nodes"]
        assert any("StreamingDataWidthConverter_rtl" in n for n in nodes), key
    assert builds["tfc_w1a2-auto32"][1]["verification"]["sim"]["cycles_per_image"] <= 32


@pytest.mark.parametrize("key", ["tfc_w1a1-explicit", "tfc_w1a2-explicit"])
def test_manifest_binary_memories(builds, key, tmp_path):
    from flows.manifest import write_weights_to_init
    from mcel_train.manifest import load_manifest
    from tests.flow_helpers import assert_init_files_hold_graph_weights

    run, _ = builds[key]
    man = load_manifest(run / "build")
    weights = list(man.weights.values())
    assert [m.layer for m in weights] == ["BinMVAU_0", "BinMVAU_1", "BinMVAU_2"]
    m0 = weights[0]
    assert m0.path == "accel_top.BinMVAU_0.core.wmem.Mem"
    assert m0.layout["type"] == "finn_mvau" and m0.layout["element_bits"] == 1
    assert m0.layout["bipolar"] and m0.bipolar and not m0.signed
    assert (m0.depth, m0.width) == (64 * 32 // (m0.pe * m0.simd), m0.pe * m0.simd)
    assert_init_files_hold_graph_weights(run / "build")
    for entry in weights:  # and the encoder reproduces the init files byte for byte
        again = write_weights_to_init(man, entry.name, man.weight_matrix(entry.name), tmp_path / "w.dat")
        assert again.read_text() == man.resolve(entry.init_file).read_text()
    thr = list(man.thresholds.values())
    if key.startswith("tfc_w1a1"):  # sign activations: thresholds embedded in BinMVAU_0/1
        assert [m.path for m in thr] == [f"accel_top.BinMVAU_{i}.core.gen_thr.tmem.Mem" for i in (0, 1)]
        assert thr[0].layout["type"] == "bin_mvau_thresholds"
        assert man.streams.input.datatype == "BIPOLAR"
    else:  # 2-bit ReLUs: standalone FINN Thresholding_rtl layers
        assert thr and all(m.layout["type"] == "finn_thresholds" for m in thr)
        assert man.streams.input.datatype == "UINT8"
    assert man.streams.output.elements == 10
    assert man.streams.output.datatype.startswith("INT")


@pytest.mark.parametrize("key", ["tfc_w1a1-ones", "tfc_w1a2-explicit"])
def test_flipped_weights_match_finn_without_rebuild(builds, key):
    """Flip 5 % of the 1-bit weights in the init files: same binary == FINN on the new graph."""

    def flip(entry, w, rng):
        w[rng.random(w.shape) < 0.05] *= -1

    assert_edited_weights_bit_exact(builds[key][0], flip, seed=3)
