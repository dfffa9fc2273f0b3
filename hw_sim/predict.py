"""Software predictions of what the built accelerator outputs under a fault map.

Two executions of the same map (docs/architecture.md, principle 1):

- :func:`finn_predict`: the faulty memory words (golden init file + the map, exactly as the RTL
  gets them) are decoded through the manifest's layout into weight matrices, written into the
  build's dataflow graph, and FINN's Python execution runs it. Slow, but it shares no code with
  the fast path, so it is the cross-check.
- :func:`fast_predict`: the same faulty matrices through :mod:`mcel_train.intnet`'s batched
  integer evaluator (all maps at once), when the build provides an integer network.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hw_sim.injection import check_map_fits, faulty_words
from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.faultmap import FaultMap
from mcel_train.finn_graph import dataflow_graph_path, load_graph, output_of
from mcel_train.intnet_finn import build_memories, from_finn_build, threshold_post
from mcel_train.manifest import Manifest, load_manifest
from mcel_train.memory import decode_bin_mvau_thresholds, decode_mvau, decode_thresholds


def split_map(fmap: FaultMap, names: set[str]) -> tuple[FaultMap, FaultMap]:
    """``(faults in memories not in names, faults in names)``: weights vs thresholds."""
    keep = np.array([fmap.memory_names[i] in names for i in fmap.memory], dtype=bool)
    def sub(sel: np.ndarray) -> FaultMap:
        return FaultMap(list(fmap.memory_names), fmap.memory[sel], fmap.word[sel], fmap.bit[sel],
                        fmap.kind[sel], dict(fmap.meta))
    return sub(~keep), sub(keep)


def golden_words(manifest: Manifest, names) -> dict[str, list[int]]:
    """The init-file words of the named memories (read once by callers with many maps)."""
    return {name: manifest.words(name) for name in names}


def _faulty(fmap: FaultMap, golden: dict[str, list[int]]) -> dict[str, list[int]]:
    """The golden words with the map's faulty words in place."""
    words = {name: list(ws) for name, ws in golden.items()}
    for name, updates in faulty_words(fmap, golden).items():
        for w, v in updates.items():
            words[name][w] = v
    return words


def faulty_thresholds(manifest: Manifest, fmap: FaultMap,
                      golden: dict[str, list[int]] | None = None) -> dict[str, tuple[np.ndarray, int | None]]:
    """Owner layer -> (its ``C x N`` thresholds as the faulty memories hold them, out bits).

    Only layers whose threshold memories the map touches; ``finn_thresholds`` memories (one per
    search stage and PE) are assembled into one matrix, ``bin_mvau_thresholds`` decoded whole.
    ``golden``: the threshold memories' init words (read once by a caller with many maps).
    """
    mems = manifest.thresholds
    check_map_fits(fmap, mems)
    golden = golden or golden_words(manifest, mems)
    touched = {fmap.memory_names[i] for i in np.unique(fmap.memory)}
    layers = {mems[n].layer for n in touched if n in mems}
    words = _faulty(fmap, golden)
    out: dict[str, tuple[np.ndarray, int | None]] = {}
    for layer in sorted(layers):
        entries = [m for m in mems.values() if m.layer == layer]
        layout = entries[0].layout
        if layout["type"] == "bin_mvau_thresholds":
            out[layer] = (decode_bin_mvau_thresholds(words[entries[0].name], layout), None)
            continue
        t = np.zeros((layout["channels"], layout["num_steps"]), dtype=np.int64)
        for m in entries:
            for (c, col), v in decode_thresholds(words[m.name], m.layout).items():
                if col < layout["num_steps"]:
                    t[c, col] = v
        out[layer] = (t, int(layout["out_bits"]))
    return out


