"""``mcel compare``: hardware-measured against software-predicted, map by map, image by image.

Any difference is a bug, never noise (docs/architecture.md, principle 1): the check exits non-zero and names the first
differing map, the memories its faults sit in, and the image. The curves (mean accuracy per rate
with 95 % t-intervals over maps) are plotted hardware over software in ``compare.png``, and the
numbers written to ``compare.json``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from hw_sim.transient import coverage_problem
from mcel_train.errors import ArtifactError, UserError
from mcel_train.faults.faultmap import FaultMap
from mcel_train.faults.generate import FaultModel
from mcel_train.provenance import check_sim_is_the_runs
from mcel_train.stage import run_name
from mcel_train.sweep import t_interval, within_accuracies


class MismatchError(AssertionError):
    """Hardware and software disagree on some map and image."""


class NothingCheckedError(AssertionError):
    """A map left no image with a prediction to compare (a transient upset while every image was
    in flight, :mod:`hw_sim.transient`): neither a difference nor a proof of equality."""


def _mean_and_interval(values: list[float]) -> tuple[float, float, list[float]]:
    """Mean, half-width of the 95 % Student-t interval over maps (0 with one map, uncut: the
    record's ``*_ci95``) and the interval as accuracies can be (cut to [0, 1]: ``*_interval``)."""
    ci = t_interval(values)
    mean = float(np.mean(values))
    half = 0.0 if ci is None else (ci[1] - ci[0]) / 2
    return mean, half, list(within_accuracies(mean - half, mean + half))


def curves(record: dict) -> list[dict]:
    """Per rate: hardware and software mean accuracy with intervals."""
    rows = []
    for ber in record["bers"]:
        maps = [m for m in record["maps"] if m["rate"] == ber]
        hw_mean, hw_half, hw_interval = _mean_and_interval([m["accuracy"] for m in maps])
        sw_mean, sw_half, sw_interval = _mean_and_interval([m["predicted_accuracy"] for m in maps])
        rows.append({"rate": ber, "maps": len(maps), "hw_mean": hw_mean, "hw_ci95": hw_half,
                     "hw_interval": hw_interval, "sw_mean": sw_mean, "sw_ci95": sw_half,
                     "sw_interval": sw_interval, "identical_maps": sum(m["identical_to_software"] for m in maps)})
    return rows


def saved_differences(sim_dir: Path, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(differs, hw, sw)``: per map id and image whether the saved hardware output differs from
    the saved software prediction (images a transient upset leaves without a prediction do not
    count), and both outputs.

    Read from ``hw_outputs.npz`` and ``sw_outputs.npz`` themselves, not from the verdicts the
    simulation stored in ``hw_ber.json``: a comparison that only re-read those flags passed on
    outputs edited after the simulation. The record's accuracies must be those of the saved
    outputs (else it is not theirs: one line, simulate again)."""
    hw, labels = _outputs(sim_dir / "hw_outputs.npz", "labels")
    sw, checked = _outputs(sim_dir / "sw_outputs.npz", "checked")
    maps = record["maps"]
    fix = f"{sim_dir / 'hw_ber.json'} does not describe the saved outputs ({{}}); simulate the run again " \
          "(mcel sim ... --force)"
    n = (len(maps), record["images"])
    if hw.ndim != 3 or hw.shape != sw.shape or hw.shape[:2] != n or labels is None or labels.shape != n[1:] \
            or (checked is not None and checked.shape != n):
        raise ArtifactError(fix.format(f"outputs {hw.shape} and {sw.shape} for {n[0]} maps x {n[1]} images"))
    if sorted(m["id"] for m in maps) != list(range(n[0])):
        raise ArtifactError(fix.format("map ids"))
    for m in maps:
        for key, out in (("accuracy", hw[m["id"]]), ("predicted_accuracy", sw[m["id"]])):
            if m[key] != float((out.argmax(1) == labels).mean()):
                raise ArtifactError(fix.format(f"map {m['id']}'s {key}"))
    differs = (hw != sw).any(axis=2)
    for m in maps:  # the record's count of checked images, from the saved outputs too
        m["checked_images"] = int(n[1] if checked is None else checked[m["id"]].sum())
    return (differs if checked is None else differs & checked), hw, sw


def first_mismatch(sim_dir: Path, record: dict, saved: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict | None:
    """The first map (by id) whose saved outputs differ (``saved``: :func:`saved_differences`),
    with the image, the memories the map faults and both outputs of that image; ``None``: none
    differs."""
    differs, hw, sw = saved
    for m in sorted(record["maps"], key=lambda e: e["id"]):
        i = m["id"]
        if not differs[i].any():
            continue
        image = int(np.flatnonzero(differs[i])[0])
        fmap = FaultMap.load(sim_dir / m["file"])
        mems = sorted({fmap.memory_names[k] for k in np.unique(fmap.memory)})
        return {"map": i, "rate": m["rate"], "map_index": m["map_index"], "image": image,
                "memories_with_faults": mems, "hw": hw[i, image].tolist(), "sw": sw[i, image].tolist(),
                "recorded_by_the_simulation": not m["identical_to_software"]}
    return None


def _outputs(path: Path, second: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``outputs`` array of a simulation's npz and its ``second`` array (``None`` if the file
    has none); one line if the file is missing or damaged."""
    try:
        with np.load(path) as f:
            return f["outputs"], (f[second] if second in f.files else None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is missing or damaged ({str(exc).splitlines()[0][:100]}); simulate the run "
                            "again (mcel sim ... --force)") from None


def counts_flips(fault_model: str) -> bool:
    """Whether a simulation's rates are flip counts per map (``kflips``), not bit error rates,
    as the fault model's own parser reads its name (`` kflips`` ran as kflips)."""
    try:
        return FaultModel.parse(fault_model).name == "kflips"
    except UserError:  # a record's model this version does not know: its rates are rates
        return False


def plot_compare(rows: list[dict], title: str, path: Path, counts: bool = False) -> None:
    """Hardware and software accuracy against the rate on a symmetric-log axis (0 drawn at 0,
    as ``mcel plot`` draws sweeps); ``counts``: the rates are flip counts (``kflips``), and the
    axis says so (counts 5 and 50 read as rates far above 1 on a "bit error rate" axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("sw", "software prediction", "--"), ("hw", "RTL simulation (cocotb)", "-")):
        mean = np.array([r[f"{key}_mean"] for r in rows])
        lo, hi = np.array([r[f"{key}_interval"] for r in rows]).T
        ax.plot(rates, mean, style, marker="o", label=label)
        ax.fill_between(rates, lo, hi, alpha=0.2)
    positive = [r for r in rates if r > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    ax.set_xlabel("flipped bits per map" if counts else "bit error rate")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, parse_math=False)  # run names may hold a dollar sign
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_record(path: Path, run_dir: Path) -> dict:
    """``hw_ber.json``, checked for what the comparison reads: every rate with at least one map
    (a rate without maps has no mean), every map with its verdict."""
    fix = f"simulate the run again (mcel sim {run_dir} --force)"
    try:
        record = json.loads(path.read_text())
        bers, maps = record["bers"], record["maps"]
        ok = isinstance(record["images"], int) and isinstance(record["fault_model"], str) and \
            isinstance(bers, list) and isinstance(maps, list) and all(
            isinstance(m, dict) and {"rate", "accuracy", "predicted_accuracy", "identical_to_software", "id",
                                     "map_index", "file"} <= set(m) for m in maps)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ArtifactError(f"{path} is not a simulation record of mcel sim; {fix}")
    empty = [b for b in bers if not any(m["rate"] == b for m in maps)]
    if empty:
        raise ArtifactError(f"{path} has no maps at rate {empty[0]:g}; {fix}")
    return record


def compare_run(run_dir: Path) -> dict:
    """Check and plot; raises :class:`MismatchError` (after writing the files) on a difference."""
    sim_dir = Path(run_dir) / "sim"
    record_path = sim_dir / "hw_ber.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} missing: run `mcel sim {run_dir}` first")
    record = _read_record(record_path, run_dir)
    check_sim_is_the_runs(run_dir, record)
    saved = saved_differences(sim_dir, record)
    mismatch = first_mismatch(sim_dir, record, saved)
    for m in record["maps"]:  # the verdicts of the saved outputs, in the table too
        m["identical_to_software"] = not saved[0][m["id"]].any() and m["checked_images"] > 0
    rows = curves(record)
    unchecked = [m for m in record["maps"] if m["checked_images"] == 0]
    result = {"run": run_name(run_dir), "images": record["images"], "fault_model": record["fault_model"],
              # what the curves describe, as the simulation recorded it
              **{k: record.get(k) for k in ("memories", "inject", "transient_cycle", "backpressure")},
              "maps": len(record["maps"]), "identical": mismatch is None and not unchecked,
              "first_mismatch": mismatch, "unchecked_maps": [m["id"] for m in unchecked],
              "checked_images": [m["checked_images"] for m in sorted(record["maps"], key=lambda e: e["id"])],
              "coverage": [f"map {m['id']} (rate {m['rate']:g}): {problem}" for m in record["maps"]
                           if "transient" in m and (problem := coverage_problem(m["transient"], m["rate"]))],
              "curves": rows}
    # both written first, then both moved: a failed plot leaves the last pair, not a new JSON
    # beside an old plot
    tmp_json, tmp_png = sim_dir / ".compare.json.partial", sim_dir / ".compare.partial.png"
    try:
        tmp_json.write_text(json.dumps(result, indent=2, allow_nan=False))
        upset = record.get("transient_cycle")
        plot_compare(rows, f"{run_name(run_dir)}: {record['images']} images, {record['fault_model']} in "
                     f"{record.get('memories', 'weights')}" + ("" if upset is None else f", upset at cycle {upset}"),
                     tmp_png, counts=counts_flips(record["fault_model"]))
        tmp_json.replace(sim_dir / "compare.json")
        tmp_png.replace(sim_dir / "compare.png")
    finally:
        tmp_json.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    if mismatch is not None:
        raise MismatchError(f"hardware differs from software: {mismatch}")
    if unchecked:
        m = unchecked[0]
        raise NothingCheckedError(
            f"{len(unchecked)} of {len(record['maps'])} maps checked no image, the first map {m['id']} "
            f"(rate {m['rate']:g}): its transient upset came while every image was in flight; simulate with "
            f"another --transient-cycle (hw_ber.json's transient fields say which cycles check images)")
    return result


def _interval(mean: float, interval: list[float]) -> str:
    """``mean [lo, hi]``."""
    return f"{mean:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def format_table(rows: list[dict], counts: bool = False) -> str:
    """The comparison as text; ``counts``: the rates are flip counts (``kflips``)."""
    lines = [f"{'flips' if counts else 'rate':<9} maps  hardware acc [95% CI]     software acc [95% CI]     "
             "identical maps"]
    for r in rows:
        lines.append(f"{r['rate']:<9g} {r['maps']:>4}  {_interval(r['hw_mean'], r['hw_interval'])}"
                     f"  {_interval(r['sw_mean'], r['sw_interval'])}  {r['identical_maps']}/{r['maps']}")
    return "\n".join(lines)
