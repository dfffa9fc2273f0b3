"""Bring your own network: a Brevitas module the user built goes through import, build, RTL
simulation with faults and a software sweep without any zoo training stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from torch import nn

from flows.cli import main

pytestmark = pytest.mark.slow


class UsersMLP(nn.Module):
    """Not a zoo model: its own widths and bit widths (3-bit weights, 2-bit ReLU), and a 4-bit
    input quantizer with a learned scale on the raw 8-bit pixels, which FINN lowers to a
    thresholding unit before the first matrix unit."""

    def __init__(self) -> None:
        super().__init__()
        self.inq = QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.fc1 = QuantLinear(64, 24, bias=False, weight_bit_width=3)
        self.bn1 = nn.BatchNorm1d(24)
        self.act1 = QuantReLU(bit_width=2, return_quant_tensor=True)
        self.fc2 = QuantLinear(24, 10, bias=False, weight_bit_width=3)

    def forward(self, x):
        return self.fc2(self.act1(self.bn1(self.fc1(self.inq(x)))))


class UsersCNN(nn.Module):
    """A small CNN of the user's own: conv, BatchNorm, 3-bit ReLU, max-pool, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = QuantConv2d(1, 6, 3, padding=1, bias=False, weight_bit_width=4)
        self.bn = nn.BatchNorm2d(6)
        self.act = QuantReLU(bit_width=3, return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = QuantLinear(6 * 4 * 4, 10, bias=False, weight_bit_width=4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.bn(self.conv(x)))), 1))


