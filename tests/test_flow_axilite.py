"""Runtime-writeable weights: an AXI-lite line write at accel_top == rewriting the init file.

Why: fault injection may go through the weight memories' AXI-lite ports instead of simulator
handles (``build_run(..., runtime_writeable=True)`` exposes them as ``s_axilite_<node>_*``, the
naming hw_sim/harness.py passes through). For a FINN MVAU_rtl memstream (tfc_w2a2) and the
project's BinMVAU (tfc_w1a1), one weight line of the last layer is rewritten over AXI-lite in a
cocotb simulation of accel_top (tests/axilite_top_tb.py) and read back; after the manifest's
``flush_images`` the outputs must equal those of the plain C++ harness run on the same build
with the init file rewritten to the same weights (and differ from the clean outputs). Line 0 is
used on purpose: FINN's memstream has already read it ahead at reset, so the flush matters.
About 1-2 minutes cold on 2 cores (two flow builds and two cocotb builds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mcel_train.data import load_dataset
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import quick_train, test_accuracy, write_run

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent

MODELS = {
    "tfc_w1a1": (ModelSpec(arch="tfc", weight_bits=1, act_bits=1, hidden=(32, 32),
                           image_shape=(8, 8)), 32, "BinMVAU_2", 100),
    "tfc_w2a2": (ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(32, 32),
                           image_shape=(8, 8)), 64, "MVAU_rtl_2", 200),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def writeable_build(request, tmp_path_factory):
    from flows.build import build_run

    # 200 steps for w2a2 as in test_flow_build.py: after 100 the export check met an exact
    # float tie between two logits (argmax differs from torch by rounding only)
    spec, target, layer, steps = MODELS[request.param]
    digits = load_dataset("digits")
    run = tmp_path_factory.mktemp("axil") / request.param
    model = quick_train(spec, digits, steps=steps)
    write_run(run, model, spec.resolved(), "digits",
              {"test_acc": test_accuracy(model, digits, spec.resolved())})
    record = build_run(run, folding="auto", target_cycles=target, n_verify=200,
                       runtime_writeable=True)
    return run, record, layer


def _line_words(line: int, data_bits: int) -> list[int]:
    return [(line >> (32 * i)) & 0xFFFFFFFF for i in range(-(-data_bits // 32))]


def test_axilite_write_equals_init_file_rewrite(writeable_build, tmp_path):
    from flows.build import cpp_harness_format
    from flows.custom_ops.rtl_sim import build as cocotb_build
    from flows.custom_ops.rtl_sim import run as cocotb_run
    from flows.manifest import write_weights_to_init
    from hw_sim.runner import design_sources
    from hw_sim.verilate import WNO, link_memories, run_simulator
    from mcel_train.manifest import load_manifest
    from mcel_train.memory import encode_mvau
    from mcel_train.runio import load_run

    run, record, layer = writeable_build
    assert record["verification"]["bit_exact"]
    build = run / "build"
    man = load_manifest(build)
    ports = {p.layer: p for p in man.axilite_ports}
    assert set(ports) == {m.layer for m in man.weights.values()}
    entry = next(m for m in man.weights.values() if m.layer == layer)
    axil = entry.axilite
    assert axil.exposed_at_top and axil.prefix == f"s_axilite_{layer}"
    assert ports[layer].prefix == axil.prefix and ports[layer].memory == entry.name
    top = (build / "hdl" / "accel_top.sv").read_text()
    assert f"input  logic [{ports[layer].addr_width - 1}:0] {axil.prefix}_awaddr" in top

    # new weights: every element of line 0 changed (bipolar: negated; INT-B: +1 wrapping)
    w = man.weight_matrix(entry.name)
    lay = entry.layout
    new = w.copy()
    rows = range(0, lay["pe"])
    cols = range(0, lay["simd"])
    for r in rows:
        for c in cols:
            if lay["bipolar"]:
                new[r, c] = -w[r, c]
            else:
                b = lay["element_bits"]
                new[r, c] = ((w[r, c] + 1 + 2 ** (b - 1)) % 2 ** b) - 2 ** (b - 1)
    line = encode_mvau(new, lay)[0]
    assert line != encode_mvau(w, lay)[0]
    words = _line_words(line, entry.data_bits)
    k = axil.words_per_line
    writes = [[(0 * k + i) * 4, wd] for i, wd in enumerate(words)]

    x, _ = load_run(run).test_inputs(20)
    np.save(tmp_path / "x.npy", x)
    fmt = cpp_harness_format(man)
    cfg = {
        "prefix": axil.prefix, "all_prefixes": [p.prefix for p in man.axilite_ports],
        "writes": writes, "reads": writes, "inputs": str(tmp_path / "x.npy"),
        "outputs": str(tmp_path / "hw_axil.npy"), "n_flush": axil.flush_images,
        "stream": {"in_bits": fmt.in_bits, "in_simd": fmt.in_simd, "in_kind": fmt.in_kind,
                   "in_elems": fmt.in_elems, "out_bits": fmt.out_bits, "out_pe": fmt.out_pe,
                   "out_elems": fmt.out_elems},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sources = design_sources(man)
    link_memories(tmp_path / "sim", build / "hdl" / "mem")
    runner = cocotb_build(sources, "accel_top", build / "cocotb_axil",
                          extra_args=["--no-timing", "+define+FINN_SIMULATION",
                                      *[f"-Wno-{x}" for x in WNO]])
    cocotb_run(runner, "accel_top", "axilite_top_tb", tmp_path / "sim",
               extra_env={"AXIL_TB_CONFIG": str(tmp_path / "cfg.json")}, module_dir=TESTS)
    hw_axil = np.load(tmp_path / "hw_axil.npy")

    mem = build / "hdl" / "mem"
    clean, _ = run_simulator(build / "verilator" / "accel_sim", x, fmt, tmp_path / "clean", mem_dir=mem)
    write_weights_to_init(man, entry.name, new)  # same binary, new init file
    hw_file, _ = run_simulator(build / "verilator" / "accel_sim", x, fmt, tmp_path / "file", mem_dir=mem)
    assert not np.array_equal(hw_file, clean)
    np.testing.assert_array_equal(hw_axil, hw_file)
