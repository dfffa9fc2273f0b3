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
  counted (equal to the clean, to the faulty, or to neither prediction) but not checked: even
  where the clean and the faulty network give the same output, a mix of their words need not.
"""

from __future__ import annotations

import numpy as np

MARGIN_IMAGES = 4


def coverage_problem(transient: dict, rate: float) -> str | None:
    """What a map's transient record leaves unchecked, as one sentence (``None``: both the clean
    and the faulty prediction were checked on some image, or they cannot differ: rate 0). An
    upset while every image is in flight checks nothing, and one after the stream's end checks
    the clean weights only: neither may be reported as hardware equal to software without
    saying so."""
    if rate == 0:
        return None
    before, after, upset = transient["images_before"], transient["images_after"], transient["upset_cycle"]
    below = transient["after_needs_upset_below"]
    window = ((f"an upset before cycle {below} checks images after it" if below >= 0 else
               f"images after an upset need more than {MARGIN_IMAGES} --images") +
              f", one after cycle {transient['before_needs_upset_above']} images before it; more --images move "
              "the first bound")
    if upset < 0:
        return f"the stream ended before the upset, so every image ran on clean memories: {window}"
    if transient["images_checked"] == 0:
        return f"every image was in flight at the upset (cycle {upset}), so none was checked: {window}"
    if after == 0:
        return f"no image entered after the upset (cycle {upset}), so the faulty prediction was not checked: {window}"
    if before == 0:
        return f"no image left before the upset (cycle {upset}), so the clean prediction was not checked: {window}"
    return None


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
    checked = before | after
    return {
        "upset_cycle": int(upset_cycle),
        "images_before": int(before.sum()), "images_after": int(after.sum()), "images_in_flight": int(flight.sum()),
        "before_equal_clean": int((same_clean & before).sum()),
        "after_equal_faulty": int((same_faulty & after).sum()),
        "in_flight_equal_clean": int((same_clean & flight).sum()),
        "in_flight_equal_faulty": int((same_faulty & flight & ~same_clean).sum()),
        "in_flight_neither": int((flight & ~same_clean & ~same_faulty).sum()),
        "images_checked": int(checked.sum()),
        # nothing checked proves nothing (all() of nothing is True)
        "identical_to_software": bool(checked.any() and same_clean[before].all() and same_faulty[after].all()),
        # where an upset would have checked each side on this stream: images after it need one
        # before this cycle, images before it one after the first output
        "after_needs_upset_below": int(in_cycles[n - 1 - margin]) if n > margin else -1,
        "before_needs_upset_above": int(out_cycles.min()) if n else 0,
        "checked": checked,
        # an unchecked image has no prediction: its hardware output stands in, so that the software
        # accuracy of a map differs from the hardware's only where a checked image differs
        "prediction": np.where(before[:, None], clean, np.where(after[:, None], faulty, hw)),
    }
