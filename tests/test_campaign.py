"""Campaigns: validation before work, resume after SIGKILL, local pool == Ray, hung tasks, caching.

The campaigns here train tiny MLPs on the bundled digits and sweep them in software, through the
real stages (Brevitas training, the integer fault evaluator) in real worker processes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.campaign.report import campaign_table, write_report
from flows.campaign.runner import run_campaign
from flows.campaign.spec import CampaignError, parse_campaign
from flows.cli import main as cli_main
from mcel_train.errors import UserInputError
from mcel_train.stage import token_alive, token_pid

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "train": {"config": str(REPO / "flows/configs/smoke_digits.yaml"), "set": {"epochs": 2}},
    "grid": {
        "models": [{"name": "tfc_w2a2", "hidden": [16, 16]}, {"name": "tfc_w1a1", "hidden": [16, 16]}],
        "losses": ["ce", {"name": "mcel", "margin": 8}, {"name": "mcel", "margin": 32}],
    },
    "software": {"ber": [0, 0.01, 0.05], "maps": 4, "seed": 0},
    "retries": 1,
}


def _write(tmp_path: Path, campaign: dict, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(campaign))
    return path


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          cwd=REPO, **kwargs)


def _done_count(db: Path) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM tasks WHERE status = 'done'").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny campaign run once, uninterrupted, on the local pool."""
    tmp = tmp_path_factory.mktemp("campaign_ref")
    path = _write(tmp, TINY)
    folder, summary = run_campaign(path, tmp / "ref", workers=2, show_progress=False)
    assert summary["done"] == summary["total"] == 12 and summary["failed"] == 0
    return path, folder


@pytest.mark.parametrize("change, message", [
    ({"grid": {"models": ["tfc_w9a9"], "losses": ["ce"]}}, "tfc_w9a9"),
    ({"grid": {"models": ["tfc_w2a2"], "losses": [{"name": "mcel", "margin": -1}]}}, "loss.margin"),
    ({"grid": {"models": ["tfc_w2a2"], "losses": ["ce"], "colour": 1}}, "colour"),
    ({"software": {"ber": [0, 1.5], "maps": 4}}, "software.ber"),
    ({"software": {"ber": [0.01], "maps": 1}}, "software.maps"),
    ({"software": {"ber": [0.01], "maps": 4, "fault_models": ["melt"]}}, "melt"),
    ({"hardware": {"ber": [0.01], "maps": 2, "images": 10, "inject": "jtag"}}, "hardware.inject"),
    ({"retries": -1}, "retries"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"train": {"config": "/nonexistent.yaml"}}, "does not exist"),
    ({"grid": {"models": ["tfc_w2a2"], "losses": [{"name": "ce", "set": ["epochs", 2]}]}}, "'set' must map"),
    ({"grid": {"models": ["tfc_w2a2"], "losses": [{"name": "ce", "set": {"model.weight_scaling": "wild"}}]}},
     "weight_scaling"),
    ({"grid": {"models": [{"name": "tfc_w2a2", "test_images": 0}], "losses": ["ce"]}}, "test_images"),
    ({"hardware": {"only": {"losses": ["MCEL m=9"]}, "ber": [0.01], "maps": 2, "images": 10}},
     "hardware.only.losses: 'MCEL m=9' is not in the grid"),
    ({"grid": {**TINY["grid"], "order": ["seed", "loss", "loss"]}}, "grid.order"),
    ({"grid": {**TINY["grid"], "order": ["seed", "model", "epoch"]}}, "grid.order"),
    ({"evidence": {"rate": 0}}, "evidence.rate"),
    ({"evidence": {"maps": 0}}, "evidence.maps"),
    ({"evidence": {"images": 10, "colour": 1}}, "evidence.colour"),
])
def test_malformed_campaign_is_one_clear_error_before_any_work(tmp_path, change, message):
    path = _write(tmp_path, {**TINY, **change})
    out = tmp_path / "out"
    result = _cli("campaign", str(path), "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: campaign") and message in lines[0], result.stderr
    assert not out.exists()


def test_long_tasks_log_sparse_progress(reference):
    """Trainings and sweeps write their progress into the task folder (``tail -f`` it), as
    plain lines: no carriage-return redraws in a file."""
    _, folder = reference
    for stage in ("train", "sweep"):
        logs = sorted(folder.glob(f"tasks/{stage}-*/progress.log"))
        assert len(logs) == 6
        text = logs[0].read_text()
        assert "\r" not in text and text.startswith(stage) and "100%" in text.splitlines()[-1]
    assert "rate 0.05" in logs[0].read_text()


def test_hardware_only_builds_the_selected_networks():
    from flows.campaign.tasks import expand

    hw = {"only": {"losses": ["CE", "MCEL m=32"], "models": ["tfc_w2a2"]}, "ber": [0.01], "maps": 2, "images": 10}
    spec = parse_campaign({**TINY, "grid": {**TINY["grid"], "seeds": [0, 1]}, "hardware": hw})
    built = sorted(t.label for t in expand(spec) if t.stage == "build")
    assert built == ["build tfc_w2a2 CE seed 0", "build tfc_w2a2 CE seed 1",
                     "build tfc_w2a2 MCEL m=32 seed 0", "build tfc_w2a2 MCEL m=32 seed 1"]
    everything = parse_campaign({**TINY, "hardware": {k: v for k, v in hw.items() if k != "only"}})
    assert sum(t.stage == "hwsim" for t in expand(everything)) == len(everything.points) == 6


def test_grid_order_sets_which_trainings_start_first_and_keeps_their_keys():
    """A campaign that spans sessions may put the seeds outermost: the same trainings (same
    content keys, so finished stages are reused on --resume), started in a different order."""
    grid = {**TINY["grid"], "seeds": [0, 1]}
    default = parse_campaign({**TINY, "grid": grid}).points
    seeds_first = parse_campaign({**TINY, "grid": {**grid, "order": ["seed", "model", "loss"]}}).points
    assert [(p.loss_label, p.seed) for p in default[:3]] == [("CE", 0), ("CE", 1), ("CE", 0)]
    assert [(p.model_label, p.loss_label, p.seed) for p in seeds_first[:4]] == [
        ("tfc_w2a2", "CE", 0), ("tfc_w2a2", "MCEL m=8", 0), ("tfc_w2a2", "MCEL m=32", 0), ("tfc_w1a1", "CE", 0)]
    assert {p.seed for p in seeds_first[:6]} == {0}
    assert sorted(p.key for p in default) == sorted(p.key for p in seeds_first)


