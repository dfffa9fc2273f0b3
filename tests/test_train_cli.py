"""`mcel train`: determinism, outputs, and clear errors that leave no run folder behind."""

from __future__ import annotations

import json

import pytest
import torch

from flows.cli import main
from mcel_train.data import load_dataset
from mcel_train.train import evaluate, load_trained
from tests.conftest import CONFIGS

SMOKE = str(CONFIGS / "smoke_digits.yaml")


def test_outputs_and_reload(smoke_run):
    stage = smoke_run / "train"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert {"epochs", "test_accuracy", "mean_logit_margin", "median_step_time_s"} <= set(metrics)
    assert len(metrics["epochs"]) == 3
    assert {"loss", "train_accuracy", "val_accuracy"} <= set(metrics["epochs"][0])
    assert metrics["test_accuracy"] > 0.5  # far above the 10 % of chance on digits
    # the seed decides the weights together with the thread count, so the record names it (the
    # count at training time: another test of this worker may have changed it since)
    assert isinstance(metrics["torch_threads"], int) and metrics["torch_threads"] >= 1
    state = torch.load(stage / "model.pt", weights_only=True)
    model, cfg = load_trained(smoke_run)
    assert cfg.model.arch == "tfc"
    # the reloaded model holds the saved tensors, not just tensors of the same names
    reloaded = model.state_dict()
    assert set(state) == set(reloaded)
    for key, tensor in state.items():
        assert torch.equal(reloaded[key], tensor), key
    # ... and computes what the trained model computed: the test metrics recorded at the end of
    # training (from the model still in memory) come out again: the same accuracy, image for
    # image, and the same mean logit margin (to float rounding)
    data = load_dataset(cfg["data"]["dataset"], cfg["data"]["data_dir"], cfg["data"]["val_fraction"],
                        cfg["seed"])
    again = evaluate(model, data.test.images, data.test.labels)
    assert again["accuracy"] == metrics["test_accuracy"]
    assert again["mean_logit_margin"] == pytest.approx(metrics["mean_logit_margin"], rel=1e-6, abs=0)


def test_same_seed_same_metrics(tmp_path):
    def run(out):
        assert main(["train", SMOKE, "--out", str(out), "--quiet", "--set", "epochs=1"]) == 0
        m = json.loads((out / "train" / "metrics.json").read_text())
        return m["epochs"], m["test_accuracy"], m["mean_logit_margin"], m["torch_threads"]

    threads = torch.get_num_threads()
    try:  # one thread, as a campaign trains: the record says so
        torch.set_num_threads(1)
        first = run(tmp_path / "a")
    finally:
        torch.set_num_threads(threads)
    assert first[3] == 1
    torch.set_num_threads(1)
    try:
        assert run(tmp_path / "b") == first
    finally:
        torch.set_num_threads(threads)


def test_mcel_override_is_recorded(tmp_path):
    out = tmp_path / "m"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--set", "epochs=1",
                 "--set", "loss.name=mcel", "--set", "loss.margin=8"]) == 0
    m = json.loads((out / "train" / "metrics.json").read_text())
    assert m["relative_separation"] == pytest.approx(0.04)


@pytest.mark.parametrize("override, message", [
    ("model.name=resnet_w2a2", "unknown model"),
    ("loss.margin=-1", "loss.margin"),
    ("model.weight_bits=0", "weight_bits"),
    ("data.dataset=cifar10", "data.dataset"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("bogus=1", "unknown config key"),
])
def test_bad_config_is_one_clear_error(tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_is_clear(tmp_path, capsys, monkeypatch):
    from mcel_train import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("TORCHVISION_ROOT", str(tmp_path / "none"))
    out = tmp_path / "nodata"
    (tmp_path / "empty").mkdir()
    code = main(["train", str(CONFIGS / "tfc_w1a1_fmnist.yaml"), "--out", str(out), "--quiet",
                 "--data-dir", str(tmp_path / "empty")])
    assert code == 2
    assert "Fashion-MNIST not found" in capsys.readouterr().err
    assert not out.exists()
    code = main(["train", str(CONFIGS / "tfc_w1a1_fmnist.yaml"), "--out", str(out), "--quiet",
                 "--data-dir", str(tmp_path / "missing")])
    assert code == 2 and "not a folder" in capsys.readouterr().err
    assert not out.exists()


def test_existing_run_is_not_overwritten(smoke_run, capsys):
    before = (smoke_run / "train" / "model.pt").read_bytes()
    assert main(["train", SMOKE, "--out", str(smoke_run), "--quiet"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (smoke_run / "train" / "model.pt").read_bytes() == before


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    """`lr: 1e-3` (no dot) is a number, in a file, an override and a campaign: YAML 1.1, as
    PyYAML reads it, made it the text '1e-3', refused as "not a valid number"."""
    from flows.campaign.spec import parse_campaign
    from mcel_train.config import load_config
    from mcel_train.yaml_file import read_mapping
    from tests.test_campaign import TINY

    cfg = tmp_path / "c.yaml"
    cfg.write_text((CONFIGS / "smoke_digits.yaml").read_text().replace("lr: 0.01", "lr: 1e-2"))
    assert load_config(cfg).raw["optimizer"]["lr"] == 0.01
    assert load_config(CONFIGS / "smoke_digits.yaml", ["optimizer.lr=2E-3"]).raw["optimizer"]["lr"] == 0.002
    camp = tmp_path / "camp.yaml"
    camp.write_text("software: {ber: [0, 1e-4, 5e-3], maps: 2}\n")
    from mcel_train.errors import UserInputError

    spec = parse_campaign({**TINY, "software": read_mapping(camp, UserInputError, "campaign", "")["software"]})
    assert spec.software["ber"] == [0.0, 1e-4, 5e-3]


def test_fault_aware_training_takes_the_training_seed_for_its_maps():
    """Left out, the fault maps' seed is the training's seed (a default of 0 gave every training
    seed of a campaign the same fault sequence); seed 0 resolves as before, and a given seed wins."""
    from mcel_train.config import load_config

    def ft(*over: str) -> dict:
        return load_config(CONFIGS / "smoke_digits.yaml", ["fault_training.rate=0.01", *over]).raw["fault_training"]

    assert ft()["seed"] == 0 and ft("seed=3")["seed"] == 3 and ft("seed=3", "fault_training.seed=5")["seed"] == 5
