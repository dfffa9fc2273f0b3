"""cocotb testbench for the stitched accelerator (``accel_top`` inside ``tb_harness``).

In the manner of cocotb's examples: small reusable parts (a driver that fills the harness's
input buffer, a monitor that reads its output buffer, injectors that write fault maps into the
on-chip memories, a scoreboard), and one test that runs a *job*: a JSON file naming the manifest,
the packed input words, the fault maps and where to write the results. The runner
(:mod:`hw_sim.runner`) writes the job and points ``MCEL_SIM_JOB`` at it; the make flow
(``hw_sim/Makefile``) does the same.

Python never runs per clock cycle in the hot loop: the simulator's main() drives the clock
(``hw_sim/cpp/cocotb_main.cpp``) and the test sleeps on the harness's ``done``/``hang`` edges
while a whole batch streams.
"""

from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge

from hw_sim.injection import check_map_fits, faulty_words
from hw_sim.job import SimJob
from hw_sim.streams import StreamFormat, ints_to_words, unpack, words_to_ints
from mcel_train.faults.faultmap import FaultMap
from mcel_train.manifest import MemoryEntry, load_manifest
from mcel_train.stage import token_alive, token_pid

CLOCK_NS = 10


def resolve(dut, path: str):
    """The handle of a manifest path (``accel_top.a.b.Mem``) below the harness (``dut.dut``)."""
    parts = path.split(".")
    if parts[0] == "accel_top":
        parts = parts[1:]
    handle = dut.dut
    for part in parts:
        try:
            handle = getattr(handle, part)
        except AttributeError:
            raise LookupError(f"manifest memory path {path} does not exist in the RTL (no {part!r}): "
                              "the build's manifest.json does not match its hdl/; rebuild with "
                              "mcel build --force") from None
    return handle


class StreamDriver:
    """Loads input words into the harness's ``in_buf`` through handles (no per-cycle Python)."""

    def __init__(self, dut) -> None:
        self.buf = dut.in_buf

    def load(self, words: list[int]) -> None:
        for i, w in enumerate(words):
            self.buf[i].value = w


class StreamMonitor:
    """Reads what the harness captured: output words and the cycle each arrived in."""

    def __init__(self, dut, word_bytes: int) -> None:
        self.dut, self.word_bytes = dut, word_bytes

    def collect(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        words = [int(self.dut.out_buf[i].value) for i in range(n)]
        cycles = np.array([int(self.dut.out_cycle[i].value) for i in range(n)], dtype=np.int64)
        return ints_to_words(words, self.word_bytes), cycles

    def input_cycles(self, n: int) -> np.ndarray:
        """The cycle each of the first ``n`` input words was accepted."""
        return np.array([int(self.dut.in_cycle[i].value) for i in range(n)], dtype=np.int64)


class BackdoorInjector:
    """Writes fault maps straight into the memory arrays through simulator handles.

    Golden contents are read once (after ``$readmemh`` ran); every write is read back, and the
    golden words are restored (and checked) after each map.
    """

    def __init__(self, dut, memories: dict[str, MemoryEntry]) -> None:
        self.handles = {name: resolve(dut, m.path) for name, m in memories.items()}
        self.golden: dict[str, list[int]] = {}
        self.touched: dict[str, list[int]] = {}

    def read_golden(self, memories: dict[str, MemoryEntry]) -> None:
        for name, h in self.handles.items():
            self.golden[name] = [int(h[i].value) for i in range(memories[name].depth)]

    def inject(self, updates: dict[str, dict[int, int]]) -> None:
        for name, words in updates.items():
            h = self.handles[name]
            for w, v in words.items():
                h[w].value = v
            self.touched[name] = list(words)

    def verify(self, updates: dict[str, dict[int, int]]) -> None:
        for name, words in updates.items():
            for w, v in words.items():
                got = int(self.handles[name][w].value)
                if got != v:
                    raise AssertionError(f"{name}[{w}] reads back {got:#x} after writing {v:#x}")

    def restore(self) -> dict[str, dict[int, int]]:
        """Write the golden words back; returns what was written (to verify after a clock)."""
        restore = {n: {w: self.golden[n][w] for w in ws} for n, ws in self.touched.items()}
        self.inject(restore)
        self.touched = {}
        return restore


AXI_RESP = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}


