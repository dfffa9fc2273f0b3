"""The difference evaluator's dense-layer step as one compiled loop (numba).

At low fault rates most images differ from the clean network in only a few activations per
layer (on sfc_w2a2 at a rate of 1e-4, 1 to 2 % of a 256-wide layer). The exact update of one
such image is short: its changed inputs times the matching weight rows, plus the flipped
weights' own contribution, then two comparisons per output against the range in which the
output stays as it is (:meth:`mcel_train.intnet.PostOp.unchanged_range`). Written as tensor
operations, every step touches whole ``(images, outputs)`` arrays and the bookkeeping costs more
than a dense matrix product; fused into one loop per image it costs about ``outputs x (changed
inputs + 1)`` operations. :mod:`mcel_train.difference` calls it for dense layers whose post-op
is the clean one and which are not the logit layer.

All values are exact integers held in float32 (float64 where the layer needs it), so the order
of the additions does not change any result.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray, at_least: int) -> np.ndarray:
    b = np.empty(2 * a.shape[0] + at_least, a.dtype)
    b[: a.shape[0]] = a
    return b


# Reassociation lets the per-output loops vectorize; no "no infinities" flag: the unchanged
# ranges are infinite where an output has no threshold on that side.
_FAST = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FAST)
def dense_layer_crossings(active_pos, indptr, cols, vals, w_t, j_idx, d_j, lo, hi, pre):  # noqa: PLR0913
    """The accumulators of one dense layer that leave their unchanged range under one map.

    - ``active_pos`` ``(N,)``: per image its row in the CSR input change (``-1``: unchanged input);
    - ``indptr``, ``cols``, ``vals``: the changed inputs of those rows (CSR, rows ascending);
    - ``w_t`` ``(in, out)``: the faulty weights, rows by input;
    - ``j_idx`` ``(J,)`` and ``d_j`` ``(N, J)``: the output channels holding flipped weights and
      their accumulator change on the clean input (``dW @ x``);
    - ``lo``, ``hi`` ``(N, out)``: the clean accumulators' unchanged ranges;
    - ``pre``: ``W_faulty @ dx`` of the CSR rows, computed by the caller (a BLAS product when the
      input changes are dense), or an empty ``(0, out)`` array to compute it here from the CSR.

    Returns ``(image, output, accumulator change)`` of every crossing, images ascending, then
    outputs ascending. An image with an unchanged input can only change in the ``J`` channels.
    All arrays C-contiguous (rows are taken as 1-D views, which the loops vectorize over).
    """
    n = active_pos.shape[0]
    out_n = w_t.shape[1]
    cap = 4 * out_n + 1024
    rows = np.empty(cap, np.int64)
    outs = np.empty(cap, np.int64)
    dvals = np.empty(cap, w_t.dtype)
    k = 0
    delta = np.zeros(out_n, w_t.dtype)
    for i in range(n):
        if k + out_n > rows.shape[0]:  # room for every output of this image: no checks below
            rows, outs, dvals = _grow(rows, out_n), _grow(outs, out_n), _grow(dvals, out_n)
        a = active_pos[i]
        lo_i, hi_i, dj_i = lo[i], hi[i], d_j[i]
        if a < 0:
            for q in range(j_idx.shape[0]):
                o = j_idx[q]
                dv = dj_i[q]
                if dv < lo_i[o] or dv > hi_i[o]:
                    rows[k], outs[k], dvals[k] = i, o, dv
                    k += 1
            continue
        if pre.shape[0]:
            delta[:] = pre[a]
        else:
            delta[:] = 0
            for e in range(indptr[a], indptr[a + 1]):
                v = vals[e]
                w_row = w_t[cols[e]]
                for o in range(out_n):
                    delta[o] += v * w_row[o]
        for q in range(j_idx.shape[0]):
            delta[j_idx[q]] += dj_i[q]
        for o in range(out_n):
            dv = delta[o]
            if dv < lo_i[o] or dv > hi_i[o]:
                rows[k], outs[k], dvals[k] = i, o, dv
                k += 1
    return rows[:k], outs[:k], dvals[:k]


@njit(cache=True, nogil=True)
def threshold_changes(rows, outs, dvals, acc, clean_out, thresholds, sign, out_bias, out_mult):  # noqa: PLR0913
    """Output changes of the crossing accumulators under a threshold post-op
    (:class:`mcel_train.intnet.ThresholdPostOp`: ``bias + mult * sum_k(sign * acc >= T[c, k])``),
    computed in float64 like the post-op itself, as ``new - clean``."""
    out = np.empty(rows.shape[0], np.float32)
    n_k = thresholds.shape[1]
    for e in range(rows.shape[0]):
        i, o = rows[e], outs[e]
        x = sign[o] * (np.float64(acc[i, o]) + np.float64(dvals[e]))
        count = 0
        for k in range(n_k):
            count += x >= thresholds[o, k]
        out[e] = np.float32(out_bias + out_mult * count) - clean_out[i, o]
    return out
