"""Difference (concurrent) fault simulation of an integer network: the clean network once, then
per fault map only what differs from it.

At low bit error rates almost every image's result under a fault map equals the clean one, yet a
dense evaluation costs the same at every rate. Digital fault simulators have long simulated the
good machine once and, per fault, only the difference. For a quantized network layer ``l``:

- the accumulator change is ``dW @ x + W_faulty @ dx``: ``dW`` holds only the flipped weights
  (every image, but only the output channels ``J`` they sit in), ``dx`` only the inputs that
  changed in the layer before (only the images ``A`` where something changed);
- an output changes only where the new accumulator leaves the clean one's *unchanged range*
  (:meth:`mcel_train.intnet.PostOp.unchanged_range`: the distance to the nearest thresholds),
  two comparisons per accumulator instead of the post-op;
- an image whose difference becomes empty is finished: its outputs are the clean ones;
- threshold-memory faults give a layer a faulty post-op: its channels join ``J``, and the rows
  that change are re-run through the faulty post-op itself; a conv layer takes them in its
  compiled step, a channel with other thresholds pooled at every position like a flipped one
  and each window tested against the faulty thresholds' range of its clean level.

Convolutions: a flipped weight touches one output channel at every position (its input plane,
shifted, times the weight change), a changed input pixel the ``kh x kw`` neighbourhood it
reaches in every output channel (its slice of the faulty kernel); only the planes so changed
are pooled again, and only a pool window whose maximum leaves its clean level's threshold
range is counted again. All arithmetic is on exact integers in float32 (float64 when a layer's
accumulators could reach 2^24), so results are identical to :meth:`IntNetwork.forward`.

Cost follows the faults: dense and conv layers step through compiled per-image loops for a
group of maps at once (:mod:`mcel_train.difference_kernel`; each image's clean state is read
once for all the group's maps, and consecutive dense layers pass the group's differences on
without re-sorting them, consecutive conv layers as entries, :class:`_ConvChange`; a dense
layer's ``dW @ x`` is made for blocks of :data:`FLIP_BLOCK` images at once); a dense first
layer, whose input is clean, computes ``dW @ x`` map by map over blocks of images instead.
Once a layer's changes are dense the remaining layers run as one plain forward pass.
:class:`mcel_train.evaluate.MapEvaluator`'s ``auto`` choice compares
:meth:`DifferenceEvaluator.estimate_seconds` with the dense path's time per rate.
The clean state (each layer's input, accumulators and, where a step reads them, unchanged
ranges) is computed once per image batch and kept while it fits ``budget_bytes``; accumulators
are stored as int32 (a conv layer's as int16 where they fit).

The compiled steps run on one core each, while the dense path's matrix products use all of
torch's threads; so the images are cut into one batch per torch thread (when each gets at least
:data:`PARALLEL_MIN_IMAGES`) and the batches run side by side in threads (the kernels release
the GIL).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mcel_train import int8_products
from mcel_train.difference_kernel import (
    clean_input_layer_maps,
    conv_layer_maps,
    dense_layer_maps,
    logit_layer_maps,
    stable_groups,
)
from mcel_train.faults.apply import element_deltas
from mcel_train.faults.faultmap import FaultMap
from mcel_train.intnet import FLOAT32_EXACT, IntLayer, IntNetwork, PostOp, ThresholdPostOp, layer_memories
from mcel_train.memory import Memory

# A sparse product costs about this many dense multiply-adds per non-zero (BLAS is that much
# faster per operation), so a block denser than 1 / SPARSE_FACTOR goes dense.
SPARSE_FACTOR = 16
# The compiled dense step multiplies changed inputs row by row (vectorized over the outputs); a
# BLAS product is faster once about this fraction of the inputs changed.
BLAS_FRACTION = 0.2
# Once more than this fraction of a layer's outputs (over the batch's images) changed, the
# remaining layers run as a plain dense forward pass on the batch. Measured with the compiled
# steps (20 maps of sfc_w2a2 on 10k images, 8 of the paper VGG3 on 2000, CPU seconds of the
# difference path at 0.05 / 0.1 / 0.2 / never): sfc_w2a2 at 1e-3 (6.5 % changed after the
# first layer) 1.48 / 0.84 / 0.86 / 0.92, at 2e-2 (26 %) 5.2 / 4.3 / 4.1 / 7.5; VGG3 at 1e-4
# 1.22 / 1.21 / 1.11 s, at 1e-3 6.6 / 6.5 / 7.1 s.
SWITCH_FRACTION = 0.2
# Maps stepped through the dense layers together: each image's clean rows are read from memory
# once for all of them (see mcel_train.difference_kernel).
MAP_GROUP = 16
# Bytes up to which the compiled dense step gets each map's faulty weights as its own copy (one
# pass of W_faulty @ dx) instead of the clean weights plus each changed input's flipped weights
# looked up apart (sfc_w2a2's 256 x 256 layers: 17 copies, 1.1 MB)
FAULTY_ROWS_BYTES = 8 << 20
# Accumulator changes below this bound are summed in int16 by the compiled dense step: twice as
# many lanes per vector as float32 and no conversions (its rows and comparisons 2.7x faster in
# a one-off timing on 256-wide rows). Integer sums wrap around, so a partial sum may leave the
# range: only the change itself, a faulty minus a clean accumulator, must fit.
INT16_CHANGE_BOUND = 2**15
# Images per block for which the compiled dense step makes every map's dW @ x at once (see
# difference_kernel.dense_layer_maps). 16 maps, best of 3 interleaved calls, one thread, AMD
# EPYC, seconds for 32 / 64 / 128 (each pair's own flipped weights one by one, as before:
# in brackets): sfc_w2a2 (10k images) at 1e-3 0.266 / 0.253 / 0.256 (0.283), at 2e-2 0.80 /
# 0.81 / 0.78 (0.86), at 1e-4 0.10-0.11 either way; the paper VGG3 (2000 images) at 1e-3
# 2.78 (3.41) with 64
FLIP_BLOCK = 64
# Images per block of the first layer's compiled step: the block's entries are sorted while they
# are in cache (sfc_w2a2 at 1e-3: 16 maps x about 200 flipped outputs x 8 % of the images)
CLEAN_INPUT_BLOCK = 256
# Images per thread below which the difference path keeps to one thread: each batch pays every
# layer step's bookkeeping once per map group
PARALLEL_MIN_IMAGES = 512
# Images per step when a conv layer's clean levels are counted (DifferenceEvaluator._levels)
LEVELS_CHUNK = 256
# The clean state's smallest default budget (see default_budget_bytes)
CLEAN_BUDGET_MIN_BYTES = 3e9
# auto's estimate runs this many maps as a group: most of a group's saving, at a quarter of
# the estimate's cost
ESTIMATE_MAPS = 4
# Seconds below which the estimate's first timing of its larger slice only warms up, and both
# slices are then timed twice more, alternating, the faster kept. On sfc_w2a2 (10k images, two
# threads) that slice took 8-30 ms and varied by up to 45 % from call to call, and a slice's
# first runs were the slowest: timed as they came (small, small, large), the estimate was
# 2.13 / 2.22 / 1.82x the real time at 1e-4 / 3e-4 / 1e-3 (medians of 9 map sets each, AMD
# EPYC), and in 1 of 3 runs of bench/auto_choice.py `auto` kept the dense path at 1e-4, where
# the difference path was 1.5x faster; warmed up and alternating, 1.03 / 0.88 / 0.87x at the
# same cost. On the paper VGG3 (2000 images) the slice took 0.52-0.59 s on the earlier machine
# (the whole estimate 0.14-0.35 s on this one), a second timing differed by 1-11 %, repeating
# it doubled the estimate's cost, and warming it up changed nothing (estimate / real 1.36 at
# 1e-4 either way)
ESTIMATE_REPEAT_BELOW = 0.05


@dataclass
class LayerDelta:
    """The weight change of one layer under one map: entries ``W[row, col] += value``."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor


@dataclass
class MapDifference:
    """One map's result: the images whose logits differ from the clean ones, and their logits."""

    rows: np.ndarray  # global image indices, ascending
    logits: np.ndarray  # (len(rows), classes) integer logits


@dataclass
class _CleanLayer:
    """One layer's clean state for an image batch (dense: channels first; conv: NCHW)."""

    h: torch.Tensor  # input: dense (in, N), channels first for the dW rows / conv (N, C, H + 2p, W + 2p)
    acc: torch.Tensor  # int32 (int16 where it fits a conv layer's): dense (N, out) / conv (N, out, H', W')
    # the unchanged range of every accumulator (empty, zeros, for the logit layer); None for a
    # conv layer that the compiled step takes (:func:`_compiled_conv_layer`), which tests pool
    # windows against their clean level's threshold range instead
    lo: torch.Tensor | None
    hi: torch.Tensor | None
    out: torch.Tensor  # post-op (and pool) output: dense (N, out) / conv (N, out, H'', W'')
    rows: torch.Tensor | None = None  # the logit layer: the input again as (N, in), for its compiled step's dW @ x
    levels: torch.Tensor | None = None  # conv: the outputs' threshold counts, when first asked
    # the first layer, when dense: lo, hi, acc and out again as (out, N) rows, for the compiled
    # step of a clean input (difference_kernel.clean_input_layer_maps)
    by_output: tuple[np.ndarray, ...] | None = None
    # a dense layer whose accumulator changes fit int16 (see INT16_CHANGE_BOUND): its input by
    # feature ``(in, N)`` and unchanged ranges (rounded inwards to integers, clipped) as int16,
    # for the compiled step's int16 form
    narrow: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def head(self, m: int, conv: bool) -> _CleanLayer:
        """The state of the first ``m`` images (contiguous: the compiled steps need rows)."""
        by_output = None if self.by_output is None else tuple(np.ascontiguousarray(a[:, :m])
                                                                for a in self.by_output)
        return _CleanLayer(self.h[:m] if conv else self.h[:, :m].contiguous(), self.acc[:m],
                           None if self.lo is None else self.lo[:m], None if self.hi is None else self.hi[:m],
                           self.out[:m], None if self.rows is None else self.rows[:m],
                           levels=None if self.levels is None else self.levels[:m],
                           by_output=by_output, narrow=None if self.narrow is None else (
                               np.ascontiguousarray(self.narrow[0][:, :m]), *(a[:m] for a in self.narrow[1:])))


