"""The before / after / in-flight classes of a transient upset (hw_sim.transient)."""

from __future__ import annotations

import numpy as np

from hw_sim.transient import classify, coverage_problem


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


def test_what_an_upset_leaves_unchecked_is_named_with_the_cycles_that_would_check_it():
    """With an unbounded input queue every image may be in flight at once: an upset then checks
    nothing, and `mcel sim` must not call the map identical without saying so."""
    clean, faulty, in_c, out_c = _stream(20)  # last input at 190; first output at 50
    both = classify(clean.copy(), clean, faulty, in_c, out_c, upset_cycle=95, margin=2)
    assert coverage_problem(both, 0.01) is None
    late = classify(clean.copy(), clean, faulty, in_c, out_c, upset_cycle=185, margin=2)
    assert late["images_after"] == 0 and "faulty prediction was not checked" in coverage_problem(late, 0.01)
    assert coverage_problem(late, 0.0) is None  # at rate 0 the faulty prediction is the clean one
    assert (late["after_needs_upset_below"], late["before_needs_upset_above"]) == (170, 50)
    early = classify(faulty.copy(), clean, faulty, in_c, out_c, upset_cycle=10, margin=2)
    assert "clean prediction was not checked" in coverage_problem(early, 0.01)
    in_flight = {**late, "images_before": 0, "images_after": 0, "images_checked": 0}
    assert "none was checked" in coverage_problem(in_flight, 0.01)
    never = classify(clean.copy(), clean, faulty, in_c, out_c, upset_cycle=-1)
    assert "every image ran on clean memories" in coverage_problem(never, 0.01)
    # at rate 0 the clean and the faulty prediction are one: nothing can be left unchecked
    assert all(coverage_problem(r, 0.0) is None for r in (early, never, in_flight))


def test_an_image_in_flight_is_not_checked_even_where_both_predictions_agree():
    """An image in flight may have read some layers' words before the upset and some after: even
    where the all-clean and the all-faulty network give the same output, that mix need not, so
    it stays unchecked (checking it would report a correct accelerator as a mismatch); its
    hardware output stands in for the prediction, and a map that checked nothing is not identical."""
    clean, faulty, in_c, out_c = _stream(20)
    faulty[9] = clean[9]
    hw = np.where((np.arange(20) < 5)[:, None], clean, faulty)
    hw[9] += 1  # a mix of words gave an output neither network gives
    r = classify(hw, clean, faulty, in_c, out_c, upset_cycle=95, margin=2)
    assert r["images_checked"] == 5 + 8 and not r["checked"][9] and r["identical_to_software"]
    assert (r["prediction"][9] == hw[9]).all()
    nothing = classify(hw[:2], clean[:2], faulty[:2], np.zeros(2), np.full(2, 500), upset_cycle=100, margin=2)
    assert nothing["images_checked"] == 0 and not nothing["identical_to_software"]
    assert "more than 4 --images" in coverage_problem(nothing, 0.01)
