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
from pathlib import Path

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


def network_evidence(train_dir: str | Path, images: int, rate: float = 0.01, maps: int = 8, seed: int = 0) -> dict:
    """Integer margins, weight-code statistics and the effect of faults at ``rate`` (``maps``
    maps of seed ``seed``: :func:`margin_shift`, :func:`layer_attribution`) of one trained network (its
    ``train/`` folder's parent), on the first ``images`` test images. A campaign's ``evidence``
    stage (``flows/campaign/tasks.py``) records it while the network exists."""
    from mcel_train.intnet import from_brevitas
    from mcel_train.margins import integer_margins
    from mcel_train.runio import load_run

    run = load_run(train_dir)
    net = from_brevitas(run.model)
    x, labels = run.test_set()
    x, labels = x[:images], np.asarray(labels[:images])
    with torch.no_grad():
        m = integer_margins(net, x.to(torch.float32), labels)
    layers = []
    for layer in net.layers:
        w = np.asarray(layer.weight, dtype=np.int64)
        zp = layer.weight_zero_point
        codes = w + zp if zp is not None else w
        # the zoo's signed weights are narrow-range (-(2^(b-1) - 1) .. 2^(b-1) - 1), bipolar +-1 at
        # one bit (mcel_train/models.py): -2^(b-1) was never reached, so only the top code counted
        top = 2 ** (layer.weight_bits - 1) - 1 if layer.weight_bits > 1 else 1
        lo, hi = (0, 2 ** layer.weight_bits - 1) if zp is not None else (-top, top)
        rms = float(np.sqrt((w.astype(np.float64) ** 2).mean()))
        # A flip of bit k moves a b-bit code by 2^k in either code form, so the mean change per
        # flip is (2^b - 1) / b codes (2 for bipolar +-1); relative to the weights' rms it says
        # how hard a flip hits.
        per_flip = 2.0 if layer.weight_bits == 1 else (2 ** layer.weight_bits - 1) / layer.weight_bits
        layers.append({"layer": layer.name, "weights": int(w.size), "bits": layer.weight_bits,
                       "zero_point": zp, "scale": layer.weight_scale,
                       "rms_code_distance_from_zero": rms,
                       "mean_flip_change_over_rms": per_flip / rms if rms else None,
                       "fraction_zero": float((w == 0).mean()),
                       "fraction_at_code_extremes": float(((codes == lo) | (codes == hi)).mean()),
                       "histogram": dict(zip(*(v.tolist() for v in np.unique(codes, return_counts=True)),
                                             strict=True))})
    dist = m["layer_distances"]
    ev = evaluator(net, x, labels)  # one for both fault measurements
    return {"images": int(len(labels)),
            "mean_integer_logit_margin": float(m["margin_int"].mean()),
            "median_integer_logit_margin": float(np.median(m["margin_int"])),
            "logit_scale": float(net.logit_scale),
            "hidden_fraction_within_1": [float((d < 1).mean()) for d in dist],
            "hidden_median_distance": [float(np.median(d)) for d in dist],
            "layers": layers,
            "map_seed": seed,
            "margin_shift": margin_shift(net, x, labels, rate, maps=maps, seed=seed, ev=ev),
            "faulted_alone": layer_attribution(net, x, labels, rate, maps=maps, seed=seed, ev=ev)}
