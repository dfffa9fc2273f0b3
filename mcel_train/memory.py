"""Named on-chip memories and the mapping between their bits and weight-tensor elements.

A fault map speaks of ``(memory, word, bit)``; the software model needs ``(element, bit of
element)``. This module is the one place that translates between the two, so the software
prediction and the RTL simulation agree on which weight a bit belongs to (docs/architecture.md, principle 1).

Every layout is expressed as FINN's MVAU folding of an ``(MH out x MW in)`` matrix: word
``t = nf * (MW / SIMD) + sf`` holds, at bit offset ``(pe * SIMD + s) * B``, the element
``W[nf * PE + pe, sf * SIMD + s]``. The *natural* layout (row-major tensor order, one element
per word) is the special case ``PE = SIMD = 1``, so both layouts share one code path.
Conv weights ``(out, in, kh, kw)`` are flattened to ``(out, in * kh * kw)``.

This is also the one module that reads and writes the words of a FINN build's memory init files
(``$readmemh`` hex lines), through the layouts a build's ``manifest.json`` names:

``finn_mvau`` (weight memory of an MVAU, mem_mode internal_decoupled)::

    {"type": "finn_mvau", "mh": MH, "mw": MW, "pe": PE, "simd": SIMD,
     "element_bits": B, "signed": true, "bipolar": false}

word ``t = nf*(MW/SIMD) + sf`` holds, at bit offset ``(pe*SIMD + s)*B``, the weight
``W[nf*PE + pe, sf*SIMD + s]`` of the ``MH x MW`` (out x in) matrix, in two's complement
(bipolar: +1 stored as 1, -1 as 0). Bits from ``PE*SIMD*B`` up to the memory width are padding
(FINN pads words to whole bytes): never read. Verified against FINN's ``memblock.dat`` at every
build.

``finn_thresholds`` (one memory per (stage, pe) of a Thresholding_rtl binary-search tree)::

    {"type": "finn_thresholds", "channels": C, "pe": PE, "pe_index": p, "stage": s,
     "out_bits": O, "num_steps": N, "element_bits": B, "signed": true}

word ``i = (cf << s) + j`` (``cf < C/PE``, ``j < 2**s``) holds, two's complement, threshold
``T[cf*PE + p, (j << (O - s)) + 2**(O - s - 1) - 1]`` of the ``C x N`` threshold matrix (an
output value ``k`` means the input reached threshold ``k-1``). Threshold columns ``>= N`` are
padding (value 0, unused by FINN's search when ``N = 2**O - 1``).

``bin_mvau_thresholds`` (thresholds embedded in the project's BinMVAU, rtl/bin_mvau.sv)::

    {"type": "bin_mvau_thresholds", "mh": MH, "pe": PE, "nt": NT, "element_bits": B,
     "signed": true}

word ``nf`` holds, at bits ``[(p*NT + k)*B, +B)``, threshold ``k`` of output row ``nf*PE + p``
(two's complement). The unit outputs ``#{k : acc >= T[r, k]}`` (BIPOLAR: 1 = +1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcel_train.errors import ArtifactError

if TYPE_CHECKING:  # torch costs ~1 s to import, paid by every testbench process otherwise
    from torch import nn

LAYOUTS = ("natural", "finn_mvau")
MEMORY_KINDS = ("weights", "thresholds")


class MemoryLayoutError(ArtifactError):
    """A memory description is inconsistent or uses a layout this module cannot map."""


@dataclass(frozen=True)
class Memory:
    """A named memory of ``depth`` words of ``width`` bits holding ``element_bits``-bit elements.

    ``rows x cols`` is the logical matrix stored (``MH x MW``); ``pe``/``simd`` its folding.
    ``bipolar`` elements are one bit (1 = +1, 0 = -1); otherwise signed two's complement, or,
    with a ``zero_point``, unsigned codes ``value + zero_point`` (per-tensor min/max quantization).
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
    # unsigned codes with a zero point (min/max quantization): value = code - zero_point
    zero_point: int | None = None

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
        if self.zero_point is not None and not 0 <= self.zero_point < 2**self.element_bits:
            raise MemoryLayoutError(f"memory {self.name!r}: zero point {self.zero_point} is not a "
                                    f"{self.element_bits}-bit code")

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
        codes = encode_elements(np.asarray(values).reshape(-1), self.element_bits, self.bipolar, self.zero_point)
        word, bit = np.meshgrid(np.arange(self.depth), np.arange(self.width), indexing="ij")
        idx, ebit = self.bits_to_elements(word.ravel(), bit.ravel())
        return ((codes[idx] >> ebit) & 1).astype(np.uint8).reshape(self.depth, self.width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(depth=self.depth, width=self.width)
        return d


def encode_elements(values: np.ndarray, element_bits: int, bipolar: bool,
                    zero_point: int | None = None) -> np.ndarray:
    """Integer element values -> their stored codes (unsigned, ``element_bits`` wide)."""
    values = np.asarray(values).astype(np.int64)
    if zero_point is not None:
        codes = values + zero_point
        if codes.size and (codes.min() < 0 or codes.max() >= 2**element_bits):
            raise ValueError(f"values do not fit {element_bits}-bit codes with zero point {zero_point}")
        return codes
    if bipolar:
        if values.size and not np.all(np.abs(values) == 1):
            raise ValueError("bipolar elements must be +1 or -1")
        return (values > 0).astype(np.int64)
    return values & ((1 << element_bits) - 1)


def decode_elements(codes: np.ndarray, element_bits: int, bipolar: bool,
                    zero_point: int | None = None) -> np.ndarray:
    """Stored codes -> integer element values (two's complement, 1 -> +1 / 0 -> -1, or
    ``code - zero_point``)."""
    codes = np.asarray(codes).astype(np.int64)
    if zero_point is not None:
        return codes - zero_point
    if bipolar:
        return 2 * codes - 1
    sign = 1 << (element_bits - 1)
    return codes - ((codes & sign) << 1)


def memory_for_layer(
    name: str, weight_shape: Iterable[int], weight_bits: int, layer_index: int,
    zero_point: int | None = None,
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
        signed=zero_point is None,
        zero_point=zero_point,
    )


def memories_from_model(model: nn.Module) -> list[Memory]:
    """One natural-layout memory per quantized layer, named ``layer0``, ``layer1``, ..."""
    from mcel_train.models import quant_layers

    mems = []
    for i, layer in enumerate(quant_layers(model)):
        qw = layer.quant_weight()
        bits = int(round(float(qw.bit_width)))
        mems.append(memory_for_layer(f"layer{i}", layer.weight.shape, bits, i, weight_zero_point(qw)))
    return mems


def weight_zero_point(quant_weight) -> int | None:
    """The integer zero point of an unsigned (min/max) per-tensor weight quantizer, else None."""
    if getattr(quant_weight, "signed", True) or quant_weight.zero_point is None:
        return None
    zp = quant_weight.zero_point.detach().reshape(-1)
    if zp.numel() != 1:
        raise MemoryLayoutError("only per-tensor zero points are supported")
    return int(round(float(zp[0])))


# ----------------------------------------------------------------- memory init files (words)


def read_words(path: Path) -> list[int]:
    """Words of a ``$readmemh`` file (one hex word per line, no prefix)."""
    return [int(line, 16) for line in Path(path).read_text().split()]


def write_words(path: Path, words: Sequence[int], width: int) -> None:
    """Write words as ``$readmemh`` hex lines, zero-padded to ``ceil(width/4)`` digits."""
    digits = (int(width) + 3) // 4
    Path(path).write_text("".join(f"{int(w):0{digits}x}\n" for w in words))


def words_to_bits(words: Sequence[int], width: int) -> np.ndarray:
    """``(depth, width)`` uint8 bit matrix of the words (bit ``b`` of word ``t`` at ``[t, b]``)."""
    nbytes = max(1, (int(width) + 7) // 8)
    raw = b"".join(int(w).to_bytes(nbytes, "little") for w in words)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(len(words), nbytes), axis=1,
                         bitorder="little")
    return bits[:, :width]


def bits_to_words(bits: np.ndarray) -> list[int]:
    """Inverse of :func:`words_to_bits`."""
    packed = np.packbits(np.asarray(bits, dtype=np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def finn_mvau_memory(layout: dict, name: str = "") -> Memory:
    """The :class:`Memory` a manifest's ``finn_mvau`` layout describes."""
    bipolar = bool(layout.get("bipolar"))
    return Memory(name=name, rows=int(layout["mh"]), cols=int(layout["mw"]), element_bits=int(layout["element_bits"]),
                  pe=int(layout["pe"]), simd=int(layout["simd"]), layout="finn_mvau",
                  signed=bool(layout.get("signed", not bipolar)), bipolar=bipolar)


def _lane_index(mem: Memory) -> np.ndarray:
    """``(depth, PE*SIMD)`` row-major element index stored in each lane of each word."""
    word, lane = np.meshgrid(np.arange(mem.depth), np.arange(mem.pe * mem.simd), indexing="ij")
    idx, _ = mem.bits_to_elements(word.ravel(), lane.ravel() * mem.element_bits)
    return idx.reshape(word.shape)


def decode_mvau(words: Sequence[int], layout: dict) -> np.ndarray:
    """Words of a ``finn_mvau`` memory -> the ``MH x MW`` integer weight matrix (bipolar as +-1)."""
    mem = finn_mvau_memory(layout)
    if len(words) != mem.depth:
        raise MemoryLayoutError(f"layout needs {mem.depth} words, got {len(words)}")
    b = mem.element_bits
    bits = words_to_bits(words, mem.width).reshape(mem.depth, mem.pe * mem.simd, b).astype(np.int64)
    codes = (bits << np.arange(b)).sum(axis=2)
    out = np.zeros(mem.n_elements, dtype=np.int64)
    out[_lane_index(mem).ravel()] = codes.ravel()
    if mem.signed or mem.bipolar:
        out = decode_elements(out, b, mem.bipolar)
    return out.reshape(mem.rows, mem.cols)


def encode_mvau(matrix: np.ndarray, layout: dict) -> list[int]:
    """Inverse of :func:`decode_mvau`; values outside the element width are an error."""
    mem = finn_mvau_memory(layout)
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (mem.rows, mem.cols):
        raise MemoryLayoutError(f"matrix shape {m.shape} != (MH, MW) = {(mem.rows, mem.cols)}")
    b = mem.element_bits
    if not mem.bipolar:
        lo, hi = (-(1 << (b - 1)), (1 << (b - 1)) - 1) if mem.signed else (0, 2**b - 1)
        if m.size and (m.min() < lo or m.max() > hi):
            raise MemoryLayoutError(f"values outside the {b}-bit range [{lo}, {hi}]")
    codes = encode_elements(m.ravel(), b, mem.bipolar)[_lane_index(mem)]
    bits = ((codes[:, :, None] >> np.arange(b)) & 1).reshape(mem.depth, mem.width)
    return bits_to_words(bits)


def weight_index(layout: dict, row: int, col: int) -> tuple[int, ...]:
    """The tensor element of entry ``(row, col)`` of a ``finn_mvau`` memory's ``MH x MW`` matrix,
    as its ``input`` record says: ``(out channel, kernel row, kernel column, in channel)`` for a
    convolution (FINN's im2col order), ``(out, h, w, c)`` for an FC layer on a flattened NHWC
    feature map, ``(out, in)`` otherwise. With :meth:`Memory.bits_to_elements` this maps every
    (word, bit) of a memory to a weight of the network."""
    geo = layout.get("input", {"kind": "dense"})
    if geo["kind"] == "conv":
        k = geo["kernel"]
        return (row, *(int(i) for i in np.unravel_index(col, (k[0], k[1], geo["in_channels"]))))
    if geo["kind"] == "flatten":
        return (row, *(int(i) for i in np.unravel_index(col, tuple(geo["shape"]))))
    return (row, col)


def to_torch_order(matrix: np.ndarray, layout: dict) -> np.ndarray:
    """A ``finn_mvau`` matrix as torch holds the weights: ``(out, in, kh, kw)`` for a
    convolution, ``(out, c*h*w)`` (NCHW flatten) for an FC layer after convolutions."""
    geo = layout.get("input", {"kind": "dense"})
    m = np.asarray(matrix)
    if geo["kind"] == "conv":
        k = geo["kernel"]
        return m.reshape(m.shape[0], k[0], k[1], geo["in_channels"]).transpose(0, 3, 1, 2)
    if geo["kind"] == "flatten":
        h, w, c = geo["shape"]
        return m.reshape(m.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(m.shape[0], -1)
    return m


def threshold_index(layout: dict, word: int) -> tuple[int, int]:
    """(channel, threshold column) stored at ``word`` of a ``finn_thresholds`` memory."""
    s, o, pe, p = layout["stage"], layout["out_bits"], layout["pe"], layout["pe_index"]
    cf, j = divmod(word, 2**s)
    return cf * pe + p, (j << (o - s)) + 2 ** (o - s - 1) - 1


def _to_signed(v: np.ndarray, bits: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)


def decode_thresholds(words: Sequence[int], layout: dict) -> dict[tuple[int, int], int]:
    """Words of a ``finn_thresholds`` memory -> {(channel, column): threshold} it holds."""
    vals = np.array(words, dtype=np.int64)
    if layout.get("signed", True):
        vals = _to_signed(vals, layout["element_bits"])
    return {threshold_index(layout, i): int(v) for i, v in enumerate(vals)}


def decode_bin_mvau_thresholds(words: Sequence[int], layout: dict) -> np.ndarray:
    """Words of a ``bin_mvau_thresholds`` memory -> the ``MH x NT`` integer thresholds."""
    mh, pe, nt, b = (int(layout[k]) for k in ("mh", "pe", "nt", "element_bits"))
    if len(words) != mh // pe:
        raise MemoryLayoutError(f"layout needs {mh // pe} words, got {len(words)}")
    bits = words_to_bits(words, pe * nt * b).reshape(mh // pe, pe, nt, b).astype(np.int64)
    t = (bits << np.arange(b)).sum(axis=3).reshape(mh, nt)
    return _to_signed(t, b) if layout.get("signed", True) else t
