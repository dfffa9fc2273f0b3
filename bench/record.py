"""The JSON record a bench script leaves: its figures, then the Python, torch and machine that
measured them, so that a script reading ``bench/results/`` can tell runs apart."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

from mcel_train.stage import write_text_atomic


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what :mod:`platform` says: the
    same bench's ratios differ between processors (the int8 dense path's speed most: it runs on
    whatever int8 instructions the processor has)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_record(out: Path, record: dict, force: bool) -> None:
    """Write ``record`` and the software and machine it was measured on to ``out``, whole or
    not at all. Without ``force`` (the script's ``--force``) a record at ``out`` is never
    replaced, also one a second run of a bench wrote while this one measured: both said
    "wrote" and the first record was lost."""
    full = {**record, "python": sys.version.split()[0], "torch": version("torch"), "machine": platform.machine(),
            "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(full, indent=1) + "\n", replace=force)
    print(f"wrote {out}")
