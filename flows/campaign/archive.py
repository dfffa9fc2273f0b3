"""A campaign's finished results in one JSON file, so that a campaign resumes in a fresh clone.

Why: a campaign folder (``runs/campaigns/NAME``) holds the trained networks and the builds,
hundreds of MB, and is not committed, so a working session that starts from a fresh clone has
none of it. The results themselves are small. ``mcel report`` writes them as ``results.json``
next to the report (which is committed), and
``mcel campaign SPEC --restore results.json`` puts them back into a new folder's store.

- Task keys are content keys of a task's inputs (``flows/campaign/spec.py``). A restored row is
  therefore used only by a task with exactly the inputs it was computed from. Rows whose key the
  campaign no longer has are left out.
- A restored task has no output folder. The scheduler (``flows/campaign/runner.py``) redoes it
  when a pending task must read it, for example a training whose sweep had not finished.
- Unfinished sweeps' checkpoints (their finished rates, ``mcel_train/sweep.py``) travel too. A
  redone training that gives the same weights then resumes its sweep at the next rate; the
  checkpoint holds the weights' fingerprint, so other weights ignore it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from flows.campaign.spec import CampaignSpec
from flows.campaign.store import ResultStore
from flows.campaign.tasks import Task
from mcel_train.errors import UserInputError

FORMAT = "mcel-campaign-results/1"
ARCHIVE_NAME = "results.json"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    stage: str
    label: str
    attempts: int
    seconds: float | None
    result: dict
    finished: str


class _Archive(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    campaign: str
    rows: list[_Row]
    sweep_checkpoints: dict[str, dict]


def write_archive(campaign_dir: str | Path, path: str | Path, campaign: str) -> Path:
    """``path`` <- the finished rows of ``campaign_dir``'s store (campaign named ``campaign``)
    and its unfinished sweeps' checkpoints (written to a temporary file, then renamed)."""
    from mcel_train.sweep import CHECKPOINT

    campaign_dir, path = Path(campaign_dir), Path(path)
    store = ResultStore(campaign_dir / "results.sqlite", read_only=True)
    try:
        rows = store.done_rows()
    finally:
        store.close()
    done = {r["key"] for r in rows}
    checkpoints = {}
    for ckpt in sorted((campaign_dir / "tasks").glob(f"sweep-*/{CHECKPOINT}")):
        key = ckpt.parent.name.removeprefix("sweep-")
        if key not in done:
            try:
                checkpoints[key] = json.loads(ckpt.read_text())
            except (OSError, ValueError):
                continue  # a torn checkpoint is ignored by the sweep too
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "campaign": campaign, "rows": rows,
                               "sweep_checkpoints": checkpoints}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_archive(path: str | Path, spec: CampaignSpec) -> _Archive:
    """The archive at ``path``, checked to be a results file of campaign ``spec``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        archive = _Archive.model_validate(raw)
    except FileNotFoundError:
        raise UserInputError(f"--restore {path}: no such file (mcel report writes it as "
                             f"{ARCHIVE_NAME} next to the report)") from None
    except (OSError, UnicodeDecodeError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise UserInputError(f"--restore {path} is not a campaign results file ({first}); pass the "
                             f"{ARCHIVE_NAME} that mcel report wrote") from None
    if archive.format != FORMAT:
        raise UserInputError(f"--restore {path} has format {archive.format!r}, this version reads {FORMAT!r}")
    if archive.campaign != spec.name:
        raise UserInputError(f"--restore {path} holds campaign {archive.campaign!r}, not {spec.name!r}; "
                             "pass that campaign's results file")
    return archive


def restore(archive: _Archive, store: ResultStore, tasks: list[Task], campaign_dir: Path) -> int:
    """Put the archive's rows for this campaign's tasks into ``store`` (those it lacks) and its
    sweep checkpoints into their task folders; returns the number of rows restored."""
    from mcel_train.sweep import CHECKPOINT

    keys = {t.key for t in tasks}
    have = set(store.done())
    rows = [r.model_dump() for r in archive.rows if r.key in keys and r.key not in have]
    store.insert_rows(rows)
    for key, content in archive.sweep_checkpoints.items():
        folder = campaign_dir / "tasks" / f"sweep-{key}"
        if key in keys and key not in have and not (folder / CHECKPOINT).exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CHECKPOINT).write_text(json.dumps(content))
    return len(rows)