def test_ready_tasks_finish_a_network_before_the_next_training_starts(tmp_path):
    """Once a network is trained, its build and sweep go before the next training, and its RTL
    simulation before both: what a campaign cut short has started is what it finishes."""
    from flows.campaign.runner import Scheduler
    from flows.campaign.store import ResultStore
    from flows.campaign.tasks import expand

    spec = parse_campaign({**TINY, "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]}],
                                            "losses": ["ce", {"name": "mcel", "margin": 8}]},
                           "hardware": {"ber": [0.01], "maps": 2, "images": 10}})
    tasks = expand(spec)
    first, second = spec.points
    store = ResultStore(tmp_path / "results.sqlite")
    store.record_done(first.key, "train", "t", 1, 1.0, {})
    stage = {t.key: t.stage for t in tasks}
    ready = Scheduler(spec, tasks, store, executor=None, campaign_dir=tmp_path, show_progress=False)._ready()
    # the restored training has no folder, so it is redone first; the rest waits for it
    assert [stage[k] for k in ready] == ["train", "train"]
    (tmp_path / "tasks" / f"train-{first.key}" / "train").mkdir(parents=True)
    scheduler = Scheduler(spec, tasks, store, executor=None, campaign_dir=tmp_path, show_progress=False)
    assert [stage[k] for k in scheduler._ready()] == ["build", "sweep", "train"]
    build = next(t.key for t in tasks if t.stage == "build" and t.params["train"] == first.key)
    scheduler.done.add(build)
    scheduler.pending.remove(build)
    assert [stage[k] for k in scheduler._ready()] == ["hwsim", "sweep", "train"]
    assert scheduler._ready()[-1] == second.key
    store.close()


def test_software_only_leaves_builds_and_simulations_for_a_later_resume(tmp_path):
    campaign = {**TINY, "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]}], "losses": ["ce"]},
                "hardware": {"ber": [0.01], "maps": 2, "images": 10}}
    path = _write(tmp_path, campaign)
    folder, summary = run_campaign(path, tmp_path / "c", workers=1, show_progress=False, software_only=True)
    assert summary["done"] == summary["total"] == 2 and summary["failed"] == 0
    stages = [t["stage"] for t in json.loads((folder / "tasks.json").read_text())]
    assert sorted(stages) == ["build", "hwsim", "sweep", "train"]  # the whole plan is recorded
    with sqlite3.connect(folder / "results.sqlite") as conn:
        assert sorted(r[0] for r in conn.execute("SELECT stage FROM tasks WHERE status = 'done'")) == ["sweep", "train"]
    assert not list(folder.glob("tasks/build-*")) and not list(folder.glob("tasks/hwsim-*"))
    # the flag on the command line: resuming with it has nothing left to do
    result = _cli("campaign", str(path), "--out", str(folder), "--resume", "--software-only", "--quiet", "--no-report")
    assert result.returncode == 0 and "2/2 tasks done" in result.stdout, result.stderr
    assert "2 build and RTL simulation task(s) left for a later --resume" in result.stdout


def test_resume_of_a_folder_without_a_campaign_says_it_starts_anew(tmp_path, monkeypatch, capsys):
    """A mistyped --out with --resume reran every task without a word: now a note says so."""
    from flows.campaign import runner
    from mcel_train.errors import UserInputError

    def stop(*args, **kwargs):
        raise UserInputError("stopped before any work")

    monkeypatch.setattr(runner, "make_executor", stop)
    with pytest.raises(UserInputError, match="stopped"):
        run_campaign(_write(tmp_path, TINY), tmp_path / "typo", resume=True, show_progress=False)
    assert "note: nothing to resume in" in capsys.readouterr().err


def test_rates_are_checked_against_each_fault_model():
    """kflips' rates are flip counts (they used to be refused above 1, like bit error rates);
    a rate list shared with a bit-error model must still be in [0, 1]."""
    sw = {**TINY["software"], "fault_models": ["kflips"], "ber": [0, 3, 40]}
    assert parse_campaign({**TINY, "software": sw}).software["ber"] == [0.0, 3.0, 40.0]
    with pytest.raises(CampaignError, match=r"software.ber: .*for flip: bit error rates must be in \[0, 1\], got 3"):
        parse_campaign({**TINY, "software": {**sw, "fault_models": ["kflips", "flip"]}})
    with pytest.raises(CampaignError, match="whole flip counts"):
        parse_campaign({**TINY, "software": {**sw, "ber": [0, 2.5]}})
    hw = {"ber": [0, 4], "maps": 1, "images": 10, "fault_model": "kflips"}
    assert parse_campaign({**TINY, "hardware": hw}).hardware["ber"] == [0.0, 4.0]
    with pytest.raises(CampaignError, match=r"hardware: .*bit error rates must be in \[0, 1\]"):
        parse_campaign({**TINY, "hardware": {**hw, "fault_model": "flip"}})


@pytest.mark.parametrize("change, words", [
    ({"grid": {"models": ["tfc_w2a2", "tfc_w2a2"], "losses": ["ce"]}},
     "grid.models: the model 'tfc_w2a2' is listed twice"),
    # one loss written two ways: it said "two different loss entries share a label"
    ({"grid": {"models": ["tfc_w2a2"], "losses": ["ce", {"name": "ce"}]}},
     "grid.losses: the loss 'CE' is listed twice"),
    # a repeated seed: it said "a repeated model or loss"
    ({"grid": {"models": ["tfc_w2a2"], "losses": ["ce"], "seeds": [0, 0]}}, "grid.seeds: the seed 0 is listed twice"),
    # a repeated fault model was accepted and swept twice
    ({"software": {**TINY["software"], "fault_models": ["flip", "flip"]}},
     "software.fault_models: the fault model flip is listed twice"),
])
def test_duplicate_grid_entries_are_rejected_naming_what_repeats(change, words):
    with pytest.raises(CampaignError, match=re.escape(words)):
        parse_campaign({**TINY, **change})
    # a campaign saved before these checks is still read from its folder (report), its repeats
    # dropped as its tasks were; repeated models and losses stay refused, as they always were
    if words.startswith(("grid.models", "grid.losses")):
        with pytest.raises(CampaignError, match="same training config|share a label"):
            parse_campaign({**TINY, **change}, strict=False)
    else:
        spec = parse_campaign({**TINY, **change}, strict=False)
        assert spec.software["fault_models"] == ["flip"] and len({p.key for p in spec.points}) == len(spec.points)


