"""The difference evaluator is exact: every map's logits equal the dense integer forward's, for
dense and conv layers, weight and threshold faults, flips, stuck-at and asymmetric faults."""

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcel_train import difference, evaluate, int8_products
from mcel_train.difference import DifferenceEvaluator
from mcel_train.evaluate import EXPLORE_BAND, MapEvaluator, memory_contents, predict
from mcel_train.faults import apply_map, generate_map
from mcel_train.faults.faultmap import FaultMap
from mcel_train.faults.generate import stored_bits
from mcel_train.intnet import (
    ConvGeometry,
    IdentityPostOp,
    IntLayer,
    IntNetwork,
    ThresholdPostOp,
    from_brevitas,
)
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import model_inputs, quick_train
from mcel_train.sweep import maps_needed, t_interval
from mcel_train.threshold_count import count_rate
from tests.bench_scripts import load_bench_script
from tests.conftest import brevitas_predictions

SPECS = {
    "tfc_w2a2": ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(32, 32), image_shape=(8, 8)),
    "tfc_w1a1": ModelSpec(arch="tfc", weight_bits=1, act_bits=1, hidden=(32, 32), image_shape=(8, 8)),
    # binarized layers fed 8-bit pixels, conv + pool + flatten
    "cnv_w1a1": ModelSpec(arch="cnv", weight_bits=1, act_bits=1, channels=(4, 8), hidden=(16, 16),
                          image_shape=(8, 8)),
    "vgg3_w4a4": ModelSpec(arch="vgg3", weight_bits=4, act_bits=4, channels=(4, 8), hidden=(16,),
                           image_shape=(8, 8)),
    # padded convs fed bipolar codes (level -1 at code 0): the int8 kernel must leave them out
    "vgg3_w1a1": ModelSpec(arch="vgg3", weight_bits=1, act_bits=1, channels=(4, 8), hidden=(16,),
                           image_shape=(8, 8)),
    # the paper's quantizer: per-tensor min/max, unsigned codes with a zero point
    "vgg3_w4a4_minmax": ModelSpec(arch="vgg3", weight_bits=4, act_bits=4, channels=(4, 8), hidden=(16,),
                                  image_shape=(8, 8), weight_scaling="minmax"),
}
CASES = [("flip", 0.002), ("flip", 0.03), ("stuck", 0.03), ("asym:p01=1,p10=0.1", 0.03), ("kflips", 3)]


# The tests of auto's revision by real times (sleeps set the paths' times): the choice does not
# depend on the network, so one dense and one conv network, not every spec
TIMED_CHOICE_SPECS = ["tfc_w2a2", "vgg3_w4a4"]


@pytest.fixture(scope="module", params=sorted(SPECS))
def trained(request, digits):
    spec = SPECS[request.param].resolved()
    torch.manual_seed(0)
    model = quick_train(spec, digits, steps=40, batch_size=64)
    x = model_inputs(digits.test.images, spec)
    net = from_brevitas(model)
    return model, net, x, digits.test.labels


def dense_logits(net, x, ev, fmap):
    weights = ev.stacked_weights([fmap])
    return net.forward(torch.as_tensor(x, dtype=torch.float32), weights, max_abs_input=ev.max_abs_input)[0]


def images_changed_equal_to_dense(net, x, ev, diff, maps, results) -> int:
    """Asserts each map's difference result equals its dense forward; returns the (map, image)
    pairs whose logits the faults changed (so a test can check the faults reached images)."""
    changed = 0
    for fmap, res in zip(maps, results, strict=True):
        ref = dense_logits(net, x, ev, fmap)
        assert torch.equal(with_difference(diff, res), ref)
        changed += int((ref != diff.clean_logits).any(1).sum())
    return changed


def with_difference(diff: DifferenceEvaluator, result) -> torch.Tensor:
    logits = diff.clean_logits.clone()
    if len(result.rows):
        logits[torch.from_numpy(result.rows)] = torch.from_numpy(result.logits).to(logits.dtype)
    return logits


@pytest.mark.parametrize("fault_model, rate", CASES)
def test_difference_logits_equal_dense_for_every_map(trained, fault_model, rate):
    model, net, x, labels = trained
    mems = net.memories()
    bits = stored_bits(mems, memory_contents(net, mems)) if fault_model.startswith("asym") else None
    maps = [generate_map(mems, fault_model, rate, 3, i, bits=bits) for i in range(4)]
    ev = MapEvaluator(net, x, labels, method="dense")
    diff = DifferenceEvaluator(net, torch.as_tensor(x), mems, batch=70)  # several image batches
    results = diff.run_many(maps)
    # and the difference carried through every layer, never switching to the dense finish
    whole = DifferenceEvaluator(net, torch.as_tensor(x), mems, batch=70, switch_fraction=float("inf"))
    changed_somewhere = False
    for fmap, res, res_whole in zip(maps, results, whole.run_many(maps), strict=True):
        assert res is not None
        ref = dense_logits(net, x, ev, fmap)
        assert torch.equal(with_difference(diff, res), ref)
        assert torch.equal(with_difference(whole, res_whole), ref)
        # every image whose logits differ is among the rows reported
        differs = (ref != diff.clean_logits).any(1).nonzero().flatten().numpy()
        assert set(differs) <= set(res.rows)
        changed_somewhere |= len(differs) > 0
        # and the prediction equals the per-map Brevitas reference
        faulty = apply_map(net.contents(), mems, fmap)
        _, ref_pred = brevitas_predictions(model, x, {j: faulty[mem.name] for j, mem in enumerate(mems)})
        assert torch.equal(predict(with_difference(diff, res)), ref_pred)
    assert changed_somewhere  # the faults reached the output: the check compared something


