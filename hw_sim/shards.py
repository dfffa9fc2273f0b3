"""Run one simulation job as several simulator processes, each on a slice of the images.

A Verilated model is single-threaded, and Verilator's own multithreading does not pay off on a
design this small (measured slower with ``--threads 2``). The images of a streaming dataflow
accelerator are independent, though: an image's output depends on that image and the memory
contents only. So ``K`` copies of the same build, each holding the same fault map and fed a
contiguous slice of the images, produce exactly the outputs one copy would, ``K`` times sooner
on ``K`` cores. Every shard injects, verifies and restores every map itself; the merged result
has the same fields as an unsharded run (cycles summed over shards, per-map wall time of the
slowest shard).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from hw_sim.job import SimJob
from hw_sim.runner import run_job, this_process, words_per_image

MAX_SHARDS = 256  # a bound for JOBS / --jobs: each shard is a simulator process
MIN_IMAGES_PER_SHARD = 250  # below this, a second simulator's start-up outweighs its share


def auto_shards(images: int, cpus: int) -> int:
    """Shards worth running: one per core, but no shard smaller than ``MIN_IMAGES_PER_SHARD``."""
    return max(1, min(cpus, images // MIN_IMAGES_PER_SHARD))


def image_slices(images: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``(start, stop)`` slices covering ``range(images)``, sizes within one."""
    bounds = np.linspace(0, images, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def split_job(job: SimJob, work: Path, shards: int) -> list[SimJob]:
    """One job per image slice, with its own inputs, predictions and output files in ``work``."""
    per_image = words_per_image(job)
    inputs = np.load(job.inputs)
    images = inputs.shape[0] // per_image
    predicted = np.load(job.predicted) if job.predicted else None
    out = []
    for i, (start, stop) in enumerate(image_slices(images, shards)):
        shard = {"batch_images": min(job.batch_images, stop - start),
                 "out": str((work / f"hw_raw_shard{i}.npz").resolve()),
                 "inputs": str((work / f"inputs_shard{i}.npy").resolve())}
        np.save(shard["inputs"], inputs[start * per_image : stop * per_image])
        if predicted is not None:
            shard["predicted"] = str((work / f"predicted_shard{i}.npy").resolve())
            np.save(shard["predicted"], predicted[:, start:stop])
        out.append(job.model_copy(update=shard))
    return out


def merge_results(shard_jobs: list[SimJob], out: Path) -> None:
    """The shards' raw results as the one file an unsharded run writes (skipped if any is missing)."""
    paths = [Path(j.out) for j in shard_jobs]
    if not all(p.is_file() for p in paths):
        return  # the caller reports the missing results with the failing shard's log
    raws = [np.load(p) for p in paths]
    offsets = np.cumsum([0] + [r["outputs"].shape[1] for r in raws[:-1]])
    # per map the first differing image over all shards (-1: none; -2: no prediction)
    firsts = np.stack([np.where(r["first_differing"] >= 0, r["first_differing"] + off, r["first_differing"])
                       for r, off in zip(raws, offsets, strict=True)])
    found = np.where(firsts >= 0, firsts, np.iinfo(np.int64).max).min(axis=0)
    first_differing = np.where(found < np.iinfo(np.int64).max, found, firsts.max(axis=0))
    np.savez(
        out,
        first_differing=first_differing,
        outputs=np.concatenate([r["outputs"] for r in raws], axis=1),
        cycles=np.sum([r["cycles"] for r in raws], axis=0),
        stalled_cycles=np.sum([r["stalled_cycles"] for r in raws], axis=0),
        hang=np.any([r["hang"] for r in raws], axis=0),
        ii=np.mean([r["ii"] for r in raws], axis=0),
        wall=np.max([r["wall"] for r in raws], axis=0),
    )


def _run_shard(sim_dir: str, job: SimJob, name: str, waves: bool, owner: str) -> None:
    run_job(Path(sim_dir), job, name=name, waves=waves, owner=owner)


def run_sharded(sim_dir: Path, job: SimJob, shards: int, name: str = "sim", waves: bool = False) -> None:
    """Run ``job`` as ``shards`` (>= 2) parallel simulator processes; merge into ``job['out']``."""
    if job.transient_cycle is not None:
        raise ValueError("a transient upset happens at one cycle of one stream: it cannot be sharded")
    work = Path(job.out).parent
    jobs = split_job(job, work, shards)
    (work / "shards.json").write_text(json.dumps([j.model_dump() for j in jobs], indent=1))
    names = [f"{name}_shard{i}" for i in range(len(jobs))]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("forkserver")) as pool:
        owner = this_process()  # the simulators stop when this process is gone, not their pool worker
        futures = [pool.submit(_run_shard, str(sim_dir), j, n, waves, owner) for j, n in zip(jobs, names, strict=True)]
        for future in futures:
            future.result()
    merge_results(jobs, Path(job.out))
