"""Software bit-error sweep: accuracy over fault rates, many maps per rate, with CIs.

``run_sweep`` reads a training run, builds its integer network and, for each rate, evaluates
``maps`` fault maps (map ``i`` = ``generate_map(memories, model, rate, seed, i)``), writing
``runs/NAME/sweep/sw_ber.json`` and ``sw_ber.png``. The record holds no timestamps or timings,
so the same inputs give a byte-identical JSON on any machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
from scipy.special import stdtrit  # Student t quantile; scipy.stats took 0.3 s more to import

from mcel_train.errors import UserInputError
from mcel_train.evaluate import MapEvaluator, accuracy_of, clean_logits, memory_contents, ties_of
from mcel_train.faults.generate import FaultModel, FaultModelError, generate_map, stored_bits
from mcel_train.intnet import IntNetwork, from_brevitas, layer_memories
from mcel_train.intnet_finn import build_memories, from_finn_build, memories_in_layer_order
from mcel_train.manifest import MANIFEST_FILE, load_manifest
from mcel_train.memory import Memory
from mcel_train.plotting import SWEEP_FORMAT, plot_sweeps
from mcel_train.progress import progress_bar
from mcel_train.provenance import NETWORK_FIELD, network_digest
from mcel_train.runio import first_images, load_source
from mcel_train.stage import atomic_stage, run_name

PREDICTION_RULE = "argmax of the integer logits, ties to the lowest class index"


class SweepExistsError(UserInputError):
    """The sweep's output exists and ``force`` was not given."""


def t_interval(values: Sequence[float], level: float = 0.95, center: float | None = None
               ) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean (``None`` for fewer than two values), around
    ``center`` when given: the mean as the record states it (:func:`mean_accuracy`, exact from
    the correct counts), so that the interval holds the stated mean (a float mean of equal maps
    lay one ulp off it: mean 0.91, interval [0.9099999999999999, 0.9099999999999999])."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = stdtrit(v.size - 1, 0.5 + level / 2) * v.std(ddof=1) / math.sqrt(v.size)
    mid = float(v.mean()) if center is None else float(center)
    return mid - half, mid + half


def accuracy_interval(accuracies: Sequence[float], level: float = 0.95, center: float | None = None
                      ) -> tuple[float, float] | None:
    """The t-interval of a mean accuracy as records report it: within [0, 1]. With few maps the
    t-interval can reach past 1 (maps at 1.0, 1.0, 0.9: up to 1.08), which no accuracy can be;
    cut to the possible values it keeps its coverage. The ``--ci-width`` stopping rule
    (:func:`maps_needed`) reads the uncut width, as it always has. ``center``: as
    :func:`t_interval`."""
    ci = t_interval(accuracies, level, center)
    return None if ci is None else within_accuracies(*ci)


def within_accuracies(lo: float, hi: float) -> tuple[float, float]:
    """An interval of accuracies cut to [0, 1], the only values an accuracy can take: the one
    place that cuts them (:func:`accuracy_interval`, ``mcel compare``'s table and plot, the
    campaign report's intervals)."""
    return max(float(lo), 0.0), min(float(hi), 1.0)


def _manifest_memories(path: Path, net: IntNetwork) -> list[Memory]:
    """``--manifest``: a build folder or its manifest.json, whose weight memories (the
    accelerator's layout: which (word, bit) holds which weight) the maps then address on the
    run's own network; a mismatch with that network is one line naming the flag."""
    if not path.exists():
        raise UserInputError(f"--manifest {path} not found: give a build folder (runs/NAME/build) or its "
                             f"{MANIFEST_FILE}")
    if path.is_file() and path.name != MANIFEST_FILE:
        raise UserInputError(f"--manifest {path}: give a build folder or the {MANIFEST_FILE} in it")
    manifest = load_manifest(path.parent if path.is_file() else path)
    try:
        memories = memories_in_layer_order(manifest, net)
        layer_memories(net, memories)
    except ValueError as err:
        raise UserInputError(f"--manifest {path} does not fit this run's network ({err}); sweep without "
                             "--manifest, or predict the build's own network with `mcel sim`") from None
    return memories


def maps_needed(accs: np.ndarray, width_points: float, first: int = 3) -> int | None:
    """The fewest leading maps (at least ``first``) whose 95 % interval of the mean accuracy
    is narrower than ``width_points`` accuracy points, or ``None`` if no prefix is.

    Checked map by map, so the answer does not depend on how many maps were evaluated at once.
    """
    for k in range(max(2, first), len(accs) + 1):
        ci = t_interval(accs[:k])
        if ci is not None and (ci[1] - ci[0]) * 100 < width_points:
            return k
    return None


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield range(lo, min(n, lo + size))


