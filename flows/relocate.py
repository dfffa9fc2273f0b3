"""The paths FINN wrote into a build, made relative to the build folder.

FINN names its code generation folders by absolute path: in node attributes of every graph it
saves (``code_gen_dir_ipgen``, ``ipgen_path``, ``ip_path``, a partition's ``model``) and as the
default ``INIT_FILE`` of each memory wrapper it generates. A build runs in a temporary folder
that is renamed into place on success (:func:`mcel_train.stage.atomic_stage`), so those paths
named a folder that no longer existed, and a copied build carried the machine's paths along.
Nothing reads them after the build: the simulators take the memories from ``hdl/mem`` through
``accel_top.sv``'s parameters (flows/stitch.py) and the manifest. Made relative to the build
folder, they still say which file is meant, wherever the build is.
"""

from __future__ import annotations

from pathlib import Path

import onnx

_TEXT_SUFFIXES = (".v", ".sv", ".vh", ".svh", ".tcl", ".f", ".txt", ".json", ".log", ".dat")


def _prefixes(build_dir: Path) -> list[str]:
    """The build folder as FINN may have written it (as given and resolved), each with a slash."""
    return sorted({f"{Path(build_dir).absolute()}/", f"{Path(build_dir).resolve()}/"}, key=len, reverse=True)


def _relative(text: str, prefixes: list[str]) -> str:
    for prefix in prefixes:
        text = text.replace(prefix, "")
    return text


def relative_build_paths(build_dir: Path, graphs: bool = True) -> None:
    """Rewrite ``build_dir``'s generated text files, and its graphs unless ``graphs`` is false,
    so that no path in them starts at ``build_dir`` itself.

    The text files are rewritten right after FINN's steps too (``graphs=False``: the stitching
    still finds FINN's files through the graphs' absolute attributes): a run folder whose name
    holds a ``"`` or a backslash broke the Verilog string of a wrapper's default ``INIT_FILE``.
    """
    build_dir = Path(build_dir)
    prefixes = _prefixes(build_dir)
    for path in sorted(build_dir.rglob("*.onnx")) if graphs else []:
        model = onnx.load(str(path))
        touched = False
        for node in model.graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.STRING:
                    value = attr.s.decode("utf-8", "replace")
                    new = _relative(value, prefixes)
                    if new != value:
                        attr.s, touched = new.encode(), True
        if touched:
            onnx.save(model, str(path))
    for path in sorted(build_dir.rglob("*")):
        if path.suffix not in _TEXT_SUFFIXES or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if not any(p.encode() in data for p in prefixes):
            continue
        path.write_bytes(_relative(data.decode("utf-8", "surrogateescape"), prefixes)
                         .encode("utf-8", "surrogateescape"))
