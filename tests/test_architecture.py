"""The architecture rules of docs/architecture.md, checked on the code as it is.

- Packages import one way (flows -> hw_sim -> mcel_train): the import-linter contract in
  pyproject.toml, run here as `lint-imports` so that `make test` fails when it breaks.
- No import cycle between modules, counting imports inside functions too: a deferred import may
  save start-up time, but it never hides a cycle.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mcel_train", "hw_sim", "flows")


def test_import_linter_contract_is_kept():
    exe = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph(*PACKAGES)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.add(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(sorted(cycles))


def test_no_dynamic_imports_in_the_lowest_package():
    """import-linter sees only static imports: mcel_train may not import by string at all."""
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "mcel_train").rglob("*.py")
           if "import_module(" in p.read_text() or "__import__(" in p.read_text()]
    assert not bad, bad


def test_the_committed_command_reference_lists_every_flag_the_parser_has():
    """docs/cli.md is generated from the parser (flows/cli_reference.py): a flag added or renamed
    without regenerating it fails here, so the reference never lacks a flag or names a gone one."""
    from flows.cli_reference import reference

    committed = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert committed == reference(), "regenerate: .venv/bin/python -m flows.cli_reference > docs/cli.md"
