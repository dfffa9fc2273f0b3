"""The campaign scheduler: runs the task graph on an executor, records every result, resumes.

The scheduler is the only writer of the results store. It submits a task when every task it
depends on is done, records a finished task in one transaction, retries a failed or timed-out
(hung) task up to ``retries`` times, and gives up on the tasks that depend on a task that failed
for good while the rest of the campaign goes on. ``--resume`` skips every task with a finished
row; a task folder without one is stale and is redone from scratch.

A finished task whose output is gone (its row was restored from another folder,
:mod:`flows.campaign.archive`) is redone when a pending task must read that output. If a redone
training gives other weights than its row said, every finished task that read the old weights is
redone too, so no result mixes two networks.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flows.campaign.archive import read_archive
from flows.campaign.archive import restore as restore_archive
from flows.campaign.executors import make_executor
from flows.campaign.spec import CampaignSpec, load_campaign
from flows.campaign.store import ResultStore
from flows.campaign.tasks import Task, expand, output_missing, software_tasks
from mcel_train.errors import UserInputError
from mcel_train.progress import progress_bar
from mcel_train.stage import blocking_file, process_token, write_text_atomic

POLL_SECONDS = 0.5
# Among the ready tasks, later stages go first: a campaign cut short (a session ends) then has
# finished what it started before it started another network. A training without its sweep is
# worth nothing in a fresh clone (it is trained again there), and an RTL simulation killed
# midway restarts, so the long simulations should start as early as their inputs allow.
STAGE_FIRST = {"hwsim": 0, "build": 1, "evidence": 2, "sweep": 3, "import": 4, "train": 5}


def default_dir(spec: CampaignSpec) -> Path:
    return Path("runs") / "campaigns" / spec.name


@dataclass
class Progress:
    """Counts behind the live view (also written to ``<campaign>/status.json`` for scripts)."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0

    def eta_seconds(self) -> float | None:
        left = self.total - self.done - self.failed - self.skipped
        if self.finished_here == 0:
            return None
        return (time.monotonic() - self.started) / self.finished_here * left

    def as_dict(self) -> dict:
        eta = self.eta_seconds()
        return {"total": self.total, "done": self.done, "running": len(self.running), "failed": self.failed,
                "skipped": self.skipped, "finished_here": self.finished_here,
                "eta_s": None if eta is None else round(eta, 1),
                "running_tasks": self.running}


def _lock(campaign_dir: Path):
    handle = open(campaign_dir / ".lock", "w")  # noqa: SIM115 - held for the campaign's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserInputError(f"another campaign process is running in {campaign_dir}") from None
    return handle


