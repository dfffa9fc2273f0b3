"""Sweep records: reproducible by seed, no silent overwrite, plots and margins, CLI parsers."""

import argparse
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mcel_train.commands_faults import add_parsers
from mcel_train.errors import UserInputError
from mcel_train.margins import margin_report
from mcel_train.plotting import plot_runs
from mcel_train.sweep import SweepExistsError, accuracy_interval, maps_needed, run_sweep, t_interval
from tests.bench_scripts import load_bench_script
from tests.plot_checks import curves, png_shape


def _sweep_curve(rec) -> tuple:
    """(rates, mean accuracies) of a sweep record, in rate order: what its plot must show."""
    res = sorted(rec["results"], key=lambda r: r["rate"])
    return [r["rate"] for r in res], [r["mean"] for r in res]


def test_same_seed_gives_identical_json(smoke_run, figures):
    out = smoke_run / "sweep" / "sw_ber.json"
    rec = run_sweep(smoke_run, [0.0, 0.01, 0.05], maps=6, seed=3, progress=False, force=True)
    first = out.read_bytes()
    # sw_ber.png shows this record: one curve, named after the run, through its mean accuracies
    assert len(figures) == 1 and curves(figures[0]) == {smoke_run.name: _sweep_curve(rec)}
    png_shape(smoke_run / "sweep" / "sw_ber.png", figures[0])
    with pytest.raises(SweepExistsError, match="force"):
        run_sweep(smoke_run, [0.0], maps=2, progress=False)
    run_sweep(smoke_run, [0.0, 0.01, 0.05], maps=6, seed=3, progress=False, force=True,
              map_batch=4)
    assert out.read_bytes() == first
    r0 = rec["results"][0]
    assert r0["accuracies"] == [rec["clean_accuracy"]] * 6 and r0["ci95"] == [r0["mean"]] * 2
    assert r0["mean"] == rec["clean_accuracy"]
    r1 = rec["results"][1]
    assert len(r1["accuracies"]) == 6 and r1["ci95"][0] <= r1["mean"] <= r1["ci95"][1]
    assert rec["seed"] == 3 and rec["fault_model"]["name"] == "flip"
    other = run_sweep(smoke_run, [0.01], maps=6, seed=4, progress=False, force=True)
    assert other["results"][0]["accuracies"] != r1["accuracies"]


def test_ci_width_stops_at_a_prefix_of_the_fixed_maps(smoke_run, capsys):
    """``--ci-width``: each rate stops at the first map count whose 95 % interval is narrower
    than the target (or at ``maps``), records that count, and its maps are the first maps of a
    fixed-count sweep with the same seed, so the result does not depend on where it stopped. A
    rate that reached ``maps`` with the interval still wider says so (it looked like a rate
    that needed exactly ``maps``), in the record and in a note."""
    rates, width = [0.0, 0.002, 0.05], 7.0
    fixed = run_sweep(smoke_run, rates, maps=12, seed=5, progress=False, force=True, map_batch=2)
    capsys.readouterr()
    adaptive = run_sweep(smoke_run, rates, maps=12, seed=5, progress=False, force=True, map_batch=2,
                         ci_width=width)
    assert adaptive["ci_width_target"] == width and fixed["ci_width_target"] is None
    assert all("ci_width_reached" not in r for r in fixed["results"])
    for f, a in zip(fixed["results"], adaptive["results"], strict=True):
        k = a["maps"]
        assert k == (maps_needed(np.asarray(f["accuracies"]), width) or 12)
        assert a["accuracies"] == f["accuracies"][:k]
        lo, hi = t_interval(np.asarray(a["accuracies"]))
        assert a["ci95"] == list(accuracy_interval(a["accuracies"], center=a["mean"]))
        assert a["mean"] == pytest.approx(np.mean(a["accuracies"]))
        assert a["ci95"][0] <= a["mean"] <= a["ci95"][1]  # the interval holds the stated mean
        assert k == 12 or (hi - lo) * 100 < width
        assert a["ci_width_reached"] == ((hi - lo) * 100 < width)
    assert adaptive["results"][0]["maps"] == 3  # no faults: the interval is empty after the least 3
    wide = [f"{r['rate']:g}" for r in adaptive["results"] if not r["ci_width_reached"]]
    assert wide  # the 5 % rate's 12 maps stay wider than 7 points on the smoke network
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and f"rate(s) {', '.join(wide)} the 95 % interval is still wider" in note[0]


