"""Accuracy-over-bit-error-rate plots from sweep records (``sw_ber.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from mcel_train.errors import ArtifactError, UserInputError
from mcel_train.provenance import check_sweep_is_the_runs
from mcel_train.stage import run_name, write_text_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SWEEP_FILE = Path("sweep") / "sw_ber.json"
SWEEP_FORMAT = "mcel-sw-sweep"  # a sweep record's "format" (mcel_train/sweep.py writes it)


class SweepRecordError(ArtifactError):
    """A sweep record is missing, or is not one ``mcel sweep`` writes."""


def load_sweep(path: str | Path) -> dict:
    """A sweep record from a run folder or a ``sw_ber.json`` path, checked for the fields the
    plots read (a torn or foreign file is one :class:`SweepRecordError`, not a traceback)."""
    path = Path(path)
    if path.is_dir():
        path = path / SWEEP_FILE
    if not path.is_file():
        raise SweepRecordError(f"{path} not found: run `mcel sweep` for this run first")
    try:
        rec = json.loads(path.read_text())
        results = rec["results"]
        # the fields, and values an accuracy and its interval can have: a hand-made file with its
        # interval upside down ([0.6, 0.4]) was drawn as if it were a sweep
        ok = isinstance(results, list) and all(
            isinstance(r["rate"], int | float) and isinstance(r["mean"], int | float) and 0 <= r["mean"] <= 1
            and (r.get("ci95") is None or (len(r["ci95"]) == 2 and all(isinstance(v, int | float) for v in r["ci95"])
                                           # 1e-9: records before Dec 8, 2026 centred it on a float mean
                                           and r["ci95"][0] - 1e-9 <= r["mean"] <= r["ci95"][1] + 1e-9))
            for r in results) and len(results) > 0 and rec.get("format", SWEEP_FORMAT) == SWEEP_FORMAT
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SweepRecordError(f"{path} is not a sweep record of mcel sweep; sweep the run again "
                               "(mcel sweep RUN --force)")
    return rec


def plot_sweeps(records: Sequence[tuple[str, dict]], out_png: str | Path, title: str = "") -> Path:
    """Overlay mean accuracy with its 95% CI band for each ``(label, record)``.

    The x axis is symmetric-log so that rate 0 (the clean network) sits on the same plot as
    rates spanning decades.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    positive = [r["rate"] for _, rec in records for r in rec["results"] if r["rate"] > 0]
    lines = []
    for label, rec in records:
        res = sorted(rec["results"], key=lambda r: r["rate"])
        x = [r["rate"] for r in res]
        y = [r["mean"] for r in res]
        lo = [r["ci95"][0] if r.get("ci95") else r["mean"] for r in res]  # one map: no interval
        hi = [r["ci95"][1] if r.get("ci95") else r["mean"] for r in res]
        (line,) = ax.plot(x, y, marker="o", ms=3, label=str(label))
        lines.append(line)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    counts = all((rec.get("fault_model") or {}).get("name") == "kflips" for _, rec in records)
    ax.set_xlabel("flipped bits per map" if counts else "bit error rate")
    ax.set_ylabel("test accuracy")
    fm = {rec.get("fault_model", {}).get("spec", "?") for _, rec in records}
    ax.set_title(title or f"software fault model: {', '.join(sorted(fm))} (mean, 95% CI)", parse_math=False)
    ax.grid(True, alpha=0.3)
    # labels are run names: given explicitly (a name starting with "_" is not dropped) and not
    # parsed as math (a "$" in a folder name is not a formula)
    legend = ax.legend(lines, [str(label) for label, _ in records], fontsize=8)
    for text in legend.get_texts():
        text.set_parse_math(False)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.partial-{os.getpid()}.png")  # a failed write keeps the old plot
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, out_png)
    except OSError as exc:  # named by the plot's path, not the temporary file's
        raise UserInputError(f"{out_png}: cannot write the plot there ({exc.strerror or exc}); "
                             "give a writable folder") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out_png


def _label(path: Path) -> str:
    """A curve's default label: the run's name, also for a record inside its ``sweep/`` folder
    (every such file is called sw_ber.json), else the record file's own name."""
    if path.is_file():
        path = path.resolve()  # `mcel plot sw_ber.json` from inside sweep/
        return run_name(path.parent.parent) if path.parent.name == "sweep" else path.stem
    return run_name(path)


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path,
              labels: Sequence[str] | None = None) -> Path:
    """Overlay the sweeps of several run folders (labels default to the folder names)."""
    labels = list(labels) if labels else [_label(Path(d)) for d in run_dirs]
    if any(not label.strip() for label in labels):
        raise UserInputError(f"--labels {','.join(labels)!r} holds an empty label; give one name per run")
    if len(labels) != len(run_dirs):
        raise UserInputError(f"--labels gives {len(labels)} label(s) for {len(run_dirs)} run(s); give one per run, "
                             "comma-separated")
    recs = [load_sweep(d) for d in run_dirs]
    for d, rec in zip(run_dirs, recs, strict=True):
        check_sweep_is_the_runs(d, rec)
    counts = [str(d) for d, r in zip(run_dirs, recs, strict=True)
              if (r.get("fault_model") or {}).get("name") == "kflips"]
    if counts and len(counts) < len(recs):  # flip counts are not rates: one axis cannot hold both
        raise UserInputError(f"{counts[0]} was swept with --fault-model kflips (its x values are flip counts), "
                             "others with bit error rates: plot them separately")
    out_png = plot_sweeps(list(zip(labels, recs, strict=True)), out_png)
    write_text_atomic(plot_record_path(out_png), json.dumps(_plot_record(out_png, run_dirs, labels, recs), indent=1))
    return out_png


def plot_record_path(out_png: str | Path) -> Path:
    """The JSON record beside a plot (``compare.png`` -> ``compare.json``): the curves as drawn,
    for a script to read without decoding the picture."""
    return Path(out_png).with_suffix(".json")


def _plot_record(out_png: Path, run_dirs: Sequence[str | Path], labels: Sequence[str],
                 recs: Sequence[dict]) -> dict:
    """Per curve: its label, the sweep record it came from (relative to the plot's folder when
    it can be, so the pair moves together), the fault model and the points drawn."""
    curves = []
    for run_dir, label, rec in zip(run_dirs, labels, recs, strict=True):
        source = Path(run_dir) / SWEEP_FILE if Path(run_dir).is_dir() else Path(run_dir)
        try:
            source_text = os.path.relpath(source.resolve(), out_png.resolve().parent)
        except ValueError:  # another drive: no relative path exists
            source_text = str(source)
        curves.append({"label": label, "sweep_record": source_text, "run": rec.get("run"),
                       "fault_model": (rec.get("fault_model") or {}).get("spec"),
                       "points": [{"rate": r["rate"], "mean": r["mean"], "ci95": r.get("ci95"),
                                   "maps": len(r["accuracies"]) if "accuracies" in r else None}
                                  for r in sorted(rec["results"], key=lambda r: r["rate"])]})
    return {"format": "mcel-plot", "png": out_png.name, "curves": curves}
