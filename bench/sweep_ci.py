"""Benchmark: a sweep with a fixed number of maps per rate against one that stops adding maps
once the 95 % interval is narrow enough (``mcel sweep --ci-width``), on the same run and rates.

Both sweeps use the same maps (map ``i`` of a rate does not depend on where sampling stops), so
the adaptive sweep's accuracies are a prefix of the fixed one's. Records per rate the maps
needed, the interval reached, and both wall times. The two differ in two ways, as the issue
asked for "before and after": the fixed sweep runs the dense evaluator (``--method dense``,
the way before), the adaptive one ``mcel sweep``'s default ``auto``; the record's keys
(``fixed_dense``, ``adaptive_auto``) say so, and the ratio is of the two together.

    .venv/bin/python bench/sweep_ci.py --run runs/NAME [--maps 200] [--ci-width 0.1]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flags import count, parser, positive, record_path, run_folder, run_main
from record import write_record  # bench/record.py (the script's folder is on sys.path)

from mcel_train.errors import UserError
from mcel_train.runio import load_run
from mcel_train.stage import run_name

RATES = "0,1e-4,5e-4,1e-3,5e-3,1e-2,2e-2"


def sweep(run: Path, args: list[str], env: dict[str, str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", str(run), "--ber", RATES, "--quiet", "--force",
                           *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode:  # the sweep's own last line says why
        last = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
        raise UserError(f"mcel sweep failed: {last}")
    return json.loads((run / "sweep" / "sw_ber.json").read_text()), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True, help="trained run folder")
    p.add_argument("--maps", type=count(2), default=200)
    p.add_argument("--ci-width", type=positive, default=0.1, help="accuracy points")
    p.add_argument("--out", type=record_path, default=Path("runs/bench/sweep_ci.json"))
    args = p.parse_args(argv)
    # a folder without a training stage is one line here, not a traceback below; the copy finds
    # the run's dataset where the run does (its data.data_dir is relative to the run folder)
    folder = load_run(args.run).data_folder()
    env = {**os.environ, **({"MCEL_DATA_DIR": str(folder.resolve())} if folder is not None else {})}
    with tempfile.TemporaryDirectory() as tmp:  # the run's own sweep is left alone
        run = Path(tmp) / args.run.name
        shutil.copytree(args.run / "train", run / "train")
        fixed, t_fixed = sweep(run, ["--maps", str(args.maps), "--method", "dense"], env)
        adaptive, t_adaptive = sweep(run, ["--maps", str(args.maps), "--ci-width", str(args.ci_width)], env)
    rows = []
    for f, a in zip(fixed["results"], adaptive["results"], strict=True):
        assert a["accuracies"] == f["accuracies"][: a["maps"]], "the adaptive maps are not a prefix"
        width = (a["ci95"][1] - a["ci95"][0]) * 100 if a["ci95"] else None
        rows.append({"rate": a["rate"], "maps_needed": a["maps"], "reached_width_points": width,
                     "target_met": width is not None and width < args.ci_width,
                     "fixed_width_points": (f["ci95"][1] - f["ci95"][0]) * 100 if f["ci95"] else None})
        print(f"rate {a['rate']:<8g} maps {a['maps']:>4} / {args.maps}  interval {width:.3f} points"
              f"{'' if rows[-1]['target_met'] else '  (cap reached)'}")
    record = {"run": run_name(args.run), "images": fixed["n_test"], "cap_maps": args.maps,
              "ci_width_points": args.ci_width,
              "rows": rows, "seconds": {"fixed_dense": t_fixed, "adaptive_auto": t_adaptive},
              "speedup": t_fixed / t_adaptive}
    print(f"fixed {args.maps} maps per rate (dense): {t_fixed:.0f} s; adaptive (auto): {t_adaptive:.0f} s "
          f"({record['speedup']:.2f}x)")
    write_record(args.out, record, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
