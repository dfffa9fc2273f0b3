"""Memory layouts: (word, bit) <-> (element, bit of element), natural and FINN MVAU."""

import numpy as np
import pytest

from mcel_train.memory import (
    Memory,
    MemoryLayoutError,
    decode_elements,
    encode_elements,
    memories_from_manifest,
)


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
    entry = {"name": "MVAU_0_mem", "kind": "weights", "depth": 4, "width": 12,
             "element_bits": 2, "layer_index": 0,
             "layout": {"type": "finn_mvau", "mh": 4, "mw": 6, "pe": 2, "simd": 3,
                        "element_bits": 2, "signed": True, "bipolar": False}}
    entry.update(over)
    return {"memories": [entry, {"name": "thr", "kind": "thresholds", "depth": 2, "width": 8}]}


def test_memories_from_manifest_reads_weights_and_checks_sizes():
    (mem,) = memories_from_manifest(_manifest())
    assert (mem.name, mem.rows, mem.cols, mem.pe, mem.simd) == ("MVAU_0_mem", 4, 6, 2, 3)
    assert mem.layout == "finn_mvau" and mem.depth == 4
    with pytest.raises(MemoryLayoutError, match="depth=13"):
        memories_from_manifest(_manifest(depth=13))
    with pytest.raises(MemoryLayoutError, match="not supported"):
        memories_from_manifest(_manifest(layout={"type": "weird"}))
    with pytest.raises(MemoryLayoutError, match="memories"):
        memories_from_manifest({})
