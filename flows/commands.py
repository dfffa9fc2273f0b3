"""``mcel export`` and ``mcel build``: the Vivado-free FINN back end from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export the trained model to QONNX and check it against torch")
    e.add_argument("run", help="run folder (runs/NAME) with a train/ stage")
    e.add_argument("--images", type=int, default=100, help="test images for the export check")
    e.add_argument("--force", action="store_true", help="replace an existing export/ folder")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("build", help="compile with FINN into a stitched RTL accelerator (Verilator)")
    b.add_argument("run", help="run folder (runs/NAME) with a train/ stage")
    b.add_argument("--folding", default="auto", help="'auto' or a JSON file of PE/SIMD per layer")
    b.add_argument("--target-cycles", type=int, default=None, help="cycles per image for --folding auto")
    b.add_argument("--part", default=None, help="FPGA part for FINN's estimates (default xczu3eg)")
    b.add_argument("--verify-images", type=int, default=200, help="images checked RTL == FINN == torch")
    b.add_argument("--runtime-writeable", action="store_true",
                   help="expose every weight memory's AXI-lite port at accel_top (for --inject axilite)")
    b.add_argument("--force", action="store_true", help="replace an existing build/ folder")
    b.set_defaults(func=cmd_build)


def cmd_export(args: argparse.Namespace) -> int:
    from flows.build import export_run

    path = export_run(Path(args.run), n_check=args.images, force=args.force)
    record = json.loads((path.parent / "export.json").read_text())
    print(f"exported {path}; QONNX == torch on {record['check']}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from flows.build import build_run

    kwargs = {"folding": args.folding, "target_cycles": args.target_cycles, "n_verify": args.verify_images,
              "force": args.force, "runtime_writeable": args.runtime_writeable}
    if args.part:
        kwargs["part"] = args.part
    record = build_run(Path(args.run), **kwargs)
    verify = record.get("verification", {})
    print(f"built {Path(args.run) / 'build'}: {json.dumps(verify)[:300]}")
    return 0
