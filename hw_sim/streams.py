"""Packing images into AXI-stream words and unpacking output words, as FINN does it.

A stream word carries ``elems_per_word`` elements of ``elem_bits`` each, element 0 in the least
significant bits, padded up to ``word_bits`` (a multiple of 8). Bipolar elements (+1/-1) are
one bit, 1 for +1 and 0 for -1. The words are kept as little-endian byte rows
(``(n_words, word_bits // 8)`` uint8), so arbitrarily wide words stay vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcel_train.manifest import StreamFormatSpec


@dataclass(frozen=True)
class StreamFormat:
    """Shape of one stream: how many elements, how they are packed, how wide the word is."""

    elems_per_image: int
    elems_per_word: int
    elem_bits: int
    word_bits: int
    signed: bool = False
    bipolar: bool = False

    @property
    def words_per_image(self) -> int:
        return self.elems_per_image // self.elems_per_word

    @property
    def word_bytes(self) -> int:
        return self.word_bits // 8

    @classmethod
    def from_manifest(cls, fmt: StreamFormatSpec) -> StreamFormat:
        """Build from a manifest's ``streams.input`` / ``streams.output`` record (FINN datatype names)."""
        return cls(
            elems_per_image=fmt.elements,
            elems_per_word=fmt.elements_per_beat,
            elem_bits=fmt.element_bits,
            word_bits=fmt.tdata_bits,
            signed=fmt.datatype.startswith("INT"),
            bipolar=fmt.datatype == "BIPOLAR",
        )

    def check(self) -> None:
        if self.elems_per_image % self.elems_per_word:
            raise ValueError(f"{self.elems_per_image} elements do not split into words of {self.elems_per_word}")
        if self.word_bits % 8 or self.word_bits < self.elems_per_word * self.elem_bits:
            raise ValueError(f"word of {self.word_bits} bits cannot hold {self.elems_per_word} x {self.elem_bits} bits")


def pack(values: np.ndarray, fmt: StreamFormat) -> np.ndarray:
    """``(n_images, elems_per_image)`` integers -> ``(n_images * words_per_image, word_bytes)`` uint8."""
    fmt.check()
    v = np.asarray(values).astype(np.int64).reshape(-1, fmt.elems_per_image)
    if fmt.bipolar:
        if not np.isin(v, (-1, 1)).all():
            raise ValueError("bipolar stream values must be -1 or +1")
        codes = (v > 0).astype(np.int64)
    else:
        lo = -(1 << (fmt.elem_bits - 1)) if fmt.signed else 0
        hi = (1 << (fmt.elem_bits - 1)) - 1 if fmt.signed else (1 << fmt.elem_bits) - 1
        if v.min(initial=0) < lo or v.max(initial=0) > hi:
            raise ValueError(f"stream values outside [{lo}, {hi}] for {fmt.elem_bits}-bit elements")
        codes = v & ((1 << fmt.elem_bits) - 1)
    words = codes.reshape(-1, fmt.elems_per_word)
    # bits[w, k]: bit k of word w, element e occupies bits e*elem_bits .. +elem_bits-1.
    shifts = np.arange(fmt.elem_bits)
    bits = ((words[:, :, None] >> shifts) & 1).reshape(words.shape[0], -1).astype(np.uint8)
    padded = np.zeros((words.shape[0], fmt.word_bits), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    return np.packbits(padded, axis=1, bitorder="little")


def unpack(words: np.ndarray, fmt: StreamFormat) -> np.ndarray:
    """Inverse of :func:`pack`: byte rows -> ``(n_images, elems_per_image)`` int64."""
    fmt.check()
    bits = np.unpackbits(np.asarray(words, dtype=np.uint8), axis=1, bitorder="little")
    bits = bits[:, : fmt.elems_per_word * fmt.elem_bits].reshape(-1, fmt.elems_per_word, fmt.elem_bits)
    codes = (bits.astype(np.int64) << np.arange(fmt.elem_bits)).sum(axis=2)
    if fmt.bipolar:
        values = 2 * codes - 1
    elif fmt.signed:
        values = np.where(codes >= 1 << (fmt.elem_bits - 1), codes - (1 << fmt.elem_bits), codes)
    else:
        values = codes
    return values.reshape(-1, fmt.elems_per_image)


def words_to_ints(words: np.ndarray) -> list[int]:
    """Byte rows -> Python ints (for writing simulator handles)."""
    return [int.from_bytes(row.tobytes(), "little") for row in np.asarray(words, dtype=np.uint8)]


def ints_to_words(values: list[int], word_bytes: int) -> np.ndarray:
    """Python ints (read from simulator handles) -> byte rows."""
    out = np.zeros((len(values), word_bytes), dtype=np.uint8)
    for i, v in enumerate(values):
        out[i] = np.frombuffer(int(v).to_bytes(word_bytes, "little"), dtype=np.uint8)
    return out
