"""Fast unit tests of the flows/ back end: memory layouts, the add_multi patch, guards."""

from __future__ import annotations

import numpy as np
import pytest

from mcel_train.memory import (
    decode_mvau,
    decode_thresholds,
    encode_mvau,
    read_words,
    threshold_index,
    write_words,
)


def _layout(mh, mw, pe, simd, bits, bipolar=False):
    return {"type": "finn_mvau", "mh": mh, "mw": mw, "pe": pe, "simd": simd,
            "element_bits": bits, "signed": not bipolar, "bipolar": bipolar}


@pytest.mark.parametrize("mh,mw,pe,simd,bits", [(10, 64, 1, 1, 2), (64, 64, 4, 8, 2),
                                                (16, 32, 16, 32, 4), (8, 12, 2, 3, 8)])
def test_mvau_layout_round_trip_full_range(tmp_path, mh, mw, pe, simd, bits):
    rng = np.random.default_rng(mh * mw + pe)
    w = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(mh, mw))
    lay = _layout(mh, mw, pe, simd, bits)
    words = encode_mvau(w, lay)
    assert len(words) == mh * mw // (pe * simd)
    assert max(words) < 2 ** (pe * simd * bits)
    path = tmp_path / "mem.dat"
    write_words(path, words, pe * simd * bits)
    np.testing.assert_array_equal(decode_mvau(read_words(path), lay), w)


def test_mvau_layout_bit_positions():
    """Word t = nf*(MW/SIMD)+sf, bit (pe*SIMD+s)*B holds W[nf*PE+pe, sf*SIMD+s]."""
    lay = _layout(4, 6, 2, 3, 2)
    w = np.zeros((4, 6), dtype=np.int64)
    w[3, 4] = 1  # nf=1, pe=1, sf=1, s=1 -> word 1*2+1 = 3, bit (1*3+1)*2 = 8
    words = encode_mvau(w, lay)
    assert words[3] == 1 << 8 and sum(words) == 1 << 8
    w[3, 4] = -1  # two's complement 0b11
    assert encode_mvau(w, lay)[3] == 0b11 << 8


def test_mvau_layout_bipolar_and_range_errors():
    lay = _layout(2, 4, 1, 2, 1, bipolar=True)
    w = np.array([[1, -1, -1, 1], [-1, -1, 1, 1]])
    np.testing.assert_array_equal(decode_mvau(encode_mvau(w, lay), lay), w)
    with pytest.raises(ValueError, match="range"):
        encode_mvau(np.full((2, 4), 2), _layout(2, 4, 1, 2, 2))


def test_threshold_layout_indexing():
    lay = {"type": "finn_thresholds", "channels": 4, "pe": 2, "pe_index": 1, "stage": 1,
           "out_bits": 2, "num_steps": 3, "element_bits": 8, "signed": True}
    # stage 1 of a 2-bit search holds columns 0 and 2; word (cf<<1)+j, channel cf*PE+pe
    assert threshold_index(lay, 0) == (1, 0)
    assert threshold_index(lay, 1) == (1, 2)
    assert threshold_index(lay, 2) == (3, 0)
    got = decode_thresholds([0xFF, 0x05, 0x80, 0x7F], lay)
    assert got == {(1, 0): -1, (1, 2): 5, (3, 0): -128, (3, 2): 127}


def test_add_multi_patch_moves_function_to_module_scope(tmp_path):
    from flows.finn_env import finn_rtllib_dir, init_finn
    from flows.stitch import patch_add_multi

    init_finn(tmp_path)
    text = (finn_rtllib_dir() / "mvu" / "add_multi.sv").read_text()
    patched = patch_add_multi(text)
    func = patched.index("function leaf_load_t init_leaf_loads")
    assert func < patched.index("begin : genTree")
    assert patched.count("init_leaf_loads") == text.count("init_leaf_loads")
    assert patch_add_multi(patched) == patched


def test_unsupported_layer_error_names_node_and_type():
    from onnx import helper

    from flows.hdl_adapters import node_hdl
    from flows.hdl_nodes import UnsupportedLayerError

    node = helper.make_node("MVAU_hls", ["x", "w"], ["y"], name="MVAU_hls_0",
                            domain="finn.custom_op.fpgadataflow.hls")
    with pytest.raises(UnsupportedLayerError, match=r"unsupported layer MVAU_hls_0 \(MVAU_hls\)"):
        node_hdl(node, None)


