"""What keeping freed memory for reuse (``mcel_train/malloc_tuning.py``) saves, measured in one
run: the same fault maps evaluated in two fresh processes, one with glibc's default thresholds and
one tuned, each timed by ``getrusage`` around the second of two identical calls (the first
compiles and warms up).

    .venv/bin/python bench/malloc_tuning.py --run runs/vgg3_w4a4_paper --test-images 2000 \
        --maps 8 --rate 0.01 --out bench/results/malloc_tuning_vgg3.json

Writes wall, user and system seconds, minor page faults and peak resident memory per mode, and
the ratio of the wall times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flags import count, parser, rate, record_path, run_folder, run_main  # bench/flags.py
from record import write_record  # bench/record.py

from mcel_train.stage import run_name

CHILD = """
import json, resource, sys, time
from pathlib import Path
import torch
from mcel_train import malloc_tuning
if sys.argv[1] == "default":
    malloc_tuning._tuned = True  # as if done: glibc's own thresholds stay in effect
from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.intnet import from_brevitas
from mcel_train.runio import load_run
torch.set_num_threads(1)
run = load_run(Path(sys.argv[2]))
x, y = run.test_set()
n = int(sys.argv[3]) or len(y)
net = from_brevitas(run.model)
ev = MapEvaluator(net, x[:n], y[:n], method=sys.argv[6], compile_post=True)
maps = [generate_map(net.memories(), "flip", float(sys.argv[5]), 0, i) for i in range(int(sys.argv[4]))]
ev.evaluate(maps)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
acc = ev.evaluate(maps).accuracy
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "peak_rss_gb": r1.ru_maxrss / 1e6,
                  "mean_accuracy": float(acc.mean())}))
"""


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True, help="run folder with train/model.pt")
    p.add_argument("--test-images", type=count(0), default=2000, help="first N test images (0 = all)")
    p.add_argument("--maps", type=count(1), default=8)
    p.add_argument("--rate", type=rate, default=0.01)
    p.add_argument("--method", default="dense", choices=["dense", "difference", "auto"])
    p.add_argument("--out", type=record_path, default=Path("runs/bench/malloc_tuning.json"))
    args = p.parse_args(argv)
    modes = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.run), str(args.test_images),
                              str(args.maps), str(args.rate), args.method],
                             capture_output=True, text=True)
        if out.returncode:  # the child's own last line says why (a run without a training stage, ...)
            last = (out.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"error: the {mode} measurement failed: {last}", file=sys.stderr)
            return 2
        modes[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, modes[mode], flush=True)
    assert modes["default"]["mean_accuracy"] == modes["tuned"]["mean_accuracy"], "results differ"
    record = {"run": run_name(args.run), "test_images": args.test_images, "maps": args.maps, "rate": args.rate,
              "method": args.method, "modes": modes,
              "default_over_tuned_wall": modes["default"]["wall_s"] / modes["tuned"]["wall_s"]}
    write_record(args.out, record, args.force)
    print(f"wall {modes['default']['wall_s']:.2f} s -> {modes['tuned']['wall_s']:.2f} s "
          f"({record['default_over_tuned_wall']:.2f}x); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
