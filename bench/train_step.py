"""Training step time of MCEL against cross-entropy, measured in the same run.

Two identical sfc_w2a2 models take alternating optimizer steps on the same batches, one with
each loss, so machine noise hits both alike; the figure is the ratio of median step times.
Steps are timed as this process's CPU time on one torch thread (``--clock cpu``, the default),
which other processes on a shared machine disturb far less than wall time (``--clock wall``).
Goal (issue 2): MCEL within 5 % of cross-entropy. Writes ``runs/bench/train_step.json`` (``--out``).

    .venv/bin/python bench/train_step.py [--model sfc_w2a2] [--steps 200] [--batch 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from flags import count, parser, record_path, run_main  # bench/flags.py (the script's folder is on sys.path)
from record import write_record  # bench/record.py

from mcel_train.losses import MCEL, CrossEntropy
from mcel_train.models import build_model, parse_model_name


def _step(model, opt, loss_fn, x, y, clock) -> float:
    t0 = clock()
    loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return clock() - t0


def model_name(text: str) -> str:
    """A model zoo name (``sfc_w2a2``, ``vgg3_w4a4``, ...), checked before any step is timed."""
    try:
        parse_model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", type=model_name, default="sfc_w2a2")
    ap.add_argument("--steps", type=count(2), default=200)
    ap.add_argument("--batch", type=count(1), default=128)
    ap.add_argument("--seed", type=count(0), default=0)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--out", type=record_path, default="runs/bench/train_step.json")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)

    torch.manual_seed(args.seed)
    base = build_model(args.model)
    models = {"ce": copy.deepcopy(base), "mcel": copy.deepcopy(base)}
    losses = {"ce": CrossEntropy(), "mcel": MCEL(margin=32.0, L=100.0)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    spec = models["ce"].spec
    x_all = torch.randint(0, 256, (args.batch * 8, *models["ce"].input_shape)).float()
    if spec.input_kind == "bipolar":
        x_all = torch.where(x_all >= 128, 1.0, -1.0)
    y_all = torch.randint(0, 10, (args.batch * 8,))
    times: dict[str, list[float]] = {"ce": [], "mcel": []}
    for i in range(args.steps + 10):
        b = (i % 8) * args.batch
        x, y = x_all[b : b + args.batch], y_all[b : b + args.batch]
        order = ("ce", "mcel") if i % 2 == 0 else ("mcel", "ce")
        for k in order:
            t = _step(models[k], opts[k], losses[k], x, y, clock)
            if i >= 10:  # warm-up steps are not counted
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["mcel"] / med["ce"]
    result = {
        "model": args.model, "batch": args.batch, "steps": args.steps,
        "median_step_s": med, "mcel_over_ce": ratio, "goal": "<= 1.05", "met": ratio <= 1.05,
        "threads": torch.get_num_threads(), "clock": args.clock,
    }
    out = args.out
    write_record(out, result, args.force)
    print(f"{args.model} batch {args.batch}: CE {med['ce'] * 1e3:.2f} ms/step, MCEL {med['mcel'] * 1e3:.2f} ms/step, "
          f"MCEL/CE = {ratio:.3f} (goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}) -> {out}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
