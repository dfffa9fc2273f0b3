"""Faults inside a Brevitas model's forward pass: random bit error training and weight overrides.

Both work through a forward hook on each quant layer's weight quantizer, which swaps the
quantized weight for ``faulted_integers * scale`` (scale unchanged, docs/architecture.md, principle 2).
The swap is a straight-through estimator: the value is ``q + (faulted - q).detach()``, so the
gradient flows to the float weights as if no fault had happened (Stutz et al., MLSys 2021,
"random bit error training").

- :func:`make_fault_injection_hook`: a fresh fault map in every training forward pass, drawn
  with the same fault models the evaluator uses.
- :func:`override_quant_weights`: fixed integer weights (for example one fault map's), to run
  the unmodified Brevitas forward on faulty weights as an independent reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from mcel_train.faults.apply import apply_to_values
from mcel_train.faults.faultmap import FaultMap
from mcel_train.faults.generate import FaultModel, generate_map
from mcel_train.memory import memories_from_model
from mcel_train.models import quant_layers


def _swap_value(qt, new_ints: torch.Tensor):
    """A copy of the QuantTensor ``qt`` whose value is ``new_ints * scale`` (straight-through)."""
    faulted = new_ints.reshape(qt.value.shape).to(qt.value.dtype) * qt.scale
    return qt.set(value=qt.value + (faulted - qt.value).detach())


def _ints(qt) -> torch.Tensor:
    return torch.round(qt.value.detach() / qt.scale.detach())


class HookHandle:
    """Removable group of hooks; ``remove()`` restores the clean model."""

    def __init__(self) -> None:
        self._handles: list = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class FaultInjectionHandle(HookHandle):
    """Draws one whole-network fault map per forward pass (training mode only by default).

    ``steps`` counts the maps drawn; map ``i`` is ``generate_map(..., seed, i)``, so a training
    run with the same seed sees the same fault sequence. ``last_map`` is the most recent map.
    """

    def __init__(
        self, model: nn.Module, fault_model: FaultModel, rate: float, seed: int,
        train_only: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.fault_model = fault_model
        self.rate = float(rate)
        self.seed = int(seed)
        self.train_only = train_only
        self.enabled = True
        self.steps = 0
        self.layers = quant_layers(model)
        self.memories = memories_from_model(model)
        self.last_map: FaultMap | None = None
        # Validate the fault model and rate now rather than in the first training step.
        generate_map(self.memories, fault_model, rate if fault_model.name != "kflips" else 0,
                     seed, 0, bits=np.zeros(sum(m.n_bits for m in self.memories), np.uint8))
        # Draw when the first quant layer runs: fires however the model is called
        # (``model(x)``, ``model.logits_and_scale(x)``, ...).
        self._handles.append(self.layers[0].register_forward_pre_hook(self._draw))
        for layer, mem in zip(self.layers, self.memories, strict=True):
            self._handles.append(layer.weight_quant.register_forward_hook(self._injector(mem)))

    def _active(self) -> bool:
        return self.enabled and (self.model.training or not self.train_only)

    def _draw(self, module: nn.Module, args: object) -> None:
        if not self._active():
            self.last_map = None
            return
        contents = None
        if self.fault_model.name == "asym":
            with torch.no_grad():
                contents = {m.name: _ints(layer.quant_weight()).reshape(m.rows, -1).numpy()
                            for layer, m in zip(self.layers, self.memories, strict=True)}
        self.last_map = generate_map(self.memories, self.fault_model, self.rate, self.seed,
                                     self.steps, contents=contents)
        self.steps += 1

    def _injector(self, mem) -> Callable:
        def hook(module: nn.Module, args: object, out):
            fmap = self.last_map
            if fmap is None or not self._active():
                return out
            word, bit, kind = fmap.for_memory(mem.name)
            if len(word) == 0:
                return out
            ints = _ints(out)
            faulted = apply_to_values(ints.reshape(mem.rows, -1).to(torch.int64).numpy(),
                                      mem, word, bit, kind)
            return _swap_value(out, torch.from_numpy(faulted))

        return hook


def make_fault_injection_hook(
    model: nn.Module, fault_model: str | FaultModel | Mapping, rate: float, seed: int = 0,
    train_only: bool = True,
) -> FaultInjectionHandle:
    """Inject ``fault_model`` at ``rate`` into the quantized weights of every forward pass.

    Returns a handle with ``.remove()``. With ``train_only`` (default) eval-mode forwards stay
    clean, so validation inside the training loop measures the clean network.
    """
    return FaultInjectionHandle(model, FaultModel.parse(fault_model), rate, seed, train_only)


def override_quant_weights(
    model: nn.Module, ints: Mapping[int, np.ndarray | torch.Tensor]
) -> HookHandle:
    """Make quant layer ``i`` (forward order) use the integer weights ``ints[i]`` times its scale.

    The scale is the layer's own, as computed from its float weights, so it stays fixed even if
    the new integers leave the quantization range.
    """
    layers = quant_layers(model)
    handle = HookHandle()
    for i, w in ints.items():
        tensor = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)

        def hook(module: nn.Module, args: object, out, tensor: torch.Tensor = tensor):
            return _swap_value(out, tensor)

        handle._handles.append(layers[i].weight_quant.register_forward_hook(hook))
    return handle
