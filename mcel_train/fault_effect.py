"""What a bit error rate does to a trained network besides lowering its accuracy: how far fault
maps move the integer logit margin, and which layer's weight memory the damage comes from.

Why these two numbers: MCEL trains for a larger logit margin. A larger margin buys robustness
only if it grows faster than the change of the logits that a fault map causes. Both are
measured here in the integer accumulator units of the same network, so the ratio of the two
can be compared across losses and weight quantizers. A network's bits are not spread evenly over
its layers either (the paper-shaped VGG3 keeps almost all of them in its first dense layer).
Faulting one memory at a time shows whether the loss changed the robustness of the layer where
the flips land.

Everything runs on the exact integer network through :class:`mcel_train.evaluate.MapEvaluator`
with maps from :func:`mcel_train.faults.generate.generate_map`. The numbers are therefore those
of the sweeps and of the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mcel_train.evaluate import MapEvaluator, memory_contents, predict
from mcel_train.faults.faultmap import FaultMap
from mcel_train.faults.generate import generate_map, stored_bits
from mcel_train.intnet import IntNetwork
from mcel_train.memory import Memory


def _lead(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``logits[..., top] - max over the other classes``: how far class ``top`` is ahead."""
    z = logits.astype(np.float64)
    own = np.take_along_axis(z, top[..., None], axis=-1)[..., 0]
    np.put_along_axis(z, top[..., None], -np.inf, axis=-1)
    return own - z.max(axis=-1)


def _maps(memories: Sequence[Memory], fault_model: str, rate: float, seed: int, maps: int,
          bits: np.ndarray | None) -> list:
    return [generate_map(memories, fault_model, rate, seed, i, bits=bits) for i in range(maps)]


def _bits(net: IntNetwork, memories: Sequence[Memory], fault_model: str) -> np.ndarray | None:
    """The stored bits, for the fault models that depend on them (asymmetric flips)."""
    return stored_bits(memories, memory_contents(net, memories)) if fault_model.startswith("asym") else None


def evaluator(net: IntNetwork, x: torch.Tensor, labels: np.ndarray) -> MapEvaluator:
    """The evaluator both measurements run on (build it once and pass it to both: it keeps the
    clean first layer across calls)."""
    return MapEvaluator(net, x, labels, net.memories(), method="auto")


def margin_shift(net: IntNetwork, x: torch.Tensor, labels: np.ndarray, rate: float, maps: int = 5,
                 seed: int = 0, fault_model: str = "flip", ev: MapEvaluator | None = None) -> dict:
    """How far ``maps`` fault maps at ``rate`` move each image's integer logit margin.

    The clean margin of an image is its top-1 integer logit minus the runner-up. Under a map,
    the *shrink* is that margin minus the clean top-1 class's new lead over the other classes:
    positive when the map pushed the image towards another class. The prediction changes where
    the lead drops below zero (at zero the lowest class index wins a tie, as in
    :func:`mcel_train.evaluate.predict`). Medians are over all (map, image) pairs, and
    ``shrink_over_margin`` is the ratio of the two medians.
    """
    memories = net.memories()
    ev = ev or evaluator(net, x, labels)
    clean = ev.logits([FaultMap.empty([m.name for m in memories])])[0]
    top = predict(torch.from_numpy(clean)).numpy()
    margin = _lead(clean, top)
    faulty = ev.logits(_maps(memories, fault_model, rate, seed, maps, _bits(net, memories, fault_model)))
    shrink = margin[None, :] - _lead(faulty, np.broadcast_to(top, faulty.shape[:2]))
    faulty_pred = predict(torch.from_numpy(faulty)).numpy()
    changed = faulty_pred != top[None, :]
    largest_change = np.abs(faulty - clean[None]).max(axis=-1)
    med_margin, med_shrink = float(np.median(margin)), float(np.median(shrink))
    return {
        "rate": rate, "fault_model": fault_model, "maps": maps, "images": len(labels),
        "median_clean_margin": med_margin,
        "median_shrink": med_shrink,
        "mean_shrink": float(shrink.mean()),
        "shrink_over_margin": med_shrink / med_margin if med_margin else None,
        "median_largest_logit_change": float(np.median(largest_change)),
        "fraction_predictions_changed": float(changed.mean()),
        "accuracy_clean": float((top == labels).mean()),
        "accuracy_faulty": float((faulty_pred == labels[None, :]).mean()),
    }


def layer_attribution(net: IntNetwork, x: torch.Tensor, labels: np.ndarray, rate: float,
                      maps: int = 3, seed: int = 0, fault_model: str = "flip",
                      ev: MapEvaluator | None = None) -> list[dict]:
    """Per weight memory: its share of the network's bits, and the accuracy when only that memory
    takes faults at ``rate`` (``maps`` maps each, the same seed for every memory)."""
    memories = net.memories()
    ev = ev or evaluator(net, x, labels)
    labels = np.asarray(labels)
    clean = float(ev.evaluate([FaultMap.empty([m.name for m in memories])]).accuracy[0])
    total = sum(m.n_bits for m in memories)
    bits = _bits(net, memories, fault_model)
    out = []
    offset = 0
    for mem in memories:
        own = bits[offset:offset + mem.n_bits] if bits is not None else None
        offset += mem.n_bits
        acc = ev.evaluate(_maps([mem], fault_model, rate, seed, maps, own)).accuracy
        out.append({"memory": mem.name, "bits": int(mem.n_bits), "share_of_bits": mem.n_bits / total,
                    "accuracy": float(acc.mean()), "drop_points": 100 * (clean - float(acc.mean()))})
    return out
