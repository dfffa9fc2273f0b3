"""End-to-end: trained model -> FINN flow -> accel_top -> Verilator, bit-exact on 200 images.

Two tiny multi-bit MLPs on the bundled 8x8 digits (a tfc_w2a2 and an sfc_w4a4-like net), each
at two foldings. For every build: Verilated outputs equal FINN's Python execution bit for bit
and their argmax equals torch's on 200 test images, the measured cycles per image equal FINN's
expected II, and the manifest's layouts decode the init files to the graph's weights. One build
is then faulted: weights at the datatype extremes (outside the narrow range) are written into
the init files and the same binary, without a rebuild, must still match FINN exactly.
About 2-3 minutes cold on 2 cores (Verilator builds dominate; ccache makes reruns faster).
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
    "tfc_w2a2": ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(32, 32),
                          image_shape=(8, 8)),
    "sfc_w4a4": ModelSpec(arch="sfc", weight_bits=4, act_bits=4, hidden=(64, 64),
                          image_shape=(8, 8)),
}
BUILDS = [
    ("tfc_w2a2", "ones", {"Defaults": {"PE": 1, "SIMD": 1}}, None),
    ("tfc_w2a2", "explicit", {"MVAU_rtl_0": {"PE": 4, "SIMD": 8},
                              "Thresholding_rtl_0": {"PE": 2},
                              "MVAU_rtl_1": {"PE": 2, "SIMD": 4},
                              "Thresholding_rtl_1": {"PE": 2},
                              "MVAU_rtl_2": {"PE": 2, "SIMD": 2}}, None),
    ("sfc_w4a4", "auto256", "auto", 256),
    ("sfc_w4a4", "auto64", "auto", 64),
]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, digits) -> dict[str, Path]:
    runs = {}
    for name, spec in MODELS.items():
        run = tmp_path_factory.mktemp("runs") / name
        model = quick_train(spec, digits, steps=200)
        write_run(run, model, spec.resolved(), "digits",
                  {"test_acc": test_accuracy(model, digits, spec.resolved())})
        runs[name] = run
    return runs


def _fresh_run(trained: Path, tmp: Path, tag: str) -> Path:
    """A run folder per build (same trained model), so builds never share init files."""
    import shutil

    run = tmp / f"{trained.name}_{tag}"
    shutil.copytree(trained / "train", run / "train")
    return run


@pytest.fixture(scope="module")
def builds(trained_runs, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    from flows.build import build_run

    tmp = tmp_path_factory.mktemp("builds")
    out = {}
    for model_name, tag, folding, target in BUILDS:
        run = _fresh_run(trained_runs[model_name], tmp, tag)
        out[f"{model_name}-{tag}"] = (run, build_run(run, folding=folding, target_cycles=target,
                                                     n_verify=200))
    return out


@pytest.mark.parametrize("key", [f"{m}-{t}" for m, t, _, _ in BUILDS])
def test_build_is_bit_exact(builds, key):
    run, record = builds[key]
    v = record["verification"]
    assert v["n"] == 200
    assert v["hw_equal_finn"] == 200 and v["argmax_equal_torch"] == 200 and v["bit_exact"]
    assert v["argmax_reference"] == "torch"
    assert v["sim"]["cycles_per_image"] == v["cycles_per_image_vs_estimate"]["finn_expected_ii"]
    build = run / "build"
    for f in ("build.json", "manifest.json", "hdl/accel_top.sv", "hdl/filelist.f",
              "steps/parent.onnx", "verilator/accel_sim"):
        assert (build / f).exists(), f
    assert [s["step"] for s in record["steps"]][-1] == "generate_hdl"
    assert all(s["check"] is not None for s in record["steps"])


def test_foldings_differ(builds):
    a = builds["tfc_w2a2-ones"][1]["folding"]
    b = builds["tfc_w2a2-explicit"][1]["folding"]
    assert a["MVAU_rtl_0"] == {"PE": 1, "SIMD": 1} and b["MVAU_rtl_0"] == {"PE": 4, "SIMD": 8}
    fast = builds["sfc_w4a4-auto64"][1]["verification"]["sim"]["cycles_per_image"]
    slow = builds["sfc_w4a4-auto256"][1]["verification"]["sim"]["cycles_per_image"]
    assert fast <= 64 < slow <= 256


def test_manifest_layouts_match_graph(builds, tmp_path):
    from flows.manifest import write_weights_to_init
    from mcel_train.manifest import load_manifest
    from tests.flow_helpers import assert_init_files_hold_graph_weights

    run, record = builds["tfc_w2a2-explicit"]
    man = load_manifest(run / "build")
    weights = list(man.weights.values())
    assert [m.layer for m in weights] == ["MVAU_rtl_0", "MVAU_rtl_1", "MVAU_rtl_2"]
    m0 = weights[0]
    assert m0.layout == {"type": "finn_mvau", "mh": 32, "mw": 64, "pe": 4, "simd": 8,
                         "element_bits": 2, "signed": True, "bipolar": False, "input": {"kind": "dense"}}
    assert m0.path == "accel_top.MVAU_rtl_0_wmem.core.genUnpumped.mem.blkMem.Mem"
    assert (m0.depth, m0.width) == (64 * 32 // 32, 4 * 8 * 2)
    assert_init_files_hold_graph_weights(run / "build")
    for entry in weights:  # the inverse reproduces FINN's memblock.dat byte for byte
        again = write_weights_to_init(man, entry.name, man.weight_matrix(entry.name), tmp_path / "w.dat")
        assert again.read_text() == man.resolve(entry.init_file).read_text()
    assert man.thresholds
    assert man.streams.input.datatype == "UINT8"
    assert man.streams.output.elements == 10


@pytest.mark.parametrize("key", ["tfc_w2a2-explicit", "sfc_w4a4-auto64"])
def test_faulted_weights_stay_bit_exact_without_rebuild(builds, key):
    """Weights at -2**(B-1) (outside the narrow range) and 2**(B-1)-1 via the init files."""

    def extremes(entry, w, rng):
        b = entry.element_bits
        w[rng.random(w.shape) < 0.05] = -(2 ** (b - 1))
        w[rng.random(w.shape) < 0.05] = 2 ** (b - 1) - 1

    assert_edited_weights_bit_exact(builds[key][0], extremes, seed=1)
