"""Exact products of activation codes and faulty weights on oneDNN's int8 kernels, for the
dense fault path (:class:`mcel_train.evaluate.MapEvaluator`).

The dense path multiplies every layer's activations by every map's weights. Both are small
integers: 1- to 8-bit weights, and activations that are the levels of a threshold post-op. A
float32 matmul handles them exactly, but at float speed. oneDNN's quantized linear layer
(``torch.ops.onednn.qlinear_pointwise``, the kernel behind PyTorch's x86 int8 inference) takes
uint8 activations and int8 weights, sums in int32 and returns float32. On a CPU with AMX or VNNI
it is several times faster: on this project's 2-core machine 1053 against 112 multiply-adds per
nanosecond for an 8192 x 256 x 256 product (one-off timing); a fault sweep's dense layers run
mostly in such products.

Exactness: the integer sums are exact in any order; the float32 result ``mult * sum + bias`` is
exact while every partial value stays below 2^24, which :func:`pack_layers` checks per layer
(the same bound under which the float path itself uses float32). A layer qualifies when its
input is a threshold post-op's output ``bias + mult * count`` (integers ``bias`` and ``mult``,
at most 255 thresholds): the count is the uint8 code, and ``mult`` and ``bias * sum_in(w)`` are
the kernel's input scale and bias. Where the kernel is missing or fails its self-check
(:func:`available`), nothing is packed and the float path runs as before.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mcel_train.intnet import FLOAT32_EXACT, ConvGeometry, IntNetwork, PostOp, ThresholdPostOp

# The product whose fastest of RATE_REPEAT runs gives the best multiply-add rate of the kernel
# (per torch thread count), for the dense path's floor (MapEvaluator.dense_floor)
RATE_SHAPE = (1024, 1024, 1024)
RATE_REPEAT = 4
# the weight matrix whose fastest pack gives pack_rate (a conv packs it as 3x3 kernels)
PACK_SHAPE = (256, 2304)


@dataclass(frozen=True)
class Codes:
    """A layer input ``value = bias + mult * code`` with ``code`` in ``0..levels``."""

    mult: float
    bias: float
    levels: int

    def of(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as codes: itself if uint8 already, else its values' codes (a conv layer 0's
        output as the evaluator keeps it, in levels)."""
        if x.dtype == torch.uint8:
            return x
        if self.bias == 0 and self.mult == 1:
            return x.to(torch.uint8)
        # small integers: exact in any float type, and a level minus the offset is a multiple of mult
        return ((x - self.bias) / self.mult).to(torch.uint8)


def codes_of(post: PostOp) -> Codes | None:
    """How ``post``'s outputs are uint8 codes, or ``None`` if they are not (not a threshold
    post-op, more than 255 levels, or a non-integer scale or offset)."""
    if not isinstance(post, ThresholdPostOp):
        return None
    levels = int(post.thresholds.shape[1])
    if levels > 255 or not float(post.out_mult).is_integer() or not float(post.out_bias).is_integer():
        return None
    return Codes(float(post.out_mult), float(post.out_bias), levels)


