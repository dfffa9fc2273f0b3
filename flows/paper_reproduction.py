"""``docs/paper_reproduction.md`` from a reproduction campaign, in one command.

    .venv/bin/python -m flows.paper_reproduction runs/campaigns/paper_vgg3 --docs docs

It answers the question the MCEL paper raises (Yayla and Kumar 2026: up to +15 accuracy points at a
1 % bit error rate for a 4-bit VGG3 with MCEL over cross-entropy) from the campaign's records alone:

- the settings actually used (read back from the training records, not from the campaign file);
- per model entry (one per weight quantizer in ``flows/campaigns/paper_vgg3.yaml``) and loss,
  the accuracy at every rate as a mean over training seeds, with a 95 % t-interval across the
  seeds, and the fault-map interval of each seed's mean;
- the evidence for *why*: the mean logit margin (training's record), the integer margins of the
  exact integer network (:func:`mcel_train.margins.integer_margins`: top-1 minus top-2 integer
  logit, and how close hidden accumulators sit to a threshold), and the weight-code
  distributions (the stored codes the bit flips hit, and how much of the code range they use),
  and what fault maps at the headline rate do to the margin, per layer. The campaign's
  ``evidence`` section measures these as tasks while the networks exist (a campaign folder does
  not outlive its clone; its ``results.json`` does);
- the hardware check (RTL simulation against the software prediction for the same maps);
- ``mcel report``'s recommendation for target rates of 1 % and 0.1 %;
- a conclusion computed from these numbers.

Writes ``paper_reproduction.md``, ``paper_reproduction.json`` (every number) and two PNGs into
``--docs``, plus the campaign's own report under ``--docs/campaigns/NAME``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from flows.campaign.report import across_seeds, campaign_table, load_results, maps_rule, recommend, write_report
from flows.campaign.spec import CampaignSpec
from mcel_train.errors import UserError, UserInputError
from mcel_train.fault_effect import network_evidence
from mcel_train.one_line_parser import OneLineParser
from mcel_train.stage import PARTIAL, blocking_file, clear_stale

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER_GAIN_POINTS = 15.0  # the paper's headline: MCEL over CE at 1 % bit errors, VGG3 4-bit
# The full reproduction grid of losses, as (loss name, MCEL margin, bit-flip training rate, name):
# what the document reports as cut when a campaign trains less of it.
FULL_LOSS_GRID = (
    ("ce", None, None, "CE"),
    ("mcel", 8.0, None, "MCEL m=8"),
    ("mcel", 32.0, None, "MCEL m=32"),
    ("mcel", 128.0, None, "MCEL m=128"),
    ("hinge", None, None, "the modified hinge loss"),
    ("ce", None, 0.01, "CE with bit-flip training at 1 %"),
)


def cut_losses(spec: CampaignSpec) -> list[str]:
    """The losses of :data:`FULL_LOSS_GRID` that no training of the campaign uses."""
    have = set()
    for point in spec.points:
        loss, flips = point.config["loss"], point.config.get("fault_training")
        have.add((loss["name"], float(loss["margin"]) if loss["name"] == "mcel" else None,
                  None if not flips else float(flips["rate"])))
    return [name for loss, margin, rate, name in FULL_LOSS_GRID if (loss, margin, rate) not in have]


def gain(table: list[dict], model: str, loss: str, rate: float, base: str = "CE") -> dict | None:
    """``loss`` minus ``base`` at ``rate`` for ``model``: the difference of the seed means, each
    side's interval across seeds, whether those intervals are separated, and the seeds when both
    sides have the same ones."""
    def cell(name: str, fold: bool = False) -> dict | None:
        same = (lambda c: c["loss"].upper() == name.upper()) if fold else (lambda c: c["loss"] == name)
        return next((c for c in table if (c["model"], c["rate"]) == (model, rate) and same(c)), None)

    # the base by its label in any case: an experiment's campaign labels CE "ce" (the report's
    # recommendation found it so; the conclusion, comparing with "CE" only, stayed empty)
    a, b = cell(loss), cell(base, fold=True)
    if a is None or b is None:
        return None
    return {"model": model, "loss": loss, "base": base, "rate": rate, "points": 100 * (a["mean"] - b["mean"]),
            "seeds": a["seeds"] if a["seeds"] == b["seeds"] else None,
            "loss_ci95": a["ci95_seeds"], "base_ci95": b["ci95_seeds"],
            "separated": bool(a["ci95_seeds"] and b["ci95_seeds"]
                              and (a["ci95_seeds"][0] > b["ci95_seeds"][1] or a["ci95_seeds"][1] < b["ci95_seeds"][0]))}


def evidence(campaign_dir: Path, spec: CampaignSpec, tasks: list, done: dict, images: int,
             seeds: Sequence[int] = (0,), rate: float = 0.01, maps: int = 8) -> tuple[list[dict], list[str]]:
    """The evidence of every finished training that should have it, and the trainings that lack it.

    With an ``evidence`` section the campaign measured it as a task while the network existed
    (:func:`mcel_train.fault_effect.network_evidence`); those records are read, and the
    section's seeds, rate, maps and images apply. A campaign without the section is measured
    here, on the networks in its folder, for ``seeds`` with ``images``, ``rate`` and ``maps``.
    """
    recorded = {t.params["train"]: done.get(t.key) for t in tasks if t.stage == "evidence"}
    out, missing = [], []
    for p in spec.points:
        if p.key not in done or not (spec.has_evidence(p) if spec.evidence else p.seed in seeds):
            continue
        head = {"model": p.model_label, "loss": p.loss_label, "seed": p.seed, "train_key": p.key,
                "mean_logit_margin": done[p.key]["mean_logit_margin"], "clean_accuracy": done[p.key]["test_accuracy"]}
        if spec.evidence:
            if recorded.get(p.key) is None:
                missing.append(f"{p.model_label} {p.loss_label} seed {p.seed}")
            else:
                out.append(head | recorded[p.key])
            continue
        out.append(head | network_evidence(campaign_dir / "tasks" / f"train-{p.key}", images, rate, maps))
    return out, missing


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a (1 seed)" if ci is None else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _plot_curves(table: list[dict], path: Path) -> None:
    models = list(dict.fromkeys(c["model"] for c in table))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        for i, loss in enumerate(dict.fromkeys(c["loss"] for c in table if c["model"] == model)):
            cells = sorted((c for c in table if (c["model"], c["loss"]) == (model, loss)), key=lambda c: c["rate"])
            x = [max(c["rate"], 1e-5) for c in cells]
            y = [100 * c["mean"] for c in cells]
            lo = [100 * (c["mean"] - c["ci95_seeds"][0]) if c["ci95_seeds"] else 0.0 for c in cells]
            hi = [100 * (c["ci95_seeds"][1] - c["mean"]) if c["ci95_seeds"] else 0.0 for c in cells]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=f"C{i}",
                        label=f"{loss} ({len(cells[0]['seeds'])} seeds)")
        ax.set_xscale("log")
        ax.set_title(model)
        ax.set_xlabel("bit error rate (rate 0 drawn at 1e-5)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("accuracy % (mean over seeds, 95 % interval across seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_codes(ev: list[dict], path: Path) -> None:
    """The largest layer's weight-code histogram for every network of the evidence."""
    fig, axes = plt.subplots(1, max(1, len(ev)), figsize=(3.6 * max(1, len(ev)), 3.2), squeeze=False)
    for ax, e in zip(axes[0], ev, strict=False):
        big = max(e["layers"], key=lambda layer: layer["weights"])
        hist = {int(code): count for code, count in big["histogram"].items()}  # JSON keys are strings
        codes = sorted(hist)
        total = sum(hist.values())
        ax.bar(codes, [hist[c] / total for c in codes], color="C2")
        zp = big["zero_point"]
        ax.set_title(f"{e['model']}\n{e['loss']} s{e['seed']}: {big['layer']}", fontsize=8)
        ax.set_xlabel("stored weight code" + (f" (zero point {zp})" if zp is not None else " (signed)"))
    axes[0, 0].set_ylabel("fraction of weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def conclusion(gains: list[dict], ev: list[dict], rate: float) -> list[str]:
    """Plain sentences computed from the gains and the evidence (no number is typed in)."""
    lines = []
    for g in gains:
        paired = f"seeds {g['seeds']}" if g["seeds"] else "unpaired seeds"
        share = f"{100 * g['points'] / PAPER_GAIN_POINTS:.0f} %"
        lines.append(
            f"- **{g['model']}**: {g['loss']} minus {g['base']} at p={rate:g} is {g['points']:+.1f} points "
            f"({paired}; {g['loss']} {_ci(g['loss_ci95'])}, {g['base']} {_ci(g['base_ci95'])} across seeds; "
            f"{'the intervals are separated' if g['separated'] else 'the intervals overlap or are missing'}). "
            f"That is {share} of the paper's +{PAPER_GAIN_POINTS:.0f} under this recipe.")
    by = {(e["model"], e["loss"]): e for e in ev}
    for g in gains:
        a, b = by.get((g["model"], g["loss"])), by.get((g["model"], g["base"]))
        if a is None or b is None:
            continue
        big_a = max(a["layers"], key=lambda layer: layer["weights"])
        big_b = max(b["layers"], key=lambda layer: layer["weights"])
        lines.append(
            f"- Evidence, {g['model']} (seed {a['seed']}): mean logit margin {a['mean_logit_margin']:.2f} "
            f"({g['loss']}) vs {b['mean_logit_margin']:.2f} ({g['base']}); mean integer logit margin "
            f"{a['mean_integer_logit_margin']:.0f} vs {b['mean_integer_logit_margin']:.0f} accumulator units; "
            f"in the largest layer a flip moves a weight by {big_a['mean_flip_change_over_rms']:.2f} vs "
            f"{big_b['mean_flip_change_over_rms']:.2f} times the weights' rms code distance from zero, "
            f"and {100 * big_a['fraction_zero']:.0f} % vs {100 * big_b['fraction_zero']:.0f} % of its weights are 0.")
        sa, sb = a["margin_shift"], b["margin_shift"]
        if sa["shrink_over_margin"] is not None and sb["shrink_over_margin"] is not None:
            grows = sa["median_clean_margin"] / max(sb["median_clean_margin"], 1.0)
            shrinks = sa["median_shrink"] / max(sb["median_shrink"], 1.0)
            verdict = ("the faults' shrink grew more than the margin, so the margin buys nothing here"
                       if shrinks > 1.25 * grows else
                       "the faults' shrink grew about as much as the margin, so the margin buys little"
                       if shrinks >= 0.8 * grows else "the margin grew faster than the faults' shrink")
            worst_a = max(a["faulted_alone"], key=lambda f: f["drop_points"])
            drop_b = next(f["drop_points"] for f in b["faulted_alone"] if f["memory"] == worst_a["memory"])
            lines.append(
                f"- Faults at p={sa['rate']:g}, {g['model']} (seed {a['seed']}): {g['loss']}'s median integer "
                f"margin is {grows:.1f}x {g['base']}'s, and the median shrink a fault map causes is {shrinks:.1f}x "
                f"({sa['median_shrink']:.0f} vs {sb['median_shrink']:.0f} units; shrink / margin "
                f"{sa['shrink_over_margin']:.3f} vs {sb['shrink_over_margin']:.3f}): {verdict}. "
                f"Faulted alone, {worst_a['memory']} ({100 * worst_a['share_of_bits']:.3g} % of the bits) costs "
                f"{g['loss']} the most, {worst_a['drop_points']:.2f} points ({g['base']}: {drop_b:.2f}).")
    return lines


def longer_training(main: tuple[CampaignSpec, dict, list[dict]], long_dir: Path, rate: float, loss: str,
                    base_ev: list[dict], base: str = "CE") -> tuple[list[str], list[str], dict]:
    """Set a campaign that trains the same networks longer against the main one, seed by seed.

    The main grid trains few epochs to fit its many trainings on a CPU; a small campaign with
    the config's full length (``flows/campaigns/paper_vgg3_long.yaml``) tells whether the short
    training hides the paper's gain. Each of its finished trainings is paired with the main
    campaign's training of the same model, loss and seed; the pair's epochs come from the
    training records. ``main``: the main campaign's spec, finished records and table, as
    :func:`build_doc` already read them. Returns the section's lines, the conclusion's lines and
    the record.
    """
    b_spec, b_done, b_rows = main
    try:
        l_spec, l_tasks, l_done = load_results(long_dir)
    except UserError as exc:
        raise UserInputError(f"--longer: {exc}") from None
    base_points = {(p.model_label, p.loss_label, p.seed): p for p in b_spec.points if p.key in b_done}
    pairs = [(base_points[k], p) for p in l_spec.points if p.key in l_done
             and (k := (p.model_label, p.loss_label, p.seed)) in base_points]
    if not pairs:
        raise UserInputError(f"--longer {long_dir}: no finished training there has the same model, loss and seed "
                             f"as one in the main campaign {b_spec.name}; run or resume that campaign first")
    for bp, lp in pairs:
        if l_done[lp.key]["epochs"] <= b_done[bp.key]["epochs"]:
            raise UserInputError(f"--longer {long_dir}: {lp.model_label} {lp.loss_label} seed {lp.seed} trains "
                                 f"{l_done[lp.key]['epochs']} epochs, not more than the main campaign's "
                                 f"{b_done[bp.key]['epochs']}; pass a campaign that trains longer")
    sw = {}
    for table, spec, done in ((b_rows, b_spec, b_done), (campaign_table(long_dir), l_spec, l_done)):
        keys = {(p.model_label, p.loss_label, p.seed): done[p.key]["epochs"] for p in spec.points if p.key in done}
        for r in table:
            k = (r["model"], r["loss"], r["seed"])
            if r["source"] == "software" and k in keys:
                sw.setdefault((*k, keys[k]), {})[r["rate"]] = r
    l_ev, _ = evidence(long_dir, l_spec, l_tasks, l_done, 0, seeds=())  # recorded evidence only
    ev = {(e["model"], e["loss"], e["seed"], done[e["train_key"]]["epochs"]): e
          for evs, done in ((base_ev, b_done), (l_ev, l_done)) for e in evs}
    rates = sorted({r for cells in sw.values() for r in cells if r > 0})
    rows, gains = [], []
    for bp, lp in pairs:
        for p, done in ((bp, b_done), (lp, l_done)):
            k = (p.model_label, p.loss_label, p.seed, done[p.key]["epochs"])
            shift = ev[k]["margin_shift"] if k in ev else None
            rows.append({"model": k[0], "loss": k[1], "seed": k[2], "epochs": k[3],
                         "clean_accuracy": done[p.key]["test_accuracy"],
                         "mean_logit_margin": done[p.key]["mean_logit_margin"],
                         "accuracy": {str(r): c["mean"] for r, c in sw.get(k, {}).items()},
                         "map_ci95": {str(r): c["ci95"] for r, c in sw.get(k, {}).items()},
                         "median_integer_margin": shift and shift["median_clean_margin"],
                         "shrink_over_margin": shift and shift["shrink_over_margin"]})
    by = {(r["model"], r["loss"], r["seed"], r["epochs"]): r for r in rows}
    for model, name, seed, epochs in by:
        a, b = by.get((model, loss, seed, epochs)), by.get((model, base, seed, epochs))
        if name == loss and a and b and str(rate) in a["accuracy"] and str(rate) in b["accuracy"]:
            gains.append({"model": model, "seed": seed, "epochs": epochs,
                          "points": 100 * (a["accuracy"][str(rate)] - b["accuracy"][str(rate)])})
    lines = [f"## Training length: {' against '.join(str(e) for e in sorted({r['epochs'] for r in rows}))} epochs",
             "", f"The campaign `{l_spec.name}` (`flows/campaigns/{l_spec.name}.yaml`) trains the same networks "
             "longer, each set against the main campaign's training of the same model, loss and seed (one "
             "seed, so the ± is the fault-map interval only). Its report: "
             f"[campaigns/{l_spec.name}/report.md](campaigns/{l_spec.name}/report.md).", "",
             "| model | loss | seed | epochs | clean % | mean logit margin | median integer margin "
             "| shrink / margin at the evidence rate | " + " | ".join(f"p={r:g}" for r in rates) + " |",
             "|" + "---|" * (8 + len(rates))]
    for r in rows:
        cells = []
        for rt in rates:
            ci = r["map_ci95"].get(str(rt))
            cells.append("-" if str(rt) not in r["accuracy"] else
                         f"{_pct(r['accuracy'][str(rt)])} ±{_pct(None if ci is None else (ci[1] - ci[0]) / 2)}")
        lines.append(f"| {r['model']} | {r['loss']} | {r['seed']} | {r['epochs']} | {_pct(r['clean_accuracy'])} "
                     f"| {_num(r['mean_logit_margin'])} | {_num(r['median_integer_margin'])} "
                     f"| {_num(r['shrink_over_margin'])} | " + " | ".join(cells) + " |")
    lines.append("")
    summary = []
    for model, seed in dict.fromkeys((g["model"], g["seed"]) for g in gains):
        mine = sorted((g for g in gains if (g["model"], g["seed"]) == (model, seed)), key=lambda g: g["epochs"])
        if len(mine) > 1:
            summary.append(f"- Training length, {model} (seed {seed}): {loss} minus {base} at p={rate:g} is "
                           + ", ".join(f"{g['points']:+.1f} points after {g['epochs']} epochs" for g in mine)
                           + f" (the paper: +{PAPER_GAIN_POINTS:.0f}).")
    lines += summary + [""]
    return lines, summary, {"campaign": l_spec.name, "rows": rows, "gains": gains}


def _images(rows: list[dict]) -> str:
    """The sweeps' test image counts, e.g. ``10000`` (older records without the count: ``all``)."""
    counts = sorted({r.get("images") for r in rows if r["source"] == "software" and r.get("images")})
    return ", ".join(str(c) for c in counts) or "all"


def _maps_by_rate(rows: list[dict]) -> str:
    """How many maps the interval target needed per rate, as ``p=0.01: 5-50``."""
    by_rate: dict[float, list[int]] = {}
    for r in rows:
        if r["source"] == "software":
            by_rate.setdefault(r["rate"], []).append(r["maps"])
    parts = []
    for rate, maps in sorted(by_rate.items()):
        lo, hi = min(maps), max(maps)
        parts.append(f"p={rate:g}: {lo}" + (f"-{hi}" if hi != lo else ""))
    return "; ".join(parts)


CURVES_PNG, CODES_PNG, DOC_JSON = "paper_reproduction.png", "paper_reproduction_codes.png", "paper_reproduction.json"


def build_doc(campaign_dir: Path, docs: Path, rate: float = 0.01, loss: str = "MCEL m=32",
              evidence_images: int = 2000, command: str | None = None, evidence_maps: int = 8,
              longer: Path | None = None) -> Path:
    """Write the reproduction document; returns the markdown path.

    ``longer``: a campaign training some of the same networks longer (:func:`longer_training`).
    """
    campaign_dir, docs = Path(campaign_dir), Path(docs)
    for flag, value in (("--evidence-images", evidence_images), ("--evidence-maps", evidence_maps)):
        if value < 1:
            raise UserInputError(f"{flag} must be at least 1, got {value}")
    if not 0 < rate < 1:
        raise UserInputError(f"--rate must be a bit error rate between 0 and 1, got {rate:g}")
    blocker = blocking_file(docs)
    if blocker is not None:
        raise UserInputError(f"--docs {docs}: {blocker} is a file, not a folder; give a folder")
    spec, tasks, done = load_results(campaign_dir)
    rows = campaign_table(campaign_dir)
    if not any(r["source"] == "software" for r in rows):
        raise UserInputError(f"{campaign_dir} has no finished sweep yet; resume the campaign first")
    swept = [r for r in rows if r["source"] == "software"]
    rates = sorted({r["rate"] for r in swept})
    if not any(abs(r - rate) <= 1e-12 for r in rates):
        raise UserInputError(f"--rate {rate:g} is not a rate of the campaign's sweeps "
                             f"({', '.join(f'{r:g}' for r in rates)})")
    labels = sorted({r["loss"] for r in swept})
    if loss not in labels:
        raise UserInputError(f"--loss {loss!r} is not a loss of the campaign ({', '.join(labels)})")
    # Everything that can refuse the input runs before the first file is written.
    ev, ev_missing = evidence(campaign_dir, spec, tasks, done, evidence_images, rate=rate, maps=evidence_maps)
    length_lines, length_summary, length = [], [], None
    if longer is not None:
        length_lines, length_summary, length = longer_training((spec, done, rows), Path(longer), rate, loss, ev)
    in_the_way = [docs / n for n in (CURVES_PNG, CODES_PNG, DOC_JSON, "paper_reproduction.md")
                  if (docs / n).exists() and not (docs / n).is_file()]
    if in_the_way:  # found now, not when the files are moved in
        raise UserInputError(f"--docs {docs}: {in_the_way[0]} is not a file; remove it or give another --docs")
    docs.mkdir(parents=True, exist_ok=True)
    report_dir = docs / "campaigns" / spec.name
    # the document's four files are made in a folder of their own and moved in at the end: a
    # failure (a full disk, a folder in a file's place) left a new document beside old JSON
    clear_stale(docs / "paper_reproduction")  # the staging folders of killed runs
    stage = docs / f".paper_reproduction{PARTIAL}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        md = _write_doc(stage, campaign_dir, docs, spec, done, rows, rate, loss, ev, ev_missing, length,
                        length_lines, length_summary, evidence_images, evidence_maps, command, report_dir)
        write_report(campaign_dir, report_dir)  # each report replaces its folder at once
        if length:
            write_report(Path(longer), docs / "campaigns" / length["campaign"])
        if not (stage / CODES_PNG).exists():  # an older document's plot would stand beside one without evidence
            (docs / CODES_PNG).unlink(missing_ok=True)
        for name in (CURVES_PNG, CODES_PNG, DOC_JSON, md.name):  # the document last
            if (stage / name).exists():
                os.replace(stage / name, docs / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return docs / md.name


def _write_doc(out: Path, campaign_dir: Path, docs: Path, spec, done, rows, rate, loss, ev, ev_missing, length,
               length_lines, length_summary, evidence_images, evidence_maps, command, report_dir) -> Path:
    """The document, its JSON record and its plots, written into ``out`` (the staging folder);
    paths in the text are shown as they will be, under ``docs``."""
    table = across_seeds(rows)
    models = list(dict.fromkeys(c["model"] for c in table))
    gains = [g for g in (gain(table, m, loss, rate) for m in models) if g is not None]
    ev_rate = rate
    if spec.evidence:  # the campaign's own settings
        evidence_images, evidence_maps, ev_rate = (spec.evidence[k] for k in ("images", "maps", "rate"))
    recs = {t: recommend(rows, t, 0.5) for t in (0.01, 0.001)}
    hw = [r for r in rows if r["source"] == "hardware"]
    _plot_curves(table, out / CURVES_PNG)
    if ev:
        _plot_codes(ev, out / CODES_PNG)
    trained = [done[p.key] for p in spec.points if p.key in done]
    cut = cut_losses(spec)
    command = command or f"python -m flows.paper_reproduction {_shown(campaign_dir)} --docs {_shown(docs)}"
    lines = ["# Reproducing the MCEL paper's headline setting", "",
             f"Generated by `{command}` (`--force` replaces an earlier document) from the campaign `{spec.name}` "
             f"(`flows/campaigns/{spec.name}.yaml`); every number below is read from the campaign's records "
             f"(`paper_reproduction.json` holds the tables' figures, and the campaign's `report.json` its "
             f"settings; the campaign's own report is "
             f"[campaigns/{spec.name}/report.md](campaigns/{spec.name}/report.md)).", "",
             "## Settings used", "",
             f"- Trained networks finished: {len(trained)} of {len(spec.points)} in the grid "
             f"(models {', '.join(models)}; losses {', '.join(dict.fromkeys(p.loss_label for p in spec.points))}; "
             f"seeds {sorted({p.seed for p in spec.points})}).",
             f"- Epochs: {sorted({t['epochs'] for t in trained})}; training images: "
             f"{sorted({t['train_images'] for t in trained})}; float test images: "
             f"{sorted({t['test_images'] for t in trained})}.",
             f"- Software sweeps: fault model {', '.join(spec.software['fault_models'])}, rates "
             f"{', '.join(f'{r:g}' for r in spec.software['ber'])}, {maps_rule(spec.software)}, seed "
             f"{spec.software['seed']}; accuracy of the bit-exact integer network on "
             f"{_images(rows)} test images; maps per cell (fewest-most over networks): {_maps_by_rate(rows)}.",
             "- Intervals: across training seeds, a Student-t 95 % interval of the seeds' means; the "
             "fault-map interval is shown as ± next to it, the half-width of each seed's 95 % interval over "
             "its maps, averaged over the seeds.",
             "- Cut for CPU time (2 cores, no GPU), variants before seeds: "
             + (", ".join(cut) if cut else "nothing") + "; and the paper's training length (epochs above"
             + ("; one seed trained longer below" if length else "") + ").", "",
             "## Accuracy under bit flips, by weight quantizer and loss", "",
             "![accuracy vs rate](paper_reproduction.png)", ""]
    rates = sorted({c["rate"] for c in table})
    for model in models:
        heads = " | ".join(f"p={r:g}" for r in rates if r > 0)
        lines += [f"### {model}", "", f"| loss | seeds | clean % | mean logit margin | {heads} |",
                  "|" + "---|" * (4 + sum(r > 0 for r in rates))]
        for name in dict.fromkeys(c["loss"] for c in table if c["model"] == model):
            cells = {c["rate"]: c for c in table if (c["model"], c["loss"]) == (model, name)}
            first = next(iter(cells.values()))
            row = [name, ",".join(map(str, first["seeds"])), _pct(first["clean_accuracy"]),
                   _num(first["mean_logit_margin"])]
            for r in (r for r in rates if r > 0):
                c = cells.get(r)
                row.append("-" if c is None else f"{_pct(c['mean'])} {_ci(c['ci95_seeds'])} "
                           f"±{_pct(c['map_ci95_half_width'])}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += length_lines
    lines += ["## Why: margins and weight codes", "",
              f"Per trained network of seed {', '.join(sorted({str(e['seed']) for e in ev})) or '-'}, on the first "
              f"{evidence_images} test images. The integer logit "
              "margin is top-1 minus top-2 integer logit; 'within 1' is the fraction of hidden accumulators "
              "one unit or less from a threshold (one flipped low bit can change that neuron's output); "
              "'flip / rms' is the mean change of a weight code by one bit flip, (2^b - 1)/b, over the rms "
              "distance of the layer's weights from zero in codes.", ""]
    if ev_missing:
        lines += [f"No evidence yet for {', '.join(ev_missing)} (the campaign's evidence task has not run).", ""]
    if ev:
        lines += ["| model | loss | clean % | mean logit margin | integer logit margin (mean / median) "
                  "| hidden within 1 | largest layer: flip / rms, zero %, at extremes % |",
                  "|---|---|---|---|---|---|---|"]
        for e in ev:
            big = max(e["layers"], key=lambda layer: layer["weights"])
            lines.append(f"| {e['model']} | {e['loss']} | {_pct(e['clean_accuracy'])} | {e['mean_logit_margin']:.2f} "
                         f"| {e['mean_integer_logit_margin']:.0f} / {e['median_integer_logit_margin']:.0f} "
                         f"| {', '.join(f'{100 * f:.1f} %' for f in e['hidden_fraction_within_1'])} "
                         f"| {big['mean_flip_change_over_rms']:.2f}, {100 * big['fraction_zero']:.1f}, "
                         f"{100 * big['fraction_at_code_extremes']:.1f} |")
        lines += ["", "![weight codes](paper_reproduction_codes.png)", "",
                  f"### What faults at p={ev_rate:g} do to the margin", "",
                  f"{evidence_maps} fault maps per network on the same images. The *shrink* of an image's "
                  "integer margin is the clean margin minus the clean top-1 class's lead over the other classes "
                  "under the map (`mcel_train/fault_effect.py`); medians over all (map, image) pairs. If a "
                  "loss widens the margin but the faults' shrink grows as much, the ratio stays and so does the "
                  "accuracy under faults.", "",
                  "| model | loss | median integer margin | median shrink | shrink / margin "
                  "| largest logit change (median) | predictions changed |",
                  "|---|---|---|---|---|---|---|"]
        for e in ev:
            ms = e["margin_shift"]
            ratio = "-" if ms["shrink_over_margin"] is None else f"{ms['shrink_over_margin']:.3f}"
            lines.append(f"| {e['model']} | {e['loss']} | {ms['median_clean_margin']:.0f} | {ms['median_shrink']:.0f} "
                         f"| {ratio} | {ms['median_largest_logit_change']:.0f} "
                         f"| {100 * ms['fraction_predictions_changed']:.2f} % |")
        names = [f["memory"] for f in ev[0]["faulted_alone"]]
        shares = ", ".join(f"{f['memory']} {100 * f['share_of_bits']:.3g} %" for f in ev[0]["faulted_alone"])
        lines += ["", f"### Where the damage comes from: one layer's memory faulted at p={ev_rate:g}", "",
                  f"Accuracy drop in points when only that layer's weight memory takes faults ({evidence_maps} maps "
                  f"each). Share of the network's bits: {shares}.", "",
                  "| model | loss | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for e in ev:
            lines.append(f"| {e['model']} | {e['loss']} | "
                         + " | ".join(f"{f['drop_points']:+.2f}" for f in e["faulted_alone"]) + " |")
        lines.append("")
    lines += ["## Hardware check", ""]
    if hw:
        lines += ["FINN builds simulated in RTL (cocotb + Verilator) with fault maps injected into the weight "
                  "memories; the software prediction is the fast evaluator on the same maps and images.", "",
                  "| model | loss | seed | rate | maps | RTL accuracy % | software prediction % | identical maps |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in hw:
            lines.append(f"| {r['model']} | {r['loss']} | {r['seed']} | {r['rate']:g} | {r['maps']} "
                         f"| {_pct(r['mean'])} | {_pct(r['sw_predicted_mean'])} | {r['identical_maps']}/{r['maps']} |")
        images = (spec.hardware or {}).get("images")
        lines += ["", f"{sum(r['identical_maps'] for r in hw)} of {sum(r['maps'] for r in hw)} maps gave outputs "
                  f"identical to the software prediction on every one of {images} test images.", ""]
    else:
        lines += ["No hardware simulation has finished yet.", ""]
    lines += ["## Recommendation (`mcel report --target-ber RATE --max-clean-drop 0.5`)", ""]
    for target, recs_t in recs.items():
        for rec in recs_t:
            choice = rec.get("choice", "-")
            acc = f"{_pct(rec['accuracy'])} % {_ci(rec.get('ci95_seeds'))}" if "accuracy" in rec else "-"
            lines.append(f"- target p={target:g}, {rec['model']}: {choice}, expected accuracy {acc}; "
                         f"{rec['verdict']}.")
    lines += ["", "## Conclusion", "", *conclusion(gains, ev, rate), *length_summary, ""]
    missing = len(spec.points) - len(trained)
    if missing:
        lines += [f"{missing} trainings of the grid have not finished yet. The campaign resumes in any clone with "
                  f"`mcel campaign flows/campaigns/{spec.name}.yaml --out {_shown(campaign_dir)} --resume "
                  f"--restore {_shown(report_dir / 'results.json')}` (the finished results travel in that "
                  "file); the tables "
                  "show what has finished.", ""]
    md = out / "paper_reproduction.md"
    md.write_text("\n".join(lines))
    (out / DOC_JSON).write_text(json.dumps(
        {"campaign": spec.name, "rate": rate, "loss": loss, "seed_table": table, "gains": gains,
         "evidence": ev, "hardware": hw, "recommendations": {str(k): v for k, v in recs.items()},
         "longer_training": length}, indent=1))
    return md


def _shown(path: Path) -> str:
    """A path as the committed document shows it: relative to the working folder when inside it
    (the repository's root, where the README runs this), so no machine's absolute path is
    written into docs/."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path) if not path.is_absolute() else f"<{path.name}>"


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m flows.paper_reproduction", description=__doc__.splitlines()[0])
    p.add_argument("campaign", type=Path, help="the reproduction campaign's folder")
    p.add_argument("--docs", type=Path, default=Path("docs"),
                   help="the folder the document, its JSON, plots and the campaigns' reports go to")
    p.add_argument("--force", action="store_true", help="replace a document --docs holds already")
    p.add_argument("--rate", type=float, default=0.01, help="the headline rate")
    p.add_argument("--loss", default="MCEL m=32", help="the loss label compared with CE")
    p.add_argument("--evidence-images", type=int, default=2000,
                   help="test images for the margin evidence of a campaign without an evidence section "
                        "(with one, the campaign measured it: its section's settings apply)")
    p.add_argument("--evidence-maps", type=int, default=8,
                   help="fault maps per network (and per layer faulted alone) for that evidence")
    p.add_argument("--longer", type=Path, default=None,
                   help="a campaign folder that trains some of the same networks for more epochs "
                        "(flows/campaigns/paper_vgg3_long.yaml): adds a training-length section")
    args = p.parse_args(argv)
    longer = f" --longer {_shown(args.longer)}" if args.longer else ""
    if (args.docs / "paper_reproduction.md").exists() and not args.force:
        print(f"error: {args.docs / 'paper_reproduction.md'} exists; pass --force to replace it, or give another "
              "--docs", file=sys.stderr)
        return 2
    try:
        md = build_doc(args.campaign, args.docs, args.rate, args.loss, args.evidence_images,
                       command=f"python -m flows.paper_reproduction {_shown(args.campaign)}{longer} --docs "
                               f"{_shown(args.docs)}",
                       evidence_maps=args.evidence_maps, longer=args.longer)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --docs under /proc, a full disk: the document's files are not moved in
        print(f"error: cannot write into --docs {args.docs}: {exc.strerror or exc} ({exc.filename}); give "
              "another --docs", file=sys.stderr)
        return 2
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
