"""The compiled threshold count equals ``sum_k(x >= T[c, k])`` in every layout the evaluator
feeds it, in one thread and in several."""

import pytest
import torch

from mcel_train import threshold_count as tc


def reference(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    view = (1, -1) + (1,) * (x.dim() - 2)
    return sum((x >= t[:, k].to(x.dtype).reshape(view)).to(x.dtype) for k in range(t.shape[1]))


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