def _linear(x: torch.Tensor, packed: torch.Tensor, mult: float, scale: torch.Tensor, zero: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(x, mult, 0, packed, scale, zero, bias, 1.0, 0, torch.float32,
                                              "none", [], "")


def _pack(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.onednn.qlinear_prepack(w.to(torch.int8).contiguous(), None)


def _pack_conv(kernels: torch.Tensor, scale: torch.Tensor, mult: float, stride: Sequence[int],
               padding: Sequence[int]) -> torch.Tensor:
    """``(out, in, kh, kw)`` kernels packed for the kernel's convolution (input scale ``mult``)."""
    return torch.ops.onednn.qconv_prepack(kernels.to(torch.int8).contiguous(), scale, mult, 0, list(stride),
                                          list(padding), [1, 1], 1, None)


@functools.cache
def available() -> bool:
    """Whether this torch has the kernels and they compute a product and a convolution with a
    scale, a bias and codes up to 255 exactly (checked once per process against int64
    arithmetic). The extreme rows (all 255 against all -128 or 127) would catch a kernel
    that saturates pairwise sums in int16, as pre-VNNI x86 int8 instructions do."""
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (33, 72), generator=gen, dtype=torch.int64)
        w = torch.randint(-128, 128, (24, 72), generator=gen, dtype=torch.int64)
        x[0], w[0], w[1] = 255, -128, 127
        bias = torch.randint(-1000, 1000, (24,), generator=gen, dtype=torch.int64)
        got = _linear(x.to(torch.uint8), _pack(w), 2.0, torch.ones(24), torch.zeros(24, dtype=torch.int64),
                      bias.to(torch.float32))
        if not torch.equal(got.to(torch.int64), 2 * x @ w.T + bias):
            return False
        geometry = ConvGeometry(in_channels=8, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        xc = torch.randint(0, 256, (2, 8, 5, 5), generator=gen, dtype=torch.int64)
        wc = torch.randint(-128, 128, (1, 6, 72), generator=gen, dtype=torch.int64)
        xc[0], wc[0, 0] = 255, -128
        want = F.conv2d(xc.to(torch.float64), wc[0].reshape(6, 8, 3, 3).to(torch.float64), padding=1)
        got = PackedConv(wc, Codes(1.0, 0.0, 255), 1, geometry, pool=0)(xc.to(torch.uint8))
        return bool(torch.equal(got.to(torch.float64), want))
    except (AttributeError, RuntimeError, TypeError):
        return False


class PackedDense:
    """One dense layer's weights under each map of a group, packed once for the kernel:
    ``(M, N, in)`` codes (or ``(N, in)`` shared by the maps) -> ``(M, N, out)`` float32
    accumulators, exactly those of the float path; or, given the layer's threshold post-op,
    the next layer's ``(M, N, out)`` codes, each map's accumulators counted as they come (a
    stacked float block cost as much as the products: sfc_w2a2, 20 maps, one thread)."""

    def __init__(self, weights: torch.Tensor, codes: Codes, maps: int) -> None:
        self.out = weights.shape[1]
        self.maps = maps
        self.codes = codes
        self.mult = codes.mult
        self.scale = torch.ones(self.out)
        self.zero = torch.zeros(self.out, dtype=torch.int64)
        self.shared = weights.shape[0] == 1  # the clean weights, the same for every map
        self.packed = [_pack(w) for w in weights]
        self.bias = [None if codes.bias == 0 else (codes.bias * w.to(torch.int64).sum(1)).to(torch.float32)
                     for w in weights]

    def __call__(self, x: torch.Tensor, post: ThresholdPostOp | None = None) -> torch.Tensor:
        x = self.codes.of(x)
        out = torch.empty(self.maps, x.shape[-2], self.out, dtype=torch.float32 if post is None else torch.uint8)
        for m in range(self.maps):
            k = 0 if self.shared else m
            xm = x if x.dim() == 2 else x[m]
            acc = _linear(xm.contiguous(), self.packed[k], self.mult, self.scale, self.zero, self.bias[k])
            if post is None:
                out[m] = acc
            else:
                post.codes(acc, out=out[m])
        return out


class PackedConv:
    """One conv layer's weights under each map of a group, packed once for the kernel, one
    map at a time (oneDNN's grouped int8 convolution ran at a quarter of its per-map speed on
    the paper VGG3's second layer, and the per-map one at 14x the float grouped convolution;
    one-off timing): ``(N, M * C, H, W)`` codes (or ``(N, C, H, W)`` shared by the maps) ->
    ``(N, M * out, H', W')`` float32 accumulators, or, given the layer's threshold post-op,
    the pooled outputs' codes."""

    def __init__(self, weights: torch.Tensor, codes: Codes, maps: int, geometry: ConvGeometry, pool: int) -> None:
        g = geometry
        self.maps, self.codes, self.geometry, self.pool = maps, codes, g, pool
        self.out = weights.shape[1]
        self.scale = torch.ones(self.out)
        self.zero = torch.zeros(self.out, dtype=torch.int64)
        self.shared = weights.shape[0] == 1
        self.packed, self.bias = [], []
        for w in weights:
            if g.weight_hwc:
                kw = w.reshape(self.out, *g.kernel, g.in_channels).permute(0, 3, 1, 2)
            else:
                kw = w.reshape(self.out, g.in_channels, *g.kernel)
            self.packed.append(_pack_conv(kw, self.scale, codes.mult, g.stride, g.padding))
            self.bias.append(None if codes.bias == 0 else (codes.bias * w.to(torch.int64).sum(1)).to(torch.float32))

    def __call__(self, x: torch.Tensor, post: ThresholdPostOp | None = None) -> torch.Tensor:
        g = self.geometry
        x = self.codes.of(x)
        c = g.in_channels
        parts = []
        for m in range(self.maps):
            k = 0 if self.shared else m
            xm = x if x.shape[1] == c else x[:, m * c:(m + 1) * c]
            acc = torch.ops.onednn.qconv2d_pointwise(
                xm.contiguous(memory_format=torch.channels_last), self.codes.mult, 0, self.packed[k], self.scale,
                self.zero, self.bias[k], list(g.stride), list(g.padding), [1, 1], 1, 1.0, 0, torch.float32, "none",
                [], None)
            parts.append(acc if post is None else post.codes(acc, self.pool))
        out = torch.empty(x.shape[0], self.maps * self.out, *parts[0].shape[2:], dtype=parts[0].dtype)
        for m, part in enumerate(parts):
            out[:, m * self.out:(m + 1) * self.out] = part
        return out


def pack_layers(net: IntNetwork, weights: Sequence[torch.Tensor | None], dtypes: Sequence[torch.dtype],
                pixels: bool = False, only: Collection[int] | None = None) -> dict[int, PackedDense | PackedConv]:
    """The layers of ``net`` whose products can run on the kernel for these maps' ``weights``
    (per layer ``(M, out, in)`` or ``None`` for the clean ones): those whose float products
    are exact in float32 (``dtypes``, as :meth:`mcel_train.intnet.IntNetwork.exact_dtypes`
    gives them for these weights) and whose codes and weights the kernel holds; ``pixels`` as
    in :func:`eligible`; ``only``: these layers at most."""
    if not available():
        return {}
    maps = max((w.shape[0] for w in weights if w is not None), default=1)
    out = {}
    for i, layer in enumerate(net.layers):
        codes = _input_codes(net, i, pixels)
        if codes is None or dtypes[i] != torch.float32 or (only is not None and i not in only):
            continue
        w = torch.as_tensor(layer.weight)[None] if weights[i] is None else torch.as_tensor(weights[i])
        if not _exact(w, codes):
            continue
        out[i] = (PackedDense(w, codes, maps) if layer.conv is None
                  else PackedConv(w, codes, maps, layer.conv, layer.pool))
    return out


PIXELS = Codes(1.0, 0.0, 255)  # a first dense layer's uint8 images, as they are


def eligible(net: IntNetwork, pixels: bool = False) -> list[int]:
    """The dense and conv layers whose input is a threshold post-op's codes and whose clean
    weights fit the kernel (a map's faulty weights are checked again when packed); with
    ``pixels`` (the caller's images are integers in 0..255 as the first layer sees them), a
    dense first layer too."""
    found = []
    for i, layer in enumerate(net.layers):
        codes = _input_codes(net, i, pixels)
        if codes is not None and _exact(torch.as_tensor(layer.weight), codes):
            found.append(i)
    return found


def _input_codes(net: IntNetwork, i: int, pixels: bool) -> Codes | None:
    """The codes the kernel takes as layer ``i``'s input, or ``None`` when it cannot run it.

    A padded conv whose input levels are not the codes themselves (``codes.bias != 0``, as
    bipolar activations: code 0 is level -1) is left out: the kernel adds ``bias x w`` at every
    output position as if each tap read a code, but a padded tap reads level 0, so the border
    pixels came out wrong (a vgg3_w1a1's clean accuracy 0.340 instead of Brevitas' 0.388)."""
    if i > 0:
        codes = codes_of(net.layers[i - 1].post)
        conv = net.layers[i].conv
        if codes is not None and codes.bias != 0 and conv is not None and any(conv.padding):
            return None
        return codes
    return PIXELS if pixels and net.layers[0].conv is None and net.input_post is None else None


def _exact(w: torch.Tensor, codes: Codes) -> bool:
    """Whether int8 holds every weight and float32 every value the kernel forms: the code sum,
    its scaled form and the bias term, each at most its row's absolute weight sum times the
    largest code, scale or offset."""
    lo, hi = (int(v) for v in torch.aminmax(w))
    if lo < -128 or hi > 127:
        return False

    def fits(row: float) -> bool:
        return row * codes.levels * max(1.0, abs(codes.mult)) + row * abs(codes.bias) < FLOAT32_EXACT

    # the cheap bound (inputs x largest weight) first: a faulty layer's sum over all its weights
    # took longer than its products (paper VGG3, 16 maps x 6.4M weights)
    return fits(w.shape[-1] * max(-lo, hi)) or fits(float(w.to(torch.int64).abs().sum(-1).max()))


@functools.cache
def pack_rate(threads: int, conv: bool) -> float:
    """Weights per second that packing reaches (``qconv_prepack`` for a conv layer's weights,
    else ``qlinear_prepack``) on ``threads`` torch threads, the fastest of :data:`RATE_REPEAT`
    packs of a :data:`PACK_SHAPE` matrix (as 256 3x3 kernels of 256 channels for a conv; 0
    without the kernel). The dense path packs every faulty layer of every map once per call:
    the paper VGG3's 3136 -> 2048 layer took 21-39 ms per map, about its product on 2000 images."""
    if not available():
        return 0.0
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-2, 2, PACK_SHAPE, generator=gen).to(torch.int8)
    scale = torch.ones(PACK_SHAPE[0])
    if conv:
        w = w.reshape(PACK_SHAPE[0], -1, 3, 3)
    best = np.inf
    for _ in range(RATE_REPEAT + 1):  # the first pack loads the kernel
        t0 = time.perf_counter()
        _pack_conv(w, scale, 1.0, (1, 1), (1, 1)) if conv else _pack(w)
        best = min(best, time.perf_counter() - t0)
    return w.numel() / best


@functools.cache
def rate(threads: int) -> float:
    """Multiply-adds per second of the kernel on a :data:`RATE_SHAPE` product on ``threads``
    torch threads, the fastest of :data:`RATE_REPEAT` runs (0 without the kernel)."""
    if not available():
        return 0.0
    m, k, n = RATE_SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (m, k), generator=gen, dtype=torch.uint8)
    packed = _pack(torch.randint(-2, 2, (n, k), generator=gen))
    scale, zero = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    best = np.inf
    for _ in range(RATE_REPEAT + 1):  # the first run loads the kernel
        t0 = time.perf_counter()
        _linear(x, packed, 1.0, scale, zero, None)
        best = min(best, time.perf_counter() - t0)
    return m * k * n / best
