"""The paper's experiment as one command: a campaign preset that trains every (model, variant),
sweeps it, and writes ``docs/results.md``.

``mcel experiment`` turns its options into a campaign (:func:`campaign_spec`: the models and
the loss variants as the grid, each variant a loss entry that may carry config overrides, per-model
epochs and sweep sizes on the model entries) and runs it with the campaign runner in
``out/``, so it resumes after a kill like any campaign (``flows/campaign/runner.py``): finished
trainings and sweeps are kept, changed settings make new tasks. The report is then written from
the campaign's task records alone (:func:`collect`); it states the settings that were actually
used (epochs, training images, maps), read back from each run's own records, so a short run can
never be mistaken for the paper's full protocol.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows.campaign.report import load_results
from flows.campaign.runner import run_spec
from flows.campaign.spec import CONFIG_DIR, CampaignSpec, parse_campaign
from mcel_train.errors import UserInputError
from mcel_train.stage import blocking_file

DEFAULT_MODELS = ("sfc_w2a2", "sfc_w4a4", "sfc_w1a1", "vgg3_w4a4")
DEFAULT_RATES = (0.0, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 2e-2)
DEFAULT_MAPS = 50


@dataclass(frozen=True)
class Variant:
    """One training recipe: a campaign loss entry (which may carry config overrides in ``set``)."""

    name: str
    label: str
    loss: dict = field(default_factory=dict)


_MCEL = {"name": "mcel", "L": 100}
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("ce", "CE", {"name": "ce"}),
    Variant("mcel8", "MCEL m=8", {**_MCEL, "margin": 8}),
    Variant("mcel32", "MCEL m=32", {**_MCEL, "margin": 32}),
    Variant("mcel128", "MCEL m=128", {**_MCEL, "margin": 128}),
    Variant("hinge", "modified hinge (b=128)", {"name": "hinge", "b": 128}),
    Variant("fat", "CE + fault-aware training p=1%",
            {"name": "ce", "fault_training": {"model": "flip", "rate": 0.01}}),
    Variant("mcel32_int", "MCEL m=32, integer logits", {**_MCEL, "margin": 32, "logits": "integer"}),
    Variant("mcel32_const", "MCEL m=32, const weight scale (init abs-max)",
            {**_MCEL, "margin": 32, "set": {"model.weight_scaling": "const"}}),
)}


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that decides the numbers of one experiment (saved into ``results.json``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    variants: tuple[str, ...] = tuple(VARIANTS)
    out: Path = Path("runs/experiment")
    epochs: int | None = None
    limit_train: int = 0
    maps: int = DEFAULT_MAPS
    rates: tuple[float, ...] = DEFAULT_RATES
    seed: int = 0
    jobs: int = 2
    train_seed: int | None = None
    test_images: int = 0  # sweep on the first N test images (0 = all 10000)
    # Per-model exceptions to ``epochs`` / ``test_images`` (a slow model such as vgg3 on a CPU).
    epochs_by_model: dict[str, int] = field(default_factory=dict)
    test_images_by_model: dict[str, int] = field(default_factory=dict)

    def epochs_for(self, model: str) -> int | None:
        return self.epochs_by_model.get(model, self.epochs)

    def test_images_for(self, model: str) -> int:
        return self.test_images_by_model.get(model, self.test_images)

    def check(self) -> None:
        """Reject unknown names and bad sizes before any work starts, naming the flag (the
        campaign the experiment becomes would name its own keys, which the user never wrote)."""
        for flag, names in (("--models", self.models), ("--variants", self.variants)):
            if not names:
                raise UserInputError(f"{flag} names nothing; give at least one, comma-separated")
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise UserInputError(f"{flag} names {repeated[0]} twice")
        for flag, value in (("--limit-train", self.limit_train), ("--seed", self.seed),
                            ("--train-seed", self.train_seed)):
            if value is not None and value < 0:
                raise UserInputError(f"{flag} must be >= 0, got {value}")
        if len(set(self.rates)) != len(self.rates):
            raise UserInputError("--rates repeats a rate; give each once")
        for m in self.models:
            if not config_path(m).is_file():
                raise UserInputError(f"no config {config_path(m)} for model {m!r}; give --models zoo names")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise UserInputError(f"unknown --variants {', '.join(bad)}; known: {', '.join(VARIANTS)}")
        if self.maps < 2:
            raise UserInputError("--maps must be >= 2 (a confidence interval needs two maps)")
        if any(e is not None and e < 1 for e in (self.epochs, *self.epochs_by_model.values())):
            raise UserInputError("--epochs must be >= 1")
        if any(t < 0 for t in (self.test_images, *self.test_images_by_model.values())):
            raise UserInputError("--test-images must be >= 0 (0 = all)")
        for name in (*self.epochs_by_model, *self.test_images_by_model):
            if name not in self.models:
                raise UserInputError(f"per-model setting for {name!r}, which is not in --models")
        if self.jobs < 1:
            raise UserInputError("--jobs must be >= 1")


def config_path(model: str) -> Path:
    """The Fashion-MNIST YAML config of a zoo model."""
    return CONFIG_DIR / f"{model}_fmnist.yaml"


def campaign_raw(settings: ExperimentSettings) -> dict:
    """The experiment as a campaign file's content (what ``out/campaign.yaml`` holds)."""
    models = []
    for m in settings.models:
        entry: dict = {"name": m, "label": m}
        if settings.epochs_for(m) is not None:
            entry["set"] = {"epochs": settings.epochs_for(m)}
        if settings.test_images_for(m):
            entry["test_images"] = settings.test_images_for(m)
        models.append(entry)
    losses = [{**VARIANTS[v].loss, "label": v} for v in settings.variants]
    train_set = {"data.limit_train": settings.limit_train} if settings.limit_train else {}
    return {
        "name": "experiment", "seed": settings.seed,
        "train": {"set": train_set} if train_set else {},
        "grid": {"models": models, "losses": losses,
                 "seeds": [0 if settings.train_seed is None else settings.train_seed]},
        "software": {"fault_models": ["flip"], "ber": [float(r) for r in settings.rates],
                     "maps": settings.maps, "seed": settings.seed},
        "retries": 1,
    }


