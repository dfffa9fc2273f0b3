"""Accuracy of an integer network under many fault maps at once.

Batched over images *and* maps: the faulty weights of ``M`` maps are stacked into
``(M, out, in)`` tensors and every layer is one batched matmul (or grouped conv). The first
layer sees the same input under every map, so its accumulators are computed once for the clean
weights and each map only adds a sparse correction ``x @ (W_faulty - W_clean)^T`` — a few
thousand non-zeros per map instead of a dense matmul. All arithmetic stays exact (see
:mod:`mcel_train.intnet`), so at rate 0 the clean accuracy is reproduced exactly.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mcel_train import int8_products
from mcel_train.difference import DifferenceEvaluator, csr_matrix, sparse_mm, supports
from mcel_train.faults.apply import apply_maps_stacked
from mcel_train.faults.faultmap import FaultMap
from mcel_train.intnet import FLOAT32_EXACT, INPUT_POST, IntNetwork, PostOp, ThresholdPostOp, layer_memories
from mcel_train.malloc_tuning import keep_freed_memory
from mcel_train.memory import Memory
from mcel_train.threshold_count import count_rate

METHODS = ("auto", "dense", "difference")
AUTO_MIN_MAPS = 4  # auto: calls with fewer maps go dense
# auto's first call at a rate runs the dense path's first group on this many image chunks and
# keeps the fastest's time (the first may carry one-off work)
PROBE_CHUNKS = 2
# ... of this many images: ``max(PROBE_MIN_IMAGES, N // PROBE_SHARE)``, at most the dense path's
# own chunk. Small, so that a probe costs little when the difference path wins; not so small
# that a step's fixed costs dominate (VGG3 w4a4: chunks of 250 images cost about 5 % more per
# image than chunks of 1000, which errs towards the difference path by as much)
PROBE_MIN_IMAGES = 256
PROBE_SHARE = 16
# auto takes the difference path without timing the dense path only if its estimate is below
# this share of the dense path's floor: the estimate was 0.4-2.3x the real time in one-off
# checks (sfc_w2a2's slices take a few ms), and the floor is within 0.5-0.8x of the real dense
# path, so at 1e-3 on sfc_w2a2 an estimate below the floor itself chose the difference path
# where it was 1.8x slower
FLOOR_MARGIN = 0.5
# auto: a call whose real time per map is within this factor of the other path's guessed time
# (the dense path never run whole, or the difference path at this rate) makes the rate's next
# call try the other path (see MapEvaluator._observe)
EXPLORE_BAND = 1.5
# The matmul whose fastest of MATMUL_RATE_REPEAT runs gives the best multiply-add rate this
# process sees (per torch thread count), for the dense path's floor (see MapEvaluator.dense_floor)
MATMUL_RATE_SHAPE = (1024, 1024, 1024)
MATMUL_RATE_REPEAT = 4
# Images per forward of the fault-free network (clean_logits)
CLEAN_CHUNK = 1024


@dataclass
class MapEvaluation:
    """Per-map accuracy ``(M,)`` and per-image predictions ``(M, N)``."""

    accuracy: np.ndarray
    predictions: np.ndarray


def memory_contents(net: IntNetwork, memories: Sequence[Memory]) -> dict[str, np.ndarray]:
    """Integer contents of each memory (its layer's weight matrix), keyed by memory name."""
    return {mem.name: net.layers[mem.layer_index].weight for mem in memories}


class MapEvaluator:
    """Evaluates fault maps on a fixed test set; reuse it across calls (it caches layer 0).

    ``rows`` bounds the (map, image) pairs processed at once, so the memory use is about
    ``rows * widest layer * 4`` bytes per activation tensor; maps are grouped so that each
    map sees at least ``min_chunk`` images per step (large matmuls). ``compile_post`` counts
    the thresholds with ``torch.compile`` (see :func:`mcel_train.intnet._compiled_count`).
    ``int8``: the dense path multiplies on oneDNN's int8 kernels where that is exact and the
    kernel is there (:mod:`mcel_train.int8_products`), else in float as always.
    """

    def __init__(
        self, net: IntNetwork, x: torch.Tensor, labels: np.ndarray,
        memories: Sequence[Memory] | None = None, rows: int = 8192, min_chunk: int = 1024,
        sparse_first_layer: bool = True, compile_post: bool = False, method: str = "auto",
        int8: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        keep_freed_memory()  # each call frees and reallocates large tensors: see mcel_train.malloc_tuning
        self.method = method
        self.net = net
        # the dense path's products on oneDNN's int8 kernels where exact (mcel_train.int8_products)
        self.int8 = int8 and int8_products.available()
        self.raw_x = x.to(torch.float32)  # the images, for maps that fault the input quantizer
        self.x = net.encode_input(self.raw_x)  # what the first layer sees
        self.labels = np.asarray(labels)
        self.memories = layer_memories(net, memories)
        self.memories_given = [m for m in self.memories if m is not None]
        self.rows = int(rows)
        self.min_chunk = int(min_chunk)
        for layer in net.layers:
            if hasattr(layer.post, "compiled"):
                layer.post.compiled = compile_post
        self.max_abs_input = float(self.x.abs().max())
        first = net.layers[0]
        # images of integers 0..255: a dense first layer multiplies them as uint8 codes on the
        # int8 kernel, which replaces the clean layer 0 plus each map's sparse correction (then
        # count and transpose): sfc_w2a2, 20 maps x 10k images, two threads, fastest of 3: 0.207
        # / 0.219 / 0.261 s -> 0.202 / 0.208 / 0.222 s at 1e-4 / 1e-3 / 1e-2 (one-off A/B)
        self.int8_pixels = self.int8 and bool(
            torch.equal(self.x, self.x.round()) and self.x.min() >= 0 and self.x.max() <= 255)
        self.sparse_first = sparse_first_layer and first.conv is None and not (
            self.int8_pixels and 0 in int8_products.eligible(net, pixels=True))
        self._clean_acc0: torch.Tensor | None = None
        self._x_t: torch.Tensor | None = None  # see _inputs_by_feature
        if self.sparse_first:
            self._clean_acc0 = self._dense_acc0(torch.as_tensor(first.weight))
        # A conv layer 0 (one input channel: a memory-bound convolution, and the widest
        # activations of the network) is run once clean, on the first batched evaluation; a map
        # then recomputes only the output channels its flipped weights sit in.
        self.conv_first = sparse_first_layer and first.conv is not None
        self._clean_out0: torch.Tensor | None = None
        self._difference: DifferenceEvaluator | None = None
        self._choice: dict[object, str] = {}  # auto: the faster path per fault rate
        # auto: the dense path's seconds per map, as last timed (it does not depend on the rate)
        self._dense_per_map: float | None = None
        # auto: the difference path's estimate per rate, made before the dense path was timed
        self._estimates: dict[object, float] = {}
        # auto: per rate, the fastest seconds per map each path took on a whole call there, and
        # the difference estimate the rate's choice was made with (see _observe)
        self._seen: dict[object, dict[str, float]] = {}
        self._dense_real: float | None = None  # auto: the dense path's fastest whole call, per map
        self._explore: dict[object, str] = {}  # auto: a rate's next call tries this path once
        self.timing: dict[str, float] = {"dense": 0.0, "difference": 0.0, "probe": 0.0}

    @property
    def difference(self) -> DifferenceEvaluator | None:
        """The difference evaluator (built on first use; ``None`` if the network lacks the
        per-channel post-ops it needs, e.g. Brevitas post-ops without thresholds)."""
        if self._difference is None and supports(self.net):
            self._difference = DifferenceEvaluator(self.net, self.x, self.memories_given, int8=self.int8)
        return self._difference

    def _dense_acc0(self, w: torch.Tensor) -> torch.Tensor:
        bound = self.max_abs_input * float(w.abs().sum(-1).max())
        dtype = torch.float32 if bound < FLOAT32_EXACT else torch.float64
        return w.to(dtype) @ self.x.to(dtype).T  # (out, N): channels first, like the deltas

    def _conv_out0(self, batch: int = 1024) -> torch.Tensor:
        """The clean output (post-op and pool) of a conv layer 0 for every image, in the
        smallest integer dtype that holds it exactly (float32 if it is not integral)."""
        w0 = self.net.prepare(None, self.max_abs_input)[0]
        out = torch.cat([self._out0(self.x[lo:lo + batch], w0[0]) for lo in range(0, len(self.x), batch)])
        layer = self.net.layers[0]
        if torch.equal(out, out.round()):
            for dtype in (torch.int8, torch.int16):
                if layer.post.max_abs_out <= torch.iinfo(dtype).max:
                    return out.to(dtype)
        return out

    def _out0(self, x: torch.Tensor, w: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """A conv layer 0's output on images ``x`` for the weights ``w (out, in)``, or for the
        output ``channels`` of them only."""
        layer = self.net.layers[0]
        if layer.conv is not None and x.dim() == 2:
            x = x.reshape(len(x), *self.net.input_shape)
        post = layer.post
        if channels is not None:
            w, post = w[channels], post.channels(channels)
        acc = layer.accumulate(x.to(w.dtype), w.unsqueeze(0), True)
        return (post.then_pool(acc, layer.pool) if layer.pool else post(acc)).to(torch.float32)

    def _first_out(self, w0: torch.Tensor | None, prepared0: torch.Tensor, lo: int, hi: int,
                   codes: int8_products.Codes | None = None) -> torch.Tensor:
        """A conv layer 0's outputs for images ``lo:hi``: the clean ones shared by all maps when
        none faults layer 0, else ``(N, M * C, H, W)`` with each map's faulty channels redone;
        float32 levels, or, given the next layer's ``codes``, its uint8 codes (a quarter of the
        memory, and no float copy for the int8 convolution to convert)."""
        if self._clean_out0 is None:
            self._clean_out0 = self._conv_out0()
        clean = self._clean_out0[lo:hi]
        clean = clean.to(torch.float32) if codes is None else codes.of(clean)
        if w0 is None:
            return clean
        m, c = prepared0.shape[:2]
        changed = (w0 != torch.as_tensor(self.net.layers[0].weight)).any(-1)  # (M, C)
        out = clean.repeat(1, m, 1, 1)
        for k in changed.any(1).nonzero().flatten().tolist():
            chans = changed[k].nonzero().flatten()
            redone = self._out0(self.x[lo:hi], prepared0[k], chans)
            out[:, k * c + chans] = redone if codes is None else codes.of(redone)
        return out

    def stacked_weights(self, fmaps: Sequence[FaultMap]) -> list[torch.Tensor | None]:
        """Per layer, the ``(M, out, in)`` faulty integer weights (``None``: no faults there)."""
        out: list[torch.Tensor | None] = []
        for layer, mem in zip(self.net.layers, self.memories, strict=True):
            hit = mem is not None and any(len(f.for_memory(mem.name)[0]) for f in fmaps)
            if not hit:
                out.append(None)
                continue
            stacked = apply_maps_stacked(layer.weight, mem, fmaps)
            out.append(torch.from_numpy(stacked))
        return out

    def _first_delta(self, w0: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """``W_faulty - W_clean`` of layer 0 for all maps as one sparse CSR ``(M * out, in)``."""
        if w0 is None:
            return None
        delta = (w0 - torch.as_tensor(self.net.layers[0].weight)).reshape(-1, w0.shape[-1])
        rows, cols = delta.nonzero(as_tuple=True)  # row-major order: already CSR-sorted
        return csr_matrix(rows, cols, delta[rows, cols].to(dtype), tuple(delta.shape))

    def _first_acc(
        self, delta: torch.Tensor | None, m: int, lo: int, hi: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Layer-0 accumulators in channels-first layout ``(M, out, N)`` (no transposes)."""
        clean = self._clean_acc0[:, lo:hi].to(dtype)
        if delta is None:
            return clean.unsqueeze(0).expand(m, *clean.shape)
        corr = sparse_mm(delta, self._inputs_by_feature(dtype)[:, lo:hi])
        return corr.reshape(m, -1, hi - lo).add_(clean)

    def _inputs_by_feature(self, dtype: torch.dtype) -> torch.Tensor:
        """The images as ``(in, N)`` rows by input feature, made once per dtype: the sparse
        product reads a feature's row per non-zero, and on the transposed view of ``x`` it took
        3.7 ms instead of 2.1 ms (8 maps x 4000 flips, 1024 images; one-off timing)."""
        if self._x_t is None or self._x_t.dtype != dtype:
            self._x_t = self.x.to(dtype).T.contiguous()
        return self._x_t

    def evaluate(self, fmaps: Sequence[FaultMap]) -> MapEvaluation:
        """Accuracy and predictions for each of ``fmaps`` (an empty map = the clean network).

        ``method`` decides the path: ``dense`` (maps batched, every image through every layer),
        ``difference`` (:mod:`mcel_train.difference`: the clean network once, per map only what
        differs) or ``auto``: per fault rate the first call estimates the difference path's time
        per map; below the dense path's floor (:meth:`dense_floor`) it is kept at once, else the
        dense path is timed and the faster kept. The dense path is timed on two
        small image chunks of its first group of maps (:meth:`_probe_chunks`; the group goes on
        if dense wins, only those chunks are lost if not), or, with too few images for that, by
        running that group whole before the tail takes the chosen path. At later rates the dense
        time is known and only the estimate runs. Each call's real time then revises the rate's
        choice for the calls after it (:meth:`_observe`). Both paths are exact, so the choice changes
        the time, never a prediction. Under ``auto``, maps of several rates in one call are
        evaluated rate by rate, each with its own choice.
        """
        if len(fmaps) > 1 and all(len(f) == 0 for f in fmaps):
            # the clean network, once (no probe: its time says nothing of a faulty map's)
            return self._evaluate_dense(fmaps)
        by_rate = self._rate_groups(fmaps)
        if len(by_rate) > 1:
            preds = np.empty((len(fmaps), len(self.labels)), dtype=np.int64)
            for idx in by_rate:
                preds[idx] = self.evaluate([fmaps[k] for k in idx]).predictions
            return MapEvaluation((preds == self.labels[None, :]).mean(axis=1), preds)
        path = self._floor_choice(fmaps, self._known_dense_choice(fmaps, self._path(fmaps), [None] * len(fmaps)),
                                  [None] * len(fmaps))
        chunk, group = self._dense_plan(len(fmaps))
        probe = min(chunk, max(PROBE_MIN_IMAGES, len(self.labels) // PROBE_SHARE))
        if path == "probe" and len(self.labels) >= (PROBE_CHUNKS + 1) * probe:
            return self._probe_chunks(fmaps, chunk, probe, group)
        k = self._probe_head(fmaps, path, group)
        if k:
            head = self._dense_maybe_probe(fmaps[:k], [None] * k, self._evaluate_dense, path)
            tail = self.evaluate(fmaps[k:])
            return MapEvaluation(np.concatenate([head.accuracy, tail.accuracy]),
                                 np.concatenate([head.predictions, tail.predictions]))
        t0 = time.perf_counter()
        if path != "difference":
            result = self._dense_maybe_probe(fmaps, [None] * len(fmaps), self._evaluate_dense, path)
            self._observe(fmaps, path, time.perf_counter() - t0)
            return result
        logits = self._difference_logits(fmaps, [None] * len(fmaps))
        self._observe(fmaps, path, time.perf_counter() - t0)
        preds = predict(torch.from_numpy(logits)).numpy()
        acc = (preds == self.labels[None, :]).mean(axis=1)
        return MapEvaluation(accuracy=acc, predictions=preds)

    def _probe_chunks(self, fmaps: Sequence[FaultMap], chunk: int, probe: int, group: int) -> MapEvaluation:
        """A rate's first ``auto`` call: the dense path runs its first group of maps on
        ``PROBE_CHUNKS`` image chunks of ``probe`` images, the fastest one's time kept (the
        first may carry one-off work: compiling post-ops, the clean conv layer 0), which with
        the group's preparation gives its time per map; then the estimate decides. Dense: the
        group finishes its images in chunks of ``chunk`` and the other maps follow dense.
        Difference: every map takes it, and only the probe's chunks were spent."""
        head = list(fmaps[:group])
        n = len(self.labels)
        chunks = self._group_chunks(head, _probe_bounds(probe) + _chunk_bounds(PROBE_CHUNKS * probe, n, chunk))
        choice, done = self._timed_probe(chunks, fmaps, [None] * len(fmaps), len(head), probe)
        if choice != "dense":
            return self.evaluate(fmaps)
        t0 = time.perf_counter()
        preds = np.empty((len(head), len(self.labels)), dtype=np.int64)
        with torch.no_grad():
            for lo, hi, lg in (*done, *chunks):
                preds[:, lo:hi] = predict(lg).numpy()
        self.timing["dense"] += time.perf_counter() - t0
        head_eval = MapEvaluation((preds == self.labels[None, :]).mean(axis=1), preds)
        tail = self.evaluate(fmaps[group:])
        return MapEvaluation(np.concatenate([head_eval.accuracy, tail.accuracy]),
                             np.concatenate([head_eval.predictions, tail.predictions]))

    def logits(self, fmaps: Sequence[FaultMap],
               posts: Sequence[Mapping[int, PostOp] | None] | None = None) -> np.ndarray:
        """Integer logits ``(M, N, classes)`` of each map (what an accelerator outputs).

        ``posts``: per map, faulty post-ops by layer index (threshold-memory faults). The path
        follows ``method`` as in :meth:`evaluate` (``auto``: rate by rate; ``mcel sim`` asks for
        all its rates' maps in one call).
        """
        posts = list(posts) if posts is not None else [None] * len(fmaps)
        if len(fmaps) > 1 and all(len(f) == 0 and not p for f, p in zip(fmaps, posts, strict=True)):
            # the clean network, once (no probe: its time says nothing of a faulty map's)
            return np.repeat(self._dense_logits(fmaps[:1], posts[:1]), len(fmaps), axis=0)
        by_rate = self._rate_groups(fmaps)
        if len(by_rate) > 1:
            out = np.empty((len(fmaps), len(self.labels), self.net.layers[-1].weight.shape[0]), dtype=np.int64)
            for idx in by_rate:
                out[idx] = self.logits([fmaps[k] for k in idx], [posts[k] for k in idx])
            return out
        path = self._floor_choice(fmaps, self._known_dense_choice(fmaps, self._path(fmaps), posts), posts)
        probe = max(PROBE_MIN_IMAGES, len(self.labels) // PROBE_SHARE)
        if path == "probe" and len(self.labels) >= (PROBE_CHUNKS + 1) * probe:
            return self._probe_logits(fmaps, posts, probe)
        k = self._probe_head(fmaps, path, self._dense_plan(len(fmaps))[1])
        if k:
            head = self._dense_maybe_probe(fmaps[:k], posts[:k], lambda f: self._dense_logits(f, posts[:k]), path)
            return np.concatenate([head, self.logits(fmaps[k:], posts[k:])])
        t0 = time.perf_counter()
        if path != "difference":
            out = self._dense_maybe_probe(fmaps, posts, lambda f: self._dense_logits(f, posts), path)
            self._observe(fmaps, path, time.perf_counter() - t0)
            return out
        # A faulty input quantizer changes the input itself: such (rare) maps go dense.
        faulty_input = [k for k, p in enumerate(posts) if p and INPUT_POST in p]
        if not faulty_input:
            out = self._difference_logits(fmaps, posts)
            self._observe(fmaps, path, time.perf_counter() - t0)
            return out
        own = [k for k in range(len(fmaps)) if k not in set(faulty_input)]
        out = np.empty((len(fmaps), len(self.labels), self.net.layers[-1].weight.shape[0]), dtype=np.int64)
        out[own] = self._difference_logits([fmaps[k] for k in own], [posts[k] for k in own])
        out[faulty_input] = self._dense_logits([fmaps[k] for k in faulty_input], [posts[k] for k in faulty_input])
        return out

    def _probe_logits(self, fmaps: Sequence[FaultMap], posts: list[Mapping[int, PostOp] | None],
                      probe: int) -> np.ndarray:
        """A rate's first ``auto`` call of :meth:`logits`, as :meth:`_probe_chunks` for
        :meth:`evaluate`: the dense path's first group of maps runs on ``PROBE_CHUNKS`` slices
        of ``probe`` images, the fastest one's time kept, then the estimate decides; the slices
        are kept if dense wins and are all that is lost if not."""
        k = min(len(fmaps), self._dense_plan(len(fmaps))[1])
        n = len(self.labels)
        steps = self._dense_logit_steps(fmaps[:k], posts[:k], _probe_bounds(probe)
                                        + _chunk_bounds(PROBE_CHUNKS * probe, n, self._dense_plan(k)[0]))
        choice, done = self._timed_probe(steps, fmaps, posts, k, probe)
        if choice != "dense":
            return self.logits(fmaps, posts)
        t0 = time.perf_counter()
        head = np.empty((k, n, self.net.layers[-1].weight.shape[0]), dtype=np.int64)
        for lo, hi, lg in (*done, *steps):
            head[:, lo:hi] = lg
        self.timing["dense"] += time.perf_counter() - t0
        return np.concatenate([head, self.logits(fmaps[k:], posts[k:])]) if len(fmaps) > k else head

    def _timed_probe(self, steps: Iterator, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None],
                     head: int, probe: int) -> tuple[str, list]:
        """Time a dense group of ``head`` maps (``steps``, as :meth:`_group_chunks` yields them:
        its preparation, then ``PROBE_CHUNKS`` slices of ``probe`` images, each timed, the
        fastest kept: the first may carry one-off work, and a shared machine's noise only adds
        time), keep its time per map on all images, and let the estimate choose the rate's path.
        Returns the choice and the slices done."""
        t0 = time.perf_counter()
        with torch.no_grad():
            next(steps)  # the group's preparation (stacked weights, first-layer deltas), once
            t_prepare = time.perf_counter() - t0
            done = []
            t_slice = float("inf")
            for _ in range(PROBE_CHUNKS):
                t1 = time.perf_counter()
                done.append(next(steps))
                t_slice = min(t_slice, time.perf_counter() - t1)
        self.timing["dense"] += time.perf_counter() - t0
        self._dense_per_map = (t_prepare + t_slice * len(self.labels) / probe) / head
        choice = self._probe(fmaps, self._dense_per_map, posts)
        self._choice[self._rate_key(fmaps[0])] = choice
        return choice, done

    def _rate_groups(self, fmaps: Sequence[FaultMap]) -> list[list[int]]:
        """Under ``auto``, the indices of ``fmaps`` grouped by rate (fault model and rate), in
        order of first appearance: the choice between the paths is made per rate, on maps of
        that rate. Maps that record no rate form one group; one group for the other methods."""
        if self.method != "auto":
            return [list(range(len(fmaps)))]
        groups: dict[tuple, list[int]] = {}
        for k, fmap in enumerate(fmaps):
            groups.setdefault(self._rate_key(fmap) if "rate" in fmap.meta else ("faults",), []).append(k)
        return list(groups.values())

    def _rate_key(self, fmap: FaultMap) -> tuple:
        meta = fmap.meta
        return (meta.get("fault_model"), meta["rate"]) if "rate" in meta else ("faults", len(fmap))

    def _path(self, fmaps: Sequence[FaultMap]) -> str:
        """``dense``, ``difference``, or ``probe`` (auto's first call at a rate)."""
        if self.method == "dense" or not fmaps:
            return "dense"
        if self.method == "auto" and len(fmaps) < AUTO_MIN_MAPS:
            return "dense"  # too few maps to repay the clean state and the probe
        if self.difference is None:
            return "dense"
        if self.method == "difference":
            return "difference"
        key = self._rate_key(fmaps[0])
        return self._explore.pop(key) if key in self._explore else self._choice.get(key, "probe")

    def _known_dense_choice(self, fmaps: Sequence[FaultMap], path: str,
                            posts: Sequence[Mapping[int, PostOp] | None]) -> str:
        """A probe call once the dense path has been timed (at another rate): its time per map
        does not depend on the rate, so only the difference path is estimated and no dense
        head runs; the choice is kept for the rate."""
        if path != "probe" or self._dense_per_map is None:
            return path
        choice = self._probe(fmaps, self._dense_per_map, posts)
        self._choice[self._rate_key(fmaps[0])] = choice
        return choice

    def _floor_choice(self, fmaps: Sequence[FaultMap], path: str,
                      posts: Sequence[Mapping[int, PostOp] | None]) -> str:
        """A probe call before the dense path was ever timed: the difference path is estimated
        first, and if it beats the dense path's floor (:meth:`dense_floor`: the dense path can
        only be slower) by the margin its errors need (``FLOOR_MARGIN``) it is kept for the
        rate without timing the dense path, whose probe costs most of a small call's time
        (paper VGG3, 16 maps of 1e-4 on 2000 images: the dense probe 1.1-1.4 s against 1.3 s
        for the difference path's whole run). Otherwise the estimate waits for the dense probe
        (:meth:`_probe`)."""
        if path != "probe" or self._dense_won_below(fmaps):
            return path
        key = self._rate_key(fmaps[0])
        estimate = self._estimate(fmaps, posts)
        if estimate >= FLOOR_MARGIN * self.dense_floor(fmaps):
            self._estimates[key] = estimate
            return path
        self._choice[key] = "difference"
        return "difference"

    def dense_floor(self, fmaps: Sequence[FaultMap]) -> float:
        """Seconds per map below which the dense path cannot go on maps like ``fmaps``, from
        the work it does per map at the best rate this process measured for each kind of it:

        - its multiply-adds (every layer's weights times its outputs per image, on all images;
          layer 0 left out where it is a sparse correction of the clean layer 0 or a conv layer
          0 computed apart) at :func:`matmul_rate`, or :func:`mcel_train.int8_products.rate`
          on a layer that may run on the int8 kernel;
        - packing each int8 layer that the map's faults reach, once per map
          (:func:`mcel_train.int8_products.pack_rate`);
        - counting each of its layers' outputs (after the pool) into the next int8 layer's
          codes (:func:`mcel_train.threshold_count.count_rate`).

        Its other post-ops, pools, smaller products and float64 layers only add to that. With
        only the multiply-adds the floor was a quarter of the paper VGG3's int8 dense path
        (0.017 against 0.07-0.08 s per map on 2000 images), so the dense path was timed at
        every first rate even where the difference path's estimate was half of it."""
        first = 1 if self.sparse_first or self.conv_first else 0
        threads = torch.get_num_threads()
        on_int8 = set(int8_products.eligible(self.net, self.int8_pixels)) if self.int8 else set()
        layers = [(i, layer) for i, layer in enumerate(self.net.layers) if i >= first]
        seconds_per_image = sum(
            self.difference.outputs_per_image[i] * layer.weight.shape[1]
            / (int8_products.rate(threads) if i in on_int8 else matmul_rate(threads))
            for i, layer in layers)
        counted = sum(self.difference.pooled_per_image[i] / count_rate(threads, layer.post.thresholds.shape[1])
                      for i, layer in layers if i + 1 in on_int8 and isinstance(layer.post, ThresholdPostOp))
        packed = [(i, mem) for (i, layer), mem in zip(layers, self.memories[first:], strict=True)
                  if i in on_int8 and mem is not None]
        pack_seconds = {i: layer.weight.size / int8_products.pack_rate(threads, layer.conv is not None)
                        for i, layer in layers if i in on_int8}
        packing = sum(pack_seconds[i] for fmap in fmaps for i, mem in packed if len(fmap.for_memory(mem.name)[0]))
        return (seconds_per_image + counted) * len(self.labels) + packing / max(1, len(fmaps))

    @staticmethod
    def _probe_head(fmaps: Sequence[FaultMap], path: str, dense_group: int) -> int:
        """How many of a probe call's maps run dense (one dense group) before the rest take the
        chosen path; 0 when the rest would be too few to gain from the choice."""
        if path != "probe":
            return 0
        head = min(len(fmaps), dense_group)
        return head if len(fmaps) - head >= AUTO_MIN_MAPS else 0

    def _dense_plan(self, m: int) -> tuple[int, int]:
        """The dense path's ``(images per step, maps per group)`` for ``m`` maps: groups of maps
        x chunks of images, so that every matmul has >= ``min_chunk`` rows per map."""
        n = len(self.labels)
        chunk = min(n, max(self.min_chunk, self.rows // max(1, m)))
        chunk = -(-n // -(-n // chunk))  # equal chunks: few distinct shapes
        return chunk, max(1, self.rows // chunk)

    def _dense_maybe_probe(self, fmaps, posts, dense, path: str):
        """The dense path; on a ``probe`` call it is timed and the other path is estimated."""
        t0 = time.perf_counter()
        result = dense(fmaps)
        if path == "probe":
            self._dense_per_map = (time.perf_counter() - t0) / len(fmaps)
            self._choice[self._rate_key(fmaps[0])] = self._probe(fmaps, self._dense_per_map, posts)
        return result

    def _difference_logits(self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None],
                           ) -> np.ndarray:
        """Logits of every map by the difference path: the clean logits plus its changed rows."""
        t0 = time.perf_counter()
        results = self.difference.run_many(fmaps, posts)
        self.timing["difference"] += time.perf_counter() - t0
        clean = np.rint(self.difference.clean_logits.numpy()).astype(np.int64)
        out = np.repeat(clean[None], len(fmaps), 0)
        for k, res in enumerate(results):
            if len(res.rows):
                out[k, res.rows] = res.logits
        return out

    def _dense_logits(self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None],
                      lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The dense path's logits ``(M, hi - lo, classes)`` of images ``lo`` to ``hi``:
        weight-only maps in the groups and image chunks of :meth:`evaluate`'s dense path (so
        memory stays within the ``rows`` budget however many maps and images), maps with faulty
        post-ops one by one with those post-ops swapped in for the run, in chunks too."""
        t0 = time.perf_counter()
        hi = len(self.labels) if hi is None else hi
        out = np.empty((len(fmaps), hi - lo, self.net.layers[-1].weight.shape[0]), dtype=np.int64)
        plain = [k for k, p in enumerate(posts) if not p]
        chunk, group = self._dense_plan(len(plain))
        for b in range(0, len(plain), group):
            ids = plain[b:b + group]
            steps = self._dense_logit_steps([fmaps[k] for k in ids], [None] * len(ids), _chunk_bounds(lo, hi, chunk))
            next(steps)
            for a, z, lg in steps:
                out[ids, a - lo:z - lo] = lg
        for k, p in enumerate(posts):
            if p:
                out[k] = self._dense_logits_with_posts(fmaps[k], p, lo, hi)
        self.timing["dense"] += time.perf_counter() - t0
        return out

    def _dense_logit_steps(self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None],
                           bounds: Sequence[tuple[int, int]]) -> Iterator:
        """One group of maps (the weight-only ones at most one dense group) on the dense path,
        one image range ``(lo, hi)`` of ``bounds`` per step, as :meth:`_group_chunks`: first
        ``None`` once the group is prepared, then ``(lo, hi, integer logits (maps, hi - lo,
        classes))``; maps with faulty post-ops run one by one with them swapped in."""
        plain = [k for k, p in enumerate(posts) if not p]
        chunks = self._group_chunks([fmaps[k] for k in plain], bounds) if plain else None
        if chunks is not None:
            with torch.no_grad():
                next(chunks)
        yield None
        for lo, hi in bounds:
            out = np.empty((len(fmaps), hi - lo, self.net.layers[-1].weight.shape[0]), dtype=np.int64)
            if chunks is not None:
                with torch.no_grad():
                    out[plain] = np.rint(next(chunks)[2].numpy())
            for k, p in enumerate(posts):
                if p:
                    out[k] = self._dense_logits_with_posts(fmaps[k], p, lo, hi)
            yield lo, hi, out

    def _dense_logits_with_posts(self, fmap: FaultMap, posts: Mapping[int, PostOp], lo: int, hi: int) -> np.ndarray:
        """One map's dense logits ``(hi - lo, classes)`` with its faulty post-ops swapped in,
        in image chunks."""
        layer_posts = {i: post for i, post in posts.items() if i != INPUT_POST}
        weights = self.stacked_weights([fmap])
        out = np.empty((hi - lo, self.net.layers[-1].weight.shape[0]), dtype=np.int64)
        saved = {i: self.net.layers[i].post for i in layer_posts}
        try:
            for i, post in layer_posts.items():
                self.net.layers[i].post = post
            for a, z in _chunk_bounds(lo, hi, self._dense_plan(1)[0]):
                x = (self.net.encode_input(self.raw_x[a:z], posts[INPUT_POST]) if INPUT_POST in posts
                     else self.x[a:z])
                lg = self.net.forward(x, weights, max_abs_input=max(self.max_abs_input, float(x.abs().max())))
                out[a - lo:z - lo] = np.rint(lg[0].numpy())
        finally:
            for i, post in saved.items():
                self.net.layers[i].post = post
        return out

    def _probe(self, fmaps: Sequence[FaultMap], dense_per_map: float,
               posts: Sequence[Mapping[int, PostOp] | None]) -> str:
        """``auto``'s cost estimate: the difference path's time per map, estimated on a slice of
        the images for a group of these maps (:meth:`DifferenceEvaluator.estimate_seconds`),
        against the time the dense path took per map; the faster path is kept for the rate.
        A rate above one where the dense path already won keeps it without an estimate: the
        difference path's cost grows with the faults, the dense path's does not."""
        if self._dense_won_below(fmaps):
            return "dense"
        estimate = self._estimates.pop(self._rate_key(fmaps[0]), None)
        if estimate is None:
            estimate = self._estimate(fmaps, posts)
        self._seen.setdefault(self._rate_key(fmaps[0]), {})["estimate"] = estimate
        return "difference" if estimate < dense_per_map else "dense"

    def _observe(self, fmaps: Sequence[FaultMap], path: str, seconds: float) -> None:
        """Under ``auto``, a whole call's real time revises the rate's choice for the calls that
        follow (a sweep evaluates a rate in batches of maps). The first choice rests on guesses:
        the difference estimate (on sfc_w2a2, 10k images, 20 maps: 0.8-1.8x the real time at
        1e-4 and 1e-3) and the dense probe (0.7-1.3x). Real times replace them: the dense
        path's fastest whole call per map at any rate (its cost does not depend on the rate),
        the difference path's at this rate. With both real, the faster is kept. With the other
        path only guessed, a real time within ``EXPLORE_BAND`` of its guess makes the next call
        try it once (on sfc_w2a2 at 3e-4 and 5e-4 the two paths are within 1.5x and the
        guesses chose either); outside the band the guess decides."""
        if self.method != "auto" or path not in ("dense", "difference") or len(fmaps) < AUTO_MIN_MAPS:
            return
        key = self._rate_key(fmaps[0])
        if key not in self._choice:
            return
        seen = self._seen.setdefault(key, {})
        seen[path] = here = min(seen.get(path, float("inf")), seconds / len(fmaps))
        if path == "dense":
            self._dense_real = self._dense_per_map = min(self._dense_real or float("inf"), here)
        other = "difference" if path == "dense" else "dense"
        real = self._dense_real if other == "dense" else seen.get("difference")
        if real is not None:
            self._choice[key] = path if here <= real else other
            return
        guess = self._dense_per_map if other == "dense" else seen.get("estimate")
        if guess is None:
            return
        if guess / EXPLORE_BAND < here < guess * EXPLORE_BAND:
            self._explore[key] = other
        else:
            self._choice[key] = path if here <= guess else other

    def _dense_won_below(self, fmaps: Sequence[FaultMap]) -> bool:
        """Whether the dense path won at a rate at or below these maps' (same fault model): the
        difference path's cost grows with the faults, the dense path's does not."""
        key = self._rate_key(fmaps[0])
        return any(k[0] == key[0] and k[1] <= key[1] and c == "dense" for k, c in self._choice.items())

    def _estimate(self, fmaps: Sequence[FaultMap], posts: Sequence[Mapping[int, PostOp] | None]) -> float:
        """The difference path's estimated seconds per map (timed as ``probe``)."""
        # the input quantizer's faults never take the difference path: leave them out
        posts = [{i: q for i, q in (p or {}).items() if i != INPUT_POST} for p in posts]
        t0 = time.perf_counter()
        try:
            return self.difference.estimate_seconds(fmaps, posts)
        finally:
            self.timing["probe"] += time.perf_counter() - t0

    def _evaluate_dense(self, fmaps: Sequence[FaultMap]) -> MapEvaluation:
        t0 = time.perf_counter()
        try:
            return self._evaluate_batched(fmaps)
        finally:
            self.timing["dense"] += time.perf_counter() - t0

    def _evaluate_batched(self, fmaps: Sequence[FaultMap]) -> MapEvaluation:
        m = len(fmaps)
        if m > 1 and all(len(f) == 0 for f in fmaps):  # e.g. rate 0: evaluate once
            one = self._evaluate_batched(fmaps[:1])
            return MapEvaluation(np.repeat(one.accuracy, m), np.repeat(one.predictions, m, 0))
        preds = np.empty((m, len(self.labels)), dtype=np.int64)
        chunk, group = self._dense_plan(m)
        with torch.no_grad():
            for g0 in range(0, m, group):
                sub = fmaps[g0:g0 + group]
                preds[g0:g0 + len(sub)] = self._evaluate_group(sub, chunk)
        acc = (preds == self.labels[None, :]).mean(axis=1)
        return MapEvaluation(accuracy=acc, predictions=preds)

    def _evaluate_group(self, fmaps: Sequence[FaultMap], chunk: int) -> np.ndarray:
        preds = np.empty((len(fmaps), len(self.labels)), dtype=np.int64)
        chunks = self._group_chunks(fmaps, _chunk_bounds(0, len(self.labels), chunk))
        next(chunks)
        for lo, hi, lg in chunks:
            preds[:, lo:hi] = predict(lg).numpy()
        return preds

    def _group_chunks(self, fmaps: Sequence[FaultMap], bounds: Sequence[tuple[int, int]]) -> Iterator:
        """One group of maps on the dense path, one image chunk ``(lo, hi)`` of ``bounds`` per
        step: first ``None`` once the group is prepared, then ``(lo, hi, integer logits (maps,
        hi - lo, classes))`` per chunk (so that ``auto`` can time a chunk and go on or stop)."""
        m = len(fmaps)
        weights = self.stacked_weights(fmaps)
        dtypes = self.net.exact_dtypes(weights, self.max_abs_input)
        int8 = int8_products.pack_layers(self.net, weights, dtypes, self.int8_pixels) if self.int8 else {}
        if self.sparse_first:
            int8.pop(0, None)
        prepared = self.net.prepare(weights, self.max_abs_input, skip=int8, dtypes=dtypes)
        delta0 = self._first_delta(weights[0], prepared[0].dtype) if self.sparse_first else None
        yield None
        for lo, hi in bounds:
            first = first_out = None
            if self.sparse_first:
                first = self._first_acc(delta0, m, lo, hi, prepared[0].dtype)
            if self.conv_first:
                first_out = self._first_out(weights[0], prepared[0], lo, hi, int8[1].codes if 1 in int8 else None)
            logits = self.net.forward(self.x[lo:hi], first_acc=first, prepared=prepared,
                                      first_acc_channels_first=self.sparse_first, first_out=first_out, int8=int8)
            if logits.shape[0] != m:
                logits = logits.expand(m, *logits.shape[1:])
            yield lo, hi, logits


@functools.cache
def matmul_rate(threads: int) -> float:
    """Multiply-adds per second of a float32 matmul of :data:`MATMUL_RATE_SHAPE` on
    ``threads`` torch threads (the current count: the argument keys the cache), the fastest of
    :data:`MATMUL_RATE_REPEAT` runs (a shared machine's noise only slows it down). Measured
    once per process, in some 50 ms."""
    m, k, n = MATMUL_RATE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    best = float("inf")
    with torch.no_grad():
        for _ in range(MATMUL_RATE_REPEAT):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return m * k * n / best


def _probe_bounds(probe: int) -> list[tuple[int, int]]:
    """The probe's ``PROBE_CHUNKS`` image slices of ``probe`` images, from the first image."""
    return [(k * probe, (k + 1) * probe) for k in range(PROBE_CHUNKS)]


def _chunk_bounds(start: int, n: int, chunk: int) -> list[tuple[int, int]]:
    """Images ``start`` to ``n`` as chunks ``(lo, hi)`` on the grid of ``chunk`` images: a
    shorter first one up to the grid, so that the others have the shapes every other group of
    maps has (a compiled post-op compiles once per shape)."""
    edges = [start, *range((start // chunk + 1) * chunk, n, chunk), n]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


def predict(int_logits: torch.Tensor) -> torch.Tensor:
    """Predicted class from integer logits: the largest, ties to the lowest class index.

    Ties are real in integer networks (and common under faults). Deciding them on the integer
    accumulators (the lowest class index wins a tie) keeps the prediction free of the float
    rounding that a Brevitas float forward would let break them.
    """
    # torch documents argmax as the first maximal index; the dense path's logits are a
    # transposed view, on which argmax took 1.5 ms instead of 0.34 ms with the copy (8 maps x
    # 1024 images x 10 classes)
    return int_logits.contiguous().argmax(-1)


def clean_logits(net: IntNetwork, x: torch.Tensor, chunk: int = CLEAN_CHUNK) -> torch.Tensor:
    """The fault-free network's integer logits of every image, ``chunk`` images per forward:
    one forward of the whole test set held every layer's activations at once (the paper VGG3
    on 10k images: 4 GB above the rest of its sweep's peak)."""
    with torch.no_grad():
        return torch.cat([net.forward(net.encode_input(x[lo:lo + chunk].to(torch.float32)))[0]
                          for lo in range(0, len(x), chunk)])


def accuracy_of(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Share of images whose predicted class (:func:`predict`) is the label."""
    return float((predict(logits).numpy() == np.asarray(labels)).mean())


def ties_of(logits: torch.Tensor) -> int:
    """Images whose two largest integer logits are equal (decided by the tie rule)."""
    top2 = torch.topk(logits, 2, dim=-1).values
    return int((top2[:, 0] == top2[:, 1]).sum())


def clean_accuracy(net: IntNetwork, x: torch.Tensor, labels: np.ndarray) -> float:
    """Accuracy of the fault-free integer network."""
    return accuracy_of(clean_logits(net, x), labels)
