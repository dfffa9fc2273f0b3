"""The integer network: per layer an integer weight matrix, its scale, and a post-op.

This is the software model that fault maps act on. It is built from a *source*; today that is
a trained Brevitas model (:func:`from_brevitas`), later the FINN build's integer weights and
thresholds. Both plug into the same :class:`IntLayer`: what differs is the post-op that turns
the integer accumulator into the next layer's integer inputs.

- :class:`BrevitasPostOp` reproduces Brevitas' eval-mode computation (accumulator times scales,
  BatchNorm, quantized activation) by calling the model's own BatchNorm and activation modules,
  so the clean integer network matches the Brevitas model to float rounding.
- :class:`ThresholdPostOp` is FINN's MultiThreshold, ``out = sum_k(acc >= T_k)``: the
  hardware's post-op, for the FINN source.
- :class:`IdentityPostOp` ends the network: the integer accumulators are the logits.

Accumulators are computed in float32 when every partial sum stays below 2^24 (then float
arithmetic on integers is exact in any summation order), in float64 otherwise.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn

from mcel_train.memory import Memory, memory_for_layer, weight_zero_point
from mcel_train.threshold_count import threshold_count, unchanged_range

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


class IntNetError(RuntimeError):
    """The model cannot be expressed exactly as an integer network."""


def max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k)`` (non-overlapping, floor mode) as pairwise maxima of strided views.

    Same values; about 3x faster than ATen's CPU kernel on NCHW, which also computes indices.
    """
    h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
    rows = x[..., 0:h:k, :w]
    for i in range(1, k):
        rows = torch.maximum(rows, x[..., i:h:k, :w])
    out = rows[..., 0::k]
    for j in range(1, k):
        out = torch.maximum(out, rows[..., j::k])
    return out


class PostOp:
    """Accumulator -> next layer's integers. Subclasses set ``out_scale`` and ``max_abs_out``.

    ``acc`` arrives as a float tensor of exact integers with channels on dim 1.
    """

    out_scale: float = 1.0
    max_abs_out: float = float("inf")

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def acc_thresholds(self) -> torch.Tensor | None:
        """Real-valued accumulator thresholds ``(C, K)`` where the output changes, if any."""
        return None

    def then_pool(self, acc: torch.Tensor, k: int) -> torch.Tensor:
        """This post-op followed by a ``k x k`` max-pool (subclasses may reorder it exactly)."""
        return max_pool(self(acc), k)

    def channels(self, index: torch.Tensor) -> PostOp:
        """The same post-op for the channels ``index`` only (the difference evaluator's subsets)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-channel form")

    def unchanged_range(self, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per accumulator, the inclusive range ``[lo, hi]`` of integer changes that leave its
        output as it is (channels on dim 1; ``+-inf`` where unbounded). The difference evaluator
        checks a changed accumulator with two comparisons instead of re-running the post-op."""
        raise NotImplementedError(f"{type(self).__name__} has no unchanged range")