def test_plot_margins_and_cli(smoke_run, tmp_path, figures, monkeypatch):
    monkeypatch.chdir(smoke_run)  # a sweep of "." is named after the folder, not ""
    rec = run_sweep(Path("."), [0.0, 0.02], maps=3, progress=False, force=True)
    assert rec["run"] == smoke_run.name and list(curves(figures[-1])) == [smoke_run.name]
    figures.clear()
    # labels as given: one starting with "_" (matplotlib's "no legend entry") and one with "$"
    # (its math syntax, a parse error here) are shown as they are
    labels = ["_base", r"cost $\foo$"]
    png = plot_runs([smoke_run, smoke_run], tmp_path / "cmp.png", labels=labels)
    # one curve per run, under the given labels, in the legend too
    assert len(figures) == 1 and curves(figures[0]) == {lab: _sweep_curve(rec) for lab in labels}
    assert [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()] == labels
    png_shape(png, figures[0])
    # the curves as drawn, in a JSON record beside the PNG, naming their sweep record relative to it
    record = json.loads((tmp_path / "cmp.json").read_text())
    assert record["png"] == "cmp.png" and [c["label"] for c in record["curves"]] == labels
    for c in record["curves"]:
        assert (tmp_path / c["sweep_record"]).resolve() == (smoke_run / "sweep" / "sw_ber.json").resolve()
        assert ([p["rate"] for p in c["points"]], [p["mean"] for p in c["points"]]) == _sweep_curve(rec)
        assert [p["maps"] for p in c["points"]] == [3, 3] and c["run"] == smoke_run.name
    rec = margin_report(smoke_run, force=True)
    assert rec["mean_logit_margin"] > 0 and len(rec["hidden_layers"]) >= 1
    saved = json.loads((smoke_run / "margins" / "margins.json").read_text())
    assert saved["mean_logit_margin"] == rec["mean_logit_margin"]
    with pytest.raises(UserInputError, match="exists"):
        margin_report(smoke_run)

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["sweep", str(smoke_run), "--bers", "0,1e-2", "--maps", "2",
                              "--force", "--quiet"])
    assert args.bers == [0.0, 0.01] and args.func(args) == 0
    args = parser.parse_args(["plot", str(smoke_run), "-o", str(tmp_path / "p.png")])
    figures.clear()
    assert args.func(args) == 0
    assert len(figures) == 1 and list(curves(figures[0])) == [smoke_run.name]
    png_shape(tmp_path / "p.png", figures[0])
    with pytest.raises(UserInputError, match="exists"):
        args.func(args)
    (tmp_path / "p.png").unlink()  # its JSON record is not overwritten either
    with pytest.raises(UserInputError, match=r"p\.json exists"):
        args.func(args)
    args = parser.parse_args(["margins", str(smoke_run), "--force"])
    assert args.func(args) == 0
    args = parser.parse_args(["sweep", str(smoke_run), "--fault-model", "melt", "--force"])
    with pytest.raises(UserInputError, match="unknown fault model"):
        args.func(args)
    # kflips takes flip counts, not rates in [0, 1]: the CLI must let them through
    args = parser.parse_args(["sweep", str(smoke_run), "--fault-model", "kflips", "--bers", "0,3", "--maps", "2",
                              "--force", "--quiet"])
    assert args.bers == [0.0, 3.0] and args.func(args) == 0
    saved = json.loads((smoke_run / "sweep" / "sw_ber.json").read_text())
    assert saved["fault_model"]["name"] == "kflips" and [r["rate"] for r in saved["results"]] == [0.0, 3.0]
    assert all(r["faults_per_map_mean"] == r["rate"] for r in saved["results"])
    args = parser.parse_args(["margins", str(tmp_path / "nowhere")])
    with pytest.raises(UserInputError, match="not found"):
        args.func(args)