def test_a_group_mixing_rates_gives_each_map_its_own_result(trained, monkeypatch):
    """One group of maps at very different rates: some switch to the dense finish after the
    first layer, some carry their difference to the logits, an empty map ends at once; each
    map's logits equal its own dense evaluation (the maps share one compiled step per layer)."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, model, rate, 11, i) for i, (model, rate) in enumerate(
        [("kflips", 1), ("flip", 0.08), ("flip", 0.0), ("flip", 0.004), ("flip", 0.3), ("kflips", 2)])]
    diff = DifferenceEvaluator(net, torch.as_tensor(x), mems, batch=90)
    assert diff.group >= len(maps)
    ev = MapEvaluator(net, x, labels, method="dense")
    finishes = []
    plain_finish = DifferenceEvaluator._finish_dense

    def counted_finish(self, *args):
        finishes.append(args[0])
        return plain_finish(self, *args)

    monkeypatch.setattr(DifferenceEvaluator, "_finish_dense", counted_finish)
    results = diff.run_many(maps)
    assert len(results[2].rows) == 0  # no faults: no image differs
    for fmap, res in zip(maps, results, strict=True):
        assert torch.equal(with_difference(diff, res), dense_logits(net, x, ev, fmap))
    batches = -(-len(x) // diff.batch)
    assert 0 < len(finishes) < 5 * batches  # some maps switched to the dense finish, not all


def test_threshold_faults_enter_as_faulty_post_ops(trained, monkeypatch):
    """Maps with faulty thresholds at one layer share a group with a weight-only map; one of
    them has no flipped weight at all. Every layer takes its compiled step for all of them (conv:
    a map's thresholds beside the clean ones; dense, the first layer's clean-input step
    included: each map's outputs with faulty thresholds counted anew), never a per-map tensor
    step."""
    _, net, x, labels = trained
    mems = net.memories()
    diff = DifferenceEvaluator(net, torch.as_tensor(x), mems)
    faulty_in_compiled = []
    compiled = difference.conv_layer_maps

    def conv_layer_maps(*a):
        thresholds = a[20]  # (maps, out, K)
        faulty_in_compiled.append(any(not np.array_equal(t, thresholds[-1]) for t in thresholds))
        return compiled(*a)

    faulty_in_dense = []

    def counting(kernel, t_ptr_at):
        def call(*a):
            faulty_in_dense.append(int(a[t_ptr_at][-1]))  # outputs with faulty thresholds, all maps
            return kernel(*a)
        return call

    monkeypatch.setattr(difference, "conv_layer_maps", conv_layer_maps)
    monkeypatch.setattr(difference, "dense_layer_maps", counting(difference.dense_layer_maps, 16))
    monkeypatch.setattr(difference, "clean_input_layer_maps", counting(difference.clean_input_layer_maps, 5))
    monkeypatch.setattr(diff, "_conv_step", lambda *a: pytest.fail("a conv layer took the tensor step"))
    monkeypatch.setattr(diff, "_dense_step", lambda *a: pytest.fail("a dense layer took the tensor step"))
    rng = np.random.default_rng(0)
    hidden = [i for i, layer in enumerate(net.layers) if isinstance(layer.post, ThresholdPostOp)]
    weight_map = generate_map(mems, "flip", 0.002, 5, 0)
    no_flips = generate_map(mems, "flip", 0.0, 5, 0)
    maps, posts, refs = [], [], []
    for k, i in enumerate(hidden + hidden[-1:]):
        fmap = no_flips if k == len(hidden) else weight_map
        post = net.layers[i].post
        t = post.thresholds.clone()
        chans = rng.choice(t.shape[0], size=2, replace=False)
        finite = torch.isfinite(t[chans])
        t[chans] = torch.where(finite, t[chans] + torch.as_tensor(rng.integers(-6, 7, t[chans].shape)), t[chans])
        faulty = ThresholdPostOp(t, post.out_scale, post.out_bias, post.out_mult, post.sign)
        saved = net.layers[i].post
        try:
            net.layers[i].post = faulty
            refs.append(dense_logits(net, x, MapEvaluator(net, x, labels, method="dense"), fmap))
        finally:
            net.layers[i].post = saved
        maps.append(fmap)
        posts.append({i: faulty})
    maps.append(weight_map)
    posts.append(None)
    refs.append(dense_logits(net, x, MapEvaluator(net, x, labels, method="dense"), weight_map))
    assert diff.group >= len(posts)
    results = diff.run_many(maps, posts)
    for res, ref in zip(results, refs, strict=True):
        assert torch.equal(with_difference(diff, res), ref)
    assert not torch.equal(refs[0], refs[-1])  # the threshold faults changed some logits
    assert len(results[-2].rows)  # and so did those of the map without flipped weights
    convs = sum(layer.conv is not None for layer in net.layers)
    assert sum(faulty_in_compiled) == convs  # each conv layer's faulty thresholds went compiled
    dense_hidden = sum(net.layers[i].conv is None for i in hidden)
    # each dense layer's faulty thresholds went compiled (the last twice: two maps)
    assert sum(n > 0 for n in faulty_in_dense) == dense_hidden


def test_every_method_predicts_the_same(trained):
    model, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.01, 7, i) for i in range(6)]
    preds = {m: MapEvaluator(net, x, labels, method=m).evaluate(maps).predictions
             for m in ("dense", "difference", "auto")}
    assert np.array_equal(preds["dense"], preds["difference"])
    assert np.array_equal(preds["dense"], preds["auto"])
    # and the per-map Brevitas reference (the int8 kernel's products included: on padded convs
    # of bipolar codes they were wrong at every rate, clean included, and all methods agreed)
    for fmap, pred in zip([maps[0], maps[1]], preds["dense"][:2], strict=True):
        faulty = apply_map(net.contents(), mems, fmap)
        _, ref = brevitas_predictions(model, x, {j: faulty[mem.name] for j, mem in enumerate(mems)})
        assert np.array_equal(pred, ref.numpy())
    clean = MapEvaluator(net, x, labels, method="dense").evaluate([generate_map(mems, "flip", 0.0, 7, 0)])
    assert np.array_equal(clean.predictions[0], brevitas_predictions(model, x, {})[1].numpy())


def test_autos_first_call_runs_one_dense_group_then_the_chosen_path(trained):
    """A rate's first call under ``auto``: only one dense group of maps is timed dense, the rest
    take the path the estimate chose (forced here to the difference path), and every prediction
    and logit equals the dense path's."""
    _, net, x, labels = trained
    maps = [generate_map(net.memories(), "flip", 1e-3, 3, i) for i in range(9)]
    dense = MapEvaluator(net, x, labels, method="dense")
    rows = 2 * len(labels)  # the dense path then batches 2 maps per group
    auto = MapEvaluator(net, x, labels, rows=rows, min_chunk=len(labels), method="auto")
    chosen = []
    auto._probe = lambda fmaps, *a: chosen.append(len(fmaps)) or "difference"
    assert auto._dense_plan(len(maps))[1] == 2
    got = auto.evaluate(maps)
    assert chosen == [2]  # the estimate saw the head only
    # the chosen path ran (its real time may since have revised the choice: _observe)
    assert ("flip", 1e-3) in auto._choice and auto.timing["difference"] > 0
    assert np.array_equal(got.predictions, dense.evaluate(maps).predictions)
    auto_logits = MapEvaluator(net, x, labels, method="auto")
    auto_logits._probe = lambda fmaps, *a: chosen.append(len(fmaps)) or "difference"
    many = maps * 4  # 36 maps: a head of one dense group and the tail
    group = auto_logits._dense_plan(len(many))[1]
    assert len(many) - group >= 4
    assert np.array_equal(auto_logits.logits(many), dense.logits(many))
    assert chosen[-1] == group and auto_logits.timing["difference"] > 0


@pytest.mark.parametrize("choice", ["difference", "dense"])
def test_autos_first_call_times_two_chunks_of_the_first_dense_group(trained, monkeypatch, choice):
    """With enough images, a rate's first ``auto`` call runs only two small chunks of the dense
    path's first group before the estimate decides: if the difference path wins, every map
    takes it and no other chunk runs dense; if dense wins, the group goes on after the probe's
    chunks (no image twice, then back on the dense path's chunk grid) and the other maps follow
    dense. Either way every prediction equals the dense path's."""
    _, net, x, labels = trained
    maps = [generate_map(net.memories(), "flip", 1e-3, 3, i) for i in range(9)]
    dense = MapEvaluator(net, x, labels, method="dense").evaluate(maps).predictions
    monkeypatch.setattr(evaluate, "PROBE_MIN_IMAGES", 24)  # the digits' test set is small
    auto = MapEvaluator(net, x, labels, rows=256, min_chunk=64, method="auto")
    chunk, group = auto._dense_plan(len(maps))
    n_chunks = -(-len(labels) // chunk)
    assert n_chunks >= 3 and group < len(maps) and chunk > 2 * 24
    estimated = []
    monkeypatch.setattr(auto, "_probe", lambda fmaps, per_map, posts: estimated.append(per_map) or choice)
    forwards = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda h, *a, **k: forwards.append(len(h)) or forward(h, *a, **k))
    got = auto.evaluate(maps)
    assert np.array_equal(got.predictions, dense)
    # the path run below is the probe's choice (whose real time may since have revised it)
    assert len(estimated) == 1 and estimated[0] > 0 and ("flip", 1e-3) in auto._choice
    if choice == "difference":
        assert forwards == [24, 24] and auto.timing["difference"] > 0
    else:
        groups = -(-len(maps) // group)
        first_group = [24, 24, chunk - 48] + [chunk] * (n_chunks - 2) + [len(labels) - (n_chunks - 1) * chunk]
        assert forwards[:n_chunks + 2] == first_group and sum(first_group) == len(labels)
        assert len(forwards) == (n_chunks + 2) + (groups - 1) * n_chunks and auto.timing["difference"] == 0


@pytest.mark.parametrize("choice", ["difference", "dense"])
def test_autos_first_logits_call_times_two_slices_of_the_first_maps(trained, monkeypatch, choice):
    """``logits`` (the RTL simulation's predictor) probes as ``evaluate`` does: its first
    forward pass of maps runs dense on two small image slices, then the estimate decides; if
    dense wins the pass goes on from the third slice (no image twice). The maps carry faulty
    thresholds too, as ``mcel sim --memories thresholds`` gives them. Every logit equals the
    dense path's."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 1e-3, 3, i) for i in range(6)]
    i, post = next((i, layer.post) for i, layer in enumerate(net.layers) if isinstance(layer.post, ThresholdPostOp))
    faulty = ThresholdPostOp(post.thresholds + 1, post.out_scale, post.out_bias, post.out_mult, post.sign)
    posts = [{i: faulty} if k % 2 else None for k in range(len(maps))]
    dense = MapEvaluator(net, x, labels, method="dense").logits(maps, posts)
    monkeypatch.setattr(evaluate, "PROBE_MIN_IMAGES", 24)
    auto = MapEvaluator(net, x, labels, method="auto")
    estimated = []
    monkeypatch.setattr(auto, "_probe", lambda fmaps, per_map, p: estimated.append(per_map) or choice)
    forwards = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda h, *a, **k: forwards.append(len(h)) or forward(h, *a, **k))
    stacked = []  # maps per weight stacking: the weight-only maps' group is prepared once
    stack = auto.stacked_weights
    monkeypatch.setattr(auto, "stacked_weights", lambda f: stacked.append(len(f)) or stack(f))
    assert np.array_equal(auto.logits(maps, posts), dense)
    assert len(estimated) == 1 and estimated[0] > 0 and ("flip", 1e-3) in auto._choice  # path: below
    assert stacked.count(3) == 1 and set(stacked) == {1, 3}
    per_slice = [24] * 4  # the weight-only maps in one pass, the three with thresholds one by one
    if choice == "difference":
        assert forwards == per_slice * 2 and auto.timing["difference"] > 0
    else:
        assert forwards == per_slice * 2 + [len(labels) - 48] * 4 and auto.timing["difference"] == 0


def test_dense_logits_stay_within_the_rows_budget(trained, monkeypatch):
    """The dense path's logits (``mcel sim``'s predictor) run in the map groups and image
    chunks of the ``rows`` budget, maps with faulty thresholds too: on the paper's VGG3 one
    pass of 32 maps over 2000 images needed more than this machine's 24 GB. Every logit equals
    the unchunked forward's."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.01, 3, k) for k in range(6)]
    i, post = next((i, layer.post) for i, layer in enumerate(net.layers) if isinstance(layer.post, ThresholdPostOp))
    faulty = ThresholdPostOp(post.thresholds + 1, post.out_scale, post.out_bias, post.out_mult, post.sign)
    posts = [None] * 5 + [{i: faulty}]
    ev = MapEvaluator(net, x, labels, method="dense", rows=128, min_chunk=32)
    chunk, group = ev._dense_plan(5)
    assert chunk * group <= 128 and chunk < len(labels)
    forwards = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda h, *a, **k: forwards.append(len(h)) or forward(h, *a, **k))
    got = ev.logits(maps, posts)
    assert max(forwards) <= 128 and len(forwards) > 2 * -(-len(labels) // 128)
    monkeypatch.setattr(net, "forward", forward)
    refs = [dense_logits(net, x, ev, fmap) for fmap in maps[:5]]
    saved, net.layers[i].post = net.layers[i].post, faulty
    try:
        refs.append(dense_logits(net, x, ev, maps[5]))
    finally:
        net.layers[i].post = saved
    assert np.array_equal(got, np.rint(torch.stack(refs).numpy()).astype(np.int64))


@pytest.mark.parametrize("call", ["evaluate", "logits"])
def test_auto_does_not_time_the_dense_path_on_empty_maps(trained, call):
    """Rate 0 (a sweep's or ``mcel sim``'s first rate) holds empty maps, which the dense path
    runs once for all of them: timing it there would make every later rate's dense time per map
    look as many times cheaper as there were maps. They are answered once, with no probe and
    no choice, and the first faulty rate times the dense path."""
    _, net, x, labels = trained
    mems = net.memories()
    clean = [generate_map(mems, "flip", 0.0, 3, k) for k in range(6)]
    faulty = [generate_map(mems, "flip", 1e-3, 3, k) for k in range(6)]
    auto = MapEvaluator(net, x, labels, method="auto")
    dense = MapEvaluator(net, x, labels, method="dense")
    run = (lambda ev, maps: ev.logits(maps)) if call == "logits" else (lambda ev, maps: ev.evaluate(maps).predictions)
    assert np.array_equal(run(auto, clean), run(dense, clean))
    assert auto._dense_per_map is None and not auto._choice
    assert np.array_equal(run(auto, faulty), run(dense, faulty))
    assert auto._dense_per_map is not None and ("flip", 1e-3) in auto._choice


def test_auto_decides_rate_by_rate_in_a_call_mixing_rates(trained, monkeypatch):
    """``mcel sim`` asks for every rate's maps in one ``logits`` call: ``auto`` takes them
    rate by rate, so that a rate's choice is estimated on maps of that rate (not on the first
    rate's), and puts every map's result back in its place."""
    _, net, x, labels = trained
    mems = net.memories()
    rates = [1e-4, 5e-2, 1e-3]
    maps = [generate_map(mems, "flip", rates[k % 3], 3, k) for k in range(15)]  # rates interleaved
    dense = MapEvaluator(net, x, labels, method="dense")
    for call in ("logits", "evaluate"):
        auto = MapEvaluator(net, x, labels, method="auto")
        seen = []

        def probe(fmaps, per_map, posts, seen=seen):
            seen.append({f.meta["rate"] for f in fmaps})
            return "dense" if fmaps[0].meta["rate"] > 1e-2 else "difference"

        monkeypatch.setattr(auto, "_probe", probe)
        if call == "logits":
            assert np.array_equal(auto.logits(maps), dense.logits(maps))
        else:
            assert np.array_equal(auto.evaluate(maps).predictions, dense.evaluate(maps).predictions)
        assert seen == [{r} for r in rates]  # one estimate per rate, on that rate's maps only
        # a choice per rate (each call's real time may since have revised it: _observe)
        assert {k[1] for k in auto._choice} == set(rates)


def test_auto_keeps_dense_without_an_estimate_above_a_rate_where_dense_won(trained):
    _, net, x, labels = trained
    auto = MapEvaluator(net, x, labels, method="auto")
    auto._choice[("flip", 1e-3)] = "dense"
    estimates = []
    auto.difference.estimate_seconds = lambda *a, **k: estimates.append(1) or 0.0  # "difference wins"
    mems = net.memories()
    auto.evaluate([generate_map(mems, "flip", 1e-2, 3, i) for i in range(6)])
    assert not estimates and auto._choice[("flip", 1e-2)] == "dense"
    # below: estimated, and the call takes the difference path (whose real time may then
    # revise the choice for later calls: _observe)
    auto.evaluate([generate_map(mems, "flip", 1e-4, 3, i) for i in range(6)])
    assert estimates and auto._seen[("flip", 1e-4)]["estimate"] == 0.0 and "difference" in auto._seen[("flip", 1e-4)]
    auto.evaluate([generate_map(mems, "stuck", 1e-2, 3, i) for i in range(6)])  # another fault model
    assert len(estimates) == 2 and auto._seen[("stuck", 1e-2)]["estimate"] == 0.0
    assert "difference" in auto._seen[("stuck", 1e-2)]


def test_auto_times_the_dense_path_once_then_only_estimates(trained):
    """The dense path's time per map does not depend on the rate: after the first rate's dense
    head, a new rate's first call runs no dense map, only the difference estimate."""
    _, net, x, labels = trained
    mems = net.memories()
    auto = MapEvaluator(net, x, labels, method="auto")
    dense = MapEvaluator(net, x, labels, method="dense")
    first = [generate_map(mems, "flip", 1e-3, 3, i) for i in range(6)]
    assert np.array_equal(auto.evaluate(first).predictions, dense.evaluate(first).predictions)
    dense_seconds = auto.timing["dense"]
    assert dense_seconds > 0 and auto._dense_per_map is not None
    estimates = []
    auto.difference.estimate_seconds = lambda *a, **k: estimates.append(1) or 0.0  # "difference wins"
    second = [generate_map(mems, "flip", 1e-4, 3, i) for i in range(6)]
    assert np.array_equal(auto.evaluate(second).predictions, dense.evaluate(second).predictions)
    assert estimates == [1] and "difference" in auto._seen[("flip", 1e-4)]
    assert auto.timing["dense"] == dense_seconds  # not one map ran dense


@pytest.mark.parametrize(("dense_sleep", "then"), [(1.2, "difference"), (0.15, "dense")])
@pytest.mark.parametrize("trained", TIMED_CHOICE_SPECS, indirect=True)
def test_a_close_call_tries_the_other_path_once_then_keeps_the_faster(trained, monkeypatch, dense_sleep, then):
    """A rate's first call takes the path the figures chose (here the difference path: its
    estimate is half the dense path's guessed time). Its real time lands within
    ``EXPLORE_BAND`` of that guess, so the next call tries the dense path for real; the third
    takes whichever was faster. Sleeps added to each path set their times (0.1 s per map for
    the difference path, 0.2 or 0.025 s for the dense path, far above the real work on these
    small sets). Every result equals the dense path's."""
    _, net, x, labels = trained
    mems = net.memories()
    batches = [[generate_map(mems, "flip", 1e-3, 3, 6 * b + k) for k in range(6)] for b in range(3)]
    dense = MapEvaluator(net, x, labels, method="dense")
    auto = MapEvaluator(net, x, labels, method="auto")
    # each path's one-off work (compiled post-ops, kernels, the clean state) done first, at
    # another rate: on a loaded machine it made a timed call slower than the other path's sleeps
    warm = [generate_map(mems, "flip", 5e-2, 3, k) for k in range(6)]
    auto._evaluate_dense(warm)
    auto._difference_logits(warm, [None] * len(warm))
    auto._dense_per_map = guess = 0.12  # as if probed at another rate, never run whole
    monkeypatch.setattr(auto.difference, "estimate_seconds", lambda *a, **k: guess / 2)
    for name, pause in (("_difference_logits", 0.6), ("_evaluate_dense", dense_sleep)):
        real = getattr(auto, name)
        monkeypatch.setattr(auto, name, lambda *a, real=real, pause=pause, **k: time.sleep(pause) or real(*a, **k))
    paths = []
    for batch in batches:
        before = dict(auto.timing)
        assert np.array_equal(auto.evaluate(batch).predictions, dense.evaluate(batch).predictions)
        paths.extend(p for p in ("dense", "difference") if auto.timing[p] > before[p])
    assert paths == ["difference", "dense", then] and auto._choice[("flip", 1e-3)] == then


@pytest.mark.parametrize("slow", ["difference", "dense"])
@pytest.mark.parametrize("trained", TIMED_CHOICE_SPECS, indirect=True)
def test_auto_revises_a_rates_choice_after_a_call_on_its_real_time(trained, monkeypatch, slow):
    """A sweep evaluates each rate in several calls: after each, the path's real time per map
    at that rate is compared with the other path's figure, and the next call takes the faster.
    Here the path the first figures chose is made slow (a sleep added to it), so the first call
    takes it and the second the other one; the results stay the dense path's."""
    _, net, x, labels = trained
    mems = net.memories()
    batches = [[generate_map(mems, "flip", 1e-3, 3, 6 * b + k) for k in range(6)] for b in range(2)]
    dense = MapEvaluator(net, x, labels, method="dense")
    auto = MapEvaluator(net, x, labels, method="auto")
    warm = [generate_map(mems, "flip", 5e-2, 3, k) for k in range(6)]
    monkeypatch.setattr(auto.difference, "estimate_seconds", lambda *a, **k: float("inf"))
    auto.evaluate(warm)  # the dense path is timed at another rate
    assert auto._choice[("flip", 5e-2)] == "dense" and auto._dense_per_map is not None
    # the difference estimate far below the dense time (difference first) or far above it
    factor = 1 / (2 * EXPLORE_BAND) if slow == "difference" else 2 * EXPLORE_BAND
    monkeypatch.setattr(auto.difference, "estimate_seconds", lambda *a, **k: factor * auto._dense_per_map)
    name = "_difference_logits" if slow == "difference" else "_evaluate_dense"
    real = getattr(auto, name)
    # sleep: the slowed path's time per map at least 3x the other's figure (6 maps a call), far
    # outside EXPLORE_BAND: the next call switches without trying the slow path again. The 0.5 s
    # on top keeps the slowed path the slower one when the other runs on a loaded machine (with
    # 0.05 s, a dense call beside another busy process took longer than the slowed difference
    # call in 2 of 11 runs, and the rate kept the difference path)
    monkeypatch.setattr(auto, name, lambda *a, **k: time.sleep(18 * max(1, factor) * auto._dense_per_map + 0.5)
                        or real(*a, **k))
    other = "dense" if slow == "difference" else "difference"
    for batch, path in zip(batches, (slow, other), strict=True):
        before = dict(auto.timing)
        assert np.array_equal(auto.evaluate(batch).predictions, dense.evaluate(batch).predictions)
        assert {p for p in ("dense", "difference") if auto.timing[p] > before[p]} == {path}
    assert auto._choice[("flip", 1e-3)] == other and set(auto._seen[("flip", 1e-3)]) >= {slow, other}


@pytest.mark.parametrize("call", ["evaluate", "logits"])
def test_auto_skips_the_dense_probe_when_the_estimate_beats_the_dense_floor(trained, monkeypatch, call):
    """A rate's first ``auto`` call estimates the difference path first: below the dense
    path's floor it is taken with no dense map run at all (the dense time stays unknown);
    above it the dense probe runs as before and reuses that estimate (one estimate, not two).
    Every result equals the dense path's."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 1e-3, 3, k) for k in range(6)]
    dense = MapEvaluator(net, x, labels, method="dense")
    run = (lambda ev: ev.logits(maps)) if call == "logits" else (lambda ev: ev.evaluate(maps).predictions)
    for floor, choice in ((float("inf"), "difference"), (0.0, None)):
        auto = MapEvaluator(net, x, labels, method="auto")
        monkeypatch.setattr(auto, "dense_floor", lambda fmaps, floor=floor: floor)
        estimates = []
        estimate = auto.difference.estimate_seconds
        monkeypatch.setattr(auto.difference, "estimate_seconds",
                            lambda *a, seen=estimates, real=estimate, **k: seen.append(1) or real(*a, **k))
        assert np.array_equal(run(auto), run(dense))
        assert estimates == [1] and ("flip", 1e-3) in auto._choice
        if choice == "difference":
            assert auto._choice[("flip", 1e-3)] == "difference"
            assert auto.timing["dense"] == 0 and auto._dense_per_map is None and auto.timing["difference"] > 0
        else:
            assert auto.timing["dense"] > 0 and auto._dense_per_map is not None


def test_dense_floor_counts_the_dense_paths_work_per_map(trained):
    """``auto``'s floor of the dense path is the work it does per map at the best rates
    measured: its multiply-adds (every layer after the first, which it takes as a sparse
    correction or computes apart, unless the kernel takes the first layer), counting each
    layer's outputs into the next int8 layer's codes, and packing each int8 layer the map's
    faults reach. Sizes are counted here independently, on the Brevitas model's own conv and
    linear layers (outputs times weights per output; a layer's input is what the layer before
    counted, after its pool); a map without faults packs nothing. The dense path's measured
    time per map lies above the floor."""
    model, net, x, labels = trained
    macs, inputs, weights = [], [], []

    def count(mod, inp, out):
        out = getattr(out, "value", out)  # a Brevitas QuantTensor or a tensor
        macs.append(out[0].numel() * mod.weight[0].numel())
        inputs.append(getattr(inp[0], "value", inp[0])[0].numel())
        weights.append(mod.weight.numel())

    hooks = [mod.register_forward_hook(count) for mod in model.modules()
             if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.as_tensor(x[:2], dtype=torch.float32))
    finally:
        for h in hooks:
            h.remove()
    assert len(macs) == len(net.layers)
    threads = torch.get_num_threads()
    rate = evaluate.matmul_rate(threads)
    assert rate > 1e8 and int8_products.rate(threads) > 1e8
    maps = [generate_map(net.memories(), "flip", 1e-3, 3, k) for k in range(4)]
    mems = {m.layer_index: m.name for m in net.memories()}
    for int8 in (False, True):  # the float products, and the int8 kernel's on the layers it takes
        ev = MapEvaluator(net, x, labels, method="dense", int8=int8)
        on_int8 = set(int8_products.eligible(net, ev.int8_pixels)) if int8 else set()
        assert bool(on_int8) == int8
        # a dense first layer on uint8 pixels is a product on the kernel, not a sparse correction
        first = 0 if 0 in on_int8 else 1
        assert (first == 0) == (int8 and net.layers[0].conv is None and float(x.min()) >= 0)
        layers = range(first, len(net.layers))
        seconds = sum(macs[i] / (int8_products.rate(threads) if i in on_int8 else rate) for i in layers)
        seconds += sum(inputs[i + 1] / count_rate(threads, net.layers[i].post.thresholds.shape[1])
                       for i in layers if i + 1 in on_int8)
        clean = ev.dense_floor([FaultMap.empty(list(mems.values()))] * 2)
        assert clean == pytest.approx(seconds * len(labels), rel=1e-9)
        packing = [sum(weights[i] / int8_products.pack_rate(threads, net.layers[i].conv is not None)
                       for i in layers if i in on_int8 and len(f.for_memory(mems[i])[0])) for f in maps]
        assert int8 == (min(packing) > 0)
        assert ev.dense_floor(maps) == pytest.approx(clean + np.mean(packing), rel=1e-9)
        ev.evaluate(maps)
        ev.timing["dense"] = 0.0
        ev.evaluate(maps)
        assert ev.timing["dense"] / len(maps) > ev.dense_floor(maps)


def test_maps_needed_is_the_first_narrow_prefix():
    rng = np.random.default_rng(1)
    accs = 0.8 + 0.02 * rng.standard_normal(200)
    k = maps_needed(accs, 1.0)
    assert k is not None and k >= 3
    lo, hi = t_interval(accs[:k])
    assert (hi - lo) * 100 < 1.0
    lo, hi = t_interval(accs[:k - 1])
    assert (hi - lo) * 100 >= 1.0 or k == 3
    assert maps_needed(accs[:5], 0.001) is None


@pytest.mark.parametrize("name", ["tfc_w2a2", "vgg3_w4a4", "cnv_w1a1"])
def test_falling_channels_take_the_same_path_as_dense(digits, name, monkeypatch):
    """Channels whose output falls as the accumulator rises (negative ``sign``): the compiled
    dense and conv steps (mcel_train/difference_kernel.py) count thresholds in the rising domain
    like the post-op does (the conv step pools there too), so their logits equal the dense
    forward's."""
    calls = []
    compiled = difference.conv_layer_maps
    monkeypatch.setattr(difference, "conv_layer_maps", lambda *a: calls.append(a[0]) or compiled(*a))
    spec = SPECS[name].resolved()
    torch.manual_seed(0)
    model = quick_train(spec, digits, steps=40, batch_size=64)
    x = model_inputs(digits.test.images, spec)
    net = from_brevitas(model)
    flipped = 0
    for layer in net.layers[:-1]:
        post = layer.post
        assert isinstance(post, ThresholdPostOp)
        sign = post.sign.clone()
        sign[::2] = -1
        flipped += int((sign < 0).sum())
        layer.post = ThresholdPostOp(post.thresholds, post.out_scale, post.out_bias, post.out_mult, sign)
    assert flipped > 0
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.01, 5, i) for i in range(4)]
    ev = MapEvaluator(net, x, digits.test.labels, method="dense")
    diff = DifferenceEvaluator(net, torch.as_tensor(x), mems)
    changed = images_changed_equal_to_dense(net, x, ev, diff, maps, diff.run_many(maps))
    assert changed > 0
    # the conv layers took the compiled step (every map's first layer at least)
    assert sum(calls) == 0 if spec.arch == "tfc" else sum(calls) >= len(maps)