def campaign_spec(settings: ExperimentSettings) -> CampaignSpec:
    settings.check()
    return parse_campaign(campaign_raw(settings))


def check_docs_owner(settings: ExperimentSettings, docs: Path, force: bool) -> None:
    """Refuse to replace another experiment's report in ``docs`` without ``--force``: a small
    trial with the default ``--docs docs`` replaced the committed four-model report. A report of
    this same campaign (``--out``) is rewritten freely, as a resumed experiment does."""
    existing = Path(docs) / "results.json"
    if force or not existing.is_file():
        return
    try:
        owner = json.loads(existing.read_text())["settings"]["out"]
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if owner is None or Path(owner).resolve() != Path(settings.out).resolve():
        raise UserInputError(f"--docs {docs} holds the report of another experiment ({owner or 'unknown'}): pass "
                             "--force to replace it, or give another --docs")


def run_experiment(settings: ExperimentSettings, docs: Path = Path("docs"),
                   notes: Sequence[str] = (), show_progress: bool = True, force: bool = False) -> dict:
    """Run (or resume) the experiment's campaign, then write the report; returns the record."""
    blocker = blocking_file(docs)  # refused before the campaign, not after it
    if blocker is not None:
        raise UserInputError(f"--docs {docs}: {blocker} is a file, not a folder; give a folder")
    spec = campaign_spec(settings)  # the settings' own errors first
    check_docs_owner(settings, docs, force)
    summary = run_spec(spec, settings.out, workers=settings.jobs, resume=True, show_progress=show_progress)
    record = collect(settings, notes)
    write_report(record, docs)
    if summary["failed"]:
        raise UserInputError(f"{summary['failed']} task(s) failed: {summary['failures']}; "
                             f"rerun the same command to retry them")
    return record