class AxiLiteWriteError(AssertionError):
    """An AXI-lite write was answered with an error response: the fault was not injected."""


class AxiLiteInjector:
    """Writes fault maps the way software on a board would: over each memory's AXI-lite port.

    A memory line of ``width`` bits is ``k = words_per_line`` 32-bit words, low word first, at
    byte address ``(t*k + i)*4``; writing the last word commits the line (FINN's memstream). The
    golden contents (from the backdoor reader) are written back the same way after each map.
    """

    def __init__(self, dut, memories: dict[str, MemoryEntry], backdoor: BackdoorInjector) -> None:
        self.dut, self.memories, self.backdoor = dut, memories, backdoor
        self.touched: dict[str, list[int]] = {}
        for name, m in memories.items():
            if m.axilite is None or not m.axilite.exposed_at_top:
                raise AssertionError(f"memory {name} has no AXI-lite port at accel_top; "
                                     "build with runtime-writeable weights")

    def _port(self, name: str, suffix: str):
        return getattr(self.dut, f"{self.memories[name].axilite.prefix}_{suffix}")

    async def write_word(self, name: str, addr: int, data: int) -> None:
        p = lambda s: self._port(name, s)  # noqa: E731
        p("awaddr").value, p("awvalid").value, p("awprot").value = addr, 1, 0
        p("wdata").value, p("wstrb").value, p("wvalid").value = data, 0xF, 1
        p("bready").value = 1
        aw_done = w_done = False
        while not (aw_done and w_done):
            await RisingEdge(self.dut.ap_clk)
            aw_done |= bool(int(p("awready").value)) and bool(int(p("awvalid").value))
            w_done |= bool(int(p("wready").value)) and bool(int(p("wvalid").value))
            if aw_done:
                p("awvalid").value = 0
            if w_done:
                p("wvalid").value = 0
        while not int(p("bvalid").value):
            await RisingEdge(self.dut.ap_clk)
        resp = int(p("bresp").value)
        await RisingEdge(self.dut.ap_clk)
        p("bready").value = 0
        if resp != 0:  # 2 = SLVERR, 3 = DECERR: the write did not happen
            raise AxiLiteWriteError(f"AXI-lite write to {name} at byte address {addr:#x} answered "
                                    f"BRESP={resp} ({AXI_RESP.get(resp, '?')})")

    async def write_line(self, name: str, line: int, value: int) -> None:
        k = self.memories[name].axilite.words_per_line
        for i in range(k):
            await self.write_word(name, (line * k + i) * 4, (value >> (32 * i)) & 0xFFFFFFFF)

    async def inject(self, updates: dict[str, dict[int, int]]) -> None:
        for name, words in updates.items():
            for w, v in words.items():
                await self.write_line(name, w, v)
            self.touched[name] = list(words)

    async def restore(self) -> dict[str, dict[int, int]]:
        restore = {n: {w: self.backdoor.golden[n][w] for w in ws} for n, ws in self.touched.items()}
        await self.inject(restore)
        self.touched = {}
        return restore


class Scoreboard:
    """Compares hardware outputs with the software prediction, remembering the first mismatch."""

    def __init__(self, maps: int) -> None:
        self.first_mismatch: dict | None = None
        self.compared = 0
        self.mismatched_images = 0
        # The verdict, stored with the raw results: per map the first image whose outputs differ
        # from the prediction, -1 if none (-2: no prediction to compare with).
        self.first_differing = np.full(maps, -2, dtype=np.int64)

    def check(self, map_id: int, hw: np.ndarray, sw: np.ndarray | None) -> None:
        if sw is None:
            return
        diff = np.flatnonzero((hw != sw).any(axis=1))
        self.compared += len(hw)
        self.mismatched_images += len(diff)
        self.first_differing[map_id] = int(diff[0]) if len(diff) else -1
        if len(diff) and self.first_mismatch is None:
            self.first_mismatch = {"map": map_id, "image": int(diff[0])}


