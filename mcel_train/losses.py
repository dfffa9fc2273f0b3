"""Training losses: MCEL and the baselines it is compared against.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with ``logits`` of shape
``(N, C)`` and integer class labels ``target`` of shape ``(N,)``, so they are drop-in
replacements for one another in the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MCEL(nn.Module):
    """Margin Cross-Entropy Loss (Yayla and Kumar, 2026).

    Each logit is first clamped smoothly to ``(-L, L)`` with ``L * tanh(logit / L)``; the margin
    ``m`` is then subtracted from the target class's clamped logit only, and the ordinary
    cross-entropy is taken. The clamp is what makes the margin matter: softmax is shift-invariant
    and unbounded logits could satisfy any margin by growing. The relative separation the loss
    asks for is ``m / (2 L)``.

    ``warmup_steps > 0`` ramps the margin linearly from 0 to ``margin`` over that many calls to
    :meth:`step` (the training loop calls it once per optimizer step); off by default.
    """

    def __init__(self, margin: float, L: float = 100.0, warmup_steps: int = 0) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"MCEL margin must be >= 0, got {margin}")
        if not L > 0:
            raise ValueError(f"MCEL clamp L must be > 0, got {L}")
        if warmup_steps < 0:
            raise ValueError(f"MCEL warmup_steps must be >= 0, got {warmup_steps}")
        self.margin = float(margin)
        self.L = float(L)
        self.warmup_steps = int(warmup_steps)
        self._steps_done = 0

    @property
    def relative_separation(self) -> float:
        """The relative logit separation ``m / (2 L)`` that the loss asks for."""
        return self.margin / (2.0 * self.L)

    @property
    def current_margin(self) -> float:
        """The margin in effect now (below ``margin`` only during warm-up)."""
        if self.warmup_steps == 0:
            return self.margin
        return self.margin * min(1.0, self._steps_done / self.warmup_steps)

    def step(self) -> None:
        """Advance the warm-up schedule by one optimizer step."""
        self._steps_done += 1

    def clamp(self, logits: torch.Tensor) -> torch.Tensor:
        """The smooth clamp ``L * tanh(logits / L)``, bounded by ``L`` in magnitude."""
        return self.L * torch.tanh(logits / self.L)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = self.clamp(logits)
        onehot = F.one_hot(target, num_classes=logits.shape[1]).to(z.dtype)
        return F.cross_entropy(z - self.current_margin * onehot, target)


class CrossEntropy(nn.Module):
    """Plain cross-entropy, the baseline MCEL is measured against."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


class ModifiedHinge(nn.Module):
    """Modified hinge loss of Buschjäger et al. (DATE 2021) for bit-error tolerant BNNs.

    With ``t = 2 * onehot(y) - 1`` the loss is the mean over classes (and the batch) of
    ``max(0, b - t * logit) / b``: every class must clear the margin ``b`` on its side.
    """

    def __init__(self, b: float = 128.0) -> None:
        super().__init__()
        if not b > 0:
            raise ValueError(f"hinge margin b must be > 0, got {b}")
        self.b = float(b)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = 2.0 * F.one_hot(target, num_classes=logits.shape[1]).to(logits.dtype) - 1.0
        return (torch.clamp(self.b - t * logits, min=0.0) / self.b).mean()


class SquaredHinge(nn.Module):
    """Squared hinge loss on +-1 targets, as in FINN's BNN-PYNQ training examples."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = 2.0 * F.one_hot(target, num_classes=logits.shape[1]).to(logits.dtype) - 1.0
        return torch.clamp(1.0 - t * logits, min=0.0).pow(2).mean()


LOSS_NAMES = ("ce", "mcel", "hinge", "sqhinge")


def make_loss(name: str, **params: float) -> nn.Module:
    """Build a loss by name (``ce``, ``mcel``, ``hinge``, ``sqhinge``) with its parameters."""
    if name == "ce":
        return CrossEntropy()
    if name == "mcel":
        return MCEL(
            margin=params.get("margin", 32.0),
            L=params.get("L", 100.0),
            warmup_steps=int(params.get("warmup_steps", 0)),
        )
    if name == "hinge":
        return ModifiedHinge(b=params.get("b", 128.0))
    if name == "sqhinge":
        return SquaredHinge()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
