"""The simulation's work folder is claimed by one process at a time (hw_sim/work_folder.py): a live
owner's folder is never replaced or removed by another process, a dead owner's is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hw_sim.work_folder import PARTIAL, SimulationBusyError, check_owned, claim, owner, release


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_keeps_its_folder(tmp_path):
    sim = tmp_path / "sim"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim(sim, other.pid)
        (sim / PARTIAL / "inputs.npy").write_text("theirs")
        with pytest.raises(SimulationBusyError, match=f"process {other.pid}"):
            claim(sim, 1234567)
        with pytest.raises(SimulationBusyError):
            check_owned(sim, 1234567)
        release(sim, 1234567)  # not the owner: nothing removed
        assert (sim / PARTIAL / "inputs.npy").read_text() == "theirs"
        assert owner(sim) == other.pid
        check_owned(sim, other.pid)
        release(sim, other.pid)
        assert not (sim / PARTIAL).exists()
    finally:
        other.kill()
        other.wait()


def test_a_dead_owners_folder_is_stale_and_replaced(tmp_path):
    sim = tmp_path / "sim"
    claim(sim, _dead_pid())
    (sim / PARTIAL / "inputs.npy").write_text("stale")
    work = claim(sim, 4242)
    assert (work / "owner").read_text().split()[0] == "4242"
    assert sorted(p.name for p in work.iterdir()) == ["owner"]


def test_the_make_flows_stages_claim_for_the_make_process(tmp_path):
    """Three stages, three processes, one make: each recipe's process finds the make above the
    shell that runs it (the shell's parent)."""
    recipe = (f'@echo $$PPID; "{sys.executable}" -c '
              '"from hw_sim.work_folder import make_process; print(make_process())"')
    (tmp_path / "Makefile").write_text(f"all:\n\t{recipe}\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(["make", "-s", "-C", str(tmp_path)], capture_output=True, text=True, check=True, env=env)
    shell_parent, found = out.stdout.split()
    assert found == shell_parent


def test_an_owner_whose_pid_now_names_another_process_is_stale(tmp_path):
    """A run copied from another machine, or a pid reused since: the owner file names a live pid,
    but not the process that claimed the folder (its start time differs), so the folder is stale."""
    sim = tmp_path / "sim"
    claim(sim, 4242)
    (sim / PARTIAL / "owner").write_text("1 12345")  # pid 1 runs, but it did not start at tick 12345
    assert owner(sim) is None
    work = claim(sim, 4343)
    assert owner(sim) is None or owner(sim) == 4343
    assert (work / "owner").read_text().split()[0] == "4343"
    # a live owner recorded with its own start time still holds the folder
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim(sim, other.pid)
        assert owner(sim) == other.pid
        with pytest.raises(SimulationBusyError, match="if no simulation runs, delete that folder"):
            claim(sim, 4444)
    finally:
        other.kill()
        other.wait()


def test_a_stage_another_command_wrote_meanwhile_is_not_replaced(tmp_path):
    """Two sweeps of one run at once both said "wrote", the first result lost: a stage folder
    that appeared while a command worked is kept, the command's own output dropped, one line
    (mcel_train/stage.py atomic_stage); with --force it is replaced, as asked."""
    from mcel_train.errors import StageExistsError
    from mcel_train.stage import atomic_stage

    target = tmp_path / "sweep"
    with pytest.raises(StageExistsError, match="written by another command while this one ran"):
        with atomic_stage(target) as tmp:
            (tmp / "mine.json").write_text("{}")
            target.mkdir()  # the other command's rename
            (target / "theirs.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"] and (target / "theirs.json").is_file()
    with atomic_stage(target, force=True) as tmp:
        (tmp / "mine.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["mine.json"]