def _quantile_post(acc: torch.Tensor, sign: torch.Tensor) -> ThresholdPostOp:
    """Thresholds at each channel's quartiles of ``sign * acc`` (channels on dim 1): many
    accumulators sit near one, so flips cross them."""
    rising = (acc * sign.reshape(1, -1, *(1,) * (acc.dim() - 2))).transpose(0, 1).reshape(acc.shape[1], -1)
    t = torch.quantile(rising.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=1).T
    return ThresholdPostOp(torch.floor(t) + 0.5, sign=sign)


@pytest.mark.parametrize("pool, order", [(2, "chw"), (3, "hwc")])
def test_strided_padded_convs_and_odd_pools_match_dense(monkeypatch, pool, order):
    """Conv geometry no zoo model has, through the compiled conv step: a padded conv with
    falling channels, then a stride-2 padded conv (its changed inputs land on every other
    output) whose pool drops rows and columns (13 x 13 -> 13 x 13 -> 7 x 7 -> 3 x 3 with a
    2 x 2 pool, 2 x 2 with a 3 x 3 one, which takes the step's general pooling loop), flattened
    channels first or channels last (FINN's order) into the logit layer; every map's logits
    equal the dense forward's."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(96, 2, 13, 13)).astype(np.float32))
    g0 = ConvGeometry(in_channels=2, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
    g1 = ConvGeometry(in_channels=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
    w0 = rng.integers(-3, 4, size=(6, 18)).astype(np.float32)
    w1 = rng.integers(-3, 4, size=(4, 54)).astype(np.float32)
    side = 7 // pool
    w2 = rng.integers(-3, 4, size=(10, 4 * side * side)).astype(np.float32)
    sign0 = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    acc0 = F.conv2d(x, torch.from_numpy(w0).reshape(6, 2, 3, 3), padding=1)
    post0 = _quantile_post(acc0, sign0)
    h1 = post0(acc0.double()).float()
    acc1 = F.conv2d(h1, torch.from_numpy(w1).reshape(4, 6, 3, 3), stride=2, padding=1)
    post1 = _quantile_post(acc1, torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    net = IntNetwork([
        IntLayer("layer0", w0, 1.0, 3, post0, conv=g0),
        IntLayer("layer1", w1, 1.0, 3, post1, conv=g1, pool=pool),
        IntLayer("layer2", w2, 1.0, 3, IdentityPostOp(1.0), flatten_before=True, flatten_order=order),
    ], input_shape=(2, 13, 13), input_kind="uint8")
    mems = net.memories()
    labels = np.zeros(len(x), dtype=np.int64)
    ev = MapEvaluator(net, x, labels, method="dense")
    diff = DifferenceEvaluator(net, x, mems, batch=40, switch_fraction=float("inf"))
    calls = []
    compiled = difference.conv_layer_maps
    monkeypatch.setattr(difference, "conv_layer_maps", lambda *a: calls.append(a) or compiled(*a))
    maps = [generate_map(mems, "flip", 0.02, 11, i) for i in range(6)]
    results = diff.run_many(maps)
    changed = images_changed_equal_to_dense(net, x, ev, diff, maps, results)
    assert changed > 0 and sum(a[0] for a in calls) >= 2 * len(maps)  # both conv layers, every map
    # the kernel's own loop stops and resumes where its records would not fit: from the
    # smallest start (1024 records) it grows them and gives what room for all gives
    first_conv = calls[0][:-1]
    grown, roomy = compiled(*first_conv, 0), compiled(*first_conv, 10**6)
    assert len(grown[0]) > 1024
    for a, b in zip(grown, roomy, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("block", [16, 72, 128])
def test_first_layer_blocks_match_dense(monkeypatch, block):
    """The first dense layer's compiled step (every image's input clean: only the flipped
    outputs, a block of images at a time, each block's entries sorted by image and map) over
    blocks of 16, 72 and 128 images, the last one partial (100 images; a block's crossing flags
    are walked 64 images to a mask, so 72 and 128 take two masks, the second partial): every
    map's logits equal the dense forward's, through hidden layers whose accumulators sit near
    their thresholds."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, size=(100, 20)).astype(np.float32))
    w0 = rng.integers(-3, 4, size=(12, 20)).astype(np.float32)
    w1 = rng.integers(-3, 4, size=(10, 12)).astype(np.float32)
    acc0 = x @ torch.from_numpy(w0).T
    post0 = _quantile_post(acc0, torch.ones(12, dtype=torch.float64))
    net = IntNetwork([
        IntLayer("layer0", w0, 1.0, 3, post0),
        IntLayer("layer1", w1, 1.0, 3, IdentityPostOp(1.0)),
    ], input_shape=(20,), input_kind="uint8")
    mems = net.memories()
    ev = MapEvaluator(net, x, np.zeros(len(x), dtype=np.int64), method="dense")
    monkeypatch.setattr(difference, "CLEAN_INPUT_BLOCK", block)
    calls = []
    compiled = difference.clean_input_layer_maps
    monkeypatch.setattr(difference, "clean_input_layer_maps", lambda *a: calls.append(a[-1]) or compiled(*a))
    diff = DifferenceEvaluator(net, x, mems, switch_fraction=float("inf"))
    maps = [generate_map(mems, "flip", 0.05, 5, i) for i in range(6)]
    changed = images_changed_equal_to_dense(net, x, ev, diff, maps, diff.run_many(maps))
    assert calls == [block] and changed > len(x)  # one call for the group; the faults reached many images