def test_resume_checks_the_campaign_file_as_a_fresh_run_does(tmp_path):
    """--resume read the user's file leniently, so seeds [0, 1, 0] refused by a fresh run ran with
    the repeat dropped; the file is checked in full, before any folder is made."""
    path = _write(tmp_path, {**TINY, "grid": {**TINY["grid"], "seeds": [0, 1, 0]}})
    result = _cli("campaign", str(path), "--out", str(tmp_path / "c"), "--resume", "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "grid.seeds: the seed 0 is listed twice" in lines[0]
    assert not (tmp_path / "c").exists()


def test_a_campaign_sweep_that_hits_its_maps_says_so_in_its_log_and_row(tmp_path):
    """software.ci_width: a rate that reached software.maps with the interval still wider is
    recorded in the campaign's row and noted in the task's log, naming the campaign's keys (the
    note named mcel sweep's --ci-width and --maps, on the campaign's terminal)."""
    spec = {**CARRIED, "name": "ci", "software": {"ber": [0, 0.05], "maps": 4, "seed": 0, "ci_width": 0.5}}
    folder, summary = run_campaign(_write(tmp_path, spec), tmp_path / "c", workers=1, show_progress=False)
    assert summary["done"] == 2
    with sqlite3.connect(folder / "results.sqlite") as conn:
        (result,) = [json.loads(r) for (r,) in conn.execute("SELECT result FROM tasks WHERE stage = 'sweep'")]
    reached = {r["rate"]: r["ci_width_reached"] for r in result["results"]}
    assert reached == {0.0: True, 0.05: False}, reached
    (log,) = (folder / "tasks").glob("sweep-*/progress.log")
    note = [line for line in log.read_text().splitlines() if line.startswith("note: at rate(s) 0.05")]
    assert len(note) == 1 and "raise software.maps" in note[0] and "--maps" not in note[0], note


def test_a_resume_with_a_changed_campaign_file_says_what_changed(tmp_path, capsys):
    """Another rate list on --resume reran the sweeps without a word, beside the earlier rows."""
    path = _write(tmp_path, CARRIED)
    run_campaign(path, tmp_path / "c", workers=1, show_progress=False)
    capsys.readouterr()
    run_campaign(path, tmp_path / "c", workers=1, resume=True, show_progress=False)  # the same file: no note
    assert "note: the campaign differs" not in capsys.readouterr().err
    changed = _write(tmp_path, {**CARRIED, "software": {**CARRIED["software"], "ber": [0, 0.02]}}, "changed.yaml")
    _, summary = run_campaign(changed, tmp_path / "c", workers=1, resume=True, show_progress=False)
    (note,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: the campaign differs")]
    assert "(changed: software)" in note and "2 task(s) of the earlier file are not in this one" in note, note
    assert summary["finished_here"] == 2  # the two sweeps at the new rates; the training was reused


def test_existing_campaign_needs_resume(reference, tmp_path):
    path, folder = reference
    result = _cli("campaign", str(path), "--out", str(folder))
    assert result.returncode == 2 and "--resume" in result.stderr


@pytest.mark.slow  # repeated campaign runs / a 60 s hang: not for the fast subset
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_table(reference, tmp_path):
    path, ref_folder = reference
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    rng = random.Random(1234)
    kills = 0
    while kills < 3:
        done_before = _done_count(db)
        assert done_before < 12, "campaign finished before all kills happened"
        # Kill when a random number of further tasks has finished, plus a random delay: a random
        # point in the campaign, and never after it ended.
        target = rng.randint(done_before, min(done_before + 3, 11))
        args = [sys.executable, "-m", "flows.cli", "campaign", str(path), "--out", str(out),
                "--workers", "2", "--quiet", "--no-report"] + (["--resume"] if db.exists() else [])
        proc = subprocess.Popen(args, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while _done_count(db) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            continue  # finished before the kill point: draw again
        os.killpg(proc.pid, signal.SIGKILL)  # the scheduler and every worker, mid-task
        proc.wait()
        kills += 1
    result = _cli("campaign", str(path), "--out", str(out), "--workers", "2", "--resume", "--quiet", "--no-report")
    assert result.returncode == 0, result.stderr + result.stdout
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, status FROM tasks").fetchall()
    assert len(rows) == 12 and {s for _, s in rows} == {"done"}
    assert campaign_table(out) == campaign_table(ref_folder)


@pytest.mark.slow  # repeated campaign runs / a 60 s hang: not for the fast subset
def test_ray_gives_the_local_pool_numbers(reference, tmp_path):
    pytest.importorskip("ray")
    path, ref_folder = reference
    folder, summary = run_campaign(path, tmp_path / "ray", executor="ray", workers=2, show_progress=False)
    assert summary["done"] == 12
    assert campaign_table(folder) == campaign_table(ref_folder)


@pytest.mark.slow  # repeated campaign runs / a 60 s hang: not for the fast subset
def test_extending_a_campaign_reuses_finished_stages(reference, tmp_path):
    """A new rate changes only the sweeps: the trained networks come from the store, not a retrain."""
    _, ref_folder = reference
    import shutil

    folder = tmp_path / "extended"
    shutil.copytree(ref_folder, folder, symlinks=True)
    bigger = {**TINY, "software": {**TINY["software"], "ber": [0, 0.01, 0.05, 0.1]}}
    _, summary = run_campaign(_write(tmp_path, bigger), folder, workers=2, resume=True, show_progress=False)
    assert summary["done"] == 12
    with sqlite3.connect(folder / "results.sqlite") as conn:
        trains = conn.execute("SELECT finished FROM tasks WHERE stage = 'train' ORDER BY key").fetchall()
    with sqlite3.connect(ref_folder / "results.sqlite") as conn:
        assert trains == conn.execute("SELECT finished FROM tasks WHERE stage = 'train' ORDER BY key").fetchall()
    rows = campaign_table(folder)
    assert {r["rate"] for r in rows} == {0, 0.01, 0.05, 0.1}
    old = {(r["model"], r["loss"], r["rate"]): r["mean"] for r in campaign_table(ref_folder)}
    assert all(old[(r["model"], r["loss"], r["rate"])] == r["mean"] for r in rows if r["rate"] != 0.1)


@pytest.mark.slow  # repeated campaign runs / a 60 s hang: not for the fast subset
def test_hung_task_is_killed_retried_and_the_rest_goes_on(tmp_path):
    # The big network trains far longer than the 30 s timeout, so it counts as hung.
    campaign = {**TINY, "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]},
                                            {"name": "tfc_w2a2", "hidden": [4096, 4096, 4096], "label": "big"}],
                                 "losses": ["ce"]},
                "train": {**TINY["train"], "set": {"epochs": 8}}, "timeout_s": 30, "retries": 1}
    folder, summary = run_campaign(_write(tmp_path, campaign), tmp_path / "c", workers=2, show_progress=False)
    assert (summary["done"], summary["failed"], summary["skipped"]) == (2, 1, 1)
    with sqlite3.connect(folder / "results.sqlite") as conn:
        failed = conn.execute("SELECT label, attempts, error FROM tasks WHERE status = 'failed'").fetchall()
        done = conn.execute("SELECT stage FROM tasks WHERE status = 'done'").fetchall()
    assert len(failed) == 1 and failed[0][0].startswith("train big") and failed[0][1] == 2
    assert failed[0][2].startswith("hang")
    assert sorted(s for (s,) in done) == ["sweep", "train"]  # the small network went on
    status = json.loads((folder / "status.json").read_text())
    assert status["failed"] == 1 and status["skipped"] == 1 and status["done"] == 2


def test_report_has_tables_curves_and_best_margins(reference, figures):
    from matplotlib.image import imread

    _, folder = reference
    md = write_report(folder)
    text = md.read_text()
    assert "| CE | 0 |" in text and "MCEL m=32" in text and "Best loss per target rate" in text
    assert (md.parent / "report.html").read_text().count("<table>") >= 3
    report = json.loads((md.parent / "report.json").read_text())
    # One plot per model. Each shows, per loss, the software curve of that model's rows in
    # report.json (one seed here: the seed's own means): accuracy in percent over the rate (rate 0
    # drawn at 1e-5 on the log axis). Means over several seeds: tests/test_recommend.py.
    assert len(figures) == 2
    for fig, model in zip(figures, ("tfc_w2a2", "tfc_w1a1"), strict=True):
        (ax,) = fig.axes
        assert model in ax.get_title()
        drawn = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}
        rows = sorted((r for r in report["rows"] if r["model"] == model), key=lambda r: r["rate"])
        assert {r["source"] for r in rows} == {"software"} and len(rows) == 9
        assert drawn == {f"{loss} (software, 1 seed)": ([max(r["rate"], 1e-5) for r in rows if r["loss"] == loss],
                                                [100 * r["mean"] for r in rows if r["loss"] == loss])
                         for loss in ("CE", "MCEL m=8", "MCEL m=32")}
        img = imread(md.parent / f"{model}.png")  # decodes, has the figure's shape, not blank
        (h, w), (fw, fh) = img.shape[:2], fig.get_size_inches()
        assert min(h, w) >= 300 and abs(h - w * fh / fw) <= 1 and img[..., :3].std() > 0.05
    assert {b["rate"] for b in report["best"]} == {0.01, 0.05}
    ce_clean = {r["model"]: r["clean_accuracy"] for r in report["rows"] if r["loss"] == "CE"}
    for b in report["best"]:
        assert b["clean_cost_vs_ce"] == pytest.approx(ce_clean[b["model"]] - b["clean_accuracy"])


