"""The threshold count of :class:`mcel_train.intnet.ThresholdPostOp` as a compiled loop.

Every dense evaluation of a fault map ends each layer with ``sum_k(x >= T[c, k])`` over all its
accumulators. As tensor operations that is one pass over memory per threshold (and a boolean
tensor per pass): in a profile of sfc_w2a2's `mcel sweep` it took 10.6 s against 7.7 s for
the matrix products. One loop per channel row, in threads over rows (the loop releases the
GIL), made a dense evaluation 1.33-1.41x faster (25 maps at 1e-2 on 10k images: 1.09-1.14 s
-> 0.77-0.86 s, two torch threads, alternating processes), close to a fused ``torch.compile``
kernel (:func:`mcel_train.intnet._compiled_count`) without its one-off compile of tens of
seconds or its recompiles for every new shape.
"""

from __future__ import annotations

import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit

# Elements per thread below which a count runs in the calling thread alone (a thread hand-off
# costs some tens of microseconds)
MIN_PER_THREAD = 1 << 18
# count_rate: the fastest of this many counts of a block of this shape
RATE_REPEAT = 4
COUNT_SHAPE = (4096, 256)


@njit(cache=True, nogil=True)
def _count_rows(x: np.ndarray, t: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    """Channel rows ``lo:hi`` of ``x (A, C, B)`` (channels on axis 1, ``B > 1``): ``out[a, c,
    b] = sum_k(x[a, c, b] >= t[c, k])``, row ``r`` being ``(a, c) = divmod(r, C)``."""
    n_c, n_b = x.shape[1], x.shape[2]
    n_k = t.shape[1]
    for r in range(lo, hi):
        a, c = r // n_c, r % n_c
        row, o = x[a, c], out[a, c]
        t_0 = t[c, 0]
        for b in range(n_b):
            o[b] = row[b] >= t_0
        for k in range(1, n_k):
            t_k = t[c, k]
            for b in range(n_b):
                o[b] += row[b] >= t_k


@njit(cache=True, nogil=True)
def _count_last(x: np.ndarray, t_t: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of ``x (A, C)``, channels last: ``out[a, c] = sum_k(x[a, c] >= t_t[k,
    c])``. Two-dimensional on purpose: a row taken from a ``(A, C, 1)`` array is not known to
    be contiguous, and that loop did not vectorize (1.8 against 0.42 ns per element, 16 x 2048
    x 256 float32 accumulators, three thresholds, one thread; one-off timing)."""
    n_c, n_k = x.shape[1], t_t.shape[0]
    for a in range(lo, hi):
        row, o = x[a], out[a]
        t_0 = t_t[0]
        for c in range(n_c):
            o[c] = row[c] >= t_0[c]
        for k in range(1, n_k):
            t_k = t_t[k]
            for c in range(n_c):
                o[c] += row[c] >= t_k[c]


@njit(cache=True, nogil=True)
def _unchanged_rows(x: np.ndarray, t: np.ndarray, one: np.ndarray, lo_out: np.ndarray, hi_out: np.ndarray,
                    lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of ``x (A, C, B)``: per element the changes that keep its count of the
    sorted thresholds ``t[c]`` (see :func:`unchanged_range`), in ``x``'s float type. The
    count runs threshold by threshold over the whole row (branch-free, as :func:`_count_rows`);
    a binary search per element took 230 against 44 ms (6.3M float32 elements, 15 thresholds,
    one thread, same results; one-off timing): its branches mispredict."""
    n_c, n_b, n_k = x.shape[1], x.shape[2], t.shape[1]
    inf = np.inf
    count = np.empty(n_b, dtype=np.int32)
    for r in range(lo, hi):
        a, c = r // n_c, r % n_c
        row, t_c = x[a, c], t[c]
        lo_row, hi_row = lo_out[a, c], hi_out[a, c]
        count[:] = 0
        for k in range(n_k):
            t_k = t_c[k]
            for b in range(n_b):
                count[b] += row[b] >= t_k
        for b in range(n_b):
            k = count[b]
            v = row[b]
            lo_row[b] = (t_c[k - 1] - v) if k > 0 else -inf
            hi_row[b] = (t_c[k] - one[0] - v) if k < n_k else inf


@njit(cache=True, nogil=True)
def _unchanged_last(x: np.ndarray, t_t: np.ndarray, one: np.ndarray, lo_out: np.ndarray, hi_out: np.ndarray,
                    lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of ``x (A, C)``, channels last (as :func:`_count_last`), with the sorted
    thresholds as ``t_t (K, C)``; otherwise as :func:`_unchanged_rows`."""
    n_c, n_k = x.shape[1], t_t.shape[0]
    inf = np.inf
    count = np.empty(n_c, dtype=np.int32)
    for a in range(lo, hi):
        row, lo_row, hi_row = x[a], lo_out[a], hi_out[a]
        count[:] = 0
        for k in range(n_k):
            t_k = t_t[k]
            for c in range(n_c):
                count[c] += row[c] >= t_k[c]
        for c in range(n_c):
            k = count[c]
            v = row[c]
            lo_row[c] = (t_t[k - 1, c] - v) if k > 0 else -inf
            hi_row[c] = (t_t[k, c] - one[0] - v) if k < n_k else inf


def unchanged_range(x: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``count = sum_k(x >= T[c, k])`` on integer-valued float ``x`` (channels on dim 1),
    the inclusive range ``[lo, hi]`` of integer changes of ``x`` that keep the count: down to
    the nearest threshold at or below (``-inf`` if none), up to just before the nearest one
    above (``inf`` if none), in ``x``'s shape and float type. The thresholds' order does not
    matter; each is rounded up first (an integer ``x`` reaches it exactly there).

    A compiled loop, in threads over rows: as tensor operations (a sort, a search, two
    gathers, several copies) the paper VGG3's clean state on 2000 images spent 3.1 of its 5.1
    s here (cProfile, two threads)."""
    if not x.dtype.is_floating_point:
        raise TypeError("unchanged_range takes float accumulators")
    shape = x.shape
    x3 = x.detach().contiguous().reshape(shape[0], shape[1], -1)
    if x3.dtype not in (torch.float32, torch.float64):
        x3 = x3.to(torch.float64)
    t = torch.sort(torch.ceil(thresholds.to(torch.float64)), dim=1).values.to(x3.dtype).contiguous()
    lo, hi = torch.empty_like(x3), torch.empty_like(x3)
    one = np.ones(1, dtype=t.numpy().dtype)
    if x3.shape[2] == 1:  # channels last: whole rows of channels
        xn, ln, hn = (a.numpy()[:, :, 0] for a in (x3, lo, hi))
        _in_threads(_unchanged_last, (xn, np.ascontiguousarray(t.numpy().T), one, ln, hn), x3.shape[0], x3.numel())
    else:
        _in_threads(_unchanged_rows, (x3.numpy(), t.numpy(), one, lo.numpy(), hi.numpy()),
                    x3.shape[0] * x3.shape[1], x3.numel())
    return lo.reshape(shape).to(x.dtype), hi.reshape(shape).to(x.dtype)


def _in_threads(fn, args: tuple, rows: int, numel: int) -> None:
    """``fn(*args, lo, hi)`` over ``rows``, split among torch's thread count (the calling
    thread takes the first part) once each part has ``MIN_PER_THREAD`` elements."""
    parts = max(1, min(torch.get_num_threads(), rows, numel // MIN_PER_THREAD))
    if parts == 1:
        fn(*args, 0, rows)
        return
    bounds = np.linspace(0, rows, parts + 1).astype(np.int64)
    pool = _pool()
    futures = [pool.submit(fn, *args, int(lo), int(hi)) for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True)]
    fn(*args, 0, int(bounds[1]))
    for f in futures:
        f.result()


def threshold_count(x: torch.Tensor, thresholds: torch.Tensor, dtype: torch.dtype | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_k(x >= thresholds[c, k])`` in ``x``'s shape, channel ``c`` on dim 1 of ``x`` (a
    2-D ``(rows, C)`` or ``(A, C, ...)``); ``thresholds (C, K)`` in any order. Exact: integer
    comparisons and a count of at most ``K``. ``dtype``: the count's type (default ``x``'s;
    ``torch.uint8`` gives the codes that :mod:`mcel_train.int8_products` multiplies).
    ``out``: a contiguous tensor of ``x``'s shape and that type to write the count into."""
    dtype = x.dtype if dtype is None else dtype
    shape = x.shape
    x3 = x.detach().contiguous().reshape(shape[0], shape[1], -1)
    if x3.dtype not in (torch.float32, torch.float64):
        x3 = x3.to(torch.float64)
    # the loops write uint8 or the accumulators' float type; any other type is converted after
    store = dtype if dtype in (torch.uint8, torch.float32, torch.float64) else x3.dtype
    if out is not None and (out.shape != shape or out.dtype != store or not out.is_contiguous()):
        raise ValueError("out must be a contiguous uint8, float32 or float64 tensor of the input's shape")
    out = torch.empty(x3.shape, dtype=store) if out is None else out.view(x3.shape)
    if thresholds.shape[1] == 0:
        return out.zero_().reshape(shape).to(dtype)
    t = thresholds.to(x3.dtype).contiguous().numpy()
    xn, on = x3.numpy(), out.numpy()
    if x3.shape[2] == 1:  # channels last: whole rows of channels
        fn, args, rows = _count_last, (xn[:, :, 0], np.ascontiguousarray(t.T), on[:, :, 0]), x3.shape[0]
    else:
        fn, args, rows = _count_rows, (xn, t, on), x3.shape[0] * x3.shape[1]
    _in_threads(fn, args, rows, x3.numel())
    return out.reshape(shape).to(dtype)


@functools.cache
def count_rate(threads: int, thresholds: int) -> float:
    """Elements per second that :func:`threshold_count` reaches into uint8 codes with
    ``thresholds`` thresholds per channel on ``threads`` torch threads (the current count: the
    argument keys the cache), the fastest of :data:`RATE_REPEAT` counts of a channels-last
    :data:`COUNT_SHAPE` block (a shared machine's noise only slows it down)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-64, 64, COUNT_SHAPE, generator=gen).to(torch.float32)
    t = torch.sort(torch.randint(-64, 64, (COUNT_SHAPE[1], thresholds), generator=gen).double(), 1).values
    out = torch.empty(COUNT_SHAPE, dtype=torch.uint8)
    best = np.inf
    for _ in range(RATE_REPEAT + 1):  # the first count loads the compiled loop
        t0 = time.perf_counter()
        threshold_count(x, t, dtype=torch.uint8, out=out)
        best = min(best, time.perf_counter() - t0)
    return x.numel() / best


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The process's count threads, made on first use (the caller counts one part itself)."""
    return ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="threshold-count")