def test_mean_accuracy_of_equal_maps_is_exactly_their_accuracy():
    """Equal maps average to their own accuracy, bit for bit (a float mean did not: 3 x 332/359)."""
    from mcel_train.sweep import mean_accuracy

    for k, n in ((332, 359), (283, 306), (357, 386), (1, 3)):
        assert mean_accuracy(np.full(3, k / n), n) == k / n
    assert mean_accuracy(np.array([0.5, 0.75]), 4) == 0.625


def test_t_interval():
    assert t_interval([0.5]) is None
    lo, hi = t_interval([0.1, 0.2, 0.3])
    assert lo < 0.2 < hi and abs((hi - 0.2) - 4.302653 * 0.1 / 3**0.5) < 1e-5
    # an accuracy's interval stays within [0, 1]; the width rule reads the uncut one
    assert t_interval([1.0, 1.0, 0.9])[1] > 1.05
    assert accuracy_interval([1.0, 1.0, 0.9]) == (t_interval([1.0, 1.0, 0.9])[0], 1.0)
    assert accuracy_interval([0.0, 0.0, 0.1])[0] == 0.0
    assert accuracy_interval([0.5]) is None


def test_more_images_than_the_test_set_holds_says_so(smoke_run, capsys):
    rec = run_sweep(smoke_run, [0.0], maps=1, progress=False, force=True, test_images=100_000)
    assert "note: the test set has" in capsys.readouterr().err
    assert rec["n_test"] < 100_000


def test_bad_rates_fail_before_work(smoke_run):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_sweep(smoke_run, [0.01, 2.0], maps=2, progress=False, force=True)


def test_a_killed_sweep_resumes_at_the_next_rate(smoke_run, monkeypatch, capsys):
    """The rates a sweep finished survive its interruption (the run folder's checkpoint); the
    resumed record equals an uninterrupted one, and only the missing rates are evaluated."""
    from mcel_train import evaluate, sweep

    rates = [0.0, 0.01, 0.05]
    whole = run_sweep(smoke_run, rates, maps=4, seed=5, progress=False, force=True)
    real, calls = evaluate.MapEvaluator.evaluate, []

    def killed_at_the_last_rate(self, fmaps):
        calls.append(fmaps[0].meta["rate"])
        if fmaps[0].meta["rate"] == 0.05 and len(calls) < 10:
            raise KeyboardInterrupt  # the kill, after rates 0 and 0.01 finished
        return real(self, fmaps)

    monkeypatch.setattr(evaluate.MapEvaluator, "evaluate", killed_at_the_last_rate)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(smoke_run, rates, maps=4, seed=5, progress=False, force=True)
    assert (smoke_run / sweep.CHECKPOINT).is_file()
    calls.clear()
    calls.extend([None] * 10)  # the next call at 0.05 goes through
    capsys.readouterr()
    log = io.StringIO()  # a campaign's progress.log: plain lines
    resumed = run_sweep(smoke_run, rates, maps=4, seed=5, progress=True, force=True, progress_file=log)
    assert calls[10:] == [0.05]  # rates 0 and 0.01 came from the checkpoint
    err = log.getvalue()  # and it says so
    assert "note: resuming the interrupted sweep" in err and "2 of 3 rates were finished" in err
    # the finished rates start the bar: counted as an update they gave "65365776 map/s"
    speeds = [float(v) for v in re.findall(r"([0-9.]+)map/s", err)]
    assert "8/12" in err and all(v < 1e5 for v in speeds), err
    assert resumed["results"] == whole["results"]
    assert not (smoke_run / sweep.CHECKPOINT).exists()
    # other parameters (here the seed) make the checkpoint stale: nothing is reused
    monkeypatch.setattr(evaluate.MapEvaluator, "evaluate", real)
    sweep.SweepCheckpoint(smoke_run / sweep.CHECKPOINT, {"seed": 5}).save(whole["results"][:2])
    other = run_sweep(smoke_run, rates, maps=4, seed=6, progress=False, force=True)
    assert other["results"][1]["accuracies"] != whole["results"][1]["accuracies"]


