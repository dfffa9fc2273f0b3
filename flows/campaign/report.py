"""``mcel report CAMPAIGN_DIR``: tables, curves and the best margin per rate, as Markdown and HTML.

Everything is read from the campaign's results store and its saved campaign file, never from a
running process, so a report can be made of a half-finished campaign (missing cells are marked).
:func:`campaign_table` is the campaign's table of numbers; it is what the resume test compares.
"""

from __future__ import annotations

import html
import json
import math
import sqlite3
from pathlib import Path

import numpy as np

from flows.campaign.archive import ARCHIVE_NAME, write_archive
from flows.campaign.spec import CampaignError, CampaignSpec, load_campaign
from flows.campaign.store import ResultStore
from flows.campaign.tasks import expand
from mcel_train.errors import UserInputError
from mcel_train.stage import atomic_stage


def load_results(campaign_dir: str | Path) -> tuple[CampaignSpec, list, dict]:
    """The campaign's spec, its tasks and the finished results by key."""
    campaign_dir = Path(campaign_dir)
    db, spec_file = campaign_dir / "results.sqlite", campaign_dir / "campaign.yaml"
    if not db.is_file() or not spec_file.is_file():
        raise UserInputError(f"{campaign_dir} is not a campaign folder (no results.sqlite / campaign.yaml); "
                             "run `mcel campaign CAMPAIGN.yaml` first")
    try:
        spec = load_campaign(spec_file, strict=False)  # a saved campaign, perhaps from before a check
    except CampaignError as exc:
        raise UserInputError(f"{campaign_dir} is not a readable campaign folder ({exc}); run the campaign "
                             "again, or restore its results (mcel campaign ... --restore)") from None
    try:
        store = ResultStore(db, read_only=True)
    except sqlite3.DatabaseError as exc:
        raise UserInputError(f"{db} is not a readable campaign results store ({exc}); run the campaign again, "
                             "or restore its results (mcel campaign ... --restore)") from None
    try:
        return spec, expand(spec), store.done()
    finally:
        store.close()


def missing_results(campaign_dir: str | Path, tasks: list, done: dict) -> list[dict]:
    """Every planned task (``tasks``, :func:`load_results`) without a result in ``done``: its
    label, stage and why (``failed`` with the error's first line, or ``not run``). A report of a
    campaign with failed tasks listed only what finished, and looked complete."""
    store = ResultStore(Path(campaign_dir) / "results.sqlite", read_only=True)
    try:
        failed = store.failed()
    finally:
        store.close()
    return [{"label": t.label, "stage": t.stage,
             **({"status": "failed", "error": (failed[t.key]["error"] or "").splitlines()[0][:160]}
                if t.key in failed else {"status": "not run"})}
            for t in tasks if t.key not in done]


def planned_networks(spec: CampaignSpec) -> dict[str, set[tuple[str, int]]]:
    """Per model label: the (loss label, seed) networks the campaign plans."""
    planned: dict[str, set[tuple[str, int]]] = {}
    for point in spec.points:
        planned.setdefault(point.model_label, set()).add((point.loss_label, point.seed))
    for ip in spec.imports:
        planned.setdefault(ip.label, set()).add(("imported", 0))
    return planned


def _absent(planned: set[tuple[str, int]], cells: list[dict]) -> list[str]:
    """The planned (loss, seed) networks without a row among ``cells`` (across_seeds rows)."""
    have = {(r["loss"], seed) for r in cells for seed in r["seeds"]}
    return [f"{loss} seed {seed}" for loss, seed in sorted(planned - have)]


