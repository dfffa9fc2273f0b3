"""Fault maps turned into memory-word writes for the simulated accelerator.

The software model translates a fault map to weight elements through the manifest's layout; the
RTL instead gets the faulty words written into its memories. This module computes those words
from the golden contents with the one fault semantics of the project
(:func:`mcel_train.faults.faultmap.apply_masks`), the same the software model applies. The result is a
per-memory ``{word: new_value}`` that an injector (backdoor handles or AXI-lite) writes, and the
golden values it restores afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1, FaultMap, FaultMapError, apply_masks
from mcel_train.manifest import MemoryEntry


def check_map_fits(fmap: FaultMap, memories: Mapping[str, MemoryEntry]) -> None:
    """Every fault names a memory of the manifest and a (word, bit) inside it, else one clear error."""
    for i, name in enumerate(fmap.memory_names):
        sel = fmap.memory == i
        if not sel.any():
            continue
        if name not in memories:
            raise FaultMapError(
                f"fault map names memory {name!r}, which the build's manifest lacks "
                f"(it has: {', '.join(sorted(memories))})"
            )
        depth, width = memories[name].depth, memories[name].width
        words, bits = fmap.word[sel], fmap.bit[sel]
        if words.min() < 0 or words.max() >= depth:
            raise FaultMapError(f"memory {name!r}: word {int(words.max())} beyond its depth {depth}")
        if bits.min() < 0 or bits.max() >= width:
            raise FaultMapError(f"memory {name!r}: bit {int(bits.max())} beyond its word width {width}")


def faulty_words(fmap: FaultMap, golden: Mapping[str, Sequence[int]]) -> dict[str, dict[int, int]]:
    """New values of every word the map touches, per memory name."""
    out: dict[str, dict[int, int]] = {}
    for i, name in enumerate(fmap.memory_names):
        sel = np.flatnonzero(fmap.memory == i)
        if not sel.size:
            continue
        masks: dict[int, list[int]] = {}  # word -> [xor, clear, set] (Python ints: words may be wide)
        for j in sel:
            w, b, k = int(fmap.word[j]), int(fmap.bit[j]), int(fmap.kind[j])
            masks.setdefault(w, [0, 0, 0])[(FLIP, STUCK0, STUCK1).index(k)] |= 1 << b
        out[name] = {w: apply_masks(int(golden[name][w]), *m) for w, m in masks.items()}
    return out