def test_a_layer_only_hls_could_build_is_refused_in_one_line(tmp_path):
    """Bipolar inputs into 2-bit weights: FINN has no RTL matrix-vector unit for it and falls
    back to its HLS variant (Vitis HLS, not here); the build used to end in FINN's traceback
    from executing that node. Now one error names the layer, its types and the fix, and no
    build folder is left."""
    from flows.build import build_run
    from flows.hdl_nodes import UnsupportedLayerError
    from mcel_train.config import load_config
    from mcel_train.train import run_train
    from tests.conftest import CONFIGS

    run = tmp_path / "run"
    run_train(load_config(CONFIGS / "smoke_digits.yaml", ["epochs=1", "model.input_kind=bipolar"]), run,
              show_progress=False)
    with pytest.raises(UnsupportedLayerError, match=r"unsupported layer MVAU_hls_0 \(MVAU: inputs BIPOLAR, "
                       r"weights INT2\): .*--set model.input_kind=uint8"):
        build_run(run)
    assert not (run / "build").exists() and not list(run.glob(".build*"))


def test_build_refuses_existing_folder(tmp_path):
    from flows.build import build_run
    from mcel_train.errors import StageExistsError

    (tmp_path / "build").mkdir()
    with pytest.raises(StageExistsError, match="--force"):
        build_run(tmp_path)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """An untrained 16-input tfc_w2a2 exported to QONNX (about a second)."""
    import torch

    from flows.export import export_qonnx_model
    from mcel_train.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(8,), image_shape=(4, 4))
    model = build_model(spec).eval()
    out = tmp_path_factory.mktemp("export")
    x = np.random.default_rng(0).integers(0, 256, size=(4, 16)).astype(np.float32)
    return model, export_qonnx_model(model, (16,), "uint8", out), x


def test_export_matches_torch(tiny_export):
    from flows.export import check_export

    model, path, x = tiny_export
    check = check_export(model, path, x)
    assert check.n == 4 and check.argmax_equal == 4


