"""Benchmark: one ``logits`` call holding several rates' maps, as ``mcel sim``'s predictor makes
it (every rate's maps, the clean rate first), under ``auto`` rate by rate, against ``auto`` with
one choice for the whole call (the behaviour before: the choice was estimated on the first
maps, all of the first rate) and against the dense path.

All three must give the same logits for every map and image (asserted). Writes a JSON record.

    .venv/bin/python bench/mixed_rates.py --run runs/sfc_w2a2 --rates 0,1e-3,2e-2 --maps 10
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flags import count, parser, record_path, run_folder, run_main
from flags import rates as rate_list
from record import write_record  # bench/record.py (the script's folder is on sys.path)
from trained import trained_network  # bench/trained.py

from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.stage import run_name


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True, help="run folder with train/model.pt")
    p.add_argument("--rates", type=rate_list, default="0,1e-3,2e-2",
                   help="comma-separated bit error rates, in call order")
    p.add_argument("--maps", type=count(1), default=10, help="maps per rate")
    p.add_argument("--test-images", type=count(0), default=0, help="first N test images (0 = all)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--repeat", type=count(1), default=2, help="fastest of this many interleaved timings")
    p.add_argument("--out", type=record_path, default=Path("runs/bench/mixed_rates.json"))
    args = p.parse_args(argv)
    net, x, y = trained_network(args.run, args.test_images)
    mems = net.memories()
    rates = args.rates
    maps = [generate_map(mems, "flip", r, args.seed, i) for r in rates for i in range(args.maps)]

    def whole_call(ev: MapEvaluator) -> MapEvaluator:
        ev._rate_groups = lambda fmaps: [list(range(len(fmaps)))]  # one choice for the call
        return ev

    difference = MapEvaluator(net, x, y, method="difference").difference  # clean state, shared
    MapEvaluator(net, x, y, method="dense").logits(maps[-4:])  # compiles the post-ops
    seconds: dict[str, float] = {}
    results, choices = {}, {}
    for _ in range(args.repeat):
        for name, make in (("auto_rate_by_rate", lambda: MapEvaluator(net, x, y, method="auto")),
                           ("auto_one_choice_per_call", lambda: whole_call(MapEvaluator(net, x, y, method="auto"))),
                           ("dense", lambda: MapEvaluator(net, x, y, method="dense"))):
            ev = make()
            ev._difference = difference
            t0 = time.perf_counter()
            results[name] = ev.logits(maps)
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
            choices[name] = {f"{k[1]:g}": c for k, c in ev._choice.items()}
    for name in results:
        assert np.array_equal(results[name], results["dense"]), f"{name} differs from dense"
    record = {
        "run": run_name(args.run), "images": len(y), "rates": rates, "maps_per_rate": args.maps, "seed": args.seed,
        "repeat": args.repeat, "seconds": seconds, "choices": choices,
        "rate_by_rate_vs_one_choice": seconds["auto_one_choice_per_call"] / seconds["auto_rate_by_rate"],
        "rate_by_rate_vs_dense": seconds["dense"] / seconds["auto_rate_by_rate"],
        "identical_logits": True,     }
    shown = ",".join(f"{r:g}" for r in rates)
    print(f"{len(maps)} maps at rates {shown} in one call, {len(y)} images: auto rate by rate "
          f"{seconds['auto_rate_by_rate']:.2f} s (choices {choices['auto_rate_by_rate']}), auto one choice "
          f"{seconds['auto_one_choice_per_call']:.2f} s (choices {choices['auto_one_choice_per_call']}), dense "
          f"{seconds['dense']:.2f} s; identical logits")
    write_record(args.out, record, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