def campaign_table(campaign_dir: str | Path) -> list[dict]:
    """One row per (model, loss, seed, source, fault model, rate): mean accuracy and interval.

    ``source`` is ``software`` (sweep) or ``hardware`` (RTL simulation; with the software
    prediction for the same maps and the count of maps whose outputs were identical).
    """
    from mcel_train.sweep import within_accuracies

    spec, tasks, done = load_results(campaign_dir)
    rows = []
    sources = []
    for point in spec.points:
        train = done.get(point.key)
        sources.append(("train", point.key, {
            "model": point.model_label, "loss": point.loss_label, "margin": point.margin, "seed": point.seed,
            "clean_accuracy": None if train is None else train["test_accuracy"],
            "mean_logit_margin": None if train is None else train["mean_logit_margin"]}))
    for ip in spec.imports:  # imported networks: clean accuracy from their sweep (all test images)
        sweeps = [done[t.key] for t in tasks if t.stage == "sweep" and t.params.get("import") == ip.key
                  and t.key in done]
        sources.append(("import", ip.key, {
            "model": ip.label, "loss": "imported", "margin": 0.0, "seed": 0,
            "clean_accuracy": sweeps[0]["clean_accuracy"] if sweeps else None, "mean_logit_margin": None}))
    for field, key, base in sources:
        for task in tasks:
            if task.params.get(field) != key or task.key not in done or task.stage not in ("sweep", "hwsim"):
                continue
            result = done[task.key]
            if task.stage == "sweep":
                for r in result["results"]:
                    rows.append(base | {"source": "software", "fault_model": task.params["fault_model"],
                                        "rate": r["rate"], "mean": r["mean"], "ci95": r["ci95"],
                                        "maps": len(r["accuracies"]), "images": result.get("n_test")})
            elif task.stage == "hwsim":
                for c in result["curves"]:
                    # records of simulations compared before hw_interval existed hold the half-width only
                    interval = c.get("hw_interval") or within_accuracies(c["hw_mean"] - c["hw_ci95"],
                                                                         c["hw_mean"] + c["hw_ci95"])
                    rows.append(base | {"source": "hardware", "fault_model": task.params["fault_model"],
                                        "rate": c["rate"], "mean": c["hw_mean"], "ci95": list(interval),
                                        "maps": c["maps"],
                                        "sw_predicted_mean": c["sw_mean"], "identical_maps": c["identical_maps"]})
    return rows


def across_seeds(rows: list[dict]) -> list[dict]:
    """Per (model, loss, fault model, rate) of the software sweeps: the mean over training seeds
    of each seed's mean over fault maps, its Student-t 95 % interval across the seeds
    (``ci95_seeds``, ``None`` with one seed), the mean half width of one seed's map interval,
    and the seeds' mean clean accuracy and logit margin. ``ci95`` is the interval across seeds,
    or with one seed that seed's map interval.

    Every comparison of losses (best loss per rate, recommendations, the curves, the paper
    reproduction) reads this, so none compares one seed's result with another loss's mean."""

    from mcel_train.sweep import accuracy_interval, within_accuracies

    sw = [r for r in rows if r["source"] == "software"]
    out = []
    for model, loss, fm, rate in dict.fromkeys((r["model"], r["loss"], r["fault_model"], r["rate"]) for r in sw):
        cells = [r for r in sw if (r["model"], r["loss"], r["fault_model"], r["rate"]) == (model, loss, fm, rate)]
        acc = [r["mean"] for r in cells]
        halves = [(r["ci95"][1] - r["ci95"][0]) / 2 for r in cells if r["ci95"]]
        clean = [r["clean_accuracy"] for r in cells if r["clean_accuracy"] is not None]
        margins = [r["mean_logit_margin"] for r in cells if r.get("mean_logit_margin") is not None]
        mean, seeds_ci = float(np.mean(acc)), accuracy_interval(acc)
        half = float(np.mean(halves)) if halves else None
        out.append({"model": model, "loss": loss, "margin": cells[0].get("margin", 0.0), "fault_model": fm,
                    "rate": rate, "seeds": sorted(r["seed"] for r in cells), "mean": mean,
                    "ci95_seeds": seeds_ci, "map_ci95_half_width": half,
                    "ci95": seeds_ci or (None if half is None else within_accuracies(mean - half, mean + half)),
                    "maps": [r.get("maps") for r in cells],
                    "clean_accuracy": float(np.mean(clean)) if clean else None,
                    "mean_logit_margin": float(np.mean(margins)) if margins else None})
    return out


