"""Throughput of the cocotb testbench against a plain Verilator C++ harness, same build and images.

Measured in one run, on one build:

- ``cpp``: the build's plain C++ harness (``build/verilator/accel_sim``), the speed roof; both
  sides are timed over the streaming alone (the harness reports ``stream_seconds``; the
  testbench times its batches), not the start-up and memory loading;
- ``--repeats``: C++ and cocotb alternate, and the median ratio of the repeats is reported, so
  that a load change on a shared machine does not fall on one side only;
- ``cocotb_bulk``: the project's testbench (bulk buffers in the harness, clock in C, Python only
  between batches, only the harness and the memory arrays VPI-visible); goal: at least 0.8 of
  ``cpp``;
- ``cocotb_bulk_public_all``: the same testbench verilated the cocotb-runner default way, every
  signal public (``--public-flat-rw``): what the selective visibility buys;
- ``cocotb_naive``: Python touching the stream every cycle (few images), what the bulk buffers buy;
- cycles per image (steady-state initiation interval) against FINN's estimate; goal within 10 %;
- ``--full``: the whole 10k test set through one fault map at 1 % by ``mcel sim``'s path (maps,
  prediction, simulation, comparison), with one simulator process, with the images split
  over two (``--jobs 2``), and two with a profile-guided build (``--pgo``); goal under 30 s.

    .venv/bin/python bench/hw_sim.py --run runs/sfc_w2a2 [--images 2000] [--full]

Writes ``runs/bench/hw_sim.json`` (``--out``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from flags import count, parser, record_path, run_folder, run_main  # noqa: E402 - before bench/ leaves sys.path
from record import write_record  # noqa: E402 - bench/record.py, the same

# This script's own name would shadow the ``hw_sim`` package when run as ``bench/hw_sim.py``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from flows.build import cpp_harness_format  # noqa: E402
from hw_sim.job import SimJob  # noqa: E402
from hw_sim.runner import build_harness, run_job  # noqa: E402
from hw_sim.sim import load_build_manifest, run_sim  # noqa: E402
from hw_sim.streams import StreamFormat, pack  # noqa: E402
from hw_sim.verilate import run_simulator  # noqa: E402
from mcel_train.errors import UserError  # noqa: E402
from mcel_train.runio import load_run  # noqa: E402


def _cocotb(run: Path, sim_dir: Path, words_file: Path, maps: list[str], batch: int, mode: str = "bulk",
            tag: str = "") -> dict:
    job = SimJob(
        manifest=str((run / "build" / "manifest.json").resolve()), inputs=str(words_file),
        predicted=None, maps=maps, batch_images=batch, watchdog_cycles=10**7,
        out=str((sim_dir / f"bench_{mode}{tag}.npz").resolve()), mode="naive" if mode == "naive" else "batched",
    )
    t0 = time.perf_counter()
    run_job(sim_dir, job, name=f"bench_{mode}{tag}")
    total = time.perf_counter() - t0
    raw = np.load(job.out)
    return {"wall_in_testbench_s": float(raw["wall"].sum()), "process_s": total,
            "cycles": int(raw["cycles"].sum()), "outputs": raw["outputs"], "ii": raw["ii"].tolist()}


def _full_test_set(run: Path, sim_dir: Path) -> dict:
    """The whole test set through one 1 % map with ``mcel sim``'s own path, 1 and 2 simulators.

    A scratch run folder links the build, so the user's ``sim/`` is left alone.
    """
    scratch = sim_dir / "full_run"
    scratch.mkdir()
    for part in ("train", "export", "build"):
        if (run / part).exists():
            (scratch / part).symlink_to(run / part)
    out = {"images": None, "rate": 0.01, "goal_s": 30}
    for jobs, pgo in ((1, False), (2, False), (2, True)):
        t0 = time.perf_counter()
        record = json.loads(run_sim(scratch, [0.01], maps=1, images=10**5, seed=0, force=True, jobs=jobs,
                                    batch_images=2000, pgo=pgo).read_text())
        (m,) = record["maps"]
        assert m["identical_to_software"] and not m["hang"], "hardware differs from software"
        out["images"] = record["images"]
        out[f"simulators_{jobs}" + ("_pgo" if pgo else "")] = {
            "simulate_s": record["seconds_run"]["simulate"], "testbench_s": max(record["sim_wall_s_per_map"]),
            "prepare_s": record["seconds"]["prepare"], "build_s": record["build"]["build_seconds"],
            "command_s": time.perf_counter() - t0, "accuracy": m["accuracy"],
            "identical_to_software": m["identical_to_software"], "cycles_per_image": m["cycles_per_image"],
        }
    one = out["simulators_1"]["simulate_s"]
    out["speedup_over_1"] = {k: one / v["simulate_s"] for k, v in out.items() if k.startswith("simulators_2")}
    return out


def _measure(args, run: Path, x: np.ndarray, manifest, sim_dir: Path) -> dict:
    """The bench proper, its builds and files in ``sim_dir``; returns the record."""
    n = args.images
    in_fmt = StreamFormat.from_manifest(manifest.streams.input)
    words_file = (sim_dir / "inputs.npy").resolve()
    np.save(words_file, pack(x.reshape(n, -1), in_fmt))
    expected_ii = manifest.expected_ii()

    build = build_harness(run / "build", sim_dir, args.batch)
    # C++ and cocotb alternate, so that a change in the machine's load (a shared machine) hits
    # both sides of each repeat's ratio alike; the median ratio is the headline.
    repeats = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cpp_out, cpp_stats = run_simulator(run / "build" / "verilator" / "accel_sim", x,
                                           cpp_harness_format(manifest), sim_dir / "cpp",
                                           mem_dir=run / "build" / "hdl" / "mem")
        # The streaming alone (reported by the harness), as the testbench's time; a harness built
        # before it reported that falls back to the whole process (start-up and memory load too).
        cpp_s = cpp_stats.get("stream_seconds", time.perf_counter() - t0)
        bulk = _cocotb(run, sim_dir, words_file, [""], args.batch)
        assert np.array_equal(bulk["outputs"][0], cpp_out), "cocotb and C++ harness outputs differ"
        repeats.append({"cpp_images_per_s": n / cpp_s, "cocotb_images_per_s": n / bulk["wall_in_testbench_s"],
                        "ratio": cpp_s / bulk["wall_in_testbench_s"]})
    median = sorted(repeats, key=lambda r: r["ratio"])[len(repeats) // 2]

    public, build_public = None, None
    if not args.skip_public_all:
        public_dir = sim_dir / "public_all"
        build_public = build_harness(run / "build", public_dir, args.batch, public_all=True)
        public = _cocotb(run, public_dir, words_file, [""], args.batch, tag="_public_all")
        assert np.array_equal(public["outputs"][0], cpp_out), "cocotb (all public) and C++ outputs differ"

    naive_words = (sim_dir / "inputs_naive.npy").resolve()
    np.save(naive_words, pack(x[: args.naive_images].reshape(args.naive_images, -1), in_fmt))
    naive = _cocotb(run, sim_dir, naive_words, [""], args.batch, mode="naive")
    assert np.array_equal(naive["outputs"][0], cpp_out[: args.naive_images]), "naive outputs differ"

    ips = {"cpp": median["cpp_images_per_s"], "cocotb_bulk": median["cocotb_images_per_s"],
           "cocotb_naive": args.naive_images / naive["wall_in_testbench_s"]}
    if public is not None:
        ips["cocotb_bulk_public_all"] = n / public["wall_in_testbench_s"]
    ii = float(np.median(bulk["ii"]))
    result = {
        "run": run.name, "images": n, "expected_ii_cycles": expected_ii, "measured_ii_cycles": ii,
        "cycles_per_image_total": bulk["cycles"] / n, "ii_within_10pct": abs(ii - expected_ii) <= 0.1 * expected_ii,
        "images_per_s": ips, "cocotb_over_cpp": median["ratio"], "repeats": repeats,
        "bulk_over_naive": ips["cocotb_bulk"] / ips["cocotb_naive"],
        "selective_over_public_all": ips["cocotb_bulk"] / ips["cocotb_bulk_public_all"] if public else None,
        "cycles_per_s": {"cpp": cpp_stats["cycles"] / n * ips["cpp"],
                         "cocotb_bulk": bulk["cycles"] / n * ips["cocotb_bulk"]},
        "harness_build": build, "harness_build_public_all": build_public, "cpp_stats": cpp_stats,
    }
    if args.full:
        result["full_test_set"] = _full_test_set(run, sim_dir)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--run", type=run_folder, required=True, help="run folder with a build")
    ap.add_argument("--images", type=count(1), default=2000)
    ap.add_argument("--naive-images", type=count(1), default=20)
    ap.add_argument("--batch", type=count(1), default=2000, help="images per harness batch")
    ap.add_argument("--repeats", type=count(1), default=3,
                    help="alternating C++ and cocotb runs; the median ratio is reported")
    ap.add_argument("--full", action="store_true", help="also the full test set with one 1 %% map")
    ap.add_argument("--skip-public-all", action="store_true",
                    help="skip the every-signal-public build (its compile takes long on a large design)")
    ap.add_argument("--out", type=record_path, default="runs/bench/hw_sim.json")
    args = ap.parse_args(argv)
    if args.naive_images > args.images:
        ap.error(f"argument --naive-images: {args.naive_images} is more than --images {args.images}")

    run = Path(args.run).resolve()
    r = load_run(run)
    n = args.images
    x, labels = r.test_inputs(n)
    if len(labels) < n:  # else the images would be cut into n pieces of the wrong size
        raise UserError(f"--images {n}: the test set has {len(labels)} images; give --images {len(labels)} or fewer")
    manifest = load_build_manifest(run)
    # the harness builds and outputs in a temporary folder: the run keeps only what mcel wrote
    with tempfile.TemporaryDirectory(prefix="bench_hw_sim_") as work:
        result = _measure(args, run, x, manifest, Path(work))
    write_record(args.out, result, args.force)
    shown = {k: v for k, v in result.items() if not k.startswith("harness_build") and k != "cpp_stats"}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
