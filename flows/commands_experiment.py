"""CLI sub-command ``mcel experiment``: the paper's train-sweep-report experiment in one go.

``add_parsers(subparsers)`` registers it on the main CLI's sub-parsers. It is a campaign preset
(flows/experiment.py): re-running the same command resumes the campaign in ``--out``, finished
trainings and sweeps are reused, the report is always rewritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_experiment(args: argparse.Namespace) -> int:
    from flows.experiment import (
        VARIANTS,
        ExperimentSettings,
        check_docs_owner,
        collect,
        parse_list,
        run_experiment,
        write_report,
    )
    from mcel_train.errors import UserInputError

    epochs, epochs_by_model = args.epochs
    test_images, test_images_by_model = args.test_images
    settings = ExperimentSettings(
        models=parse_list(args.models),
        variants=parse_list(args.variants, tuple(VARIANTS)),
        out=args.out, epochs=epochs, limit_train=args.limit_train, maps=args.maps,
        rates=tuple(args.rates), seed=args.seed, jobs=args.jobs,
        train_seed=args.train_seed, test_images=test_images or 0,
        epochs_by_model=epochs_by_model, test_images_by_model=test_images_by_model,
    )
    if args.report_only:
        settings.check()
        check_docs_owner(settings, args.docs, args.force)
        if not (Path(args.out) / "results.sqlite").is_file():  # else a finished report is replaced by "no runs"
            raise UserInputError(f"--out {args.out} holds no experiment campaign: run mcel experiment first "
                                 "(without --report-only), or give its --out")
        record = collect(settings, args.note)
        if not any(record["models"].values()):  # other flags than the run's: an empty report would replace it
            raise UserInputError(f"--report-only: no finished run in --out {args.out} matches these settings "
                                 "(--models, --variants, --epochs, --maps, --rates, --test-images, --train-seed, "
                                 "--limit-train): give the flags the experiment ran with")
        md = write_report(record, args.docs)
    else:
        run_experiment(settings, args.docs, notes=args.note, show_progress=not args.quiet, force=args.force)
        md = args.docs / "results.md"
    print(f"wrote {md} and {args.docs / 'results.json'}")
    return 0


def per_model_ints(text: str) -> tuple[int | None, dict[str, int]]:
    """``"10"``, ``"vgg3_w4a4=3"`` or ``"10,vgg3_w4a4=3"`` -> (default, {model: value})."""
    default, by_model = None, {}
    try:
        for item in (t.strip() for t in text.split(",") if t.strip()):
            if "=" in item:
                name, value = item.split("=", 1)
                by_model[name.strip()] = int(value)
            else:
                default = int(item)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"want N, MODEL=N or a comma-separated mix such as 10,vgg3_w4a4=3; got {text!r}") from None
    return default, by_model


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``experiment`` on the main CLI's sub-parsers."""
    from flows.experiment import DEFAULT_MAPS, DEFAULT_MODELS, DEFAULT_RATES, VARIANTS
    from mcel_train.commands_faults import bit_error_rates

    p = subparsers.add_parser(
        "experiment", help="train all (model, loss variant) pairs, sweep them, write docs/results.md")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo models with a flows/configs/MODEL_fmnist.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated variants (default all: {', '.join(VARIANTS)})")
    p.add_argument("--epochs", type=per_model_ints, default=(None, {}),
                   help="override the configs' epochs: N for all, MODEL=N for one (comma-separated)")
    p.add_argument("--limit-train", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--maps", type=int, default=DEFAULT_MAPS, help="fault maps per rate")
    p.add_argument("--rates", type=bit_error_rates, default=list(DEFAULT_RATES), help="comma-separated rates")
    p.add_argument("--seed", type=int, default=0, help="fault map seed")
    p.add_argument("--train-seed", type=int,
                   help="override every config's training seed (init, shuffling, val split)")
    p.add_argument("--test-images", type=per_model_ints, default=(0, {}),
                   help="sweep on the first N test images (0 = all): N for all, MODEL=N for one "
                   "(for slow models such as vgg3)")
    p.add_argument("--jobs", type=int, default=2, help="campaign workers (tasks in parallel)")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"),
                   help="the experiment's campaign folder (rerun to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where results.md/json/png go")
    p.add_argument("--note", action="append", default=[],
                   help="a sentence for the report's Notes section (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="replace a report in --docs that another experiment (another --out) wrote")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the report from the finished runs")
    p.set_defaults(func=cmd_experiment)