def _run_summary(rd: Path, base: Path) -> dict | None:
    """Numbers of one finished run, read from its train and sweep records (``rd``: a sweep task
    folder, which holds ``sweep/`` and a link to its ``train/``)."""
    metrics_p, sweep_p = rd / "train" / "metrics.json", rd / "sweep" / "sw_ber.json"
    if not (metrics_p.is_file() and sweep_p.is_file()):
        return None
    metrics = json.loads(metrics_p.read_text())
    sweep = json.loads(sweep_p.read_text())
    return {
        "run": str(rd.relative_to(base)),
        "epochs": len(metrics["epochs"]),
        "train_images": metrics["train_images"],
        "test_images": metrics["test_images"],
        "float_test_accuracy": metrics["test_accuracy"],
        "clean_accuracy": sweep["clean_accuracy"],
        "mean_logit_margin": metrics["mean_logit_margin"],
        "median_step_time_s": metrics["median_step_time_s"],
        "train_wall_time_s": metrics.get("wall_time_s"),
        "maps": sweep["maps"],
        "sweep_test_images": sweep.get("n_test"),
        "sweep": [{k: r[k] for k in ("rate", "mean", "std", "ci95", "faults_per_map_mean")}
                  for r in sweep["results"]],
    }


def _sweep_folders(settings: ExperimentSettings) -> dict[tuple[str, str], Path]:
    """(model, variant) -> the folder of its finished sweep task in the experiment's campaign."""
    out = Path(settings.out)
    if not (out / "results.sqlite").is_file():
        return {}
    held, tasks, done = load_results(out)
    if held.name != "experiment":
        raise UserInputError(f"--out {out} holds campaign {held.name!r}, not an experiment; give the experiment's "
                             "folder")
    spec = campaign_spec(settings)
    wanted = {p.key: (p.model_label, p.loss_label) for p in spec.points}
    sw = spec.software
    found = {}
    for t in tasks:
        if (t.stage == "sweep" and t.key in done and t.params.get("train") in wanted
                and t.params["maps"] == sw["maps"] and t.params["ber"] == sw["ber"] and t.params["seed"] == sw["seed"]):
            model, variant = wanted[t.params["train"]]
            if t.params.get("test_images", 0) == settings.test_images_for(model):
                found[(model, variant)] = out / "tasks" / t.folder
    return found


def collect(settings: ExperimentSettings, notes: Sequence[str] = ()) -> dict:
    """Gather every finished run of the experiment from its campaign (missing runs are listed)."""
    folders = _sweep_folders(settings)
    models, missing = {}, []
    for m in settings.models:
        rows = {}
        for v in settings.variants:
            s = _run_summary(folders[(m, v)], Path(settings.out)) if (m, v) in folders else None
            if s is None:
                missing.append(f"{m}/{v}")
            else:
                rows[v] = {"label": VARIANTS[v].label, **s}
        models[m] = rows
    return {
        "format": "mcel-experiment",
        "version": 2,
        "settings": {
            "models": list(settings.models), "variants": list(settings.variants),
            "out": str(settings.out), "epochs_override": settings.epochs,
            "limit_train": settings.limit_train, "maps": settings.maps, "test_images": settings.test_images,
            "epochs_by_model": dict(settings.epochs_by_model),
            "test_images_by_model": dict(settings.test_images_by_model),
            "rates": [float(r) for r in settings.rates], "seed": settings.seed,
            "train_seed_override": settings.train_seed,
            "fault_model": "flip", "memory_layout": "natural (software model)",
        },
        "variants": {v: {"label": VARIANTS[v].label, "loss": VARIANTS[v].loss} for v in settings.variants},
        "models": models,
        "missing": missing,
        "notes": list(notes),
    }