def _zero_point_mlp(seed: int, first_step: float) -> tuple[IntNetwork, torch.Tensor]:
    """24 -> 16 -> 16 -> 10 with unsigned 8-bit weight codes and a zero point of 20 (clean
    weights in [-20, 100]), thresholds at each hidden channel's quartiles (so flips cross
    them), the first layer's levels ``first_step`` apart; and 200 inputs in [0, 3]."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 4, size=(200, 24)).astype(np.float32))
    ws = [rng.integers(-20, 101, size=shape).astype(np.float32) for shape in ((16, 24), (16, 16), (10, 16))]
    h, layers = x, []
    for k, w in enumerate(ws):
        acc = h @ torch.from_numpy(w).T
        if k < 2:
            quartiles = _quantile_post(acc, torch.ones(len(w), dtype=torch.float64))
            post = ThresholdPostOp(quartiles.thresholds, out_mult=first_step if k == 0 else 1.0)
        else:
            post = IdentityPostOp(1.0)
        layers.append(IntLayer(f"layer{k}", w, 1.0, 8, post, weight_zero_point=20))
        h = post(acc)
    return IntNetwork(layers, input_shape=(24,), input_kind="uint8"), x


@pytest.mark.parametrize("copies_fit, int16", [(True, "always"), (False, "always"), (True, "this call"),
                                               (True, "never"), (False, "never")])
def test_wide_weights_take_faulty_weight_rows_exactly(monkeypatch, copies_fit, int16):
    """Unsigned 8-bit weight codes with a zero point of 20: clean weights in [-20, 100] fit
    int8, faulty ones reach 235 and a flip changes a weight by up to 255. Through hidden layers
    whose accumulators sit near their thresholds, the compiled dense step reads each map's
    faulty weight rows (held as int16, the changes added with wrap-around) or, when the copies
    do not fit, the clean rows plus the flipped weights, and sums the changes in int16 (every
    possible change fits: at most 2 x 3 x 16 x 255; or, told otherwise, the call checks that
    its own changes fit) or, when not allowed to, in float32; every map's logits equal the
    dense forward's in each form."""
    net, x = _zero_point_mlp(seed=2, first_step=1.0)
    mems = net.memories()
    ev = MapEvaluator(net, x, np.zeros(len(x), dtype=np.int64), method="dense")
    monkeypatch.setattr(difference, "FAULTY_ROWS_BYTES", difference.FAULTY_ROWS_BYTES if copies_fit else 0)
    monkeypatch.setattr(difference, "BLAS_FRACTION", float("inf"))  # changed inputs row by row
    monkeypatch.setattr(difference, "INT16_CHANGE_BOUND", 0 if int16 == "never" else difference.INT16_CHANGE_BOUND)
    forms = []
    compiled = difference.dense_layer_maps
    calls = []
    monkeypatch.setattr(difference, "dense_layer_maps",
                        lambda *a: calls.append(a) or forms.append((a[6].dtype, a[8], a[4].dtype)) or compiled(*a))
    logit_forms = []  # the logit layer's own step reads the same rows (faulty copies: no dW @ dx to add)
    compiled_logits = difference.logit_layer_maps
    monkeypatch.setattr(difference, "logit_layer_maps",
                        lambda *a: logit_forms.append((a[6].dtype, not a[8])) or compiled_logits(*a))
    diff = DifferenceEvaluator(net, x, mems, switch_fraction=float("inf"))
    # the hidden and the logit layer (the first takes its own step)
    assert diff.int16_changes[1:] == [int16 != "never"] * 2
    checks = []
    if int16 == "this call":
        diff.int16_changes = [False] * 3
        fits = diff._int16_fits
        monkeypatch.setattr(diff, "_int16_fits", lambda *a: checks.append(fits(*a)) or checks[-1])
    maps = [generate_map(mems, "flip", 0.02, 7, i) for i in range(6)]
    changed = images_changed_equal_to_dense(net, x, ev, diff, maps, diff.run_many(maps))
    assert changed > len(x)
    rows = (np.dtype(np.int16), True) if copies_fit else (np.dtype(np.int8), False)
    assert forms == [(*rows, np.dtype(np.float32 if int16 == "never" else np.int16))]  # the hidden layer
    assert logit_forms == [rows]
    assert checks == ([True] if int16 == "this call" else [])
    # the kernel's own loop stops and resumes where its records would not fit: from the
    # smallest start (4 x 16 + 1024 records) it grows them and gives what room for all gives;
    # and dW @ x made for blocks of any size (1, one that leaves a part block, and resumed
    # inside a block) gives the same
    args, block = calls[0][:-2], calls[0][-1]
    grown, roomy = compiled(*args, 0, block), compiled(*args, 10**6, block)
    assert len(grown[0]) > 4 * 16 + 1024
    assert len(x) % 7 and block > 1
    for other in (compiled(*args, 10**6, 1), compiled(*args, 0, 7), roomy):
        for a, b in zip(grown, other, strict=True):
            assert np.array_equal(a, b)