def test_the_vs_filing_bench_runs_the_evaluator_as_filed_from_a_worktree(smoke_run, tmp_path, monkeypatch, capsys):
    """``bench/vs_filing.py`` (the issue's own baseline): the evaluator of the filing commit
    runs from a temporary worktree in its own process on the same run and maps; every path of
    today's evaluator must predict as it did, and the worktree is gone afterwards. A commit
    the history lacks is one line and exit 2, before any worktree is made."""
    module = load_bench_script("vs_filing", monkeypatch)
    root = module.repo_root()
    worktrees = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    has_history = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{module.FILING_COMMIT}^{{commit}}"],
                                 capture_output=True).returncode == 0
    missing = "0" * 40
    if has_history:  # a shallow clone lacks the commit: then only the refusal below is checked
        out = tmp_path / "vs_filing.json"
        assert module.main(["--run", str(smoke_run), "--rates", "1e-3,3e-2", "--maps", "3", "--repeat", "1",
                            "--out", str(out)]) == 0
        record = json.loads(out.read_text())
        assert record["commit"] == module.FILING_COMMIT
        assert [r["rate"] for r in record["rows"]] == [1e-3, 3e-2]
        for row in record["rows"]:
            assert row["identical_predictions"]
            assert set(row["seconds"]) == {"filing", *module.PATHS} and min(row["seconds"].values()) > 0
        assert subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True,
                              text=True).stdout == worktrees
    else:
        missing = module.FILING_COMMIT
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        module.main(["--run", str(smoke_run), "--commit", missing, "--out", str(tmp_path / "x.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in this clone's history" in err[0] and "--commit" in err[0]
    assert not (tmp_path / "x.json").exists()


def test_the_auto_choice_bench_runs_every_call_on_all_three_paths(smoke_run, tmp_path, monkeypatch):
    """``bench/auto_choice.py`` (how close ``auto`` comes to the faster path, call by call):
    on a small run it evaluates each rate's calls on the dense, difference and auto paths,
    asserts equal accuracies, and records per rate each path's seconds and which path ``auto``
    took on each call."""
    module = load_bench_script("auto_choice", monkeypatch)
    out = tmp_path / "auto_choice.json"
    assert module.main(["--run", str(smoke_run), "--rates", "1e-3,3e-2", "--maps", "10", "--map-batch", "5",
                        "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["rate"] for r in record["rows"]] == [1e-3, 3e-2]
    for row in record["rows"]:
        assert row["calls"] == 2 and row["identical_accuracies"]
        assert all(len(row["seconds_per_call"][p]) == 2 and row["seconds"][p] > 0 for p in module.PATHS)
        # every call ran one of the two paths (the first at a rate may also have probed)
        assert all({"dense", "difference"} & set(taken.split("+")) for taken in row["auto_paths"])


@pytest.mark.parametrize("script, argv, words", [
    ("mixed_rates", ["--run", "{tmp}/nowhere"], "argument --run: no run folder"),
    ("sw_faults", ["--rates", "0,2"], "argument --rates: want a bit error rate in [0, 1], got '2'"),
    ("auto_choice", ["--run", "{run}", "--maps", "0"], "argument --maps: want a whole number >= 1, got 0"),
    ("vs_filing", ["--run", "{run}", "--test-images", "-5"], "argument --test-images: want a whole number >= 0"),
    ("sweep_ci", ["--run", "{run}", "--ci-width", "-1"], "argument --ci-width: want a number > 0"),
    ("threshold_faults", ["--run", "{run}", "--out", "{tmp}"], "argument --out: want a .json file"),
    ("malloc_tuning", ["--run", "{run}", "--out", "{tmp}/a_file/x.json"], "a_file is a file, not a folder"),
    ("mixed_rates", ["--run", "{tmp}", "--maps", "2"], "not found: run the training stage"),  # no train/ in it
    # a record that exists is kept (the README cites the committed ones) unless --force
    ("auto_choice", ["--run", "{run}", "--out", "{tmp}/a_file.json"], "a_file.json exists; pass --force"),
    ("train_step", ["--steps", "2", "--out", "/proc/no/x.json"], "cannot write under /proc"),
    # a time per map divided by maps that never ran
    ("sw_faults", ["--run", "{run}", "--maps", "1", "--brevitas-maps", "5"], "--brevitas-maps: 5 is more"),
    ("threshold_faults", ["--run", "{run}", "--maps", "1", "--dense-maps", "8"], "--dense-maps: 8 is more"),
    ("hw_sim", ["--run", "{run}", "--images", "5", "--naive-images", "20"], "--naive-images: 20 is more"),
    ("train_step", ["--model", "nosuch", "--steps", "2"], "argument --model:"),
    ("hw_sim", ["--run", "{run}", "--images", "99999"], "--images 99999: the test set has"),
    ("sweep_ci", ["--run", "{tmp}", "--maps", "2"], "not found: run the training stage"),
    # a rate twice measured the same maps twice, and auto reused its first choice; auto_choice
    # measures a sweep, rates ascending
    ("sw_faults", ["--rates", "1e-3,1e-3"], "the rate 0.001 is listed twice"),
    ("auto_choice", ["--rates", "1e-3,1e-4"], "want the rates in ascending order"),
    # a stage folder given as the run: named with its run, not "run the training stage for .../train"
    ("mixed_rates", ["--run", "{run}/train", "--maps", "2"], "is a stage folder of the run"),
])
def test_bench_scripts_refuse_bad_flags_in_one_line_before_any_work(script, argv, words, smoke_run, tmp_path,
                                                                    monkeypatch, capsys):
    """A benchmark's wrong flag stops it at once in one line naming the flag, exit 2 (it used to
    end in a traceback, after the work for --out, or to write a record measured on nothing)."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_file.json").write_text("{}")
    module = load_bench_script(script, monkeypatch)
    args = [a.replace("{run}", str(smoke_run)).replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = module.run_main(lambda: module.main(args))
    except SystemExit as exc:  # argparse
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_file.json"]  # no record written
    assert (tmp_path / "a_file.json").read_text() == "{}"


def test_a_bench_record_written_meanwhile_is_not_replaced_without_force(tmp_path, monkeypatch):
    """Two runs of a bench with one --out both passed the exists-check at start and both said
    "wrote"; the first record was lost. Without --force the record is put in place only if no
    file is there yet; with --force it is replaced."""
    from mcel_train.errors import StageExistsError

    record = load_bench_script("record", monkeypatch)
    out = tmp_path / "r.json"
    record.write_record(out, {"run": 1}, force=False)
    with pytest.raises(StageExistsError, match="written by another command meanwhile; pass --force"):
        record.write_record(out, {"run": 2}, force=False)
    assert json.loads(out.read_text())["run"] == 1 and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    record.write_record(out, {"run": 3}, force=True)
    assert json.loads(out.read_text())["run"] == 3


def test_a_plot_of_sweep_files_labels_each_curve_by_its_run(tmp_path):
    """Every sweep record is called sw_ber.json, so labels taken from the file named every curve
    'sw_ber.json'; a record inside a run's sweep/ folder is labelled by the run."""
    from mcel_train.plotting import _label

    for run in ("a", "b"):
        (tmp_path / run / "sweep").mkdir(parents=True)
        (tmp_path / run / "sweep" / "sw_ber.json").write_text("{}")
    (tmp_path / "loose.json").write_text("{}")
    assert [_label(tmp_path / r / "sweep" / "sw_ber.json") for r in ("a", "b")] == ["a", "b"]
    assert _label(tmp_path / "a") == "a" and _label(tmp_path / "loose.json") == "loose"
