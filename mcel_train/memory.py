"""Named on-chip memories and the mapping between their bits and weight-tensor elements.

A fault map speaks of ``(memory, word, bit)``; the software model needs ``(element, bit of
element)``. This module is the one place that translates between the two, so the software
prediction and the RTL simulation agree on which weight a bit belongs to (DESIGN.md principle 1).

Every layout is expressed as FINN's MVAU folding of an ``(MH out x MW in)`` matrix: word
``t = nf * (MW / SIMD) + sf`` holds, at bit offset ``(pe * SIMD + s) * B``, the element
``W[nf * PE + pe, sf * SIMD + s]``. The *natural* layout (row-major tensor order, one element
per word) is the special case ``PE = SIMD = 1``, so both layouts share one code path.
Conv weights ``(out, in, kh, kw)`` are flattened to ``(out, in * kh * kw)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch costs ~1 s to import, paid by every testbench process otherwise
    from torch import nn

LAYOUTS = ("natural", "finn_mvau")
MEMORY_KINDS = ("weights", "thresholds")


class MemoryLayoutError(ValueError):
    """A memory description is inconsistent or uses a layout this module cannot map."""


@dataclass(frozen=True)
class Memory:
    """A named memory of ``depth`` words of ``width`` bits holding ``element_bits``-bit elements.

    ``rows x cols`` is the logical matrix stored (``MH x MW``); ``pe``/``simd`` its folding.
    ``bipolar`` elements are one bit (1 = +1, 0 = -1); otherwise signed two's complement.
    """

    name: str
    rows: int
    cols: int
    element_bits: int
    pe: int = 1
    simd: int = 1
    layout: str = "natural"
    kind: str = "weights"
    signed: bool = True
    bipolar: bool = False
    layer_index: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise MemoryLayoutError(
                f"memory {self.name!r}: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}"
            )
        if self.kind not in MEMORY_KINDS:
            raise MemoryLayoutError(f"memory {self.name!r}: unknown kind {self.kind!r}")
        if min(self.rows, self.cols, self.pe, self.simd, self.element_bits) <= 0:
            raise MemoryLayoutError(f"memory {self.name!r}: sizes must be positive: {self}")
        if self.rows % self.pe or self.cols % self.simd:
            raise MemoryLayoutError(
                f"memory {self.name!r}: PE={self.pe} must divide MH={self.rows} and "
                f"SIMD={self.simd} must divide MW={self.cols}"
            )
        if self.bipolar and self.element_bits != 1:
            raise MemoryLayoutError(f"memory {self.name!r}: bipolar elements must be 1 bit wide")

    @property
    def depth(self) -> int:
        return self.rows * self.cols // (self.pe * self.simd)

    @property
    def width(self) -> int:
        return self.pe * self.simd * self.element_bits

    @property
    def n_bits(self) -> int:
        return self.depth * self.width

    @property
    def n_elements(self) -> int:
        return self.rows * self.cols

    def bits_to_elements(
        self, word: np.ndarray, bit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(word, bit)`` -> ``(row-major index into the (rows, cols) matrix, element bit)``."""
        word = np.asarray(word, dtype=np.int64)
        bit = np.asarray(bit, dtype=np.int64)
        if word.size and (word.min() < 0 or word.max() >= self.depth):
            raise MemoryLayoutError(f"memory {self.name!r}: word index outside 0..{self.depth - 1}")
        if bit.size and (bit.min() < 0 or bit.max() >= self.width):
            raise MemoryLayoutError(f"memory {self.name!r}: bit index outside 0..{self.width - 1}")
        sf_per_row = self.cols // self.simd
        nf, sf = np.divmod(word, sf_per_row)
        lane, ebit = np.divmod(bit, self.element_bits)
        pe, s = np.divmod(lane, self.simd)
        row = nf * self.pe + pe
        col = sf * self.simd + s
        return row * self.cols + col, ebit

    def elements_to_bits(
        self, index: np.ndarray, ebit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`bits_to_elements`."""
        index = np.asarray(index, dtype=np.int64)
        ebit = np.asarray(ebit, dtype=np.int64)
        row, col = np.divmod(index, self.cols)
        nf, pe = np.divmod(row, self.pe)
        sf, s = np.divmod(col, self.simd)
        word = nf * (self.cols // self.simd) + sf
        bit = (pe * self.simd + s) * self.element_bits + ebit
        return word, bit

    def stored_bits(self, values: np.ndarray) -> np.ndarray:
        """The memory's contents as a ``(depth, width)`` uint8 array of bits, from the integer
        element matrix ``values`` (needed by fault models that depend on the stored bit)."""
        codes = encode_elements(np.asarray(values).reshape(-1), self.element_bits, self.bipolar)
        word, bit = np.meshgrid(np.arange(self.depth), np.arange(self.width), indexing="ij")
        idx, ebit = self.bits_to_elements(word.ravel(), bit.ravel())
        return ((codes[idx] >> ebit) & 1).astype(np.uint8).reshape(self.depth, self.width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(depth=self.depth, width=self.width)
        return d


def encode_elements(values: np.ndarray, element_bits: int, bipolar: bool) -> np.ndarray:
    """Integer element values -> their stored codes (unsigned, ``element_bits`` wide)."""
    values = np.asarray(values).astype(np.int64)
    if bipolar:
        if values.size and not np.all(np.abs(values) == 1):
            raise ValueError("bipolar elements must be +1 or -1")
        return (values > 0).astype(np.int64)
    return values & ((1 << element_bits) - 1)


def decode_elements(codes: np.ndarray, element_bits: int, bipolar: bool) -> np.ndarray:
    """Stored codes -> integer element values (two's complement, or 1 -> +1 / 0 -> -1)."""
    codes = np.asarray(codes).astype(np.int64)
    if bipolar:
        return 2 * codes - 1
    sign = 1 << (element_bits - 1)
    return codes - ((codes & sign) << 1)


def memory_for_layer(
    name: str, weight_shape: Iterable[int], weight_bits: int, layer_index: int
) -> Memory:
    """Natural-layout memory for one layer's weight tensor (conv weights flattened)."""
    shape = tuple(int(s) for s in weight_shape)
    rows, cols = shape[0], int(np.prod(shape[1:]))
    return Memory(
        name=name,
        rows=rows,
        cols=cols,
        element_bits=weight_bits,
        bipolar=weight_bits == 1,
        layer_index=layer_index,
    )


def memories_from_model(model: nn.Module) -> list[Memory]:
    """One natural-layout memory per quantized layer, named ``layer0``, ``layer1``, ..."""
    from mcel_train.models import quant_layers

    mems = []
    for i, layer in enumerate(quant_layers(model)):
        bits = int(round(float(layer.quant_weight().bit_width)))
        mems.append(memory_for_layer(f"layer{i}", layer.weight.shape, bits, i))
    return mems


def threshold_memories_from_manifest(manifest: dict) -> list[Memory]:
    """The build's threshold memories, for generating fault maps over them.

    A threshold word is one opaque ``width``-bit element here (``depth x 1`` natural layout):
    fault maps address (word, bit) only; what a word means (which threshold of which channel)
    is decoded by the predictor from the manifest's ``finn_thresholds`` / ``bin_mvau_thresholds``
    layout (:mod:`flows.mem_layout`).
    """
    return [Memory(name=str(e["name"]), rows=int(e["depth"]), cols=1, element_bits=int(e["width"]),
                   kind="thresholds", signed=True)
            for e in manifest.get("memories", []) if e.get("kind") == "thresholds"]


def memories_from_manifest(manifest: dict, kinds: Iterable[str] = ("weights",)) -> list[Memory]:
    """Memories of a FINN build's ``manifest.json`` (already parsed), filtered by ``kind``.

    Checks every entry's stated ``depth`` and ``width`` against its folding, so a manifest that
    disagrees with itself fails here rather than as a silent mis-mapping later.
    """
    kinds = tuple(kinds)
    entries = manifest.get("memories")
    if not isinstance(entries, list):
        raise MemoryLayoutError("manifest has no 'memories' list")
    mems = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise MemoryLayoutError(f"manifest memory #{i} is not a mapping")
        kind = e.get("kind", "weights")
        if kind not in kinds:
            continue
        layout = e.get("layout", e)
        name = e.get("name", f"#{i}")
        if layout.get("type") != "finn_mvau":
            raise MemoryLayoutError(
                f"manifest memory {name!r}: layout type {layout.get('type')!r} is not supported "
                "(only finn_mvau)"
            )
        try:
            bipolar = bool(layout.get("bipolar", False))
            bits = int(layout.get("element_bits", e.get("element_bits")))
            mem = Memory(
                name=str(name),
                rows=int(layout["mh"]),
                cols=int(layout["mw"]),
                element_bits=bits,
                pe=int(layout["pe"]),
                simd=int(layout["simd"]),
                layout="finn_mvau",
                kind=kind,
                signed=bool(layout.get("signed", True)),
                bipolar=bipolar,
                layer_index=int(e.get("layer_index", i)),
            )
        except (KeyError, TypeError) as err:
            raise MemoryLayoutError(
                f"manifest memory {name!r}: missing or bad field {err}"
            ) from err
        # ``data_bits`` is the used part of a word the RTL pads (FINN pads memory words to a
        # multiple of 8 bits in some foldings); faults only go into the data bits.
        stated = {"depth": e.get("depth"), "width": e.get("data_bits", e.get("width"))}
        for key, derived in (("depth", mem.depth), ("width", mem.width)):
            if stated[key] is not None and int(stated[key]) != derived:
                raise MemoryLayoutError(
                    f"manifest memory {name!r}: {key}={stated[key]} but the folding gives {derived}"
                )
        mems.append(mem)
    return mems
