"""The campaign's task graph and the stage functions its workers run.

A campaign expands into six kinds of task, each keyed by the content of its inputs (the
resolved config plus the keys of the tasks it reads), so that the same training config is trained
once, the same build built once, however many grid cells share them:

* ``import`` -- copy of a network brought in by ``mcel import`` (its export stage);
* ``train``  -- one network (:func:`mcel_train.train.run_train`);
* ``sweep``  -- software bit-error sweep of a trained network for one fault model;
* ``build``  -- FINN build + Verilator model of a trained network;
* ``hwsim``  -- cocotb RTL simulation of a build at every hardware rate, then the hardware vs
  software comparison (one Verilator harness build serves all rates and maps);
* ``evidence`` -- margins, weight codes and the effect of faults on the margin of a trained
  network (:func:`mcel_train.fault_effect.network_evidence`), for the campaign's ``evidence``
  section.

Each task works in its own folder ``<campaign>/tasks/<stage>-<key>/``; stages that read an
earlier stage's output see it through relative symlinks (``train``, ``build``), so the project's
run-folder layout (``<run>/train``, ``<run>/build``, ...) holds in every task folder. A folder
without a finished row in the store is stale (a killed task) and is wiped before the task reruns.
Trainings and sweeps write sparse progress lines to ``progress.log`` in their folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from flows.campaign.spec import CampaignSpec, content_key

STAGES = ("import", "train", "sweep", "build", "hwsim", "evidence")
SOFTWARE_STAGES = ("import", "train", "sweep", "evidence")  # no FINN, no RTL simulator
PROGRESS_LOG = "progress.log"  # a long task's sparse progress lines (tail -f it)


@dataclass(frozen=True)
class Task:
    """One unit of work: what to run, on which inputs, and which tasks must finish first."""

    stage: str
    key: str
    label: str
    params: dict
    deps: tuple[str, ...] = field(default_factory=tuple)

    @property
    def folder(self) -> str:
        return f"{self.stage}-{self.key}"

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "label": self.label, "params": self.params,
                "deps": list(self.deps)}


# What a finished task leaves for the tasks after it, under its folder (the rest is its record).
OUTPUTS = {"import": "export", "train": "train", "build": "build"}


def output_missing(campaign_dir: Path, task: Task) -> bool:
    """True when later tasks read ``task``'s output and its folder does not hold it (a result
    restored from another folder, :mod:`flows.campaign.archive`)."""
    sub = OUTPUTS.get(task.stage)
    return sub is not None and not (Path(campaign_dir) / "tasks" / task.folder / sub).exists()


def software_tasks(tasks: list[Task], done: set[str]) -> list[Task]:
    """The tasks of software stages whose inputs are software too or finished already (an
    imported network's sweep reads its build); ``tasks`` in dependency order."""
    kept: list[Task] = []
    keys: set[str] = set()
    for task in tasks:
        if task.stage in SOFTWARE_STAGES and all(d in keys or d in done for d in task.deps):
            kept.append(task)
            keys.add(task.key)
    return kept


def expand(spec: CampaignSpec) -> list[Task]:
    """All tasks of a campaign, dependencies before dependents, no duplicates."""
    tasks: dict[str, Task] = {}

    def add(task: Task) -> Task:
        tasks.setdefault(task.key, task)
        return tasks[task.key]

    sw = spec.software
    for ip in spec.imports:
        imp = add(Task("import", ip.key, f"import {ip.label}", {"path": ip.path, "sha256": ip.source["sha256"]}))
        build = add(_build_task(spec, ip.label, {"import": imp.key}, (imp.key,)))
        for fm in sw["fault_models"]:  # an imported network sweeps on its build's integer network
            params = {"import": imp.key, "build": build.key, "fault_model": fm, "ber": sw["ber"],
                      "maps": sw["maps"], "seed": sw["seed"],
                      **{k: sw[k] for k in ("ci_width", "test_images") if k in sw}}
            add(Task("sweep", content_key({"stage": "sweep", **params}), f"sweep {ip.label} {fm}", params,
                     (build.key, imp.key)))
        if spec.hardware is not None:
            add(_hwsim_task(spec, ip.label, build, {"import": imp.key}, (build.key, imp.key)))
    for point in spec.points:
        name = f"{point.model_label} {point.loss_label} seed {point.seed}"
        train = add(Task("train", point.key, f"train {name}", {"config": point.config}))
        sizes = {k: sw[k] for k in ("ci_width", "test_images") if k in sw}
        if point.test_images is not None:
            sizes["test_images"] = point.test_images
        for fm in sw["fault_models"]:
            params = {"train": train.key, "fault_model": fm, "ber": sw["ber"], "maps": sw["maps"],
                      "seed": sw["seed"], **sizes}
            add(Task("sweep", content_key({"stage": "sweep", **params}), f"sweep {name} {fm}", params,
                     (train.key,)))
        if spec.has_evidence(point):
            params = {"train": train.key, **{k: spec.evidence[k] for k in ("rate", "maps", "images")}}
            if spec.evidence.get("map_seed"):  # only when not the default: older campaigns keep their keys
                params["map_seed"] = spec.evidence["map_seed"]
            add(Task("evidence", content_key({"stage": "evidence", **params}), f"evidence {name}", params,
                     (train.key,)))
        if not spec.on_hardware(point):
            continue
        build = add(_build_task(spec, name, {"train": train.key}, (train.key,)))
        add(_hwsim_task(spec, name, build, {"train": train.key}, (build.key, train.key)))
    return list(tasks.values())


def _build_task(spec: CampaignSpec, name: str, source: dict, deps: tuple[str, ...]) -> Task:
    hw = spec.hardware
    params = {**source, "target_cycles": hw["target_cycles"], "folding": hw["folding"],
              "runtime_writeable": hw["inject"] == "axilite"}
    return Task("build", content_key({"stage": "build", **params}), f"build {name}", params, deps)


def _hwsim_task(spec: CampaignSpec, name: str, build: Task, source: dict, deps: tuple[str, ...]) -> Task:
    hw = spec.hardware
    params = {"build": build.key, **source, **{k: hw[k] for k in ("ber", "maps", "images", "inject", "seed",
                                                                  "fault_model")}}
    return Task("hwsim", content_key({"stage": "hwsim", **params}), f"hwsim {name}", params, deps)


def _link(folder: Path, name: str, target: Path) -> None:
    """Relative symlink ``folder/name -> target`` (relative, so the campaign folder can move)."""
    os.symlink(os.path.relpath(target, folder), folder / name)


def prepare_folder(campaign_dir: Path, task: Task) -> Path:
    """A fresh folder for ``task`` (a stale one from a killed attempt is wiped first)."""
    from mcel_train.sweep import CHECKPOINT

    tasks_dir = Path(campaign_dir) / "tasks"
    folder = tasks_dir / task.folder
    # A killed sweep's finished rates survive the wipe (mcel_train/sweep.py, SweepCheckpoint):
    # they are checked against the sweep's parameters and weights before any is reused.
    checkpoint = folder / CHECKPOINT
    kept = checkpoint.read_bytes() if task.stage == "sweep" and checkpoint.is_file() else None
    if folder.exists() or folder.is_symlink():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if kept is not None:
        checkpoint.write_bytes(kept)
    train_key = task.params.get("train")
    if train_key:
        _link(folder, "train", tasks_dir / f"train-{train_key}" / "train")
    import_key = task.params.get("import")
    if import_key and task.stage != "import":
        _link(folder, "export", tasks_dir / f"import-{import_key}" / "export")
    if task.stage in ("hwsim", "sweep") and "build" in task.params:
        _link(folder, "build", tasks_dir / f"build-{task.params['build']}" / "build")
    return folder


def _run_import(folder: Path, params: dict) -> dict:
    """Copy the imported run's export stage into the task (the campaign then needs nothing
    outside its folder), checking that the graph is still the one the campaign was made with."""
    import hashlib

    from flows.export import QONNX_FILE
    from mcel_train.errors import ArtifactError
    from mcel_train.runio import EXPORT_RECORD

    src = Path(params["path"]) / "export"
    digest = hashlib.sha256((src / QONNX_FILE).read_bytes()).hexdigest()
    record = json.loads((src / EXPORT_RECORD).read_text())
    if digest != params["sha256"] or record["source"]["sha256"] != params["sha256"]:
        raise ArtifactError(f"{src} changed since the campaign was set up (SHA-256 differs); import it again")
    tmp = folder / "export.partial"
    shutil.copytree(src, tmp)
    tmp.rename(folder / "export")
    return {"source": record["source"], "check": record["check"], "input_kind": record["input_kind"]}


def _run_train(folder: Path, params: dict) -> dict:
    from mcel_train.config import validate
    from mcel_train.train import run_train

    # run_train writes <folder>/train atomically; the folder itself exists already.
    with open(folder / PROGRESS_LOG, "a") as log:
        run_train(validate(params["config"]), folder, progress_file=log)
    from mcel_train.runio import weights_digest

    metrics = json.loads((folder / "train" / "metrics.json").read_text())
    keep = ("test_accuracy", "mean_logit_margin", "median_step_time_s", "wall_time_s", "train_images", "test_images")
    return {k: metrics[k] for k in keep} | {
        "final_loss": metrics["epochs"][-1]["loss"], "epochs": len(metrics["epochs"]),
        "weights_sha256": weights_digest(folder)}


def _run_sweep(folder: Path, params: dict) -> dict:
    from mcel_train.sweep import run_sweep

    with open(folder / PROGRESS_LOG, "a") as log:
        record = run_sweep(folder, params["ber"], maps=params["maps"], seed=params["seed"],
                           fault_model=params["fault_model"], progress_file=log,
                           ci_width=params.get("ci_width", 0.0), test_images=params.get("test_images", 0),
                           images_flag="the campaign's test_images=",
                           ci_flags=("the campaign's software.ci_width", "software.maps"))
    return {"clean_accuracy": record["clean_accuracy"], "n_test": record["n_test"], "results": [
        {"rate": r["rate"], "mean": r["mean"], "ci95": r["ci95"], "maps": r["maps"], "accuracies": r["accuracies"],
         **({"ci_width_reached": r["ci_width_reached"]} if "ci_width_reached" in r else {})}
        for r in record["results"]]}


def _run_evidence(folder: Path, params: dict) -> dict:
    from mcel_train.fault_effect import network_evidence

    return network_evidence(folder, params["images"], params["rate"], params["maps"], params.get("map_seed", 0))


def _run_build(folder: Path, params: dict) -> dict:
    from flows.build import build_run, export_run

    # the build's progress (FINN steps, phases) into the task's log, as the trainings' and sweeps'
    with open(folder / PROGRESS_LOG, "a") as log, contextlib.redirect_stdout(log):
        if "import" not in params:  # an imported network's export stage is linked in already
            export_run(folder)
        record = build_run(folder, folding=params["folding"], target_cycles=params["target_cycles"],
                           runtime_writeable=params["runtime_writeable"])
    verification = record.get("verification") or {}
    return {"target_cycles": record["target_cycles"], "folding": record["folding"],
            "total_seconds": record["total_seconds"], "bit_exact": verification.get("bit_exact"),
            "cycles_per_image": verification.get("cycles_per_image_vs_estimate")}


def _run_hwsim(folder: Path, params: dict) -> dict:
    from hw_sim.compare import compare_run
    from hw_sim.sim import run_sim

    with open(folder / PROGRESS_LOG, "a") as log, contextlib.redirect_stdout(log):  # the map progress
        run_sim(folder, params["ber"], maps=params["maps"], images=params["images"], seed=params["seed"],
                fault_model=params["fault_model"], inject=params["inject"],
                batch_images=min(params["images"], 1000), jobs=1,  # the executor runs tasks in parallel
                rate_flag="hardware.ber", images_flag="hardware.images")
    result = compare_run(folder)  # raises MismatchError after writing compare.json/png
    record = json.loads((folder / "sim" / "hw_ber.json").read_text())
    maps = [{k: m[k] for k in ("id", "rate", "accuracy", "predicted_accuracy", "identical_to_software",
                               "cycles_per_image", "digest")} for m in record["maps"]]
    return {"identical": result["identical"], "curves": result["curves"], "maps": maps,
            "images": record["images"]}


RUNNERS = {"import": _run_import, "train": _run_train, "sweep": _run_sweep, "build": _run_build,
           "hwsim": _run_hwsim, "evidence": _run_evidence}


def execute(task_dict: dict, campaign_dir: str) -> dict:
    """Run one task in a worker process; returns its JSON-able result (raises on failure).

    Every worker computes with one thread: the numbers then do not depend on how many tasks
    share the machine, and a local pool and a Ray cluster give identical results.
    """
    import torch

    torch.set_num_threads(1)
    task = Task(task_dict["stage"], task_dict["key"], task_dict["label"], task_dict["params"],
                tuple(task_dict["deps"]))
    folder = prepare_folder(Path(campaign_dir), task)
    return RUNNERS[task.stage](folder, task.params)
