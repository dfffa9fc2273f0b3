"""The dense path's int8 products (mcel_train/int8_products.py) give exactly the float path's
accumulators and predictions: dense and conv layers, bipolar codes with a scale and an offset,
negative-sign channels, FINN's (kh, kw, ic) weight order, faulty weights, and a fallback to
float where int8 or float32 would not be exact."""

import numpy as np
import pytest
import torch

from mcel_train import int8_products
from mcel_train.evaluate import MapEvaluator
from mcel_train.faults import generate_map
from mcel_train.int8_products import Codes, PackedConv, PackedDense, codes_of, pack_layers
from mcel_train.intnet import ConvGeometry, IdentityPostOp, IntLayer, IntNetwork, ThresholdPostOp, from_brevitas
from mcel_train.models import ModelSpec
from mcel_train.quicktrain import model_inputs, quick_train

SPECS = {
    "tfc_w1a1": ModelSpec(arch="tfc", weight_bits=1, act_bits=1, hidden=(32, 32), image_shape=(8, 8)),
    "tfc_w4a4": ModelSpec(arch="tfc", weight_bits=4, act_bits=4, hidden=(32,), image_shape=(8, 8)),
    "vgg3_w2a2": ModelSpec(arch="vgg3", weight_bits=2, act_bits=2, channels=(4, 8), hidden=(16,),
                           image_shape=(8, 8)),
}


def test_the_kernel_is_here_and_exact():
    """This project's torch has oneDNN's int8 linear and conv kernels, and they pass the
    self-check (else every evaluation silently runs the float products)."""
    assert int8_products.available()


@pytest.fixture(scope="module", params=sorted(SPECS))
def trained(request, digits):
    spec = SPECS[request.param].resolved()
    model = quick_train(spec, digits, steps=30, batch_size=64)
    return request.param, from_brevitas(model), model_inputs(digits.test.images, spec), digits.test.labels


@pytest.mark.parametrize("fault_model, rate", [("flip", 0.05), ("stuck", 0.05), ("flip", 0.0)])
def test_int8_evaluation_equals_the_float_one(trained, fault_model, rate):
    """Every map's predictions with the int8 products equal the float path's, and every layer
    after the first ran on the kernel (threshold post-ops throughout these networks)."""
    name, net, x, labels = trained
    mems = net.memories()
    maps = [generate_map(mems, fault_model, rate, 2, k) for k in range(5)]
    fast = MapEvaluator(net, x, labels, rows=900, min_chunk=100, method="dense")
    slow = MapEvaluator(net, x, labels, rows=900, min_chunk=100, method="dense", int8=False)
    assert fast.int8 and not slow.int8
    weights = fast.stacked_weights(maps)
    packed = pack_layers(net, weights, net.exact_dtypes(weights, fast.max_abs_input), fast.int8_pixels)
    # uint8 pixels (not w1a1's -1/+1 inputs): a dense first layer multiplies them on the kernel
    # too, instead of the sparse correction of a clean layer 0; a conv layer 0 keeps its own path
    dense_first = net.layers[0].conv is None
    first_int8 = dense_first and float(x.min()) >= 0
    assert fast.int8_pixels == (float(x.min()) >= 0) == (name != "tfc_w1a1")
    assert fast.sparse_first == (dense_first and not first_int8) and slow.sparse_first == dense_first
    assert sorted(packed) == list(range(0 if first_int8 else 1, len(net.layers))), name
    a, b = fast.evaluate(maps), slow.evaluate(maps)
    assert np.array_equal(a.predictions, b.predictions)
    assert np.array_equal(a.accuracy, b.accuracy)


