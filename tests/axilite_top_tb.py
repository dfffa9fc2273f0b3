"""cocotb testbench (not a pytest module): write weight lines through accel_top's AXI-lite port.

Why: checks that a weight line written over ``s_axilite_<node>_*`` changes the accelerator's
outputs exactly as rewriting the init file does. Driven by tests/test_flow_axilite.py through a
JSON file named by ``AXIL_TB_CONFIG``:

    {"prefix": ..., "writes": [[byte_addr, word], ...], "reads": [[byte_addr, word], ...],
     "inputs": "x.npy", "outputs": "hw.npy", "n_flush": F,
     "stream": {"in_bits", "in_simd", "in_kind", "in_elems", "out_bits", "out_pe", "out_elems"}}

Flow: reset, AXI-lite writes (AW and W together, wait for B), read-back check, then ``n_flush``
images (outputs dropped: FINN's memstream may still hold lines read before the write) and the
images of ``inputs``; outputs (N x out_elems, signed) go to ``outputs``.
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

AXIL_INPUTS = ("awvalid", "awaddr", "awprot", "wvalid", "wdata", "wstrb", "bready", "arvalid",
               "araddr", "arprot", "rready")


def _sig(dut, prefix, name):
    return getattr(dut, f"{prefix}_{name}")


async def _cycle(dut):
    await RisingEdge(dut.ap_clk)


async def axil_write(dut, prefix, addr, data):
    s = lambda n: _sig(dut, prefix, n)  # noqa: E731
    s("awaddr").value, s("awvalid").value = addr, 1
    s("wdata").value, s("wstrb").value, s("wvalid").value = data, 0xF, 1
    s("bready").value = 1
    aw = w = b = False
    while not b:
        await ReadOnly()
        aw_fire = not aw and bool(s("awready").value)
        w_fire = not w and bool(s("wready").value)
        b_fire = bool(s("bvalid").value)
        await _cycle(dut)
        aw, w, b = aw or aw_fire, w or w_fire, b_fire
        if aw:
            s("awvalid").value = 0
        if w:
            s("wvalid").value = 0
    s("bready").value = 0


async def axil_read(dut, prefix, addr) -> int:
    s = lambda n: _sig(dut, prefix, n)  # noqa: E731
    s("araddr").value, s("arvalid").value, s("rready").value = addr, 1, 1
    ar = False
    while True:
        await ReadOnly()
        ar_fire = not ar and bool(s("arready").value)
        r_fire = bool(s("rvalid").value)
        data = int(s("rdata").value) if r_fire else None
        await _cycle(dut)
        ar = ar or ar_fire
        if ar:
            s("arvalid").value = 0
        if r_fire:
            s("rready").value = 0
            return data


def _beats(x: np.ndarray, st: dict) -> list[int]:
    out = []
    for img in x.reshape(len(x), -1).astype(np.int64):
        for b in range(st["in_elems"] // st["in_simd"]):
            word = 0
            for s in range(st["in_simd"]):
                v = int(img[b * st["in_simd"] + s])
                v = (1 if v > 0 else 0) if st["in_kind"] == "b" else v & ((1 << st["in_bits"]) - 1)
                word |= v << (s * st["in_bits"])
            out.append(word)
    return out


def _unpack(words: list[int], st: dict) -> np.ndarray:
    bits, pe = st["out_bits"], st["out_pe"]
    vals = []
    for w in words:
        for p in range(pe):
            v = (w >> (p * bits)) & ((1 << bits) - 1)
            vals.append(v - (1 << bits) if v >> (bits - 1) else v)
    return np.array(vals, dtype=np.int64).reshape(-1, st["out_elems"])


async def stream(dut, beats: list[int], n_out_beats: int) -> list[int]:
    """Send ``beats`` on s_axis_0 and collect ``n_out_beats`` words of m_axis_0."""
    sent, got = 0, []
    dut.m_axis_0_tready.value = 1
    limit = 200 * (len(beats) + n_out_beats) + 10000
    for _ in range(limit):
        if sent < len(beats):
            dut.s_axis_0_tdata.value, dut.s_axis_0_tvalid.value = beats[sent], 1
        else:
            dut.s_axis_0_tvalid.value = 0
        await ReadOnly()
        in_fire = sent < len(beats) and bool(dut.s_axis_0_tready.value)
        if dut.m_axis_0_tvalid.value:
            got.append(int(dut.m_axis_0_tdata.value))
        await _cycle(dut)
        sent += in_fire
        if len(got) == n_out_beats:
            dut.s_axis_0_tvalid.value = 0
            return got
    raise AssertionError(f"timeout: {len(got)}/{n_out_beats} output beats")


@cocotb.test()
async def axilite_weight_write(dut):
    cfg = json.loads(open(os.environ["AXIL_TB_CONFIG"]).read())
    prefix, st = cfg["prefix"], cfg["stream"]
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    dut.ap_rst_n.value = 0
    dut.s_axis_0_tvalid.value = 0
    dut.m_axis_0_tready.value = 1
    for p in cfg["all_prefixes"]:
        for n in AXIL_INPUTS:
            _sig(dut, p, n).value = 0
    for _ in range(16):
        await _cycle(dut)
    dut.ap_rst_n.value = 1
    await _cycle(dut)
    for addr, data in cfg["writes"]:
        await axil_write(dut, prefix, addr, data)
    for addr, data in cfg["reads"]:
        got = await axil_read(dut, prefix, addr)
        assert got == data, f"read-back at {addr:#x}: {got:#x} != {data:#x}"
    x = np.load(cfg["inputs"])
    out_beats_per_image = st["out_elems"] // st["out_pe"]
    flush = np.repeat(x[:1], cfg["n_flush"], axis=0)
    words = await stream(dut, _beats(np.concatenate([flush, x]), st),
                         out_beats_per_image * (len(x) + cfg["n_flush"]))
    out = _unpack(words, st)[cfg["n_flush"]:]
    np.save(cfg["outputs"], out)
