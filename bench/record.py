"""The JSON record a bench script leaves: its figures, then the Python, torch and machine that
measured them, so that a script reading ``bench/results/`` can tell runs apart."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path


def write_record(out: Path, record: dict) -> None:
    """Write ``record`` and the software and machine it was measured on to ``out``."""
    full = {**record, "python": sys.version.split()[0], "torch": version("torch"), "machine": platform.machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(full, indent=1) + "\n")
    print(f"wrote {out}")
