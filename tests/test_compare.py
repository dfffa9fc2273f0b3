"""``mcel compare`` judges the saved outputs themselves (hw_sim/compare.py): outputs changed after
the simulation are a mismatch naming map and image, and a record whose accuracies are not those
of the saved outputs is one line, exit 2. A small simulation folder is written by hand here; the
end-to-end tests (tests/test_hw_sim_e2e.py) compare real simulations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from mcel_train.faults.faultmap import FaultMap

LABELS = np.array([0, 1, 2, 1])


def _sim_folder(run: Path) -> Path:
    """Two maps x four images, hardware == software, with the record mcel sim would write."""
    sim = run / "sim"
    (sim / "maps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = rng.integers(-8, 8, size=(2, 4, 3))
    np.savez(sim / "hw_outputs.npz", outputs=out, labels=LABELS)
    np.savez(sim / "sw_outputs.npz", outputs=out, labels=LABELS, checked=np.ones((2, 4), bool))
    maps = []
    for i, rate in enumerate((0.0, 0.01)):
        fmap = FaultMap(["MVAU_0"], [0] * i, [3] * i, [1] * i, [0] * i)
        fmap.save(sim / "maps" / f"rate{i}_map0.npz")
        acc = float((out[i].argmax(1) == LABELS).mean())
        maps.append({"id": i, "rate": rate, "map_index": 0, "file": f"maps/rate{i}_map0.npz", "accuracy": acc,
                     "predicted_accuracy": acc, "identical_to_software": True})
    (sim / "hw_ber.json").write_text(json.dumps({"bers": [0.0, 0.01], "images": 4, "fault_model": "flip",
                                                "maps": maps}))
    return sim


def test_outputs_changed_after_the_simulation_are_a_mismatch(tmp_path, capsys):
    sim = _sim_folder(tmp_path / "run")
    assert main(["compare", str(tmp_path / "run")]) == 0
    with np.load(sim / "sw_outputs.npz") as f:
        sw = {k: f[k] for k in f.files}
    sw["outputs"][1, 2, 0] += 1  # the flags in hw_ber.json still say identical
    np.savez(sim / "sw_outputs.npz", **sw)
    assert main(["compare", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "'map': 1" in out and "'image': 2" in out and "'recorded_by_the_simulation': False" in out
    assert json.loads((sim / "compare.json").read_text())["curves"][1]["identical_maps"] == 0
    # an image a transient upset left without a prediction is not compared
    sw["checked"][1, 2] = False
    np.savez(sim / "sw_outputs.npz", **sw)
    assert main(["compare", str(tmp_path / "run")]) == 0


def test_a_map_that_checked_no_image_is_not_reported_identical(tmp_path, capsys):
    """A transient upset while every image is in flight leaves no image with a prediction: that
    map proves nothing, so compare says so in one line and exits 1 instead of "all identical"
    (it did, on 0 checked images, and counted the map among the identical ones)."""
    sim = _sim_folder(tmp_path / "run")
    with np.load(sim / "sw_outputs.npz") as f:
        sw = {k: f[k] for k in f.files}
    sw["checked"][1] = False
    np.savez(sim / "sw_outputs.npz", **sw)
    assert main(["compare", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 2 maps checked no image" in err[0] and "--transient-cycle" in err[0]
    result = json.loads((sim / "compare.json").read_text())
    assert result["unchecked_maps"] == [1] and not result["identical"]
    assert [r["identical_maps"] for r in result["curves"]] == [1, 0]


@pytest.mark.parametrize("damage, words", [
    ("accuracy", "map 1's accuracy"),
    ("shape", "outputs (2, 3, 3)"),
    ("labels", "outputs"),
    ("ids", "map ids"),
])
def test_a_record_that_is_not_the_saved_outputs_is_one_line(tmp_path, capsys, damage, words):
    sim = _sim_folder(tmp_path / "run")
    record = json.loads((sim / "hw_ber.json").read_text())
    if damage == "accuracy":
        record["maps"][1]["accuracy"] += 0.25
    elif damage == "ids":
        record["maps"][1]["id"] = 5
    (sim / "hw_ber.json").write_text(json.dumps(record))
    if damage in ("shape", "labels"):
        with np.load(sim / "hw_outputs.npz") as f:
            hw = {k: f[k] for k in f.files}
        if damage == "shape":
            hw["outputs"] = hw["outputs"][:, :3]
        else:
            del hw["labels"]
        np.savez(sim / "hw_outputs.npz", **hw)
    assert main(["compare", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not describe the saved outputs" in err and words in err, err
    assert not (sim / "compare.json").exists()


@pytest.mark.parametrize("name", ["hw_outputs.npz", "sw_outputs.npz"])
def test_a_truncated_outputs_file_is_one_line(tmp_path, capsys, name):
    """A cut zip (npz) raised zipfile.BadZipFile, a traceback: now the damaged-file line, exit 2."""
    sim = _sim_folder(tmp_path / "run")
    (sim / name).write_bytes((sim / name).read_bytes()[:300])
    assert main(["compare", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} is missing or damaged" in err and "--force" in err, err
    assert not (sim / "compare.json").exists()


def test_intervals_are_cut_to_accuracies_in_the_record_table_and_plot(tmp_path, figures):
    """Three maps at 1.0, 1.0, 0.25 give a t-interval reaching past 1 (and below 0): the record's
    ``*_interval``, the printed table and the plotted band hold [0, 1] (one cut, owned by
    mcel_train.sweep.within_accuracies); ``*_ci95`` keeps the uncut half-width."""
    from hw_sim.compare import curves, format_table, plot_compare

    maps = [{"rate": 0.01, "accuracy": a, "predicted_accuracy": a, "identical_to_software": True}
            for a in (1.0, 1.0, 0.25)]
    rows = curves({"bers": [0.01], "maps": maps})
    half = rows[0]["hw_ci95"]
    assert half > 0.75 and rows[0]["hw_interval"] == rows[0]["sw_interval"] == [0.0, 1.0]
    assert format_table(rows).splitlines()[1].split()[3:5] == ["[0.0000,", "1.0000]"]
    plot_compare(rows, "t", tmp_path / "c.png")
    (ax,) = figures[-1].axes
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections]
    assert len(bands) == 2 and all(b.min() == 0.0 and b.max() == 1.0 for b in bands)


def test_flip_counts_are_drawn_and_headed_as_counts(tmp_path, figures):
    """``--fault-model kflips``: the rates are flips per map. compare.png drew the counts 5 and
    50 on a log "bit error rate" axis (0 at 1e-5), where they read as rates far above 1, and the
    table headed them "rate"."""
    from hw_sim.compare import counts_flips, curves, format_table, plot_compare

    maps = [{"rate": r, "accuracy": a, "predicted_accuracy": a, "identical_to_software": True}
            for r, a in ((0.0, 0.9), (5.0, 0.8), (50.0, 0.5))]
    rows = curves({"bers": [0.0, 5.0, 50.0], "maps": maps})
    assert counts_flips("kflips") and not counts_flips("flip") and not counts_flips("asym:p01=0.1,p10=1")
    assert counts_flips(" kflips") and not counts_flips("zap")  # as the fault model's parser reads it
    assert format_table(rows, counts=True).split()[0] == "flips" and format_table(rows).split()[0] == "rate"
    plot_compare(rows, "t", tmp_path / "c.png", counts=True)
    (ax,) = figures[-1].axes
    assert ax.get_xlabel() == "flipped bits per map" and ax.get_xscale() == "symlog"
    assert list(ax.lines[0].get_xdata()) == [0.0, 5.0, 50.0]  # 0 drawn at 0, not at 1e-5
    plot_compare(rows, "t", tmp_path / "r.png")
    assert figures[-1].axes[0].get_xlabel() == "bit error rate"
