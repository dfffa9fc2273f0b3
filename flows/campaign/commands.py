"""``mcel campaign`` and ``mcel report``: grids of runs on a process pool or Ray, and their report."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.campaign.executors import EXECUTORS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("campaign", help="run a grid of train/sweep/build/simulate tasks (resumable)")
    c.add_argument("campaign", help="campaign YAML file (see flows/campaigns/)")
    c.add_argument("--out", default=None, help="campaign folder (default runs/campaigns/<name>)")
    c.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local process pool (default) or Ray")
    c.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    c.add_argument("--workers", type=int, default=None, help="tasks at a time (default: CPU count)")
    c.add_argument("--resume", action="store_true", help="continue a campaign folder; finished tasks are kept")
    c.add_argument("--restore", default=None, metavar="RESULTS_JSON",
                   help="first take the finished results of this file (results.json, written by mcel report), "
                        "e.g. a campaign carried over from another clone")
    c.add_argument("--software-only", action="store_true",
                   help="run the trainings and sweeps only; builds and RTL simulations wait for a later --resume")
    c.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_campaign)

    r = sub.add_parser("report", help="Markdown + HTML report of a campaign folder")
    r.add_argument("campaign_dir", help="campaign folder (runs/campaigns/<name>)")
    r.add_argument("--out", default=None, help="report folder (default <campaign_dir>/report)")
    r.add_argument("--target-ber", type=float, default=None,
                   help="recommend a loss and margin for this bit error rate (a rate of the grid)")
    r.add_argument("--max-clean-drop", type=float, default=None,
                   help="with --target-ber: clean accuracy points you accept to lose against CE (default 0.5)")
    r.add_argument("--fault-model", default=None,
                   help="with --target-ber: the fault model whose sweeps decide (default flip)")
    r.set_defaults(func=cmd_report)


def cmd_campaign(args: argparse.Namespace) -> int:
    from flows.campaign.report import write_report
    from flows.campaign.runner import run_campaign

    folder, summary = run_campaign(args.campaign, args.out, args.executor, args.address, args.workers,
                                   args.resume, show_progress=not args.quiet, software_only=args.software_only,
                                   restore=args.restore)
    if args.restore:
        print(f"restored {summary['restored']} finished task(s) from {args.restore}")
    print(f"campaign {folder}: {summary['done']}/{summary['total']} tasks done, {summary['failed']} failed, "
          f"{summary['skipped']} skipped (their inputs failed)")
    if args.software_only and summary["deferred"]:  # they wait for a --resume without the flag
        deferred = summary["deferred"]
        hardware = sum(t["stage"] in ("build", "hwsim") for t in deferred)
        waiting = len(deferred) - hardware  # an imported network's sweep reads its build
        print(f"  {hardware} build and RTL simulation task(s)"
              + (f" and {waiting} task(s) that need a build (sweeps of imported networks)" if waiting else "")
              + " left for a later --resume without --software-only")
    for label, error in summary["failures"].items():
        print(f"  failed: {label}: {error}")
    if not args.no_report and summary["done"]:
        try:
            print(f"report: {write_report(folder)}")
        except ValueError as exc:  # nothing reportable yet
            print(f"no report: {exc}")
    return 1 if summary["failed"] or summary["skipped"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    import json
    import os

    from flows.campaign.report import campaign_table, load_results, planned_networks, recommend, write_report
    from mcel_train.errors import UserInputError

    if args.target_ber is None:
        for flag, value in (("--max-clean-drop", args.max_clean_drop), ("--fault-model", args.fault_model)):
            if value is not None:
                raise UserInputError(f"{flag} applies to --target-ber only; add --target-ber RATE")
        path = write_report(Path(args.campaign_dir), args.out)
        if path.suffix == ".md":
            print(f"report: {path}")
        else:  # nothing finished to tabulate yet
            print(f"no finished sweeps or simulations yet, so no report; wrote {path} (the finished tasks, for "
                  "mcel campaign --restore)")
        return 0
    if args.out is not None:
        raise UserInputError("--out names the report folder; --target-ber writes recommend.json into the campaign "
                             "folder: drop --out")
    max_drop = 0.5 if args.max_clean_drop is None else args.max_clean_drop
    fault_model = args.fault_model or "flip"
    from mcel_train.faults.generate import rate_problem

    problem = rate_problem([args.target_ber], fault_model)  # kflips' rates are flip counts
    if problem or args.target_ber <= 0:
        raise UserInputError(f"--target-ber: {problem or f'must be above 0, got {args.target_ber:g}'}")
    if not 0 <= max_drop <= 100:
        raise UserInputError(f"--max-clean-drop must be in [0, 100] points, got {max_drop}")
    rows = [r for r in campaign_table(args.campaign_dir) if r["source"] == "software"]
    models = sorted({r["fault_model"] for r in rows})
    if fault_model not in models:
        have = f"fault models swept: {', '.join(models)}" if models else "no sweep has finished yet"
        raise UserInputError(f"--fault-model {fault_model}: the campaign has no finished sweep with it ({have})")
    recs = recommend(rows, args.target_ber, max_drop, fault_model,
                     planned_networks(load_results(args.campaign_dir)[0]))
    # another question than the report's "best loss" table (least clean cost among the losses tied at a rate)
    print(f"rule: the most accurate loss at the rate whose clean accuracy is within {max_drop:g} points of CE's; "
          "CE unless another beats it beyond the interval across seeds")
    for rec in recs:
        line = f"{rec['model']} at rate {args.target_ber:g} ({fault_model})"
        if "choice" in rec:
            ci = rec["ci95_seeds"]
            interval = f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}] (95 % across seeds)" if ci else ""
            line += (f": train with {rec['choice']}, expected accuracy {rec['accuracy'] * 100:.1f} %"
                     f"{interval}, clean {rec['clean_accuracy'] * 100:.1f} %")
        # a choice among the losses that have results: say which planned ones have none yet
        missing = (f" (no result yet for {', '.join(rec['missing'])}: --resume the campaign)"
                   if rec.get("missing") and "missing:" not in rec["verdict"] else "")
        print(f"{line}; {rec['verdict']}{missing}")
    record = Path(args.campaign_dir) / "recommend.json"
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({"target_ber": args.target_ber, "fault_model": fault_model,
                               "max_clean_drop_points": max_drop, "recommendations": recs}, indent=1) + "\n")
    os.replace(tmp, record)
    print(f"wrote {record}")
    return 0