def best_margins(rows: list[dict], planned: dict[str, set[tuple[str, int]]] | None = None) -> list[dict]:
    """Per (model, fault model, rate > 0): the loss that keeps the most accuracy there, on the
    means over training seeds (:func:`across_seeds`).

    Among the losses whose mean at that rate lies inside the best one's 95 % interval (across
    seeds; one seed's map interval when there is one seed) -- a tie within the measurement --
    the one with the highest clean accuracy wins: the most tolerance at the least
    clean-accuracy cost. Its gain over cross-entropy is reported alongside. With ``planned``
    (:func:`planned_networks`), a cell whose planned networks did not all finish names them in
    ``missing``: its choice is among what finished only.
    """
    out = []
    sw = [r for r in across_seeds(rows) if r["rate"] > 0]
    for model, fm, rate in sorted({(r["model"], r["fault_model"], r["rate"]) for r in sw}):
        cands = [r for r in sw if (r["model"], r["fault_model"], r["rate"]) == (model, fm, rate)]
        best = max(cands, key=lambda r: r["mean"])
        tied = [r for r in cands if best["ci95"] is None or r["mean"] >= best["ci95"][0]]
        pick = max(tied, key=lambda r: (r["clean_accuracy"] or 0.0, r["mean"]))
        ce = next((r for r in cands if r["margin"] == 0 and r["loss"].upper() == "CE"), None)
        clean = pick["clean_accuracy"] or 0.0
        out.append({"model": model, "fault_model": fm, "rate": rate, "loss": pick["loss"], "margin": pick["margin"],
                    "seeds": pick["seeds"], "accuracy": pick["mean"], "clean_accuracy": pick["clean_accuracy"],
                    "gain_over_ce": None if ce is None else pick["mean"] - ce["mean"],
                    "clean_cost_vs_ce": None if ce is None else (ce["clean_accuracy"] or 0.0) - clean})
        absent = _absent(planned.get(model, set()), cands) if planned else []
        if absent:  # only then: a complete campaign's report.json is as it was
            out[-1]["missing"] = absent
    return out


