"""CLI sub-commands of the software fault tools: ``mcel sweep``, ``mcel plot``, ``mcel margins``.

``add_parsers(subparsers)`` registers them on the main CLI's ``argparse`` sub-parsers; each
parser stores its handler as ``func`` (called with the parsed ``args``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcel_train.errors import UserInputError


def _rates(text: str) -> list[float]:
    """``"0,1e-4,1e-3"`` -> floats (``logspace:1e-5:1e-1:9`` also accepted), at least one, none
    negative or NaN. Bit error rates, or flip counts for ``--fault-model kflips``: the upper
    bound depends on the fault model (:func:`mcel_train.faults.generate.rate_problem`)."""
    if text.startswith("logspace:"):
        try:
            _, lo, hi, n = text.split(":")
            lo_f, hi_f, count = float(lo), float(hi), int(n)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad logspace {text!r}: {err}") from err
        if not (lo_f > 0 and hi_f > 0 and count >= 1):  # log10 of 0 warned, then the rates were NaN
            raise argparse.ArgumentTypeError(f"bad logspace {text!r}: want logspace:LO:HI:N with LO, HI > 0 and N >= 1 "
                                             "(for rate 0 too, list the rates instead: 0,1e-4,1e-3)")
        import numpy as np

        rates = [float(v) for v in np.logspace(np.log10(lo_f), np.log10(hi_f), count)]
    else:
        try:
            rates = [float(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad rate list {text!r}: {err}") from err
    bad = [r for r in rates if not r >= 0.0]  # NaN fails the comparison
    if bad or not rates:
        raise argparse.ArgumentTypeError(f"rates must be >= 0, got {bad[0]:g}" if bad else f"no rate in {text!r}")
    return rates


def bit_error_rates(text: str) -> list[float]:
    """:func:`_rates`, each in [0, 1] (the flip fault model's rates)."""
    rates = _rates(text)
    bad = [r for r in rates if r > 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"bit error rates must be in [0, 1], got {bad[0]:g}")
    return rates


def cmd_sweep(args: argparse.Namespace) -> int:
    from mcel_train.sweep import run_sweep

    for flag, value, low in (("--maps", args.maps, 1), ("--seed", args.seed, 0), ("--map-batch", args.map_batch, 1),
                             ("--test-images", args.test_images, 0)):
        if value < low:
            raise UserInputError(f"{flag} must be an integer >= {low}, got {value}")
    from mcel_train.faults.generate import rate_problem

    problem = rate_problem(args.bers, args.fault_model)
    if problem:
        raise UserInputError(f"--ber: {problem}")
    rec = run_sweep(
        args.run, args.bers, maps=args.maps, seed=args.seed, fault_model=args.fault_model,
        force=args.force, manifest=args.manifest, map_batch=args.map_batch,
        progress=not args.quiet, compile_post=args.compile, test_images=args.test_images,
        ci_width=args.ci_width, method=args.method,
    )
    print(f"clean accuracy {rec['clean_accuracy']:.4f} ({rec['n_test']} test images)")
    for r in rec["results"]:
        ci = r["ci95"] or [r["mean"], r["mean"]]
        print(f"  rate {r['rate']:<10g} accuracy {r['mean']:.4f}  "
              f"95% CI [{ci[0]:.4f}, {ci[1]:.4f}]  ({r['maps']} maps)")
    print(f"wrote {Path(args.run) / 'sweep' / 'sw_ber.json'} and sw_ber.png")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from mcel_train.plotting import plot_record_path, plot_runs

    out = Path(args.out)
    if out.suffix.lower() != ".png" or not out.stem:
        raise UserInputError(f"-o/--out {args.out!r} must name a .png file (for example -o compare.png)")
    for path in (out, plot_record_path(out)):
        if path.exists() and not args.force:
            raise UserInputError(f"{path} exists already; pass --force to overwrite")
        if path.is_dir():
            raise UserInputError(f"-o/--out {out}: {path} is a folder; name another .png file")
    plot_runs(args.runs, out, labels=args.labels.split(",") if args.labels else None)
    print(f"wrote {out} and {plot_record_path(out).name}")
    return 0


def cmd_margins(args: argparse.Namespace) -> int:
    from mcel_train.margins import margin_report
    from mcel_train.runio import RunError

    if (Path(args.run) / "export" / "export.json").is_file() and not (Path(args.run) / "train").exists():
        # an imported network: its margins need its own Brevitas model, which the run does not hold
        raise UserInputError(f"{args.run} holds an imported network (no training stage): mcel margins measures "
                             "trained runs only; mcel sim, and mcel sweep after mcel build, work on imported ones")
    try:
        rec = margin_report(args.run, force=args.force)
    except RunError as err:
        raise UserInputError(str(err)) from err
    print(f"mean logit margin {rec['mean_logit_margin']:.4g} "
          f"({rec['mean_logit_margin_int']:.3g} integer units), {rec['tied_images']} tied images")
    for layer in rec["hidden_layers"]:
        print(f"  {layer['layer']}: neuron distance to threshold mean {layer['mean']:.3g}, "
              f"median {layer['median']:.3g}, below 1: {layer['fraction_below_1']:.3f}")
    print(f"wrote {Path(args.run) / 'margins' / 'margins.json'} and margins.png")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sweep``, ``plot`` and ``margins`` on the main CLI's sub-parsers."""
    p = subparsers.add_parser("sweep", help="software bit-error sweep of a trained run")
    p.add_argument("run", type=Path, help="run folder (with train/)")
    p.add_argument("--bers", "--ber", dest="bers", type=_rates, default=_rates("0,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2"),
                   help="comma-separated rates, or logspace:LO:HI:N (default 0,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2)")
    p.add_argument("--maps", type=int, default=100, help="fault maps per rate (default 100)")
    p.add_argument("--seed", type=int, default=0, help="fault map seed (default 0)")
    p.add_argument("--fault-model", default="flip",
                   help="flip | stuck | asym[:p01=..,p10=..] | kflips (rate = count)")
    p.add_argument("--manifest", type=Path,
                   help="a build folder (or its manifest.json): maps in the accelerator's memory layout")
    p.add_argument("--map-batch", type=int, default=25, help="maps evaluated together")
    p.add_argument("--compile", action="store_true",
                   help="count thresholds with torch.compile (a little faster; compiles once)")
    p.add_argument("--force", action="store_true", help="overwrite an existing sweep")
    p.add_argument("--test-images", type=int, default=0, help="first N test images only (0 = all)")
    p.add_argument("--ci-width", type=float, default=0.0,
                   help="per rate, add maps until the 95%% interval is narrower than this many "
                        "accuracy points (at most --maps; 0 = always --maps)")
    p.add_argument("--method", choices=("auto", "dense", "difference"), default="auto",
                   help="fault evaluator: difference (per map only what differs from the clean "
                        "network), dense, or auto (per rate the faster; same results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("plot", help="overlay the sweeps of several runs")
    p.add_argument("runs", nargs="+", type=Path, help="run folders with sweep/sw_ber.json")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--labels", help="comma-separated curve labels (default: run names)")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    p.set_defaults(func=cmd_plot)

    p = subparsers.add_parser("margins", help="logit and neuron margins of a trained run")
    p.add_argument("run", type=Path, help="run folder (with train/)")
    p.add_argument("--force", action="store_true", help="overwrite existing margins output")
    p.set_defaults(func=cmd_margins)
