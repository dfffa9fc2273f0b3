"""cocotb helpers shared by the RTL unit tests: reset and an AXI-stream driver with random gaps
and backpressure (imported inside the simulator too, where the repository root is on the path)."""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


async def reset(dut) -> None:
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    dut.ap_rst_n.value = 0
    dut.in0_V_TVALID.value = 0
    dut.in0_V_TDATA.value = 0
    dut.out0_V_TREADY.value = 0
    for _ in range(3):
        await RisingEdge(dut.ap_clk)
    dut.ap_rst_n.value = 1
    await RisingEdge(dut.ap_clk)


async def stream(dut, in_words, n_out, rng, p_in=1.0, p_out=1.0, max_cycles=200000):
    """Drive in0 (valid held until accepted, gaps with probability 1-p_in), take n_out words
    from out0 (TREADY with probability p_out), until both are done (an SWG emits the last
    window of an odd-sized image before it has read the image's last row). Checks the
    AXI-stream rule that a stalled output word stays valid and unchanged. Returns (words,
    input accept cycles, output cycles)."""
    outs, in_cyc, out_cyc = [], [], []
    i, cyc, valid, held = 0, 0, 0, None
    while len(outs) < n_out or i < len(in_words):
        if not valid and i < len(in_words) and rng.random() < p_in:
            valid = 1
            dut.in0_V_TDATA.value = in_words[i]
        dut.in0_V_TVALID.value = valid
        dut.out0_V_TREADY.value = ready = int(rng.random() < p_out)
        await ReadOnly()
        ovalid = bool(dut.out0_V_TVALID.value)
        data = dut.out0_V_TDATA.value.to_unsigned() if ovalid else None
        if held is not None:
            assert ovalid and data == held, f"stalled output word changed at cycle {cyc}"
        held = data if ovalid and not ready else None
        if valid and dut.in0_V_TREADY.value:
            i, valid = i + 1, 0
            in_cyc.append(cyc)
        if ovalid and ready:
            outs.append(data)
            out_cyc.append(cyc)
        await RisingEdge(dut.ap_clk)
        cyc += 1
        assert cyc < max_cycles, "timeout"
    dut.in0_V_TVALID.value = 0
    dut.out0_V_TREADY.value = 0
    return outs, in_cyc, out_cyc
