"""The make flow (``make -C hw_sim ...``) takes its variables as data, never as code.

Why these cases: a tester found that ``RUN='x;touch pwned;#'`` and ``BER='0;touch pwned;#'`` ran
the ``touch`` (variables went unquoted into shell recipes), a RUN with a space was split, a RUN
without a build gave a traceback, and the flow silently replaced ``sim/hw_ber.json``. Every case
runs the real ``make -C hw_sim`` (hw_sim/Makefile -> hw_sim/make_flow.py) and checks: no
``pwned`` file anywhere under the repository or the working directory, exit status 2, one
``error:`` line naming the variable, and every file of the run folder unchanged (hashed before
and after). None of the rejected cases needs a built accelerator; the ones that simulate are
``slow`` (they build the smoke run of tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hw_sim.make_flow import VARIABLES, MakeVariableError, sources_makefile

REPO = Path(__file__).resolve().parents[1]
HW_SIM = REPO / "hw_sim"
MARKER = "pwned"


def run_make(args: list[str], cwd: Path, timeout: float = 120,
             extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``make -C hw_sim ARGS`` as a user types it, without this process's make state or variables
    (``extra_env``: variables exported in the user's environment)."""
    env = {k: v for k, v in os.environ.items()
           if k not in VARIABLES and not k.startswith("MCEL_MAKE_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(extra_env or {})
    return subprocess.run(["make", "-C", str(HW_SIM), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, a link's target, ``dir`` for a folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def markers(*roots: Path) -> set[Path]:
    """Files named like the injected ``touch`` target under ``roots`` (the virtual env and git
    metadata skipped)."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".venv", ".git")]
            found |= {Path(dirpath) / f for f in filenames if f.startswith(MARKER)}
    return found


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without make's own ``make: *** [...] Error 2`` trailer."""
    return [line for line in proc.stderr.splitlines() if not line.startswith(("make: ", "make["))]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A folder of run folders that need no real build: validation stops before reading one.

    ``a``: a build manifest (never parsed by the rejected cases); ``done``: a result of an
    earlier simulation; ``a b``: a space in the path; ``empty``: no build.
    """
    root = tmp_path / "runs"
    for name in ("a", "done", "a b"):
        (root / name / "build").mkdir(parents=True)
        (root / name / "build" / "manifest.json").write_text('{"version": 2}')
        (root / name / "train").mkdir()
        (root / name / "train" / "config.yaml").write_text("model: x\n")
    (root / "done" / "sim").mkdir()
    (root / "done" / "sim" / "hw_ber.json").write_text('{"maps": []}')
    (root / "empty").mkdir()
    return root


# (case, arguments with {runs} for the runs folder, variable the message names, words in it)
REJECTED = [
    ("run_shell", ["RUN=x;touch pwned;#"], "RUN", "no run folder"),
    ("run_make_shell", ["RUN=$(shell touch pwned)"], "RUN", "no run folder"),
    ("run_backquote", ["RUN=`touch pwned`"], "RUN", "no run folder"),
    ("ber_shell", ["RUN={runs}/a", "BER=0;touch pwned;#"], "BER", "is not a number"),
    ("ber_make_shell", ["RUN={runs}/a", "BER=$(shell touch pwned)"], "BER", "is not a number"),
    ("ber_subshell", ["RUN={runs}/a", "BER=$$(touch pwned)"], "BER", "is not a number"),
    ("maps_shell", ["RUN={runs}/a", "MAPS=5;touch pwned"], "MAPS", "whole number"),
    ("seed_shell", ["RUN={runs}/a", "SEED=0 && touch pwned"], "SEED", "whole number"),
    ("images_shell", ["RUN={runs}/a", "IMAGES=10|touch pwned"], "IMAGES", "whole number"),
    ("jobs_shell", ["RUN={runs}/a", "JOBS=2;touch pwned"], "JOBS", "whole number"),
    ("sim_shell", ["RUN={runs}/a", "SIM=verilator;touch pwned;#"], "SIM", "Verilator only"),
    ("waves_shell", ["RUN={runs}/a", "WAVES=1;touch pwned"], "WAVES", "0 or 1"),
    ("pgo_shell", ["RUN={runs}/a", "PGO=1;touch pwned"], "PGO", "0 or 1"),
    ("force_shell", ["RUN={runs}/done", "FORCE=1;touch pwned"], "FORCE", "0 or 1"),
    ("fault_model_shell", ["RUN={runs}/a", "FAULT_MODEL=flip;touch pwned"], "FAULT_MODEL", "unknown fault model"),
    ("run_missing", [], "RUN", "is required"),
    ("run_nowhere", ["RUN=nowhere"], "RUN", "no run folder"),
    ("run_space_no_folder", ["RUN={runs}/no such run"], "RUN", "no run folder"),
    ("run_space", ["RUN={runs}/a b"], "RUN", "white space"),
    ("run_no_build", ["RUN={runs}/empty"], "RUN", "has no build"),
    ("run_stage_folder", ["RUN={runs}/a/train"], "RUN", "is a stage folder of the run"),
    ("ber_above_one", ["RUN={runs}/a", "BER=0,1.5"], "BER", "in [0, 1]"),
    ("ber_negative", ["RUN={runs}/a", "BER=-0.01"], "BER", "in [0, 1]"),
    ("ber_nan", ["RUN={runs}/a", "BER=nan"], "BER", "in [0, 1]"),
    ("ber_twice", ["RUN={runs}/a", "BER=0.01,0.01"], "BER", "listed twice"),
    ("ber_kflips_fraction", ["RUN={runs}/a", "FAULT_MODEL=kflips", "BER=0,2.5"], "BER", "whole flip counts"),
    ("ber_none", ["RUN={runs}/a", "BER=,"], "BER", "at least one"),
    ("maps_zero", ["RUN={runs}/a", "MAPS=0"], "MAPS", "from 1"),
    ("images_zero", ["RUN={runs}/a", "IMAGES=0"], "IMAGES", "from 1"),
    ("images_float", ["RUN={runs}/a", "IMAGES=1e3"], "IMAGES", "whole number"),
    ("seed_negative", ["RUN={runs}/a", "SEED=-1"], "SEED", "from 0"),
    ("jobs_negative", ["RUN={runs}/a", "JOBS=-2"], "JOBS", "from 0"),
    ("sim_icarus", ["RUN={runs}/a", "SIM=icarus"], "SIM", "Verilator only"),
    ("waves_yes", ["RUN={runs}/a", "WAVES=yes"], "WAVES", "0 or 1"),
    ("fault_model_param", ["RUN={runs}/a", "FAULT_MODEL=asym:p01=x"], "FAULT_MODEL", "want k=v"),
    ("ber_asym_past_one", ["RUN={runs}/a", "FAULT_MODEL=asym:p10=5", "BER=0,0.5"], "BER", "rate x p10"),
    ("fault_model_infinite", ["RUN={runs}/a", "FAULT_MODEL=asym:p10=inf"], "FAULT_MODEL", "finite"),
    ("jobs_huge", ["RUN={runs}/a", "JOBS=999999999"], "JOBS", "at most 256"),
    ("overwrite", ["RUN={runs}/done"], None, "FORCE=1"),
    ("force_bad_manifest", ["RUN={runs}/done", "FORCE=1"], "RUN", "manifest"),
]


@pytest.mark.parametrize("case,args,variable,words", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_input_changes_nothing(case, args, variable, words, runs, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before, markers_before = tree(tmp_path), markers(REPO, tmp_path)
    proc = run_make([a.format(runs=runs) for a in args], cwd)
    assert markers(REPO, tmp_path) == markers_before, "an injected command ran"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if variable is not None:
        assert lines[0].startswith(f"error: {variable}="), lines[0]
    assert words in lines[0]
    assert tree(tmp_path) == before, "a rejected run changed files"


def test_misspelt_and_environment_variables_run_nothing_and_are_named(runs, tmp_path):
    """A misspelt variable's value was still expanded by make for every recipe (``FOO=$(shell
    touch ...)`` ran), and an exported ``FORCE=1`` (a CI job's) silently allowed replacing a
    result: settings come from the command line only, and the ignored ones are named."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before, markers_before = tree(tmp_path), markers(REPO, tmp_path)
    proc = run_make([f"RUN={runs}/done", f"FOO=$(shell touch {tmp_path}/{MARKER})"], cwd)
    assert markers(REPO, tmp_path) == markers_before, "a misspelt variable's value ran"
    assert proc.returncode == 2 and "does not take FOO=" in error_lines(proc)[0]
    # mcel sim's own settings: they were dropped with a warning and a plain simulation replaced
    # the last result; refused like a misspelt one, before any work
    proc = run_make([f"RUN={runs}/done", "INJECT=axilite", "TRANSIENT_CYCLE=500", "FORCE=1"], cwd)
    assert proc.returncode == 2 and "does not take TRANSIENT_CYCLE= INJECT=" in error_lines(proc)[0]
    assert "mcel sim's only" in error_lines(proc)[0]
    proc = run_make([f"RUN={runs}/done"], cwd, extra_env={"FORCE": "1", "IMAGES": "3"})
    assert proc.returncode == 2, proc.stderr  # refused to replace: FORCE=1 came from the environment
    assert "ignores IMAGES FORCE from the environment" in proc.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize("target", ["lint", "test", "bench"])
def test_the_top_makefiles_venv_is_never_shell_code(target, tmp_path):
    """The README's Makefile pasted VENV= into its recipes (``"$(VENV)/bin/ruff"``), so a value
    with a quote ran the command after it; the recipes now read the exported variable."""
    marker = tmp_path / "ran"
    for venv in (f'{tmp_path}/v";touch {marker};"', f"$(shell touch {marker})"):  # shell, then make syntax
        proc = subprocess.run(["make", "-C", str(REPO), "-o", "setup", target, f"VENV={venv}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and not marker.exists(), (venv, proc.stderr)


def test_kflips_counts_pass_every_rate_check():
    """kflips' rates are flip counts: the make flow, mcel sim and mcel sweep take counts above 1
    (each used to refuse them as rates outside [0, 1]) and refuse fractions."""
    import argparse

    from hw_sim.sim import check_sim_args
    from mcel_train.commands_faults import _rates
    from mcel_train.errors import UserInputError
    from mcel_train.faults.generate import rate_problem

    assert rate_problem([0, 3, 40], "kflips") is None and rate_problem([0, 0.5], "flip") is None
    check_sim_args([0.0, 3.0], 1, 10, 0, "kflips", "backdoor", 10, "fast", "weights", None)
    with pytest.raises(UserInputError, match="--ber: the kflips fault model takes whole flip counts"):
        check_sim_args([2.5], 1, 10, 0, "kflips", "backdoor", 10, "fast", "weights", None)
    with pytest.raises(UserInputError, match=r"--ber: bit error rates must be in \[0, 1\]"):
        check_sim_args([3.0], 1, 10, 0, "flip", "backdoor", 10, "fast", "weights", None)
    assert _rates("0,3") == [0.0, 3.0]
    with pytest.raises(argparse.ArgumentTypeError):
        _rates("0,-1")


def test_run_with_a_space_is_one_argument(runs, tmp_path):
    """The whole path reaches the check (and its message) as one value, not split at the space."""
    proc = run_make([f"RUN={runs}/no such run", "MAPS=1"], tmp_path)
    assert proc.returncode == 2
    assert f"RUN='{runs}/no such run'" in error_lines(proc)[0]


def test_sources_makefile_keeps_the_run_path_out_of_make(tmp_path):
    """sources.mk names the sources relative to the make folder, so a run folder whose path
    holds make and shell syntax cannot inject: make reads back exactly the intended list."""
    run = tmp_path / "r;$(shell touch pwned)#'x\"$$y"
    make_dir = run / "sim" / "make"
    make_dir.mkdir(parents=True)
    sources = [run / "build" / "hdl" / "a.sv", run / "build" / "hdl" / "mvu" / "b.sv", make_dir / "tb_harness.sv"]
    (make_dir / "sources.mk").write_text(sources_makefile(sources, make_dir, str(run)))
    (make_dir / "probe.mk").write_text("include sources.mk\nall:\n\t@printf '%s\\n' $(VERILOG_SOURCES)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-s", "-f", "probe.mk"], cwd=make_dir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == ["../../build/hdl/a.sv", "../../build/hdl/mvu/b.sv", "tb_harness.sv"]
    assert not markers(tmp_path)


@pytest.mark.parametrize("name", ["with space.sv", "x;y.sv", "$(shell touch pwned).sv", "a#b.sv", "-x.sv"])
def test_sources_makefile_refuses_an_unsafe_source(name, tmp_path):
    make_dir = tmp_path / "run" / "sim" / "make"
    with pytest.raises(MakeVariableError, match=r"^RUN='run': the HDL source"):
        sources_makefile([make_dir / name], make_dir, "run")


# --- with a real build (slow) ------------------------------------------------------------------


def linked_run(build_run: Path, run: Path) -> Path:
    """A run folder that shares ``build_run``'s training and build (links), with its own sim/."""
    run.mkdir(parents=True)
    for part in ("train", "export", "build"):
        if (build_run / part).exists():
            (run / part).symlink_to(build_run / part)
    return run


def test_kflips_count_past_the_builds_bits_is_one_line_and_leaves_no_work(smoke_build, tmp_path):
    """A kflips count above the build's bit count is known only once the build is read: it is
    refused then, naming BER=, before any map is written (it used to fail in the map generator,
    naming no variable, and leave RUN/sim/.partial behind)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = linked_run(smoke_build, tmp_path / "r")
    proc = run_make([f"RUN={run}", "FAULT_MODEL=kflips", "BER=0,999999999", "MAPS=1", "IMAGES=5"], cwd)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: BER=0,1e+09: kflips flips at most the ") and "weights memories" in lines[0]
    assert not (run / "sim").exists(), "the refused run left files"


@pytest.mark.slow
def test_jobs2_equals_mcel_sim_jobs2_and_refuses_overwrite(smoke_build, tmp_path):
    """JOBS=2 on a run folder whose path holds make and shell syntax: every map identical to the
    software prediction, two simulator processes, one results.xml, and the same outputs as
    ``mcel sim --jobs 2``. A second run without FORCE=1 is refused and changes nothing."""
    from hw_sim.sim import run_sim

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # (one `$` only: two would make hw_sim/compare.py's plot title matplotlib mathtext)
    run = linked_run(smoke_build, tmp_path / "r;touch${IFS}pwned;#'q\"&")
    args = [f"RUN={run}", "BER=0,0.02", "MAPS=2", "SEED=4", "IMAGES=60", "JOBS=2"]
    (run / "sim" / "make").mkdir(parents=True)
    (run / "sim" / "make" / "sim_shard5.log").write_text("an earlier run's, with six simulators")
    proc = run_make(args, cwd, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not markers(REPO, tmp_path)
    record = json.loads((run / "sim" / "hw_ber.json").read_text())
    assert record["flow"] == "make" and record["simulator_processes"] == 2 and len(record["maps"]) == 3
    # the logs are this run's only, and the record's total time spans prepare to finish, as mcel sim's
    assert sorted(p.name for p in (run / "sim" / "make").glob("sim*.log")) == ["sim_shard0.log", "sim_shard1.log"]
    assert record["seconds_run"]["total"] > record["seconds_run"]["simulate"] > 0
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    results = (run / "sim" / "make" / "results.xml").read_text()
    assert results.count("<testcase") == 2 and "<failure" not in results

    before = tree(run / "sim")
    again = run_make(args, cwd)
    assert again.returncode == 2 and "FORCE=1" in error_lines(again)[0]
    assert tree(run / "sim") == before

    # `mcel sim --jobs 2` on the same build (its own folder: its runner cannot take this path)
    plain = linked_run(smoke_build, tmp_path / "plain")
    python = json.loads(run_sim(plain, [0.0, 0.02], maps=2, images=60, seed=4, jobs=2).read_text())
    assert python["simulator_processes"] == 2
    assert [(m["rate"], m["map_index"], m["digest"], m["cycles"]) for m in python["maps"]] == \
        [(m["rate"], m["map_index"], m["digest"], m["cycles"]) for m in record["maps"]]
    np.testing.assert_array_equal(np.load(run / "sim" / "hw_outputs.npz")["outputs"],
                                  np.load(plain / "sim" / "hw_outputs.npz")["outputs"])


@pytest.mark.slow
def test_pgo_builds_with_a_profile_and_force_replaces(smoke_build, tmp_path):
    """PGO=1: an instrumented build, a profile, a rebuild with it (as ``mcel sim --pgo``), the
    outputs still identical to software; FORCE=1 replaces the earlier result of a plain build
    in the same folder, whose objects must not survive into the profile-guided build."""
    run = linked_run(smoke_build, tmp_path / "pgo")
    first = run_make([f"RUN={run}", "BER=0", "MAPS=1", "IMAGES=20", "JOBS=1"], tmp_path, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert not json.loads((run / "sim" / "hw_ber.json").read_text())["build"]["pgo"]
    proc = run_make([f"RUN={run}", "BER=0,0.02", "MAPS=2", "IMAGES=60", "JOBS=1", "PGO=1", "FORCE=1"],
                    tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((run / "sim" / "hw_ber.json").read_text())
    assert record["build"]["pgo"] and len(record["maps"]) == 3
    assert list((run / "sim" / "make" / "sim_build").glob("*.gcda"))
    assert "-fprofile-use" in (run / "sim" / "make" / "build.log").read_text()
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working directory lies under ``folder`` (cocotb's make, the compiler, the
    simulator: they all run in the run's ``sim/make``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd == folder or folder in cwd.parents:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_killing_make_alone_stops_its_simulator_and_frees_the_run(smoke_build, tmp_path):
    """``kill -9`` of the make process alone used to leave the flow's Python, cocotb's make and the
    simulator running; the next run was then allowed and the old simulator wrote its outputs into
    it. Now the simulator's process group ends with the make that ran it, and the next run works."""
    run = linked_run(smoke_build, tmp_path / "killed")
    env = {k: v for k, v in os.environ.items()
           if k not in VARIABLES and not k.startswith("MCEL_MAKE_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make = subprocess.Popen(["make", "-C", str(HW_SIM), f"RUN={run}", "BER=0,0.01,0.02", "MAPS=200", "JOBS=1"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while not _processes_in(run) and make.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # until cocotb's make runs (building the simulator, then simulating)
    assert make.poll() is None and _processes_in(run), "the flow ended before cocotb's make started"
    os.kill(make.pid, signal.SIGKILL)
    make.wait()
    deadline = time.monotonic() + 6  # SIGTERM, 3 s, SIGKILL; building and simulating 600 maps take longer
    while _processes_in(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_in(run), "processes of the killed flow still run"
    proc = run_make([f"RUN={run}", "BER=0", "MAPS=1", "IMAGES=20", "JOBS=1"], tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((run / "sim" / "hw_ber.json").read_text())
    assert record["images"] == 20 and all(m["identical_to_software"] for m in record["maps"])
