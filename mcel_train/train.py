"""The training stage: a validated config in, ``runs/NAME/train/`` out.

Outputs: ``model.pt`` (state dict, loadable with ``weights_only=True``), the resolved
``config.yaml`` and ``metrics.json``. The stage writes into a temporary sibling folder and renames
it at the end, so a failed or interrupted run never leaves a half-written run folder, and an
existing one is never overwritten silently.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import yaml
from torch import nn

from mcel_train.config import TrainConfig, validate
from mcel_train.data import Dataset, encode_inputs, load_dataset
from mcel_train.digest import state_digest
from mcel_train.errors import StageExistsError
from mcel_train.fault_training import make_fault_injection_hook
from mcel_train.losses import MCEL, make_loss
from mcel_train.malloc_tuning import keep_freed_memory
from mcel_train.models import build_model
from mcel_train.progress import progress_bar
from mcel_train.runio import load_run
from mcel_train.stage import blocking_file

EVAL_BATCH = 1000


class RunExistsError(StageExistsError):
    """The target stage folder exists already."""


def set_seed(seed: int) -> torch.Generator:
    """Seed torch (CPU kernels are deterministic here) and return a generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def network_inputs(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    """The integer input tensor of ``model`` for ``uint8`` images, shaped as the model wants."""
    x = encode_inputs(images, model.spec.input_kind)
    return x.reshape(x.shape[0], *model.input_shape)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of ``model`` (switched to eval mode) on ``images``, batched."""
    return predict_logits_and_scale(model, images, batch)[0]


@torch.no_grad()
def predict_logits_and_scale(model: nn.Module, images: np.ndarray,
                             batch: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and their quantization scale (``logits / scale`` are the integer accumulators)."""
    model.eval()
    outs, scale = [], torch.ones(())
    for i in range(0, len(images), batch):
        logits, scale = model.logits_and_scale(network_inputs(model, images[i : i + batch]))
        outs.append(logits)
    return (torch.cat(outs) if outs else torch.empty(0)), scale


def predicted_classes(logits: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Top-1 class as the accelerator computes it: argmax of the integer accumulators, the
    lowest index winning a tie. Integer logits tie often; on the float logits, rounding noise
    would pick the winner of a tie instead."""
    return torch.round(logits / scale).argmax(1).numpy()


def logit_margins(logits: torch.Tensor) -> torch.Tensor:
    """Per-image top-1 minus top-2 logit."""
    top2 = torch.topk(logits, 2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and mean logit margin (top-1 minus top-2, averaged) on a split."""
    logits, scale = predict_logits_and_scale(model, images)
    acc = float((predicted_classes(logits, scale) == labels).mean()) if len(labels) else float("nan")
    return {"accuracy": acc, "mean_logit_margin": float(logit_margins(logits).mean())}


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg["optimizer"]
    if o["name"] == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"]
        )
    return torch.optim.Adam(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int):
    s = cfg["schedule"]
    if s["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if s["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s["step_size"], gamma=s["gamma"])
    return None


def _fault_hook(cfg: TrainConfig, model: nn.Module):
    """Random bit error training (Stutz et al.): faults drawn anew in each forward pass."""
    ft = cfg["fault_training"]
    if not ft:
        return None

    seed = int(ft.get("seed", cfg["seed"]))
    return make_fault_injection_hook(model, ft.get("model", "flip"), float(ft["rate"]), seed)


def train_model(cfg: TrainConfig, data: Dataset, show_progress: bool = True,
                progress_file: TextIO | None = None) -> tuple[nn.Module, dict]:
    """Train a zoo model on ``data`` as ``cfg`` says; return it (eval mode) and its metrics.
    ``progress_file``: where the progress goes (default stderr; a file gets sparse lines)."""
    gen = set_seed(cfg["seed"])
    model = build_model(cfg.model)
    loss_cfg = cfg["loss"]
    loss_fn = make_loss(loss_cfg["name"], **{k: v for k, v in loss_cfg.items() if k not in ("name", "logits")})
    integer_logits = loss_cfg["logits"] == "integer"
    opt = _optimizer(cfg, model)
    train = data.train
    if cfg["data"]["limit_train"]:
        train = type(train)(train.images[: cfg["data"]["limit_train"]], train.labels[: cfg["data"]["limit_train"]])
    x_all = network_inputs(model, train.images)
    y_all = torch.from_numpy(train.labels)
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(y_all) / bs)
    sched = _scheduler(cfg, opt, steps_per_epoch * cfg["epochs"])
    per_step_sched = cfg["schedule"]["name"] == "cosine"
    hook = _fault_hook(cfg, model)
    history, step_times = [], []
    bar = progress_bar(total=steps_per_epoch * cfg["epochs"], desc=f"train {cfg.name}", disable=not show_progress,
                       unit="step", file=progress_file)
    try:
        for epoch in range(cfg["epochs"]):
            model.train()
            order = torch.randperm(len(y_all), generator=gen)
            loss_sum, correct = 0.0, 0
            for i in range(steps_per_epoch):
                idx = order[i * bs : (i + 1) * bs]
                x, y = x_all[idx], y_all[idx]
                t0 = time.perf_counter()
                logits, scale = model.logits_and_scale(x)
                loss = loss_fn(logits / scale if integer_logits else logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if isinstance(loss_fn, MCEL):
                    loss_fn.step()
                if sched is not None and per_step_sched:
                    sched.step()
                step_times.append(time.perf_counter() - t0)
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                bar.update(1)
            if sched is not None and not per_step_sched:
                sched.step()
            val = evaluate(model, data.val.images, data.val.labels)
            history.append({
                "epoch": epoch + 1,
                "loss": loss_sum / len(y_all),
                "train_accuracy": correct / len(y_all),
                "val_accuracy": val["accuracy"],
            })
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val=f"{val['accuracy']:.4f}")
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
    model.eval()
    test = evaluate(model, data.test.images, data.test.labels)
    metrics = {
        "epochs": history,
        "test_accuracy": test["accuracy"],
        "mean_logit_margin": test["mean_logit_margin"],
        "median_step_time_s": statistics.median(step_times),
        "train_images": len(y_all),
        "test_images": len(data.test),
    }
    if isinstance(loss_fn, MCEL):
        metrics["relative_separation"] = loss_fn.relative_separation
    return model, metrics