def _plot(model: str, rows: dict, out_png: Path) -> Path:
    from mcel_train.plotting import plot_sweeps

    recs = [(row["label"], {"results": row["sweep"], "fault_model": {"spec": "flip"}})
            for row in rows.values()]
    return plot_sweeps(recs, out_png, title=f"{model}: accuracy under weight bit flips "
                                            "(mean, 95% CI)")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _by_model(record: dict, key: str) -> str:
    """``"10"`` when every run has the same ``key``, else ``"10 (sfc_w2a2, ...); 3 (vgg3_w4a4)"``."""
    models: dict[str, list[str]] = {}
    for model, rows in record["models"].items():
        for value in sorted({str(r.get(key)) for r in rows.values()}):
            models.setdefault(value, []).append(model)
    if len(models) <= 1:
        return next(iter(models), "-")
    return "; ".join(f"{value} ({', '.join(names)})" for value, names in models.items())


def _settings_text(record: dict) -> list[str]:
    s = record["settings"]
    seed = s.get("train_seed_override")
    seed = "the configs' own (0)" if seed is None else seed
    overrides = s["epochs_override"]
    if s.get("epochs_by_model"):
        overrides = f"{overrides!r}, per model {s['epochs_by_model']}"
    return [
        "## Settings used",
        "",
        f"- Epochs: {_by_model(record, 'epochs')} "
        f"(override {overrides}; the configs' own default is 10).",
        f"- Training images: {_by_model(record, 'train_images')} "
        f"(limit_train={s['limit_train']}; 54000 = the full Fashion-MNIST train split minus "
        "10% validation).",
        f"- Test images: {_by_model(record, 'test_images')} for training's float accuracy and "
        f"margin; the fault sweeps, and the tables' clean accuracy (the sweeps' rate 0), use "
        f"{_by_model(record, 'sweep_test_images')} (10000 = the whole test set).",
        f"- Training seed: {seed}; one training run per (model, variant).",
        f"- Fault model: independent bit flips in the stored weight words (natural layout), "
        f"{s['maps']} fault maps per rate, seed {s['seed']}; rates "
        f"{', '.join(f'{r:g}' for r in s['rates'])}.",
        "- Accuracy is that of the bit-exact integer network (argmax of integer logits, ties to "
        "the lowest class); 95% CI is a Student-t interval of the mean over maps.",
        "- Mean logit margin: top-1 minus top-2 float logit on the clean test set "
        "(from training's metrics).",
        "- Step time: median wall time of one training step (batch 128, one torch thread) on a "
        "shared 2-core machine whose load changed during the experiment: only large "
        "differences (e.g. fault-aware training's extra work) mean anything.",
        "",
    ]