@dataclass
class _Joint:
    """The differences of a group of ``g`` maps at one dense layer's output, side by side:
    entries ``(key, col, val)`` with ``key = image * g + map``, keys ascending (images, then
    maps), each key's columns ascending. The fused step reads and writes this order, so
    consecutive dense layers pass it on without sorting."""

    g: int
    key: np.ndarray
    col: np.ndarray
    val: np.ndarray  # float32
    # the entries grouped by key (distinct keys, CSR pointer) and per map their number, when the
    # compiled step has them already (None: found from ``key`` when asked)
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    per_map: np.ndarray | None = None

    @classmethod
    def empty(cls, g: int) -> _Joint:
        return cls(g, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def counts(self) -> np.ndarray:
        """Per map its number of changed entries."""
        if self.per_map is None:
            self.per_map = np.bincount(self.key % self.g, minlength=self.g)
        return self.per_map

    def pair_index(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct keys (ascending) and the CSR pointer of their entries."""
        if self.pairs is None:
            starts = np.flatnonzero(np.diff(self.key, prepend=-1))
            self.pairs = self.key[starts], np.append(starts, len(self.key)).astype(np.int64)
        return self.pairs

    def images(self) -> int:
        """(image, map) pairs with a change."""
        return len(self.pair_index()[0])

    def keep(self, maps: set[int]) -> _Joint:
        if len(maps) == self.g or not len(self.key):
            return self
        sel = np.isin(self.key % self.g, list(maps))
        return _Joint(self.g, self.key[sel], self.col[sel], self.val[sel])

    def merged(self, per_map: dict[int, tuple]) -> _Joint:
        """These entries plus maps in their own form ``(active, (row in active, col, val))``."""
        parts = [(self.key, self.col, self.val)]
        for m, (active, dx) in per_map.items():
            if len(active):
                r, c, v = dx
                parts.append((active.numpy()[r.numpy()] * self.g + m, c.numpy().astype(np.int64),
                              v.numpy().astype(np.float32)))
        if len(parts) == 1:
            return self
        key, col, val = (np.concatenate(a) for a in zip(*parts, strict=True))
        # each part is sorted by key, then column, and a key comes from one part: a stable
        # counting sort by key keeps the columns in order (millions of entries after a conv)
        order = stable_groups(key, int(key.max()) + 1)[0] if len(key) else np.zeros(0, np.int64)
        return _Joint(self.g, key[order], col[order], val[order])

    def take(self, maps: list[int]) -> dict[int, tuple[torch.Tensor, object]]:
        """The maps ``maps`` in their own form: active images and ``(row in active, col, val)``."""
        if not maps:
            return {}
        image, of_map = np.divmod(self.key, self.g)
        per_map = _by_map(of_map, self.g)
        return {m: _own_form(image[per_map[m]], self.col[per_map[m]], self.val[per_map[m]]) for m in maps}

    def split_rows(self, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every map's changed images and their full rows of changes (``width`` columns): one
        ``(pairs, width)`` scatter, then each map's pairs (the logit layer is narrow)."""
        pair_key, ptr = self.pair_index()
        full = np.zeros((len(pair_key), width), np.float32)
        full[np.repeat(np.arange(len(pair_key)), np.diff(ptr)), self.col] = self.val
        image, of_map = np.divmod(pair_key, self.g)
        return [(torch.from_numpy(image[sel]), torch.from_numpy(full[sel])) for sel in _by_map(of_map, self.g)]


def _by_map(of_map: np.ndarray, g: int) -> list[np.ndarray]:
    """Per map of ``g`` the indices of its entries (``of_map``: each entry's map), in their
    order (a counting sort: millions of entries on a conv layer)."""
    order, bounds = stable_groups(np.ascontiguousarray(of_map, dtype=np.int64), g)
    return [order[bounds[m]:bounds[m + 1]] for m in range(g)]


def _active_rows(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries' images, ascending -> the distinct (active) images and each entry's row among
    them."""
    starts = np.diff(images, prepend=-1) != 0
    return images[starts], np.cumsum(starts) - 1


def _own_form(rows: np.ndarray, col: np.ndarray, val: np.ndarray) -> tuple[torch.Tensor, object]:
    """Entries of one map, images ascending -> its active images and ``(row in active, col, val)``."""
    active, r_new = _active_rows(rows)
    if not len(rows):
        return torch.from_numpy(active), None
    return torch.from_numpy(active), (torch.from_numpy(r_new), torch.from_numpy(col), torch.from_numpy(val))


@dataclass
class _ConvChange:
    """One map's changed outputs of a conv layer as entries, as the compiled conv step finds
    them: the next conv step and the flatten into a dense layer read them as they are; only
    a tensor step or a dense pass asks for the ``(|active|, C, H, W)`` block."""

    shape: tuple[int, int, int]  # (C, H, W) of one image's output
    rows: np.ndarray  # each entry's row in the map's active images, ascending
    pos: np.ndarray  # (channel * H + y) * W + x, ascending within a row
    val: np.ndarray  # float32 change

    def dense(self, n_rows: int) -> torch.Tensor:
        block = torch.zeros(n_rows, int(np.prod(self.shape)))
        block[torch.from_numpy(self.rows), torch.from_numpy(self.pos)] = torch.from_numpy(self.val)
        return block.reshape(n_rows, *self.shape)

    def triplets(self, order: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, feature, value) in a dense layer's column order (:func:`_flatten`), sorted by
        row then feature."""
        col = self.pos
        if order == "hwc":
            c_n, hw = self.shape[0], self.shape[1] * self.shape[2]
            col = (self.pos % hw) * c_n + self.pos // hw
            at = np.lexsort((col, self.rows))
            return (torch.from_numpy(self.rows[at]), torch.from_numpy(col[at]),
                    torch.from_numpy(self.val[at]))
        return torch.from_numpy(self.rows), torch.from_numpy(col), torch.from_numpy(self.val)


def _dense_change(dx, n_rows: int):
    """A conv layer's change of ``n_rows`` active images as the ``(n_rows, C, H, W)`` block
    (other forms stay as they are)."""
    return dx.dense(n_rows) if isinstance(dx, _ConvChange) else dx


def supports(net: IntNetwork) -> bool:
    """Whether every post-op has the per-channel form and unchanged range this evaluator needs."""
    probe = torch.zeros(1, 1)
    for layer in net.layers:
        try:
            layer.post.channels(torch.zeros(1, dtype=torch.int64))
            if layer is not net.layers[-1]:
                n = layer.weight.shape[0]
                layer.post.unchanged_range(probe.expand(1, n).contiguous())
        except NotImplementedError:
            return False
    return True


def _faulty_weight_range(layer: IntLayer) -> tuple[int, int]:
    """The smallest and largest weight any fault can give the layer: every code its bits can
    hold (minus the zero point, for unsigned codes)."""
    if layer.weight_zero_point is not None:
        return -layer.weight_zero_point, 2**layer.weight_bits - 1 - layer.weight_zero_point
    if layer.weight_bits == 1:
        return -1, 1
    return -(2 ** (layer.weight_bits - 1)), 2 ** (layer.weight_bits - 1) - 1


def _weight_bound(layer: IntLayer) -> float:
    """Largest magnitude any fault can give one of the layer's weights."""
    lo, hi = _faulty_weight_range(layer)
    return float(max(-lo, hi))


def default_budget_bytes() -> float:
    """The clean state's default memory budget: a quarter of the machine's physical memory, at
    least CLEAN_BUDGET_MIN_BYTES. A state that does not fit is computed again in every call, in
    smaller batches: on the paper VGG3 with 10k test images a call of 16 maps at 1e-4 took
    10-12 s recomputing its state in the former fixed 3 GB, 4.9-6.1 s with the state kept."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no such sysconf names on this platform
        physical = 0
    return max(CLEAN_BUDGET_MIN_BYTES, physical / 4)


class DifferenceEvaluator:
    """Per-map difference evaluation of ``net`` on the images ``x`` (see the module docstring).

    ``memories``: the weight memories faults are named in (default the natural layout);
    ``batch``: images per clean-state batch (default: the images split evenly among the
    threads, or what fits ``budget_bytes``, by default :func:`default_budget_bytes`);
    ``switch_fraction``: changed outputs beyond which the remaining layers run densely;
    ``workers``: threads the batches run in (default: torch's thread count when built; a call
    uses at most torch's thread count at the time); ``int8``: the dense finish multiplies on
    oneDNN's int8 kernels where that is exact (as :class:`mcel_train.evaluate.MapEvaluator`'s
    dense path does).
    """

    def __init__(
        self, net: IntNetwork, x: torch.Tensor, memories: Sequence[Memory] | None = None,
        batch: int | None = None, budget_bytes: float | None = None, switch_fraction: float = SWITCH_FRACTION,
        workers: int | None = None, int8: bool = True,
    ) -> None:
        if not supports(net):
            raise ValueError("this network's post-ops have no unchanged range (use thresholds)")
        budget_bytes = default_budget_bytes() if budget_bytes is None else budget_bytes
        self.net = net
        # the dense finish's products on the int8 kernels where exact (mcel_train.int8_products)
        self.int8 = int8 and int8_products.available()
        self.switch_fraction = switch_fraction  # see SWITCH_FRACTION (inf: never switch)
        self._estimating = False  # estimate_seconds runs: eager post-ops (see _finish_dense)
        self.x = x.to(torch.float32)
        if net.layers[0].conv is not None and self.x.dim() == 2:
            self.x = self.x.reshape(len(self.x), *net.input_shape)
        self.memories = layer_memories(net, memories)
        self.n = len(self.x)
        bounds, self.in_max = self._acc_bounds()
        # per layer the float dtype exact for any faulty accumulator (float32 below 2^24)
        self.dtypes = [torch.float32 if 2 * b < FLOAT32_EXACT else torch.float64 for b in bounds]
        # per dense layer whether every accumulator change fits int16 (else each call checks
        # its own changes: _int16_fits)
        self.int16_changes = [layer.conv is None and 2 * b < INT16_CHANGE_BOUND
                              for layer, b in zip(net.layers, bounds, strict=True)]
        self.acc_dtypes = [_acc_dtype(layer, b) for layer, b in zip(net.layers, bounds, strict=True)]
        self.weights = [torch.as_tensor(layer.weight).to(dt) for layer, dt in zip(net.layers, self.dtypes, strict=True)]
        self.weights_t = [w.T.contiguous() for w in self.weights]  # (in, out): rows by input
        # the same in the narrowest integer type, for the compiled dense step (see there)
        self.weights_t_compact = [_compact(w) for w in self.weights_t]
        one_image = self._clean_pass(self.x[:1])
        # per layer its accumulators per image (a conv layer's before pooling): what a dense
        # evaluation computes, each from one weight row (the auto choice's floor of its cost)
        self.outputs_per_image = [st.acc[0].numel() for st in one_image]
        # ... and its outputs after the pool: what a dense evaluation counts into levels
        self.pooled_per_image = [st.out[0].numel() for st in one_image]
        per_image = sum(_state_bytes(st) for st in one_image)
        fits = int(budget_bytes // max(1, per_image))
        self.workers = max(1, torch.get_num_threads() if workers is None else int(workers))
        parts = max(1, min(self.workers, self.n // PARALLEL_MIN_IMAGES))
        # All batches (one per thread) are kept across calls when the whole clean state fits
        # the budget; otherwise each call recomputes them, the threads' batches together a
        # quarter of it.
        self.keep_state = fits >= self.n
        self.batch = int(batch) if batch else max(1, min(-(-self.n // parts), fits if self.keep_state
                                                         else fits // (4 * parts)))
        self._state: dict[int, list[_CleanLayer]] = {}
        # maps stepped together (see _run_group), their differences held within a quarter of the
        # budget: a conv layer's is a dense (images, C, H, W) tensor per map, a dense layer's
        # flipped channels at most an (images, outputs) block per map
        per_map = max(st.out.numel() for st in one_image) * 4 * self.batch
        self.group = max(1, min(MAP_GROUP, int(budget_bytes // 4 // parts // per_map)))
        # per layer: (image, map) pairs that still differed after it, summed (where time goes)
        self.active_after = np.zeros(len(net.layers), dtype=np.int64)
        # per layer: changed outputs summed over those pairs (the work the next layer redoes)
        self.changed_after = np.zeros(len(net.layers), dtype=np.int64)
        # per layer: seconds spent in its difference steps, and (last slot) in the dense passes
        # that finish maps whose changes became dense (thread-seconds: batches run side by side)
        self.seconds_in = np.zeros(len(net.layers) + 1)
        self._tally_lock = threading.Lock()  # the three counters above, from worker threads
        # per dense or conv layer: changed outputs its compiled step reserves room for (its last count)
        self._records: dict[int, int] = {}
        t0 = time.perf_counter()
        self.clean_logits = torch.cat([self._clean(lo)[-1].out for lo in range(0, self.n, self.batch)])
        # the clean state's cost: once here when it is kept, else again in every call
        self.clean_seconds = time.perf_counter() - t0

    def _acc_bounds(self) -> tuple[list[float], list[float]]:
        """Per layer the largest magnitude of any faulty (or clean) accumulator (a change is
        at most twice it), and of any of its inputs."""
        out, in_max = [], [float(self.x.abs().max()) if self.n else 1.0]
        for layer in self.net.layers:
            out.append(in_max[-1] * layer.weight.shape[1] * _weight_bound(layer))
            in_max.append(layer.post.max_abs_out)
        return out, in_max[:-1]

    # --- the clean network -------------------------------------------------------------------

    def _clean(self, lo: int) -> list[_CleanLayer]:
        if lo in self._state:
            return self._state[lo]
        state = self._clean_pass(self.x[lo:lo + self.batch])
        if self.keep_state:
            self._state[lo] = state
        return state

    def _clean_pass(self, x: torch.Tensor) -> list[_CleanLayer]:
        states: list[_CleanLayer] = []
        h = x
        last = len(self.net.layers) - 1
        with torch.no_grad():
            for i, (layer, w, dt) in enumerate(zip(self.net.layers, self.weights, self.dtypes, strict=True)):
                h_in, acc, out = _layer_forward(layer, h, w, dt, layer.post)
                # the logit layer's range is empty (identity): every change of a logit counts
                # the logits in the last layer's own dtype: float64 where they may pass 2^24
                out_dt = dt if i == last else torch.float32
                lo, hi = (None, None) if _compiled_conv_layer(layer) else (
                    t.to(out_dt if i == last else t.dtype).contiguous() for t in layer.post.unchanged_range(acc))
                # dense inputs channels first, for the dW rows (and as rows for the compiled
                # step); conv inputs padded
                rows = h_in.contiguous() if layer.conv is None else None
                h_in = h_in.T.contiguous() if layer.conv is None else h_in.contiguous()
                st = _CleanLayer(h_in, acc.to(self.acc_dtypes[i]), lo, hi, out.to(out_dt),
                                 rows if i == last else None)
                if i == 0 and layer.conv is None:
                    st.by_output = tuple(t.T.contiguous().numpy() for t in (st.lo, st.hi, st.acc, st.out))
                elif (layer.conv is None and np.issubdtype(self.weights_t_compact[i].dtype, np.integer)
                        and self.in_max[i] < INT16_CHANGE_BOUND and torch.equal(rows, torch.round(rows))):
                    st.narrow = _narrow_state(h_in, lo, hi)
                states.append(st)
                h = out
        return states

    # --- one map ----------------------------------------------------------------------------

    def deltas(self, fmap: FaultMap) -> list[LayerDelta | None]:
        """Per layer the map's sparse weight change (``None``: untouched)."""
        out: list[LayerDelta | None] = []
        for layer, mem in zip(self.net.layers, self.memories, strict=True):
            if mem is None:
                out.append(None)
                continue
            word, bit, kind = fmap.for_memory(mem.name)
            if len(word) == 0:
                out.append(None)
                continue
            idx, delta = element_deltas(layer.weight, mem, word, bit, kind)
            if len(idx) == 0:
                out.append(None)
                continue
            rows, cols = np.divmod(idx, layer.weight.shape[1])
            out.append(LayerDelta(torch.from_numpy(rows), torch.from_numpy(cols),
                                  torch.from_numpy(delta)))
        return out

    def run(self, fmap: FaultMap, posts: Mapping[int, PostOp] | None = None) -> MapDifference:
        """One map; see :meth:`run_many`."""
        return self.run_many([fmap], [posts])[0]

    def run_many(
        self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None] | None = None,
    ) -> list[MapDifference]:
        """Per map the images whose logits it changes and their logits. ``posts``: per map the
        faulty post-ops by layer index (threshold-memory faults). Image batches are the outer
        loop, so each batch's clean state is computed once for all maps."""
        posts = [dict(p or {}) for p in posts] if posts is not None else [{} for _ in fmaps]
        deltas = [self.deltas(f) for f in fmaps]
        parts: list[list] = [[] for _ in fmaps]
        starts = range(0, len(fmaps), self.group)

        def one_batch(lo: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
            with torch.no_grad():  # grad mode is per thread
                state = self._clean(lo)
                return [self._run_group(state, deltas[g0:g0 + self.group], posts[g0:g0 + self.group])
                        for g0 in starts]

        batches = range(0, self.n, self.batch)
        for lo, groups in zip(batches, self._side_by_side(one_batch, list(batches)), strict=True):
            for g0, got in zip(starts, groups, strict=True):
                for k, (rows, logits) in enumerate(got, start=g0):
                    parts[k].append((rows + lo, logits))
        out: list[MapDifference] = []
        for got in parts:
            rows = torch.cat([r for r, _ in got]).numpy()
            logits = torch.cat([lg for _, lg in got]).numpy()
            out.append(MapDifference(rows, np.rint(logits).astype(np.int64)))
        return out

    def _side_by_side(self, fn: Callable[[int], object], items: list[int]) -> list:
        """``fn`` of every item, in threads when torch has more than one. Torch's own thread
        count stays as it is: dynamo guards compiled code on it, so changing it for the
        threads' short tensor steps would recompile every compiled post-op twice."""
        workers = min(torch.get_num_threads(), self.workers, len(items))
        if workers <= 1:
            return [fn(it) for it in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))

    def estimate_seconds(self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None] | None = None,
                         fraction: float = 0.0625, small: int = 64, maps: int = ESTIMATE_MAPS) -> float:
        """Seconds per map on all images, for maps like the first ``maps`` of ``fmaps`` run as
        one group: the group runs on the first ``small`` and on the first ``fraction`` of the
        images of each batch that :meth:`run_many` runs side by side (side by side too, as
        the threads share cores and memory; when the larger slice took less than
        ``ESTIMATE_REPEAT_BELOW``, that run counts as a warm-up and both slices run twice
        more, the faster kept, since a shared machine's noise only adds time); the difference
        is the per-image cost, the rest the per-map cost (weight deltas, kernels' set-up).
        When the clean state is not kept (it does not fit ``budget_bytes``), every call
        computes it again: that time (:attr:`clean_seconds`), shared by the call's ``fmaps``,
        is added (the paper VGG3 on 10k images in a 3 GB budget: about 4 s of an 11 s call at
        1e-4, which the estimate used to leave out), and so is the fixed cost of each further
        round of batches."""
        recompute = 0.0 if self.keep_state else self.clean_seconds / max(1, len(fmaps))
        fmaps = list(fmaps)[: min(maps, self.group)]
        posts = [dict(p or {}) for p in posts][: len(fmaps)] if posts is not None else [{} for _ in fmaps]
        starts = list(range(0, self.n, self.batch))[: min(self.workers, torch.get_num_threads())]
        # at least 4 x small: on 2000 paper-VGG3 images a 128-image slice misjudged 1e-3
        k = min(self.batch, self.n, max(4 * small, int(self.n * fraction)))
        deltas = [self.deltas(f) for f in fmaps]
        counters = self.active_after.copy(), self.changed_after.copy(), self.seconds_in.copy()
        clean = [self._clean(lo) for lo in starts]
        for c in clean:  # a conv layer's clean levels, made once as a call makes them (not per slice)
            for layer, st in zip(self.net.layers, c, strict=True):
                if layer.conv is not None and type(layer.post) is ThresholdPostOp:
                    self._levels(st, layer.post)
        # both slices' states made before any timing: a state made just before its run made
        # that run slow (sfc_w2a2 at 1e-3: the estimate 1.6x the real time, against 0.8x)
        heads = {each: [[st.head(each, layer.conv is not None) for layer, st in zip(self.net.layers, c, strict=True)]
                        for c in clean] for each in (small, k)}

        def timed(each: int) -> float:
            def one_slice(b: int) -> None:
                with torch.no_grad():
                    self._run_group(heads[each][b], deltas, posts)

            t0 = time.perf_counter()
            self._estimating = True
            try:
                self._side_by_side(one_slice, list(range(len(clean))))
            finally:
                self._estimating = False
            return time.perf_counter() - t0

        timed(small)  # loads the compiled kernels
        t_k = timed(k)
        if t_k < ESTIMATE_REPEAT_BELOW:  # that run only warmed up (see ESTIMATE_REPEAT_BELOW)
            t_small, t_k = timed(small), timed(k)
            t_small, t_k = min(t_small, timed(small)), min(t_k, timed(k))
        else:
            t_small = timed(small)
        self.active_after, self.changed_after, self.seconds_in = counters  # a probe is not part of any result
        n_small, n_k = (sum(int(h[0].acc.shape[0]) for h in heads[each]) for each in (small, k))
        per_image = max(0.0, t_k - t_small) / (n_k - n_small) if n_k > n_small else t_k / n_k
        # the rest of a slice's time is the group's fixed cost (weight deltas, kernels' set-up,
        # the layer steps' bookkeeping), paid again in every round of batches side by side:
        # one round when the state is kept, many in the small batches of a state that is not
        batches = -(-self.n // self.batch)
        rounds = -(-batches // len(starts))  # batches side by side, len(starts) at a time
        fixed = max(0.0, t_small - per_image * n_small)
        return (t_small + per_image * (self.n - n_small) + (rounds - 1) * fixed) / len(fmaps) + recompute

    def _run_group(self, state: list[_CleanLayer], deltas: list[list[LayerDelta | None]],
                   posts: list[dict[int, PostOp]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A group of maps on one image batch, layer by layer; per map the images whose logits
        differ, and their logits.

        Dense layers with their clean post-op, or with a map's faulty thresholds, take one
        compiled step for all the group's maps (:meth:`_fused_dense_step`), on the maps'
        differences kept side by side as a :class:`_Joint` from one such layer to the next; the
        logit layer takes its own (:meth:`_logit_step`: full rows of logit changes). Conv
        layers with a threshold post-op take one compiled step for the group too
        (:meth:`_compiled_conv_step`, a map's faulty thresholds included), on each map's own
        form: its active images and their changes; a faulty post-op that differs in more than
        its thresholds takes a tensor step per map."""
        g = len(deltas)
        # this call's counts, added to the evaluator's at the end (calls run in threads)
        active_after, changed_after = np.zeros_like(self.active_after), np.zeros_like(self.changed_after)
        seconds_in = np.zeros_like(self.seconds_in)
        active = [torch.zeros(0, dtype=torch.int64) for _ in range(g)]  # images with a difference, ascending
        # dense: (row in active, feature, value) triplets; conv: a _ConvChange or (|A|, C, H, W)
        dx: list = [None] * g
        joint = _Joint.empty(g)  # the differences of the maps in `in_joint`
        in_joint: set[int] = set()
        done: list = [None] * g
        last = len(self.net.layers) - 1
        for i, (layer, st) in enumerate(zip(self.net.layers, state, strict=True)):
            running = [m for m in range(g) if done[m] is None]
            if not running:
                break
            t_layer = time.perf_counter()
            fused = [m for m in running if layer.conv is None
                     and (i not in posts[m] or _compiled_thresholds(posts[m][i], layer.post))]
            own = [m for m in running if m not in fused]
            for m, form in joint.take([m for m in own if m in in_joint]).items():
                active[m], dx[m] = form
            if layer.flatten_before:  # conv -> dense: the maps' conv differences as triplets
                for m in running:
                    if m not in in_joint and len(active[m]):
                        dx[m] = (dx[m].triplets(layer.flatten_order) if isinstance(dx[m], _ConvChange)
                                 else _flatten_dx(dx[m], layer.flatten_order))
            joint = joint.keep(in_joint & set(fused)).merged(
                {m: (active[m], dx[m]) for m in fused if m not in in_joint})
            in_joint = set(fused)
            compiled_conv = [m for m in own if _compiled_conv_layer(layer)
                             and (i not in posts[m] or _compiled_thresholds(posts[m][i], layer.post))]
            steps = dict(zip(compiled_conv, self._compiled_conv_step(
                i, layer, st, [deltas[m][i] for m in compiled_conv], [active[m] for m in compiled_conv],
                [dx[m] for m in compiled_conv], layer.post, [posts[m].get(i) for m in compiled_conv]),
                strict=True)) if compiled_conv else {}
            for m in own:
                post, faulty_post = posts[m].get(i, layer.post), i in posts[m]
                if m in steps:
                    step = steps[m]
                elif layer.conv is None:
                    step = self._dense_step(i, st, deltas[m][i], active[m], dx[m], post, faulty_post, i == last)
                else:
                    step = self._conv_step(i, layer, st, deltas[m][i], active[m],
                                           _dense_change(dx[m], len(active[m])), post, faulty_post)
                active_after[i] += len(step[0])
                if i == last:
                    done[m] = step
                else:
                    active[m], dx[m] = step
            # the logit layer (no thresholds, so no map has faulty ones here): full rows of changes
            if fused and i == last and not isinstance(layer.post, ThresholdPostOp):
                for m, got in enumerate(self._logit_step(i, st, [deltas[m][i] if m in in_joint else None
                                                                 for m in range(g)], joint)):
                    if m in in_joint:
                        done[m] = got
                        active_after[i] += len(got[0])
                seconds_in[i] += time.perf_counter() - t_layer
                continue
            if fused:
                joint = self._fused_dense_step(i, st, [deltas[m][i] if m in in_joint else None for m in range(g)],
                                               [posts[m].get(i) if m in in_joint else None for m in range(g)], joint)
                active_after[i] += joint.images()
                if i == last:
                    for m, (rows, change) in enumerate(joint.split_rows(st.out.shape[1])):
                        if m in in_joint:
                            done[m] = rows, st.out[rows] + change
                    seconds_in[i] += time.perf_counter() - t_layer
                    continue
            counts = joint.counts()
            switching = []
            for m in running:
                if done[m] is not None:
                    continue
                if m in in_joint:
                    n_changed = int(counts[m])
                else:
                    n_changed = (0 if dx[m] is None else len(dx[m][2]) if isinstance(dx[m], tuple)
                                 else len(dx[m].val) if isinstance(dx[m], _ConvChange) else int(dx[m].ne(0).sum()))
                changed_after[i] += n_changed
                if n_changed > self.switch_fraction * st.out.numel():
                    switching.append(m)
                elif (n_changed == 0 and all(dd is None for dd in deltas[m][i + 1:])
                        and not any(k > i for k in posts[m])):
                    in_joint.discard(m)
                    done[m] = torch.zeros(0, dtype=torch.int64), torch.zeros(0, self.clean_logits.shape[1])
            for m, form in joint.take([m for m in switching if m in in_joint]).items():
                active[m], dx[m] = form
                in_joint.discard(m)
            t_dense = time.perf_counter()
            seconds_in[i] += t_dense - t_layer
            for m in switching:
                done[m] = self._finish_dense(i, state, active[m], dx[m], deltas[m], posts[m])
            seconds_in[-1] += time.perf_counter() - t_dense
        with self._tally_lock:
            self.active_after += active_after
            self.changed_after += changed_after
            self.seconds_in += seconds_in
        return done

    def _finish_dense(self, i: int, state: list[_CleanLayer], active: torch.Tensor, dx,
                      deltas: list[LayerDelta | None], posts: dict[int, PostOp],
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers after ``i`` on every image of the batch as a dense forward pass: layer
        ``i``'s faulty outputs (the clean ones plus ``dx``) through the faulty weights. Taken
        once so many outputs changed that a difference costs more than the layer itself."""
        h = state[i].out.clone()
        dx = _dense_change(dx, len(active))
        if isinstance(dx, tuple):
            r, c, v = dx
            h[active[r], c] += v
        else:
            h[active] += dx
        last = len(self.net.layers) - 1
        weights: list[torch.Tensor | None] = [None] * len(self.net.layers)
        for j in range(i + 1, last + 1):
            w, d = self.weights[j], deltas[j]
            if d is not None:
                w = w.clone()
                w.index_put_((d.rows, d.cols), d.values.to(self.dtypes[j]), accumulate=True)
            weights[j] = w
        # not where this map's faulty thresholds feed or follow a layer: those post-ops
        # (SearchThresholdPostOp) give levels only, and may reach codes the bound did not count
        plain = [j for j in range(i + 1, last + 1) if j not in posts and j - 1 not in posts]
        # self.dtypes hold float32 only where any faulty weights keep float32 exact
        int8 = int8_products.pack_layers(self.net, [None if w is None else w[None] for w in weights],
                                         self.dtypes, only=plain) if self.int8 else {}
        with torch.no_grad():
            for j in range(i + 1, last + 1):
                layer = self.net.layers[j]
                post = posts.get(j, layer.post)
                if self._estimating and j < last:
                    # torch.compile'd post-ops recompile for every new shape, and an estimate
                    # runs on slices of a batch: the eager form (slower: the estimate errs
                    # towards the dense path)
                    post = post.channels(torch.arange(layer.weight.shape[0]))
                if j in int8:
                    h = _int8_layer(layer, int8[j], h, post, codes_next=j + 1 in int8)
                else:
                    h = _layer_forward(layer, h, weights[j], self.dtypes[j], post)[2]
        logits = h.to(state[last].out.dtype)
        touched = (logits != state[last].out).any(1).nonzero().flatten()
        return touched, logits[touched]

    def _dense_step(self, i, st, d, active, dx, post, faulty_post, is_last):
        """A dense layer with a faulty post-op that is not a threshold post-op with other
        thresholds, for one map as tensor operations (the others take
        :meth:`_fused_dense_step`, threshold-memory faults included)."""
        dt = self.dtypes[i]
        n, out_n = st.acc.shape
        j_idx, d_j = _flipped_channels(d, st.h, dt)
        if faulty_post:  # every channel may change: all of them are in J
            full = torch.zeros(n, out_n, dtype=dt)
            if d_j is not None:
                full[:, j_idx] = d_j
            j_idx, d_j = torch.arange(out_n), full
        # images the J part changes
        touched = active
        if d_j is not None:
            hit = (d_j != 0).any(1) if is_last else (post(st.acc.to(dt) + d_j) != st.out).any(1)
            touched = torch.unique(torch.cat([active, hit.nonzero().flatten()]))
        if len(touched) == 0:
            return (touched, torch.zeros(0, out_n)) if is_last else (touched, None)
        every = len(touched) > n // 2  # then work on whole tensors: no gathers
        if every:
            touched = torch.arange(n)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t if every else t[touched]

        delta = torch.zeros(len(touched), out_n, dtype=dt)
        if d_j is not None:
            delta[:, j_idx] = rows(d_j)
        if len(active):
            # W_faulty @ dx with dx as (row in active, input feature, value) triplets
            r, c, v = dx
            at = active if every else torch.searchsorted(touched, active)
            v = v.to(dt)
            w_t = self.weights_t[i]
            if d is not None:  # W_faulty = W + dW on the changed inputs: dW @ dx included
                w_t = w_t.clone()
                w_t.index_put_((d.cols, d.rows), d.values.to(dt), accumulate=True)
            delta[at] += _rows_times(r, c, v, len(active), w_t)
        acc = rows(st.acc).to(dt)
        if is_last:
            return touched, (acc + delta).to(st.out.dtype)
        new = post(acc + delta).to(torch.float32)  # a faulty post-op: any output may change
        rr, cc = (new != rows(st.out)).nonzero(as_tuple=True)
        vals = new[rr, cc] - rows(st.out)[rr, cc]
        kept, r_new = torch.unique(rr, return_inverse=True)
        return touched[kept], (r_new, cc, vals)

    def _fused_dense_step(self, i: int, st: _CleanLayer, layer_deltas: list[LayerDelta | None],
                          layer_posts: list[PostOp | None], joint: _Joint) -> _Joint:
        """A dense layer for a group of maps at once: ``joint`` holds the maps' input changes,
        ``layer_deltas`` per map its weight change here and ``layer_posts`` its faulty
        thresholds, if any (``None`` also for the maps not taking this step). One call of
        :func:`mcel_train.difference_kernel.dense_layer_maps`; returns the output changes (the
        logit changes on a logit layer that :meth:`_logit_step` does not take)."""
        np_dt = self._np_dtype(i)
        out_n = st.acc.shape[1]
        g = joint.g
        dw_ptr, dw_rows, dw_vals, f_ptr, f_rows, f_cols, f_vals = self._flipped_by_map(i, layer_deltas)
        post = self.net.layers[i].post
        counted = isinstance(post, ThresholdPostOp)
        thresholds = post.thresholds.numpy() if counted else np.zeros((0, 1))
        sign = post.sign.numpy() if counted else np.zeros(0)
        out_bias, out_mult = (post.out_bias, post.out_mult) if counted else (0.0, 1.0)
        faulty_thresholds = _faulty_threshold_rows(layer_posts, thresholds)
        if st.by_output is not None and not len(joint.key):  # the clean input: dW @ x only
            key, out, change, out_keys, out_ptr, per_map = clean_input_layer_maps(
                g, f_ptr, f_rows, f_cols, f_vals, *faulty_thresholds, st.h.numpy(), *st.by_output, thresholds, sign,
                out_bias, out_mult, CLEAN_INPUT_BLOCK)
            return self._joint_out(i, st, g, post, counted, key, out, change, out_keys, out_ptr, per_map)
        col, val = joint.col, joint.val.astype(np_dt, copy=False)
        pair_key, pair_ptr = joint.pair_index()
        pre = self._clean_product(i, col, val, pair_key, pair_ptr)
        w_rows, slot, faulty_rows = self._weight_rows(i, f_ptr, f_rows, f_cols, f_vals, use=not len(pre))
        x_t, lo, hi = st.h.numpy(), st.lo.numpy(), st.hi.numpy()
        if (st.narrow is not None and not len(pre) and np.issubdtype(w_rows.dtype, np.integer)
                and (self.int16_changes[i] or self._int16_fits(i, val, pair_ptr, f_ptr, f_rows, f_vals))):
            # the changes summed in int16 (see INT16_CHANGE_BOUND): the kernel's form for int16 values
            val, dw_vals, f_vals = (a.astype(np.int16) for a in (val, dw_vals, f_vals))
            pre = np.zeros((0, out_n), np.int16)
            x_t, lo, hi = st.narrow
        key, out, change, out_keys, out_ptr, per_map = dense_layer_maps(
            g, pair_key, pair_ptr, col, val, pre, w_rows, slot, faulty_rows, dw_ptr, dw_rows,
            dw_vals, f_ptr, f_rows, f_cols, f_vals, *faulty_thresholds, x_t, lo, hi,
            st.acc.numpy(), st.out.numpy(), thresholds, sign, out_bias, out_mult, self._records.get(i, 0),
            FLIP_BLOCK)
        self._records[i] = int(1.25 * len(key))  # the next call's reservation
        return self._joint_out(i, st, g, post, counted, key, out, change, out_keys, out_ptr, per_map)

    def _np_dtype(self, i: int) -> type:
        """Layer ``i``'s exact float type (:attr:`dtypes`) as the compiled steps take it."""
        return np.float32 if self.dtypes[i] == torch.float32 else np.float64

    def _clean_product(self, i: int, col: np.ndarray, val: np.ndarray, pair_key: np.ndarray,
                       pair_ptr: np.ndarray) -> np.ndarray:
        """``W @ dx`` of every pair with the clean weights as one BLAS product when the input
        changes are dense (:data:`BLAS_FRACTION`), else an empty ``(0, out)`` array: the
        compiled step then multiplies the changed inputs row by row."""
        dt = self.dtypes[i]
        w_t = self.weights_t[i]
        in_n, out_n = w_t.shape
        if not len(val) or len(val) < BLAS_FRACTION * len(pair_key) * in_n:
            return np.zeros((0, out_n), val.dtype)
        block = torch.zeros(len(pair_key), in_n, dtype=dt)
        pair_of = np.repeat(np.arange(len(pair_key)), np.diff(pair_ptr))
        block[torch.from_numpy(pair_of), torch.from_numpy(col)] = torch.from_numpy(val)
        return (block @ w_t).numpy()

    def _logit_step(self, i: int, st: _CleanLayer, layer_deltas: list[LayerDelta | None],
                    joint: _Joint) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The logit layer (no post-op) for a group of maps at once, from ``joint``'s input
        changes and ``layer_deltas``' flipped weights: one call of
        :func:`mcel_train.difference_kernel.logit_layer_maps`; per map the images whose logits
        change, and those logits."""
        np_dt = self._np_dtype(i)
        dw_ptr, dw_rows, dw_vals, f_ptr, f_rows, f_cols, f_vals = self._flipped_by_map(i, layer_deltas)
        col, val = joint.col, joint.val.astype(np_dt, copy=False)
        pair_key, pair_ptr = joint.pair_index()
        pre = self._clean_product(i, col, val, pair_key, pair_ptr)
        w_rows, slot, faulty_rows = self._weight_rows(i, f_ptr, f_rows, f_cols, f_vals, use=not len(pre))
        images, block, start, end = logit_layer_maps(
            joint.g, pair_key, pair_ptr, col, val, pre, w_rows, slot, not faulty_rows or len(pre) > 0, dw_ptr,
            dw_rows, dw_vals, f_ptr, f_rows, f_cols, f_vals, st.rows.numpy(), st.out.numpy())
        return [(torch.from_numpy(images[a:z]), torch.from_numpy(block[a:z])) for a, z in zip(start, end, strict=True)]

    def _flipped_by_map(self, i: int, layer_deltas: list[LayerDelta | None]) -> tuple[np.ndarray, ...]:
        """Layer ``i``'s flipped weights of each map, as the compiled dense steps take them: by
        input (``dw_ptr (maps, in + 1)``, ``dw_rows``, ``dw_vals``: for ``dW @ dx``) and sorted
        by output then input (``f_ptr (maps + 1,)``, ``f_rows``, ``f_cols``, ``f_vals``: for
        ``dW @ x``)."""
        np_dt = self._np_dtype(i)
        in_n = self.weights_t[i].shape[0]
        g = len(layer_deltas)
        dw_ptr = np.zeros((g, in_n + 1), np.int64)
        f_ptr = np.zeros(g + 1, np.int64)
        dw_rows, dw_vals, f_rows, f_cols, f_vals = ([np.zeros(0, np.int64)], [np.zeros(0, np_dt)],
                                                    [np.zeros(0, np.int64)], [np.zeros(0, np.int64)],
                                                    [np.zeros(0, np_dt)])
        offset = 0
        for m, d in enumerate(layer_deltas):
            dw_ptr[m] = offset
            if d is not None:
                rows, cols, values = d.rows.numpy(), d.cols.numpy(), d.values.numpy().astype(np_dt)
                order = np.argsort(cols, kind="stable")
                dw_ptr[m, 1:] += np.cumsum(np.bincount(cols, minlength=in_n))
                dw_rows.append(rows[order])
                dw_vals.append(values[order])
                order = np.lexsort((cols, rows))
                f_rows.append(rows[order])
                f_cols.append(cols[order])
                f_vals.append(values[order])
                offset += len(order)
            f_ptr[m + 1] = offset
        return (dw_ptr, np.concatenate(dw_rows), np.concatenate(dw_vals), f_ptr,
                *(np.concatenate(a) for a in (f_rows, f_cols, f_vals)))

    def _int16_fits(self, i: int, val: np.ndarray, pair_ptr: np.ndarray, f_ptr: np.ndarray, f_rows: np.ndarray,
                    f_vals: np.ndarray) -> bool:
        """Whether this call's accumulator changes on layer ``i`` fit int16, when not every
        possible one does: each is at most its pair's summed input changes times the largest
        faulty weight, plus its output's summed weight changes times the largest input."""
        out_n = self.weights_t[i].shape[1]
        dx_sum = float(np.add.reduceat(np.abs(val), pair_ptr[:-1]).max()) if len(val) else 0.0
        of_map = np.repeat(np.arange(len(f_ptr) - 1), np.diff(f_ptr))
        dw_sum = float(np.bincount(of_map * out_n + f_rows, np.abs(f_vals)).max()) if len(f_vals) else 0.0
        return dx_sum * _weight_bound(self.net.layers[i]) + dw_sum * self.in_max[i] < INT16_CHANGE_BOUND

    def _weight_rows(self, i: int, f_ptr: np.ndarray, f_rows: np.ndarray, f_cols: np.ndarray, f_vals: np.ndarray,
                     use: bool) -> tuple[np.ndarray, np.ndarray, bool]:
        """Layer ``i``'s weight rows for :func:`mcel_train.difference_kernel.dense_layer_maps`:
        ``(S, in, out)`` rows by input, which row set each map reads, and whether those are the
        maps' faulty weights (slot 0 the clean ones, then one copy per map with flipped weights
        here). Only when ``use`` and the copies fit :data:`FAULTY_ROWS_BYTES` in a type that
        holds every faulty value; else the clean rows alone."""
        clean = self.weights_t_compact[i]
        g = len(f_ptr) - 1
        flipped = np.flatnonzero(np.diff(f_ptr))
        lo, hi = _faulty_weight_range(self.net.layers[i])
        dtype = next((d for d in (clean.dtype, np.dtype(np.int16)) if not np.issubdtype(d, np.integer)
                      or np.iinfo(d).min <= lo and hi <= np.iinfo(d).max), None)
        if (not use or not len(flipped) or dtype is None
                or (1 + len(flipped)) * clean.size * dtype.itemsize > FAULTY_ROWS_BYTES):
            return clean[None], np.zeros(g, np.int64), False
        rows = np.empty((1 + len(flipped), *clean.shape), dtype)
        rows[:] = clean
        slot = np.zeros(g, np.int64)
        slot[flipped] = np.arange(1, len(flipped) + 1)
        of_flip = np.repeat(slot, np.diff(f_ptr))  # each flipped weight's copy
        # a change may be twice the bound (-2 -> 1 in two bits) and not fit the type: integers
        # wrap, and the sum, a faulty weight, fits
        change = f_vals.astype(np.int64).astype(dtype) if np.issubdtype(dtype, np.integer) else f_vals.astype(dtype)
        np.add.at(rows, (of_flip, f_cols, f_rows), change)
        return rows, slot, True

    def _joint_out(self, i: int, st: _CleanLayer, g: int, post: PostOp, counted: bool, key: np.ndarray,
                   out: np.ndarray, change: np.ndarray, out_keys: np.ndarray, out_ptr: np.ndarray,
                   per_map: np.ndarray) -> _Joint:
        """A compiled dense step's entries as the next layer's :class:`_Joint` (a post-op other
        than thresholds is run here, on the crossing outputs only)."""
        dt = self.dtypes[i]
        if not counted and i != len(self.net.layers) - 1:
            # the accumulator changes: the post-op on the crossing outputs only
            img, cc = torch.from_numpy(key // g), torch.from_numpy(out)
            new = post.channels(cc)((st.acc[img, cc].to(dt) + torch.from_numpy(change).to(dt)).unsqueeze(0))[0]
            change = (new.to(torch.float32) - st.out[img, cc]).numpy()
        return _Joint(g, key, out, change.astype(np.float32), (out_keys, out_ptr), per_map)

    def _conv_step(self, i, layer, st, d, active, dx, post, faulty_post):
        """One map through a conv layer as tensor operations: the images whose outputs change,
        and their changes ``(|touched|, C, H'', W'')``. Taken for threshold-memory faults and
        post-ops other than thresholds (a clean threshold post-op takes
        :meth:`_compiled_conv_step`)."""
        dt = self.dtypes[i]
        g = layer.conv
        n, out_c, ho, wo = st.acc.shape
        d_j, j_idx = None, torch.zeros(0, dtype=torch.int64)
        if d is not None:
            j_idx, j_pos = torch.unique(d.rows, return_inverse=True)
            d_j = torch.zeros(n, len(j_idx), ho, wo, dtype=dt)
            ic, kh, kw = _conv_columns(layer, d.cols)
            sh, sw = g.stride
            for a in torch.unique(kh * g.kernel[1] + kw).tolist():
                sel = (kh * g.kernel[1] + kw) == a
                y0, x0 = divmod(a, g.kernel[1])
                view = st.h[:, :, y0:y0 + sh * (ho - 1) + 1:sh, x0:x0 + sw * (wo - 1) + 1:sw]
                src = view[:, ic[sel]] * d.values[sel].to(dt).reshape(1, -1, 1, 1)
                d_j.index_add_(1, j_pos[sel], src)
        if faulty_post:
            full = torch.zeros(n, out_c, ho, wo, dtype=dt)
            if d_j is not None:
                full[:, j_idx] = d_j
            j_idx, d_j = torch.arange(out_c), full
        if d_j is not None and not faulty_post and 2 * len(active) >= n:
            # most images differ already: take them all and let the crossing test below drop the
            # rest, rather than test every flipped channel twice
            touched = torch.arange(n)
        elif d_j is not None:
            if faulty_post:
                acc = st.acc.to(dt) + d_j
                new = post.then_pool(acc, layer.pool) if layer.pool else post(acc)
                hit = (new != st.out).flatten(1).any(1)
            else:
                hit = ((d_j < st.lo[:, j_idx]) | (d_j > st.hi[:, j_idx])).flatten(1).any(1)
            touched = torch.unique(torch.cat([active, hit.nonzero().flatten()]))
        else:
            touched = active
        if len(touched) == 0:
            return touched, None
        # The output channels that can change: only those of the flipped weights unless an input
        # changed (a changed input channel reaches every output channel). Working on those alone
        # keeps a map with a few flipped kernels from paying for the whole layer.
        chans = torch.arange(out_c) if len(active) or faulty_post else j_idx
        every = len(touched) == n  # then slices, not gathers, of the clean state

        def clean(t: torch.Tensor) -> torch.Tensor:
            t = t if every else t[touched]
            return t if len(chans) == out_c else t[:, chans]

        delta = torch.zeros(len(touched), len(chans), ho, wo, dtype=dt)
        if d_j is not None:
            d_t = d_j if every else d_j[touched]
            if chans is j_idx:
                delta += d_t
            else:
                delta[:, j_idx] = d_t
        if len(active):
            in_ch = dx.flatten(2).ne(0).any(2).any(0).nonzero().flatten()
            kernel = _kernel(layer, self.weights[i]).clone()
            if d is not None:
                ic, kh, kw = _conv_columns(layer, d.cols)
                kernel.index_put_((d.rows, ic, kh, kw), d.values.to(dt), accumulate=True)
            dxp = F.pad(dx[:, in_ch].to(dt), (g.padding[1], g.padding[1], g.padding[0], g.padding[0]))
            at = torch.searchsorted(touched, active)
            delta[at] += F.conv2d(dxp, kernel[:, in_ch].contiguous(), stride=g.stride)
        if not faulty_post:
            cross = ((delta < clean(st.lo)) | (delta > clean(st.hi))).flatten(1).any(1)
            keep = cross.nonzero().flatten()
            if len(keep) < len(touched):
                touched, delta, every = touched[keep], delta[keep], False
            if len(touched) == 0:
                return touched, None
        # the eager form even for all channels: the rows differ from map to map, and a
        # torch.compile'd post-op would recompile for every new shape
        sub_post = post.channels(chans)
        acc = clean(st.acc).to(dt) + delta
        new = sub_post.then_pool(acc, layer.pool) if layer.pool else sub_post(acc)
        diff_c = new.to(torch.float32) - clean(st.out)
        rows_any = diff_c.flatten(1).ne(0).any(1)
        if len(chans) == out_c:
            return touched[rows_any], diff_c[rows_any]
        diff = torch.zeros(int(rows_any.sum()), out_c, *diff_c.shape[2:])
        diff[:, chans] = diff_c[rows_any]
        return touched[rows_any], diff

    @staticmethod
    def _levels(st: _CleanLayer, post: ThresholdPostOp) -> torch.Tensor:
        """The clean outputs' threshold counts (int16), computed once per clean state, a few
        images at a time: in one go, the float64 temporaries of a 5000-image batch of the paper
        VGG3's first conv took 2.2 GB (the sweep's peak memory on 10k images)."""
        if st.levels is None:
            levels = torch.empty(st.out.shape, dtype=torch.int16)
            for lo in range(0, len(st.out), LEVELS_CHUNK):
                part = st.out[lo:lo + LEVELS_CHUNK].double()
                levels[lo:lo + LEVELS_CHUNK] = torch.round((part - post.out_bias) / post.out_mult)
            st.levels = levels
        return st.levels

    def _compiled_conv_step(self, i: int, layer: IntLayer, st: _CleanLayer, ds: list[LayerDelta | None],
                            actives: list[torch.Tensor], dxs: list, post: ThresholdPostOp,
                            faulty: list[ThresholdPostOp | None],
                            ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`_conv_step` for a group of maps through a conv layer with a threshold post-op,
        as one call of :func:`mcel_train.difference_kernel.conv_layer_maps`: per image and map
        only the flipped channels' planes and the changed inputs' neighbourhoods are computed,
        only the changed planes are pooled again, and only a window that leaves its clean
        level's range is counted again. ``faulty``: per map its faulty post-op here (threshold
        memory faults) or ``None``; a channel whose thresholds differ is pooled at every
        position, each window tested against the faulty thresholds' range of its clean level
        (it stays only if the faulty thresholds give the clean count)."""
        dt, np_dt = self.dtypes[i], self._np_dtype(i)
        g, n_maps = layer.conv, len(ds)
        n, out_c = st.acc.shape[:2]
        # each map's faulty kernel, output channels last (repeat copies: contiguous)
        kernels = _kernel(layer, self.weights[i]).permute(1, 2, 3, 0).unsqueeze(0).repeat(n_maps, 1, 1, 1, 1)
        t_ptr, f_ptr = np.zeros(n_maps + 1, np.int64), np.zeros(n_maps + 1, np.int64)
        taps: list[list[np.ndarray]] = [[np.zeros(0, np.int64)] for _ in range(4)] + [[np.zeros(0, np_dt)]]
        f_chans = [np.zeros(0, np.int64)]
        e_ptr = np.zeros((n_maps, n + 1), np.int64)
        entries: list[list[np.ndarray]] = [[np.zeros(0, np.int64)] for _ in range(3)] + [[np.zeros(0, np_dt)]]
        images = set()
        thresholds = post.thresholds.numpy()[None].repeat(n_maps, 0)  # (maps, out, K)
        bounds = _level_bounds(post.thresholds).numpy()[None].repeat(n_maps, 0)
        for m, (d, active, dx, p) in enumerate(zip(ds, actives, dxs, faulty, strict=True)):
            t_ptr[m + 1], f_ptr[m + 1] = t_ptr[m], f_ptr[m]
            chans = np.zeros(0, np.int64)
            if d is not None:
                ic, kh, kw = _conv_columns(layer, d.cols)
                values = d.values.to(dt)
                kernels[m].index_put_((ic, kh, kw, d.rows), values, accumulate=True)
                for part, a in zip(taps, (d.rows, ic, kh, kw, values), strict=True):
                    part.append(a.numpy())
                chans = d.rows.numpy()
                t_ptr[m + 1] += len(values)
            if p is not None:
                thresholds[m] = p.thresholds.numpy()
                bounds[m] = _level_bounds(p.thresholds).numpy()
                chans = np.concatenate([chans, (p.thresholds != post.thresholds).any(1).nonzero().flatten().numpy()])
            chans = np.unique(chans)
            f_chans.append(chans)
            f_ptr[m + 1] += len(chans)
            if len(active):
                if isinstance(dx, _ConvChange):  # as the step before found them
                    r = dx.rows
                    hw = dx.shape[1] * dx.shape[2]
                    c, yx = np.divmod(dx.pos, hw)
                    y, x = np.divmod(yx, dx.shape[2])
                    parts = c, y, x, dx.val.astype(np_dt)
                else:
                    rt, *cyx = dx.nonzero(as_tuple=True)  # row-major: images ascending
                    r = rt.numpy()
                    parts = *(t.numpy() for t in cyx), dx[rt, *cyx].to(dt).numpy()
                for part, a in zip(entries, parts, strict=True):
                    part.append(a)
                e_ptr[m, 1:] = np.cumsum(np.bincount(active.numpy()[r], minlength=n))
                images.update(active.tolist())
        e_ptr[1:] += np.cumsum(e_ptr[:-1, -1])[:, None]  # the maps' entries side by side
        # a flipped weight or threshold reaches every image
        images = np.arange(n) if f_ptr[-1] > 0 else np.array(sorted(images), np.int64)
        key, pos, val = conv_layer_maps(
            n_maps, images, st.h.numpy(), t_ptr, *(np.concatenate(part) for part in taps), f_ptr,
            np.concatenate(f_chans), e_ptr, *(np.concatenate(part) for part in entries),
            kernels.numpy(), st.acc.numpy(), st.out.numpy(), self._levels(st, post).numpy(),
            thresholds, bounds, post.sign.numpy(),
            post.out_bias, post.out_mult, layer.pool, *g.stride, *g.padding, self._records.get(i, 0))
        self._records[i] = int(1.25 * len(key))  # the next group's reservation
        image, of_map = np.divmod(key, n_maps)
        out = []
        for sel in _by_map(of_map, n_maps):  # each map's records stay by image
            if not len(sel):
                out.append((torch.zeros(0, dtype=torch.int64), None))
                continue
            active, rows = _active_rows(image[sel])
            out.append((torch.from_numpy(active),
                        _ConvChange((out_c, *st.out.shape[2:]), rows, pos[sel].astype(np.int64), val[sel])))
        return out


def _only_thresholds_differ(faulty: PostOp, clean: ThresholdPostOp) -> bool:
    """Whether ``faulty`` is ``clean`` with other thresholds (a threshold-memory fault), which
    the compiled steps take as they take flipped weights."""
    return (type(faulty) is ThresholdPostOp and faulty.thresholds.shape == clean.thresholds.shape
            and torch.equal(faulty.sign, clean.sign)
            and (faulty.out_bias, faulty.out_mult) == (clean.out_bias, clean.out_mult))


def _state_bytes(st: _CleanLayer) -> int:
    """Bytes one layer's clean state takes, counted from its tensors (a conv layer's int16
    levels, made when first asked, included)."""
    tensors = [t for t in (st.h, st.acc, st.lo, st.hi, st.out, st.rows) if t is not None]
    arrays = (*(st.by_output or ()), *(st.narrow or ()))
    levels = 2 * st.out.numel() if st.h.dim() == 4 else 0
    return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays) + levels


def _acc_dtype(layer: IntLayer, bound: float) -> torch.dtype:
    """The type a layer's clean accumulators are kept in, given the largest magnitude any of
    them can reach: int16 for a conv layer where that fits (the paper VGG3's first conv on 8-bit
    pixels: a fifth of its clean state), else int32 (a dense layer's compiled steps read int32)."""
    return torch.int16 if layer.conv is not None and bound <= torch.iinfo(torch.int16).max else torch.int32


def _compiled_conv_layer(layer: IntLayer) -> bool:
    """Whether a conv layer takes the compiled step (:meth:`DifferenceEvaluator._compiled_conv_step`)
    under its clean post-op: a plain threshold post-op. That step tests each pool window against
    its clean level's threshold range, so such a layer's clean state needs no unchanged range
    per accumulator (on the paper VGG3 those ranges were half of the clean state's bytes)."""
    return layer.conv is not None and type(layer.post) is ThresholdPostOp


def _compiled_thresholds(faulty: PostOp, clean: PostOp) -> bool:
    """Whether a layer whose clean post-op is ``clean`` takes its compiled step under the
    faulty post-op ``faulty``: both count thresholds and only the thresholds differ."""
    return type(clean) is ThresholdPostOp and _only_thresholds_differ(faulty, clean)


def _faulty_threshold_rows(posts: list[PostOp | None], clean: np.ndarray,
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map the outputs whose thresholds in ``posts`` (faulty threshold post-ops, or
    ``None``) differ from ``clean`` ``(out, K)``, and their thresholds, as the compiled dense
    steps take them: ``(t_ptr (maps + 1,), t_out, t_thr (T, K))``."""
    t_ptr = np.zeros(len(posts) + 1, np.int64)
    t_out, t_thr = [np.zeros(0, np.int64)], [np.zeros((0, clean.shape[1]), clean.dtype)]
    for m, post in enumerate(posts):
        rows = np.zeros(0, np.int64)
        if post is not None:
            faulty = post.thresholds.numpy().astype(clean.dtype)
            rows = np.flatnonzero((faulty != clean).any(axis=1))
            t_out.append(rows)
            t_thr.append(faulty[rows])
        t_ptr[m + 1] = t_ptr[m] + len(rows)
    return t_ptr, np.concatenate(t_out), np.ascontiguousarray(np.concatenate(t_thr))


def _narrow_state(by_feature: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[np.ndarray, ...]:
    """A dense layer's integer input by feature ``(in, N)`` and unchanged ranges as int16. An
    integer change ``d`` leaves ``[lo, hi]`` exactly when it leaves ``[ceil(lo), floor(hi)]``;
    clipping to int16 keeps that for every change that fits (infinite bounds included)."""
    info = np.iinfo(np.int16)

    def clipped(t: torch.Tensor) -> np.ndarray:
        return np.clip(t.double().numpy(), info.min, info.max).astype(np.int16)

    return by_feature.numpy().astype(np.int16), clipped(torch.ceil(lo)), clipped(torch.floor(hi))


def _level_bounds(thresholds: torch.Tensor) -> torch.Tensor:
    """``(C, K + 2)``: each channel's thresholds sorted, between ``-inf`` and ``inf``; a count
    ``L`` of thresholds ``<= x`` holds exactly for ``bounds[L] <= x < bounds[L + 1]``."""
    inf = torch.full((len(thresholds), 1), torch.inf, dtype=torch.float64)
    return torch.cat([-inf, torch.sort(thresholds.double(), dim=1).values, inf], dim=1).contiguous()


def _compact(w: torch.Tensor) -> np.ndarray:
    """Integer-valued weights as int8 or int16 when they fit (else as they are)."""
    a = w.numpy()
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        if a.size and a.min() >= info.min and a.max() <= info.max and np.array_equal(a, np.rint(a)):
            return a.astype(dtype)
    return a


def _layer_forward(layer: IntLayer, h: torch.Tensor, w: torch.Tensor, dt: torch.dtype, post: PostOp,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer on ``h`` (flattened first if the layer says so): its input as the layer reads
    it (dense ``(N, in)``, conv padded), its accumulators and its output (post-op, pool)."""
    if layer.flatten_before:
        h = _flatten(h, layer.flatten_order)
    if layer.conv is None:
        h_in = h.reshape(len(h), -1).to(dt)
        acc = h_in @ w.T
        return h_in, acc, post(acc)
    g = layer.conv
    h_in = F.pad(h.to(dt), (g.padding[1], g.padding[1], g.padding[0], g.padding[0]))
    acc = F.conv2d(h_in, _kernel(layer, w), stride=g.stride)
    return h_in, acc, post.then_pool(acc, layer.pool) if layer.pool else post(acc)


def _int8_layer(layer: IntLayer, product: Callable[..., torch.Tensor], h: torch.Tensor, post: PostOp,
                codes_next: bool) -> torch.Tensor:
    """One map's layer on ``h`` (its input levels, or codes from the int8 layer before) on the
    int8 kernel (:mod:`mcel_train.int8_products`): its output levels, or with ``codes_next``
    the next layer's uint8 codes."""
    if layer.flatten_before:
        h = _flatten(h, layer.flatten_order)
    if layer.conv is None:
        h = h.reshape(len(h), -1)
        return product(h, post)[0] if codes_next else post(product(h)[0])
    if codes_next:
        return product(h, post)
    acc = product(h)
    return post.then_pool(acc, layer.pool) if layer.pool else post(acc)


def _flipped_channels(d: LayerDelta | None, h_t: torch.Tensor, dt: torch.dtype,
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A dense layer's output channels ``J`` holding flipped weights, and ``dW @ x`` on them for
    every image, ``(N, |J|)`` (``None`` without faults); ``h_t`` is the clean input ``(in, N)``."""
    if d is None:
        return torch.zeros(0, dtype=torch.int64), None
    j_idx, j_pos = torch.unique(d.rows, return_inverse=True)
    order = torch.argsort(j_pos, stable=True)
    d_w = csr_matrix(j_pos[order], d.cols[order], d.values[order].to(dt), (len(j_idx), h_t.shape[0]))
    return j_idx, sparse_mm(d_w, h_t).T


def _rows_times(r: torch.Tensor, c: torch.Tensor, v: torch.Tensor, n_rows: int, w_t: torch.Tensor) -> torch.Tensor:
    """``dx @ w_t`` for ``dx`` given as (row, column, value) triplets sorted by row then column:
    a dense block when dense enough for BLAS, otherwise a CSR product (no per-change copies of
    weight rows)."""
    if len(v) * SPARSE_FACTOR >= n_rows * w_t.shape[0]:
        dense = torch.zeros(n_rows, w_t.shape[0], dtype=w_t.dtype)
        dense[r, c] = v
        return dense @ w_t
    return sparse_mm(csr_matrix(r, c, v, (n_rows, w_t.shape[0])), w_t)


def csr_matrix(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR matrix from (row, column, value) entries already sorted by row."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def sparse_mm(csr: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``csr @ dense`` without torch's beta warning on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(csr, dense)


def _kernel(layer: IntLayer, w: torch.Tensor) -> torch.Tensor:
    """The layer's ``(out, in)`` weight matrix as a conv kernel ``(out, C, kh, kw)``."""
    g = layer.conv
    if g.weight_hwc:
        return w.reshape(w.shape[0], *g.kernel, g.in_channels).permute(0, 3, 1, 2)
    return w.reshape(w.shape[0], g.in_channels, *g.kernel)


def _conv_columns(layer: IntLayer, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight-matrix columns -> (input channel, kernel row, kernel column)."""
    g = layer.conv
    kh_n, kw_n = g.kernel
    if g.weight_hwc:  # (kh, kw, ic)
        return cols % g.in_channels, cols // (kw_n * g.in_channels), (cols // g.in_channels) % kw_n
    return cols // (kh_n * kw_n), (cols // kw_n) % kh_n, cols % kw_n


def _flatten(h: torch.Tensor, order: str) -> torch.Tensor:
    """Conv output ``(N, C, H, W)`` -> ``(N, features)`` in the dense layer's column order."""
    if order == "hwc":
        h = h.permute(0, 2, 3, 1)
    return h.reshape(len(h), -1)


def _flatten_dx(dx: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A conv layer's ``(|A|, C, H, W)`` differences -> (row, feature, value) triplets."""
    flat = _flatten(dx, order)
    r, c = flat.nonzero(as_tuple=True)
    return r, c, flat[r, c]
