"""Random bit error training hook: faults in training forwards only, gradients straight through."""

import numpy as np
import torch

from mcel_train.fault_training import make_fault_injection_hook, override_quant_weights
from mcel_train.faults import apply_map
from mcel_train.intnet import from_brevitas
from mcel_train.memory import memories_from_model
from mcel_train.models import ModelSpec, build_model, quant_layers


def _model():
    torch.manual_seed(0)
    m = build_model(ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(16,),
                              image_shape=(4, 4)))
    m.train()
    m(torch.randint(0, 256, (32, 16)).float())
    return m


def _ints(layer):
    qw = layer.quant_weight()
    return torch.round(qw.value / qw.scale).detach()


def test_hook_injects_the_drawn_map_with_a_straight_through_gradient():
    model = _model()
    clean = [_ints(q).numpy().astype(np.int64) for q in quant_layers(model)]
    handle = make_fault_injection_hook(model, {"model": "flip"}, 0.2, seed=3)
    x = torch.randint(0, 256, (8, 16)).float()
    model.train()
    seen = {}

    def grab(i):
        def hook(mod, args, out):
            seen[i] = torch.round(out.value / out.scale).detach().numpy().astype(np.int64)
        return hook

    grabs = [q.weight_quant.register_forward_hook(grab(i))
             for i, q in enumerate(quant_layers(model))]
    out = model(x)
    fmap = handle.last_map
    assert handle.steps == 1 and len(fmap) > 0
    mems = memories_from_model(model)
    expected = apply_map({m.name: c for m, c in zip(mems, clean, strict=True)}, mems, fmap)
    for i, m in enumerate(mems):
        assert np.array_equal(seen[i], expected[m.name])
    out.sum().backward()
    assert quant_layers(model)[0].weight.grad is not None
    assert quant_layers(model)[0].weight.grad.abs().sum() > 0
    model.logits_and_scale(x)  # the training loop's entry point draws a map too
    assert handle.steps == 2
    # eval mode stays clean; remove() restores the model
    model.eval()
    model(x)
    assert np.array_equal(seen[0], clean[0])
    handle.remove()
    model.train()
    model(x)
    assert np.array_equal(seen[0], clean[0])
    for g in grabs:
        g.remove()


def test_same_seed_same_fault_sequence():
    """Two runs with the same seed see the same maps, step by step: every array of the map
    (memory, word, bit, kind), not the bit index alone, and never an empty map, since two empty
    maps would be equal whatever the hook does (rate 0.1 of this network's 832 bits: about 83 faults)."""
    a, b = _model(), _model()
    ha = make_fault_injection_hook(a, "flip", 0.1, seed=5)
    hb = make_fault_injection_hook(b, "flip", 0.1, seed=5)
    x = torch.zeros(2, 16)
    seen = []
    for _ in range(3):
        a(x)
        b(x)
        ma, mb = ha.last_map, hb.last_map
        assert len(ma) > 0
        assert ma.memory_names == mb.memory_names and ma.meta == mb.meta
        for field in ("memory", "word", "bit", "kind"):
            assert np.array_equal(getattr(ma, field), getattr(mb, field)), field
        seen.append(ma)
    ha.remove()
    hb.remove()
    # a sequence: each step draws a new map
    assert [m.meta["map_index"] for m in seen] == [0, 1, 2]
    assert not np.array_equal(seen[0].word, seen[1].word) or not np.array_equal(seen[0].bit, seen[1].bit)


def test_override_keeps_the_scale_and_out_of_range_values():
    model = _model().eval()
    net = from_brevitas(model)
    w = net.layers[0].weight.copy()
    w[0, 0] = -2  # outside narrow 2-bit range
    scale = float(quant_layers(model)[0].quant_weight().scale.detach())
    with override_quant_weights(model, {0: w}):
        qw = quant_layers(model)[0].quant_weight()
        assert float(qw.scale.detach()) == scale
        assert torch.equal(torch.round(qw.value / qw.scale).to(torch.int64),
                           torch.from_numpy(w))
    restored = _ints(quant_layers(model)[0]).to(torch.int64).numpy()
    assert np.array_equal(restored, net.layers[0].weight)
