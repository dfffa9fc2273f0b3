"""``mcel sim`` and ``mcel compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ber wants comma-separated numbers, got {text!r}") from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="inject fault maps into the Verilated accelerator (cocotb) and measure accuracy")
    p.add_argument("run", help="run folder with a build (runs/NAME)")
    p.add_argument("--ber", type=_floats, default=[0.0, 0.001, 0.005, 0.01, 0.02],
                   help="comma-separated rates (default 0,0.001,0.005,0.01,0.02)")
    p.add_argument("--maps", type=int, default=5,
                   help="fault maps per rate (default 5; rate 0 has one map, the clean network)")
    p.add_argument("--images", type=int, default=1000, help="test images per map (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="fault map seed (default 0)")
    p.add_argument("--fault-model", default="flip", help="flip | stuck | asym:p01=..,p10=.. | kflips")
    p.add_argument("--inject", default="backdoor", choices=["backdoor", "axilite"])
    p.add_argument("--transient-cycle", type=int, default=None,
                   help="flip each map's bits this many cycles into the stream (a transient upset) "
                   "instead of before it; backdoor only")
    p.add_argument("--memories", default="weights", choices=["weights", "thresholds", "all"],
                   help="which on-chip memories get the faults (thresholds: backdoor only)")
    p.add_argument("--predictor", default="fast", choices=["fast", "finn"],
                   help="software prediction: batched integer evaluator (cross-checked against FINN "
                   "execution on a few maps, at most 250 images and 5 %% of the expected simulation time, at least 10 "
                   "images) or FINN's "
                   "Python execution for every map")
    p.add_argument("--batch-images", type=int, default=1000, help="images per harness batch")
    p.add_argument("--jobs", type=int, default=0,
                   help="simulator processes, each on a slice of the images (0 = one per core when "
                   "there are enough images; waveforms use one; a transient upset needs 0 or 1)")
    p.add_argument("--pgo", action="store_true",
                   help="profile-guided simulator build: about twice the build time, 15-20%% faster "
                   "simulation (for long runs)")
    p.add_argument("--backpressure", action="store_true",
                   help="a sink that stalls the output stream pseudo-randomly (a quarter of the "
                   "cycles); hw_ber.json counts the stalled output cycles per map")
    p.add_argument("--waves", action="store_true",
                   help="dump waveforms to RUN/sim/work/sim/dump.vcd (slow; hundreds of MB for a few dozen images)")
    p.add_argument("--force", action="store_true", help="replace an existing sim/hw_ber.json")
    p.set_defaults(func=cmd_sim)

    c = sub.add_parser("compare", help="check hardware == software per map and plot both curves")
    c.add_argument("run", help="run folder with a simulation (runs/NAME)")
    c.set_defaults(func=cmd_compare)


def cmd_sim(args: argparse.Namespace) -> int:
    from hw_sim.runner import PgoError, SimulatorStopped
    from hw_sim.sim import SimulationError, run_sim

    try:
        path = run_sim(Path(args.run), args.ber, args.maps, args.images, args.seed, args.fault_model,
                       args.inject, args.batch_images, args.predictor, force=args.force, waves=args.waves,
                       memories=args.memories, transient_cycle=args.transient_cycle, jobs=args.jobs,
                       pgo=args.pgo, backpressure=args.backpressure)
    except (SimulationError, PgoError, SimulatorStopped) as exc:
        # not the user's input: no results (the message carries the simulator log's tail, which
        # is the diagnosis) or a fast prediction that FINN's execution contradicts. Exit 1, as
        # the make flow does; --debug shows the traceback.
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from hw_sim.transient import coverage_problem

    print(f"wrote {path}")
    maps = json.loads(path.read_text())["maps"]
    differ = [m for m in maps if m.get("first_differing_image") is not None]
    if differ:  # never noise: a difference is a bug to find (mcel compare names the first)
        print(f"error: {len(differ)} of {len(maps)} maps differ from the software prediction; "
              f"mcel compare {args.run} names the first", file=sys.stderr)
        return 1
    for m in maps:  # a transient upset may leave a side, or every image, unchecked: say so
        problem = coverage_problem(m["transient"], m["rate"]) if "transient" in m else None
        if problem:
            print(f"{'error' if m['checked_images'] == 0 else 'warning'}: map {m['id']} (rate {m['rate']:g}): "
                  f"{problem}", file=sys.stderr)
    if any(m["checked_images"] == 0 for m in maps):
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hw_sim.compare import MismatchError, NothingCheckedError, compare_run, counts_flips, format_table

    try:
        result = compare_run(Path(args.run))
    except MismatchError as exc:
        print(f"MISMATCH: {exc}")
        return 1
    except NothingCheckedError as exc:  # not a difference, but no proof of equality either
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result["curves"], counts_flips(result["fault_model"])))
    checked = result["checked_images"]
    span = f"{min(checked)}" if min(checked) == max(checked) else f"{min(checked)}-{max(checked)}"
    images = (f"{result['images']} images each" if min(checked) == result["images"] else
              f"{span} of {result['images']} images each with a prediction: transient upsets")
    for line in result["coverage"]:  # what a transient upset left unchecked, as mcel sim said
        print(f"warning: {line}", file=sys.stderr)
    print(f"all {result['maps']} maps identical between hardware and software "
          f"({images}) -> {Path(args.run) / 'sim' / 'compare.png'}")
    return 0
