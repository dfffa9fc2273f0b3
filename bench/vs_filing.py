"""Benchmark: today's fault evaluator against the dense evaluator as it was when the difference
issue was filed (the issue's own baseline, "today's dense evaluator" in its goal table).

The old evaluator runs from a temporary git worktree of ``--commit`` (default 5887954, the last
commit before the issue's work), in a child process whose ``PYTHONPATH`` is that worktree, on
the same run, images and maps (same seeds, so the same flips); today's dense, difference and
``auto`` paths run in this process. Each path gets a warm-up call, then the fastest of
``--repeat`` calls (so ``auto`` is timed as a sweep's later calls at a rate find it: its choice
made and revised by the calls before). It asserts that every path predicts the same class for every map and
image as the old evaluator, prints per rate each path's seconds and its speed against the old
evaluator, and writes a JSON record.

    .venv/bin/python bench/vs_filing.py --run runs/sfc_w2a2 --rates 1e-4,1e-3,2e-2 --maps 20
    .venv/bin/python bench/vs_filing.py --run runs/vgg3_w4a4_paper --test-images 2000 --rates 1e-4,1e-3 --maps 16

It needs the repository's history (a full clone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flags import count, parser, record_path, run_folder, run_main
from flags import rates as rate_list
from record import write_record  # bench/record.py (the script's folder is on sys.path)
from trained import trained_network  # bench/trained.py

from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.stage import run_name

FILING_COMMIT = "5887954"
PATHS = ("dense", "difference", "auto")

# Run inside the old worktree: only the API that commit had (MapEvaluator without ``method``).
OLD_EVALUATOR = """
import json, sys, time
import numpy as np, torch
from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.intnet import from_brevitas
from mcel_train.runio import load_run
run_dir, images, rates, maps, seed, threads, repeat, out = sys.argv[1:]
torch.set_num_threads(int(threads))
run = load_run(run_dir)
x, y = run.test_set()
if int(images):
    x, y = x[: int(images)], y[: int(images)]
net = from_brevitas(run.model)
mems = net.memories()
ev = MapEvaluator(net, x, y, rows=8192, compile_post=True)
seconds = []
for k, rate in enumerate(float(r) for r in rates.split(",")):
    fmaps = [generate_map(mems, "flip", rate, int(seed), i) for i in range(int(maps))]
    first = ev.evaluate(fmaps).predictions
    best = float("inf")
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        got = ev.evaluate(fmaps).predictions
        best = min(best, time.perf_counter() - t0)
    assert np.array_equal(first, got)
    np.save(f"{out}/rate{k}.npy", np.asarray(got, dtype=np.int64))
    seconds.append(best)
print(json.dumps(seconds))
"""


def fail(message: str) -> None:
    """One line on stderr and exit 2, as the project's commands do on bad input."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def old_evaluator(commit: str, args: argparse.Namespace, rates: list[float], out: Path) -> list[float]:
    """Seconds per rate of the evaluator at ``commit`` (its predictions saved in ``out``)."""
    root = repo_root()
    known = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        fail(f"commit {commit} is not in this clone's history: use a full clone (git fetch --unshallow) "
             f"or a --commit it holds (the default: {FILING_COMMIT})")
    tree = Path(tempfile.mkdtemp(prefix="vs_filing_")) / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        argv = [sys.executable, "-c", OLD_EVALUATOR, str(args.run.resolve()), str(args.test_images),
                ",".join(map(str, rates)), str(args.maps), str(args.seed), str(args.threads), str(args.repeat),
                str(out)]
        done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            fail(f"the evaluator of {commit} failed on this run ({last}): pass --commit or another --run")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tree.parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(root), "worktree", "prune"], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True, help="trained run folder")
    p.add_argument("--rates", type=rate_list, default="1e-4,1e-3,2e-2", help="comma-separated bit error rates")
    p.add_argument("--maps", type=count(1), default=20, help="maps per rate")
    p.add_argument("--test-images", type=count(0), default=0, help="first N test images (0 = all)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--threads", type=count(1), default=1, help="torch threads for both evaluators")
    p.add_argument("--repeat", type=count(1), default=3, help="timed calls per path and rate (the fastest kept)")
    p.add_argument("--commit", default=FILING_COMMIT, help="the old evaluator's commit")
    p.add_argument("--out", type=record_path, default=Path("runs/bench/vs_filing.json"))
    args = p.parse_args(argv)
    rates = args.rates
    # the run first: one it cannot read is named as such, not as the old evaluator's failure
    net, x, y = trained_network(args.run, args.test_images)

    with tempfile.TemporaryDirectory(prefix="vs_filing_preds_") as preds:
        print(f"the evaluator of {args.commit} (a worktree, its own process) ...", flush=True)
        old_seconds = old_evaluator(args.commit, args, rates, Path(preds))
        old_predictions = [np.load(Path(preds) / f"rate{k}.npy") for k in range(len(rates))]

    torch.set_num_threads(args.threads)
    mems = net.memories()
    evaluators = {path: MapEvaluator(net, x, y, compile_post=True, method=path) for path in PATHS}
    rows = []
    for rate, old_s, old_pred in zip(rates, old_seconds, old_predictions, strict=True):
        fmaps = [generate_map(mems, "flip", rate, args.seed, i) for i in range(args.maps)]
        seconds = {}
        for path, ev in evaluators.items():
            ev.evaluate(fmaps)  # warm-up: compiles, loads kernels, builds the clean state
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                got = ev.evaluate(fmaps).predictions
                best = min(best, time.perf_counter() - t0)
            assert np.array_equal(np.asarray(got, dtype=np.int64), old_pred), f"{path} differs at rate {rate}"
            seconds[path] = best
        row = {"rate": rate, "seconds": {"filing": old_s, **seconds},
               "vs_filing": {path: old_s / seconds[path] for path in PATHS},
               "difference_vs_dense": seconds["dense"] / seconds["difference"], "identical_predictions": True}
        rows.append(row)
        print(f"rate {rate:<8g} filing {old_s:.3f} s  " + "  ".join(
            f"{path} {seconds[path]:.3f} s ({row['vs_filing'][path]:.2f}x)" for path in PATHS)
            + f"  difference vs today's dense {row['difference_vs_dense']:.2f}x", flush=True)
    print("every prediction of every map identical to the evaluator as filed")
    write_record(args.out, {"run": run_name(args.run), "images": len(y), "maps": args.maps, "seed": args.seed,
                            "torch_threads": args.threads, "repeat": args.repeat, "commit": args.commit, "rows": rows},
                 args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
