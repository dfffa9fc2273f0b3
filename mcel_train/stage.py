"""Atomic stages: a stage writes into a temporary folder next to its target and renames it into
place only when everything succeeded.

Why: a stage that fails half-way (a FINN error, a Verilator failure, a SIGKILL) must leave the
previous result untouched and nothing that blocks a retry. Every stage of the pipeline (train,
export, build, sweep, sim) commits through :func:`atomic_stage`, so there is one rule for all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mcel_train.errors import StageExistsError

PARTIAL = ".partial-"


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or
    ``None`` if it does not run (or /proc cannot say): with the pid, it names one process, not
    whichever reuses the pid later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_token(pid: int) -> str:
    """Process ``pid`` named as "pid start" (:func:`process_start`; just the pid if /proc cannot
    say), the one text form of a process's identity that files and environment variables hold."""
    return f"{pid} {process_start(pid) or ''}".strip()


def token_pid(token: str) -> int | None:
    """The pid of a :func:`process_token` (``None`` if the text is not one)."""
    fields = token.split()
    return int(fields[0]) if fields and fields[0].isdigit() else None


def token_alive(token: str) -> bool:
    """Whether the process a :func:`process_token` names still runs (not another reusing its pid)."""
    fields, pid = token.split(), token_pid(token)
    return pid is not None and alive(pid, fields[1] if len(fields) > 1 else None)


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` still runs (a folder it owns is not stale); with ``started`` (its
    :func:`process_start`), whether that very process runs, not another that reuses its pid. A
    zombie (ended, not yet reaped by its parent) does not run: a make killed by a script that
    never waits for it stayed "alive" while its simulation went on."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return started is None or process_start(pid) in (None, started)


def clear_stale(target: Path) -> None:
    """Remove temporary folders of ``target`` left by processes that no longer run (a kill)."""
    for path in Path(target).parent.glob(f".{Path(target).name}{PARTIAL}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def blocking_file(folder: str | Path) -> Path | None:
    """The file standing where ``folder`` or one of its parents must be made (``None``: the
    folder can be made): checked before a stage's work, not when its output is written."""
    ancestor = Path(folder)
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return None if ancestor.is_dir() else ancestor


def run_name(run_dir: str | Path) -> str:
    """A run's name in records and labels: its folder's name, also for ``.`` or ``runs/x/``
    (never a path of the machine it ran on)."""
    return Path(run_dir).resolve().name or str(run_dir)


STAGE_FOLDERS = ("train", "export", "build", "sim", "sweep", "margins")  # what a run folder holds


def stage_folder_problem(run: object) -> str | None:
    """A stage folder given where its run folder belongs (``mcel sim runs/R/build``, ``make -C
    hw_sim RUN=runs/R/train``): each command then named a fix for the wrong folder ("run `mcel
    build runs/R/build` first")."""
    if run is None:
        return None
    path = Path(str(run))
    parent = path.parent
    if path.name in STAGE_FOLDERS and ((parent / "train").is_dir() or (parent / "export").is_dir()):
        return f"{path} is a stage folder of the run {parent}; give the run folder: {parent}"
    return None


def check_writable(target: Path, force: bool) -> None:
    """Refuse an existing stage without ``--force`` (call it after validating the arguments)."""
    if Path(target).exists() and not force:
        raise StageExistsError(f"{target} exists; pass --force to replace it")


@contextmanager
def atomic_stage(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target``.

    On any exception the temporary folder is removed and ``target`` is left as it was. Without
    ``force``, a ``target`` that another command wrote while this one worked is not replaced
    either (two sweeps of one run at once both said "wrote", and the first result was lost).
    """
    target = Path(target)
    check_writable(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(target)
    tmp = target.parent / f".{target.name}{PARTIAL}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists() and not force:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageExistsError(f"{target} was written by another command while this one ran; nothing of this "
                               "one was kept (pass --force to replace that one)")
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def write_text_atomic(path: str | Path, text: str, replace: bool = True) -> None:
    """Write ``text`` whole or not at all: to a temporary file beside ``path``, renamed over it
    (a kill while writing leaves the old file, not half of the new one). An unchanged file is
    left alone, so its time still means "changed" to make. ``replace=False``: a file at ``path``
    is never replaced, also one another process wrote since the caller checked
    (:class:`StageExistsError`; the new file is put in place by a hard link, which fails on an
    existing name, where a rename would replace it)."""
    path = Path(path)
    if replace and path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")
    tmp.write_text(text)
    if replace:
        tmp.replace(path)
        return
    try:
        os.link(tmp, path)
        taken = False
    except FileExistsError:
        taken = True
    except OSError:  # a file system without hard links: checked, then renamed (a narrow race)
        taken = path.exists()
        if not taken:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if taken:
        raise StageExistsError(f"{path} was written by another command meanwhile; pass --force to replace it, "
                               "or give another --out")
