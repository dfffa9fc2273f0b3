"""Losses: hand-computed values, gradients, limits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mcel_train.losses import MCEL, CrossEntropy, ModifiedHinge, SquaredHinge, make_loss


def test_mcel_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    target = torch.tensor([1])
    L, m = 10.0, 3.0
    z = [L * math.tanh(v / L) for v in (1.0, 2.0, 0.0)]
    z[1] -= m
    expected = -z[1] + math.log(sum(math.exp(v) for v in z))
    assert MCEL(margin=m, L=L)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_mcel_margin_zero_large_L_equals_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10, dtype=torch.float64) * 3, torch.randint(0, 10, (16,))
    mcel = MCEL(margin=0.0, L=1e6)(logits, target)
    assert mcel.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-9)


def test_mcel_clamp_bounds_logits():
    loss = MCEL(margin=8.0, L=5.0)
    z = loss.clamp(torch.tensor([-1e6, -50.0, 0.0, 50.0, 1e6]))
    assert z.abs().max().item() <= 5.0
    assert z[2].item() == 0.0


def test_mcel_margin_only_on_target():
    # With the target's clamped logit lowered by m, raising m must raise the loss.
    logits, target = torch.tensor([[3.0, 1.0]]), torch.tensor([0])
    assert MCEL(margin=4.0)(logits, target) > MCEL(margin=1.0)(logits, target)
    assert MCEL(margin=32.0, L=100.0).relative_separation == pytest.approx(0.16)


@pytest.mark.parametrize("bad", [dict(margin=-1.0), dict(margin=1.0, L=0.0), dict(margin=1.0, L=-3.0)])
def test_mcel_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        MCEL(**bad)


def test_mcel_warmup_is_linear():
    loss = MCEL(margin=10.0, warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(loss.current_margin)
        loss.step()
    assert seen == [0.0, 2.5, 5.0, 7.5, 10.0, 10.0]


def test_hinge_hand_computed():
    logits, target = torch.tensor([[100.0, -200.0, 50.0]]), torch.tensor([0])
    b = 128.0
    # t = [1, -1, -1]: terms max(0, b - t*z)/b
    terms = [max(0, b - 100) / b, max(0, b - 200) / b, max(0, b + 50) / b]
    assert ModifiedHinge(b)(logits, target).item() == pytest.approx(sum(terms) / 3)


def test_squared_hinge_hand_computed():
    logits, target = torch.tensor([[0.5, 0.2]]), torch.tensor([1])
    # t = [-1, 1]: (1 + 0.5)^2, (1 - 0.2)^2
    assert SquaredHinge()(logits, target).item() == pytest.approx((1.5**2 + 0.8**2) / 2)


@pytest.mark.parametrize("loss", [MCEL(8.0, L=20.0), ModifiedHinge(4.0), SquaredHinge(), CrossEntropy()])
def test_gradcheck(loss):
    torch.manual_seed(1)
    logits = (torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 4, (5,))
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,))


def test_make_loss_unknown():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")
