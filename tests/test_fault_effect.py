"""The fault-effect evidence of the paper reproduction is what the faulted networks compute: the
margin shrink equals a recomputation from the per-map integer forward with the faulted weights,
and a layer faulted alone is scored like the per-map Brevitas reference with only that layer's
weights faulted."""

import numpy as np
import pytest
import torch

from mcel_train.fault_effect import layer_attribution, margin_shift
from mcel_train.faults import apply_map, generate_map
from mcel_train.intnet import from_brevitas
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import model_inputs, quick_train
from tests.conftest import brevitas_predictions

SPECS = {
    "tfc_w2a2": ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(32, 32), image_shape=(8, 8)),
    "vgg3_w4a4_minmax": ModelSpec(arch="vgg3", weight_bits=4, act_bits=4, channels=(4, 8), hidden=(16,),
                                  image_shape=(8, 8), weight_scaling="minmax"),
}
RATE = 0.03


@pytest.fixture(scope="module", params=sorted(SPECS))
def trained(request, digits):
    spec = SPECS[request.param].resolved()
    torch.manual_seed(0)
    model = quick_train(spec, digits, steps=40, batch_size=64)
    x = torch.as_tensor(model_inputs(digits.test.images, spec), dtype=torch.float32)
    return model, from_brevitas(model), x, np.asarray(digits.test.labels)


def _faulted_logits(net, x, fmap):
    faulty = apply_map(net.contents(), net.memories(), fmap)
    weights = [torch.as_tensor(faulty[layer.name])[None] for layer in net.layers]
    return net.forward(net.encode_input(x), weights)[0].double().numpy()


def _lead(z, top):
    own = z[np.arange(len(z)), top]
    other = z.copy()
    other[np.arange(len(z)), top] = -np.inf
    return own - other.max(1)


def test_margin_shift_is_recomputed_from_the_faulted_networks(trained):
    _, net, x, labels = trained
    got = margin_shift(net, x, labels, RATE, maps=3, seed=5)
    clean = net.forward(net.encode_input(x))[0].double().numpy()
    top = clean.argmax(1)
    margin = _lead(clean, top)
    maps = [generate_map(net.memories(), "flip", RATE, 5, i) for i in range(3)]
    faulty = np.stack([_faulted_logits(net, x, m) for m in maps])
    shrink = np.concatenate([margin - _lead(z, top) for z in faulty])
    assert got["median_clean_margin"] == np.median(margin)
    assert got["median_shrink"] == pytest.approx(np.median(shrink))
    assert got["fraction_predictions_changed"] == pytest.approx((faulty.argmax(2) != top).mean())
    assert got["median_largest_logit_change"] == np.median(np.abs(faulty - clean).max(2))
    assert got["fraction_predictions_changed"] > 0  # the faults reached the outputs: the check compared something
    assert got["accuracy_faulty"] < got["accuracy_clean"]


def test_a_layer_faulted_alone_matches_brevitas_with_only_that_layer_faulted(trained):
    model, net, x, labels = trained
    rows = layer_attribution(net, x, labels, RATE, maps=2, seed=7)
    mems = net.memories()
    assert [r["memory"] for r in rows] == [m.name for m in mems]
    assert sum(r["share_of_bits"] for r in rows) == pytest.approx(1.0)
    _, clean_pred = brevitas_predictions(model, x)
    clean_acc = (clean_pred.numpy() == labels).mean()
    for row, mem in zip(rows, mems, strict=True):
        accs = []
        for i in range(2):
            fmap = generate_map([mem], "flip", RATE, 7, i)
            faulty = apply_map(net.contents(), mems, fmap)
            for other in mems:  # the other layers' weights are the clean ones
                if other is not mem:
                    assert np.array_equal(faulty[other.name], net.contents()[other.name])
            _, pred = brevitas_predictions(model, x, {j: faulty[m.name] for j, m in enumerate(mems)})
            accs.append((pred.numpy() == labels).mean())
        assert row["accuracy"] == pytest.approx(np.mean(accs))
        assert row["drop_points"] == pytest.approx(100 * (clean_acc - np.mean(accs)))
    assert any(r["drop_points"] > 0 for r in rows)


def test_evidence_maps_take_their_seed_and_a_campaign_passes_it_on(trained):
    """The evidence's maps come from ``evidence.map_seed`` (it was fixed at 0): another seed,
    other maps, another measurement; the default keeps the task keys campaigns already have."""
    from flows.campaign.spec import parse_campaign
    from flows.campaign.tasks import expand
    from tests.test_campaign import TINY

    _, net, x, labels = trained
    assert margin_shift(net, x, labels, RATE, maps=3, seed=0) != margin_shift(net, x, labels, RATE, maps=3, seed=7)
    keys = {}
    for evidence in ({"images": 10}, {"images": 10, "map_seed": 0}, {"images": 10, "map_seed": 7}):
        task = next(t for t in expand(parse_campaign({**TINY, "evidence": evidence})) if t.stage == "evidence")
        keys[evidence.get("map_seed")] = task.key
        assert task.params.get("map_seed") == (evidence.get("map_seed") or None)
    assert keys[None] == keys[0] != keys[7]


def test_the_evidence_counts_both_extreme_weight_codes(smoke_run):
    """The zoo's signed weights are narrow-range: a 2-bit layer's codes are -1, 0, +1, and both
    -1 and +1 are extremes (only +1 was counted: -2 is never a code)."""
    from mcel_train.fault_effect import network_evidence
    from mcel_train.runio import load_run

    net = from_brevitas(load_run(smoke_run).model)
    got = network_evidence(smoke_run, 20, 0.01, 1)
    for layer, rec in zip(net.layers, got["layers"], strict=True):
        w = np.asarray(layer.weight)
        assert layer.weight_bits == 2 and set(np.unique(w)) <= {-1, 0, 1}
        assert rec["fraction_at_code_extremes"] == float((np.abs(w) == 1).mean()) > 0
