"""Stream packing (FINN's element order) and fault-map -> memory-word translation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hw_sim.injection import check_map_fits, faulty_words
from hw_sim.streams import StreamFormat, ints_to_words, pack, unpack, words_to_ints
from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1, FaultMap, FaultMapError


def test_pack_places_element_zero_in_low_bits():
    fmt = StreamFormat(elems_per_image=4, elems_per_word=2, elem_bits=4, word_bits=8)
    words = words_to_ints(pack(np.array([[1, 2, 3, 15]]), fmt))
    assert words == [0x21, 0xF3]


@pytest.mark.parametrize("fmt", [
    StreamFormat(12, 3, 8, 24),
    StreamFormat(10, 5, 13, 72, signed=True),
    StreamFormat(16, 16, 1, 16, bipolar=True),
    StreamFormat(6, 2, 2, 8, signed=True),
])
def test_pack_unpack_roundtrip(fmt):
    rng = np.random.default_rng(0)
    if fmt.bipolar:
        v = rng.choice([-1, 1], size=(5, fmt.elems_per_image))
    elif fmt.signed:
        v = rng.integers(-(1 << (fmt.elem_bits - 1)), 1 << (fmt.elem_bits - 1), size=(5, fmt.elems_per_image))
    else:
        v = rng.integers(0, 1 << fmt.elem_bits, size=(5, fmt.elems_per_image))
    words = pack(v, fmt)
    assert words.shape == (5 * fmt.words_per_image, fmt.word_bytes)
    assert np.array_equal(unpack(words, fmt), v)
    assert np.array_equal(ints_to_words(words_to_ints(words), fmt.word_bytes), words)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        pack(np.array([[256, 0]]), StreamFormat(2, 2, 8, 16))
    with pytest.raises(ValueError, match="bipolar"):
        pack(np.array([[0, 1]]), StreamFormat(2, 2, 1, 8, bipolar=True))


def _map(words, bits, kinds, names=("m",)):
    return FaultMap(list(names), np.zeros(len(words)), np.array(words), np.array(bits), np.array(kinds))


def test_faulty_words_flip_and_stuck():
    golden = {"m": [0b1010, 0b0000, 0b1111]}
    fmap = _map([0, 0, 1, 2], [0, 3, 2, 1], [FLIP, FLIP, STUCK1, STUCK0])
    assert faulty_words(fmap, golden) == {"m": {0: 0b0011, 1: 0b0100, 2: 0b1101}}
    # stuck-at to the value already stored changes nothing but is still written
    assert faulty_words(_map([0], [1], [STUCK1]), golden) == {"m": {0: 0b1010}}


def test_map_must_fit_the_manifest():
    mems = {"m": SimpleNamespace(depth=3, width=4)}  # what check_map_fits reads of a MemoryEntry
    check_map_fits(_map([2], [3], [FLIP]), mems)
    with pytest.raises(FaultMapError, match="lacks"):
        check_map_fits(_map([0], [0], [FLIP], names=("other",)), mems)
    with pytest.raises(FaultMapError, match="beyond its word width"):
        check_map_fits(_map([0], [4], [FLIP]), mems)
    with pytest.raises(FaultMapError, match="beyond its depth"):
        check_map_fits(_map([3], [0], [FLIP]), mems)
