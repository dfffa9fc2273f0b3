"""``RUN/sim/.partial``, the one work folder of a run's simulation, claimed by one process at a time.

Why: a simulation prepares its maps, inputs and predictions in ``sim/.partial``, builds and runs
the simulator from there and renames the results out of it at the end. Two simulations of one run
at the same time (two ``mcel sim`` with different rates, or a make flow beside an ``mcel sim``)
used to share that folder: the second one's preparation deleted the first one's files under it.
The folder now names its owner (a process id in ``owner``); a live owner other than the caller
makes the caller stop with one line, and only the owner removes the folder. The claim itself is
serialised by an advisory lock on ``sim/``, so two processes starting together cannot both win.

The make flow's three stages are three processes: they claim for the ``make`` process that runs
them (:func:`make_process`), which lives from ``prepare`` to ``finish``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from mcel_train.errors import UserError
from mcel_train.stage import process_token, token_alive, token_pid

PARTIAL = ".partial"
OWNER = "owner"  # in the work folder: the pid of the process whose simulation it holds


class SimulationBusyError(UserError, RuntimeError):
    """Another live process's simulation holds the run's work folder."""


def owner(sim_dir: Path) -> int | None:
    """The live process that holds ``sim_dir``'s work folder, or ``None``: no work folder, no
    owner named, or an owner that has ended (its pid gone or reused by another process, as in a
    run folder copied from another machine)."""
    try:
        token = (Path(sim_dir) / PARTIAL / OWNER).read_text()
    except OSError:
        return None
    return token_pid(token) if token_alive(token) else None


def _busy(sim_dir: Path, holder: int) -> SimulationBusyError:
    return SimulationBusyError(
        f"{sim_dir.parent} is being simulated by process {holder} (its work folder is {sim_dir / PARTIAL}): "
        "wait until it ends, or stop it, before simulating this run again (if no simulation runs, delete "
        "that folder)")


def claim(sim_dir: Path, pid: int) -> Path:
    """A fresh, empty work folder under ``sim_dir`` owned by ``pid``; refused while another live
    process owns the current one (a dead owner's folder is stale and replaced)."""
    sim_dir = Path(sim_dir)
    sim_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sim_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = owner(sim_dir)
        if holder is not None and holder != pid:
            raise _busy(sim_dir, holder)
        work = sim_dir / PARTIAL
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / OWNER).write_text(process_token(pid))
    finally:
        os.close(fd)
    return work


def check_owned(sim_dir: Path, pid: int) -> None:
    """Refuse to go on with a work folder that another process has claimed since ``pid`` did."""
    holder = owner(sim_dir)
    if holder is not None and holder != pid:
        raise _busy(Path(sim_dir), holder)


def release(sim_dir: Path, pid: int) -> None:
    """Remove the work folder if ``pid`` owns it (or no live process does); another's stays."""
    holder = owner(sim_dir)
    if holder is None or holder == pid:
        shutil.rmtree(Path(sim_dir) / PARTIAL, ignore_errors=True)


def make_process() -> int:
    """The ``make`` process above this one (the shell between them, if any, is skipped); this
    process's parent when there is none."""
    pid = os.getppid()
    for _ in range(4):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if comm in ("make", "gmake"):
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent pid
        if pid <= 1:
            break
    return os.getppid()
