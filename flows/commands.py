"""``mcel export`` and ``mcel build``: the Vivado-free FINN back end from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mcel_train.errors import UserInputError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export the trained model to QONNX and check it against torch")
    e.add_argument("run", help="run folder (runs/NAME) with a train/ stage")
    e.add_argument("--images", type=int, default=100, help="test images for the export check")
    e.add_argument("--force", action="store_true", help="replace an existing export/ folder")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="bring your own QONNX model: check it and make it a run's export stage")
    i.add_argument("model", help="QONNX file, e.g. a Brevitas export_qonnx of your network")
    i.add_argument("--dataset", default=None, help="dataset it classifies: fashion_mnist | digits "
                   "(default: the model's mcel.dataset metadata)")
    i.add_argument("--input-kind", default=None, help="pixel encoding: uint8 (0..255) | bipolar (+-1) "
                   "(default: the model's mcel.input_kind metadata)")
    i.add_argument("--out", required=True, help="run folder to create (runs/NAME)")
    i.add_argument("--check-images", type=int, default=100, help="test images executed to report its accuracy")
    i.add_argument("--force", action="store_true", help="replace an existing export/ folder")
    i.set_defaults(func=cmd_import)

    b = sub.add_parser("build", help="compile with FINN into a stitched RTL accelerator (Verilator)")
    b.add_argument("run", help="run folder (runs/NAME) with a train/ stage or an imported export/")
    b.add_argument("--folding", default="auto", help="'auto' or a JSON file of PE/SIMD per layer")
    b.add_argument("--target-cycles", type=int, default=None,
                   help="cycles per image for --folding auto (default: the fastest of 256, 512, 1024, "
                   "... cycles per image that fits the part by FINN's estimates; only xczu3eg's "
                   "resources are known, another part takes 256 unchecked)")
    b.add_argument("--part", default=None, help="FPGA part for FINN's estimates (default xczu3eg)")
    b.add_argument("--verify-images", type=int, default=200, help="images checked RTL == FINN == torch")
    b.add_argument("--runtime-writeable", action="store_true",
                   help="expose every weight memory's AXI-lite port at accel_top (for --inject axilite)")
    b.add_argument("--force", action="store_true", help="replace an existing build/ folder")
    b.set_defaults(func=cmd_build)


def cmd_export(args: argparse.Namespace) -> int:
    from flows.build import export_run

    if args.images < 1:
        raise UserInputError(f"--images must be >= 1 (test images the export is checked on), got {args.images}")
    from flows.export import ExportMismatchError

    try:
        path = export_run(Path(args.run), n_check=args.images, force=args.force)
    except ExportMismatchError as exc:  # not the user's input; nothing was written
        if args.debug:
            raise
        print(f"error: {exc}; nothing was exported (QONNX runs the graph in float32: an image whose accumulator "
              "sits within its rounding error of a threshold can differ on a large check; mcel build checks the "
              "integer network bit-exactly)", file=sys.stderr)
        return 1
    record = json.loads((path.parent / "export.json").read_text())
    print(f"exported {path}; QONNX == torch on {record['check']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from flows.import_model import import_qonnx

    rec = import_qonnx(args.model, args.dataset, Path(args.out), args.input_kind, args.check_images, args.force)
    check = rec["check"]
    print(f"imported {args.model} into {Path(args.out) / 'export'}: input {rec['input_shape']} "
          f"({rec['input_kind']}), {rec['source']['dataset']} accuracy {check['accuracy']:.4f} on the first "
          f"{check['images']} test images (QONNX execution)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from flows.build import build_run

    kwargs = {"folding": args.folding, "target_cycles": args.target_cycles, "n_verify": args.verify_images,
              "force": args.force, "runtime_writeable": args.runtime_writeable}
    if args.part is not None:  # "" is a wrong part, not the default
        kwargs["part"] = args.part
    if args.target_cycles is not None and args.target_cycles < 1:
        raise UserInputError(f"--target-cycles must be >= 1, got {args.target_cycles}")
    if args.verify_images < 0:
        raise UserInputError(f"--verify-images must be >= 0, got {args.verify_images}")
    from flows.build import VerificationMismatchError

    try:
        record = build_run(Path(args.run), **kwargs)
    except VerificationMismatchError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    chosen = record.get("default_folding")
    if chosen:
        res = chosen["resources"]
        fit = {True: f"fits {chosen['part']} {chosen['part_resources']}",
               False: f"does NOT fit {chosen['part']} {chosen['part_resources']}",
               None: f"not checked: no resource table for {chosen['part']} (flows/folding.py PART_RESOURCES)"}
        print(f"default folding: target {chosen['target_cycles']} cycles/image, FINN estimate "
              f"{chosen['expected_cycles_per_image']} cycles/image; LUT {res['LUT']:.0f}, BRAM_18K "
              f"{res['BRAM_18K']:.0f}, DSP {res['DSP']:.0f}: {fit[chosen['fits']]}")
        print(f"folding: {json.dumps(record['folding'])}")
    verify = record.get("verification") or {}  # None with --verify-images 0
    shown = ", ".join(f"{k} {v}" for k, v in verify.items() if isinstance(v, int | float | str | bool))
    print(f"built {Path(args.run) / 'build'}: {shown or 'not verified (--verify-images 0)'}")
    return 0
