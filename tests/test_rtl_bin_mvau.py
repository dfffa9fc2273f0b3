"""rtl/bin_mvau.sv against the golden model flows/custom_ops/bin_mvau_model.py, bit for bit.

Why: the fault-injection study is only meaningful if the RTL and the software model agree on
every output, with and without flipped memory bits. This file holds both halves, as in cocotb's
examples: the pytest side makes random cases (weights, thresholds, inputs; memory files), builds a
Verilator model per folding and runs the cocotb tests below inside the simulator.

Run: .venv/bin/python -m pytest tests/test_rtl_bin_mvau.py -m slow   (about 1-2 minutes cold;
each case builds in a fresh pytest tmp folder, so only ccache makes a rerun faster)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from flows.custom_ops import bin_mvau_model as bm

N_IMAGES = 6

# name -> RTL parameters (plus the test's own "seed"); two foldings per feature
CASES = {
    # XNOR mode, no activation (bipolar dot product / FINN popcount)
    "xnor_noact_f1": dict(MW=32, MH=16, PE=4, SIMD=8, IBITS=1, XNOR_POPCOUNT=0, NO_ACT=1),
    "xnor_noact_f2": dict(MW=24, MH=6, PE=2, SIMD=3, IBITS=1, XNOR_POPCOUNT=1, NO_ACT=1),
    # XNOR mode, bipolar output (w1a1 hidden layer)
    "xnor_bipolar_f1": dict(MW=64, MH=32, PE=8, SIMD=16, IBITS=1, XNOR_POPCOUNT=1, NO_ACT=0,
                            NT=1, OBITS=1, RUNTIME_WRITEABLE=1),
    "xnor_bipolar_f2": dict(MW=16, MH=8, PE=1, SIMD=1, IBITS=1, XNOR_POPCOUNT=0, NO_ACT=0,
                            NT=1, OBITS=1),
    # 8-bit unsigned input, 1-bit weights (first layer of w1a2)
    "u8_noact_f1": dict(MW=64, MH=16, PE=4, SIMD=8, IBITS=8, SIGNED_IN=0, NO_ACT=1),
    "u8_thr2_f2": dict(MW=48, MH=10, PE=5, SIMD=6, IBITS=8, SIGNED_IN=0, NO_ACT=0, NT=3, OBITS=2,
                       RUNTIME_WRITEABLE=1),
    # 2-bit output thresholds (unsigned and signed codes)
    "xnor_thr2_f1": dict(MW=32, MH=16, PE=16, SIMD=32, IBITS=1, XNOR_POPCOUNT=1, NO_ACT=0,
                         NT=3, OBITS=2),
    "s2_thr2_f2": dict(MW=20, MH=12, PE=3, SIMD=5, IBITS=2, SIGNED_IN=1, NO_ACT=0, NT=3,
                       OBITS=2, ACT_VAL=-2),
}


def acc_width(p: dict) -> int:
    """Signed accumulator width covering the worst case for ANY weight values, so that weight
    faults can never overflow (FINN's value-based minimisation could)."""
    if p["IBITS"] == 1:
        bound = p["MW"] + 1  # +1: a threshold may sit one above the largest accumulator
    else:
        xmax = (1 << (p["IBITS"] - 1)) if p.get("SIGNED_IN") else (1 << p["IBITS"]) - 1
        bound = p["MW"] * xmax + 1
    return int(bound).bit_length() + 1


# ---------------------------------------------------------------- pytest side: make + run


def make_case(name: str, workdir: Path) -> dict:
    """Random weights, inputs and thresholds for one case; writes the .dat files and case.json."""
    p = dict(CASES[name])
    rng = np.random.default_rng(sum(map(ord, name)))  # stable per case
    p.setdefault("SIGNED_IN", 0)
    p.setdefault("XNOR_POPCOUNT", 0)
    p.setdefault("NT", 1)
    p.setdefault("OBITS", 1)
    p.setdefault("ACT_VAL", 0)
    p["ACCU_WIDTH"] = acc_width(p)
    mw, mh, ib = p["MW"], p["MH"], p["IBITS"]
    W = rng.choice([-1, 1], size=(mw, mh))
    if ib == 1:
        X = rng.integers(0, 2, size=(N_IMAGES, mw))
    elif p["SIGNED_IN"]:
        X = rng.integers(-(1 << (ib - 1)), 1 << (ib - 1), size=(N_IMAGES, mw))
    else:
        X = rng.integers(0, 1 << ib, size=(N_IMAGES, mw))
    acc = bm.mvau_acc(W, X, ib, p["ACCU_WIDTH"], bool(p["SIGNED_IN"]), bool(p["XNOR_POPCOUNT"]))
    case = dict(name=name, params=p, W=W.tolist(), X=X.tolist())
    workdir = workdir.resolve()  # $readmemh runs in the sim folder: absolute paths only
    workdir.mkdir(parents=True, exist_ok=True)
    wfile = workdir / "weights.dat"
    bm.write_memh(wfile, bm.pack_weights_memstream(W, p["PE"], p["SIMD"]), p["PE"] * p["SIMD"])
    rtl_params = {k: v for k, v in p.items()}
    rtl_params["WEIGHT_FILE"] = f'"{wfile}"'
    if not p["NO_ACT"]:
        # thresholds at random quantiles of the observed accumulators: every code occurs
        q = np.sort(rng.uniform(0, 1, size=(mh, p["NT"])), axis=1)
        T = np.stack([np.quantile(acc[:, r], q[r], method="nearest") for r in range(mh)])
        T = T + rng.integers(0, 2, size=T.shape)  # thresholds equal to and above an acc value
        T = np.sort(T, axis=1)
        tfile = workdir / "thresholds.dat"
        bm.write_memh(tfile, bm.pack_thresholds(T, p["PE"], p["ACCU_WIDTH"]),
                      p["PE"] * p["NT"] * p["ACCU_WIDTH"])
        rtl_params["THRESH_FILE"] = f'"{tfile}"'
        case["T"] = T.tolist()
    case["rtl_params"] = rtl_params
    (workdir / "case.json").write_text(json.dumps(case))
    return case


# every cocotb test below; each must run (not be skipped) for every case
COCOTB_TESTS = {"matches_model_with_backpressure", "throughput", "weight_bit_flip",
                "threshold_bit_flip", "axilite_weight_write"}


def build_and_run(name: str, work: Path, testcase: str | None = None) -> Path:
    """Build case ``name`` in ``work`` (pass a fresh folder: the cocotb tests write their results
    there, and the caller must read only what this run wrote) and run the cocotb tests."""
    from flows.custom_ops import rtl_sim

    case = make_case(name, work)
    runner = rtl_sim.build(rtl_sim.rtl_sources(*rtl_sim.BIN_MVAU_RTL), "bin_mvau",
                           work / "sim_build", case["rtl_params"])
    return rtl_sim.run(runner, "bin_mvau", "test_rtl_bin_mvau", work,
                       extra_env={"BIN_MVAU_CASE": str(work / "case.json")}, testcase=testcase,
                       module_dir=Path(__file__).parent)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bin_mvau_rtl(name, tmp_path):
    """All cocotb tests pass, and the cycle counts are the ones this run measured: the work folder
    is new (a cycles.json left by an earlier run in a fixed folder would pass even if the
    simulation never ran)."""
    from flows.custom_ops import rtl_sim

    work = tmp_path / name
    results = build_and_run(name, work)
    ran, failed = rtl_sim.ran_tests(results)
    assert ran == COCOTB_TESTS and failed == 0, (ran, failed)
    res = json.loads((work / "cycles.json").read_text())
    p = CASES[name]
    ideal = p["MH"] // p["PE"] * (p["MW"] // p["SIMD"])
    assert res["cycles_per_image"] == ideal, res
    assert res["latency"] <= ideal + 6, res


@pytest.mark.slow
def test_unknown_cocotb_testcase_fails(tmp_path):
    """rtl_sim.run must not pass when the named cocotb test does not exist: cocotb's filter then
    runs nothing, and an empty results.xml has no failures."""
    with pytest.raises(AssertionError, match="no cocotb test"):
        build_and_run("xnor_bipolar_f2", tmp_path / "w", testcase="no_such_test")


class _FakeRunner:
    """Stands in for a cocotb runner: .test writes a given results.xml, as a simulation would."""

    def __init__(self, testcases: str):
        self.xml = ('<testsuites><testsuite name="all" package="all">'
                    f"{testcases}</testsuite></testsuites>")

    def test(self, results_xml: str, **_) -> Path:
        Path(results_xml).write_text(self.xml)
        return Path(results_xml)


@pytest.mark.parametrize("testcases, testcase, message", [
    ("", None, "no cocotb test"),  # a module without tests, or a filter that matched none
    ('<testcase name="a"><skipped/></testcase>', None, "no cocotb test"),
    ('<testcase name="a"/>', "b", "did not run"),
    ('<testcase name="a"/><testcase name="b"><failure/></testcase>', None, "1 of 2 cocotb tests failed"),
    ('<testcase name="a"><error/></testcase>', None, "failed"),
])
def test_run_fails_unless_the_tests_ran_and_passed(tmp_path, monkeypatch, testcases, testcase, message):
    """results.xml checks of rtl_sim.run, without a simulator: zero tests, only skipped tests,
    a named testcase missing, failures and errors all raise."""
    from flows.custom_ops import rtl_sim

    monkeypatch.setattr(rtl_sim, "_prepare_env", lambda: None)
    with pytest.raises(AssertionError, match=message):
        rtl_sim.run(_FakeRunner(testcases), "top", "mod", tmp_path, testcase=testcase)


def test_run_returns_results_when_the_tests_ran(tmp_path, monkeypatch):
    from flows.custom_ops import rtl_sim

    monkeypatch.setattr(rtl_sim, "_prepare_env", lambda: None)
    runner = _FakeRunner('<testcase name="a"/><testcase name="b"><skipped/></testcase>')
    res = rtl_sim.run(runner, "top", "mod", tmp_path, testcase="a")
    assert rtl_sim.ran_tests(res) == ({"a"}, 0)


# ------------------------------------------------------- golden model unit tests (fast)


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(0)
    W = rng.choice([-1, 1], size=(12, 6))
    words = bm.pack_weights_memstream(W, pe=3, simd=4)
    assert len(words) == 12 * 6 // 12
    assert np.array_equal(bm.unpack_weights_memstream(words, 12, 6, 3, 4), W)
    # word 0 bit (pe*SIMD + s): row pe, column s
    assert (words[0] >> (2 * 4 + 1)) & 1 == (W[1, 2] > 0)
    T = rng.integers(-50, 50, size=(6, 3))
    assert np.array_equal(bm.unpack_thresholds(bm.pack_thresholds(T, 3, 8), 6, 3, 3, 8), T)


def test_model_matches_finn_semantics():
    """xnor popcount and multithreshold agree with qonnx's reference functions."""
    from qonnx.custom_op.general.multithreshold import multithreshold
    from qonnx.custom_op.general.xnorpopcount import xnorpopcountmatmul

    rng = np.random.default_rng(1)
    W = rng.choice([-1, 1], size=(20, 7))
    X = rng.integers(0, 2, size=(5, 20))
    pc = bm.mvau_acc(W, X, 1, 8, xnor_popcount=True)
    assert np.array_equal(pc, xnorpopcountmatmul(X.astype(float), (W + 1) / 2.0))
    T = np.sort(rng.integers(0, 21, size=(7, 3)), axis=1)
    ref = multithreshold(pc.astype(float), T.astype(float))
    assert np.array_equal(bm.multithreshold(pc, T, 0, 2), ref)


def test_write_memh(tmp_path):
    f = tmp_path / "m.dat"
    bm.write_memh(f, [1, 0x1BC, 0x1FF], 9)
    assert f.read_text() == "001\n1bc\n1ff\n"
    assert bm.read_memh(f) == [1, 0x1BC, 0x1FF]


# ---------------------------------------------------------------- cocotb side (in the simulator)

try:
    import cocotb
    from cocotb.triggers import ReadOnly, RisingEdge

    from tests.axis_stream import reset, stream
except ImportError:  # pragma: no cover
    cocotb = None


def _load_case():
    case = json.loads(Path(os.environ["BIN_MVAU_CASE"]).read_text())
    case["W"] = np.array(case["W"])
    case["X"] = np.array(case["X"])
    if "T" in case:
        case["T"] = np.array(case["T"])
    return case


def _expected_words(case, W=None, T=None) -> list[int]:
    """Output stream words the RTL must produce for all images of the case."""
    p = case["params"]
    W = case["W"] if W is None else W
    T = case.get("T") if T is None else T
    out = bm.bin_mvau(W, case["X"], p["IBITS"], p["ACCU_WIDTH"], None if p["NO_ACT"] else T,
                      p["ACT_VAL"], p["OBITS"], bool(p["SIGNED_IN"]), bool(p["XNOR_POPCOUNT"]))
    oel = p["ACCU_WIDTH"] if p["NO_ACT"] else p["OBITS"]
    return bm.pack_stream(out, p["PE"], oel)


def _core(dut):
    """The bin_mvau instance: the top itself, or a sub-instance (e.g. "core" in a generated
    FINN node wrapper) named by the case's "core" entry."""
    for name in _load_case().get("core", "").split("."):
        if name:
            dut = getattr(dut, name)
    return dut


def _in_words(case):
    p = case["params"]
    return bm.pack_stream(case["X"], p["SIMD"], p["IBITS"])


if cocotb is not None:

    @cocotb.test()
    async def matches_model_with_backpressure(dut):
        """Random input gaps and output backpressure; every output word equals the model."""
        case = _load_case()
        await reset(dut)
        exp = _expected_words(case)
        rng = random.Random(11)
        got, _, _ = await stream(dut, _in_words(case), len(exp), rng, p_in=0.7, p_out=0.6)
        assert got == exp

    @cocotb.test()
    async def throughput(dut):
        """Streams never stalled: cycles/image must be MH/PE * MW/SIMD; writes cycles.json."""
        case = _load_case()
        p = case["params"]
        await reset(dut)
        exp = _expected_words(case)
        got, in_c, out_c = await stream(dut, _in_words(case), len(exp), random.Random(1))
        assert got == exp
        nout = p["MH"] // p["PE"]
        last = [out_c[(k + 1) * nout - 1] for k in range(N_IMAGES)]
        res = dict(cycles_per_image=(last[-1] - last[0]) / (N_IMAGES - 1),
                   latency=last[0] - in_c[0] + 1,
                   ideal=nout * p["MW"] // p["SIMD"])
        (Path(os.environ["BIN_MVAU_CASE"]).parent / "cycles.json").write_text(json.dumps(res))
        dut._log.info("cycles: %s", res)

    @cocotb.test()
    async def weight_bit_flip(dut):
        """Flip one bit of wmem.Mem through its handle: the output changes exactly as the model
        with that weight negated predicts; restoring the bit restores the output."""
        case = _load_case()
        p = case["params"]
        await reset(dut)
        wmem = _core(dut).wmem.Mem
        words = [wmem[t].value.to_unsigned() for t in range(len(wmem))]
        assert words == bm.pack_weights_memstream(case["W"], p["PE"], p["SIMD"])
        base = _expected_words(case)
        rng = np.random.default_rng(5)
        for _ in range(200):  # find a flip that visibly changes the output
            t = int(rng.integers(len(words)))
            b = int(rng.integers(p["PE"] * p["SIMD"]))
            faulty = list(words)
            faulty[t] ^= 1 << b
            Wf = bm.unpack_weights_memstream(faulty, p["MW"], p["MH"], p["PE"], p["SIMD"])
            exp = _expected_words(case, W=Wf)
            if exp != base:
                break
        wmem[t].value = faulty[t]
        await RisingEdge(dut.ap_clk)
        assert wmem[t].value.to_unsigned() == faulty[t]
        got, _, _ = await stream(dut, _in_words(case), len(exp), random.Random(3), 0.8, 0.8)
        wmem[t].value = words[t]
        assert got == exp and got != base
        got, _, _ = await stream(dut, _in_words(case), len(exp), random.Random(4))
        assert got == base

    @cocotb.test()
    async def threshold_bit_flip(dut):
        """Flip one bit of a threshold word (gen_thr.tmem.Mem): the output changes exactly as the
        model with the unpacked faulty thresholds predicts; restoring the bit restores the output.

        The flip is the first one, in a seeded random order over every (word, bit), that the model
        says changes some output, and the test fails if there is none: a flip that reaches no
        output would compare the clean output with itself and pass whatever the RTL does."""
        case = _load_case()
        p = case["params"]
        if p["NO_ACT"]:
            return
        await reset(dut)
        mem = _core(dut).gen_thr.tmem.Mem
        aw = p["ACCU_WIDTH"]
        words = [mem[i].value.to_unsigned() for i in range(len(mem))]
        assert words == bm.pack_thresholds(case["T"], p["PE"], aw)
        base = _expected_words(case)
        width = p["PE"] * p["NT"] * aw
        exp = base
        for k in np.random.default_rng(6).permutation(len(words) * width):
            t, b = divmod(int(k), width)
            faulty = list(words)
            faulty[t] ^= 1 << b
            Tf = bm.unpack_thresholds(faulty, p["MH"], p["NT"], p["PE"], aw)
            exp = _expected_words(case, T=Tf)
            if exp != base:
                break
        assert exp != base, "no threshold bit flip changes any output: the test would be blind"
        mem[t].value = faulty[t]
        await RisingEdge(dut.ap_clk)
        assert mem[t].value.to_unsigned() == faulty[t]
        got, _, _ = await stream(dut, _in_words(case), len(exp), random.Random(7), 0.9, 0.5)
        mem[t].value = words[t]
        assert got == exp and got != base
        got, _, _ = await stream(dut, _in_words(case), len(base), random.Random(4))
        assert got == base

    async def _axil_write(dut, addr, data):
        """One AXI-lite write (address and data offered together), waits for the response."""
        dut.s_axilite_AWADDR.value = addr
        dut.s_axilite_WDATA.value = data
        dut.s_axilite_AWVALID.value = 1
        dut.s_axilite_WVALID.value = 1
        dut.s_axilite_BREADY.value = 1
        pending = {"AW", "W"}
        while pending:
            await ReadOnly()
            done = {c for c in pending if getattr(dut, f"s_axilite_{c}READY").value}
            await RisingEdge(dut.ap_clk)
            for c in done:
                getattr(dut, f"s_axilite_{c}VALID").value = 0
            pending -= done
        while True:
            await ReadOnly()
            b = bool(dut.s_axilite_BVALID.value)
            await RisingEdge(dut.ap_clk)
            if b:
                break
        dut.s_axilite_BREADY.value = 0

    async def _axil_read(dut, addr) -> int:
        dut.s_axilite_ARADDR.value = addr
        dut.s_axilite_ARVALID.value = 1
        dut.s_axilite_RREADY.value = 1
        while True:
            await ReadOnly()
            a = bool(dut.s_axilite_ARREADY.value)
            await RisingEdge(dut.ap_clk)
            if a:
                break
        dut.s_axilite_ARVALID.value = 0
        while True:
            await ReadOnly()
            r = bool(dut.s_axilite_RVALID.value)
            data = dut.s_axilite_RDATA.value.to_unsigned() if r else None
            await RisingEdge(dut.ap_clk)
            if r:
                break
        dut.s_axilite_RREADY.value = 0
        return data

    @cocotb.test()
    async def axilite_weight_write(dut):
        """Rewrite one weight line over AXI-lite (FINN address map: line t, 32-bit word i at byte
        (t*K + i)*4, K = 2**ceil(log2(ceil(width/32))), last word commits); read it back over
        AXI-lite and through the Mem handle; outputs then follow the model with that line."""
        case = _load_case()
        p = case["params"]
        if not p.get("RUNTIME_WRITEABLE"):
            return
        await reset(dut)
        for c in ("AW", "W", "AR"):
            getattr(dut, f"s_axilite_{c}VALID").value = 0
        wmem = _core(dut).wmem.Mem
        width = p["PE"] * p["SIMD"]
        fold = (width + 31) // 32
        k = 1 << (fold - 1).bit_length()
        words = [wmem[t].value.to_unsigned() for t in range(len(wmem))]
        rng = random.Random(9)
        t = rng.randrange(len(words))
        new = rng.getrandbits(width)
        for i in range(fold):
            await _axil_write(dut, (t * k + i) * 4, (new >> (32 * i)) & 0xFFFFFFFF)
        assert wmem[t].value.to_unsigned() == new
        for i in reversed(range(fold)):
            assert await _axil_read(dut, (t * k + i) * 4) == (new >> (32 * i)) & 0xFFFFFFFF
        faulty = list(words)
        faulty[t] = new
        Wf = bm.unpack_weights_memstream(faulty, p["MW"], p["MH"], p["PE"], p["SIMD"])
        exp = _expected_words(case, W=Wf)
        got, _, _ = await stream(dut, _in_words(case), len(exp), random.Random(8), 0.8, 0.7)
        wmem[t].value = words[t]
        assert got == exp