def test_changes_beyond_int16_are_summed_in_float(monkeypatch):
    """A hidden layer whose inputs step by 100 (levels 0 to 300) and whose weights reach 235:
    its accumulator changes can pass int16's range, so no form is fixed in advance, and this
    call's own check finds changes that may not fit and sums them in float32. Every map's
    logits equal the dense forward's (summed in int16 they would wrap)."""
    net, x = _zero_point_mlp(seed=3, first_step=100.0)
    mems = net.memories()
    ev = MapEvaluator(net, x, np.zeros(len(x), dtype=np.int64), method="dense")
    monkeypatch.setattr(difference, "BLAS_FRACTION", float("inf"))  # changed inputs row by row
    diff = DifferenceEvaluator(net, x, mems, switch_fraction=float("inf"))
    assert not diff.int16_changes[1]
    checks, forms = [], []
    fits = diff._int16_fits
    monkeypatch.setattr(diff, "_int16_fits", lambda *a: checks.append((a[0], fits(*a))) or checks[-1][1])
    compiled = difference.dense_layer_maps
    monkeypatch.setattr(difference, "dense_layer_maps", lambda *a: forms.append(a[4].dtype) or compiled(*a))
    maps = [generate_map(mems, "flip", 0.02, 7, i) for i in range(6)]
    for fmap, res in zip(maps, diff.run_many(maps), strict=True):
        assert torch.equal(with_difference(diff, res), dense_logits(net, x, ev, fmap))
    assert checks == [(1, False)] and forms == [np.dtype(np.float32)]  # the logit layer takes its own step


