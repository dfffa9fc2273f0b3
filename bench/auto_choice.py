"""Benchmark: how close ``auto`` comes to the faster path, call by call, in a sweep.

``mcel sweep`` evaluates each rate in calls of ``--map-batch`` maps, with one evaluator for
all rates; under ``auto`` a rate's first call chooses between the dense and the difference path
from an estimate and a probe, and each call's real time revises that choice for the calls that
follow (:meth:`mcel_train.evaluate.MapEvaluator._observe`). Here the same calls (same maps,
same images, rates ascending as a sweep runs them) go through three evaluators: ``dense``,
``difference`` and ``auto``, one call of each in turn, so all three share the machine's state
of the moment. Per rate it records the seconds of each, and ``auto`` against ``dense`` and
against the faster of the two fixed paths on each call (the best a choice could do, its own
estimates and probes not counted). It asserts that all three give the same accuracy for every
map.

    .venv/bin/python bench/auto_choice.py --run runs/sfc_w2a2 [--maps 100] [--map-batch 25]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from flags import ascending_rates, count, parser, record_path, run_folder, run_main
from record import write_record  # bench/record.py (the script's folder is on sys.path)
from trained import trained_network  # bench/trained.py

from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.stage import run_name

RATES = "1e-4,3e-4,5e-4,7e-4,1e-3,2e-3,5e-3,2e-2"
PATHS = ("dense", "difference", "auto")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True, help="trained run folder")
    p.add_argument("--rates", type=ascending_rates, default=RATES,
                   help="comma-separated bit error rates, ascending as a sweep")
    p.add_argument("--maps", type=count(1), default=100, help="maps per rate")
    p.add_argument("--map-batch", type=count(1), default=25, help="maps per call (mcel sweep's default)")
    p.add_argument("--test-images", type=count(0), default=0, help="first N test images (0 = all)")
    p.add_argument("--threads", type=count(1), default=2)
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--out", type=record_path, default=Path("runs/bench/auto_choice.json"))
    args = p.parse_args(argv)
    net, x, y = trained_network(args.run, args.test_images)
    torch.set_num_threads(args.threads)
    mems = net.memories()
    evaluators = {path: MapEvaluator(net, x, y, method=path) for path in PATHS}
    evaluators["auto"]._difference = evaluators["difference"].difference  # one clean state, as in a sweep
    warm = [generate_map(mems, "flip", 1e-4, args.seed + 1, i) for i in range(4)]
    for path in ("dense", "difference"):  # one-off loading (kernels, compiled post-ops) outside the timings
        evaluators[path].evaluate(warm)
    rows = []
    for rate in args.rates:
        seconds = {path: [] for path in PATHS}
        paths_taken = []
        for lo in range(0, args.maps, args.map_batch):
            ids = range(lo, min(args.maps, lo + args.map_batch))
            maps = [generate_map(mems, "flip", rate, args.seed, i) for i in ids]
            accuracy = {}
            for path in PATHS:
                ev = evaluators[path]
                before = dict(ev.timing)
                t0 = time.perf_counter()
                accuracy[path] = ev.evaluate(maps).accuracy
                seconds[path].append(time.perf_counter() - t0)
                if path == "auto":
                    ran = [k for k in ("probe", "dense", "difference") if ev.timing[k] > before[k]]
                    paths_taken.append("+".join(ran))
            assert all(np.array_equal(accuracy["dense"], accuracy[k]) for k in PATHS), f"accuracies differ at {rate:g}"
        best = float(np.sum(np.minimum(seconds["dense"], seconds["difference"])))
        total = {path: float(np.sum(s)) for path, s in seconds.items()}
        rows.append({"rate": rate, "calls": len(paths_taken), "seconds": total, "seconds_per_call": seconds,
                     "best_seconds": best,
                     "auto_paths": paths_taken, "auto_vs_dense": total["dense"] / total["auto"],
                     "auto_vs_best_per_call": best / total["auto"], "identical_accuracies": True})
        print(f"rate {rate:<8g} dense {total['dense']:.2f} s  difference {total['difference']:.2f} s  "
              f"auto {total['auto']:.2f} s ({rows[-1]['auto_vs_dense']:.2f}x dense, "
              f"{rows[-1]['auto_vs_best_per_call']:.2f}x the faster per call)  auto took: {' '.join(paths_taken)}",
              flush=True)
    total = {path: sum(r["seconds"][path] for r in rows) for path in PATHS}
    best = sum(r["best_seconds"] for r in rows)
    record = {"run": run_name(args.run), "images": len(y), "maps_per_rate": args.maps, "map_batch": args.map_batch,
              "torch_threads": args.threads, "seed": args.seed, "rows": rows, "seconds": total,
              "auto_vs_dense": total["dense"] / total["auto"], "auto_vs_best_per_call": best / total["auto"]}
    print(f"all rates: dense {total['dense']:.1f} s, difference {total['difference']:.1f} s, auto "
          f"{total['auto']:.1f} s ({record['auto_vs_dense']:.2f}x dense, {record['auto_vs_best_per_call']:.2f}x the "
          f"faster path per call)")
    write_record(args.out, record, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
