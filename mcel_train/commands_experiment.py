"""CLI sub-command ``mcel experiment``: the paper's train-sweep-report experiment in one go.

``add_parsers(subparsers)`` registers it on the main CLI's sub-parsers. Re-running the same
command resumes: finished trainings and sweeps are reused, the report is always rewritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_experiment(args: argparse.Namespace) -> int:
    from mcel_train.experiment import VARIANTS, ExperimentSettings, collect, parse_list, run_experiment, write_report

    settings = ExperimentSettings(
        models=parse_list(args.models),
        variants=parse_list(args.variants, tuple(VARIANTS)),
        out=args.out, epochs=args.epochs, limit_train=args.limit_train, maps=args.maps,
        rates=tuple(args.rates), seed=args.seed, jobs=args.jobs,
        train_seed=args.train_seed, test_images=args.test_images,
    )
    if args.report_only:
        settings.check()
        md = write_report(collect(settings, args.note), args.docs)
    else:
        run_experiment(settings, args.docs, notes=args.note)
        md = args.docs / "results.md"
    print(f"wrote {md} and {args.docs / 'results.json'}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``experiment`` on the main CLI's sub-parsers."""
    from mcel_train.commands_faults import _rates
    from mcel_train.experiment import DEFAULT_MAPS, DEFAULT_MODELS, DEFAULT_RATES, VARIANTS

    p = subparsers.add_parser(
        "experiment", help="train all (model, loss variant) pairs, sweep them, write docs/results.md")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo models with a flows/configs/MODEL_fmnist.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated variants (default all: {', '.join(VARIANTS)})")
    p.add_argument("--epochs", type=int, help="override every config's epochs")
    p.add_argument("--limit-train", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--maps", type=int, default=DEFAULT_MAPS, help="fault maps per rate")
    p.add_argument("--rates", type=_rates, default=list(DEFAULT_RATES), help="comma-separated rates")
    p.add_argument("--seed", type=int, default=0, help="fault map seed")
    p.add_argument("--train-seed", type=int,
                   help="override every config's training seed (init, shuffling, val split)")
    p.add_argument("--test-images", type=int, default=0,
                   help="sweep on the first N test images (0 = all; for slow models such as vgg3)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"), help="experiment folder")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where results.md/json/png go")
    p.add_argument("--note", action="append", default=[],
                   help="a sentence for the report's Notes section (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the report from the finished runs")
    p.set_defaults(func=cmd_experiment)