def mean_accuracy(accuracies: np.ndarray, images: int) -> float:
    """Mean of per-map accuracies on the same ``images`` images, from the correct counts.

    A ratio of integers is rounded once, so maps that all score k/n give exactly k/n (the clean
    accuracy, at rate 0); a float mean of equal values may land one ulp off (three maps at
    332/359 average to 0.9247910863509748, not 0.924791086350975).
    """
    correct = np.rint(np.asarray(accuracies, dtype=np.float64) * images)
    return float(correct.sum() / (len(correct) * images))


def run_sweep(
    run_dir: str | Path, bers: Sequence[float], maps: int = 100, seed: int = 0,
    fault_model: str = "flip", force: bool = False, manifest: str | Path | None = None,
    map_batch: int = 25, rows: int = 8192, progress: bool = True, compile_post: bool = False,
    test_images: int = 0, ci_width: float = 0.0, method: str = "auto", progress_file: TextIO | None = None,
    images_flag: str = "--test-images", ci_flags: tuple[str, str] = ("--ci-width", "--maps"),
) -> dict:
    """Sweep ``bers`` on the run's test set; returns the record also written to ``sw_ber.json``.

    ``manifest``: take the memories (and so the (word, bit) -> weight mapping) from a FINN
    build's ``manifest.json`` instead of the natural layout. ``compile_post``: count the
    thresholds with ``torch.compile`` (a little faster for long sweeps, compiles once).
    ``test_images``: evaluate on the first N test images only (0 = all; for slow models).
    ``ci_width`` (accuracy points, 0 = off): at each rate, stop adding maps once the 95 %
    interval of the mean is narrower than this, at the latest after ``maps`` (statistical fault
    injection). Map ``i`` is the same map however the sampling stops, so a run that stops
    earlier holds a prefix of a longer run's maps. ``method``: the evaluator path
    (:class:`mcel_train.evaluate.MapEvaluator`). ``images_flag``: how the caller's user gave
    ``test_images``, for the note when it is more than the test set holds; ``ci_flags``: how
    they gave ``ci_width`` and ``maps``, for the note on rates whose interval stayed wider.
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "sweep"
    out_json, out_png = out_dir / "sw_ber.json", out_dir / "sw_ber.png"
    if maps < 1:
        raise UserInputError(f"maps must be >= 1, got {maps}")
    if not 0 <= ci_width < 100 or ci_width != ci_width:
        raise UserInputError(f"--ci-width must be in [0, 100) accuracy points, got {ci_width}")
    if not bers:
        raise UserInputError("no bit error rates given")
    fm = FaultModel.parse(fault_model)
    if not force and out_dir.exists():  # the folder, as atomic_stage checks it after the work
        shown = out_json if out_json.exists() else out_dir
        raise SweepExistsError(f"{shown} exists already; pass --force to replace it")
    run = load_source(run_dir)
    x, labels = run.test_set()
    if test_images < 0:
        raise UserInputError(f"test_images must be >= 0, got {test_images}")
    x, labels = first_images(x, labels, test_images, images_flag)
    if run.imported:  # no Brevitas module: the build's integer network, in the build's layout
        build = run_dir / "build"
        if not (build / "manifest.json").is_file():
            raise UserInputError(f"{run_dir} is an imported network: build it first (mcel build {run_dir}); "
                                 "its sweep uses the build's integer network")
        net = from_finn_build(build)
        x = x.reshape(len(x), -1)
        memories = build_memories(load_manifest(build), net)
        memory_source = "build"
    elif manifest is not None:
        net = from_brevitas(run.model)
        memories = _manifest_memories(Path(manifest), net)
        # which build: relative to the run folder (it said "manifest:build" for any build)
        memory_source = f"manifest:{os.path.relpath(Path(manifest).resolve(), Path(run_dir).resolve())}"
    else:
        net = from_brevitas(run.model)
        memories = net.memories()
        memory_source = "natural"
    evaluator = MapEvaluator(net, x, labels, memories=memories, rows=rows,
                             compile_post=compile_post, method=method)
    bits = stored_bits(memories, memory_contents(net, memories)) if fm.name == "asym" else None
    # Fail on a bad rate before spending time on the others (a kflips count past the memories'
    # bits is known only now), naming the flag
    for rate in bers:
        try:
            generate_map(memories, fm, rate, seed, 0, bits=bits)
        except FaultModelError as exc:
            raise UserInputError(f"--ber: {exc}") from None

    checkpoint = SweepCheckpoint(run_dir / CHECKPOINT, {
        "bers": [float(r) for r in bers], "maps": int(maps), "seed": int(seed), "fault_model": fm.to_dict(),
        "ci_width": float(ci_width), "n_test": int(len(labels)), "memory_source": memory_source,
        "weights": _fingerprint(memory_contents(net, memories))})
    results = checkpoint.load()
    if results:  # the record will equal an uninterrupted sweep's; say why this one was quicker
        print(f"note: resuming the interrupted sweep of {run_name(run_dir)}: {len(results)} of {len(bers)} rates "
              f"were finished (kept in {CHECKPOINT} in the run folder)", file=progress_file or sys.stderr)
    # rates finished before an interruption as the bar's start, not as an update: counted as
    # done in no time, they made the first line's speed "65365776 map/s"
    bar = progress_bar(total=len(bers) * maps, desc=f"sweep {run_name(run_dir)}", unit="map",
                       disable=not progress, file=progress_file, initial=len(results) * maps)
    for rate in bers[len(results):]:
        bar.set_postfix_str(f"rate {rate:g}")
        accs = np.empty(maps)
        n_faults = np.empty(maps)
        used = evaluated = maps
        reached = False  # the interval got narrower than ci_width before --maps ran out
        for idx in _batches(maps, map_batch):
            fmaps = [generate_map(memories, fm, rate, seed, i, bits=bits) for i in idx]
            accs[idx.start:idx.stop] = evaluator.evaluate(fmaps).accuracy
            n_faults[idx.start:idx.stop] = [len(f) for f in fmaps]
            bar.update(len(idx))
            if ci_width:
                done = maps_needed(accs[:idx.stop], ci_width)
                if done is not None:
                    used, evaluated, reached = done, idx.stop, True
                    break
        bar.update(maps - evaluated)  # the maps the interval made unnecessary
        accs, n_faults = accs[:used], n_faults[:used]
        mean = mean_accuracy(accs, len(labels))
        ci = accuracy_interval(accs, center=mean)
        results.append({
            "rate": float(rate),
            "mean": mean,
            "std": float(accs.std(ddof=1)) if used > 1 else 0.0,
            "ci95": list(ci) if ci else None,
            "maps": int(used),
            "faults_per_map_mean": float(n_faults.mean()),
            "accuracies": [float(a) for a in accs],
        })
        if ci_width:  # stopped by the interval, or by --maps with the interval still wider
            results[-1]["ci_width_reached"] = reached
        checkpoint.save(results)
    bar.close()
    wide = [r["rate"] for r in results if r.get("ci_width_reached") is False]
    if wide:
        print(f"note: at rate(s) {', '.join(f'{r:g}' for r in wide)} the 95 % interval is still wider than "
              f"{ci_flags[0]} {ci_width:g} after {ci_flags[1]} {maps} maps (ci_width_reached: false in the "
              f"record); raise {ci_flags[1]} for a narrower one", file=progress_file or sys.stderr)

    clean = clean_logits(net, x)
    record = {
        "format": SWEEP_FORMAT,
        "version": 1,
        "run": run_name(run_dir),
        "model": run.spec.to_dict() if run.spec is not None else None,
        "source": run.source if run.imported else {"kind": "trained"},
        "dataset": run.dataset,
        "n_test": int(len(labels)),
        "clean_accuracy": accuracy_of(clean, labels),
        "clean_tied_images": ties_of(clean),
        "fault_model": fm.to_dict(),
        "seed": int(seed),
        "maps": int(maps),
        "ci_width_target": float(ci_width) if ci_width else None,
        "memory_source": memory_source,
        NETWORK_FIELD: network_digest(run_dir),  # mcel plot checks it against the run's network now
        "memories": [m.to_dict() for m in memories],
        "prediction_rule": PREDICTION_RULE,
        "results": results,
    }
    with atomic_stage(out_dir, force=force) as tmp:  # checked before any work, and again here
        (tmp / out_json.name).write_text(json.dumps(record, indent=1) + "\n")
        plot_sweeps([(run_name(run_dir), record)], tmp / out_png.name)
    checkpoint.remove()
    return record


CHECKPOINT = ".sweep-checkpoint.json"  # in the run folder: the rates a sweep has finished


def _fingerprint(contents: dict[str, np.ndarray]) -> str:
    """SHA-256 of the swept memories' integer contents: a checkpoint of other weights is stale."""
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(contents[name], dtype=np.int64).tobytes())
    return digest.hexdigest()


class SweepCheckpoint:
    """The results of the rates a sweep has finished, so a killed sweep resumes at the next rate.

    Why: a full-test-set sweep of a large network takes an hour; a campaign killed at the end of
    a session would otherwise start it over. Map ``i`` of a rate is a pure function of the seed,
    so the resumed record equals an uninterrupted one. The checkpoint holds the sweep's
    parameters and the weights' fingerprint; any difference makes it stale (ignored).
    """

    def __init__(self, path: Path, params: dict) -> None:
        self.path, self.params = path, params

    def load(self) -> list[dict]:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(saved, dict) or saved.get("params") != self.params:
            return []
        return list(saved.get("results", []))

    def save(self, results: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"params": self.params, "results": results}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
