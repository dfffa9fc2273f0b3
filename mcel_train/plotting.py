"""Accuracy-over-bit-error-rate plots from sweep records (``sw_ber.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SWEEP_FILE = Path("sweep") / "sw_ber.json"


def load_sweep(path: str | Path) -> dict:
    """A sweep record from a run folder or a ``sw_ber.json`` path."""
    path = Path(path)
    if path.is_dir():
        path = path / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `mcel sweep` for this run first")
    return json.loads(path.read_text())


def plot_sweeps(records: Sequence[tuple[str, dict]], out_png: str | Path, title: str = "") -> Path:
    """Overlay mean accuracy with its 95% CI band for each ``(label, record)``.

    The x axis is symmetric-log so that rate 0 (the clean network) sits on the same plot as
    rates spanning decades.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    positive = [r["rate"] for _, rec in records for r in rec["results"] if r["rate"] > 0]
    for label, rec in records:
        res = sorted(rec["results"], key=lambda r: r["rate"])
        x = [r["rate"] for r in res]
        y = [r["mean"] for r in res]
        lo = [r["ci95"][0] if r["ci95"] else r["mean"] for r in res]
        hi = [r["ci95"][1] if r["ci95"] else r["mean"] for r in res]
        (line,) = ax.plot(x, y, marker="o", ms=3, label=label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    ax.set_xlabel("bit error rate")
    ax.set_ylabel("test accuracy")
    fm = {rec.get("fault_model", {}).get("spec", "?") for _, rec in records}
    ax.set_title(title or f"software fault model: {', '.join(sorted(fm))} (mean, 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path,
              labels: Sequence[str] | None = None) -> Path:
    """Overlay the sweeps of several run folders (labels default to the folder names)."""
    recs = [load_sweep(d) for d in run_dirs]
    labels = list(labels) if labels else [Path(d).name or str(d) for d in run_dirs]
    if len(labels) != len(recs):
        raise ValueError("need one label per run")
    return plot_sweeps(list(zip(labels, recs, strict=True)), out_png)
