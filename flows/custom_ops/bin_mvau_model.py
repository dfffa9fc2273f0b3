"""Bit-exact golden model of rtl/bin_mvau.sv, and its memory / stream file formats.

Why: the project's principle "one fault map, two executions" needs a software model that
computes exactly what the RTL computes, from the same stored words (including flipped bits).
Everything here works on the *stored* integer codes, never on floats.

Conventions (FINN's): weights ``W`` have shape (MW, MH) with values in {-1, +1}, and a layer
computes ``x @ W``. Bipolar values are stored as bits (1 = +1, 0 = -1). For IBITS == 1 the input
``X`` is given as those bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def wrap_signed(v: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap to ``bits`` bits, as the RTL's fixed-width accumulator does."""
    v = np.asarray(v, dtype=np.int64)
    m = 1 << bits
    return ((v + (m >> 1)) % m) - (m >> 1)


def mvau_acc(
    W: np.ndarray,
    X: np.ndarray,
    ibits: int,
    acc_bits: int,
    signed_in: bool = False,
    xnor_popcount: bool = False,
) -> np.ndarray:
    """Accumulator values (N, MH) of the RTL for inputs X (N, MW) and weights W (MW, MH).

    ibits == 1: X holds bits (1 = +1, 0 = -1); the result is the popcount of matches when
    ``xnor_popcount`` (FINN binaryXnorMode) else the bipolar dot product 2*popcount - MW.
    ibits > 1: X holds integers (checked against the signed/unsigned range).
    """
    W = np.asarray(W, dtype=np.int64)
    X = np.atleast_2d(np.asarray(X, dtype=np.int64))
    assert set(np.unique(W)) <= {-1, 1}, "weights must be bipolar"
    if ibits == 1:
        assert set(np.unique(X)) <= {0, 1}, "bipolar inputs are given as bits"
        dot = (2 * X - 1) @ W
        acc = (dot + W.shape[0]) // 2 if xnor_popcount else dot
    else:
        if signed_in:
            lo, hi = -(1 << (ibits - 1)), (1 << (ibits - 1)) - 1
        else:
            lo, hi = 0, (1 << ibits) - 1
        assert X.min() >= lo and X.max() <= hi, "input outside its datatype"
        acc = X @ W
    return wrap_signed(acc, acc_bits)


def multithreshold(acc: np.ndarray, T: np.ndarray, act_val: int, obits: int) -> np.ndarray:
    """Stream codes of the thresholded output: (#{k: acc >= T[r, k]} + act_val) mod 2**obits.

    T has shape (MH, NT) (or (1, NT) for one set shared by all channels).
    """
    acc = np.asarray(acc, dtype=np.int64)
    T = np.asarray(T, dtype=np.int64)
    cnt = (acc[..., None] >= T).sum(axis=-1)
    return (cnt + act_val) % (1 << obits)


def bin_mvau(W, X, ibits, acc_bits, T=None, act_val=0, obits=1, signed_in=False,
             xnor_popcount=False) -> np.ndarray:
    """What bin_mvau.sv puts on out0_V per element: the accumulator (as a signed int) when T is
    None (NO_ACT=1), else the thresholded OBITS-bit code."""
    acc = mvau_acc(W, X, ibits, acc_bits, signed_in, xnor_popcount)
    return acc if T is None else multithreshold(acc, T, act_val, obits)


# ---------------------------------------------------------------- memory layouts