def _train(model: nn.Module, shape: tuple[int, ...], pixel_scale: float = 1.0, encoding: str = "uint8") -> nn.Module:
    """Train on the pixels as the flow feeds them (0..255), or multiplied by ``pixel_scale``, or
    encoded as ``encoding``."""
    from mcel_train.data import encode_inputs, load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits")
    x = encode_inputs(ds.train.images, encoding).reshape(-1, *shape) * pixel_scale
    y = torch.as_tensor(ds.train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def users_mlp() -> nn.Module:
    return _train(UsersMLP(), (64,))


@pytest.fixture(scope="module")
def imported(users_mlp, tmp_path_factory) -> Path:
    """The MLP brought in through the Python entry point."""
    from flows.import_model import import_brevitas

    run = tmp_path_factory.mktemp("byo") / "users_mlp"
    record = import_brevitas(users_mlp, torch.zeros(1, 64), "digits", run, "uint8")
    assert record["check"]["accuracy"] > 0.5  # the import executed the graph on real images
    assert "accuracy_on_0_1_inputs" not in record["check"]  # trained on 0..255: no note
    return run


def _build_and_simulate(run: Path) -> np.ndarray:
    """Build, simulate at 3 fault rates (and 0) and compare; every output must be identical."""
    assert main(["build", str(run), "--target-cycles", "64", "--verify-images", "40"]) == 0
    build = json.loads((run / "build" / "build.json").read_text())
    assert build["source"]["kind"] == "import"
    assert build["verification"]["bit_exact"] and build["verification"]["argmax_equal_torch"] == 40
    assert build["verification"]["argmax_reference"] == "qonnx"  # an imported run has no torch model
    assert main(["sim", str(run), "--ber", "0,0.005,0.01,0.02", "--maps", "2", "--images", "30"]) == 0
    sim = json.loads((run / "sim" / "hw_ber.json").read_text())
    assert len(sim["maps"]) == 7 and all(m["identical_to_software"] for m in sim["maps"])
    assert main(["compare", str(run)]) == 0
    hw = np.load(run / "sim" / "hw_outputs.npz")["outputs"]
    assert any(not np.array_equal(hw[i], hw[0]) for i in range(1, len(hw)))  # the faults mattered
    return hw


def test_entry_point_and_mcel_import_reach_identical_hardware(users_mlp, imported, tmp_path):
    """The same module through the Python entry point and through a QONNX file the test exports
    and `mcel import`s: both built, simulated with faults at 3 rates, every output identical to
    software, and the two accelerators' outputs identical to each other."""
    from flows.export import export_qonnx_model

    onnx_file = export_qonnx_model(users_mlp, (64,), "uint8", tmp_path / "exported")
    cli_run = tmp_path / "via_cli"
    assert main(["import", str(onnx_file), "--dataset", "digits", "--input-kind", "uint8",
                 "--out", str(cli_run)]) == 0
    rec = json.loads((imported / "export" / "export.json").read_text())
    assert rec["source"]["kind"] == "import" and len(rec["source"]["sha256"]) == 64
    assert not (imported / "train").exists()
    hw_entry = _build_and_simulate(imported)
    hw_cli = _build_and_simulate(cli_run)
    np.testing.assert_array_equal(hw_entry, hw_cli)


def test_a_network_trained_on_0_1_inputs_gets_a_note(tmp_path, capsys):
    """Trained on pixels divided by 255, the MLP imports (its 4-bit input quantizer takes any
    float) and classifies the 0..255 pixels the hardware streams worse; the import says so."""
    from flows.export import export_qonnx_model

    path = export_qonnx_model(_train(UsersMLP(), (64,), pixel_scale=1 / 255), (64,), "uint8", tmp_path)
    assert main(["import", str(path), "--dataset", "digits", "--input-kind", "uint8",
                 "--out", str(tmp_path / "run")]) == 0
    check = json.loads((tmp_path / "run" / "export" / "export.json").read_text())["check"]
    assert check["accuracy_on_0_1_inputs"] > check["accuracy"] + 0.05
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "trained on [0, 1] inputs" in notes[0]


def test_users_small_cnn(tmp_path):
    from flows.import_model import import_brevitas

    run = tmp_path / "users_cnn"
    record = import_brevitas(_train(UsersCNN(), (1, 8, 8)), torch.zeros(1, 1, 8, 8), "digits", run, "uint8")
    assert record["check"]["accuracy"] > 0.3
    _build_and_simulate(run)


def test_sweep_from_the_build(imported):
    if not (imported / "build").exists():
        assert main(["build", str(imported), "--target-cycles", "64", "--verify-images", "10"]) == 0
    assert main(["sweep", str(imported), "--ber", "0,0.05", "--maps", "4", "--quiet"]) == 0
    sweep = json.loads((imported / "sweep" / "sw_ber.json").read_text())
    assert sweep["memory_source"] == "build" and sweep["source"]["kind"] == "import"
    assert sweep["results"][1]["mean"] < sweep["results"][0]["mean"]


def test_faults_in_the_input_quantizer(imported):
    """FINN lowers the input quantizer to a thresholding unit on the raw pixels, with one threshold
    set shared by all 64 channels, compared unsigned (the pixels are unsigned). Threshold faults
    there and in the hidden thresholding change the outputs, identically in RTL and software."""
    from mcel_train.faults.faultmap import FaultMap
    from mcel_train.manifest import load_manifest

    if not (imported / "build").exists():
        assert main(["build", str(imported), "--target-cycles", "64", "--verify-images", "10"]) == 0
    manifest = load_manifest(imported / "build")
    inq = {n: m for n, m in manifest.thresholds.items() if m.layer == "Thresholding_rtl_0"}
    assert inq and all(not m.signed and m.depth == 2 ** m.layout["stage"] for m in inq.values())
    assert main(["sim", str(imported), "--ber", "0,0.01,0.05", "--maps", "3", "--images", "30",
                 "--memories", "thresholds", "--force"]) == 0
    sim = json.loads((imported / "sim" / "hw_ber.json").read_text())
    assert all(m["identical_to_software"] for m in sim["maps"])
    hw = np.load(imported / "sim" / "hw_outputs.npz")["outputs"]

    def memories_hit(entry: dict) -> set[str]:
        fmap = FaultMap.load(imported / "sim" / entry["file"])
        return {fmap.memory_names[i] for i in fmap.memory}

    hit_input = [k for k, m in enumerate(sim["maps"]) if m["faults"] and memories_hit(m) & set(inq)]
    assert any(not np.array_equal(hw[k], hw[0]) for k in hit_input)  # input faults reached the output
    # both evaluator paths (a faulty input quantizer sends its map to the dense one)
    from hw_sim.predict import fast_predict
    from mcel_train.runio import load_source

    x, _ = load_source(imported).test_inputs(30)
    maps = [FaultMap.load(imported / "sim" / m["file"]) if m["faults"] else None for m in sim["maps"]]
    for method in ("dense", "difference"):
        np.testing.assert_array_equal(fast_predict(imported / "build", x, maps, method), hw)


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_imports_are_one_line_and_write_nothing(imported, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    model = imported / "export" / "model.qonnx.onnx"
    out = tmp_path / "new"
    assert "--input-kind" in _one_line_error(["import", str(model), "--dataset", "digits", "--out", str(out)], capsys)
    assert "--dataset" in _one_line_error(["import", str(model), "--dataset", "cifar", "--input-kind", "uint8",
                                           "--out", str(out)], capsys)
    assert "do not fit" in _one_line_error(["import", str(model), "--dataset", "fashion_mnist", "--input-kind",
                                            "uint8", "--out", str(out)], capsys)
    foreign = tmp_path / "sigmoid.onnx"
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="squash")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    onnx.save(helper.make_model(graph), foreign)
    err = _one_line_error(["import", str(foreign), "--dataset", "digits", "--input-kind", "uint8",
                           "--out", str(out)], capsys)
    assert "squash (Sigmoid)" in err and "supported:" in err
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    err = _one_line_error(["import", str(tmp_path / "junk.onnx"), "--dataset", "digits", "--input-kind", "uint8",
                           "--out", str(out)], capsys)
    assert "not a readable ONNX graph" in err and "QONNX file" in err and "export or build" not in err
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "is empty, not a readable ONNX graph" in _one_line_error(
        ["import", str(tmp_path / "empty.onnx"), "--dataset", "digits", "--input-kind", "uint8", "--out", str(out)],
        capsys)
    assert "is a folder: give mcel import the QONNX file" in _one_line_error(
        ["import", str(tmp_path), "--dataset", "digits", "--input-kind", "uint8", "--out", str(out)], capsys)
    dynamic = onnx.load(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(dynamic, tmp_path / "dynamic.onnx")
    assert "dynamic dimensions (N)" in _one_line_error(
        ["import", str(tmp_path / "dynamic.onnx"), "--dataset", "digits", "--input-kind", "uint8", "--out", str(out)],
        capsys)
    assert not out.exists()
    # an existing import is not replaced without --force
    again = tmp_path / "again"
    shutil.copytree(imported / "export", again / "export")
    assert "--force" in _one_line_error(["import", str(model), "--dataset", "digits", "--input-kind", "uint8",
                                         "--out", str(again)], capsys)
    # with --force, the stages made from the replaced network go (a sweep read the old build),
    # and it says so; the same file imported again keeps them
    for stale in ("build", "sweep", "sim"):
        (again / stale).mkdir()
        (again / stale / "old.json").write_text("{}")
    assert main(["import", str(model), "--dataset", "digits", "--input-kind", "uint8", "--out", str(again),
                 "--force"]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["build", "export", "sim", "sweep"]
    other = onnx.load(model)
    other.graph.doc_string = "another network's file"  # other bytes, another SHA-256
    onnx.save(other, tmp_path / "other.onnx")
    capsys.readouterr()
    assert main(["import", str(tmp_path / "other.onnx"), "--dataset", "digits", "--input-kind", "uint8", "--out",
                 str(again), "--force"]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["export"]
    assert "note: removed build, sweep, sim" in capsys.readouterr().err


def test_a_network_without_one_output_per_class_is_refused(tmp_path):
    """Seven outputs for ten digits imported, scored 0.13 and exited 0."""
    from flows.import_model import import_brevitas
    from mcel_train.errors import UserInputError

    seven = nn.Sequential(QuantIdentity(bit_width=8, return_quant_tensor=True),
                          QuantLinear(64, 7, bias=False, weight_bit_width=4)).eval()
    with pytest.raises(UserInputError, match=r"gives \[7\] outputs per image, but digits has 10 classes"):
        import_brevitas(seven, torch.zeros(1, 64), "digits", tmp_path / "seven", "uint8")
    assert not (tmp_path / "seven" / "export").exists()


class _Flat(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


class _Skip(nn.Module):
    """A skip connection: the quantized input added to a layer's activation."""

    def __init__(self) -> None:
        super().__init__()
        self.inq, self.fc1 = QuantIdentity(bit_width=8), QuantLinear(64, 64, bias=False, weight_bit_width=4)
        self.act, self.fc2 = QuantReLU(bit_width=2), QuantLinear(64, 10, bias=False, weight_bit_width=4)

    def forward(self, x):
        q = self.inq(x)
        return self.fc2(self.act(self.fc1(q)) + q)


def _mlp_tail(*tail: nn.Module) -> nn.Module:
    return nn.Sequential(QuantIdentity(bit_width=8, return_quant_tensor=True), *tail)


def _cnn(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers, _Flat(), QuantLinear(4 * 4 * 4, 10, bias=False, weight_bit_width=4))


@pytest.mark.parametrize("make, shape, words", [
    # a bias on the last layer (Brevitas' default) imported, then the build failed naming no fix
    (lambda: _mlp_tail(QuantLinear(64, 10, bias=True, weight_bit_width=4)), (1, 64), "the last layer has a bias"),
    # a quantizer on the logits imported and built, then sweep and sim failed with a traceback
    (lambda: _mlp_tail(QuantLinear(64, 10, bias=False, weight_bit_width=4), QuantIdentity(bit_width=3)), (1, 64),
     "quantizes the network's outputs"),
    (lambda: _mlp_tail(QuantLinear(64, 10, bias=False, weight_bit_width=4), nn.BatchNorm1d(10)), (1, 64),
     "normalizes the logits"),
    # the two CNN shapes FINN's partition here cannot map ("cycle-free graph violated" at build)
    (lambda: _cnn(QuantIdentity(bit_width=8, return_quant_tensor=True),
                  QuantConv2d(1, 4, 3, padding=1, bias=False, weight_bit_width=4), nn.BatchNorm2d(4),
                  QuantReLU(bit_width=3), nn.MaxPool2d(2)), (1, 1, 8, 8),
     "quantizes the input of a network with convolutions"),
    (lambda: _cnn(QuantConv2d(1, 4, 3, padding=1, bias=False, weight_bit_width=4), nn.BatchNorm2d(4),
                  nn.MaxPool2d(2), QuantReLU(bit_width=3)), (1, 1, 8, 8), "not a quantized activation"),
    # each imported, then mcel build failed, several naming another cause (a per-channel output
    # scale; --input-kind uint8, which it was; no fix at all)
    (lambda: _mlp_tail(QuantLinear(64, 16, bias=False, weight_bit_width=4), nn.BatchNorm1d(16), nn.ReLU(),
                       QuantLinear(16, 10, bias=False, weight_bit_width=4)), (1, 64),
     r"\(Relu\), not a quantized activation"),
    (lambda: nn.Sequential(QuantConv2d(1, 4, 3, padding=1, bias=False, weight_bit_width=4), _Flat(),
                           QuantLinear(256, 10, bias=False, weight_bit_width=4)), (1, 1, 8, 8),
     r"\(Conv\), not a quantized activation"),
    (lambda: _mlp_tail(QuantLinear(64, 16, bias=False, weight_bit_width=4), nn.BatchNorm1d(16),
                       QuantReLU(bit_width=2), nn.Linear(16, 10, bias=False)), (1, 64), "has float weights"),
    (lambda: _Skip(), (1, 64), "adds two computed tensors \\(a skip connection\\)"),
])
def test_networks_the_flow_cannot_build_are_refused_at_import(tmp_path, make, shape, words):
    from flows.import_model import import_brevitas
    from mcel_train.errors import UserInputError

    torch.manual_seed(0)
    with pytest.raises(UserInputError, match=words):
        import_brevitas(make().eval(), torch.zeros(*shape), "digits", tmp_path / "run", "uint8")
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.parametrize("make, words", [
    # FINN's thresholds on +-1 pixels need a scale of 1: "MultiThreshold out_scale must be 1" at build
    (lambda: nn.Sequential(QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True),
                           QuantLinear(64, 10, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)),
     "quantizes the \\+-1 pixels"),
    # "MVAU: inputs BIPOLAR, weights INT4" at build
    (lambda: nn.Sequential(QuantLinear(64, 10, bias=False, weight_bit_width=4)), "with multi-bit weights"),
])
def test_bipolar_networks_the_flow_cannot_build_are_refused_at_import(tmp_path, make, words):
    from flows.import_model import import_brevitas
    from mcel_train.errors import UserInputError

    with pytest.raises(UserInputError, match=words):
        import_brevitas(make().eval(), -torch.ones(1, 64), "digits", tmp_path / "run", "bipolar")
    assert not (tmp_path / "run" / "export").exists()


def test_the_input_encoding_note_names_the_encoding_that_fits(tmp_path, capsys):
    """A network trained on +-1 pixels and imported as 0..255 is told to import with --input-kind
    bipolar (it was told to train on 0..255); one never trained gets no note (a 6 % against 15 %
    comparison, near chance, said it was trained on [0, 1])."""
    from flows.export import export_qonnx_model

    def imported(model: nn.Module, name: str) -> tuple[dict, list[str]]:
        path = export_qonnx_model(model, (64,), "uint8", tmp_path / name)
        assert main(["import", str(path), "--dataset", "digits", "--input-kind", "uint8",
                     "--out", str(tmp_path / f"run_{name}")]) == 0
        check = json.loads((tmp_path / f"run_{name}" / "export" / "export.json").read_text())["check"]
        return check, [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")]

    bipolar = _train(nn.Sequential(QuantLinear(64, 24, bias=False, weight_bit_width=3), nn.BatchNorm1d(24),
                                   QuantReLU(bit_width=2), QuantLinear(24, 10, bias=False, weight_bit_width=3)),
                     (64,), encoding="bipolar")
    check, notes = imported(bipolar, "bipolar")
    assert len(notes) == 1 and notes[0].endswith("import it with --input-kind bipolar"), notes
    assert check["accuracy_on_bipolar_inputs"] > check["accuracy"]
    torch.manual_seed(7)  # this untrained network scores 5 % as 0..255 and 11 % as +-1 on 359 images
    check, notes = imported(nn.Sequential(QuantLinear(64, 32, bias=True, weight_bit_width=4),
                                          QuantReLU(bit_width=3, return_quant_tensor=True),
                                          QuantLinear(32, 10, bias=False, weight_bit_width=4)).eval(), "untrained")
    assert notes == [] and not any(k.startswith("accuracy_on_") for k in check)


def test_campaign_on_an_imported_network(imported, tmp_path):
    """A campaign grid can name an imported run: it is copied, built, swept from its build and
    simulated with faults, without any training task."""
    import yaml

    from flows.campaign.report import campaign_table
    from flows.campaign.runner import run_campaign

    spec = {"name": "byo", "grid": {"imported": [{"path": str(imported), "label": "users_mlp"}]},
            "software": {"ber": [0, 0.05], "maps": 3},
            "hardware": {"ber": [0, 0.02], "maps": 2, "images": 20, "target_cycles": 64}}
    path = tmp_path / "byo.yaml"
    path.write_text(yaml.safe_dump(spec))
    # software only: the sweep reads the build, so it waits with the build and simulation, and is named so
    _, summary = run_campaign(path, tmp_path / "c0", workers=1, show_progress=False, software_only=True)
    assert summary["done"] == summary["total"] == 1  # the import
    assert sorted(t["stage"] for t in summary["deferred"]) == ["build", "hwsim", "sweep"]
    folder, summary = run_campaign(path, tmp_path / "c", workers=1, show_progress=False)
    assert summary["done"] == summary["total"] == 4 and summary["failed"] == 0  # import, build, sweep, hwsim
    table = campaign_table(folder)
    sw = [r for r in table if r["source"] == "software"]
    hw = [r for r in table if r["source"] == "hardware"]
    assert {r["model"] for r in table} == {"users_mlp"} and len(sw) == 2 and len(hw) == 2
    assert all(r["identical_maps"] == r["maps"] for r in hw)
    assert sw[1]["mean"] < sw[0]["mean"] == sw[0]["clean_accuracy"]


def test_a_per_channel_output_scale_is_refused_at_build(tmp_path, capsys):
    """A last layer with per-output-channel weight scaling leaves that scale in software after the
    accelerator: its integer outputs rank the classes otherwise (a sweep scored 0.9666 where the
    network scores 0.9526). `mcel build` refuses it in one line and leaves no build."""
    from flows.import_model import import_brevitas

    torch.manual_seed(0)
    net = nn.Sequential(QuantIdentity(bit_width=8, return_quant_tensor=True),
                        QuantLinear(64, 16, bias=False, weight_bit_width=4),
                        QuantReLU(bit_width=2, return_quant_tensor=True),
                        QuantLinear(16, 10, bias=False, weight_bit_width=4,
                                    weight_scaling_per_output_channel=True)).eval()
    run = tmp_path / "per_channel"
    import_brevitas(net, torch.zeros(1, 64), "digits", run, "uint8")
    err = _one_line_error(["build", str(run), "--verify-images", "0"], capsys)
    assert "the last layer's output scale differs per output channel" in err and "per-tensor" in err
    assert not (run / "build").exists()


def test_a_conv_geometry_the_build_refuses_is_refused_at_import(tmp_path):
    """A stride-2 convolution imported (exit 0) and was refused only by mcel build: the import
    now runs the build's geometry check and writes nothing."""
    from flows.hdl_nodes import UnsupportedLayerError
    from flows.import_model import import_brevitas

    net = nn.Sequential(QuantIdentity(bit_width=8, return_quant_tensor=True),
                        QuantConv2d(1, 4, 3, stride=2, bias=False, weight_bit_width=4),
                        QuantReLU(bit_width=2, return_quant_tensor=True), nn.Flatten(),
                        QuantLinear(4 * 3 * 3, 10, bias=False, weight_bit_width=4)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"stride \[2, 2\] \(stride 1 only\)"):
        import_brevitas(net, torch.zeros(1, 1, 8, 8), "digits", tmp_path / "strided", "uint8")
    assert not (tmp_path / "strided" / "export").exists()