def faulty_matrices(manifest: Manifest, fmap: FaultMap | None,
                    golden: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Layer name -> ``(MH, MW)`` integer weights as the faulty memories hold them."""
    mems = manifest.weights
    golden = golden or golden_words(manifest, mems)
    words = golden
    if fmap is not None and len(fmap):
        check_map_fits(fmap, mems)
        words = _faulty(fmap, golden)
    return {m.layer: decode_mvau(words[name], m.layout) for name, m in mems.items()}


def finn_predict(build_dir: Path, x: np.ndarray, maps: Sequence[FaultMap | None],
                 seconds: float | None = None, min_images: int = 10) -> np.ndarray:
    """``(M, N, outputs)`` integer outputs by FINN's Python execution of each faulty graph.

    ``seconds``: a time budget (a cross-check sample): images are executed ten at a time for
    every map, and execution stops once the budget is spent and ``min_images`` are done, so N
    may be smaller than ``len(x)``. The graph, the init files and each map's faulty matrices are
    prepared once either way.
    """
    build_dir = Path(build_dir)
    manifest = load_manifest(build_dir)
    model = load_graph(dataflow_graph_path(build_dir))
    thr_names = set(manifest.thresholds)
    if any(len(split_map(m, thr_names)[1]) for m in maps if m is not None):
        raise ValueError("finn_predict: FINN's Python execution counts thresholds (MultiThreshold) while "
                         "the hardware binary-searches them; faulty thresholds need the fast predictor")
    golden = golden_words(manifest, manifest.weights)
    nodes = {m.layer: model.get_node_from_name(m.layer) for m in manifest.weights.values()}
    shapes = {layer: model.get_initializer(node.input[1]).shape for layer, node in nodes.items()}
    # FINN's MVAU weight tensor is (MW, MH): the transpose of the memory's matrix.
    weights = [{layer: m.T.astype(np.float32).reshape(shapes[layer]) for layer, m in
                faulty_matrices(manifest, fmap, golden).items()} for fmap in maps]
    step = len(x) if seconds is None else min_images
    outs: list[list[np.ndarray]] = [[] for _ in maps]
    t0, done = time.perf_counter(), 0
    while done < len(x):
        chunk = x[done:done + step]
        for out, tensors in zip(outs, weights, strict=True):
            for layer, tensor in tensors.items():
                model.set_initializer(nodes[layer].input[1], tensor)
            out.append(np.rint(output_of(model, chunk)).astype(np.int64))
        done += len(chunk)
        if seconds is not None and done >= min_images and time.perf_counter() - t0 > seconds:
            break
    return np.stack([np.concatenate(o) for o in outs])


def fast_predict(build_dir: Path, x: np.ndarray, maps: Sequence[FaultMap | None],
                 method: str = "auto") -> np.ndarray:
    """``(M, N, outputs)`` integer outputs, as :func:`finn_predict`, from the fault evaluator.

    The build's integer network (:func:`mcel_train.intnet_finn.from_finn_build`, weights
    decoded from the init files) with each map applied through the manifest's memory layout by
    :class:`mcel_train.evaluate.MapEvaluator` (``method``: dense, difference or auto); maps with
    threshold faults run with their layers' post-ops rebuilt from the faulty threshold words.
    """
    import torch

    net = from_finn_build(build_dir)
    manifest = load_manifest(build_dir)
    memories = build_memories(manifest, net)
    thr_names = set(manifest.thresholds)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    evaluator = MapEvaluator(net, xt, np.zeros(len(xt), dtype=np.int64), memories=memories, method=method)
    empty = FaultMap.empty([m.name for m in memories])
    owners = net.meta.get("threshold_owners", {})
    thr_golden = None
    weight_maps, posts = [], []
    for m in maps:
        w, t = split_map(m, thr_names) if m is not None else (empty, None)
        weight_maps.append(w)
        if t is None or not len(t):
            posts.append(None)
            continue
        thr_golden = thr_golden or golden_words(manifest, manifest.thresholds)
        posts.append({owners[layer]["layer_index"]: threshold_post(owners[layer], table, out_bits)
                      for layer, (table, out_bits) in faulty_thresholds(manifest, t, thr_golden).items()})
    if not maps:
        return np.empty((0, len(xt), 0), dtype=np.int64)
    return evaluator.logits(weight_maps, posts)
