"""``mcel experiment``: option checking, resumable bookkeeping and the report from run records.

Why: the experiment's report is what gets quoted, so it must be built only from the runs' own
records (settings included) and list missing runs instead of silently dropping them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcel_train.errors import UserInputError
from mcel_train.experiment import (
    VARIANTS,
    ExperimentSettings,
    collect,
    gain_at,
    overrides,
    write_report,
)
from tests.plot_checks import curves, png_shape


def _fake_run(rd: Path, acc: float, rates: tuple[float, ...], maps: int) -> None:
    (rd / "train").mkdir(parents=True)
    (rd / "sweep").mkdir()
    (rd / "train" / "metrics.json").write_text(json.dumps({
        "epochs": [{}, {}], "train_images": 1000, "test_images": 500, "test_accuracy": acc,
        "mean_logit_margin": 3.0, "median_step_time_s": 0.05}))
    results = [{"rate": r, "mean": acc - 10 * r, "std": 0.01, "ci95": [acc - 10 * r - 0.01,
                acc - 10 * r + 0.01], "faults_per_map_mean": 1.0} for r in rates]
    (rd / "sweep" / "sw_ber.json").write_text(json.dumps(
        {"clean_accuracy": acc, "maps": maps, "seed": 0, "results": results}))


def test_report_from_records(tmp_path, figures):
    rates = (0.0, 1e-3, 1e-2)
    s = ExperimentSettings(models=("sfc_w2a2",), variants=("ce", "mcel32", "hinge"),
                           out=tmp_path / "exp", epochs=2, maps=3, rates=rates)
    s.check()
    _fake_run(s.out / "sfc_w2a2" / "ce", 0.80, rates, 3)
    _fake_run(s.out / "sfc_w2a2" / "mcel32", 0.85, rates, 3)
    record = collect(s)
    assert record["missing"] == ["sfc_w2a2/hinge"]
    assert gain_at(record, "sfc_w2a2", "mcel32", 1e-2) == pytest.approx(5.0)
    md = write_report(record, tmp_path / "docs").read_text()
    assert "Epochs: 2" in md and "Training images: 1000" in md
    assert "| MCEL m=32 | 85.0 |" in md and "sfc_w2a2/hinge" in md
    assert "+5.0 at p=0.01" in md
    # the plot has one curve per finished variant (the missing one has none), through the
    # sweep means of that run's record
    assert len(figures) == 1 and "sfc_w2a2" in figures[0].axes[0].get_title()
    assert curves(figures[0]) == {
        "CE": (list(rates), [0.80 - 10 * r for r in rates]),
        "MCEL m=32": (list(rates), [0.85 - 10 * r for r in rates]),
    }
    png_shape(tmp_path / "docs" / "results_sfc_w2a2.png", figures[0])
    assert json.loads((tmp_path / "docs" / "results.json").read_text())["settings"]["maps"] == 3


def test_overrides_and_checks(tmp_path):
    s = ExperimentSettings(models=("sfc_w1a1",), variants=tuple(VARIANTS), out=tmp_path,
                           epochs=1, limit_train=256)
    ov = overrides(s, "sfc_w1a1", "mcel32_int")
    assert "loss.logits=integer" in ov and "epochs=1" in ov and "data.limit_train=256" in ov
    const = overrides(s, "sfc_w2a2", "mcel32_const")
    assert "model.weight_scaling=const" in const
    from mcel_train.models import ModelSpec

    # The zoo's default constant scale is the first layer's init abs-max, (1/28) / 1 at 2 bits:
    # large enough that the initial weights do not all round to 0.
    spec = ModelSpec(arch="sfc", weight_bits=2, act_bits=2, weight_scaling="const").resolved()
    assert spec.const_weight_scale == pytest.approx(1 / 28)
    with pytest.raises(UserInputError):
        ExperimentSettings(models=("nope",)).check()
    with pytest.raises(UserInputError):
        ExperimentSettings(variants=("ce", "bogus")).check()


def test_cli_registers_experiment():
    from flows.cli import build_parser

    args = build_parser().parse_args(["experiment", "--models", "sfc_w2a2", "--epochs", "1"])
    assert args.command == "experiment" and args.epochs == (1, {}) and args.maps == 50
    args = build_parser().parse_args(["experiment", "--epochs", "10,vgg3_w4a4=3",
                                      "--test-images", "vgg3_w4a4=2000"])
    assert args.epochs == (10, {"vgg3_w4a4": 3}) and args.test_images == (None, {"vgg3_w4a4": 2000})


def test_per_model_settings_apply_to_their_model_only():
    s = ExperimentSettings(models=("sfc_w2a2", "vgg3_w4a4"), epochs=10, epochs_by_model={"vgg3_w4a4": 3},
                           test_images_by_model={"vgg3_w4a4": 2000})
    s.check()
    assert "epochs=3" in overrides(s, "vgg3_w4a4", "ce") and "epochs=10" in overrides(s, "sfc_w2a2", "ce")
    assert s.test_images_for("vgg3_w4a4") == 2000 and s.test_images_for("sfc_w2a2") == 0
    with pytest.raises(UserInputError, match="not in --models"):
        ExperimentSettings(models=("sfc_w2a2",), epochs_by_model={"vgg3_w4a4": 3}).check()
    with pytest.raises(UserInputError, match="epochs"):
        ExperimentSettings(models=("sfc_w2a2",), epochs_by_model={"sfc_w2a2": 0}).check()
