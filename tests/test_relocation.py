"""A built and simulated run can be moved: copy it, delete the original, simulate the copy.

Why: build artifacts store paths relative to their run folder, the RTL names its memory init
files relative to the simulator's working directory (where the runner links the build's
``hdl/mem``), and the simulator build is keyed by file contents. A shared build, or a Ray node
that mounts the campaign folder elsewhere, must give the same outputs without a rebuild.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from hw_sim.sim import run_sim
from tests.conftest import CONFIGS


@pytest.mark.slow
def test_moved_run_simulates_identically_without_a_rebuild(smoke_run, tmp_path):
    from flows.build import build_run

    original = tmp_path / "a" / "run"
    shutil.copytree(smoke_run / "train", original / "train")
    build_run(original, folding="auto", target_cycles=64, n_verify=20)
    first = json.loads(run_sim(original, [0.0, 0.02], maps=2, images=30, seed=3, jobs=1).read_text())
    hw_first = np.load(original / "sim" / "hw_outputs.npz")["outputs"]

    moved = tmp_path / "b" / "elsewhere with space"
    shutil.copytree(original, moved, symlinks=True)
    shutil.rmtree(tmp_path / "a")
    for name in ("manifest.json", "build.json"):  # no trace of the old location
        assert str(original) not in (moved / "build" / name).read_text()
    assert str(original) not in (moved / "sim" / "hw_ber.json").read_text()
    # nor in any record or job file (a job file of the simulator process named the old work
    # folder; the simulator's own build files, Verilator's, are not records)
    records = [p for p in moved.rglob("*") if p.suffix in (".json", ".yaml", ".yml") and "sim_build" not in p.parts]
    assert len(records) >= 5 and not [p for p in records if str(original) in p.read_text()]
    # nor in any file of the build, FINN's generated graphs and RTL and the Verilated model
    # included (FINN named its code generation folders, in the build's temporary folder, by
    # absolute path; Verilator was given absolute sources)
    held = [p.relative_to(moved) for p in (moved / "build").rglob("*")
            if p.is_file() and not p.is_symlink() and str(original.parent).encode() in p.read_bytes()]
    assert held == []
    # the build's verification left a link to its memories, made in its temporary folder: relative
    link = moved / "build" / "verify" / "mem"
    assert not os.readlink(link).startswith("/") and link.resolve() == (moved / "build" / "hdl" / "mem").resolve()

    binaries = {p: p.stat().st_mtime_ns for p in (moved / "sim" / "sim_build").iterdir() if p.is_file()}
    again = json.loads(run_sim(moved, [0.0, 0.02], maps=2, images=30, seed=3, jobs=1, force=True).read_text())
    np.testing.assert_array_equal(np.load(moved / "sim" / "hw_outputs.npz")["outputs"], hw_first)
    assert [m["digest"] for m in again["maps"]] == [m["digest"] for m in first["maps"]]
    assert all(m["identical_to_software"] for m in again["maps"])
    # the simulator was reused, not rebuilt (its build is keyed by content, not by path)
    assert {p: p.stat().st_mtime_ns for p in binaries} == binaries


@pytest.mark.slow
def test_a_build_in_a_folder_named_with_shell_and_verilog_syntax(smoke_run, tmp_path):
    """Verilator's --build ran ``make -C <its absolute folder>`` through a shell, so a run folder
    named ``a;cmd;b`` ran ``cmd``; a ``"`` or a backslash broke the Verilog string of FINN's
    default INIT_FILE, and a ``$`` was expanded in Verilator's file list. Verilator now gets paths
    relative to its folder and FINN's paths are made relative before the RTL is read."""
    from flows.build import build_run

    marker = tmp_path / "ran"
    run = tmp_path / f'r"q;id>{marker};s$HOME\\t`id>{marker}`'
    shutil.copytree(smoke_run / "train", run / "train")
    record = build_run(run, folding="auto", target_cycles=64, n_verify=20)
    assert record["verification"]["bit_exact"] and not marker.exists()


def test_a_run_trained_with_a_relative_data_dir_is_used_from_anywhere(tmp_path, monkeypatch, capsys):
    """``--data-dir fm`` was stored as typed, relative to the training's cwd, so a sweep from any
    other folder could not find the files; it is stored relative to the run folder, a run moved
    away from them says to set MCEL_DATA_DIR in one line, and MCEL_DATA_DIR then finds them."""
    from flows.cli import main
    from mcel_train.data import find_fashion_mnist

    monkeypatch.delenv("MCEL_DATA_DIR", raising=False)
    shutil.copytree(find_fashion_mnist(), tmp_path / "a" / "fm")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--set", "epochs=1", "--set",
                 "data.limit_train=500", "--data-dir", "fm", "--out", "runs/rel", "--quiet"]) == 0
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    sweep = ["--ber", "0", "--maps", "1", "--test-images", "50", "--quiet", "--force"]
    assert main(["sweep", "../a/runs/rel", *sweep]) == 0
    clean = json.loads((tmp_path / "a" / "runs" / "rel" / "sweep" / "sw_ber.json").read_text())["results"][0]
    shutil.move(tmp_path / "a" / "runs" / "rel", tmp_path / "moved")
    capsys.readouterr()
    assert main(["sweep", "../moved", *sweep]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set MCEL_DATA_DIR" in err[0]
    monkeypatch.setenv("MCEL_DATA_DIR", str(tmp_path / "a" / "fm"))
    assert main(["sweep", "../moved", *sweep]) == 0
    moved = json.loads((tmp_path / "moved" / "sweep" / "sw_ber.json").read_text())["results"][0]
    assert moved["accuracies"] == clean["accuracies"]
    monkeypatch.delenv("MCEL_DATA_DIR")
    # a run trained before the rule stored the folder relative to its training's cwd: still found there
    config = tmp_path / "moved" / "train" / "config.yaml"
    config.write_text(config.read_text().replace("data_dir: ../../fm", "data_dir: fm"))
    monkeypatch.chdir(tmp_path / "a")
    assert main(["sweep", "../moved", *sweep]) == 0
    # an absolute folder is kept as given: a copy of the run anywhere on the machine finds it
    assert main(["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--set", "epochs=1", "--set",
                 "data.limit_train=500", "--data-dir", str(tmp_path / "a" / "fm"), "--out", "runs/abs", "--quiet"]) == 0
    shutil.copytree(tmp_path / "a" / "runs" / "abs", tmp_path / "b" / "deeper" / "abs")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["sweep", "deeper/abs", *sweep]) == 0