def test_a_report_with_failed_tasks_says_what_is_missing(reference, tmp_path, capsys):
    """A failed CE sweep: the report looked complete (the table just lacked the row) and its
    best-loss table chose without the baseline. Now it lists the missing tasks, every best-loss
    cell names what it lacks, and a recommendation refuses to choose without CE."""
    from flows.campaign.report import planned_networks, recommend
    from flows.campaign.spec import load_campaign
    from flows.campaign.store import ResultStore
    from flows.campaign.tasks import expand

    _, ref = reference
    folder = tmp_path / "c"
    shutil.copytree(ref, folder, symlinks=True, ignore=shutil.ignore_patterns("report"))
    spec = load_campaign(folder / "campaign.yaml")
    sweep = next(t for t in expand(spec) if t.stage == "sweep" and t.label.startswith("sweep tfc_w2a2 CE seed 0"))
    store = ResultStore(folder / "results.sqlite")
    store.record_failed(sweep.key, "sweep", sweep.label, 2, "hang: no result after 3 s (timeout_s); killed")
    store.close()
    md = write_report(folder).read_text()
    assert "## Missing results" in md and f"- {sweep.label}: failed (hang: no result after 3 s" in md
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["missing"] == [{"label": sweep.label, "stage": "sweep", "status": "failed",
                                  "error": "hang: no result after 3 s (timeout_s); killed"}]
    w2 = [b for b in report["best"] if b["model"] == "tfc_w2a2"]
    assert w2 and all(b["missing"] == ["CE seed 0"] for b in w2) and all(b["gain_over_ce"] is None for b in w2)
    assert not any("missing" in b for b in report["best"] if b["model"] == "tfc_w1a1")
    assert "Incomplete: 2 of these cells" in md
    assert md.count(f"{len(spec.points)} trained networks;") == 1  # every training finished
    assert "Hardware rows:" not in md  # a campaign without hardware has none to explain
    rows = [r for r in campaign_table(folder) if r["source"] == "software"]
    (rec,) = [r for r in recommend(rows, 0.01, 1.0, planned=planned_networks(spec)) if r["model"] == "tfc_w2a2"]
    assert "choice" not in rec and rec["verdict"].startswith("CE, the baseline, has no result")
    # a failed sweep of another loss: mcel report --target-ber printed its choice among the rest
    # without a word ("CE is the only loss within the budget" when the others had failed)
    other = next(t for t in expand(spec) if t.stage == "sweep" and t.label.startswith("sweep tfc_w1a1 MCEL"))
    store = ResultStore(folder / "results.sqlite")
    store.record_failed(other.key, "sweep", other.label, 2, "killed")
    store.close()
    train = next(t for t in expand(spec) if t.stage == "train")  # a training that did not finish
    store = ResultStore(folder / "results.sqlite")
    store.record_failed(train.key, "train", train.label, 2, "killed")
    store.close()
    md = write_report(folder).read_text()  # it counted every planned network as trained
    assert f"{len(spec.points)} networks planned, {len(spec.points) - 1} trained;" in md
    result = _cli("report", str(folder), "--target-ber", "0.01")
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("tfc_w1a1")]
    assert result.returncode == 0 and "no result yet for MCEL" in line and "--resume" in line, line
    # a target far below the grid's first rate above 0 is not taken for rate 0
    result = _cli("report", str(folder), "--target-ber", "1e-300")
    assert result.returncode == 0 and "train with" not in result.stdout
    assert result.stdout.count("the grid has no rate 1e-300") == 2, result.stdout


