"""Fault models: pure functions of (memories, model, rate, seed, map index), sampled sparsely."""

import numpy as np
import pytest

from mcel_train.faults import FaultModel, FaultModelError, generate_map, stored_bits
from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1
from mcel_train.memory import Memory

MEMS = [Memory("layer0", 16, 32, 2), Memory("layer1", 8, 16, 1, bipolar=True)]
TOTAL = sum(m.n_bits for m in MEMS)


def _key(fm):
    return list(zip(fm.memory.tolist(), fm.word.tolist(), fm.bit.tolist(), fm.kind.tolist(),
                    strict=True))


def test_map_i_does_not_depend_on_how_many_maps_are_made():
    few = [generate_map(MEMS, "flip", 0.05, 7, i) for i in range(3)]
    many = [generate_map(MEMS, "flip", 0.05, 7, i) for i in range(10)]
    assert all(_key(a) == _key(b) for a, b in zip(few, many, strict=False))
    assert _key(many[5]) == _key(generate_map(MEMS, "flip", 0.05, 7, 5))
    assert _key(many[0]) != _key(many[1])
    assert _key(generate_map(MEMS, "flip", 0.05, 8, 0)) != _key(many[0])


def _global_positions(fm):
    """Each fault's bit in the global bit order of mcel_train/faults/generate.py (memory by
    memory, word-major, then bit), the order generate_map returns its faults in."""
    starts = np.cumsum([0] + [m.n_bits for m in MEMS])[:-1]
    widths = np.array([m.width for m in MEMS])
    return starts[fm.memory] + fm.word * widths[fm.memory] + fm.bit


@pytest.mark.parametrize("model, rate", [("flip", 0.2), ("stuck", 0.2), ("kflips", 300),
                                         ("asym:p01=0.5,p10=1", 0.3)])
def test_maps_are_valid_and_sorted(model, rate):
    """Sorted by (memory, word, bit), strictly: asym draws its ones and zeros separately and
    kflips in random order, so only the final sort puts them in order."""
    bits = np.random.default_rng(1).integers(0, 2, TOTAL).astype(np.uint8)
    fm = generate_map(MEMS, model, rate, 0, 0, bits=bits)
    fm.validate(MEMS)
    assert len(fm) > 100
    assert set(fm.memory_names) == {"layer0", "layer1"} and set(fm.memory.tolist()) == {0, 1}
    pos = _global_positions(fm)
    assert (np.diff(pos) > 0).all()
    assert np.array_equal(np.lexsort((fm.bit, fm.word, fm.memory)), np.arange(len(fm)))
    assert fm.meta == {"fault_model": str(FaultModel.parse(model)), "rate": rate, "seed": 0,
                       "map_index": 0}


def test_rate_edges_and_counts():
    assert len(generate_map(MEMS, "flip", 0.0, 0, 0)) == 0
    assert len(generate_map(MEMS, "flip", 1.0, 0, 0)) == TOTAL
    counts = [len(generate_map(MEMS, "flip", 0.1, 0, i)) for i in range(200)]
    assert abs(np.mean(counts) - 0.1 * TOTAL) < 4 * np.sqrt(0.1 * 0.9 * TOTAL / 200)


def test_kflips_gives_exactly_k_distinct_flips():
    fm = generate_map(MEMS, "kflips", 17, 3, 0)
    assert len(fm) == 17 and (fm.kind == FLIP).all()
    fm.validate(MEMS)
    with pytest.raises(FaultModelError, match="integer count"):
        generate_map(MEMS, "kflips", 1.5, 0, 0)


def test_stuck_at_uses_both_kinds():
    fm = generate_map(MEMS, "stuck", 0.3, 0, 0)
    assert set(np.unique(fm.kind)) == {STUCK0, STUCK1}


def test_asym_flips_only_the_stored_value_it_is_asked_to():
    rng = np.random.default_rng(0)
    contents = {"layer0": rng.integers(-1, 2, (16, 32)),
                "layer1": rng.choice([-1, 1], (8, 16))}
    bits = stored_bits(MEMS, contents)
    fm = generate_map(MEMS, "asym", 0.3, 0, 0, contents=contents)  # p10 = 0.3, p01 = 0
    assert len(fm) > 0
    offsets = {"layer0": 0, "layer1": MEMS[0].n_bits}
    for m, w, b in zip(fm.memory, fm.word, fm.bit, strict=True):
        mem = MEMS[m]
        assert bits[offsets[mem.name] + w * mem.width + b] == 1
    only01 = generate_map(MEMS, "asym:p01=1,p10=0", 0.3, 0, 0, bits=bits)
    for m, w, b in zip(only01.memory, only01.word, only01.bit, strict=True):
        mem = MEMS[m]
        assert bits[offsets[mem.name] + w * mem.width + b] == 0
    with pytest.raises(FaultModelError, match="stored contents"):
        generate_map(MEMS, "asym", 0.1, 0, 0)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rates_outside_unit_interval_are_rejected(rate):
    with pytest.raises(FaultModelError, match=r"\[0, 1\]"):
        generate_map(MEMS, "flip", rate, 0, 0)


def test_unknown_models_and_parameters_are_rejected():
    with pytest.raises(FaultModelError, match="unknown fault model 'melt'"):
        generate_map(MEMS, "melt", 0.1, 0, 0)
    with pytest.raises(FaultModelError, match="no parameter"):
        FaultModel.parse("flip:p01=1")
    with pytest.raises(FaultModelError, match="k=v"):
        FaultModel.parse("asym:p01")
    assert str(FaultModel.parse({"model": "asym", "p01": 0.5})) == "asym:p01=0.5"


def test_sampling_is_sparse_on_huge_memories():
    """8.6e9 bits: one draw per bit would not fit in memory, so this finishing at all shows the
    sampling is sparse. The count is Binomial(n, p): mean n*p = 859, sigma = sqrt(n*p*(1-p)) =
    29.3; a correct sampler leaves mean +- 6 sigma with probability 2e-9, while a count off by
    a factor (rate per byte instead of per bit, a lost bit width) lands far outside."""
    huge = [Memory("big", 1 << 15, 1 << 15, 8)]
    n, p = huge[0].n_bits, 1e-7
    fm = generate_map(huge, "flip", p, 0, 0)
    mean, sigma = n * p, np.sqrt(n * p * (1 - p))
    assert abs(len(fm) - mean) <= 6 * sigma, (len(fm), mean, sigma)
    fm.validate(huge)
    assert len(set(zip(fm.word.tolist(), fm.bit.tolist(), strict=True))) == len(fm)
