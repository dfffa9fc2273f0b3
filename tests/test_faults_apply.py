"""Faults act on the stored integers: two's complement, bipolar negation, no clipping."""

import numpy as np
import pytest
import torch

from mcel_train.faults import FaultMap, apply_map, apply_maps_stacked, apply_to_values
from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1
from mcel_train.intnet import from_brevitas
from mcel_train.memory import Memory
from mcel_train.models import ModelSpec, build_model


def test_signed_two_bit_flips_and_stuck_bits():
    mem = Memory("w", 1, 4, 2)
    w = np.array([[1, 0, -1, 1]])
    # element 0: 01 -> flip bit 1 -> 11 = -1; element 1: 00 -> flip bit 1 -> 10 = -2 (kept)
    # element 2: 11 -> stuck0 bit 0 -> 10 = -2; element 3: 01 -> stuck1 bit 0 -> unchanged
    out = apply_to_values(w, mem, np.array([0, 1, 2, 3]), np.array([1, 1, 0, 0]),
                          np.array([FLIP, FLIP, STUCK0, STUCK1]))
    assert out.tolist() == [[-1, -2, -2, 1]]
    assert w.tolist() == [[1, 0, -1, 1]]  # input untouched


def test_several_faults_in_one_element_combine():
    mem = Memory("w", 1, 1, 4)
    out = apply_to_values(np.array([[3]]), mem, np.array([0, 0, 0]), np.array([0, 2, 3]),
                          np.array([FLIP, STUCK1, FLIP]))  # 0011 -> 0010 -> 0110 -> 1110
    assert out.tolist() == [[-2]]


def test_bipolar_flip_negates():
    mem = Memory("w", 2, 2, 1, bipolar=True)
    out = apply_to_values(np.array([[1, -1], [1, 1]]), mem, np.array([0, 1, 3]),
                          np.array([0, 0, 0]), np.array([FLIP, FLIP, STUCK1]))
    assert out.tolist() == [[-1, 1], [1, 1]]


def test_finn_layout_puts_the_fault_on_the_right_element():
    mem = Memory("w", 4, 6, 2, pe=2, simd=3, layout="finn_mvau")
    w = np.zeros((4, 6), dtype=np.int64)
    # word 3 = nf 1, sf 1; bit 9 = lane 4 (pe 1, s 1), element bit 1 -> W[3, 4]
    out = apply_to_values(w, mem, np.array([3]), np.array([9]), np.array([FLIP]))
    assert out[3, 4] == -2 and np.count_nonzero(out) == 1


def test_stacked_equals_one_by_one():
    mems = [Memory("a", 3, 5, 2)]
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, (3, 5))
    maps = [FaultMap(["a"], [0] * 3, rng.integers(0, 15, 3), rng.integers(0, 2, 3), [0, 1, 2])
            for _ in range(4)]
    maps = [m for m in maps if len(set(zip(m.word, m.bit, strict=True))) == 3]
    stacked = apply_maps_stacked(w, mems[0], maps)
    for i, m in enumerate(maps):
        assert np.array_equal(stacked[i], apply_map({"a": w}, mems, m)["a"])


@pytest.mark.parametrize("bits", [(2, 2), (1, 1)])
def test_single_flip_changes_the_logits_as_computed_by_hand(bits):
    torch.manual_seed(0)
    spec = ModelSpec(arch="tfc", weight_bits=bits[0], act_bits=bits[1], hidden=(16, 16),
                     image_shape=(4, 4))
    model = build_model(spec)
    model.train()
    model(torch.randint(0, 256, (64, 16)).float())  # settle BatchNorm / activation statistics
    net = from_brevitas(model.eval())
    x = torch.randint(0, 256, (8, 16)).float()
    if spec.resolved().input_kind == "bipolar":
        x = torch.where(x >= 128, 1.0, -1.0)
    hidden: list = []
    clean = net.forward(x, collect=hidden)[0]
    last = net.layers[-1]
    h = net.layers[-2].post(hidden[-2][0])  # integer inputs of the last layer
    mem = net.memories()[-1]
    r, c, b = 3, 5, bits[0] - 1  # flip the top bit of W[3, 5]
    word, bit = mem.elements_to_bits(np.array([r * mem.cols + c]), np.array([b]))
    fmap = FaultMap([mem.name], [0], word, bit, [FLIP])
    faulty = apply_map(net.contents(), net.memories(), fmap)
    w_old, w_new = int(last.weight[r, c]), int(faulty[mem.name][r, c])
    expected_new = -w_old if bits[0] == 1 else w_old ^ -2  # toggle the sign bit
    assert w_new == expected_new
    out = net.forward(x, [None] * (len(net.layers) - 1) + [faulty[mem.name][None]])[0]
    expected = clean.clone()
    expected[:, r] += (w_new - w_old) * h[:, c]
    assert torch.equal(out, expected)
