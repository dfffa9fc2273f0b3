"""``mcel experiment``: a campaign preset; option checking, resuming, and the report from the
campaign's records.

Why: the experiment's report is what gets quoted, so it must be built only from the runs' own
records (settings included), list missing runs instead of silently dropping them, and an
interrupted experiment must resume like any campaign instead of retraining.
"""

from __future__ import annotations

import json
import shutil

import pytest

from flows.cli import main
from flows.experiment import VARIANTS, ExperimentSettings, campaign_spec, collect, gain_at, write_report
from mcel_train.errors import UserInputError
from tests.plot_checks import curves, png_shape


def test_a_tiny_experiment_runs_as_a_campaign_and_resumes(tmp_path, figures):
    """Two variants of a real (tiny) training, swept, reported; then a third variant added: the
    first two are not retrained, the report lists the one still missing after a failed start."""
    out, docs = tmp_path / "exp", tmp_path / "docs"
    argv = ["experiment", "--models", "sfc_w1a1", "--variants", "ce,mcel32", "--epochs", "1",
            "--limit-train", "512", "--maps", "2", "--rates", "0,0.02", "--test-images", "300",
            "--jobs", "1", "--out", str(out), "--docs", str(docs), "--quiet"]
    assert main(argv) == 0
    record = json.loads((docs / "results.json").read_text())
    rows = record["models"]["sfc_w1a1"]
    assert set(rows) == {"ce", "mcel32"} and record["missing"] == []
    for row in rows.values():
        sweep = json.loads((out / row["run"] / "sweep" / "sw_ber.json").read_text())
        assert row["sweep"][1]["mean"] == sweep["results"][1]["mean"] and sweep["n_test"] == 300
        assert row["epochs"] == 1 and row["train_images"] == 512 and row["maps"] == 2
    md = (docs / "results.md").read_text()
    assert "Epochs: 1" in md and "Training images: 512" in md and "| MCEL m=32 |" in md
    gain = gain_at(record, "sfc_w1a1", "mcel32", 0.02)
    assert f"{gain:+.1f} at p=0.02" in md
    # the plot: one curve per variant through that run's sweep means
    assert curves(figures[-1]) == {row["label"]: ([0.0, 0.02], [r["mean"] for r in row["sweep"]])
                                   for row in rows.values()}
    png_shape(docs / "results_sfc_w1a1.png", figures[-1])

    trained = {p: p.stat().st_mtime_ns for p in out.glob("tasks/train-*/train/model.pt")}
    assert len(trained) == 2
    argv[4] = "ce,mcel32,hinge"
    assert main(argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in trained.items())  # resumed, not retrained
    assert len(list(out.glob("tasks/train-*/train/model.pt"))) == 3
    again = json.loads((docs / "results.json").read_text())
    assert set(again["models"]["sfc_w1a1"]) == {"ce", "mcel32", "hinge"}
    assert again["models"]["sfc_w1a1"]["ce"] == rows["ce"]  # the same records, read again
    # a report of other models into the same docs: the last report's plots go (they were left,
    # referenced by nothing), no staged file stays
    other_docs = tmp_path / "docs2"
    shutil.copytree(docs, other_docs)
    write_report(again | {"models": {"sfc_w2a2": again["models"]["sfc_w1a1"]}}, other_docs)
    assert sorted(p.name for p in other_docs.iterdir()) == ["results.json", "results.md", "results_sfc_w2a2.png"]
    # a report over a variant never run lists it as missing
    partial = collect(ExperimentSettings(models=("sfc_w1a1",), variants=("ce", "fat"), out=out, epochs=1,
                                         limit_train=512, maps=2, rates=(0.0, 0.02), test_images=300))
    assert partial["missing"] == ["sfc_w1a1/fat"] and set(partial["models"]["sfc_w1a1"]) == {"ce"}
    # --report-only with flags no finished run matches (here the default maps) is refused, and
    # the finished report stays (it was replaced by one of "No finished runs")
    before = (docs / "results.md").read_text()
    other = [a for a in argv if a != "--quiet"]
    other[other.index("--maps") + 1] = "50"
    assert main([*other, "--report-only"]) == 2
    assert (docs / "results.md").read_text() == before


def test_variants_become_campaign_entries(tmp_path):
    s = ExperimentSettings(models=("sfc_w1a1", "sfc_w2a2"), variants=tuple(VARIANTS), out=tmp_path,
                           epochs=1, limit_train=256, epochs_by_model={"sfc_w2a2": 2},
                           test_images_by_model={"sfc_w2a2": 700})
    points = {(p.model_label, p.loss_label): p for p in campaign_spec(s).points}
    assert len(points) == 2 * len(VARIANTS)
    cfg = {k: p.config for k, p in points.items()}
    assert cfg[("sfc_w1a1", "mcel32_int")]["loss"]["logits"] == "integer"
    assert cfg[("sfc_w1a1", "mcel32_const")]["model"]["weight_scaling"] == "const"
    assert cfg[("sfc_w1a1", "mcel32")]["model"]["weight_scaling"] == "stats"
    assert cfg[("sfc_w1a1", "fat")]["fault_training"]["rate"] == 0.01
    assert cfg[("sfc_w1a1", "hinge")]["loss"]["b"] == 128
    assert cfg[("sfc_w1a1", "ce")]["epochs"] == 1 and cfg[("sfc_w2a2", "ce")]["epochs"] == 2
    assert all(c["data"]["limit_train"] == 256 for c in cfg.values())
    assert points[("sfc_w2a2", "ce")].test_images == 700 and points[("sfc_w1a1", "ce")].test_images is None
    from mcel_train.models import ModelSpec

    # The zoo's default constant scale is the first layer's init abs-max, (1/28) / 1 at 2 bits:
    # large enough that the initial weights do not all round to 0.
    spec = ModelSpec(arch="sfc", weight_bits=2, act_bits=2, weight_scaling="const").resolved()
    assert spec.const_weight_scale == pytest.approx(1 / 28)


def test_bad_settings_name_the_flag():
    with pytest.raises(UserInputError, match="--models"):
        ExperimentSettings(models=("nope",)).check()
    with pytest.raises(UserInputError, match="--variants"):
        ExperimentSettings(variants=("ce", "bogus")).check()
    with pytest.raises(UserInputError, match="not in --models"):
        ExperimentSettings(models=("sfc_w2a2",), epochs_by_model={"vgg3_w4a4": 3}).check()
    with pytest.raises(UserInputError, match="--epochs"):
        ExperimentSettings(models=("sfc_w2a2",), epochs_by_model={"sfc_w2a2": 0}).check()


def test_cli_registers_experiment():
    from flows.cli import build_parser

    args = build_parser().parse_args(["experiment", "--models", "sfc_w2a2", "--epochs", "1"])
    assert args.command == "experiment" and args.epochs == (1, {}) and args.maps == 50
    args = build_parser().parse_args(["experiment", "--epochs", "10,vgg3_w4a4=3",
                                      "--test-images", "vgg3_w4a4=2000"])
    assert args.epochs == (10, {"vgg3_w4a4": 3}) and args.test_images == (None, {"vgg3_w4a4": 2000})