class IdentityPostOp(PostOp):
    """Last layer: the accumulator is the logit; ``out_scale`` turns it into Brevitas' logit."""

    def __init__(self, acc_scale: float) -> None:
        self.out_scale = float(acc_scale)

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        return acc

    def channels(self, index: torch.Tensor) -> PostOp:
        return self

    def unchanged_range(self, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zero = torch.zeros_like(acc)
        return zero, zero


class BrevitasPostOp(PostOp):
    """BatchNorm + quantized activation exactly as the (eval-mode) Brevitas modules compute it."""

    def __init__(self, acc_scale: float, bn: nn.Module | None, act: nn.Module) -> None:
        self.acc_scale = float(acc_scale)
        self.bn = bn.eval() if bn is not None else None
        self.act = act.eval()
        with torch.no_grad():
            probe = self.act(torch.zeros(1, 1))
        self.out_scale = float(probe.scale)
        self.act_bits = int(round(float(probe.bit_width)))
        self.bipolar = isinstance(act, QuantIdentity)
        self.max_abs_out = 1.0 if self.bipolar else float(2**self.act_bits - 1)

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = acc.to(torch.float32) * self.acc_scale
            if self.bn is not None:
                y = self.bn(y)
            q = self.act(y)
            return torch.round(q.value / q.scale).to(acc.dtype)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """BatchNorm as ``y = a * acc + b`` per channel (acc in integer units)."""
        if self.bn is None:
            return torch.tensor([self.acc_scale]), torch.tensor([0.0])
        bn = self.bn
        a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        b = bn.bias.detach() - bn.running_mean * a
        return a * self.acc_scale, b

    def acc_thresholds(self) -> torch.Tensor:
        """Where the quantized activation steps, mapped back through BatchNorm to acc units."""
        if self.bipolar:
            levels = torch.tensor([0.0])
        else:
            steps = torch.arange(2**self.act_bits - 1, dtype=torch.float32)
            levels = (steps + 0.5) * self.out_scale
        a, b = self._affine()
        return (levels[None, :] - b[:, None]) / a[:, None]

    def to_thresholds(self, window: int = 4) -> ThresholdPostOp:
        """The same function of the integer accumulator as FINN-style integer thresholds.

        For each channel and output step the real-valued threshold from the BatchNorm affine is
        only a guess; the integer threshold is then found by evaluating *this* post-op (the
        Brevitas modules) on the integers around the guess. Because that computation is
        monotone in ``acc``, the thresholds reproduce it on every integer accumulator, and
        evaluating them costs a few comparisons instead of the Brevitas module chain.
        """
        guess = self.acc_thresholds().double()  # (C, K), in acc units
        a, _ = self._affine()
        sign = torch.where(a < 0, -1.0, 1.0).double()
        flat = a == 0
        # Work in x = sign * acc, where every channel's output rises with x.
        gx = torch.sort(torch.where(flat[:, None], 0.0, guess * sign[:, None]), dim=1).values
        n_ch, n_k = gx.shape
        offsets = torch.arange(2 * window + 2, dtype=torch.float64)
        conv = isinstance(self.bn, nn.BatchNorm2d)

        def level(acc: torch.Tensor) -> torch.Tensor:
            acc = acc.to(torch.float32)
            out = self(acc[:, :, None, None] if conv else acc).double().reshape(acc.shape)
            return (out + 1.0) / 2.0 if self.bipolar else out

        thresholds = torch.empty(n_ch, n_k, dtype=torch.float64)
        for k in range(n_k):
            base = torch.floor(gx[:, k]) - window
            cand = base[None, :] + offsets[:, None]  # (J, C) in x units
            reached = level(cand * sign[None, :]) >= k + 1
            ok = reached[-1] & ~reached[0]
            if not bool((ok | flat).all()):
                bad = (~(ok | flat)).nonzero().flatten().tolist()
                raise IntNetError(f"threshold search failed for step {k} in channels {bad[:8]}")
            thresholds[:, k] = base + reached.double().argmax(0)
        if bool(flat.any()):  # constant channels: every step taken or none
            const = level(torch.zeros(1, n_ch))[0]
            ks = torch.arange(n_k, dtype=torch.float64)[None, :]
            fixed = torch.where(const[:, None] >= ks + 1, -torch.inf, torch.inf)
            thresholds = torch.where(flat[:, None], fixed, thresholds)
        return ThresholdPostOp(
            thresholds, out_scale=self.out_scale, out_bias=-1.0 if self.bipolar else 0.0,
            out_mult=2.0 if self.bipolar else 1.0, sign=sign, real_thresholds=guess.float(),
        )


def _threshold_count_fused(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = (x >= t[0]).to(x.dtype)
    for k in range(1, t.shape[0]):
        out = out + (x >= t[k]).to(x.dtype)
    return out


_COMPILED: dict[str, object] = {}
# Dynamo compiles and guards one call at a time: the difference evaluator's worker threads
# (mcel_train/difference.py) take turns on the compiled count
_COMPILED_LOCK = threading.Lock()


def _compiled_count():
    """``torch.compile``d threshold count (one fused loop), or ``None`` if compiling fails.

    The default count (:func:`mcel_train.threshold_count.threshold_count`, a numba loop in
    threads) costs about what this one does on its own (0.58-0.61 ms against 0.55 ms for 2M
    accumulators and 3 thresholds, one-off timing), but a whole dense evaluation with it took
    0.77-0.95 s against 0.66-0.71 s (sfc_w2a2, 25 maps, 10k images): this one runs on torch's
    own threads, still spinning after each matmul. It costs a one-off compile of tens of
    seconds (cached by Inductor across processes).
    """
    with _COMPILED_LOCK:
        if "fn" not in _COMPILED:
            _COMPILED["fn"] = _compile_count()
    return _COMPILED["fn"]


def _compile_count():
    """The compiled count, compiled now (``None``, with a warning, if compiling fails)."""
    try:
        # Static shapes: a recompile per distinct shape, but far cheaper calls than
        # symbolic-shape guards. A conv network's sweep sees a few shapes per layer (map
        # groups of two sizes, pooled and unpooled maps): more than dynamo's default of 8,
        # beyond which it would quietly run the slow eager loop.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        fn = torch.compile(_threshold_count_fused, dynamic=False)
        fn(torch.zeros(2, 3), torch.zeros(2, 1, 3))  # compile now, fail here if it fails
    except Exception as err:  # noqa: BLE001 - any compiler failure means "use eager"
        warnings.warn(f"torch.compile unavailable ({err}); using eager thresholds",
                      stacklevel=3)
        return None
    return fn


class ThresholdPostOp(PostOp):
    """FINN MultiThreshold: ``out = out_bias + out_mult * sum_k(sign * acc >= T[c, k])``.

    Bipolar outputs use ``out_mult=2, out_bias=-1``: one threshold, ``{0, 1} -> {-1, +1}``.
    ``sign`` (per channel, default +1) expresses channels whose output falls as ``acc`` rises.
    """

    def __init__(
        self, thresholds: torch.Tensor, out_scale: float = 1.0, out_bias: float = 0.0,
        out_mult: float = 1.0, sign: torch.Tensor | None = None,
        real_thresholds: torch.Tensor | None = None,
    ) -> None:
        self.thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
        n_ch, n_k = self.thresholds.shape
        self.sign = torch.ones(n_ch, dtype=torch.float64) if sign is None else sign.double()
        self.out_scale = float(out_scale)
        self.out_bias = float(out_bias)
        self.out_mult = float(out_mult)
        self.real_thresholds = real_thresholds
        self.compiled = False  # set by the evaluator: fuse the comparisons with torch.compile
        self.max_abs_out = max(abs(self.out_bias), abs(self.out_bias + self.out_mult * n_k))

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        return self._count(self._rising(acc))

    def then_pool(self, acc: torch.Tensor, k: int) -> torch.Tensor:
        """Max-pool first, then threshold: exact, and ``k * k`` times fewer comparisons.

        In ``x = sign * acc`` every channel's output is a non-decreasing step function, and
        ``max`` commutes with a non-decreasing function: ``max f(x_i) = f(max x_i)``.
        """
        return self._count(max_pool(self._rising(acc), k))

    def codes(self, acc: torch.Tensor, pool: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
        """The output levels' counts (``out = out_bias + out_mult * count``) as uint8, after a
        ``pool x pool`` max-pool if given: the codes that :mod:`mcel_train.int8_products`
        multiplies (at most 255 thresholds). ``out``: where to write them."""
        x = self._rising(acc)
        if pool:
            x = max_pool(x, pool)
        if out is None and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):  # the int8 conv's layout: count rows of channels
            n, c, h, w = x.shape
            flat = x.permute(0, 2, 3, 1).reshape(-1, c)
            return threshold_count(flat, self.thresholds, dtype=torch.uint8).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return threshold_count(x, self.thresholds, dtype=torch.uint8, out=out)

    def _rising(self, acc: torch.Tensor) -> torch.Tensor:
        """``sign * acc``: the variable in which every channel's output rises."""
        if not bool((self.sign < 0).any()):
            return acc
        view = (1, -1) + (1,) * (acc.dim() - 2)
        return acc * self.sign.to(acc.dtype).reshape(view)

    def _count(self, x: torch.Tensor) -> torch.Tensor:
        """The output levels of rising-domain accumulators ``x`` (channels on dim 1)."""
        n_ch, n_k = self.thresholds.shape
        kernel = _compiled_count() if self.compiled else None
        if kernel is None:
            count = threshold_count(x, self.thresholds)
        else:
            t = self.thresholds.to(x.dtype).T.reshape(n_k, 1, n_ch, *(1,) * (x.dim() - 2))
            with _COMPILED_LOCK:
                count = kernel(x, t)
        if self.out_mult != 1.0 or self.out_bias != 0.0:
            return count * self.out_mult + self.out_bias
        return count

    def acc_thresholds(self) -> torch.Tensor:
        if self.real_thresholds is not None:
            return self.real_thresholds
        return (self.thresholds * self.sign[:, None]).to(torch.float32)

    def channels(self, index: torch.Tensor) -> ThresholdPostOp:
        # eager: subsets come in ever new shapes, each a recompile for torch.compile
        return ThresholdPostOp(self.thresholds[index], self.out_scale, self.out_bias, self.out_mult,
                               self.sign[index])

    def unchanged_range(self, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = unchanged_range(self._rising(acc), self.thresholds)
        if not bool((self.sign < 0).any()):
            return lo, hi
        flip = (self.sign < 0).reshape((1, -1) + (1,) * (acc.dim() - 2))
        return torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)


class SearchThresholdPostOp(PostOp):
    """FINN's ``Thresholding_rtl``: a binary search over the thresholds, one comparison per stage.

    Stage ``s`` compares the input with the threshold at column ``(j << (O-s)) + 2**(O-s-1) - 1``
    (``j``: the ``s`` result bits so far), ``T <= x`` sets the next bit; columns ``>= N`` are out
    of scope and compare false. With sorted thresholds this is exactly the count
    ``sum_k(x >= T[k])`` of :class:`ThresholdPostOp`; with a faulty, unsorted set it is what the
    hardware computes and the count is not, so threshold-memory faults need this model.
    """

    def __init__(self, thresholds: torch.Tensor, out_bits: int, out_bias: float = 0.0,
                 out_mult: float = 1.0) -> None:
        self.thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
        self.out_bits = int(out_bits)
        self.out_bias, self.out_mult = float(out_bias), float(out_mult)
        self.max_abs_out = max(abs(self.out_bias), abs(self.out_bias + self.out_mult * (2**self.out_bits - 1)))

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        x = acc.movedim(1, -1)  # channels last
        n_ch, n_k = self.thresholds.shape
        t = self.thresholds.to(acc.dtype)
        channel = torch.arange(n_ch).expand(x.shape)
        idx = torch.zeros(x.shape, dtype=torch.int64)
        o = self.out_bits
        for s in range(o):
            col = (idx << (o - s)) + (1 << (o - s - 1)) - 1
            in_scope = col < n_k
            bit = in_scope & (t[channel, col.clamp(max=n_k - 1)] <= x)
            idx = (idx << 1) | bit.to(torch.int64)
        out = idx.to(acc.dtype) * self.out_mult + self.out_bias
        return out.movedim(-1, 1)

    def acc_thresholds(self) -> torch.Tensor:
        return self.thresholds.to(torch.float32)

    def channels(self, index: torch.Tensor) -> SearchThresholdPostOp:
        return SearchThresholdPostOp(self.thresholds[index], self.out_bits, self.out_bias, self.out_mult)

    def unchanged_range(self, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted thresholds: the search is the count, so the count's range. Unsorted (only a
        faulty memory holds those) have none: the evaluator then runs the search itself."""
        t = self.thresholds
        if t.shape[1] > 1 and bool((t[:, 1:] < t[:, :-1]).any()):
            raise NotImplementedError("unsorted thresholds: no unchanged range")
        return unchanged_range(acc, t)


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's shape. ``weight_hwc``: the flattened weight columns are in FINN's im2col
    order ``(kh, kw, ic)`` (a build's memories) instead of torch's ``(ic, kh, kw)``."""

    in_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    weight_hwc: bool = False


@dataclass
class IntLayer:
    """One weight layer: integer ``(out, in)`` weights (conv flattened), scale, post-op."""

    name: str
    weight: np.ndarray
    weight_scale: float
    weight_bits: int
    post: PostOp
    conv: ConvGeometry | None = None
    pool: int = 0
    flatten_before: bool = False
    # the flattened feature map's order in the weight columns: "chw" (torch) or "hwc" (FINN's
    # RemoveCNVtoFCFlatten, a build's first FC layer after convolutions)
    flatten_order: str = "chw"
    # min/max (unsigned) weights: the stored code is weight + zero point (faults flip its bits)
    weight_zero_point: int | None = None

    @property
    def bipolar(self) -> bool:
        return self.weight_bits == 1

    def memory(self, index: int) -> Memory:
        return memory_for_layer(self.name, self.weight.shape, self.weight_bits, index, self.weight_zero_point)

    def accumulate(self, h: torch.Tensor, w: torch.Tensor, shared: bool) -> torch.Tensor:
        """Integer accumulators for ``M`` weight sets ``w`` of shape ``(M, out, in)``.

        Dense: ``h`` is ``(N, in)`` when ``shared`` (same input under every map) else
        ``(M, N, in)``; the result is ``(M, N, out)``. Conv: ``h`` is ``(N, C, H, W)`` when
        ``shared`` else ``(N, M * C, H, W)``, and so is the result, ``(N, M * out, H', W')``:
        images outermost, so that the maps are the groups of one grouped convolution and a
        layer's output is the next one's input without a transposing copy.
        """
        if self.conv is None:
            return torch.matmul(h, w.transpose(1, 2))
        g = self.conv
        m, out = w.shape[0], w.shape[1]
        if g.weight_hwc:
            kw = w.reshape(m * out, *g.kernel, g.in_channels).permute(0, 3, 1, 2)
        else:
            kw = w.reshape(m * out, g.in_channels, *g.kernel)
        return F.conv2d(h, kw, stride=g.stride, padding=g.padding, groups=1 if shared else m)


INPUT_POST = -1  # the input quantizer's key in per-map post-op dicts (its threshold faults)


@dataclass
class IntNetwork:
    """A chain of :class:`IntLayer`; inputs are the integer images of ``encode_inputs``.

    ``input_post``: an input quantizer, if the network has one (a Brevitas ``QuantIdentity``
    before the first layer, which FINN lowers to a thresholding unit on the raw pixels).
    :meth:`forward` takes its codes: callers turn images into them with :meth:`encode_input`.
    """

    layers: list[IntLayer]
    input_shape: tuple[int, ...]
    input_kind: str
    meta: dict = field(default_factory=dict)
    input_post: PostOp | None = None

    def encode_input(self, x: torch.Tensor, post: PostOp | None = None) -> torch.Tensor:
        """``x`` through the input quantizer (``post`` instead, e.g. a faulty one), same shape
        and dtype; ``x`` itself when the network has none."""
        post = post or self.input_post
        if post is None:
            return x
        shaped = x.reshape(len(x), *self.input_shape) if x.dim() == 2 else x  # channels on dim 1
        return post(shaped.to(torch.float64)).reshape(x.shape).to(x.dtype)

    def memories(self) -> list[Memory]:
        """Natural-layout memories, one per layer, named like the layers (``layer0``, ...)."""
        return [layer.memory(i) for i, layer in enumerate(self.layers)]

    def contents(self) -> dict[str, np.ndarray]:
        return {layer.name: layer.weight for layer in self.layers}

    @property
    def logit_scale(self) -> float:
        return self.layers[-1].post.out_scale

    def prepare(
        self, weights: Sequence[torch.Tensor | np.ndarray | None] | None, max_abs_input: float,
        skip: Collection[int] = (), dtypes: Sequence[torch.dtype] | None = None,
    ) -> list[torch.Tensor]:
        """Per layer ``(M, out, in)`` float weights in the dtype that keeps it exact
        (:meth:`exact_dtypes`).

        ``weights[i]`` is ``(M, out, in)`` integers or ``None`` (clean, broadcast over maps).
        Layers in ``skip`` (their products run elsewhere: :mod:`mcel_train.int8_products`) get
        a storage-free placeholder of that shape and dtype instead of a float copy (the paper
        VGG3's 3136 -> 2048 layer is 400 MB in float32 for 16 maps). ``dtypes``: those of
        :meth:`exact_dtypes` for these weights, if the caller has them already.
        """
        weights = list(weights) if weights is not None else [None] * len(self.layers)
        dtypes = self.exact_dtypes(weights, max_abs_input) if dtypes is None else dtypes
        m = max((w.shape[0] for w in weights if w is not None), default=1)
        out = []
        for i, (layer, w, dt) in enumerate(zip(self.layers, weights, dtypes, strict=True)):
            w = torch.as_tensor(layer.weight if w is None else w)
            if w.dim() == 2:
                w = w.unsqueeze(0)
            w = torch.empty((1, 1, 1), dtype=dt).expand(*w.shape) if i in skip else w.to(dt)
            out.append(w.expand(m, *w.shape[1:]) if w.shape[0] != m else w)
        return out

    def exact_dtypes(self, weights: Sequence[torch.Tensor | np.ndarray | None] | None,
                     max_abs_input: float) -> list[torch.dtype]:
        """Per layer the float type in which its products are exact for these ``weights`` (as
        :meth:`prepare` takes them), from a bound on the partial sums, ``max|input| *
        max_row sum|w|``: float32 below 2^24, float64 below 2^53, an error above. The
        cheaper bound ``max|input| * in * max|w|`` is tried first."""
        weights = list(weights) if weights is not None else [None] * len(self.layers)
        if len(weights) != len(self.layers):
            raise ValueError(f"need {len(self.layers)} weight tensors, got {len(weights)}")
        in_max = float(max_abs_input)
        out = []
        for layer, w in zip(self.layers, weights, strict=True):
            w = torch.as_tensor(layer.weight if w is None else w)
            lo, hi = (float(v) for v in torch.aminmax(w))
            bound = in_max * w.shape[-1] * max(-lo, hi)
            if bound >= FLOAT32_EXACT:  # the rows' own sums (int64: abs(-128) wraps in int8)
                bound = in_max * float(w.to(torch.int64).abs().sum(-1).max())
            if bound >= FLOAT64_EXACT:
                raise IntNetError(f"{layer.name}: accumulator bound {bound:g} exceeds 2^53")
            out.append(torch.float32 if bound < FLOAT32_EXACT else torch.float64)
            in_max = layer.post.max_abs_out
        return out

    def forward(
        self, x: torch.Tensor, weights: Sequence[torch.Tensor | np.ndarray | None] | None = None,
        max_abs_input: float | None = None, first_acc: torch.Tensor | None = None,
        prepared: list[torch.Tensor] | None = None, collect: list | None = None,
        first_acc_channels_first: bool = False, first_out: torch.Tensor | None = None,
        int8: Mapping[int, Callable[..., torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Integer logits ``(M, N, classes)`` for ``M`` weight sets (``None``: clean weights).

        ``weights`` as in :meth:`prepare` (or its result passed as ``prepared``, to reuse it
        across image batches). ``first_acc`` optionally supplies layer 0's accumulators
        ``(M, N, out, ...)``, computed by the caller some cheaper way (the evaluator adds
        sparse fault deltas to clean ones), as ``(M, out, N)`` if ``first_acc_channels_first``
        (a dense-layer-only layout that saves a transposing copy). ``first_out`` instead
        supplies a conv layer 0's output (post-op and pool applied), ``(N, M * C, H, W)`` or,
        shared by all maps, ``(N, C, H, W)``; layer 0 is then skipped. ``collect``, if given,
        receives every layer's accumulators (margin diagnostics). ``int8``: per layer index,
        its product on uint8 codes for these weights
        (:func:`mcel_train.int8_products.pack_layers`), called as ``product(codes)`` for the
        accumulators or ``product(codes, post)`` for the next layer's codes; the layer before
        then hands on its threshold counts as codes instead of levels.
        """
        int8 = (int8 or {}) if collect is None else {}  # collect wants every accumulator block
        if prepared is None:
            in_max = float(x.abs().max()) if max_abs_input is None else float(max_abs_input)
            prepared = self.prepare(weights, in_max)
        if self.layers[0].conv is not None and x.dim() == 2:  # flat images (MLP-style callers)
            x = x.reshape(x.shape[0], *self.input_shape)
        if all(layer.conv is None and not layer.pool for layer in self.layers):
            if first_acc is not None and not first_acc_channels_first:
                first_acc = first_acc.transpose(1, 2)
            return self._forward_dense(x, prepared, first_acc, collect, int8)
        if first_acc is not None and first_acc_channels_first:
            raise ValueError("channels-first layer-0 accumulators need an all-dense network")
        if first_out is not None and (self.layers[0].conv is None or collect is not None):
            raise ValueError("layer-0 outputs are taken for a conv layer 0, without collect")
        return self._forward_general(x, prepared, first_acc, collect, first_out, int8)

    def _forward_general(
        self, x: torch.Tensor, prepared: list[torch.Tensor], first_acc: torch.Tensor | None,
        collect: list | None, first_out: torch.Tensor | None = None,
        int8: Mapping[int, Callable[..., torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Any chain of conv and dense layers (see :meth:`IntLayer.accumulate` for layouts).

        Conv activations stay images-major, ``(N, M * C, H, W)``, which views as
        ``(N * M, C, H, W)`` for the per-channel post-ops at no cost; they turn maps-major,
        ``(M, N, features)``, at the flatten before the first dense layer.
        """
        m, n = prepared[0].shape[0], x.shape[0]
        h = x
        shared = True
        start = 0
        if first_out is not None:
            h, start = first_out, 1
            shared = first_out.shape[1] == prepared[0].shape[1]
        int8 = int8 or {}
        for i, (layer, w) in enumerate(zip(self.layers, prepared, strict=True)):
            if i < start:
                continue
            codes_next = i + 1 in int8  # this layer hands on uint8 codes, not levels
            if layer.flatten_before:
                groups = 1 if shared else m
                if layer.flatten_order == "hwc":  # (N, G*C, H, W) -> (N, G, H, W, C): NHWC per map
                    h = h.reshape(n, groups, -1, *h.shape[2:]).permute(0, 1, 3, 4, 2)
                h = h.reshape(n, groups, -1).transpose(0, 1) if not shared else h.reshape(n, -1)
            if first_acc is not None and layer is self.layers[0]:
                acc = first_acc.to(w.dtype)
                if layer.conv is not None:  # given maps-major (M, N, out, H, W)
                    acc = acc.transpose(0, 1).reshape(n, -1, *acc.shape[3:])
            elif i in int8:
                if codes_next:  # the next layer's codes, counted map by map
                    h, shared = int8[i](h, layer.post), False
                    continue
                acc = int8[i](h)
            else:
                acc = layer.accumulate(h.to(w.dtype), w, shared)
            out_ch = w.shape[1]
            if layer.conv is not None:
                per_channel = acc.reshape(n * m, out_ch, *acc.shape[2:])
                if collect is not None:
                    collect.append(per_channel.reshape(n, m, *per_channel.shape[1:]).transpose(0, 1))
                if codes_next:
                    out = layer.post.codes(per_channel, layer.pool)
                elif layer.pool:
                    out = layer.post.then_pool(per_channel, layer.pool)
                else:
                    out = layer.post(per_channel)
                h = out.reshape(n, m * out_ch, *out.shape[2:])
            else:
                if collect is not None:
                    collect.append(acc)
                flat = acc.reshape(m * n, out_ch)
                h = (layer.post.codes(flat) if codes_next else layer.post(flat)).reshape(m, n, out_ch)
            shared = False
        return h

    def _forward_dense(
        self, x: torch.Tensor, prepared: list[torch.Tensor], first_acc: torch.Tensor | None,
        collect: list | None, int8: Mapping[int, Callable[..., torch.Tensor]],
    ) -> torch.Tensor:
        """All-dense networks, computed channels first: ``acc (M, out, N) = W @ h^T``.

        Same arithmetic as the generic path; the layout puts images on the contiguous axis,
        which makes the per-channel threshold comparisons several times faster. A layer in
        ``int8`` takes its input as ``(M, N, in)`` uint8 codes and gives ``(M, N, out)``
        accumulators (the kernel's layout); the levels after it are turned back channels first.
        """
        h_t = x.T  # (in, N), shared by all maps
        # (M, N, in) uint8 when the layer before handed on codes; the images' own (N, in) codes
        # when the first layer is in int8
        codes = int8[0].codes.of(x) if 0 in int8 else None
        for i, (layer, w) in enumerate(zip(self.layers, prepared, strict=True)):
            if codes is not None and i + 1 in int8:  # the next layer's codes, counted map by map
                codes = int8[i](codes, layer.post)
                continue
            if codes is not None:
                acc = int8[i](codes).transpose(1, 2)  # (M, out, N), a view
            elif i == 0 and first_acc is not None:
                acc = first_acc.to(w.dtype)
            else:
                acc = torch.matmul(w, h_t.to(w.dtype))  # (M, out, N)
            if collect is not None:
                collect.append(acc.transpose(1, 2))
            if i + 1 in int8:
                codes = layer.post.codes(acc).transpose(1, 2).contiguous()
            else:
                h_t, codes = layer.post(acc.contiguous() if codes is not None else acc), None
        return h_t.transpose(1, 2)


def layer_memories(net: IntNetwork, memories: Sequence[Memory] | None) -> list[Memory | None]:
    """The memory holding each layer's weights (matched by ``layer_index``), shape-checked."""
    memories = net.memories() if memories is None else list(memories)
    out: list[Memory | None] = [None] * len(net.layers)
    for mem in memories:
        if mem.kind != "weights":
            raise ValueError(f"memory {mem.name!r}: only weight memories map onto this network")
        i = mem.layer_index
        if not 0 <= i < len(net.layers):
            raise ValueError(f"memory {mem.name!r}: layer_index {i} outside the network")
        shape = net.layers[i].weight.shape
        if (mem.rows, mem.cols) != tuple(shape):
            raise ValueError(
                f"memory {mem.name!r} is {mem.rows}x{mem.cols}, layer {i} weights are {shape}"
            )
        if out[i] is not None:
            raise ValueError(f"two memories for layer {i}")
        layer = net.layers[i]
        finn_order = (layer.conv.weight_hwc if layer.conv is not None
                      else layer.flatten_order == "hwc" if layer.flatten_before else True)
        if mem.layout == "finn_mvau" and not finn_order:
            # FINN orders these columns (kh, kw, channel) / NHWC, not PyTorch's; mapping them
            # onto a network in PyTorch's order would silently hit the wrong weights.
            raise ValueError(
                f"memory {mem.name!r}: a FINN memory of a conv or post-flatten layer needs the build's "
                "own integer network (its columns are in FINN's order), not one made from the torch model"
            )
        out[i] = mem
    return out


def _weight_ints(layer: nn.Module, name: str) -> tuple[np.ndarray, float, int, int | None]:
    """Integer weights ``(value / scale)``, scale, bit width and zero point (None: signed)."""
    qw = layer.quant_weight()
    scale = qw.scale.detach()
    if scale.numel() != 1:
        raise IntNetError(f"{name}: only per-tensor weight scales are supported")
    ratio = (qw.value.detach() / scale).double()
    ints = torch.round(ratio)
    err = float((ratio - ints).abs().max()) if ratio.numel() else 0.0
    if err > 1e-3:
        raise IntNetError(f"{name}: weight / scale is not integer (max error {err:g})")
    bits = int(round(float(qw.bit_width)))
    w = ints.to(torch.int64).reshape(ints.shape[0], -1).numpy()
    return w, float(scale), bits, weight_zero_point(qw)


def from_brevitas(model: nn.Module, thresholds: bool = True) -> IntNetwork:
    """Extract the integer network of a zoo model (put into eval mode here).

    With ``thresholds`` (default) each hidden post-op is converted to exact integer thresholds
    (:meth:`BrevitasPostOp.to_thresholds`), which is much faster to evaluate; without, the
    Brevitas BatchNorm and activation modules are called directly.

    The walk follows the zoo's convention: every quant layer is followed by an optional
    BatchNorm, an activation and an optional MaxPool; a layer without activation is the last.
    """
    model.eval()
    leaves = [
        mod for mod in model.modules()
        if isinstance(mod, (QuantLinear, QuantConv2d, nn.BatchNorm1d, nn.BatchNorm2d, QuantReLU,
                            QuantIdentity, nn.MaxPool2d))
    ]
    groups: list[list[nn.Module]] = []
    for mod in leaves:
        if isinstance(mod, (QuantLinear, QuantConv2d)):
            groups.append([mod])
        elif not groups:
            raise IntNetError(f"{type(mod).__name__} before the first quant layer")
        else:
            groups[-1].append(mod)
    layers: list[IntLayer] = []
    in_scale = 1.0
    was_conv = False
    for i, group in enumerate(groups):
        q = group[0]
        name = f"layer{i}"
        w, w_scale, bits, zero_point = _weight_ints(q, name)
        bn = next((g for g in group if isinstance(g, (nn.BatchNorm1d, nn.BatchNorm2d))), None)
        act = next((g for g in group if isinstance(g, (QuantReLU, QuantIdentity))), None)
        pool = next((g for g in group if isinstance(g, nn.MaxPool2d)), None)
        acc_scale = in_scale * w_scale
        if act is None:
            if i != len(groups) - 1:
                raise IntNetError(f"{name}: only the last layer may lack an activation")
            post: PostOp = IdentityPostOp(acc_scale)
        else:
            post = BrevitasPostOp(acc_scale, bn, act)
            if thresholds:
                post = post.to_thresholds()
        conv = None
        if isinstance(q, QuantConv2d):
            if q.groups != 1 or tuple(q.dilation) != (1, 1):
                raise IntNetError(f"{name}: grouped or dilated convs are not supported")
            conv = ConvGeometry(q.in_channels, tuple(q.kernel_size), tuple(q.stride),
                                tuple(q.padding))
        pool_k = 0
        if pool is not None:
            k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
            if pool.stride not in (None, k, (k, k)) or pool.padding not in (0, (0, 0)):
                raise IntNetError(f"{name}: only non-overlapping max pooling is supported")
            pool_k = int(k)
        layers.append(IntLayer(name, w, w_scale, bits, post, conv, pool_k,
                               flatten_before=was_conv and conv is None, weight_zero_point=zero_point))
        was_conv = conv is not None
        in_scale = post.out_scale
    spec = getattr(model, "spec", None)
    input_shape = tuple(getattr(model, "input_shape", ()))
    input_kind = spec.input_kind if spec is not None else "uint8"
    return IntNetwork(layers, input_shape, input_kind,
                      {"spec": spec.to_dict() if spec is not None else None})
