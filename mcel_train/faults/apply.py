"""Apply fault maps to stored integers (docs/architecture.md, principle 2: bit-exact integers).

A fault acts on the element's stored code: ``element_bits``-bit two's complement for signed
weights, one bit for bipolar ones (a flip negates), the unsigned code ``value + zero_point`` for
min/max-quantized ones. The scale is not touched and a faulted
value that leaves the narrow range (``-2`` in 2-bit narrow) is kept as is: no clipping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mcel_train.faults.faultmap import FLIP, STUCK0, STUCK1, FaultMap, apply_masks
from mcel_train.memory import Memory, decode_elements, encode_elements


def fault_masks(
    memory: Memory, word: np.ndarray, bit: np.ndarray, kind: np.ndarray, offset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Faults of one memory -> ``(element index, xor mask, clear mask, set mask)`` per element.

    Several faults may hit bits of the same element; they are merged per element here, so
    applying them is one vectorised expression. ``offset`` (per fault) is added to the element
    index: stacked copies of the memory, one per map.
    """
    idx, ebit = memory.bits_to_elements(word, bit)
    if offset is not None:
        idx = idx + offset
    value = np.left_shift(1, ebit).astype(np.int64)
    uniq, inv = np.unique(idx, return_inverse=True)
    masks = []
    for k in (FLIP, STUCK0, STUCK1):
        m = np.zeros(uniq.size, dtype=np.int64)
        sel = kind == k
        np.bitwise_or.at(m, inv[sel], value[sel])
        masks.append(m)
    return uniq, masks[0], masks[1], masks[2]


def apply_to_values(
    values: np.ndarray, memory: Memory, word: np.ndarray, bit: np.ndarray, kind: np.ndarray
) -> np.ndarray:
    """A copy of the integer element matrix ``values`` with the faults applied."""
    out = np.array(values, dtype=np.int64, copy=True)
    if out.size != memory.n_elements:
        raise ValueError(
            f"memory {memory.name!r} holds {memory.n_elements} elements, tensor has {out.size}"
        )
    if len(word) == 0:
        return out
    flat = out.reshape(-1)
    idx, delta = element_deltas(flat, memory, word, bit, kind)
    flat[idx] += delta
    return out


def element_deltas(
    values: np.ndarray, memory: Memory, word: np.ndarray, bit: np.ndarray, kind: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The faults as a sparse change of the element matrix: ``(flat index, faulty - clean)``.

    Only elements whose value changes are listed (a stuck-at on a bit that already holds the
    stuck value changes nothing), so the difference evaluator sees exactly the weights a map
    alters.
    """
    flat = np.asarray(values).reshape(-1)
    if len(word) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    idx, xor, clear, setm = fault_masks(memory, word, bit, kind)
    old = flat[idx].astype(np.int64)
    code = apply_masks(encode_elements(old, memory.element_bits, memory.bipolar, memory.zero_point),
                       xor, clear, setm)
    delta = decode_elements(code, memory.element_bits, memory.bipolar, memory.zero_point) - old
    keep = delta != 0
    return idx[keep], delta[keep]


def apply_map(
    contents: Mapping[str, np.ndarray], memories: Sequence[Memory], fmap: FaultMap
) -> dict[str, np.ndarray]:
    """Apply ``fmap`` to every memory's integer contents (name -> element matrix)."""
    fmap.validate(memories)
    out = {}
    for mem in memories:
        word, bit, kind = fmap.for_memory(mem.name)
        out[mem.name] = apply_to_values(contents[mem.name], mem, word, bit, kind)
    return out


def apply_maps_stacked(
    values: np.ndarray, memory: Memory, fmaps: Sequence[FaultMap]
) -> np.ndarray:
    """``M`` faulted copies of one memory's element matrix, stacked as ``(M, *values.shape)``.

    All maps are applied in one vectorised pass over the stacked copies (element indices are
    offset by ``map * n_elements``), which is what lets the evaluator batch over maps. The
    result is ``int8`` when the elements fit (at most 8 bits), to keep the copies small.
    """
    base = np.asarray(values)
    narrow = memory.element_bits <= (8 if memory.zero_point is None else 7)
    dtype = np.int8 if narrow else np.int64
    stacked = np.broadcast_to(base.astype(dtype), (len(fmaps),) + base.shape).copy()
    parts = [(i, *fmap.for_memory(memory.name)) for i, fmap in enumerate(fmaps)]
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return stacked
    word = np.concatenate([p[1] for p in parts])
    bit = np.concatenate([p[2] for p in parts])
    kind = np.concatenate([p[3] for p in parts])
    offset = np.concatenate([np.full(len(p[1]), p[0] * memory.n_elements) for p in parts])
    # Each map's (word, bit) within the memory, offset to that map's copy.
    uniq, flip, clear, set_ = fault_masks(memory, word, bit, kind, offset)
    flat = stacked.reshape(-1)
    code = encode_elements(flat[uniq], memory.element_bits, memory.bipolar, memory.zero_point)
    code = apply_masks(code, flip, clear, set_)
    flat[uniq] = decode_elements(code, memory.element_bits, memory.bipolar, memory.zero_point)
    return stacked
