"""Software predictions of what the built accelerator outputs under a fault map.

Two executions of the same map (DESIGN.md, "one fault map, two executions"):

- :func:`finn_predict`: the faulty memory words (golden init file + the map, exactly as the RTL
  gets them) are decoded through the manifest's layout into weight matrices, written into the
  build's dataflow graph, and FINN's Python execution runs it. Slow, but it shares no code with
  the fast path, so it is the cross-check.
- :func:`fast_predict`: the same faulty matrices through :mod:`mcel_train.intnet`'s batched
  integer evaluator (all maps at once), when the build provides an integer network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flows.mem_layout import decode_mvau, read_words
from hw_sim.injection import check_map_fits, faulty_words
from mcel_train.faults.faultmap import FaultMap


def dataflow_graph_path(build_dir: Path) -> Path:
    """The build's final dataflow graph (the one whose nodes became RTL)."""
    build_dir = Path(build_dir)
    record = json.loads((build_dir / "build.json").read_text())
    path = record.get("dataflow_model") or record.get("final_model")
    if path:
        return Path(path) if Path(path).is_absolute() else build_dir / path
    steps = sorted((build_dir / "steps").glob("[0-9][0-9]_*.onnx"))
    if not steps:
        raise FileNotFoundError(f"{build_dir}/steps has no step graphs; rebuild with `mcel build`")
    return steps[-1]


def weight_memories(manifest: dict) -> dict[str, dict]:
    return {m["name"]: m for m in manifest["memories"] if m["kind"] == "weights"}


def golden_words(memories: dict[str, dict]) -> dict[str, list[int]]:
    return {name: read_words(Path(m["init_file"])) for name, m in memories.items()}


def faulty_matrices(manifest: dict, fmap: FaultMap | None,
                    golden: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Layer name -> ``(MH, MW)`` integer weights as the faulty memories hold them."""
    mems = weight_memories(manifest)
    golden = golden or golden_words(mems)
    words = {name: list(ws) for name, ws in golden.items()}
    if fmap is not None and len(fmap):
        check_map_fits(fmap, mems)
        for name, updates in faulty_words(fmap, golden).items():
            for w, v in updates.items():
                words[name][w] = v
    return {m["layer"]: decode_mvau(words[name], m["layout"]) for name, m in mems.items()}


def finn_predict(build_dir: Path, x: np.ndarray, maps: Sequence[FaultMap | None]) -> np.ndarray:
    """``(M, N, outputs)`` integer outputs by FINN's Python execution of each faulty graph."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flows.step_check import output_of

    build_dir = Path(build_dir)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    model = ModelWrapper(str(dataflow_graph_path(build_dir)))
    golden = golden_words(weight_memories(manifest))
    clean = {n.name: model.get_initializer(n.input[1]) for n in model.graph.node if n.name in
             {m["layer"] for m in weight_memories(manifest).values()}}
    out = []
    for fmap in maps:
        for layer, matrix in faulty_matrices(manifest, fmap, golden).items():
            node = model.get_node_from_name(layer)
            # FINN's MVAU weight tensor is (MW, MH): the transpose of the memory's matrix.
            model.set_initializer(node.input[1], matrix.T.astype(np.float32).reshape(clean[layer].shape))
        out.append(np.rint(output_of(model, x)).astype(np.int64))
    return np.stack(out)


def fast_predict(build_dir: Path, x: np.ndarray, maps: Sequence[FaultMap | None],
                 map_batch: int = 32) -> np.ndarray:
    """``(M, N, outputs)`` integer outputs, as :func:`finn_predict`, from the batched evaluator.

    The build's integer network (:func:`mcel_train.intnet_finn.from_finn_build`, weights
    decoded from the init files) with each map applied through the manifest's memory layout
    by :class:`mcel_train.evaluate.MapEvaluator`; ``map_batch`` maps are evaluated together.
    """
    import torch

    from mcel_train.evaluate import MapEvaluator
    from mcel_train.intnet_finn import build_memories, from_finn_build

    net = from_finn_build(build_dir)
    memories = build_memories(build_dir, net)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    evaluator = MapEvaluator(net, xt, np.zeros(len(xt), dtype=np.int64), memories=memories)
    empty = FaultMap.empty([m.name for m in memories])
    maps = [empty if m is None else m for m in maps]
    out = []
    with torch.no_grad():
        for lo in range(0, len(maps), map_batch):
            sub = maps[lo:lo + map_batch]
            weights = evaluator.stacked_weights(sub)
            logits = net.forward(xt, weights, max_abs_input=evaluator.max_abs_input)
            out.append(logits.expand(len(sub), *logits.shape[1:]).numpy())
    return np.rint(np.concatenate(out)).astype(np.int64) if out else np.empty((0, len(xt), 0))
