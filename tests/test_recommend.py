"""``mcel report --target-ber``: the recommendation follows the numbers and says when it cannot;
the best loss per rate and the report's curves compare means over training seeds."""

import pytest

from flows.campaign.report import across_seeds, best_margins, recommend


def rows(acc_at_rate: dict[str, list[float]], clean: dict[str, float], rate: float = 0.01) -> list[dict]:
    out = []
    for loss, accs in acc_at_rate.items():
        for seed, a in enumerate(accs):
            out.append({"source": "software", "fault_model": "flip", "model": "vgg3", "loss": loss, "seed": seed,
                        "rate": rate, "mean": a, "ci95": [a - 0.002, a + 0.002], "clean_accuracy": clean[loss]})
    return out


def test_a_clearly_better_loss_within_budget_is_chosen():
    rec = recommend(rows({"CE": [0.70, 0.71, 0.69], "MCEL m=32": [0.80, 0.81, 0.79]},
                         {"CE": 0.90, "MCEL m=32": 0.898}), 0.01, 0.5)[0]
    assert rec["choice"] == "MCEL m=32" and rec["verdict"].startswith("supported")
    assert rec["ci95_seeds"][0] < 0.80 < rec["ci95_seeds"][1]


def test_the_clean_budget_excludes_a_costly_loss():
    rec = recommend(rows({"CE": [0.70, 0.71, 0.69], "MCEL m=128": [0.85, 0.86, 0.84]},
                         {"CE": 0.90, "MCEL m=128": 0.88}), 0.01, 0.5)[0]
    assert rec["choice"] == "CE" and rec["verdict"] == "CE is the only loss within the budget"


def test_ce_ahead_says_by_how_much_the_next_loss_trails():
    rec = recommend(rows({"CE": [0.80, 0.81, 0.79], "MCEL m=32": [0.78, 0.79, 0.77]},
                         {"CE": 0.90, "MCEL m=32": 0.899}), 0.01, 0.5)[0]
    assert rec["choice"] == "CE"
    assert rec["verdict"] == "CE is the most accurate loss within the budget (next: MCEL m=32, 2.0 points lower)"


def test_overlapping_seeds_fall_back_to_ce_and_say_so():
    rec = recommend(rows({"CE": [0.70, 0.78, 0.62], "MCEL m=32": [0.74, 0.66, 0.80]},
                         {"CE": 0.90, "MCEL m=32": 0.90}), 0.01, 0.5)[0]
    assert rec["choice"] == "CE" and "no loss beats CE" in rec["verdict"]


def test_unsupported_grids_are_named():
    assert "no rate" in recommend(rows({"CE": [0.7, 0.7]}, {"CE": 0.9}), 0.001, 0.5)[0]["verdict"]
    one_seed = recommend(rows({"CE": [0.7], "MCEL m=32": [0.8]}, {"CE": 0.9, "MCEL m=32": 0.9}), 0.01, 0.5)[0]
    assert "one training seed" in one_seed["verdict"]


def test_seeds_are_averaged_before_losses_are_compared():
    # CE has one lucky seed (0.95) above every MCEL seed, but MCEL's mean is far above CE's:
    # comparing single seeds would pick CE
    table = rows({"CE": [0.60, 0.62, 0.95], "MCEL m=32": [0.84, 0.85, 0.86]}, {"CE": 0.90, "MCEL m=32": 0.90})
    cells = {c["loss"]: c for c in across_seeds(table)}
    assert set(cells) == {"CE", "MCEL m=32"} and all(c["seeds"] == [0, 1, 2] for c in cells.values())
    assert cells["CE"]["mean"] == pytest.approx((0.60 + 0.62 + 0.95) / 3)
    assert cells["MCEL m=32"]["ci95"] == cells["MCEL m=32"]["ci95_seeds"]
    (best,) = best_margins(table)
    assert best["loss"] == "MCEL m=32" and best["seeds"] == [0, 1, 2]
    assert best["gain_over_ce"] == pytest.approx(0.85 - (0.60 + 0.62 + 0.95) / 3)


def test_one_seed_falls_back_to_the_map_interval():
    (cell,) = across_seeds(rows({"CE": [0.7]}, {"CE": 0.9}))
    assert cell["ci95_seeds"] is None and cell["ci95"] == pytest.approx((0.698, 0.702))


def test_report_of_an_imported_network_without_margin_is_written():
    """An imported network has no training record, so no mean logit margin: its table cell is
    "-" (the report used to end in a TypeError formatting None, leaving a half-written folder)."""
    from flows.campaign.report import _markdown
    from flows.campaign.spec import parse_campaign

    spec = parse_campaign({"name": "c", "grid": {"models": ["tfc_w2a2"], "losses": ["ce"]},
                           "software": {"ber": [0, 0.01], "maps": 2}})
    table = [{"source": "software", "fault_model": "flip", "model": "mine", "loss": "imported", "seed": 0,
              "rate": r, "mean": 0.8, "ci95": [0.79, 0.81], "clean_accuracy": 0.85, "mean_logit_margin": None}
             for r in (0.0, 0.01)]
    md = _markdown(spec, table, [], {"mine": "mine.png"})
    assert "| imported | 0 | 85.00 | - | 80.00 [79.00, 81.00] | 80.00 [79.00, 81.00] |" in md