def start_clock(dut) -> None:
    """The clock, unless the simulator's own main() drives it (``+mcel_clock_ps``, see
    hw_sim/cpp/cocotb_main.cpp): then no Python and no VPI call runs per edge at all. Otherwise
    cocotb's C clock (``impl="gpi"``), still far cheaper than the default Python one."""
    period_ps = cocotb.plusargs.get("mcel_clock_ps")
    if period_ps is not None:
        if int(period_ps) != CLOCK_NS * 1000:
            raise AssertionError(f"+mcel_clock_ps={period_ps}, the testbench expects {CLOCK_NS * 1000}")
        return
    cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns", impl="gpi").start())


async def reset(dut) -> None:
    """Reset the accelerator and the harness's stream state. The back-pressure switch is the
    job's setting and stays as it is (it was once cleared here, after the job had set it, so
    back-pressure never reached the stream)."""
    dut.run.value = 0
    dut.ext_mode.value = 0
    dut.ext_tvalid.value = 0
    dut.ext_tdata.value = 0
    dut.n_in.value = 0
    dut.n_out.value = 0
    dut.watchdog.value = 1000
    dut.ap_rst_n.value = 0
    await ClockCycles(dut.ap_clk, 8)
    dut.ap_rst_n.value = 1
    await ClockCycles(dut.ap_clk, 4)


def stop_if_owner_gone() -> None:
    """End this simulator at once when the process that started it is gone (``MCEL_SIM_OWNER``,
    set by hw_sim/runner.py; the make flow stops its own): a killed ``mcel sim`` left the
    simulator running at full load, orphaned, until its last map. Checked once per batch."""
    owner = os.environ.get("MCEL_SIM_OWNER", "")
    if token_pid(owner) is not None and not token_alive(owner):
        os._exit(3)


async def stream_batch(dut, driver: StreamDriver, monitor: StreamMonitor, in_words: list[int],
                       n_out: int, watchdog: int) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
    """Stream one batch through the accelerator; returns (out words, out cycles, cycles, stalled
    output cycles, hang)."""
    stop_if_owner_gone()
    driver.load(in_words)
    dut.n_in.value = len(in_words)
    dut.n_out.value = n_out
    dut.watchdog.value = watchdog
    dut.run.value = 1
    await First(RisingEdge(dut.done), RisingEdge(dut.hang))
    await ReadOnly()
    hang = bool(int(dut.hang.value))
    got = int(dut.out_ptr.value)
    cycles = int(dut.cycles.value)
    stalls = int(dut.stalls.value)
    await RisingEdge(dut.ap_clk)
    words, out_cycles = monitor.collect(got)
    dut.run.value = 0
    await RisingEdge(dut.ap_clk)
    return words, out_cycles, cycles, stalls, hang


async def stream_naive(dut, in_words: list[int], n_out: int) -> tuple[list[int], int]:
    """The naive way, for comparison only: Python drives and samples the stream every cycle."""
    dut.ext_mode.value = 1
    sent, out, cycles = 0, [], 0
    dut.ext_tvalid.value = int(bool(in_words))
    if in_words:
        dut.ext_tdata.value = in_words[0]
    while len(out) < n_out:
        await ReadOnly()  # settled values of this cycle decide the transfers at the next edge
        fire_in = sent < len(in_words) and bool(int(dut.ext_tready.value))
        if int(dut.ext_out_tvalid.value):
            out.append(int(dut.ext_out_tdata.value))
        await RisingEdge(dut.ap_clk)
        cycles += 1
        sent += int(fire_in)
        dut.ext_tvalid.value = int(sent < len(in_words))
        if sent < len(in_words):
            dut.ext_tdata.value = in_words[sent]
    dut.ext_mode.value = 0
    return out, cycles


async def upset_at(dut, injector: BackdoorInjector, updates: dict[str, dict[int, int]], cycle: int) -> int:
    """Write ``updates`` into the memories ``cycle`` clocks after streaming starts (a transient
    upset while images are in flight); returns the harness cycle count at the write."""
    await ClockCycles(dut.ap_clk, cycle)
    injector.inject(updates)
    await ReadOnly()
    return int(dut.cycles.value)