def _write_status(campaign_dir: Path, progress: Progress, ended: bool = False) -> None:
    """``status.json``: the progress counts, and whether the campaign process still runs. A
    killed campaign's file keeps saying ``running``; ``process`` (pid and start time,
    :func:`mcel_train.stage.process_token`) lets a reader check, and a campaign that ended on
    its own (finished, or stopped by an error or Ctrl-C) says ``ended``."""
    tmp = campaign_dir / "status.json.tmp"
    tmp.write_text(json.dumps(progress.as_dict() | {"ended": ended, "process": process_token(os.getpid()),
                                                    "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
    tmp.replace(campaign_dir / "status.json")


class Scheduler:
    """Runs ``tasks`` on ``executor``, recording into ``store``."""

    def __init__(self, spec: CampaignSpec, tasks: list[Task], store: ResultStore, executor, campaign_dir: Path,
                 show_progress: bool = True) -> None:
        self.spec, self.tasks, self.store, self.executor = spec, {t.key: t for t in tasks}, store, executor
        self.campaign_dir = campaign_dir
        finished = store.done()
        self.done = set(finished) & set(self.tasks)
        self._refuse_networks_retrained_in_place(finished)
        redo = self._outputs_to_redo()
        self.done -= redo
        self.previous = {k: finished[k] for k in redo}  # what a redone task's row said before
        self.failed: dict[str, str] = {}
        self.skipped: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.pending = [t.key for t in tasks if t.key not in self.done]
        self.progress = Progress(total=len(tasks), done=len(self.done))
        self._status = ""
        self.bar = progress_bar(total=len(tasks), initial=len(self.done), desc=f"campaign {spec.name}",
                        unit="task", disable=not show_progress, dynamic_ncols=True)

    def _refuse_networks_retrained_in_place(self, finished: dict[str, dict]) -> None:
        """A finished training whose folder now holds other weights than its row records (a
        ``mcel train`` into the task's folder): the tasks after it would read the new network
        while the report's rows keep the old one's figures, one row mixing two networks. Its
        ``metrics.json`` names the weights (the digest ``load_run`` checks ``model.pt`` against)."""
        for key in sorted(self.done):
            task = self.tasks[key]
            recorded = finished[key].get("weights_sha256")
            if task.stage != "train" or not recorded:
                continue
            metrics = self.campaign_dir / "tasks" / task.folder / "train" / "metrics.json"
            try:
                held = json.loads(metrics.read_text()).get("weights_sha256")
            except (OSError, ValueError, AttributeError):
                continue  # missing: trained again (_outputs_to_redo); damaged: load_run says so
            if held and held != recorded:
                raise UserInputError(
                    f"{metrics.parent} holds other weights than the campaign trained for {task.label} (trained "
                    "again in place?): delete that train folder and --resume to train it again (the tasks that "
                    "read it are redone), or --out a new campaign")

    def _outputs_to_redo(self) -> set[str]:
        """Finished tasks whose output a pending task reads but whose folder lacks it."""
        redo: set[str] = set()
        frontier = [k for k in self.tasks if k not in self.done]
        while frontier:
            for dep in self.tasks[frontier.pop()].deps:
                if (dep in self.done and dep not in redo and dep in self.tasks
                        and output_missing(self.campaign_dir, self.tasks[dep])):
                    redo.add(dep)
                    frontier.append(dep)
        return redo

    def _redo_readers_of(self, key: str) -> None:
        """Every finished task that read ``key``'s earlier output, directly or not, runs again."""
        stale: set[str] = set()
        grew = True
        while grew:
            grew = False
            for task in self.tasks.values():
                if task.key in self.done and task.key not in stale and any(d == key or d in stale for d in task.deps):
                    stale.add(task.key)
                    grew = True
        if not stale:
            return
        self.store.forget(stale)
        self.done -= stale
        self.bar.n -= len(stale)  # they count again when they finish again (the bar stays <= its total)
        self.bar.refresh()
        order = list(self.tasks)
        self.pending = sorted(set(self.pending) | stale, key=order.index)
        self.bar.write(f"{self.tasks[key].label} gave other weights than its earlier row: "
                       f"redoing the {len(stale)} task(s) that read them")

    def _ready(self) -> list[str]:
        ready = []
        for key in self.pending:
            deps = self.tasks[key].deps
            if any(d in self.failed or d in self.skipped for d in deps):
                self.skipped.add(key)
            elif all(d in self.done for d in deps) and key not in self.started:
                ready.append(key)
        self.pending = [k for k in self.pending if k not in self.skipped]
        return sorted(ready, key=lambda k: STAGE_FIRST[self.tasks[k].stage])  # stable: grid order within a stage

    def _finish(self, key: str, ok: bool, payload) -> None:
        task = self.tasks[key]
        attempts = self.attempts[key]
        seconds = time.monotonic() - self.started.pop(key)
        if ok:
            self.store.record_done(key, task.stage, task.label, attempts, round(seconds, 2), payload)
            self.done.add(key)
            self.pending.remove(key)
            self.progress.finished_here += 1
            self.bar.update(1)
            before = self.previous.pop(key, None)
            if before is not None and task.stage == "train" and before.get("weights_sha256") != payload.get(
                    "weights_sha256"):
                self._redo_readers_of(key)
            return
        if attempts <= self.spec.retries:
            self.bar.write(f"retrying {task.label} (attempt {attempts} failed): {str(payload).splitlines()[0]}")
            return  # stays pending; submitted again by the next round
        self.store.record_failed(key, task.stage, task.label, attempts, str(payload))
        self.failed[key] = str(payload)
        self.pending.remove(key)
        self.bar.write(f"FAILED {task.label} after {attempts} attempt(s): {str(payload).splitlines()[0]}")

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for key in list(self.executor.running()):
            if now - self.started[key] > self.spec.timeout_s:
                self.executor.cancel(key)
                self._finish(key, False, f"hang: no result after {self.spec.timeout_s:g} s (timeout_s); killed")

    def _show(self, ended: bool = False) -> None:
        p = self.progress
        p.done, p.failed, p.skipped = len(self.done), len(self.failed), len(self.skipped)
        p.running = [self.tasks[k].label for k in self.executor.running()]
        status = f"running {len(p.running)}, failed {p.failed}, skipped {p.skipped}"
        if status != self._status:  # a redraw per poll would be a log line per poll in a file
            self._status = status
            self.bar.set_postfix_str(status)
        _write_status(self.campaign_dir, p, ended)

    def run(self) -> dict:
        try:
            while self.pending:
                for key in self._ready()[: max(self.executor.capacity(), 0)]:
                    self.attempts[key] = self.attempts.get(key, 0) + 1
                    self.started[key] = time.monotonic()
                    self.executor.submit(self.tasks[key])
                if not self.pending:
                    break
                if not self.executor.running():
                    break  # nothing was runnable: what is left depends on failed tasks
                for key, ok, payload in self.executor.poll(POLL_SECONDS):
                    self._finish(key, ok, payload)
                self._check_timeouts()
                self._show()
        finally:
            self.executor.shutdown()
            self._show(ended=True)
            self.bar.close()
        return self.progress.as_dict() | {"failures": {self.tasks[k].label: e.splitlines()[0]
                                                       for k, e in self.failed.items()}}


def run_campaign(campaign_file: str | Path, out: str | Path | None = None, executor: str = "local",
                 address: str | None = None, workers: int | None = None, resume: bool = False,
                 show_progress: bool = True, software_only: bool = False,
                 restore: str | Path | None = None) -> tuple[Path, dict]:
    """Validate, expand and run a campaign; returns its folder and the final progress counts."""
    # every config error surfaces here, before any work. The file is checked in full on a
    # --resume too (it was read leniently, so a spec a fresh run refuses ran with its repeats
    # dropped); a campaign saved before a check was added reads leniently only from its folder
    # (reports), and its file, with the repeat removed, expands to the same tasks
    spec = load_campaign(campaign_file)
    campaign_dir = Path(out) if out else default_dir(spec)
    return campaign_dir, run_spec(spec, campaign_dir, executor, address, workers, resume, show_progress,
                                  software_only, restore)


def _note_changed_spec(campaign_dir: Path, spec: CampaignSpec, tasks: list, resume: bool) -> None:
    """A --resume with a changed campaign file (another rate list, more maps) ran every task whose
    settings changed anew without a word, beside the earlier rows: say which sections changed
    and how many tasks the folder's earlier file planned that this one does not."""
    saved = campaign_dir / "campaign.yaml"
    if not (resume and saved.is_file()):
        return
    try:
        before = yaml.safe_load(saved.read_text()) or {}
        earlier = {t["key"] for t in json.loads((campaign_dir / "tasks.json").read_text())}
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError):
        return
    if not isinstance(before, dict) or before == spec.raw:
        return
    changed = sorted(k for k in set(before) | set(spec.raw) if before.get(k) != spec.raw.get(k))
    dropped = len(earlier - {t.key for t in tasks})
    print(f"note: the campaign differs from the one {campaign_dir} ran (changed: {', '.join(changed)}): tasks whose "
          f"settings changed run anew, finished ones are reused" + (
              f"; {dropped} task(s) of the earlier file are not in this one (their rows stay in results.sqlite)"
              if dropped else ""), file=sys.stderr)


def _check_folder(campaign_dir: Path, name: str) -> None:
    """Refuse a folder that cannot be the campaign's: under a file, or holding another
    campaign (its campaign file and task list would be replaced by this one's)."""
    blocker = blocking_file(campaign_dir)
    if blocker is not None:
        raise UserInputError(f"--out {campaign_dir}: {blocker} is a file, not a folder; give a folder")
    saved = campaign_dir / "campaign.yaml"
    if saved.is_file():
        try:
            held = (yaml.safe_load(saved.read_text()) or {}).get("name")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
            held = None
        if not isinstance(held, str):
            raise UserInputError(f"{saved} is damaged, so this folder's campaign is unknown: if it is {name!r}, "
                                 "delete that file and --resume again (its results are in results.sqlite); "
                                 "else --out a new folder")
        if held != name:
            raise UserInputError(f"{campaign_dir} holds campaign {held!r}, not {name!r}: --out a new folder (or "
                                 "resume that campaign with its own file)")


def run_spec(spec: CampaignSpec, campaign_dir: str | Path, executor: str = "local", address: str | None = None,
             workers: int | None = None, resume: bool = False, show_progress: bool = True,
             software_only: bool = False, restore: str | Path | None = None) -> dict:
    """Run a validated campaign in ``campaign_dir`` (presets such as ``mcel experiment`` build
    their spec in code); returns the final progress counts. ``software_only``: this run leaves
    the builds and RTL simulations for a later ``--resume`` (an RTL simulation of a large
    network takes longer than what is left of a working session, and a killed one restarts).
    ``restore``: a results file of :mod:`flows.campaign.archive` whose rows the store takes first."""
    campaign_dir = Path(campaign_dir)
    if workers is not None and workers < 1:  # 0 is not "every core": that is the default (no flag)
        raise UserInputError(f"--workers must be >= 1 (leave it out for one per core), got {workers}")
    db = campaign_dir / "results.sqlite"
    archive = None if restore is None else read_archive(restore, spec)  # checked before anything is written
    if db.exists() and not resume:
        raise UserInputError(f"{campaign_dir} holds a campaign already: pass --resume to continue it, "
                             "or --out a new folder")
    _check_folder(campaign_dir, spec.name)
    if resume and not db.exists() and restore is None:  # a mistyped --out reran everything without a word
        print(f"note: nothing to resume in {campaign_dir} (no results.sqlite): starting campaign {spec.name!r} "
              "there from the beginning", file=sys.stderr)
    if db.exists():  # a damaged store is refused before the campaign file and task list are rewritten
        try:
            ResultStore(db, read_only=True).close()
        except sqlite3.DatabaseError as exc:
            raise UserInputError(f"{db} is not a readable campaign results store ({exc}); continue the campaign "
                                 "in a new --out folder with --restore RESULTS.json (the file mcel report wrote)"
                                 ) from None
    # The executor first: a cluster that cannot be joined leaves no campaign state behind.
    runner = make_executor(executor, str(campaign_dir.resolve()), workers, address)
    campaign_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(campaign_dir)
    try:
        tasks = expand(spec)
        _note_changed_spec(campaign_dir, spec, tasks, resume)
        write_text_atomic(campaign_dir / "campaign.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
        write_text_atomic(campaign_dir / "tasks.json", json.dumps([t.to_dict() for t in tasks], indent=1))
        store = ResultStore(db)
        restored = 0 if archive is None else restore_archive(archive, store, tasks, campaign_dir)
        deferred: list[dict] = []
        if software_only:
            done = set(store.done())
            kept = software_tasks(tasks, done)
            ran = {t.key for t in kept}
            deferred = [{"stage": t.stage, "label": t.label} for t in tasks if t.key not in ran and t.key not in done]
            tasks = kept
        try:
            summary = Scheduler(spec, tasks, store, runner, campaign_dir, show_progress).run()
        finally:
            store.close()
    finally:
        lock.close()
    return summary | {"restored": restored, "deferred": deferred}