def test_forward_logits_are_identical(trained):
    """The integer logits themselves, not only their argmax, for faulty weights of every layer."""
    _, net, x, _ = trained
    gen = torch.Generator().manual_seed(5)
    weights = []
    for layer in net.layers:
        w = torch.as_tensor(layer.weight).repeat(3, 1, 1)
        flip = torch.rand(w.shape, generator=gen) < 0.05
        lo, hi = int(w.min()), int(w.max())
        w[flip] = torch.randint(lo, hi + 1, (int(flip.sum()),), generator=gen).to(w.dtype)
        weights.append(w)
    xs = torch.as_tensor(x[:300], dtype=torch.float32)
    int8 = pack_layers(net, weights, net.exact_dtypes(weights, float(xs.abs().max())))
    assert int8
    prepared = net.prepare(weights, float(xs.abs().max()))
    lean = net.prepare(weights, float(xs.abs().max()), skip=int8)  # no float copies where int8 runs
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(prepared, lean, strict=True))
    assert torch.equal(net.forward(xs, prepared=lean, int8=int8), net.forward(xs, prepared=prepared))


def _threshold_post(channels: int, levels: int, mult: float, bias: float, seed: int) -> ThresholdPostOp:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(-60, 60, (channels, levels), generator=gen).sort(1).values.to(torch.float64)
    sign = torch.where(torch.rand(channels, generator=gen) < 0.3, -1.0, 1.0)
    return ThresholdPostOp(t, out_bias=bias, out_mult=mult, sign=sign)


@pytest.mark.parametrize("shape, pool", [((7, 6), 0), ((3, 6, 11), 0), ((2, 6, 8, 8), 0), ((2, 6, 8, 8), 2)])
def test_codes_are_the_levels_counts(shape, pool):
    """``codes`` = (levels - bias) / mult, with negative-sign channels, after a pool, and in
    the channels-last layout the int8 convolution returns."""
    post = _threshold_post(shape[1], 3, 2.0, -3.0, len(shape) + pool)
    acc = torch.randint(-80, 80, shape).to(torch.float32)
    levels = post.then_pool(acc, pool) if pool else post(acc)
    want = ((levels - post.out_bias) / post.out_mult).to(torch.uint8)
    assert torch.equal(post.codes(acc, pool), want)
    if len(shape) == 4:
        assert torch.equal(post.codes(acc.contiguous(memory_format=torch.channels_last), pool), want)


def _tiny_net(w0: torch.Tensor, w1: torch.Tensor, post0: ThresholdPostOp, conv1: ConvGeometry | None = None):
    first = IntLayer("layer0", w0.numpy(), 1.0, 8, post0)
    second = IntLayer("layer1", w1.numpy(), 1.0, 8, IdentityPostOp(1.0), conv=conv1)
    return IntNetwork([first, second], (w0.shape[1],), "uint8")


def test_bipolar_codes_carry_the_scale_and_offset():
    """Codes 0/1 of outputs -1/+1 (FINN's bipolar activations): the kernel's input scale 2 and
    bias -sum(w) give the accumulators of the levels."""
    post = ThresholdPostOp(torch.zeros(16, 1, dtype=torch.float64), out_bias=-1.0, out_mult=2.0)
    assert codes_of(post) == Codes(2.0, -1.0, 1)
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (3, 5, 16), generator=gen)
    codes = torch.randint(0, 2, (3, 40, 16), generator=gen, dtype=torch.uint8)
    levels = 2.0 * codes.to(torch.float32) - 1.0
    got = PackedDense(w, codes_of(post), 3)(codes)
    assert torch.equal(got, levels @ w.to(torch.float32).transpose(1, 2))
    assert torch.equal(PackedDense(w, codes_of(post), 3)(levels), got)  # levels given: turned into codes


