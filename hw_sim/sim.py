"""The simulation stage: fault maps into the Verilated accelerator, outputs and accuracy out.

``run_sim`` generates the maps (a pure function of manifest, fault model, rate, seed and map
index), predicts every map's outputs in software, runs all maps through one cocotb simulation of
the one Verilator build, and writes ``runs/NAME/sim/``:

- ``maps/rate<i>_map<k>.npz``: the fault maps, in the manifest's coordinates
- ``hw_outputs.npz`` / ``sw_outputs.npz``: per map and image, the accelerator's integer outputs
- ``hw_ber.json``: per rate and map its id, accuracy, cycles, hang flag, an output digest and
  the predicted classes; plus the run's parameters and timing
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from hw_sim.job import SimJob
from hw_sim.predict import fast_predict, finn_predict, split_map
from hw_sim.runner import build_harness, map_progress, run_job, runner_path_problem
from hw_sim.shards import MAX_SHARDS, auto_shards, image_slices, run_sharded
from hw_sim.streams import StreamFormat, pack
from hw_sim.transient import classify
from hw_sim.work_folder import PARTIAL, claim, release
from mcel_train.errors import UserError, UserInputError
from mcel_train.evaluate import memory_contents
from mcel_train.faults.faultmap import FaultMap
from mcel_train.faults.generate import FaultModel, generate_map, rate_problem, stored_bits
from mcel_train.intnet_finn import build_memories, from_finn_build
from mcel_train.manifest import MANIFEST_FILE, Manifest, load_manifest
from mcel_train.provenance import BUILD_FIELD, build_identity, check_build_is_the_runs
from mcel_train.runio import first_images, load_source
from mcel_train.stage import check_writable, run_name


class NoBuildError(UserError, FileNotFoundError):
    """The run folder has no build to simulate."""


class SimulationError(RuntimeError):
    """The simulation did not produce results (the message carries the log's tail)."""


class SimulationHangError(UserError, RuntimeError):
    """The accelerator stopped producing output on some map (the watchdog fired)."""


# The fast predictor's cross-check against FINN's execution: at least CROSSCHECK_MIN_IMAGES and up
# to CROSSCHECK_IMAGES images, within CROSSCHECK_FRACTION of the simulation's expected time (FINN's
# node-by-node Python execution takes about 1.6 s per image on the paper's VGG3): a layout error
# shows on any image, on the first ten as on the thousandth, and the check stays a small part of
# the run. The expected time counts SIM_CYCLES_PER_S, an upper end of what cocotb + Verilator
# reach here, so the budget errs short: with the simulator's main() driving the clock, up to about
# 98k cycles/s on the paper VGG3 (bench/results/hw_sim_vgg3.json) and 266k on sfc_w2a2 (10k
# images at 1024 cycles each in 38.5 s, one simulator; at the earlier 150k the prepare phase
# took 10.7 % of that simulation, 4.25 s of which the cross-check 3.57 s).
CROSSCHECK_IMAGES = 250
CROSSCHECK_MIN_IMAGES = 10
CROSSCHECK_FRACTION = 0.05
SIM_CYCLES_PER_S = 270_000.0


def crosscheck_seconds(expected_ii: int, images: int, maps: int) -> float:
    """The cross-check's time budget: a fraction of the simulation's expected wall time."""
    return CROSSCHECK_FRACTION * expected_ii * images * maps / SIM_CYCLES_PER_S


def load_build_manifest(run_dir: Path) -> Manifest:
    """The manifest of the run's build (one clear line when the run has no build)."""
    path = Path(run_dir) / "build" / MANIFEST_FILE
    if not path.is_file():
        raise NoBuildError(f"{run_dir} has no build ({path} missing): run `mcel build {run_dir}` first")
    return load_manifest(path.parent)


MAX_BATCH_IMAGES = 10_000


def check_sim_args(bers: list[float], maps: int, images: int, seed: int, fault_model: str, inject: str,
                   batch_images: int, predictor: str, memories: str, transient_cycle: int | None,
                   jobs: int = 1) -> None:
    """Every argument of a simulation, checked before anything is read or written; messages
    name the CLI flag."""
    if not bers:
        raise UserInputError("give at least one bit error rate (--ber)")
    fm = FaultModel.parse(fault_model)
    problem = rate_problem(bers, fm)
    if problem:
        raise UserInputError(f"--ber: {problem}")
    for flag, value, low in (("--maps", maps, 1), ("--images", images, 1), ("--seed", seed, 0),
                             ("--batch-images", batch_images, 1), ("--jobs", jobs, 0)):
        if not isinstance(value, int) or value < low:
            raise UserInputError(f"{flag} must be an integer >= {low}, got {value!r}")
    if batch_images > MAX_BATCH_IMAGES:  # the harness holds a batch's inputs and outputs in memory
        raise UserInputError(f"--batch-images: at most {MAX_BATCH_IMAGES} (the test set's size), got {batch_images}")
    if jobs > MAX_SHARDS:
        raise UserInputError(f"--jobs: at most {MAX_SHARDS} simulator processes (0: one per core), got {jobs}")
    if fm.name == "asym" and memories != "weights":
        # asym draws each bit's fault by its stored value, read here from the weights alone
        raise UserInputError("--fault-model asym puts faults in weight memories only: use --memories weights")
    if inject not in ("backdoor", "axilite"):
        raise UserInputError(f"--inject must be backdoor or axilite, got {inject!r}")
    if predictor not in ("fast", "finn"):
        raise UserInputError(f"--predictor must be fast or finn, got {predictor!r}")
    if memories not in MEMORY_CHOICES:
        raise UserInputError(f"--memories must be one of {', '.join(MEMORY_CHOICES)}, got {memories!r}")
    if transient_cycle is not None:
        if transient_cycle < 0 or inject != "backdoor":
            raise UserInputError("--transient-cycle needs a cycle >= 0 and --inject backdoor")
        if jobs > 1:
            raise UserInputError("--transient-cycle upsets one stream at one cycle: it needs --jobs 1")
    if predictor == "finn" and memories != "weights":
        raise UserInputError("--predictor finn predicts weight faults only (FINN's Python execution counts "
                             "thresholds where the hardware binary-searches them): use --predictor fast with "
                             "--memories thresholds/all")
    if inject == "axilite" and memories != "weights":
        raise UserInputError("--inject axilite writes weights only (thresholds have no AXI-lite port at "
                             "accel_top); use --inject backdoor with --memories thresholds/all")


MEMORY_CHOICES = {"weights": ("weights",), "thresholds": ("thresholds",), "all": ("weights", "thresholds")}


def fault_memories(manifest: Manifest, memories: str = "weights") -> list:
    """The memories a campaign's faults go into: weights, thresholds, or all of them."""
    if memories not in MEMORY_CHOICES:
        raise UserInputError(f"--memories must be one of {', '.join(MEMORY_CHOICES)}, got {memories!r}")
    if memories != "weights" and not manifest.thresholds:
        raise UserInputError("the build's manifest lists no threshold memories; use --memories weights")
    return manifest.fault_memories(MEMORY_CHOICES[memories])


def make_maps(manifest: Manifest, bers: list[float], maps: int, seed: int, fault_model: str,
              out_dir: Path, memories: str = "weights") -> list[dict]:
    """Generate and save every map; rate 0 gets a single empty map (all its maps are equal)."""
    memories = fault_memories(manifest, memories)
    bits = None
    if FaultModel.parse(fault_model).name == "asym":  # a 1 may fall and a 0 rise: the stored bits
        net = from_finn_build(manifest.build_dir)
        bits = stored_bits(memories, memory_contents(net, build_memories(manifest, net)))
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for r, ber in enumerate(bers):
        for k in range(1 if ber == 0 else maps):
            fmap = generate_map(memories, fault_model, ber, seed, k, bits=bits)
            path = fmap.save(out_dir / f"rate{r}_map{k}.npz")
            entries.append({"id": len(entries), "rate": ber, "map_index": k, "faults": len(fmap),
                            "file": str(path.resolve())})  # made relative when the result is written
    return entries


def digest(outputs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(outputs, dtype=np.int64).tobytes()).hexdigest()[:16]


def prepare_sim(run_dir: Path, bers: list[float], maps: int = 5, images: int = 1000, seed: int = 0,
                fault_model: str = "flip", inject: str = "backdoor", batch_images: int = 1000,
                predictor: str = "fast", force: bool = False, watchdog_cycles: int | None = None,
                backpressure: bool = False, crosscheck_maps: int = 2, memories: str = "weights",
                transient_cycle: int | None = None, rate_flag: str = "--ber", owner: int | None = None,
                images_flag: str = "--images") -> SimJob:
    """Maps, packed inputs and software predictions in ``sim/.partial``; returns the job.
    On any failure the work folder is removed again (and ``sim/`` if this call made it).
    ``rate_flag``, ``images_flag``: how the caller's user gave the rates and the image count
    (``--ber``/``--images``; ``BER=``/``IMAGES=`` in the make flow; ``hardware.ber``/``hardware.images``
    in a campaign file).
    ``owner``: the process the work folder is claimed for (:mod:`hw_sim.work_folder`; default
    this one).

    ``memories``: where the faults go, ``weights`` (default), ``thresholds`` or ``all``.
    ``transient_cycle``: flip each map's bits that many cycles after streaming starts instead of
    before it (one batch of ``images``; see :mod:`hw_sim.transient`).
    """
    run_dir = Path(run_dir)
    check_sim_args(bers, maps, images, seed, fault_model, inject, batch_images, predictor, memories,
                   transient_cycle)
    if transient_cycle is not None:
        batch_images = max(batch_images, images)  # one batch: the upset cycle counts from its start
    manifest = load_build_manifest(run_dir)
    for entry in manifest.memories:  # every init file the RTL loads, read now: a missing one is a
        manifest.words(entry.name)   # wrong simulation later ($readmem only warns), not an error
    source = load_source(run_dir)  # a missing or damaged training is named before the provenance check reads it
    check_build_is_the_runs(run_dir, manifest)
    if inject == "axilite" and not manifest.axilite_ports:
        raise UserInputError(f"{run_dir}/build has no AXI-lite weight ports at accel_top: "
                             "rebuild with runtime-writeable weights (mcel build --runtime-writeable)")
    sim_dir = run_dir / "sim"
    check_writable(sim_dir / "hw_ber.json", force)
    if FaultModel.parse(fault_model).name == "kflips":  # the count's bound is the build's: known only now
        total = int(sum(m.n_bits for m in fault_memories(manifest, memories)))
        over = [b for b in bers if b > total]
        if over:
            raise UserInputError(f"{rate_flag}: kflips flips at most the {total} bits of the {memories} memories, "
                                 f"got {over[0]:g}")
    x, labels = first_images(*source.test_inputs(0), images, images_flag)
    images = len(labels)
    in_fmt = StreamFormat.from_manifest(manifest.streams.input)
    words = pack(x.reshape(len(x), -1), in_fmt)
    owner = os.getpid() if owner is None else owner
    made_sim_dir = not sim_dir.exists()
    work = claim(sim_dir, owner)
    try:
        return _prepare_in(work, run_dir, manifest, x, labels, words, bers, maps, images, seed, fault_model,
                           inject, batch_images, predictor, watchdog_cycles, backpressure, crosscheck_maps,
                           memories, transient_cycle)
    except BaseException:
        release(sim_dir, owner)
        if made_sim_dir:
            shutil.rmtree(sim_dir, ignore_errors=True)
        raise


def _prepare_in(work: Path, run_dir: Path, manifest: Manifest, x: np.ndarray, labels: np.ndarray,  # noqa: PLR0913
                words: np.ndarray, bers: list[float], maps: int, images: int, seed: int, fault_model: str,
                inject: str, batch_images: int, predictor: str, watchdog_cycles: int | None, backpressure: bool,
                crosscheck_maps: int, memories: str, transient_cycle: int | None) -> SimJob:
    """:func:`prepare_sim`'s work, every file in ``work``."""
    t0 = time.perf_counter()
    entries = make_maps(manifest, bers, maps, seed, fault_model, work / "maps", memories)
    fmaps = [FaultMap.load(e["file"]) for e in entries]
    t_maps = time.perf_counter()
    record_check = None
    if predictor == "fast":
        # The batched integer evaluator, cross-checked on a few maps (the clean one and the
        # first faulty ones) against FINN's Python execution of the faulty graph.
        # The clean prediction rides along for transient upsets (images before the upset).
        predicted = fast_predict(run_dir / "build", x, [*fmaps, None])
        t_predict = time.perf_counter()
        clean, predicted = predicted[-1], predicted[:-1]
        if transient_cycle is not None:
            np.save(work / "predicted_clean.npy", clean[None])
        # The cross-check: the clean map and the first faulty ones. FINN executes thresholds as a
        # count, the RTL as a binary search: they agree only on sorted thresholds, so maps with
        # threshold faults are not cross-checked against FINN.
        thr = set(manifest.thresholds)
        check = [i for i, f in enumerate(fmaps) if len(f) and not len(split_map(f, thr)[1])][:crosscheck_maps]
        budget = crosscheck_seconds(manifest.expected_ii() or 1000, images, len(fmaps))
        t_check = time.perf_counter()
        reference = finn_predict(run_dir / "build", x[:CROSSCHECK_IMAGES], [None, *(fmaps[i] for i in check)],
                                 seconds=budget, min_images=CROSSCHECK_MIN_IMAGES)
        record_check = {"images": len(reference[0]), "maps": ["clean", *check], "budget_s": round(budget, 2),
                        "seconds": round(time.perf_counter() - t_check, 2)}
        for ref, got, name in zip(reference, [clean, *(predicted[i] for i in check)],
                                  ["the clean map", *(f"map {i}" for i in check)], strict=True):
            if not np.array_equal(ref, got[: len(ref)]):
                raise SimulationError(f"fast software prediction differs from FINN's execution on {name}")
    elif predictor == "finn":
        predicted = finn_predict(run_dir / "build", x, fmaps)
        if transient_cycle is not None:
            np.save(work / "predicted_clean.npy", finn_predict(run_dir / "build", x, [None]))
    np.save(work / "inputs.npy", words)
    np.save(work / "predicted.npy", predicted)
    np.save(work / "labels.npy", labels)
    expected_ii = manifest.expected_ii() or 1000
    job = SimJob(
        manifest=str((run_dir / "build" / MANIFEST_FILE).resolve()),
        inputs=str((work / "inputs.npy").resolve()),
        predicted=str((work / "predicted.npy").resolve()),
        maps=[e["file"] for e in entries],
        batch_images=min(batch_images, images),
        watchdog_cycles=watchdog_cycles or 20 * expected_ii + 1000,
        backpressure=backpressure,
        inject=inject,
        memory_kinds=list(MEMORY_CHOICES[memories]),
        transient_cycle=transient_cycle,
        out=str((work / "hw_raw.npz").resolve()),
    )
    record = {
        "run": run_name(run_dir), "bers": bers, "maps_per_rate": maps, "images": images, "seed": seed,
        "fault_model": fault_model, "inject": inject, "predictor": predictor, "backpressure": backpressure,
        "memories": memories, "transient_cycle": transient_cycle,
        "expected_ii_cycles": expected_ii, BUILD_FIELD: build_identity(run_dir), "seconds": {
            "prepare": round(time.perf_counter() - t0, 2), "prepare_maps": round(t_maps - t0, 2),
            **({"prepare_predict": round(t_predict - t_maps, 2)} if predictor == "fast" else {})},
        "crosscheck_against_finn": record_check,
        "maps": entries,
    }
    job.save(work / "job.json")
    (work / "record.json").write_text(json.dumps(record, indent=1))
    return job


def finish_sim(run_dir: Path, extra: dict | None = None) -> Path:
    """Turn the testbench's raw outputs into ``hw_ber.json`` and move everything in place."""
    sim_dir = Path(run_dir) / "sim"
    work = sim_dir / PARTIAL
    job = SimJob.load(work / "job.json")
    record = json.loads((work / "record.json").read_text())
    record.update(extra or {})
    if not Path(job.out).is_file():
        logs = sorted(sim_dir.glob("work/*/sim.log")) + sorted(sim_dir.glob("make/*.log"))
        tail = "\n".join(logs[-1].read_text().splitlines()[-25:]) if logs else "(no log)"
        raise SimulationError(f"the cocotb simulation produced no results; last log:\n{tail}")
    raw = np.load(job.out)
    hw, predicted, labels = raw["outputs"], np.load(job.predicted), np.load(work / "labels.npy")
    if hw.shape[:2] != predicted.shape[:2] or hw.shape[1] != len(labels):  # e.g. an older simulation's
        raise SimulationError(f"the simulator's outputs ({hw.shape[0]} maps x {hw.shape[1]} images) are not this "
                              f"run's ({predicted.shape[0]} x {len(labels)}); simulate again")
    checked = np.ones(hw.shape[:2], dtype=bool)
    transients = [None] * len(hw)
    if job.transient_cycle is not None:

        clean = np.load(work / "predicted_clean.npy")[0]
        predicted = predicted.copy()
        rate_of = {e["id"]: e["rate"] for e in record["maps"]}
        for m in range(len(hw)):
            if rate_of.get(m) == 0:  # no fault to upset: every image must equal the clean prediction
                continue
            t = classify(hw[m], clean, predicted[m], raw["in_cycles"][m], raw["out_cycles"][m],
                         int(raw["upset_cycles"][m]))
            predicted[m], checked[m] = t.pop("prediction"), t.pop("checked")
            transients[m] = t
    timing = {k: raw[k] for k in ("in_cycles", "out_cycles", "upset_cycles") if k in raw.files}
    np.savez(work / "hw_outputs.npz", outputs=hw, labels=labels, **timing)
    np.savez(work / "sw_outputs.npz", outputs=predicted, labels=labels, checked=checked)
    images = len(labels)
    # Output cycles that waited for tready: more than 0 proves that back-pressure was applied.
    stalled = raw["stalled_cycles"] if "stalled_cycles" in raw.files else np.zeros(len(hw), np.int64)
    for e, out, cyc, hang, ii in zip(record["maps"], hw, raw["cycles"], raw["hang"], raw["ii"], strict=True):
        e["stalled_output_cycles"] = int(stalled[e["id"]])
        e.update({
            "accuracy": float((out.argmax(1) == labels).mean()), "cycles": int(cyc), "hang": bool(hang),
            "cycles_per_image": float(cyc) / images, "ii_cycles": float(ii), "digest": digest(out),
            "predicted_accuracy": float((predicted[e["id"]].argmax(1) == labels).mean()),
            "first_differing_image": _first_differing(raw, e["id"], out, predicted[e["id"]], checked[e["id"]]),
            "predicted_classes": predicted[e["id"]].argmax(1).tolist(),
        })
        e["checked_images"] = int(checked[e["id"]].sum())  # a transient upset checks only some
        # no image checked proves nothing: not identical (nor differing: first_differing_image is None)
        e["identical_to_software"] = e["first_differing_image"] is None and e["checked_images"] > 0
        if transients[e["id"]] is not None:
            e["transient"] = transients[e["id"]]
        e["file"] = f"maps/{Path(e['file']).name}"  # relative to the sim folder
    record["sim_wall_s_per_map"] = raw["wall"].tolist()
    result_path = sim_dir / "hw_ber.json"
    (work / "hw_ber.json").write_text(json.dumps(record, indent=1))
    for name in ("maps", "hw_outputs.npz", "sw_outputs.npz", "hw_ber.json"):
        target = sim_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        (work / name).replace(target)
    for stale in ("compare.json", "compare.png"):  # they described the simulation just replaced
        (sim_dir / stale).unlink(missing_ok=True)
    hung = [e["id"] for e in record["maps"] if e["hang"]]
    if hung:
        raise SimulationHangError(
            f"hang: the accelerator stopped producing output (watchdog {job.watchdog_cycles} cycles) "
            f"on maps {hung}; results with hang flags in {result_path}"
        )
    return result_path


def _first_differing(raw, map_id: int, hw: np.ndarray, predicted: np.ndarray, checked: np.ndarray) -> int | None:
    """The verdict for one map: the testbench's scoreboard's first differing image (``None``: all
    identical). Transient upsets are judged here instead: only the images that left before the
    upset or entered after it have a prediction (hw_sim/transient.py)."""
    if "first_differing" in raw.files and raw["first_differing"][map_id] >= -1 and checked.all():
        first = int(raw["first_differing"][map_id])
        return None if first < 0 else first
    diff = np.flatnonzero((hw != predicted).any(axis=1) & checked)
    return int(diff[0]) if diff.size else None


def run_sim(run_dir: Path, bers: list[float], maps: int = 5, images: int = 1000, seed: int = 0,
            fault_model: str = "flip", inject: str = "backdoor", batch_images: int = 1000,
            predictor: str = "fast", force: bool = False, waves: bool = False,
            watchdog_cycles: int | None = None, backpressure: bool = False, memories: str = "weights",
            transient_cycle: int | None = None, jobs: int = 0, pgo: bool = False, rate_flag: str = "--ber",
            images_flag: str = "--images") -> Path:
    """Simulate every (rate, map) on ``images`` test images; returns the ``hw_ber.json`` path.

    ``jobs``: simulator processes, each on a slice of the images (:mod:`hw_sim.shards`);
    0 picks one per core for large image counts. A transient upset runs as one process.
    ``pgo``: a profile-guided simulator build (trained on the first images with clean
    memories; about twice the build time for 15-20 % faster simulation, for long runs).
    ``rate_flag``, ``images_flag``: as :func:`prepare_sim` takes them (for messages).
    """
    run_dir = Path(run_dir)
    check_sim_args(bers, maps, images, seed, fault_model, inject, batch_images, predictor, memories,
                   transient_cycle, jobs)
    problem = runner_path_problem(run_dir)
    if problem and not (run_dir / "sim" / "sim_build" / "build_stamp.json").is_file():
        # no simulator to reuse (one built elsewhere and moved here works): it would be built here
        raise UserInputError(f"{run_dir}: the simulator must be built here, and {problem}")
    if transient_cycle is not None or waves:
        jobs = 1  # one stream to upset; one waveform to read
    t0 = time.perf_counter()
    try:
        return _simulate(run_dir, bers, maps, images, seed, fault_model, inject, batch_images, predictor, force,
                         waves, watchdog_cycles, backpressure, memories, transient_cycle, jobs, pgo, t0, rate_flag,
                         images_flag)
    finally:  # nothing half-written stays behind (the results were moved in place on success)
        release(run_dir / "sim", os.getpid())


def _simulate(run_dir: Path, bers, maps, images, seed, fault_model, inject, batch_images, predictor, force,
              waves, watchdog_cycles, backpressure, memories, transient_cycle, jobs, pgo, t0, rate_flag,
              images_flag) -> Path:

    job = prepare_sim(run_dir, bers, maps, images, seed, fault_model, inject, batch_images, predictor,
                      force, watchdog_cycles, backpressure, memories=memories, transient_cycle=transient_cycle,
                      rate_flag=rate_flag, images_flag=images_flag)
    # the test set may hold fewer images than asked: prepare_sim's record says how many it took
    images = int(json.loads((Path(job.inputs).parent / "record.json").read_text())["images"])
    # as many processes as there are non-empty image slices (what hw_ber.json records as run)
    shards = len(image_slices(images, jobs or auto_shards(images, len(os.sched_getaffinity(0)))))
    # The harness is sized for batch_images whatever the image count, so one build serves all runs.
    build = build_harness(run_dir / "build", run_dir / "sim", max(batch_images, job.batch_images), waves=waves,
                          pgo_job=job if pgo else None)
    t_sim = time.perf_counter()
    for old in (run_dir / "sim" / "work").glob("sim_shard*"):  # an earlier run's shards (this run holds sim/)
        shutil.rmtree(old, ignore_errors=True)
    names = [f"sim_shard{i}" for i in range(shards)] if shards > 1 else ["sim"]  # as run_sharded names them
    with map_progress([run_dir / "sim" / "work" / n / "sim.log" for n in names], len(job.maps),
                      f"simulating {len(job.maps)} maps x {images} images"
                      + (f" in {len(names)} simulators" if len(names) > 1 else "")):
        if shards > 1:
            run_sharded(run_dir / "sim", job, shards, name="sim")
        else:
            run_job(run_dir / "sim", job, name="sim", waves=waves)
    seconds = {"simulate": round(time.perf_counter() - t_sim, 2), "total": round(time.perf_counter() - t0, 2)}
    return finish_sim(run_dir, {"build": build, "seconds_run": seconds, "flow": "python runner",
                                "simulator_processes": shards})
