"""Memory layouts: (word, bit) of an on-chip memory <-> elements of the layer's integer tensor.

This is the contract the software fault model and the RTL fault injector share (DESIGN.md,
principle 1). Two layout types exist:

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

from pathlib import Path

import numpy as np


def read_words(path: Path) -> list[int]:
    """Words of a ``$readmemh`` file (one hex word per line, no prefix)."""
    return [int(line.strip(), 16) for line in Path(path).read_text().split() if line.strip()]


def write_words(path: Path, words: list[int], width: int) -> None:
    """Write words as ``$readmemh`` hex lines, zero-padded to ``ceil(width/4)`` digits."""
    digits = (int(width) + 3) // 4
    Path(path).write_text("".join(f"{int(w):0{digits}x}\n" for w in words))


def _to_signed(v: np.ndarray, bits: int) -> np.ndarray:
    v = v.astype(np.int64)
    return np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)


def decode_mvau(words: list[int], layout: dict) -> np.ndarray:
    """Words -> the ``MH x MW`` integer weight matrix (int64; bipolar as +-1)."""
    mh, mw, pe, simd, b = (layout[k] for k in ("mh", "mw", "pe", "simd", "element_bits"))
    sf_n, nf_n = mw // simd, mh // pe
    if len(words) != sf_n * nf_n:
        raise ValueError(f"layout needs {sf_n * nf_n} words, got {len(words)}")
    mask = (1 << b) - 1
    w = np.zeros((mh, mw), dtype=np.int64)
    for t, word in enumerate(words):
        nf, sf = divmod(t, sf_n)
        for p in range(pe):
            for s in range(simd):
                w[nf * pe + p, sf * simd + s] = (int(word) >> ((p * simd + s) * b)) & mask
    if layout.get("bipolar"):
        return 2 * w - 1
    return _to_signed(w, b) if layout.get("signed", True) else w


def encode_mvau(matrix: np.ndarray, layout: dict) -> list[int]:
    """Inverse of :func:`decode_mvau`; values outside the element width are an error."""
    mh, mw, pe, simd, b = (layout[k] for k in ("mh", "mw", "pe", "simd", "element_bits"))
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (mh, mw):
        raise ValueError(f"matrix shape {m.shape} != (MH, MW) = {(mh, mw)}")
    if layout.get("bipolar"):
        if not np.all(np.isin(m, (-1, 1))):
            raise ValueError("bipolar matrix must hold only -1 and +1")
        m = (m + 1) // 2
    lo, hi = (-(1 << (b - 1)), (1 << (b - 1)) - 1) if layout.get("signed", True) else (0, 2**b - 1)
    if not layout.get("bipolar") and (m.min() < lo or m.max() > hi):
        raise ValueError(f"values outside the {b}-bit range [{lo}, {hi}]")
    mask = (1 << b) - 1
    words = []
    for nf in range(mh // pe):
        for sf in range(mw // simd):
            word = 0
            for p in range(pe):
                for s in range(simd):
                    word |= (int(m[nf * pe + p, sf * simd + s]) & mask) << ((p * simd + s) * b)
            words.append(word)
    return words


def threshold_index(layout: dict, word: int) -> tuple[int, int]:
    """(channel, threshold column) stored at ``word`` of a ``finn_thresholds`` memory."""
    s, o, pe, p = layout["stage"], layout["out_bits"], layout["pe"], layout["pe_index"]
    cf, j = divmod(word, 2**s)
    return cf * pe + p, (j << (o - s)) + 2 ** (o - s - 1) - 1


def decode_thresholds(words: list[int], layout: dict) -> dict[tuple[int, int], int]:
    """Words -> {(channel, column): threshold} for the entries this memory holds."""
    b = layout["element_bits"]
    vals = _to_signed(np.array(words, dtype=np.int64), b) if layout.get("signed", True) \
        else np.array(words, dtype=np.int64)
    return {threshold_index(layout, i): int(v) for i, v in enumerate(vals)}


def decode_bin_mvau_thresholds(words: list[int], layout: dict) -> np.ndarray:
    """Words of a ``bin_mvau_thresholds`` memory -> the ``MH x NT`` integer thresholds."""
    mh, pe, nt, b = (layout[k] for k in ("mh", "pe", "nt", "element_bits"))
    if len(words) != mh // pe:
        raise ValueError(f"layout needs {mh // pe} words, got {len(words)}")
    mask = (1 << b) - 1
    t = np.zeros((mh, nt), dtype=np.int64)
    for nf, word in enumerate(words):
        for p in range(pe):
            for k in range(nt):
                t[nf * pe + p, k] = (int(word) >> ((p * nt + k) * b)) & mask
    return _to_signed(t, b) if layout.get("signed", True) else t