async def transient_job(dut, job: SimJob, memories: dict[str, MemoryEntry], in_fmt: StreamFormat,
                        out_fmt: StreamFormat) -> None:
    """Every map flips its bits at ``job.transient_cycle`` while one batch streams.

    Writes the outputs, the cycle each image's input went in and its output came out, and the
    cycle of the upset; :func:`hw_sim.sim.finish_sim` sorts the images into before / in flight /
    after and checks them against the clean and the faulty prediction.
    """
    inputs = words_to_ints(np.load(job.inputs))
    n_images = len(inputs) // in_fmt.words_per_image
    driver, monitor = StreamDriver(dut), StreamMonitor(dut, out_fmt.word_bytes)
    injector = BackdoorInjector(dut, memories)
    injector.read_golden(memories)
    maps = job.maps
    outputs = np.zeros((len(maps), n_images, out_fmt.elems_per_image), dtype=np.int64)
    in_cycles = np.zeros((len(maps), n_images), dtype=np.int64)
    out_cycles = np.zeros((len(maps), n_images), dtype=np.int64)
    upsets, hangs, wall = np.zeros(len(maps), np.int64), np.zeros(len(maps), bool), np.zeros(len(maps))
    total, stalled = np.zeros(len(maps), np.int64), np.zeros(len(maps), np.int64)
    for m, map_file in enumerate(maps):
        t0 = time.perf_counter()
        fmap = FaultMap.load(map_file) if map_file else None
        if fmap is not None:
            check_map_fits(fmap, memories)
        updates = faulty_words(fmap, injector.golden) if fmap is not None else {}
        await reset(dut)
        upset = cocotb.start_soon(upset_at(dut, injector, updates, job.transient_cycle))
        words, cyc, cycles, stalled[m], hang = await stream_batch(dut, driver, monitor, inputs,
                                                              n_images * out_fmt.words_per_image,
                                                              job.watchdog_cycles)
        if upset.done():
            upsets[m] = await upset
        else:  # the stream ended first: no upset in this map's run
            upset.cancel()
            upsets[m] = -1
        hangs[m], total[m] = hang, cycles
        if not hang:
            outputs[m] = unpack(words, out_fmt)
            out_cycles[m] = cyc[out_fmt.words_per_image - 1 :: out_fmt.words_per_image]
            in_cycles[m] = monitor.input_cycles(len(inputs))[:: in_fmt.words_per_image]
        if updates:
            restored = injector.restore()
            await RisingEdge(dut.ap_clk)
            injector.verify(restored)
        wall[m] = time.perf_counter() - t0
        # the line `mcel sim`'s progress bar counts (hw_sim/runner.py map_progress), as run_job logs it
        dut._log.info(f"map {m + 1}/{len(maps)}: {n_images} images, {total[m]} cycles, transient upset")
    # the initiation interval as the other jobs measure it: the median gap between images' last
    # output words (it was recorded as 0 for transient runs)
    ii = np.array([float(np.median(np.diff(c))) if len(c) > 1 and not h else 0.0
                   for c, h in zip(out_cycles, hangs, strict=True)])
    np.savez(job.out, outputs=outputs, cycles=total, hang=hangs, ii=ii, wall=wall,
             in_cycles=in_cycles, out_cycles=out_cycles, upset_cycles=upsets, stalled_cycles=stalled)