@pytest.mark.parametrize("weight_hwc", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_conv_equals_the_float_grouped_conv(weight_hwc, shared):
    """Per map, the int8 convolution equals the layer's own float grouped convolution, for
    torch's and FINN's weight order, with a per-map or a shared input."""
    geo = ConvGeometry(in_channels=3, kernel=(3, 3), stride=(1, 1), padding=(1, 1), weight_hwc=weight_hwc)
    gen = torch.Generator().manual_seed(int(weight_hwc))
    m, out = 4, 5
    w = torch.randint(-8, 8, (m, out, 27), generator=gen)
    layer = IntLayer("c", w[0].numpy(), 1.0, 4, IdentityPostOp(1.0), conv=geo)
    x = torch.randint(0, 4, (6, 3 if shared else m * 3, 7, 7), generator=gen, dtype=torch.uint8)
    want = layer.accumulate(x.to(torch.float32), w.to(torch.float32), shared)
    got = PackedConv(w, Codes(1.0, 0.0, 3), m, geo, pool=0)(x)
    assert torch.equal(got, want)


def test_layers_that_int8_cannot_hold_stay_float():
    """A weight outside int8, or sums past float32's exact range, keep the float product for
    that layer; the evaluation stays identical either way."""
    gen = torch.Generator().manual_seed(3)
    post0 = _threshold_post(8, 3, 1.0, 0.0, 3)
    w0 = torch.randint(-2, 3, (8, 12), generator=gen)
    for w1, packed in ((torch.randint(-3, 4, (4, 8), generator=gen), True),
                       (torch.tensor([[200] + [1] * 7] * 4), False)):
        net = _tiny_net(w0, w1, post0)
        weights = [None, None]
        assert bool(pack_layers(net, weights, net.exact_dtypes(weights, 255.0))) == packed
        x = torch.randint(0, 256, (50, 12), generator=gen).to(torch.float32)
        labels = np.zeros(50, dtype=np.int64)
        maps = [generate_map(net.memories(), "flip", 0.1, 0, k) for k in range(3)]
        a = MapEvaluator(net, x, labels, method="dense").evaluate(maps)
        b = MapEvaluator(net, x, labels, method="dense", int8=False).evaluate(maps)
        assert np.array_equal(a.predictions, b.predictions)
    big = _tiny_net(w0, torch.full((4, 8), 100), _threshold_post(8, 255, 1.0, 0.0, 4))
    assert 8 * 255 * 100 < int8_products.FLOAT32_EXACT  # exact, packed
    assert pack_layers(big, [None, None], big.exact_dtypes(None, 255.0))
    wide = _tiny_net(torch.randint(-2, 3, (700, 12), generator=gen), torch.full((4, 700), 127),
                     _threshold_post(700, 255, 1.0, 0.0, 5))
    assert 700 * 255 * 127 >= int8_products.FLOAT32_EXACT  # past float32: not packed
    assert not pack_layers(wide, [None, None], wide.exact_dtypes(None, 255.0))


@pytest.mark.parametrize("pool", [0, 2])
def test_the_difference_paths_dense_finish_layer_equals_its_float_layer(pool):
    """The difference evaluator's dense finish (one map, all images) on the kernel: a conv
    layer's levels (pooled or not) and its next layer's codes equal the float layer's."""
    from mcel_train.difference import _int8_layer, _layer_forward

    gen = torch.Generator().manual_seed(pool)
    geo = ConvGeometry(in_channels=3, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
    w = torch.randint(-8, 8, (5, 27), generator=gen)
    post = _threshold_post(5, 3, 1.0, 0.0, 7)
    layer = IntLayer("c", w.numpy(), 1.0, 4, post, conv=geo, pool=pool)
    levels_in = torch.randint(0, 4, (6, 3, 8, 8), generator=gen).to(torch.float32)
    product = PackedConv(w[None], Codes(1.0, 0.0, 3), 1, geo, pool)
    want = _layer_forward(layer, levels_in, w.to(torch.float32), torch.float32, post)[2]
    assert torch.equal(_int8_layer(layer, product, levels_in, post, codes_next=False), want)
    assert torch.equal(_int8_layer(layer, product, levels_in, post, codes_next=True), want.to(torch.uint8))
