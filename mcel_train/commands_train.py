"""``mcel train CONFIG.yaml [--set key=value ...] [--out runs/NAME]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a zoo model with MCEL or a baseline loss from a YAML config")
    p.add_argument("config", help="YAML config (see flows/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set loss.name=mcel --set loss.margin=32")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX .gz files "
                   "(else MCEL_DATA_DIR, Debian's package, a torchvision root)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    stage = run_train(cfg, run_dir, show_progress=not args.quiet)
    metrics = json.loads((stage / "metrics.json").read_text())
    print(
        f"{cfg.name}: test accuracy {metrics['test_accuracy']:.4f}, mean logit margin "
        f"{metrics['mean_logit_margin']:.3f}, median step {metrics['median_step_time_s'] * 1e3:.1f} ms -> {stage}"
    )
    return 0
