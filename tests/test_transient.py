"""The before / after / in-flight classes of a transient upset (hw_sim.transient)."""

from __future__ import annotations

import numpy as np

from hw_sim.transient import classify


def _stream(n: int = 12):
    clean = np.arange(n * 2).reshape(n, 2)
    faulty = clean + 100
    in_cycles = np.arange(n) * 10      # image k goes in at 10k
    out_cycles = np.arange(n) * 10 + 50  # and comes out 50 cycles later
    return clean, faulty, in_cycles, out_cycles


def test_images_before_and_after_the_upset_are_checked():
    clean, faulty, in_c, out_c = _stream(20)
    hw = np.where((np.arange(20) < 5)[:, None], clean, faulty)  # out before cycle 95: images 0..4
    r = classify(hw, clean, faulty, in_c, out_c, upset_cycle=95, margin=2)
    assert (r["images_before"], r["images_after"]) == (5, 8)  # after: in_cycles[k-2] > 95 -> k >= 12
    assert r["identical_to_software"] and r["images_in_flight"] == 7
    hw_bad = hw.copy()
    hw_bad[0] = faulty[0]  # an image that left before the upset cannot have seen it
    assert not classify(hw_bad, clean, faulty, in_c, out_c, upset_cycle=95, margin=2)["identical_to_software"]


def test_an_upset_after_the_stream_ended_leaves_every_image_clean():
    clean, faulty, in_c, out_c = _stream()
    r = classify(clean.copy(), clean, faulty, in_c, out_c, upset_cycle=-1)
    assert r["images_before"] == 12 and r["identical_to_software"] and r["upset_cycle"] == -1
    assert not classify(faulty.copy(), clean, faulty, in_c, out_c, upset_cycle=-1)["identical_to_software"]
