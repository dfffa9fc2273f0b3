"""Keep freed memory in the process for reuse instead of handing it back to the operating system.

glibc's malloc serves every block above a threshold (128 KiB, rising to at most 32 MiB as it
adapts) with a fresh ``mmap`` and unmaps it again on ``free``. The fault evaluators allocate and
free tensors of tens to hundreds of megabytes per call (a VGG3's activations for a group of
maps), so each call faults in and zeroes every page anew. On the paper VGG3 (2000 test images,
8 maps at a rate of 1 %, dense path) that was 6.8 s of system time, and with the two settings
below 0.35 s: 18.2 s of wall time became 11.5 s (bench/results/malloc_tuning_vgg3.json, by
bench/malloc_tuning.py). The price is a higher resident peak (2.2 GB became 2.8 GB there),
since freed blocks stay mapped for the next call.

Nothing changes but where memory comes from, so no result can differ. On a C library without
``mallopt`` (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused after free
TRIM_THRESHOLD = 2**31 - 1  # never shrink the heap's top (the next call needs it again)

_tuned = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; ``True`` if they are in effect."""
    global _tuned
    if _tuned:
        return True
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _tuned = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _tuned
