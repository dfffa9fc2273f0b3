"""Bring your own network: a Brevitas module the user built goes through import, build, RTL
simulation with faults and a software sweep without any zoo training stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from brevitas.nn import QuantLinear, QuantReLU
from torch import nn

from flows.cli import main

pytestmark = pytest.mark.slow


class UsersMLP(nn.Module):
    """Not a zoo model: the user's own layer sizes and quantizers (4-bit weights, 3-bit ReLU),
    taking the raw 8-bit pixels as FINN's networks do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = QuantLinear(64, 24, bias=False, weight_bit_width=4)
        self.bn1 = nn.BatchNorm1d(24)
        self.act1 = QuantReLU(bit_width=3, return_quant_tensor=True)
        self.fc2 = QuantLinear(24, 10, bias=False, weight_bit_width=4)

    def forward(self, x):
        return self.fc2(self.act1(self.bn1(self.fc1(x))))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    from flows.import_model import import_brevitas
    from mcel_train.data import encode_inputs, load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits")
    x = encode_inputs(ds.train.images, "uint8").flatten(1)
    y = torch.as_tensor(ds.train.labels)
    model = UsersMLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = tmp_path_factory.mktemp("byo") / "users_mlp"
    record = import_brevitas(model.eval(), torch.zeros(1, 64), "digits", run, "uint8")
    assert record["check"]["accuracy"] > 0.5  # the import executed the graph on real images
    return run


def test_import_build_simulate_and_sweep(imported, capsys):
    rec = json.loads((imported / "export" / "export.json").read_text())
    assert rec["source"]["kind"] == "import" and len(rec["source"]["sha256"]) == 64
    assert not (imported / "train").exists()
    assert main(["build", str(imported), "--target-cycles", "64", "--verify-images", "40"]) == 0
    build = json.loads((imported / "build" / "build.json").read_text())
    assert build["source"]["kind"] == "import"
    assert build["verification"]["bit_exact"] and build["verification"]["argmax_equal_torch"] == 40
    assert main(["sim", str(imported), "--ber", "0,0.02", "--maps", "2", "--images", "40"]) == 0
    sim = json.loads((imported / "sim" / "hw_ber.json").read_text())
    assert all(m["identical_to_software"] for m in sim["maps"])
    assert main(["sweep", str(imported), "--ber", "0,0.05", "--maps", "4", "--quiet"]) == 0
    sweep = json.loads((imported / "sweep" / "sw_ber.json").read_text())
    assert sweep["memory_source"] == "build" and sweep["source"]["kind"] == "import"
    assert sweep["results"][1]["mean"] < sweep["results"][0]["mean"]
    # the sweep's clean network is the build's: its accuracy on the first images is the hardware's
    hw_clean = next(m for m in sim["maps"] if m["rate"] == 0)
    labels = np.asarray(sim["maps"][0]["predicted_classes"])
    assert len(labels) == 40 and hw_clean["identical_to_software"]


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
    assert "ONNX" in _one_line_error(["import", str(tmp_path / "junk.onnx"), "--dataset", "digits",
                                      "--input-kind", "uint8", "--out", str(out)], capsys)
    assert not out.exists()
    # an existing import is not replaced without --force
    again = tmp_path / "again"
    shutil.copytree(imported / "export", again / "export")
    assert "--force" in _one_line_error(["import", str(model), "--dataset", "digits", "--input-kind", "uint8",
                                         "--out", str(again)], capsys)