def versions() -> dict:
    """Versions of the tools that produced a stage's outputs."""
    import brevitas

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "brevitas": brevitas.__version__, "numpy": np.__version__,
    }


def run_train(cfg: TrainConfig, run_dir: str | Path, show_progress: bool = True,
              progress_file: TextIO | None = None) -> Path:
    """Train and write ``run_dir/train/``. Raises before any work if it exists already."""
    run_dir = Path(run_dir)
    keep_freed_memory()  # every step frees and reallocates its activations: see mcel_train.malloc_tuning
    stage = run_dir / "train"
    if stage.exists():
        raise RunExistsError(f"{stage} exists already; choose another --out or delete it first")
    blocker = blocking_file(run_dir)
    if blocker is not None:  # checked now, not after the training
        raise RunExistsError(f"--out {run_dir}: {blocker} is a file, not a folder; choose another --out")
    data = load_dataset(cfg["data"]["dataset"], cfg["data"]["data_dir"], cfg["data"]["val_fraction"], cfg["seed"])
    t0 = time.perf_counter()
    model, metrics = train_model(cfg, data, show_progress, progress_file)
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["dataset_source"] = data.source
    metrics["versions"] = versions()
    # the seed fixes the weights only together with this: torch splits a CPU reduction over
    # its threads, and another split rounds differently (smoke_digits: 2 threads gave other
    # weights than 1; a campaign trains on 1)
    metrics["torch_threads"] = torch.get_num_threads()
    metrics["weights_sha256"] = state_digest(model.state_dict())  # checked by load_run
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=run_dir))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on train/, unlike every other stage's folder
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        with open(tmp / "config.yaml", "w") as f:
            yaml.safe_dump(_relocatable(cfg.raw, run_dir), f, sort_keys=False)
        with open(tmp / "metrics.json", "w") as f:
            json.dump(metrics, f, indent=2)
        tmp.rename(stage)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if stage.exists():  # checked before training: another command wrote it meanwhile
            raise StageExistsError(f"{stage} was written by another command while this one trained; nothing of "
                                   f"this training was kept") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stage


def _relocatable(raw: dict, run_dir: Path) -> dict:
    """The config as the run stores it: a relative data folder relative to the run folder (as
    typed, it was relative to the cwd of the training, and a sweep from anywhere else could not
    find it); an absolute one as given (a run copied elsewhere on the machine still finds it)."""
    data_dir = (raw.get("data") or {}).get("data_dir")
    if not data_dir or Path(data_dir).is_absolute():
        return raw
    rel = os.path.relpath(Path(data_dir).resolve(), Path(run_dir).resolve())
    return {**raw, "data": {**raw["data"], "data_dir": rel}}


def load_trained(run_dir: str | Path) -> tuple[nn.Module, TrainConfig]:
    """A trained model (eval mode) and its validated config (:func:`mcel_train.runio.load_run`)."""
    run = load_run(run_dir)
    return run.model, validate(run.config)