def recommend(rows: list[dict], target_ber: float, max_clean_drop: float, fault_model: str = "flip",
              planned: dict[str, set[tuple[str, int]]] | None = None) -> list[dict]:
    """Per model: which loss to train with for ``target_ber`` within a clean-accuracy budget.

    ``max_clean_drop``: accuracy points of clean accuracy the user gives up at most, measured
    against cross-entropy of the same model (the best clean variant if the grid has no CE).
    Each variant's expected accuracy at the rate is the mean over training seeds of its
    per-seed mean over fault maps, with a Student-t 95 % interval across the seeds (the map
    intervals are reported too). ``verdict`` says when the grid cannot support a choice: the
    rate is not in it, fewer than two seeds, no variant within the budget, or the best one's
    interval includes cross-entropy's mean (then CE is recommended: nothing is shown better).
    With ``planned`` (:func:`planned_networks`), networks planned but without a result at the
    rate are named (``missing``), and a planned CE without one leaves no choice: the baseline
    of the comparison is missing.
    """
    sw = [r for r in across_seeds(rows) if r["fault_model"] == fault_model]
    out = []
    for model in sorted({r["model"] for r in sw}):
        mine = [r for r in sw if r["model"] == model]
        rates = sorted({r["rate"] for r in mine})
        # the same rate as the grid's, written another way (1e-3 vs 0.001): a relative match, so
        # that a target of 1e-300 is not taken for the grid's rate 0
        at = [r for r in mine if math.isclose(r["rate"], target_ber, rel_tol=1e-9, abs_tol=0.0)]
        if not at:
            out.append({"model": model, "verdict": f"the grid has no rate {target_ber:g} "
                        f"(rates: {', '.join(f'{x:g}' for x in rates)})"})
            continue
        variants = [{"loss": r["loss"], "seeds": len(r["seeds"]), "accuracy": r["mean"],
                     "ci95_seeds": r["ci95_seeds"], "clean_accuracy": r["clean_accuracy"],
                     "map_ci95_half_width": r["map_ci95_half_width"]}
                    for r in sorted(at, key=lambda r: r["loss"])]
        ce = next((v for v in variants if v["loss"].upper() == "CE"), None)
        ref = ce if ce is not None else max(variants, key=lambda v: v["clean_accuracy"] or 0.0)
        budget = (ref["clean_accuracy"] or 0.0) - max_clean_drop / 100
        eligible = [v for v in variants if v["clean_accuracy"] is not None and v["clean_accuracy"] >= budget]
        rec = {"model": model, "rate": target_ber, "max_clean_drop_points": max_clean_drop,
               "reference": ref["loss"], "variants": variants}
        absent = _absent(planned.get(model, set()), at) if planned else []
        if absent:
            rec["missing"] = absent
        if ce is None and any(loss.upper() == "CE" for loss, _ in (planned or {}).get(model, ())):
            out.append(rec | {"verdict": f"CE, the baseline, has no result at this rate (missing: "
                                         f"{', '.join(absent)}): no choice; finish the campaign (--resume)"})
            continue
        if not eligible:
            out.append(rec | {"verdict": "no variant keeps its clean accuracy within the budget"})
            continue
        best = max(eligible, key=lambda v: v["accuracy"])
        rec |= {"choice": best["loss"], "accuracy": best["accuracy"], "ci95_seeds": best["ci95_seeds"],
                "clean_accuracy": best["clean_accuracy"]}
        if best["seeds"] < 2 or best["ci95_seeds"] is None:
            rec["verdict"] = "one training seed only: no interval across seeds, the choice is not supported"
        elif ce is not None and best is not ce and best["ci95_seeds"][0] <= ce["accuracy"]:
            rec |= {"choice": ce["loss"], "accuracy": ce["accuracy"], "ci95_seeds": ce["ci95_seeds"],
                    "clean_accuracy": ce["clean_accuracy"],
                    "verdict": f"no loss beats CE beyond the interval across seeds (best: {best['loss']})"}
        elif best is ce:
            others = [v for v in eligible if v is not ce]
            runner = max(others, key=lambda v: v["accuracy"]) if others else None
            rec["verdict"] = (("CE is the only loss with a result at this rate" if absent else
                               "CE is the only loss within the budget") if runner is None else
                              f"CE is the most accurate loss within the budget (next: {runner['loss']}, "
                              f"{(ce['accuracy'] - runner['accuracy']) * 100:.1f} points lower)")
        else:
            gain = None if ce is None else best["accuracy"] - ce["accuracy"]
            rec["verdict"] = "supported" + ("" if gain is None else f": {gain * 100:+.1f} points over CE")
        out.append(rec)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _plot_model(rows: list[dict], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sw = [r for r in across_seeds(rows) if r["model"] == model]
    hw = [r for r in rows if r["model"] == model and r["source"] == "hardware"]
    several_fm = len({r["fault_model"] for r in sw + hw}) > 1
    curves = list(dict.fromkeys((r["loss"], r["fault_model"]) for r in sw + hw))
    for i, (loss, fm) in enumerate(curves):
        color, name = f"C{i}", f"{loss}, {fm}" if several_fm else loss
        pts = sorted((r for r in sw if (r["loss"], r["fault_model"]) == (loss, fm)), key=lambda r: r["rate"])
        if pts:
            # one curve per loss: the mean over training seeds, the band its interval across
            # seeds (one seed: the map interval)
            x = [max(r["rate"], 1e-5) for r in pts]
            n_seeds = max(len(r["seeds"]) for r in pts)
            ax.plot(x, [100 * r["mean"] for r in pts], "-", color=color,
                    label=f"{name} (software, {n_seeds} seed{'s' if n_seeds > 1 else ''})")
            band = [(x_, r["ci95"]) for x_, r in zip(x, pts, strict=True) if r["ci95"] is not None]
            if band:
                ax.fill_between([b[0] for b in band], [100 * b[1][0] for b in band],
                                [100 * b[1][1] for b in band], color=color, alpha=0.15)
        for seed in dict.fromkeys(r["seed"] for r in hw if (r["loss"], r["fault_model"]) == (loss, fm)):
            # the RTL over the software prediction for the same maps and images
            hp = sorted((r for r in hw if (r["loss"], r["fault_model"], r["seed"]) == (loss, fm, seed)),
                        key=lambda r: r["rate"])
            x = [max(r["rate"], 1e-5) for r in hp]
            y = [100 * r["mean"] for r in hp]
            ax.errorbar(x, y, yerr=[[100 * (r["mean"] - r["ci95"][0]) for r in hp],
                                    [100 * (r["ci95"][1] - r["mean"]) for r in hp]],
                        fmt="o", color=color, mfc="none", capsize=3, label=f"{name} seed {seed} (RTL simulation)")
            ax.plot(x, [100 * r["sw_predicted_mean"] for r in hp], "+", color=color, markersize=9,
                    label=f"{name} seed {seed} (software, same maps and images)")
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate (rate 0 drawn at 1e-5)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: accuracy vs bit error rate (95 % intervals)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def maps_rule(software: dict) -> str:
    """How many maps each software rate got: fixed, or added until the interval is narrow enough."""
    if software.get("ci_width"):
        return (f"maps added per rate until the 95 % interval is {software['ci_width']:g} points wide, "
                f"at most {software['maps']}")
    return f"{software['maps']} maps per rate"


def identical_trainings(spec: CampaignSpec, done: dict) -> list[str]:
    """Variants of one model and seed that trained to the very same weights (equal weights
    digests), one sentence each: their rows are one network measured twice, not two results
    that agree (MCEL m=32 and m=128 saturate alike on a w1a1 network's small logits)."""
    groups: dict[tuple, list[str]] = {}
    for point in spec.points:
        digest = (done.get(point.key) or {}).get("weights_sha256")
        if digest:
            groups.setdefault((point.model_label, point.seed, digest), []).append(point.loss_label)
    return [f"{model} (seed {seed}): {' and '.join(losses)} trained to identical weights (equal weights digests), "
            "so their rows are one network, not independent results."
            for (model, seed, _), losses in groups.items() if len(losses) > 1]


def _markdown(spec: CampaignSpec, rows: list[dict], best: list[dict], pngs: dict[str, str],
              same: list[str] | None = None, missing: list[dict] | None = None) -> str:
    untrained = sum(1 for m in missing or [] if m["stage"] == "train")  # it counted the planned ones as trained
    networks = (f"{len(spec.points)} trained networks" if not untrained else
                f"{len(spec.points)} networks planned, {len(spec.points) - untrained} trained")
    lines = [f"# Campaign `{spec.name}`", "",
             f"{networks}; software: {maps_rule(spec.software)}, "
             f"fault models {', '.join(spec.software['fault_models'])}, seed {spec.software['seed']}."]
    if spec.hardware and any(r["source"] == "hardware" for r in rows):
        hw = spec.hardware
        lines.append(f"Hardware: RTL simulation (cocotb + Verilator) of each FINN build, {hw['maps']} maps per rate "
                     f"on {hw['images']} test images, {hw['inject']} injection, seed {hw['seed']}.")
    elif spec.hardware:  # e.g. a --software-only run: the builds and simulations are still to come
        lines.append("Hardware: no RTL simulation has finished yet (`mcel campaign ... --resume` runs them).")
    lines += ["", "Accuracy in %, mean over fault maps with its 95 % t-interval. Written by `mcel report` from the "
              "campaign's results store (`results.sqlite`); `report.json` holds every number and the campaign file.",
              *(["Hardware rows: the RTL's accuracy on the simulated images, and in brackets the software "
                 "prediction for the same fault maps and images (equal when every output matched)."]
                if any(r["source"] == "hardware" for r in rows) else []), ""]
    if same:
        lines[-1:-1] = [f"Note: {sentence}" for sentence in same]
    if spec.software.get("test_images"):  # the rate columns are on fewer images than the clean one
        lines[-1:-1] = [f"`clean %` is the training's accuracy on the whole test set; the software sweeps ran on the "
                        f"first {spec.software['test_images']} test images (p=0 is their clean accuracy)."]
    if missing:
        lines += ["## Missing results", "",
                  f"{len(missing)} planned task(s) have no result, so the tables below lack them and the best-loss "
                  "table chooses among what finished (`mcel campaign ... --resume` runs them again):", ""]
        lines += [f"- {m['label']}: " + (f"failed ({m['error']})" if m["status"] == "failed" else "not run")
                  for m in missing[:30]]
        lines += [f"- and {len(missing) - 30} more (report.json lists them all)"] if len(missing) > 30 else []
        lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", "", f"![{model}]({pngs[model]})", ""]
        mine = [r for r in rows if r["model"] == model]
        for source in ("software", "hardware"):
            sub = [r for r in mine if r["source"] == source]
            if not sub:
                continue
            rates = sorted({r["rate"] for r in sub})
            # a row per fault model when there are several (one row per loss and seed kept only
            # the last fault model's numbers, unnamed)
            several_fm = len({r["fault_model"] for r in sub}) > 1
            head = ["loss", "seed", *(["fault model"] if several_fm else []), "clean %",
                    "mean logit margin"] + [f"p={r:g}" for r in rates]
            if source == "hardware":
                head.append("maps identical to software")
            lines += [f"### {source}" + (" (RTL simulation; software prediction for the same maps in brackets)"
                                         if source == "hardware" else " (bit-exact integer model)"), "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for loss, seed, fm in dict.fromkeys((r["loss"], r["seed"], r["fault_model"]) for r in sub):
                cells = [r for r in sub if (r["loss"], r["seed"], r["fault_model"]) == (loss, seed, fm)]
                by_rate = {r["rate"]: r for r in cells}
                row = [loss, str(seed), *([fm] if several_fm else []), _pct(cells[0]["clean_accuracy"]),
                       "-" if cells[0]["mean_logit_margin"] is None else f"{cells[0]['mean_logit_margin']:.2f}"]
                for rate in rates:
                    r = by_rate.get(rate)
                    if r is None:
                        row.append("-")
                        continue
                    cell = f"{_pct(r['mean'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"
                    if source == "hardware":
                        cell += f" ({_pct(r['sw_predicted_mean'])})"
                    row.append(cell)
                if source == "hardware":
                    row.append(f"{sum(r['identical_maps'] for r in cells)}/{sum(r['maps'] for r in cells)}")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += ["## Best loss per target rate", "",
              "The loss with the highest accuracy at the rate (mean over training seeds); among losses inside "
              "its 95 % interval (across seeds; with one seed, over maps), the one with the highest clean "
              "accuracy (most tolerance at the least clean-accuracy cost).", "",
              "| model | fault model | rate | best | seeds | accuracy % | clean % | gain over CE (points) "
              "| clean cost vs CE (points) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        gain = "-" if b["gain_over_ce"] is None else f"{100 * b['gain_over_ce']:+.2f}"
        cost = "-" if b["clean_cost_vs_ce"] is None else f"{100 * b['clean_cost_vs_ce']:+.2f}"
        lines.append(f"| {b['model']} | {b['fault_model']} | {b['rate']:g} | {b['loss']} | "
                     f"{','.join(map(str, b['seeds']))} | {_pct(b['accuracy'])} | "
                     f"{_pct(b['clean_accuracy'])} | {gain} | {cost} |")
    incomplete = [b for b in best if b.get("missing")]
    if incomplete:
        lines += ["", f"Incomplete: {len(incomplete)} of these cells choose among the networks that finished; "
                  f"missing, e.g. at {incomplete[0]['model']} {incomplete[0]['fault_model']} "
                  f"{incomplete[0]['rate']:g}: {', '.join(incomplete[0]['missing'])}."]
    return "\n".join(lines) + "\n"


def _html(markdown: str, title: str) -> str:
    """A self-contained HTML page of the report (tables, headings, images; no extra package)."""
    body, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                tag, in_table = "th", True
            else:
                tag = "td"
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1: -1]
            body.append(f'<img src="{html.escape(src)}" alt="{html.escape(src)}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}img{max-width:100%}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _carried(campaign_dir: Path) -> bool:
    """Whether the campaign has something ``results.json`` carries: a finished task, or a sweep's
    checkpoint."""
    from mcel_train.sweep import CHECKPOINT

    store = ResultStore(campaign_dir / "results.sqlite", read_only=True)
    try:
        done = bool(store.done_rows())
    finally:
        store.close()
    return done or any((campaign_dir / "tasks").glob(f"sweep-*/{CHECKPOINT}"))


def write_report(campaign_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``report.json`` and one PNG per model; returns the md
    path. Before any sweep or simulation has finished there is no table: only ``results.json``
    (:data:`ARCHIVE_NAME`) is written, when it has something to carry (finished trainings, a
    sweep's checkpoint) to another clone, and its path is returned."""
    campaign_dir = Path(campaign_dir)
    spec, tasks, done = load_results(campaign_dir)
    rows = campaign_table(campaign_dir)
    target = Path(out) if out else campaign_dir / "report"
    if not rows and not _carried(campaign_dir):
        raise UserInputError(f"{campaign_dir} has no finished sweeps or simulations yet: nothing to report")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (
            (target / "report.md").is_file() or (target / ARCHIVE_NAME).is_file()))):
        raise UserInputError(f"--out {target} exists and is not a report folder; give a new folder")
    if not rows:  # finished trainings or a sweep's checkpoint: no table yet, but they travel
        with atomic_stage(target, force=True) as out:
            write_archive(campaign_dir, out / ARCHIVE_NAME, spec.name)
        return target / ARCHIVE_NAME
    # the whole report replaces the last one at once: a failure (a plot, a full disk) leaves it as it was
    with atomic_stage(target, force=True) as out:
        pngs = {}
        for model in dict.fromkeys(r["model"] for r in rows):
            name = f"{model}.png".replace("/", "_")
            _plot_model(rows, model, out / name)
            pngs[model] = name
        best = best_margins(rows, planned_networks(spec))
        missing = missing_results(campaign_dir, tasks, done)
        md = _markdown(spec, rows, best, pngs, identical_trainings(spec, done), missing)
        (out / "report.md").write_text(md)
        (out / "report.html").write_text(_html(md, f"campaign {spec.name}"))
        extra = {"missing": missing} if missing else {}  # a complete campaign's record is as it was
        (out / "report.json").write_text(json.dumps({"campaign": spec.raw, "rows": rows, "best": best, **extra},
                                                    indent=1))
        write_archive(campaign_dir, out / ARCHIVE_NAME, spec.name)  # what --restore takes in another clone
    return target / "report.md"
