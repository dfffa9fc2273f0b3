"""Margin diagnostics of a trained run: how far the clean network is from changing its mind.

Two views, both computed on the exact integer network (:mod:`mcel_train.intnet`):

- the *logit margin* per test image, top-1 minus top-2 logit (also in integer accumulator
  units), the quantity MCEL trains for; its mean and a histogram;
- the *neuron margin* per hidden layer (Buschjäger et al., DATE 2021): the distance of each
  pre-activation to the nearest accumulator value where its quantized output steps, in
  accumulator units, i.e. how many unit changes of ``sum(w * x)`` a neuron tolerates.

Output: ``runs/NAME/margins/margins.json`` and ``margins.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import torch

from mcel_train.errors import UserInputError
from mcel_train.intnet import IntNetwork, from_brevitas
from mcel_train.runio import load_run
from mcel_train.stage import atomic_stage, run_name

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _summary(v: np.ndarray) -> dict:
    v = np.asarray(v, dtype=np.float64)
    q = np.percentile(v, [5, 25, 50, 75, 95]) if v.size else [float("nan")] * 5
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(v.max())}


def neuron_distances(acc: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Distance of every accumulator ``(N, C, ...)`` to its channel's nearest threshold."""
    a = acc.double().movedim(1, -1)  # (..., C)
    t = thresholds.double()  # (C, K)
    best = torch.full_like(a, float("inf"))
    for k in range(t.shape[1]):
        best = torch.minimum(best, (a - t[:, k]).abs())
    return best.flatten()


def integer_margins(
    net: IntNetwork, x: torch.Tensor, labels: np.ndarray, batch: int = 2000
) -> dict:
    """Per-image logit margins and per-layer neuron distances of the clean network."""
    logits, dists = [], [[] for _ in net.layers[:-1]]
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            accs: list[torch.Tensor] = []
            logits.append(net.forward(x[lo:lo + batch], collect=accs)[0])
            for i, layer in enumerate(net.layers[:-1]):
                dists[i].append(neuron_distances(accs[i][0], layer.post.acc_thresholds()))
    z = torch.cat(logits).double()
    top2 = torch.topk(z, 2, dim=1).values
    margin_int = (top2[:, 0] - top2[:, 1]).numpy()
    y = torch.as_tensor(labels)
    true = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], -torch.inf).max(1).values
    return {
        "margin_int": margin_int,
        "signed_margin_int": (true - others).numpy(),
        "layer_distances": [torch.cat(d).numpy() for d in dists],
    }


def margin_report(run_dir: str | Path, force: bool = False, bins: int = 50) -> dict:
    """Compute margins for a run; write ``margins/margins.json`` and ``margins/margins.png``."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "margins"
    out_json, out_png = out_dir / "margins.json", out_dir / "margins.png"
    if not force and out_dir.exists():
        raise UserInputError(f"{out_dir} exists already; pass --force to overwrite")
    run = load_run(run_dir)
    x, labels = run.test_set()
    net = from_brevitas(run.model)
    m = integer_margins(net, x, labels)
    scale = net.logit_scale
    record = {
        "run": run_name(run_dir),
        "model": run.spec.to_dict(),
        "dataset": run.dataset,
        "n_test": int(len(labels)),
        "logit_scale": scale,
        "mean_logit_margin": float(m["margin_int"].mean() * scale),
        "mean_logit_margin_int": float(m["margin_int"].mean()),
        "logit_margin": _summary(m["margin_int"] * scale),
        "logit_margin_int": _summary(m["margin_int"]),
        "tied_images": int((m["margin_int"] == 0).sum()),
        "signed_margin_int": _summary(m["signed_margin_int"]),
        "hidden_layers": [
            {"layer": net.layers[i].name, "unit": "accumulator (integer sum of w*x)",
             "fraction_below_1": float((d < 1).mean()), **_summary(d)}
            for i, d in enumerate(m["layer_distances"])
        ],
    }
    with atomic_stage(out_dir, force=force) as tmp:  # the JSON and the plot replace the old pair together
        (tmp / out_json.name).write_text(json.dumps(record, indent=1) + "\n")
        _plot(record, m, net, tmp / out_png.name, bins)
    return record


def _plot(record: dict, m: dict, net: IntNetwork, out_png: Path, bins: int) -> None:
    n_hidden = len(m["layer_distances"])
    fig, axes = plt.subplots(1, 1 + n_hidden, figsize=(4 * (1 + n_hidden), 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.hist(m["margin_int"] * record["logit_scale"], bins=bins, color="C0")
    ax.axvline(record["mean_logit_margin"], color="k", ls="--", lw=1)
    ax.set_title(f"logit margin (mean {record['mean_logit_margin']:.3g})")
    ax.set_xlabel("top-1 minus top-2 logit")
    ax.set_ylabel("test images")
    for i, d in enumerate(m["layer_distances"]):
        ax = axes[0, 1 + i]
        hi = np.percentile(d, 99) if d.size else 1.0
        ax.hist(np.clip(d, 0, hi), bins=bins, color="C1")
        ax.set_title(f"{net.layers[i].name}: distance to threshold")
        ax.set_xlabel("accumulator units (clipped at p99)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
