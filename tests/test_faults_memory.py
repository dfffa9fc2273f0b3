"""Memory layouts: (word, bit) <-> (element, bit of element), natural and FINN MVAU."""

import json

import numpy as np
import pytest

from mcel_train.errors import ArtifactError
from mcel_train.manifest import load_manifest, parse_manifest
from mcel_train.memory import Memory, MemoryLayoutError, decode_elements, encode_elements


def test_natural_layout_is_row_major_one_element_per_word():
    mem = Memory("m", rows=3, cols=4, element_bits=2)
    assert (mem.depth, mem.width) == (12, 2)
    idx, ebit = mem.bits_to_elements(np.array([0, 5, 11]), np.array([1, 0, 1]))
    assert idx.tolist() == [0, 5, 11] and ebit.tolist() == [1, 0, 1]


def test_finn_mvau_layout_matches_the_documented_formula():
    mh, mw, pe, simd, b = 4, 6, 2, 3, 2
    mem = Memory("w", mh, mw, b, pe=pe, simd=simd, layout="finn_mvau")
    assert mem.depth == mw * mh // (pe * simd) and mem.width == pe * simd * b
    for nf in range(mh // pe):
        for sf in range(mw // simd):
            for p in range(pe):
                for s in range(simd):
                    for eb in range(b):
                        word = nf * (mw // simd) + sf
                        bit = (p * simd + s) * b + eb
                        idx, ebit = mem.bits_to_elements(np.array([word]), np.array([bit]))
                        row, col = nf * pe + p, sf * simd + s
                        assert idx[0] == row * mw + col and ebit[0] == eb


@pytest.mark.parametrize("pe,simd,bits", [(1, 1, 1), (2, 3, 2), (4, 6, 4), (1, 2, 8)])
def test_mapping_is_a_bijection(pe, simd, bits):
    mem = Memory("w", 4, 6, bits, pe=pe, simd=simd, layout="finn_mvau", bipolar=bits == 1)
    word, bit = np.meshgrid(np.arange(mem.depth), np.arange(mem.width), indexing="ij")
    idx, ebit = mem.bits_to_elements(word.ravel(), bit.ravel())
    assert np.unique(idx * bits + ebit).size == mem.n_bits
    w2, b2 = mem.elements_to_bits(idx, ebit)
    assert np.array_equal(w2, word.ravel()) and np.array_equal(b2, bit.ravel())


def test_out_of_range_and_bad_folding_raise():
    mem = Memory("m", 2, 2, 2)
    with pytest.raises(MemoryLayoutError, match="word index"):
        mem.bits_to_elements(np.array([4]), np.array([0]))
    with pytest.raises(MemoryLayoutError, match="PE=3"):
        Memory("m", 4, 4, 2, pe=3, layout="finn_mvau")


def test_twos_complement_codes_keep_out_of_range_values():
    vals = np.array([-2, -1, 0, 1])
    codes = encode_elements(vals, 2, False)
    assert codes.tolist() == [2, 3, 0, 1]
    assert decode_elements(codes, 2, False).tolist() == vals.tolist()
    assert encode_elements(np.array([-1, 1]), 1, True).tolist() == [0, 1]
    assert decode_elements(np.array([0, 1]), 1, True).tolist() == [-1, 1]


def test_stored_bits_follow_the_layout():
    mem = Memory("w", 2, 2, 2, pe=2, simd=1, layout="finn_mvau")
    w = np.array([[1, -1], [0, -2]])  # codes 01, 11 / 00, 10
    bits = mem.stored_bits(w)
    # word 0 = column 0: W[0,0]=01 at bits 0..1, W[1,0]=00 at bits 2..3
    assert bits[0].tolist() == [1, 0, 0, 0]
    assert bits[1].tolist() == [1, 1, 0, 1]


def _manifest(**over):
    """A minimal valid manifest with one 4 x 6 weight memory (PE 2, SIMD 3) and one threshold memory."""
    entry = {"name": "MVAU_0_mem", "layer": "MVAU_0", "kind": "weights", "path": "top.w.Mem", "depth": 4,
             "width": 16, "data_bits": 12, "element_bits": 2, "datatype": "INT2", "signed": True,
             "bipolar": False, "pe": 2, "simd": 3, "init_file": "hdl/mem/w.dat", "instance": "top.w",
             "init_param": "INIT_FILE",
             "layout": {"type": "finn_mvau", "mh": 4, "mw": 6, "pe": 2, "simd": 3,
                        "element_bits": 2, "signed": True, "bipolar": False}}
    entry.update(over)
    thr = dict(entry, name="thr", kind="thresholds", depth=2, width=8, data_bits=8, layout={"type": "finn_thresholds"})
    stream = {"tdata_bits": 8, "datatype": "UINT8", "element_bits": 8, "elements": 6, "elements_per_beat": 1,
              "beats_per_image": 6, "shape": [1, 6]}
    return {"version": 2, "top": "top", "top_file": "hdl/top.sv", "filelist": "hdl/filelist.f", "clock": "ap_clk",
            "reset": "ap_rst_n", "nodes": [], "memories": [entry, thr],
            "streams": {"input": stream, "output": stream}}


def test_manifest_memories_are_checked_against_their_folding():
    man = parse_manifest(_manifest(), "test")
    (mem,) = man.fault_memories(("weights",))
    assert (mem.name, mem.rows, mem.cols, mem.pe, mem.simd) == ("MVAU_0_mem", 4, 6, 2, 3)
    assert mem.layout == "finn_mvau" and (mem.depth, mem.width) == (4, 12)
    (thr,) = man.fault_memories(("thresholds",))
    assert (thr.name, thr.depth, thr.width, thr.kind) == ("thr", 2, 8, "thresholds")
    with pytest.raises(ArtifactError, match="depth x data bits 13 x 12"):
        parse_manifest(_manifest(depth=13), "test").fault_memories(("weights",))
    with pytest.raises(ArtifactError, match="not a weight layout"):
        parse_manifest(_manifest(layout={"type": "weird"}), "test").fault_memories(("weights",))


@pytest.mark.parametrize("change, field", [
    ({"memories": 5}, "memories"), ({"version": 1}, "version"), ({"streams": {}}, "streams.input"),
    ({"memories": [{"name": "x"}]}, "memories.0.layer"),
])
def test_bad_manifests_are_one_line_naming_the_field(change, field):
    data = {**_manifest(), **change}
    with pytest.raises(ArtifactError, match=field) as err:
        parse_manifest(data, "build/manifest.json")
    assert "\n" not in str(err.value) and "build/manifest.json" in str(err.value)


def test_manifest_loader_names_a_truncated_file(tmp_path):
    text = json.dumps(_manifest())
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        load_manifest(tmp_path / "nowhere")