def test_step_that_changes_outputs_is_named(tiny_export, tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from flows.finn_steps import FlowOptions, run_steps, step_tidy
    from flows.step_check import StepChangedOutputError

    _, path, x = tiny_export

    def sabotage(model, state):
        name = next(i for i in model.graph.initializer if len(i.dims) == 2).name
        model.set_initializer(name, -model.get_initializer(name))
        return model

    with pytest.raises(StepChangedOutputError, match="step 'sabotage' changed the outputs"):
        run_steps(ModelWrapper(str(path)), FlowOptions(input_kind="uint8", check_inputs=x),
                  tmp_path, steps=[("tidy", step_tidy), ("sabotage", sabotage)])
    assert (tmp_path / "01_sabotage.onnx").exists()


def test_a_finn_step_failing_on_the_network_is_one_line_naming_it(tiny_export, tmp_path, capsys):
    """FINN's own exception inside a step (an AssertionError of its partitioning, a ValueError of
    its conversion) is a FlowError naming the step: `mcel build` prints one line, exit 2."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flows.finn_steps import FlowError, FlowOptions, run_steps, step_tidy
    from mcel_train.errors import UserError

    _, path, x = tiny_export
    # code raising from a file of FINN's package, as its partitioning does
    finn = {}
    exec(compile("def partition(model, state):\n    raise AssertionError('cycle-free graph violated: partition "
                 "depends on itself\\nmore lines')\n", "/site-packages/finn/transformation/partition.py", "exec"), finn)

    def run(step):
        return run_steps(ModelWrapper(str(path)), FlowOptions(input_kind="uint8", check_inputs=x), tmp_path,
                         steps=[("tidy", step_tidy), ("partition", step)])

    with pytest.raises(FlowError, match=r"FINN's step 'partition' cannot map this network \(AssertionError: "
                       r"cycle-free graph violated: partition depends on itself\)") as err:
        run(finn["partition"])
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)

    # this project's own step code failing is a bug, and the machine running out is not the
    # network's fault: both keep their own exception (and traceback)
    def own_bug(model, state):
        raise AssertionError("a bug here")

    def out_of_memory(model, state):
        raise MemoryError("Unable to allocate 12.0 GiB")

    for step, kind in ((own_bug, AssertionError), (out_of_memory, MemoryError)):
        with pytest.raises(kind):
            run(step)


def test_a_class_change_between_tied_outputs_is_not_a_changed_output(monkeypatch):
    """Tied reference outputs (an untrained network): a rounding of 6e-8 moved argmax to the other
    tied class, and the step check refused a correct step. A real change of class still fails."""
    from types import SimpleNamespace

    import flows.step_check as sc

    def graph(out: list[float]) -> SimpleNamespace:  # what compare_step reads of a graph
        return SimpleNamespace(out=np.array([out]), graph=SimpleNamespace(output=[SimpleNamespace(name="y")]))

    monkeypatch.setattr(sc, "execute", lambda g, inputs, full_context: [{"y": g.out[0]}])
    monkeypatch.setattr(sc, "output_of", lambda g, inputs: g.out)
    before = graph([1.0, 1.0, 0.5])
    sc.compare_step("tidy", before, graph([1.0, 1.0 + 6e-8, 0.5]), np.zeros((1, 4)))  # argmax 0 -> 1: tied
    with pytest.raises(sc.StepChangedOutputError, match="step 'tidy' changed the outputs"):
        sc.compare_step("tidy", graph([1.0, 0.9, 0.5]), graph([1.0 - 6e-8, 1.0 - 5e-8, 0.5]), np.zeros((1, 4)))


def test_padding_a_binarized_feature_map_is_refused_in_one_line(tmp_path):
    """A padded conv on 1-bit activations (vgg3 at w1a1): refused naming the layer, as the README
    says, and not qonnx's `Im2Col dtype must allow pad_val` from executing the graph between steps."""
    from flows.build import build_run
    from flows.hdl_nodes import UnsupportedLayerError
    from mcel_train.config import load_config
    from mcel_train.train import run_train
    from tests.conftest import CONFIGS

    run = tmp_path / "run"
    run_train(load_config(CONFIGS / "smoke_digits_vgg3.yaml", ["epochs=1", "model.weight_bits=1",
                                                              "model.act_bits=1"]), run, show_progress=False)
    with pytest.raises(UnsupportedLayerError, match=r"unsupported layer Im2Col_\d+ \(padding of a binarized "
                       r"feature map\)"):
        build_run(run)
    assert not (run / "build").exists() and not list(run.glob(".build*"))


def test_an_export_that_differs_from_torch_is_one_line_and_writes_nothing(smoke_run, tmp_path, monkeypatch, capsys):
    """QONNX's float32 execution can cross a threshold that torch does not on a rare image of a
    large check: that was a traceback; now it is one line saying what differed and why it can,
    exit 1 (not the user's input), and no export stage."""
    import shutil

    from flows import export
    from flows.cli import main

    run = tmp_path / "run"
    shutil.copytree(smoke_run / "train", run / "train")
    real = export.qonnx_execute

    def one_image_off(path, inputs):
        out = real(path, inputs)
        out[-1] += 1.0
        return out

    monkeypatch.setattr(export, "qonnx_execute", one_image_off)
    assert main(["export", str(run), "--images", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the QONNX export differs from torch") and "float32" in err[0]
    assert sorted(p.name for p in run.iterdir()) == ["train"]


def test_the_default_folding_is_the_fastest_target_that_fits_and_says_when_it_cannot_check(monkeypatch):
    """``folding.default_folding`` walks 256, 512, ... cycles per image and keeps the first whose
    FINN estimate fits the part; a part without a resource table is not checked (``fits`` None,
    the fastest target), instead of reported as not fitting."""
    from flows import folding

    dsp = {256: 500.0, 512: 300.0, 1024: 100.0}  # DSPs per target; xczu3eg has 360
    monkeypatch.setattr(folding, "auto_folding", lambda model, target: target)
    monkeypatch.setattr(folding, "resource_estimate",
                        lambda folded, part: {"LUT": 1.0, "BRAM_18K": 1.0, "DSP": dsp.get(folded, 1.0)})
    monkeypatch.setattr(folding, "_exp_cycles", lambda folded: {"MVAU_0": folded})
    folded, record = folding.default_folding(None, "xczu3eg-sbva484-1-e")
    assert folded == 512 and record["fits"] is True and record["expected_cycles_per_image"] == 512
    folded, record = folding.default_folding(None, "xc7z020clg400-1")
    assert folded == 256 and record["fits"] is None and record["part_resources"] is None
    dsp.update({t: 1000.0 for t in folding.DEFAULT_TARGETS})
    folded, record = folding.default_folding(None, "xczu3eg-sbva484-1-e")
    assert folded == folding.DEFAULT_TARGETS[-1] and record["fits"] is False


def test_a_failed_verilator_build_names_its_cause_on_the_first_line(tmp_path):
    """The CLI shows an error's first line; Verilator's failure said only "verilator build failed
    (log .../build.log):", a log inside the build's temporary folder, which the failure removed."""
    from hw_sim.verilate import VerilatorError, build_simulator

    hdl = tmp_path / "hdl"
    hdl.mkdir()
    (hdl / "accel_top.sv").write_text("module accel_top(input logic clk);\n  this is not verilog\nendmodule\n")
    (hdl / "filelist.f").write_text("accel_top.sv\n")
    with pytest.raises(VerilatorError) as err:
        build_simulator(hdl / "filelist.f", "accel_top", tmp_path / "verilator")
    first = str(err.value).splitlines()[0]
    assert first.startswith("verilator build failed: %Error") and "accel_top.sv:2" in first, first