def pack_weights_memstream(W: np.ndarray, pe: int, simd: int) -> list[int]:
    """FINN memstream words for 1-bit weights: word t = nf*(MW/SIMD) + sf holds, at bit
    pe_i*SIMD + s, the weight of output row nf*PE + pe_i and input column sf*SIMD + s
    (bit 1 = +1, 0 = -1). Returns DEPTH = MW*MH/(PE*SIMD) ints of PE*SIMD bits."""
    W = np.asarray(W)
    mw, mh = W.shape
    assert mw % simd == 0 and mh % pe == 0
    bits = (W > 0).astype(np.int64)
    words = []
    for nf in range(mh // pe):
        for sf in range(mw // simd):
            blk = bits[sf * simd:(sf + 1) * simd, nf * pe:(nf + 1) * pe]  # (simd, pe)
            word = 0
            for p in range(pe):
                for s in range(simd):
                    word |= int(blk[s, p]) << (p * simd + s)
            words.append(word)
    return words


def unpack_weights_memstream(words, mw: int, mh: int, pe: int, simd: int) -> np.ndarray:
    """Inverse of pack_weights_memstream: the (MW, MH) bipolar matrix the memory encodes.
    Used to turn a faulty memory image into the weights the hardware really uses."""
    W = np.empty((mw, mh), dtype=np.int64)
    sfold = mw // simd
    for t, word in enumerate(words):
        nf, sf = divmod(t, sfold)
        for p in range(pe):
            for s in range(simd):
                W[sf * simd + s, nf * pe + p] = 1 if (int(word) >> (p * simd + s)) & 1 else -1
    return W


def pack_thresholds(T: np.ndarray, pe: int, acc_bits: int) -> list[int]:
    """Threshold words of bin_mvau's ``tmem``: word nf holds at bits
    [(p*NT + k)*ACCU_WIDTH +: ACCU_WIDTH] threshold k of output row nf*PE + p, two's
    complement. T must be integer and fit ACCU_WIDTH bits (FINN's RoundAndClipThresholds)."""
    T = np.asarray(T, dtype=np.int64)
    mh, nt = T.shape
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    assert T.min() >= lo and T.max() <= hi, "threshold does not fit the accumulator width"
    mask = (1 << acc_bits) - 1
    words = []
    for nf in range(mh // pe):
        word = 0
        for p in range(pe):
            for k in range(nt):
                word |= (int(T[nf * pe + p, k]) & mask) << ((p * nt + k) * acc_bits)
        words.append(word)
    return words


def unpack_thresholds(words, mh: int, nt: int, pe: int, acc_bits: int) -> np.ndarray:
    """Inverse of pack_thresholds (signed), for faulty threshold memories."""
    T = np.empty((mh, nt), dtype=np.int64)
    mask = (1 << acc_bits) - 1
    for nf, word in enumerate(words):
        for p in range(pe):
            for k in range(nt):
                v = (int(word) >> ((p * nt + k) * acc_bits)) & mask
                T[nf * pe + p, k] = v - (1 << acc_bits) if v >> (acc_bits - 1) else v
    return T


def write_memh(path, words, width: int) -> None:
    """$readmemh file: one hex word per line, no prefix, zero-padded to ceil(width/4) digits."""
    nd = (width + 3) // 4
    Path(path).write_text("".join(f"{int(w) & ((1 << width) - 1):0{nd}x}\n" for w in words))


def read_memh(path) -> list[int]:
    """Read a file written by write_memh (or FINN's memblock.dat)."""
    return [int(ln, 16) for ln in Path(path).read_text().split() if ln]


# ---------------------------------------------------------------- stream packing


def pack_stream(X: np.ndarray, fold: int, bits: int) -> list[int]:
    """AXI-stream words for one or more vectors: ``fold`` elements per word, element i at bits
    [i*bits +: bits] (two's complement codes). X shape (N, L) -> N*L/fold words, image-major."""
    X = np.atleast_2d(np.asarray(X, dtype=np.int64))
    mask = (1 << bits) - 1
    words = []
    for row in X:
        for j in range(0, row.size, fold):
            w = 0
            for i, v in enumerate(row[j:j + fold]):
                w |= (int(v) & mask) << (i * bits)
            words.append(w)
    return words


def unpack_stream(words, fold: int, bits: int, signed: bool) -> np.ndarray:
    """Inverse of pack_stream: flat array of elements (reshape to (N, L) yourself)."""
    out = []
    mask = (1 << bits) - 1
    for w in words:
        for i in range(fold):
            v = (int(w) >> (i * bits)) & mask
            if signed and v >> (bits - 1):
                v -= 1 << bits
            out.append(v)
    return np.array(out, dtype=np.int64)


def stream_width(elems: int, bits: int) -> int:
    """FINN's padded AXI-stream width: elems*bits rounded up to a multiple of 8."""
    return (elems * bits + 7) // 8 * 8
