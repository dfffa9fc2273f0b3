"""The integer network reproduces Brevitas exactly; the batched evaluator matches per-map runs."""

import numpy as np
import pytest
import torch

from mcel_train.evaluate import MapEvaluator, clean_accuracy, clean_logits, memory_contents, predict, ties_of
from mcel_train.faults import apply_map, generate_map
from mcel_train.intnet import FLOAT32_EXACT, ThresholdPostOp, from_brevitas, max_pool
from mcel_train.memory import Memory
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import model_inputs, quick_train
from tests.conftest import brevitas_predictions

SPECS = {
    "tfc_w2a2": ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(32, 32),
                          image_shape=(8, 8)),
    "tfc_w1a1": ModelSpec(arch="tfc", weight_bits=1, act_bits=1, hidden=(32, 32),
                          image_shape=(8, 8)),
    "tfc_w4a4": ModelSpec(arch="tfc", weight_bits=4, act_bits=4, hidden=(32,),
                          image_shape=(8, 8)),
    "vgg3_w2a2": ModelSpec(arch="vgg3", weight_bits=2, act_bits=2, channels=(4, 8),
                           hidden=(16,), image_shape=(8, 8)),
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def trained(request, digits):
    spec = SPECS[request.param].resolved()
    model = quick_train(spec, digits, steps=40, batch_size=64)
    x = model_inputs(digits.test.images, spec)
    return request.param, spec, model, x, digits.test.labels


def test_clean_integer_network_matches_brevitas(trained):
    _, _, model, x, labels = trained
    net = from_brevitas(model)
    int_logits = net.forward(x)[0]
    ref, ref_pred = brevitas_predictions(model, x)
    assert torch.allclose(int_logits * net.logit_scale, ref, rtol=1e-5, atol=1e-4)
    assert torch.equal(predict(int_logits), ref_pred)
    # Float argmax of the Brevitas logits may differ only where integer logits tie.
    top2 = torch.topk(int_logits, 2).values
    differ = ref.argmax(1) != predict(int_logits)
    assert bool((top2[differ, 0] == top2[differ, 1]).all())
    ev = MapEvaluator(net, x, labels)
    res = ev.evaluate([generate_map(net.memories(), "flip", 0.0, 0, 0)])
    assert res.accuracy[0] == clean_accuracy(net, x, labels)
    assert res.accuracy[0] == float((ref_pred.numpy() == labels).mean())
    # the sweep's clean logits, a chunk of images per forward (a chunk not dividing the set):
    # the whole set's forward, ties counted on them
    assert len(x) % 7
    assert torch.equal(clean_logits(net, x, chunk=7), int_logits)
    assert ties_of(clean_logits(net, x, chunk=7)) == int((top2[:, 0] == top2[:, 1]).sum())


def test_thresholds_equal_the_brevitas_post_op_on_every_integer(trained):
    _, _, model, _, _ = trained
    exact, fast = from_brevitas(model, thresholds=False), from_brevitas(model)
    for a, b in zip(exact.layers[:-1], fast.layers[:-1], strict=True):
        ch = a.weight.shape[0]
        acc = torch.arange(-4000, 4001, dtype=torch.float32)[:, None].expand(-1, ch)
        if a.conv is not None:
            acc = acc[:, :, None, None]
        assert torch.equal(a.post(acc), b.post(acc))


@pytest.mark.parametrize("fault_model, rate", [("flip", 0.02), ("stuck", 0.03),
                                               ("kflips", 7)])
def test_batched_evaluator_matches_brevitas_for_every_map(trained, fault_model, rate):
    _, _, model, x, labels = trained
    net = from_brevitas(model)
    mems = net.memories()
    maps = [generate_map(mems, fault_model, rate, 1, i) for i in range(5)]
    res = MapEvaluator(net, x, labels, rows=700, min_chunk=100).evaluate(maps)
    for i, fmap in enumerate(maps):
        faulty = apply_map(net.contents(), mems, fmap)
        _, pred = brevitas_predictions(model, x, {j: faulty[m.name] for j, m in enumerate(mems)})
        assert np.array_equal(res.predictions[i], pred.numpy())
        assert res.accuracy[i] == float((pred.numpy() == labels).mean())


def test_finn_layout_memories_plug_in(trained):
    name, _, model, x, labels = trained
    net = from_brevitas(model)
    mems = []
    for i, layer in enumerate(net.layers):
        rows, cols = layer.weight.shape
        pe, simd = (2 if rows % 2 == 0 else 1), (4 if cols % 4 == 0 else 1)
        mems.append(Memory(f"MVAU_{i}", rows, cols, layer.weight_bits, pe=pe, simd=simd,
                           layout="finn_mvau", bipolar=layer.bipolar, layer_index=i))
    if net.layers[0].conv is not None:  # FINN's (kh, kw, ch) column order: refused, not guessed
        with pytest.raises(ValueError, match="FINN.s order"):
            MapEvaluator(net, x, labels, memories=mems)
        return
    maps = [generate_map(mems, "flip", 0.02, 0, i) for i in range(3)]
    res = MapEvaluator(net, x, labels, memories=mems).evaluate(maps)
    for i, fmap in enumerate(maps):
        faulty = apply_map(memory_contents(net, mems), mems, fmap)
        _, pred = brevitas_predictions(model, x, {j: faulty[m.name] for j, m in enumerate(mems)})
        assert np.array_equal(res.predictions[i], pred.numpy())


def test_dtype_follows_the_exactness_bound(trained):
    _, _, model, x, _ = trained
    net = from_brevitas(model)
    assert net.prepare(None, 255.0)[0].dtype == torch.float32
    assert net.prepare(None, float(FLOAT32_EXACT))[0].dtype == torch.float64


def test_max_pool_equals_torch_max_pool():
    g = torch.Generator().manual_seed(3)
    for k, shape in [(2, (3, 4, 28, 28)), (2, (2, 5, 7, 7)), (3, (1, 2, 9, 10))]:
        x = torch.randint(-9, 9, shape, generator=g).float()
        assert torch.equal(max_pool(x, k), torch.nn.functional.max_pool2d(x, k))


@pytest.mark.parametrize("compiled", [False, True])
def test_threshold_then_pool_equals_pool_after_threshold(compiled):
    """Pooling before thresholding is exact, also for channels whose output falls with acc."""
    g = torch.Generator().manual_seed(4)
    thresholds = torch.sort(torch.randint(-20, 20, (6, 3), generator=g).double(), dim=1).values
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    post = ThresholdPostOp(thresholds, sign=sign)
    post.compiled = compiled
    acc = torch.randint(-30, 30, (5, 6, 8, 8), generator=g).float()
    expected = torch.nn.functional.max_pool2d(post(acc), 2)
    assert torch.equal(post.then_pool(acc, 2), expected)
    assert post.then_pool(acc, 2).unique().numel() > 2  # the check sees several levels


def test_predict_breaks_ties_to_the_lowest_class_on_any_layout():
    """Integer logits tie often under faults: the lowest class index wins, also on the dense
    path's transposed (non-contiguous) logits."""
    from mcel_train.evaluate import predict

    logits = torch.tensor([[[3.0, 5.0, 5.0], [7.0, 7.0, 1.0], [2.0, 2.0, 2.0], [0.0, 1.0, 4.0]]])
    view = logits.transpose(1, 2).contiguous().transpose(1, 2)
    assert not view.is_contiguous()
    for lg in (logits, view):
        assert predict(lg).tolist() == [[1, 0, 0, 2]]
