"""The compiled threshold count equals ``sum_k(x >= T[c, k])`` in every layout the evaluator
feeds it, in one thread and in several."""

import pytest
import torch

from mcel_train import threshold_count as tc


def reference(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    view = (1, -1) + (1,) * (x.dim() - 2)
    return sum(((x >= t[:, k].to(x.dtype).reshape(view)).to(x.dtype) for k in range(t.shape[1])), torch.zeros_like(x))


@pytest.mark.parametrize("shape", [(37, 5), (3, 5, 41), (2, 5, 6, 7), (1, 5, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_k", [1, 3, 15])
@pytest.mark.parametrize("threads", [1, 2])
def test_count_equals_the_sum_of_comparisons(monkeypatch, shape, dtype, n_k, threads):
    """Channels on dim 1 of 2-D (channels last), 3-D and 4-D inputs; thresholds unsorted and
    equal to some inputs (``>=`` counts a tie); split over threads down to single rows."""
    gen = torch.Generator().manual_seed(n_k)
    x = torch.randint(-20, 21, shape, generator=gen).to(dtype)
    t = torch.randint(-20, 21, (shape[1], n_k), generator=gen).to(torch.float64)
    monkeypatch.setattr(tc, "MIN_PER_THREAD", 1 if threads > 1 else 1 << 40)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = tc.threshold_count(x, t)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, reference(x, t))
    x_t = x.transpose(0, 1)  # not contiguous: counted as its contiguous copy
    assert torch.equal(tc.threshold_count(x_t.transpose(0, 1), t), reference(x, t))


@pytest.mark.parametrize("shape", [(37, 5), (3, 5, 41), (2, 5, 6, 7)])
@pytest.mark.parametrize("threads", [1, 2])
def test_codes_are_the_same_count_as_bytes(monkeypatch, shape, threads):
    """``dtype=torch.uint8``: the count as the codes the int8 products read, equal to the
    count in the accumulators' own type, for up to 255 thresholds."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randint(-300, 301, shape, generator=gen).to(torch.float32)
    t = torch.randint(-300, 301, (shape[1], 255), generator=gen).to(torch.float64)
    monkeypatch.setattr(tc, "MIN_PER_THREAD", 1 if threads > 1 else 1 << 40)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = tc.threshold_count(x, t, dtype=torch.uint8)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got.to(torch.float32), reference(x, t))
    assert int(got.max()) > 200  # the high counts, where a narrower sum would wrap


@pytest.mark.parametrize("shape", [(37, 5), (3, 5, 41), (2, 5, 6, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_k", [0, 1, 3, 15])
@pytest.mark.parametrize("threads", [1, 2])
def test_unchanged_range_is_where_the_count_stays(monkeypatch, shape, dtype, n_k, threads):
    """By its definition: an integer change ``d`` keeps an element's count exactly when
    ``lo <= d <= hi``, tried for every ``d`` in a window wider than the thresholds' spread;
    thresholds unsorted, repeated, half-integers among them (an integer input reaches 2.5 at
    3), and elements beyond every threshold (an infinite side)."""
    gen = torch.Generator().manual_seed(10 * n_k + len(shape))
    x = torch.randint(-12, 13, shape, generator=gen).to(dtype)
    t = torch.randint(-16, 17, (shape[1], n_k), generator=gen).to(torch.float64) / 2
    if n_k > 2:
        t[0, 1] = t[0, 0]  # a repeated threshold
    monkeypatch.setattr(tc, "MIN_PER_THREAD", 1 if threads > 1 else 1 << 40)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    lo, hi = tc.unchanged_range(x, t)
    assert lo.dtype == hi.dtype == dtype and lo.shape == hi.shape == x.shape
    count = reference(x, t)
    for d in range(-30, 31):
        stays = reference(x + d, t) == count
        assert torch.equal(stays, (lo <= d) & (d <= hi)), d
    assert bool((lo <= 0).all() and (hi >= 0).all())
    if n_k:  # beyond every threshold: unbounded on that side only
        assert torch.isinf(hi).any() and not torch.isinf(lo[hi == torch.inf]).any()
    else:
        assert torch.isinf(lo).all() and torch.isinf(hi).all()