@cocotb.test()
async def run_job(dut) -> None:
    """Run every fault map of the job over every image; write outputs and cycles."""
    job_path = os.environ.get("MCEL_SIM_JOB")
    assert job_path, "MCEL_SIM_JOB is not set: run through `mcel sim` or `make -C hw_sim RUN=...`"
    job = SimJob.load(job_path)
    manifest = load_manifest(job.build_dir)
    in_fmt = StreamFormat.from_manifest(manifest.streams.input)
    out_fmt = StreamFormat.from_manifest(manifest.streams.output)
    memories = manifest.of_kind(*job.memory_kinds)
    inputs = np.load(job.inputs)
    n_images = inputs.shape[0] // in_fmt.words_per_image
    batch = job.batch_images
    predicted = np.load(job.predicted) if job.predicted else None

    start_clock(dut)
    dut.bp_enable.value = int(job.backpressure)
    await reset(dut)
    driver, monitor = StreamDriver(dut), StreamMonitor(dut, out_fmt.word_bytes)
    injector = BackdoorInjector(dut, memories)
    injector.read_golden(memories)
    axilite = AxiLiteInjector(dut, memories, injector) if job.inject == "axilite" else None
    scoreboard = Scoreboard(len(job.maps))

    in_ints = words_to_ints(inputs)
    if job.transient_cycle is not None:
        await transient_job(dut, job, memories, in_fmt, out_fmt)
        return
    if job.mode == "naive":
        t0 = time.perf_counter()
        out, cycles = await stream_naive(dut, in_ints, n_images * out_fmt.words_per_image)
        wall = time.perf_counter() - t0
        outputs = unpack(ints_to_words(out, out_fmt.word_bytes), out_fmt)[None]
        np.savez(job.out, outputs=outputs, cycles=np.array([cycles]), hang=np.array([False]),
                 ii=np.zeros(1), wall=np.array([wall]))
        return
    map_files = job.maps
    outputs = np.zeros((len(map_files), n_images, out_fmt.elems_per_image), dtype=np.int64)
    total_cycles = np.zeros(len(map_files), dtype=np.int64)
    stalled = np.zeros(len(map_files), dtype=np.int64)  # output cycles that waited for tready
    hangs = np.zeros(len(map_files), dtype=bool)
    ii = np.zeros(len(map_files), dtype=np.float64)
    wall = np.zeros(len(map_files), dtype=np.float64)
    watchdog = job.watchdog_cycles
    for m, map_file in enumerate(map_files):
        t0 = time.perf_counter()
        fmap = FaultMap.load(map_file) if map_file else None
        updates: dict[str, dict[int, int]] = {}
        if fmap is not None:
            check_map_fits(fmap, memories)
            updates = faulty_words(fmap, injector.golden)
            if axilite is not None:
                await axilite.inject(updates)
            else:
                injector.inject(updates)
        # Handle writes land at the end of the time step: verify a clock later. The reset makes
        # the memory streamers drop words they read ahead, so the new contents count at once.
        await RisingEdge(dut.ap_clk)
        injector.verify(updates)
        await reset(dut)
        out_cycles_all = []
        for start in range(0, n_images, batch):
            stop = min(n_images, start + batch)
            words = in_ints[start * in_fmt.words_per_image : stop * in_fmt.words_per_image]
            n_out = (stop - start) * out_fmt.words_per_image
            out_words, out_cycles, cycles, stalls, hang = await stream_batch(dut, driver, monitor, words, n_out,
                                                                             watchdog)
            total_cycles[m] += cycles
            stalled[m] += stalls
            if hang:
                hangs[m] = True
                dut._log.error(f"map {m}: hang, no output for {watchdog} cycles "
                               f"({len(out_words)}/{n_out} words out)")
                await reset(dut)
                break
            outputs[m, start:stop] = unpack(out_words, out_fmt)
            out_cycles_all.append(out_cycles[out_fmt.words_per_image - 1 :: out_fmt.words_per_image])
        if fmap is not None and axilite is not None:
            restored = await axilite.restore()
            await RisingEdge(dut.ap_clk)
            injector.verify(restored)
            await reset(dut)
        elif fmap is not None:
            restored = injector.restore()
            await RisingEdge(dut.ap_clk)
            injector.verify(restored)
        done_cycles = np.concatenate(out_cycles_all) if out_cycles_all else np.zeros(0)
        if len(done_cycles) > 1:
            ii[m] = float(np.median(np.diff(done_cycles)))
        scoreboard.check(m, outputs[m], None if predicted is None else predicted[m])
        wall[m] = time.perf_counter() - t0
        dut._log.info(f"map {m + 1}/{len(map_files)}: {n_images} images, {total_cycles[m]} cycles, "
                      f"{wall[m]:.2f} s")

    np.savez(job.out, outputs=outputs, cycles=total_cycles, hang=hangs, ii=ii, wall=wall,
             first_differing=scoreboard.first_differing, stalled_cycles=stalled)
    if predicted is not None and scoreboard.first_mismatch is not None:
        raise AssertionError(f"hardware differs from software prediction: first at {scoreboard.first_mismatch}, "
                             f"{scoreboard.mismatched_images}/{scoreboard.compared} images")
    assert not hangs.any(), f"hang in maps {np.flatnonzero(hangs).tolist()}"
