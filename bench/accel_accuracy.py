"""Top-1 accuracy of the built accelerator on the whole test set against the Brevitas model's.

Runs every test image through the build's Verilated accelerator (plain C++ harness, fast) and
compares its predictions, image by image, with the trained Brevitas model's (argmax of the
integer logits, lowest index on a tie, which is what the accelerator's outputs give).

    .venv/bin/python bench/accel_accuracy.py --run runs/tfc_w2a2_fmnist [--run runs/...]

Writes ``runs/bench/accel_accuracy.json`` (``--out``): ``{"runs": [one entry per --run]}``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from flags import parser, record_path, run_folder, run_main  # before bench/ leaves sys.path
from record import write_record  # bench/record.py

# bench/hw_sim.py would shadow the ``hw_sim`` package when this runs as a script from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.build import cpp_harness_format  # noqa: E402
from hw_sim.sim import load_build_manifest  # noqa: E402
from hw_sim.verilate import run_simulator  # noqa: E402
from mcel_train.runio import load_run  # noqa: E402
from mcel_train.train import predicted_classes  # noqa: E402


def check(run: Path) -> dict:
    run = run.resolve()
    manifest = load_build_manifest(run)
    r = load_run(run)
    model = r.model
    x, labels = r.test_inputs(10**9)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="accel_accuracy_") as work:  # the build stage stays as built
        hw, stats = run_simulator(run / "build" / "verilator" / "accel_sim", x, cpp_harness_format(manifest),
                                  Path(work), mem_dir=run / "build" / "hdl" / "mem")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        logits, scale = model.logits_and_scale(torch.from_numpy(x))
    sw_pred = predicted_classes(logits, scale)
    hw_pred = hw.argmax(1)
    return {
        "run": run.name, "images": len(labels), "accelerator_accuracy": float((hw_pred == labels).mean()),
        "brevitas_accuracy": float((sw_pred == labels).mean()),
        "predictions_identical": int((hw_pred == sw_pred).sum()),
        "integer_logits_identical": int(np.all(np.abs(hw - np.round((logits / scale).numpy())) < 1e-6, axis=1).sum()),
        "cycles_per_image": stats["cycles_per_image"],
        "finn_expected_ii": manifest.expected_ii(), "sim_seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--run", type=run_folder, action="append", required=True)
    ap.add_argument("--out", type=record_path, default="runs/bench/accel_accuracy.json")
    args = ap.parse_args(argv)
    results = [check(Path(r)) for r in args.run]
    write_record(args.out, {"runs": results}, args.force)
    for res in results:
        print(json.dumps(res))
    if any(res["predictions_identical"] != res["images"] for res in results):
        raise SystemExit("accelerator and Brevitas predictions differ")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