def markdown(record: dict, plots: dict[str, str]) -> str:
    """The human-readable report of a results record."""
    rates = record["settings"]["rates"]
    lines = ["# Results: bit-error tolerance by training loss", "",
             "Generated by `mcel experiment` (a campaign preset); numbers are read from the task "
             f"records of the campaign in `{record['settings']['out']}`.", ""]
    lines += _settings_text(record)
    if record.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in record["notes"]], ""]
    for model, rows in record["models"].items():
        lines += [f"## {model}", ""]
        if not rows:
            lines += ["No finished runs.", ""]
            continue
        head = ["variant", "clean acc %", "mean logit margin"]
        head += [f"acc % at p={r:g} [95% CI]" for r in rates if r > 0]
        head += ["ms / step"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows.values():
            cells = [row["label"], _pct(row["clean_accuracy"]), f"{row['mean_logit_margin']:.2f}"]
            for r in row["sweep"]:
                if r["rate"] == 0:
                    continue
                ci = r["ci95"] or [r["mean"], r["mean"]]
                cells.append(f"{_pct(r['mean'])} [{_pct(ci[0])}, {_pct(ci[1])}]")
            cells.append(f"{1000 * row['median_step_time_s']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if model in plots:
            lines += [f"![{model}]({plots[model]})", ""]
    lines += _findings(record)
    if record["missing"]:
        lines += ["## Missing runs", "", ", ".join(record["missing"]), ""]
    return "\n".join(lines)


def _findings(record: dict, rates: Sequence[float] = (1e-2, 2e-2)) -> list[str]:
    """Gain of every variant over CE at ``rates``, with whether the 95% CIs are disjoint."""
    lines = ["## Gain over CE", "",
             "Computed from the tables above: accuracy difference in points (mean over maps); "
             "'separated' means the two 95% CIs do not overlap; 'drop' is clean minus faulty "
             "accuracy of the same network, which separates robustness from clean accuracy. "
             "The CIs cover the fault-map "
             "randomness only: each variant was trained once (one seed), so training-to-training "
             "variation is not in them.", ""]
    found = False
    for model, rows in record["models"].items():
        if "ce" not in rows:
            continue
        ce = {r["rate"]: r for r in rows["ce"]["sweep"]}
        for v, row in rows.items():
            if v == "ce":
                continue
            parts = []
            for r in row["sweep"]:
                if r["rate"] not in rates or r["rate"] not in ce:
                    continue
                c = ce[r["rate"]]
                sep = bool(r["ci95"] and c["ci95"] and (r["ci95"][0] > c["ci95"][1]
                                                        or r["ci95"][1] < c["ci95"][0]))
                drop = 100 * (row["clean_accuracy"] - r["mean"])
                ce_drop = 100 * (rows["ce"]["clean_accuracy"] - c["mean"])
                parts.append(f"{100 * (r['mean'] - c['mean']):+.1f} at p={r['rate']:g} "
                             f"({'separated' if sep else 'CIs overlap'}; drop from own clean "
                             f"{drop:.1f} vs CE {ce_drop:.1f})")
            if not parts:
                continue
            clean = 100 * (row["clean_accuracy"] - rows["ce"]["clean_accuracy"])
            lines.append(f"- {model}, {row['label']}: {', '.join(parts)}; "
                         f"clean {clean:+.1f} points.")
            found = True
    return [*lines, ""] if found else []


def write_report(record: dict, docs: Path = Path("docs")) -> Path:
    """Write ``results.json``, ``results.md`` and one ``results_MODEL.png`` per model.

    ``docs`` holds other documents too, so the report is not a folder of its own: every file is
    written beside its place first and renamed in only when all are made (a failed plot leaves
    the last report whole, not a new table beside old plots), and the plots of models the last
    report had and this one lacks are removed (they were left behind, referenced by nothing)."""
    docs.mkdir(parents=True, exist_ok=True)
    try:
        before = set(json.loads((docs / "results.json").read_text()).get("models") or {})
    except (OSError, ValueError, AttributeError):
        before = set()
    plots, staged = {}, []
    try:
        for model, rows in record["models"].items():
            if rows:
                png = docs / f"results_{model}.png"
                staged.append((docs / f".results_{model}.partial.png", png))
                _plot(model, rows, staged[-1][0])
                plots[model] = png.name
        md = docs / "results.md"
        for text, path in ((json.dumps(record, indent=1) + "\n", docs / "results.json"),
                           (markdown(record, plots), md)):
            staged.append((path.with_name(f".{path.name}.partial"), path))
            staged[-1][0].write_text(text)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for model in sorted(before - set(plots)):
        (docs / f"results_{model}.png").unlink(missing_ok=True)
    return md


def gain_at(record: dict, model: str, variant: str, rate: float, base: str = "ce") -> float | None:
    """Accuracy difference (points) of ``variant`` over ``base`` at ``rate``, if both ran."""
    rows = record["models"].get(model, {})
    if variant not in rows or base not in rows:
        return None

    def acc(v: str) -> float:
        return next(r["mean"] for r in rows[v]["sweep"] if r["rate"] == rate)

    return 100 * (acc(variant) - acc(base))


def parse_list(text: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")`` (checked against ``allowed`` when given)."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise UserInputError(f"unknown name(s) {', '.join(bad)}; known: {', '.join(allowed)}")
    return items
