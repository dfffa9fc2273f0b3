"""Which network a run's export and build were made from, and which build its simulation ran on.

Why: every later stage reads the one before it from the run folder, and a folder can change
underneath a stage. A run retrained in place (``rm -r RUN/train`` and ``mcel train ... --out
RUN``, as the training's own "exists" error suggests) kept its old ``export/`` and ``build/``:
``mcel sim`` then simulated the old network on the new run's test images and ``mcel compare``
called it identical (0.8217 reported for a run whose training measured 0.6128). A build
replaced with ``--force`` left the old simulation, and an edited memory init file simulated as
if it were the build's. So the export and the build record the digest of the network they were
made from, the build records the digest of its memory init files, and the simulation records
the digest of the build record it ran on; each later stage checks what it reads. Records
written before these fields existed are not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mcel_train.errors import ArtifactError
from mcel_train.finn_graph import BUILD_RECORD
from mcel_train.manifest import Manifest
from mcel_train.runio import EXPORT_RECORD, weights_digest

NETWORK_FIELD = "network_sha256"  # export.json, build.json: the network they were made from
MEMORY_FIELD = "memory_sha256"  # build.json: its memory init files
BUILD_FIELD = "build_record_sha256"  # hw_ber.json: the build.json it simulated


def network_digest(run_dir: str | Path) -> str:
    """The run's network: its trained weights' digest (``train/model.pt``), or for an imported
    network (no ``train/``) the SHA-256 of the file it was imported from (``export.json``)."""
    run_dir = Path(run_dir)
    if (run_dir / "train").exists():
        return weights_digest(run_dir)
    source = _record(run_dir / "export" / EXPORT_RECORD, "export or import again").get("source") or {}
    return str(source.get("sha256", ""))


def memory_digest(manifest: Manifest) -> str:
    """SHA-256 over the build's memory init files (what the RTL loads), in the manifest's order."""
    digest = hashlib.sha256()
    for entry in manifest.memories:
        digest.update(entry.name.encode())
        digest.update(manifest.resolve(entry.init_file).read_bytes())
    return digest.hexdigest()


def build_identity(run_dir: str | Path) -> str | None:
    """SHA-256 of the run's ``build/build.json`` (each build writes its own: timings differ), or
    ``None`` without one."""
    path = Path(run_dir) / "build" / BUILD_RECORD
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def export_network(run_dir: str | Path) -> str | None:
    """The network digest the run's export recorded (``None``: an export made before exports
    recorded it), or for an imported network its source's: what a build of this export is of.
    Not the weights in ``train/`` now, which a stale export does not hold."""
    run_dir = Path(run_dir)
    record = _record(run_dir / "export" / EXPORT_RECORD, "export again (mcel export RUN --force)")
    if NETWORK_FIELD in record:
        return record[NETWORK_FIELD]
    return None if (run_dir / "train").exists() else (record.get("source") or {}).get("sha256")


def check_export_is_the_runs(run_dir: str | Path) -> None:
    """Refuse an export made from other weights than the run's training holds now."""
    run_dir = Path(run_dir)
    recorded = _record(run_dir / "export" / EXPORT_RECORD, "export again (mcel export RUN --force)").get(NETWORK_FIELD)
    if recorded is not None and (run_dir / "train").exists() and recorded != network_digest(run_dir):
        raise ArtifactError(f"{run_dir}/export was made from other weights than {run_dir}/train holds now (a "
                            f"retrained run?); export again: mcel export {run_dir} --force")


def check_build_is_the_runs(run_dir: str | Path, manifest: Manifest) -> None:
    """Refuse a build made from another network than the run's, or whose memory init files
    changed after it was built."""
    run_dir = Path(run_dir)
    record = _record(run_dir / "build" / BUILD_RECORD, f"rebuild: mcel build {run_dir} --force")
    recorded = record.get(NETWORK_FIELD)
    if recorded is not None and recorded != network_digest(run_dir):
        raise ArtifactError(f"{run_dir}/build was built from another network than the run's now (a retrained "
                            f"run, or a build copied from another run?); rebuild: mcel build {run_dir} --force")
    recorded = record.get(MEMORY_FIELD)
    if recorded is not None and recorded != memory_digest(manifest):
        raise ArtifactError(f"{run_dir}/build's memory init files changed after the build; rebuild: "
                            f"mcel build {run_dir} --force")


def check_sim_is_the_runs(run_dir: str | Path, sim_record: dict) -> None:
    """Refuse a simulation record made on another build than the run's now (a build replaced
    since with ``--force``), or on a build of another network than the run's now (a run
    retrained in place keeps its old simulation, which compare called identical)."""
    run_dir = Path(run_dir)
    recorded = sim_record.get(BUILD_FIELD)
    if recorded is None:
        return
    if recorded != build_identity(run_dir):
        raise ArtifactError(f"{run_dir}/sim was simulated on an earlier build ({run_dir}/build was replaced "
                            f"since); simulate again: mcel sim {run_dir} --force")
    built = _record(run_dir / "build" / BUILD_RECORD, f"rebuild: mcel build {run_dir} --force").get(NETWORK_FIELD)
    if built is not None and built != network_digest(run_dir):
        raise ArtifactError(f"{run_dir}/sim and its build are of another network than the run's now (a retrained "
                            f"run?); build and simulate again: mcel build {run_dir} --force, then mcel sim")


def check_sweep_is_the_runs(source: str | Path, sweep_record: dict) -> None:
    """Refuse a run folder's sweep made on other weights than the run holds now (``source``: a
    run folder; a sweep record given as a file is taken as it is)."""
    source = Path(source)
    recorded = sweep_record.get(NETWORK_FIELD)
    if recorded is not None and source.is_dir() and recorded != network_digest(source):
        raise ArtifactError(f"{source}/sweep was swept on other weights than {source} holds now (a retrained "
                            f"run?); sweep again: mcel sweep {source} --force")


def _record(path: Path, fix: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not readable; {fix}") from None
    return record if isinstance(record, dict) else {}
