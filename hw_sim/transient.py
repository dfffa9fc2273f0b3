"""Transient upsets: a fault map's bits flip at a given cycle while images stream.

Which images must see the clean weights and which the faulty ones follows from the stream's
timing, recorded by the harness (the cycle each input word went in and each output came out):

* **before**: an image whose output left the accelerator before the upset was computed entirely
  from the clean memories, so it must equal the clean prediction;
* **after**: every weight a memory streamer delivers for image ``k`` is read after the streamer
  finished delivering image ``k - 1``'s weights, which needs image ``k - 1``'s activations,
  which needs image ``k - 1``'s input. Memory streamers read a few words ahead, so the bound
  is taken ``MARGIN_IMAGES`` images back: an image whose predecessor by that many images went in
  after the upset read only faulty words and must equal the faulty prediction;
* **in flight**: the rest may have read some words before and some after the upset. They are
  counted (equal to the clean, to the faulty, or to neither prediction) but not checked.
"""

from __future__ import annotations

import numpy as np

MARGIN_IMAGES = 4


def classify(hw: np.ndarray, clean: np.ndarray, faulty: np.ndarray, in_cycles: np.ndarray,
             out_cycles: np.ndarray, upset_cycle: int, margin: int = MARGIN_IMAGES) -> dict:
    """Per-image classes for one map and whether the checked ones match; see the module doc.

    ``upset_cycle < 0``: the stream ended before the upset cycle, so every image is "before".
    """
    n = len(hw)
    upset = upset_cycle if upset_cycle >= 0 else np.iinfo(np.int64).max
    before = out_cycles < upset
    after = np.zeros(n, dtype=bool)
    if n > margin:
        after[margin:] = in_cycles[: n - margin] > upset
    after &= ~before
    flight = ~before & ~after
    same_clean = (hw == clean).all(axis=1)
    same_faulty = (hw == faulty).all(axis=1)
    return {
        "upset_cycle": int(upset_cycle),
        "images_before": int(before.sum()), "images_after": int(after.sum()), "images_in_flight": int(flight.sum()),
        "before_equal_clean": int((same_clean & before).sum()),
        "after_equal_faulty": int((same_faulty & after).sum()),
        "in_flight_equal_clean": int((same_clean & flight).sum()),
        "in_flight_equal_faulty": int((same_faulty & flight & ~same_clean).sum()),
        "in_flight_neither": int((flight & ~same_clean & ~same_faulty).sum()),
        "identical_to_software": bool(same_clean[before].all() and same_faulty[after].all()),
        "checked": before | after,
        "prediction": np.where(before[:, None], clean, faulty),
    }