def test_batches_run_side_by_side_in_threads_with_the_same_results(trained, monkeypatch):
    """With two torch threads the images are cut into one batch per thread and the batches run
    in two threads at once: every map's result and the evaluator's counters equal a run of the
    same batches one after the other, and the logits the dense path's (a map with faulty
    thresholds among them)."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", rate, 5, i) for i, rate in enumerate((0.002, 0.01, 0.03, 0.0, 0.05))]
    i, post = next((i, layer.post) for i, layer in enumerate(net.layers) if isinstance(layer.post, ThresholdPostOp))
    posts = [None, {i: ThresholdPostOp(post.thresholds - 1, post.out_scale, post.out_bias, post.out_mult, post.sign)},
             None, None, None]
    dense = MapEvaluator(net, x, labels, method="dense").logits(maps, posts)
    monkeypatch.setattr(difference, "PARALLEL_MIN_IMAGES", 16)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = DifferenceEvaluator(net, torch.as_tensor(x), mems)
        assert two.batch == -(-len(x) // 2)
        assert DifferenceEvaluator(net, torch.as_tensor(x), mems, workers=1).batch == len(x)
        # the same batches one after the other (a batch's switch to the dense finish depends
        # on its size)
        one = DifferenceEvaluator(net, torch.as_tensor(x), mems, batch=two.batch, workers=1)
        seen: set[int] = set()  # threads that ran a group
        plain_group = DifferenceEvaluator._run_group
        # each batch's group waits here for the other's: times out unless they run at once
        together = threading.Barrier(2, timeout=30)

        def recorded(self, *args):
            if self is two:
                seen.add(threading.get_ident())
                together.wait()
            return plain_group(self, *args)

        monkeypatch.setattr(DifferenceEvaluator, "_run_group", recorded)
        got, ref = two.run_many(maps, posts), one.run_many(maps, posts)
        assert len(seen) == 2
        for a, b, want in zip(got, ref, dense, strict=True):
            assert np.array_equal(a.rows, b.rows) and np.array_equal(a.logits, b.logits)
            assert np.array_equal(with_difference(two, a).numpy(), want)
        assert np.array_equal(two.active_after, one.active_after)
        assert np.array_equal(two.changed_after, one.changed_after)
        assert two.active_after.sum() > 0
        seen.clear()
        assert two.estimate_seconds(maps[:2]) > 0  # the estimate runs side by side too
        assert len(seen) >= 2
        assert np.array_equal(two.active_after, one.active_after)  # and is not counted
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("trained", [name for name, spec in sorted(SPECS.items()) if spec.arch != "tfc"], indirect=True)
def test_the_estimates_slices_reuse_the_clean_conv_levels(trained, monkeypatch):
    """``auto``'s estimate times slices (heads) of the clean state. A conv layer's clean levels
    are made once on that state, as a call makes them, and every slice takes its share: made
    anew per slice (a pass over all of a layer's outputs that a call pays once), they doubled
    the paper VGG3's estimate at 1e-4 and auto kept the slower dense path."""
    _, net, x, labels = trained
    convs = [i for i, layer in enumerate(net.layers)
             if layer.conv is not None and type(layer.post) is ThresholdPostOp]
    assert convs
    diff = DifferenceEvaluator(net, torch.as_tensor(x), net.memories())
    assert diff.keep_state
    made = []  # per _levels call: whether it had to make the levels
    plain = DifferenceEvaluator._levels

    def counted(st, post):
        made.append(st.levels is None)
        return plain(st, post)

    monkeypatch.setattr(DifferenceEvaluator, "_levels", staticmethod(counted))
    maps = [generate_map(net.memories(), "flip", 0.03, 5, i) for i in range(4)]
    assert diff.estimate_seconds(maps) > 0
    starts = list(range(0, diff.n, diff.batch))[: min(diff.workers, torch.get_num_threads())]
    assert 0 < sum(made) <= len(convs) * len(starts)
    made.clear()
    assert diff.estimate_seconds(maps) > 0
    assert made and not any(made)  # the kept state has them, and its slices take theirs
    st = diff._clean(0)[convs[0]]
    assert torch.equal(st.head(3, True).levels, st.levels[:3])


@pytest.mark.parametrize("trained", [name for name, spec in sorted(SPECS.items()) if spec.arch != "tfc"], indirect=True)
@pytest.mark.parametrize("conv_acc", ["int16 where it fits", "int32"])
def test_conv_layers_of_the_compiled_step_keep_no_unchanged_ranges(trained, conv_acc, monkeypatch):
    """A conv layer with a plain threshold post-op tests pool windows against its clean level's
    range, so its clean state holds no per-accumulator range (half the paper VGG3's state);
    the dense layers keep theirs, and their accumulators as int32, while a conv layer's are
    int16 where every faulty one fits (all of them on these small nets; the paper VGG3's first
    only). Exact without ranges, with either accumulator type, a map whose faulty post-op
    differs in more than the thresholds included (it takes the tensor step on that conv layer)."""
    _, net, x, labels = trained
    mems = net.memories()
    if conv_acc == "int32":
        monkeypatch.setattr(difference, "_acc_dtype", lambda layer, bound: torch.int32)
    monkeypatch.setattr(difference, "LEVELS_CHUNK", 7)  # the clean levels, counted a few images at a time
    diff = DifferenceEvaluator(net, torch.as_tensor(x), mems)
    convs = [i for i, layer in enumerate(net.layers) if layer.conv is not None]
    assert convs
    for i, st in enumerate(diff._clean(0)):
        narrow = conv_acc != "int32" and net.layers[i].conv is not None
        assert st.acc.dtype == (torch.int16 if narrow else torch.int32)
        compiled = net.layers[i].conv is not None and type(net.layers[i].post) is ThresholdPostOp
        assert (st.lo is None and st.hi is None) == compiled
        head = st.head(3, net.layers[i].conv is not None)
        if compiled:
            assert head.lo is None and head.hi is None
        else:
            assert len(head.lo) == len(head.hi) == 3
    i = convs[0]
    post = net.layers[i].post
    other = ThresholdPostOp(post.thresholds, post.out_scale, post.out_bias + post.out_mult, post.out_mult, post.sign)
    maps = [generate_map(mems, "flip", rate, 7, k) for k, rate in enumerate((0.002, 0.03, 0.0))]
    posts = [None, None, {i: other}]
    ev = MapEvaluator(net, x, labels, method="dense")
    want = ev.logits(maps, posts)
    stepped = []
    tensor_step = diff._conv_step
    diff._conv_step = lambda *a: stepped.append(a[0]) or tensor_step(*a)
    got = diff.run_many(maps, posts)
    assert stepped == [i]  # the third map's conv layer, without ranges
    for res, ref in zip(got, want, strict=True):
        assert np.array_equal(with_difference(diff, res).numpy(), ref)
    assert len(got[2].rows) and len(got[1].rows)
    for j in convs:
        st, p = diff._clean(0)[j], net.layers[j].post
        assert len(st.out) > 7 and st.levels is not None
        assert torch.equal(st.levels, torch.round((st.out.double() - p.out_bias) / p.out_mult).to(torch.int16))


def test_the_estimate_counts_the_clean_state_a_call_recomputes(trained):
    """A clean state over the budget is computed again in every call: the estimate adds that
    time (measured when the evaluator was built), shared by the call's maps; a kept state adds
    nothing (the paper VGG3 on 10k images in a 3 GB budget spent about 4 s of an 11 s call at
    1e-4 on it)."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.002, 9, k) for k in range(5)]
    kept = DifferenceEvaluator(net, torch.as_tensor(x), mems)
    again = DifferenceEvaluator(net, torch.as_tensor(x), mems, budget_bytes=1, batch=64)
    assert kept.keep_state and not again.keep_state
    assert kept.clean_seconds > 0 and again.clean_seconds > 0
    for ev in (kept, again):
        ev.clean_seconds = 1000.0
    assert again.estimate_seconds(maps) >= 1000.0 / len(maps)
    assert kept.estimate_seconds(maps) < 1000.0 / len(maps)
    assert again.estimate_seconds(maps[:2]) >= 1000.0 / 2  # fewer maps share it


def _estimate_on_a_stubbed_clock(ev: DifferenceEvaluator, maps, monkeypatch, step_seconds) -> float:
    """``ev``'s estimate (with ``small=10``) on a clock that only its group steps advance, each
    by ``step_seconds(state)``: the estimate's arithmetic without the machine's noise."""
    clock = [0.0]

    def group_step(state, deltas, posts):
        clock[0] += step_seconds(state)
        return []

    monkeypatch.setattr(ev, "_run_group", group_step)
    monkeypatch.setattr(difference.time, "perf_counter", lambda: clock[0])
    try:
        return ev.estimate_seconds(maps, small=10)
    finally:
        monkeypatch.undo()


def test_the_estimate_pays_a_slices_fixed_cost_once_per_round_of_batches(trained, monkeypatch):
    """The estimate splits a slice's time into a per-image part and a fixed part (the group's
    set-up and bookkeeping); a call pays the fixed part once per round of batches side by side:
    once for a kept state, ``ceil(batches / threads)`` times for a state that does not fit.
    On a clock that only the (stubbed) group step advances, by ``F`` plus ``S`` per image,
    the estimate for all images is exactly ``rounds * F + S * N`` per group of maps (paper VGG3, 10k
    images in a 3 GB budget: the estimate was 0.83-0.86 of the real time, 0.87-1.08 with
    the rounds counted)."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.002, 9, k) for k in range(4)]
    fixed, per_image = 0.5, 0.001
    n = len(labels)
    for ev, rounds in ((DifferenceEvaluator(net, torch.as_tensor(x), mems, workers=1), 1),
                       (DifferenceEvaluator(net, torch.as_tensor(x), mems, budget_bytes=1, batch=50, workers=1),
                        -(-n // 50))):
        estimate = _estimate_on_a_stubbed_clock(
            ev, maps, monkeypatch, lambda state: fixed + per_image * int(state[0].acc.shape[0]))
        estimate -= 0 if ev.keep_state else ev.clean_seconds / len(maps)
        got = estimate * min(len(maps), ev.group)  # the slices run one group, per map of it
        assert got == pytest.approx(rounds * fixed + per_image * n, rel=1e-9)
        assert rounds > 1 or ev.keep_state


def test_the_estimate_times_fast_slices_warm_on_states_made_before_the_clock(trained, monkeypatch):
    """A fast slice's first runs are slow (on sfc_w2a2 a run on a state made just before it
    took up to 2x longer): the estimate makes both slices' states before timing anything,
    counts each slice's first run as a warm-up, and keeps the faster of two more. On a clock
    where a step costs ``F + S`` per image and a state's first step ``cold`` more, the
    estimate is exactly the warm ``F + S * N`` (timing each run on new states, as before,
    gave ``F + cold + S * N``: every run was a first one)."""
    _, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, "flip", 0.002, 9, k) for k in range(4)]
    fixed, per_image, cold = 0.002, 1e-6, 0.01
    stepped: list = []  # the states stepped on so far (held, so that no id is reused)

    def step_seconds(state) -> float:
        first = not any(s is state for s in stepped)
        stepped.append(state)
        return fixed + per_image * int(state[0].acc.shape[0]) + (cold if first else 0.0)

    ev = DifferenceEvaluator(net, torch.as_tensor(x), mems, workers=1)
    estimate = _estimate_on_a_stubbed_clock(ev, maps, monkeypatch, step_seconds)
    assert fixed + cold + per_image * 400 < difference.ESTIMATE_REPEAT_BELOW  # the fast branch
    got = estimate * min(len(maps), ev.group)  # the slices run one group, per map of it
    assert got == pytest.approx(fixed + per_image * len(labels), rel=1e-9)
    assert len({id(s) for s in stepped}) == 2  # one state per slice size, made once


def test_the_clean_states_budget_is_a_quarter_of_the_machines_memory(monkeypatch):
    """By default the clean state may take a quarter of the physical memory, at least
    ``CLEAN_BUDGET_MIN_BYTES`` (also where the platform does not say)."""
    sizes = {"SC_PHYS_PAGES": 4 << 20, "SC_PAGE_SIZE": 4096}  # 16 GiB
    monkeypatch.setattr(difference.os, "sysconf", lambda name: sizes[name])
    assert difference.default_budget_bytes() == 4 << 30
    sizes["SC_PHYS_PAGES"] = 1 << 20  # 4 GiB: a quarter is below the least budget
    assert difference.default_budget_bytes() == difference.CLEAN_BUDGET_MIN_BYTES

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(difference.os, "sysconf", unknown)
    assert difference.default_budget_bytes() == difference.CLEAN_BUDGET_MIN_BYTES


@pytest.mark.parametrize("trained", [name for name, spec in sorted(SPECS.items()) if spec.arch != "tfc"], indirect=True)
def test_the_benchs_threshold_reach_counts_conv_layers_without_kept_ranges(trained, monkeypatch):
    """``bench/sw_faults.py`` reports per layer how close the clean accumulators sit to a
    threshold; a conv layer of the compiled step keeps no ranges, so the bench counts them from
    the post-op, and gets what a state with ranges gives (the bench crashed on them once)."""
    module = load_bench_script("sw_faults", monkeypatch)
    _, net, x, _ = trained
    lean = DifferenceEvaluator(net, torch.as_tensor(x), net.memories())
    assert any(st.lo is None for st in lean._clean(0))
    monkeypatch.setattr(difference, "_compiled_conv_layer", lambda layer: False)  # ranges kept
    full = DifferenceEvaluator(net, torch.as_tensor(x), net.memories())
    assert all(st.lo is not None for st in full._clean(0))
    got = module.unchanged_reach(lean)
    assert got == module.unchanged_reach(full) and len(got) == len(net.layers) - 1


def test_logits_past_float32s_exact_range_stay_exact(digits):
    """A wide 8-bit last hidden layer with weights stuck at +127 gives logits above 2^24, where
    float32 no longer holds every integer: the difference path keeps them in the logit layer's
    own dtype (float64 here), as the dense path does (it rounded them, and tied two classes
    the dense path told apart)."""
    from mcel_train.faults.faultmap import STUCK0, STUCK1
    from mcel_train.models import build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="vgg3", weight_bits=8, act_bits=8, channels=(4,), hidden=(2048,),
                     image_shape=(8, 8)).resolved()
    net = from_brevitas(build_model(spec).eval())
    x, labels = model_inputs(digits.test.images[:60], spec), digits.test.labels[:60]
    mems = net.memories()
    hid, last = len(net.layers) - 2, len(net.layers) - 1
    width = net.layers[hid].weight.shape[0]
    faults = []  # (memory, word, bit, kind): a weight set to a value, bit by bit

    def put(layer, r, c, value):
        idx = r * net.layers[layer].weight.shape[1] + c
        for b in range(8):
            word, bit = divmod(idx * 8 + b, mems[layer].width)
            faults.append((layer, word, bit, STUCK1 if (value >> b) & 1 else STUCK0))

    for r in range(width // 2):  # saturated activations
        for c in range(net.layers[hid].weight.shape[1]):
            put(hid, r, c, 127)
    for c in range(width):  # two logits that differ by one activation's worth
        put(last, 1, c, 127)
        put(last, 0, c, 126 if c == width - 1 else 127)
    fmap = FaultMap([m.name for m in mems], *np.array(faults).T, {"rate": 0.5})
    dense = MapEvaluator(net, x, labels, method="dense").logits([fmap] * 4)[0]
    assert np.abs(dense).max() > 2 ** 24  # the case: past float32's exact integers
    assert np.array_equal(MapEvaluator(net, x, labels, method="difference").logits([fmap] * 4)[0], dense)