@pytest.mark.slow
def test_hardware_stage_survives_sigkill(tmp_path):
    """A campaign with a FINN build and an RTL simulation, killed while its hardware stage runs:
    the resumed campaign's table (software and hardware rows) equals an uninterrupted run's."""
    campaign = {
        "name": "hw", "seed": 0,
        "train": {"config": str(REPO / "flows/configs/smoke_digits.yaml"), "set": {"epochs": 2}},
        "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]}], "losses": ["ce"]},
        "software": {"ber": [0, 0.05], "maps": 2, "seed": 0},
        "hardware": {"ber": [0, 0.02], "maps": 2, "images": 20, "inject": "backdoor", "target_cycles": 64},
        "retries": 1,
    }
    path = _write(tmp_path, campaign)
    ref, summary = run_campaign(path, tmp_path / "ref", workers=1, show_progress=False)
    assert summary["done"] == summary["total"] == 4 and summary["failed"] == 0
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    args = [sys.executable, "-m", "flows.cli", "campaign", str(path), "--out", str(out), "--workers", "1",
            "--quiet", "--no-report"]
    def running() -> list[str]:
        try:
            return json.loads((out / "status.json").read_text())["running_tasks"]
        except (OSError, ValueError, KeyError):
            return []

    for stage, delay in (("build", 1.0), ("hwsim", 1.0)):  # into the build, then into the simulation (a
        # build from relative paths hits ccache: it can finish within 3 s)
        proc = subprocess.Popen(args + (["--resume"] if db.exists() else []), cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not any(r.startswith(stage) for r in running()) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(delay)
        assert proc.poll() is None, "the campaign ended before the kill"
        assert any(r.startswith(stage) for r in running()), f"the kill missed the {stage} stage"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # the killed campaign's status still lists running tasks; its process says it is gone
        status = json.loads((out / "status.json").read_text())
        assert status["running_tasks"] and not status["ended"] and token_pid(status["process"]) == proc.pid
        assert not token_alive(status["process"])
    result = _cli("campaign", str(path), "--out", str(out), "--workers", "1", "--resume", "--quiet", "--no-report")
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads((out / "status.json").read_text())["ended"]
    table = campaign_table(out)
    assert table == campaign_table(ref)
    hw = [r for r in table if r["source"] == "hardware"]
    assert hw and all(r["identical_maps"] == r["maps"] for r in hw)
    assert all(0.0 <= r["ci95"][0] <= r["mean"] <= r["ci95"][1] <= 1.0 for r in hw)  # an accuracy's interval


def test_paper_reproduction_doc_reads_the_campaign(reference, tmp_path, figures, capsys):
    """The reproduction document's numbers are the campaign's: seed means are the sweeps' means
    (one seed: no interval across seeds), gains are their differences, the code histograms count
    every weight, and the recommendation says when the grid lacks the rate or the seeds."""
    from flows.paper_reproduction import build_doc

    _, folder = reference
    docs = tmp_path / "docs"
    md = build_doc(folder, docs, rate=0.01, loss="MCEL m=32", evidence_images=100, evidence_maps=2).read_text()
    rec = json.loads((docs / "paper_reproduction.json").read_text())
    sw = {(r["model"], r["loss"], r["rate"]): r for r in campaign_table(folder) if r["source"] == "software"}
    assert len(rec["seed_table"]) == len(sw) == 2 * 3 * 3
    for c in rec["seed_table"]:
        assert c["mean"] == sw[(c["model"], c["loss"], c["rate"])]["mean"] and c["ci95_seeds"] is None
    for g in rec["gains"]:
        mcel, ce = sw[(g["model"], "MCEL m=32", 0.01)], sw[(g["model"], "CE", 0.01)]
        assert g["points"] == pytest.approx(100 * (mcel["mean"] - ce["mean"]))
    assert {(e["model"], e["loss"]) for e in rec["evidence"]} == {(m, loss) for m, loss, _ in sw}
    for e in rec["evidence"]:
        assert e["images"] == 100
        assert all(sum(layer["histogram"].values()) == layer["weights"] for layer in e["layers"])
        # the fault evidence at the headline rate, on the same images, for every weight memory
        assert e["margin_shift"]["rate"] == 0.01 and e["margin_shift"]["images"] == 100
        assert [f["memory"] for f in e["faulted_alone"]] == [layer["layer"] for layer in e["layers"]]
        assert sum(f["share_of_bits"] for f in e["faulted_alone"]) == pytest.approx(1.0)
    binary = next(e for e in rec["evidence"] if e["model"] == "tfc_w1a1")
    assert set(binary["layers"][0]["histogram"]) == {"-1", "1"}  # bipolar codes (JSON keys)
    assert "the grid has no rate 0.001" in md and "one training seed only" in md
    # TINY trains CE, MCEL m=8 and m=32: the rest of the full grid is named as cut
    assert ("- Cut for CPU time (2 cores, no GPU), variants before seeds: MCEL m=128, the modified hinge loss, "
            "CE with bit-flip training at 1 %;") in md
    # the settings name the sweeps' image count and, per rate, the maps the interval target needed
    images = {r["images"] for r in sw.values()}
    assert len(images) == 1 and f"on {images.pop()} test images;" in md
    maps_001 = sorted(r["maps"] for r in sw.values() if r["rate"] == 0.01)
    assert f"p=0.01: {maps_001[0]}" + (f"-{maps_001[-1]}" if maps_001[-1] != maps_001[0] else "") in md
    assert "## Conclusion" in md and md.count("of the paper's +15") == 2
    assert md.count("- Faults at p=0.01") == 2 and "one layer's memory faulted at p=0.01" in md
    tiny_report = (docs / "campaigns" / "tiny" / "report.md").read_text()
    assert f"software: {TINY['software']['maps']} maps per rate," in tiny_report
    png_titles = [f.axes[0].get_title() for f in figures]
    assert "tfc_w2a2" in png_titles  # the accuracy curves, one panel per model
    assert str(tmp_path) not in md  # a committed document names no folder of this machine
    # a headline rate or loss the campaign lacks, or --docs under a file: refused before writing
    (tmp_path / "a_file").write_text("x")
    for kwargs, words in (({"rate": 0.5}, "--rate 0.5 is not a rate of the campaign"),
                          ({"loss": "Bogus"}, "--loss 'Bogus' is not a loss of the campaign"),
                          ({"docs": tmp_path / "a_file" / "docs"}, "is a file, not a folder")):
        with pytest.raises(UserInputError, match=re.escape(words)):
            build_doc(folder, **({"docs": tmp_path / "refused"} | kwargs), evidence_images=100, evidence_maps=2)
        assert not (tmp_path / "refused").exists()
    # the command line: an existing document is kept without --force, and a write that fails (a
    # folder where the JSON goes) is one line and leaves the document as it was, with no new
    # plot or report beside it (they were written straight into --docs, then a traceback)
    from flows.paper_reproduction import main as reproduce

    argv = [str(folder), "--docs", str(docs), "--evidence-images", "100", "--evidence-maps", "2"]
    before = {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    (docs / "paper_reproduction.json").unlink()
    (docs / "paper_reproduction.json").mkdir()
    for extra, words in (([], "paper_reproduction.md exists; pass --force"),
                         (["--force"], "paper_reproduction.json is not a file; remove it")):
        assert reproduce(argv + extra) == 2
        (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert line.startswith("error: ") and words in line, line
        assert {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()} == {
            p: b for p, b in before.items() if p.name != "paper_reproduction.json"}
        assert [p.name for p in docs.iterdir() if p.name.startswith(".")] == []
    (docs / "paper_reproduction.json").rmdir()
    assert reproduce(argv + ["--force"]) == 0 and (docs / "paper_reproduction.json").is_file()


def test_cut_losses_are_the_full_grid_minus_the_campaigns():
    from flows.paper_reproduction import FULL_LOSS_GRID, cut_losses

    losses = ["ce", {"name": "mcel", "margin": 32}, {"name": "hinge", "b": 128},
              {"name": "ce", "fault_training": {"rate": 0.01}, "label": "CE+flips"},
              {"name": "mcel", "margin": 16}]  # not in the full grid: ignored
    spec = parse_campaign({**TINY, "grid": {**TINY["grid"], "losses": losses}})
    assert cut_losses(spec) == ["MCEL m=8", "MCEL m=128"]
    everything = [{"name": n, **({"margin": m} if m else {}), **({"fault_training": {"rate": r}} if r else {}),
                   "label": label} for n, m, r, label in FULL_LOSS_GRID]
    assert cut_losses(parse_campaign({**TINY, "grid": {**TINY["grid"], "losses": everything}})) == []


@pytest.mark.slow  # a small campaign, two document builds
def test_evidence_is_a_campaign_task_and_the_document_reads_it_without_the_networks(tmp_path):
    """The evidence section measures each selected network as a task, with the same numbers
    as measuring it directly; a campaign restored in a fresh clone (no networks) gives the same
    document evidence, and a network whose evidence task has not run is named as missing."""
    from flows.paper_reproduction import build_doc
    from mcel_train.fault_effect import network_evidence

    losses = ["ce", {"name": "mcel", "margin": 32}]
    campaign = {**CARRIED, "name": "evidenced", "grid": {**CARRIED["grid"], "losses": losses},
                "software": TINY["software"], "evidence": {"images": 60, "maps": 2}}
    path = _write(tmp_path, campaign)
    folder, summary = run_campaign(path, tmp_path / "c", workers=2, show_progress=False)
    assert summary["done"] == 6  # 2 trainings, 2 sweeps, 2 evidence tasks
    docs = tmp_path / "docs"
    build_doc(folder, docs, evidence_images=999, evidence_maps=9)  # the section's settings apply
    first = json.loads((docs / "paper_reproduction.json").read_text())["evidence"]
    assert [e["loss"] for e in first] == ["CE", "MCEL m=32"]
    train = next(folder.glob("tasks/train-*"))
    direct = json.loads(json.dumps(network_evidence(train, 60, 0.01, 2)))
    mine = next(e for e in first if e["train_key"] == train.name.removeprefix("train-"))
    assert {k: mine[k] for k in direct} == direct
    assert mine["margin_shift"]["images"] == 60 and mine["margin_shift"]["maps"] == 2

    # The same networks trained longer: the training-length section pairs them by model, loss
    # and seed, each number from its own campaign; a campaign that is not longer is refused.
    longer = {**campaign, "name": "evidenced_long", "train": {**campaign["train"], "set": {"epochs": 3}}}
    long_folder, summary = run_campaign(_write(tmp_path, longer, "long.yaml"), tmp_path / "long", workers=2,
                                        show_progress=False)
    assert summary["done"] == 6
    md = build_doc(folder, docs, longer=long_folder).read_text()
    length = json.loads((docs / "paper_reproduction.json").read_text())["longer_training"]
    assert sorted((r["loss"], r["epochs"]) for r in length["rows"]) == [("CE", 2), ("CE", 3), ("MCEL m=32", 2),
                                                                        ("MCEL m=32", 3)]
    at = {}
    for r in length["rows"]:
        source = campaign_table(folder if r["epochs"] == 2 else long_folder)
        cell = next(c for c in source if c["source"] == "software" and (c["loss"], c["rate"]) == (r["loss"], 0.01))
        assert r["accuracy"]["0.01"] == cell["mean"] and r["clean_accuracy"] == cell["clean_accuracy"]
        assert r["median_integer_margin"] is not None  # the long campaign's evidence task too
        at[(r["loss"], r["epochs"])] = cell["mean"]
    assert sorted((g["epochs"], g["points"]) for g in length["gains"]) == [
        (e, pytest.approx(100 * (at[("MCEL m=32", e)] - at[("CE", e)]))) for e in (2, 3)]
    assert "## Training length: 2 against 3 epochs" in md
    assert "- Training length, tfc_w2a2 (seed 0): MCEL m=32 minus CE at p=0.01 is " in md
    assert (docs / "campaigns" / "evidenced_long" / "report.md").is_file()
    before = (docs / "paper_reproduction.md").read_bytes()
    with pytest.raises(UserInputError, match="--longer .* not more than"):
        build_doc(long_folder, docs, longer=folder)
    assert (docs / "paper_reproduction.md").read_bytes() == before  # refused before writing

    restored, summary = run_campaign(path, tmp_path / "restored", workers=1, show_progress=False,
                                     restore=docs / "campaigns" / "evidenced" / "results.json")
    assert summary["finished_here"] == 0 and not (restored / "tasks").exists()
    md = build_doc(restored, docs).read_text()
    assert json.loads((docs / "paper_reproduction.json").read_text())["evidence"] == first
    assert "### What faults at p=0.01 do to the margin" in md

    with sqlite3.connect(restored / "results.sqlite") as conn:
        conn.execute("DELETE FROM tasks WHERE stage = 'evidence' AND label LIKE '%MCEL%'")
    md = build_doc(restored, docs).read_text()
    assert "No evidence yet for tfc_w2a2 MCEL m=32 seed 0" in md
    assert [e["loss"] for e in json.loads((docs / "paper_reproduction.json").read_text())["evidence"]] == ["CE"]


def test_a_stale_sweep_folder_keeps_its_checkpoint(tmp_path):
    """A killed sweep task's folder is wiped before the rerun, except the finished rates."""
    from flows.campaign.tasks import Task, prepare_folder
    from mcel_train.sweep import CHECKPOINT

    for stage in ("sweep", "train"):
        task = Task(stage, "k" + stage, stage, {})
        folder = tmp_path / "tasks" / task.folder
        folder.mkdir(parents=True)
        (folder / "half-written").write_text("x")
        (folder / CHECKPOINT).write_text('{"params": {}, "results": []}')
        prepare_folder(tmp_path, task)
        assert not (folder / "half-written").exists()
        assert (folder / CHECKPOINT).is_file() == (stage == "sweep")


CARRIED = {**TINY, "name": "carried",
           "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]}], "losses": ["ce"]},
           "software": {**TINY["software"], "fault_models": ["flip", "stuck"]}}


def _rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, finished || ':' || result FROM tasks WHERE status = 'done'"))


@pytest.mark.slow  # four small campaign runs
def test_a_campaign_resumes_in_a_fresh_folder_from_its_results_file(tmp_path, capfd):
    """The committed results file carries a campaign to another clone. Restored results are
    used as they are; a restored training that a pending sweep needs is redone, and gives the
    same weights (a seeded single-thread training is deterministic). When the weights differ
    from what the file says, the finished sweep that read the old ones is redone as well."""
    from flows.campaign.archive import read_archive, write_archive
    from flows.campaign.spec import load_campaign

    path = _write(tmp_path, CARRIED)
    original, summary = run_campaign(path, tmp_path / "original", workers=2, show_progress=False)
    assert summary["done"] == 3
    write_report(original, tmp_path / "report")
    # two fault models: a row each in the network's table (the flip row used to be dropped)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| loss | seed | fault model |" in md and "| CE | 0 | flip |" in md and "| CE | 0 | stuck |" in md
    archive = tmp_path / "report" / "results.json"
    full = json.loads(archive.read_text())
    assert len(full["rows"]) == 3 and full["campaign"] == "carried"
    assert read_archive(archive, load_campaign(path)).rows[0].key == full["rows"][0]["key"]
    train = next(r for r in full["rows"] if r["stage"] == "train")
    sweeps = sorted((r for r in full["rows"] if r["stage"] == "sweep"), key=lambda r: r["label"])
    assert len(train["result"]["weights_sha256"]) == 64 and train["result"]["epochs"] == 2

    # Everything restored: nothing runs, no task folder is made, the table is the original's.
    folder, summary = run_campaign(path, tmp_path / "all", workers=2, show_progress=False, restore=archive)
    assert summary["restored"] == 3 and summary["done"] == 3 and summary["finished_here"] == 0
    assert not (folder / "tasks").exists() or not any((folder / "tasks").iterdir())
    assert campaign_table(folder) == campaign_table(original)

    def carried(name: str, drop: dict, digest: str | None = None) -> Path:
        rows = [r for r in full["rows"] if r["key"] != drop["key"]]
        if digest:
            rows = [r | {"result": r["result"] | {"weights_sha256": digest}} if r["key"] == train["key"] else r
                    for r in rows]
        out = tmp_path / f"{name}.json"
        out.write_text(json.dumps(full | {"rows": rows}))
        return out

    # One sweep missing: its training is redone (same weights), the other sweep is kept.
    kept, redo = sweeps
    folder, summary = run_campaign(path, tmp_path / "one", workers=2, show_progress=False,
                                   restore=carried("one", redo))
    assert summary["restored"] == 2 and summary["done"] == 3
    assert (folder / "tasks" / f"train-{train['key']}" / "train" / "model.pt").is_file()
    assert not (folder / "tasks" / f"sweep-{kept['key']}").exists()
    rows = _rows(folder / "results.sqlite")
    assert rows[kept["key"]] == _rows(original / "results.sqlite")[kept["key"]]  # untouched
    assert campaign_table(folder) == campaign_table(original)

    # The file claims other weights: the kept sweep read those, so it is redone too.
    capfd.readouterr()
    folder, summary = run_campaign(path, tmp_path / "other", workers=2, show_progress=True,
                                   restore=carried("other", redo, digest="0" * 64))
    assert summary["done"] == 3
    # the bar takes the redone sweep back before counting it again: it never passes its total
    shown = capfd.readouterr()
    bar = shown.out + shown.err  # tqdm writes its notes to stdout, the bar to stderr
    assert "redoing the 1 task(s)" in bar and re.findall(r"\b(\d+)/3\b", bar)[-1] == "3"
    assert not re.search(r"\b\d+task", bar), bar  # tqdm's form once the count passes the total
    assert (folder / "tasks" / f"sweep-{kept['key']}" / "sweep" / "sw_ber.json").is_file()
    assert campaign_table(folder) == campaign_table(original)

    # An unfinished sweep's checkpoint travels with the file and lands in its task folder.
    from mcel_train.sweep import CHECKPOINT

    half = tmp_path / "half"
    shutil.copytree(original, half, symlinks=True)
    with sqlite3.connect(half / "results.sqlite") as conn:
        conn.execute("DELETE FROM tasks WHERE key = ?", (redo["key"],))
    (half / "tasks" / f"sweep-{redo['key']}" / CHECKPOINT).write_text('{"params": {"p": 1}, "results": [7]}')
    write_archive(half, tmp_path / "half.json", "carried")
    assert json.loads((tmp_path / "half.json").read_text())["sweep_checkpoints"] == {
        redo["key"]: {"params": {"p": 1}, "results": [7]}}
    from flows.campaign.archive import restore
    from flows.campaign.store import ResultStore
    from flows.campaign.tasks import expand

    spec, fresh = load_campaign(path), tmp_path / "fresh"
    fresh.mkdir()
    store = ResultStore(fresh / "results.sqlite")
    try:
        assert restore(read_archive(tmp_path / "half.json", spec), store, expand(spec), fresh) == 2
    finally:
        store.close()
    assert json.loads((fresh / "tasks" / f"sweep-{redo['key']}" / CHECKPOINT).read_text())["results"] == [7]

    # A network trained again in place (mcel train into the task's folder, another seed): the
    # resumed campaign ran the new tasks on it while the report kept the old row's figures.
    retrained = tmp_path / "retrained"
    shutil.copytree(original, retrained, symlinks=True)
    task_dir = retrained / "tasks" / f"train-{train['key']}"
    shutil.move(task_dir / "train", tmp_path / "old_train")
    assert cli_main(["train", str(tmp_path / "old_train" / "config.yaml"), "--set", "seed=5", "--out",
                     str(task_dir), "--quiet"]) == 0
    with sqlite3.connect(retrained / "results.sqlite") as conn:  # a task left to run after it
        conn.execute("DELETE FROM tasks WHERE key = ?", (redo["key"],))
    before = _rows(retrained / "results.sqlite")
    result = _cli("campaign", str(path), "--out", str(retrained), "--resume", "--quiet", "--no-report")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "holds other weights than the campaign trained" in lines[0] and "delete that train folder" in lines[0]
    assert _rows(retrained / "results.sqlite") == before  # nothing ran
    shutil.rmtree(task_dir / "train")  # the fix the line names: the training and its readers are redone
    _, summary = run_campaign(path, retrained, workers=2, resume=True, show_progress=False)
    assert summary["done"] == 3 and campaign_table(retrained) == campaign_table(original)


def test_a_folding_file_is_read_at_load_and_the_saved_campaign_keeps_its_contents(tmp_path):
    """hardware.folding given as a file is checked when the campaign loads (not at the first build
    after the trainings), its contents go into the build keys, and the campaign file saved in the
    folder holds them: a report or a resume elsewhere re-reads the campaign without the file."""
    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps({"MVAU_rtl_0": {"PE": 2, "SIMD": 4}}))
    raw = {**TINY, "hardware": {"ber": [0], "maps": 1, "images": 1, "folding": str(fold)}}
    spec = parse_campaign(raw)
    assert spec.hardware["folding"] == spec.raw["hardware"]["folding"] == {"MVAU_rtl_0": {"PE": 2, "SIMD": 4}}
    assert raw["hardware"]["folding"] == str(fold)  # the caller's mapping is left alone
    fold.unlink()
    assert parse_campaign(spec.raw).hardware == spec.hardware
    with pytest.raises(CampaignError, match="hardware.folding: .*fold.json: no such file"):
        parse_campaign(raw)


@pytest.mark.slow  # a training of its own, killed
def test_a_killed_campaign_leaves_no_worker_running(tmp_path):
    """SIGKILL of the campaign process alone (not its process group, as a `kill -9 PID` or an
    out-of-memory kill does): its workers end within seconds. They are the forkserver's children,
    and used to train on, racing a `--resume` in the same task folder."""
    import psutil

    campaign = {**TINY, "name": "orphans", "train": {**TINY["train"], "set": {"epochs": 400}},
                "grid": {"models": [{"name": "tfc_w2a2", "hidden": [16, 16]}], "losses": ["ce"]}}
    path = _write(tmp_path, campaign)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "campaign", str(path), "--out", str(tmp_path / "c"),
                             "--workers", "1", "--quiet", "--no-report"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list = []
    try:
        deadline = time.monotonic() + 180
        while not workers and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if (tmp_path / "c" / "tasks").is_dir():  # a task started: its worker is a grandchild
                workers = [k for k in psutil.Process(proc.pid).children(recursive=True) if k.ppid() != proc.pid]
        assert workers, "no worker started"
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers still running after the campaign was killed: {alive}"
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()


def test_the_saved_campaign_holds_its_training_configs_contents(tmp_path, monkeypatch):
    """A report or resume of a campaign folder reads the saved campaign file: with the training
    config's path in it, a report from another working folder, or after the config was edited,
    found no results. The saved file now holds the contents, and gives the same networks."""
    config = tmp_path / "cfg" / "mine.yaml"
    config.parent.mkdir()
    shutil.copyfile(REPO / "flows/configs/smoke_digits.yaml", config)
    monkeypatch.chdir(tmp_path)
    spec = parse_campaign({**TINY, "train": {"config": "cfg/mine.yaml", "set": {"epochs": 2}}})
    assert isinstance(spec.raw["train"]["config"], dict)
    config.write_text(config.read_text().replace("batch_size: 64", "batch_size: 32"))  # edited afterwards
    edited = parse_campaign({**TINY, "train": {"config": "cfg/mine.yaml", "set": {"epochs": 2}}})
    assert [p.key for p in edited.points] != [p.key for p in spec.points]  # the edit matters
    monkeypatch.chdir(REPO)
    again = parse_campaign(yaml.safe_load(yaml.safe_dump(spec.raw)))
    assert [p.key for p in again.points] == [p.key for p in spec.points] and len(spec.points) == 6


def test_a_campaign_without_finished_sweeps_still_writes_its_results_file(tmp_path, capsys):
    """A campaign cut short after its trainings has no table yet, but its finished tasks travel:
    `mcel report` writes results.json alone (it used to refuse, and they could not be carried)."""
    from flows.campaign.archive import ARCHIVE_NAME
    from flows.campaign.store import ResultStore
    from flows.cli import main

    spec = parse_campaign(TINY)
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "campaign.yaml").write_text(yaml.safe_dump(spec.raw))
    store = ResultStore(folder / "results.sqlite")
    store.record_done(spec.points[0].key, "train", "t", 1, 1.0,
                      {"test_accuracy": 0.5, "mean_logit_margin": 1.0, "weights_sha256": "0" * 64})
    store.close()
    assert main(["report", str(folder), "--out", str(tmp_path / "r")]) == 0
    assert "no finished sweeps or simulations yet, so no report" in capsys.readouterr().out
    carried = json.loads((tmp_path / "r" / ARCHIVE_NAME).read_text())
    assert [r["key"] for r in carried["rows"]] == [spec.points[0].key]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [ARCHIVE_NAME]


def test_the_saved_campaign_holds_each_models_default_config(tmp_path, monkeypatch):
    """Without train.config, each model trains with flows/configs/<model>_fmnist.yaml: the saved
    campaign holds those contents too, so an edit of the repository's file does not orphan the
    folder's results (16 of 32 keys of ce_vs_mcel_tfc changed with one edited epoch count)."""
    import flows.campaign.spec as spec_module

    campaign = {k: v for k, v in TINY.items() if k != "train"}
    campaign["grid"] = {"models": ["tfc_w2a2", {"name": "tfc_w1a1", "hidden": [16, 16]}], "losses": ["ce"]}
    spec = parse_campaign(campaign)
    assert sorted(spec.raw["train"]["default_configs"]) == ["tfc_w1a1", "tfc_w2a2"]
    edited = tmp_path / "configs"
    shutil.copytree(spec_module.CONFIG_DIR, edited)
    for name in ("tfc_w1a1", "tfc_w2a2"):
        path = edited / f"{name}_fmnist.yaml"
        path.write_text(path.read_text().replace("epochs: 10", "epochs: 11"))
    monkeypatch.setattr(spec_module, "CONFIG_DIR", edited)
    assert [p.key for p in parse_campaign(campaign).points] != [p.key for p in spec.points]  # the edit matters
    again = parse_campaign(yaml.safe_load(yaml.safe_dump(spec.raw)))
    assert [p.key for p in again.points] == [p.key for p in spec.points]


def test_the_gain_over_ce_finds_ce_labelled_in_any_case():
    """An experiment's campaign labels CE "ce": the paper document's conclusion compared with
    "CE" only and stayed empty."""
    from flows.paper_reproduction import gain

    table = [{"model": "m", "loss": loss, "rate": 0.01, "mean": mean, "seeds": [0], "ci95_seeds": None}
             for loss, mean in (("ce", 0.80), ("mcel32", 0.85))]
    got = gain(table, "m", "mcel32", 0.01)
    assert got is not None and round(got["points"], 6) == 5.0


@pytest.mark.slow
def test_the_committed_campaign_documents_are_what_their_generators_give_today(tmp_path, monkeypatch):
    """``docs/campaigns/*`` and ``docs/paper_reproduction.md`` are written by ``mcel report`` and
    ``flows/paper_reproduction.py`` from the committed ``results.json``; a change of a generator
    must come with the documents it changes (a review found three stale lines and four reports
    without their training configs after two such changes). Each campaign is restored without
    training, its report written again, and compared byte for byte."""
    from flows.paper_reproduction import build_doc

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the campaign files name their configs from the repository's root
    docs = tmp_path / "docs"  # the generators' inputs only: a document they stop writing is missing
    for name in ("ce_vs_mcel_tfc", "paper_vgg3", "paper_vgg3_long", "paper_vgg3_margins"):
        (docs / "campaigns" / name).mkdir(parents=True)
        shutil.copy(root / "docs" / "campaigns" / name / "results.json", docs / "campaigns" / name)
    # the evidence of a restored campaign (no networks to measure) is read back from this record
    shutil.copy(root / "docs" / "paper_reproduction.json", docs)
    restored = {}
    for name in ("ce_vs_mcel_tfc", "paper_vgg3", "paper_vgg3_long", "paper_vgg3_margins"):
        restored[name], summary = run_campaign(root / "flows" / "campaigns" / f"{name}.yaml", tmp_path / "runs" / name,
                                               workers=1, show_progress=False,
                                               restore=docs / "campaigns" / name / "results.json")
        assert summary["finished_here"] == 0
    for name in ("ce_vs_mcel_tfc", "paper_vgg3_margins"):
        write_report(restored[name], docs / "campaigns" / name)
    monkeypatch.chdir(tmp_path)  # the document names the campaigns as the command line did
    build_doc(Path("runs/paper_vgg3"), Path("docs"), longer=Path("runs/paper_vgg3_long"),
              command="python -m flows.paper_reproduction runs/campaigns/paper_vgg3 --longer "
                      "runs/campaigns/paper_vgg3_long --docs docs")
    for rel in ["paper_reproduction.md", "paper_reproduction.json", *(
            f"campaigns/{name}/report.{ext}" for name in restored for ext in ("md", "json"))]:
        assert (docs / rel).read_text() == (root / "docs" / rel).read_text(), f"docs/{rel} is stale"


@pytest.mark.slow
def test_ray_addresses_where_no_cluster_answers_are_one_line_naming_the_cause(monkeypatch):
    """A port where another program listens (the dashboard's, a web server) made the campaign
    hang for minutes in Ray's retries, and every other failure was blamed on RAY_AUTH_MODE."""
    pytest.importorskip("ray")
    import socket

    from flows.campaign import executors

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # connect_ray sets it; undone afterwards
    monkeypatch.setattr(executors, "JOIN_TIMEOUT_S", 15)
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UserInputError, match="nothing that answers as a Ray cluster within 15 s"):
            executors.connect_ray(f"127.0.0.1:{port}")
        assert time.monotonic() - t0 < 60
    with pytest.raises(UserInputError) as err:  # no cluster runs here
        executors.connect_ray("auto")
    assert "RAY_AUTH_MODE" not in str(err.value) and "ray start --head" in str(err.value)
