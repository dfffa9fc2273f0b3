"""End to end through cocotb + Verilator: fault maps in the RTL's memories == software prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli import main
from hw_sim.compare import compare_run
from hw_sim.sim import NoBuildError, run_sim
from mcel_train.faults.faultmap import FaultMap


@pytest.mark.slow
def test_hardware_equals_software_for_every_map(smoke_build, capsys):
    bers = [0.0, 0.005, 0.01, 0.02]
    path = run_sim(smoke_build, bers, maps=7, images=60, seed=0, force=True, jobs=1)
    record = json.loads(path.read_text())
    assert record["simulator_processes"] == 1
    assert len(record["maps"]) == 1 + 3 * 7
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    result = compare_run(smoke_build)
    assert result["identical"] and (smoke_build / "sim" / "compare.png").is_file()
    # compare.json says what its curves describe, as the simulation recorded it
    assert {k: result[k] for k in ("memories", "inject", "transient_cycle", "backpressure")} == {
        k: record[k] for k in ("memories", "inject", "transient_cycle", "backpressure")}
    assert result["memories"] == "weights" and result["inject"] == "backdoor"
    # The faults matter: at 2 % the outputs of some map differ from the clean outputs.
    hw = np.load(smoke_build / "sim" / "hw_outputs.npz")["outputs"]
    worst = [m["id"] for m in record["maps"] if m["rate"] == 0.02]
    assert any(not np.array_equal(hw[i], hw[0]) for i in worst)
    # cycles per image near FINN's expected initiation interval (the harness streams back to back)
    ii = [m["ii_cycles"] for m in record["maps"]]
    assert max(ii) <= record["expected_ii_cycles"] + 1
    # same seed, same maps, same numbers, also with the images split over two simulators
    again = json.loads(run_sim(smoke_build, bers[:2], maps=2, images=60, seed=0, force=True,
                               jobs=2).read_text())
    assert again["simulator_processes"] == 2
    first = {(m["rate"], m["map_index"]): m for m in record["maps"]}
    for m in again["maps"]:
        one = first[(m["rate"], m["map_index"])]
        assert one["digest"] == m["digest"]
        # cycles add up over the shards, exactly: the N images' N * II, plus the fill, drain and
        # handshake overhead (one run's cycles minus N * II) once per shard
        overhead = one["cycles"] - 60 * one["ii_cycles"]
        assert m["cycles"] == 2 * overhead + 60 * one["ii_cycles"]
        assert m["identical_to_software"]
    assert main(["compare", str(smoke_build)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("build", ["smoke_build", "smoke_bin_build"])
@pytest.mark.parametrize("inject", ["backdoor", "axilite"])
def test_binarized_and_2bit_backdoor_and_axilite(build, inject, request):
    """>= 20 maps per build and injection path, rates up to 2 %: every output identical."""
    run = request.getfixturevalue(build)
    path = run_sim(run, [0.0, 0.005, 0.01, 0.02], maps=7, images=40, seed=1, inject=inject, force=True)
    record = json.loads(path.read_text())
    assert len(record["maps"]) == 22 and record["inject"] == inject
    faulty = [m for m in record["maps"] if m["faults"] > 0]
    assert len(faulty) >= 20
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    assert compare_run(run)["identical"]


@pytest.mark.slow
def test_watchdog_reports_a_hang(smoke_build, tmp_path):
    """A watchdog shorter than the pipeline latency must end as a reported hang (its own error
    type, and ``hang: true`` in hw_ber.json), not a stuck run or some other failure."""
    from hw_sim.sim import SimulationHangError

    with pytest.raises(SimulationHangError, match="hang"):
        run_sim(smoke_build, [0.0], maps=1, images=4, seed=0, force=True, watchdog_cycles=3)
    record = json.loads((smoke_build / "sim" / "hw_ber.json").read_text())
    assert [m["hang"] for m in record["maps"]] == [True]


@pytest.mark.slow
def test_mismatch_detector_fires(smoke_build, monkeypatch, capsys):
    """A software prediction that is wrong on one image of one map (a fault the software is not
    told about): the testbench records it, `mcel compare` exits 1 naming map, memory and image."""
    from hw_sim import sim

    real = sim.fast_predict

    def wrong_on_one_image(build_dir, x, maps, **kw):
        out = real(build_dir, x, maps, **kw)
        out[3, 7, 0] += 1  # map 3, image 7 (maps 1 and 2 are cross-checked against FINN)
        return out

    monkeypatch.setattr(sim, "fast_predict", wrong_on_one_image)
    # mcel sim itself says so and exits 1 (it used to print only "wrote ...")
    assert main(["sim", str(smoke_build), "--ber", "0,0.02", "--maps", "3", "--images", "20", "--seed", "5",
                 "--force", "--jobs", "1"]) == 1
    assert "error: 1 of 4 maps differ from the software prediction" in capsys.readouterr().err
    record = json.loads((smoke_build / "sim" / "hw_ber.json").read_text())
    assert [m["identical_to_software"] for m in record["maps"]] == [True, True, True, False]
    assert record["maps"][3]["first_differing_image"] == 7
    assert main(["compare", str(smoke_build)]) == 1
    out = capsys.readouterr().out
    assert "'map': 3" in out and "'image': 7" in out and "MVAU_rtl_" in out


def test_no_build_is_a_clear_error(smoke_run, tmp_path, capsys):
    run = tmp_path / "nobuild"
    (run / "train").mkdir(parents=True)
    with pytest.raises(NoBuildError, match="mcel build"):
        run_sim(run, [0.01], maps=1, images=1)
    assert main(["sim", str(run), "--ber", "0.01"]) == 2
    assert "has no build" in capsys.readouterr().err
    assert main(["sim", str(smoke_run), "--ber", "1.5"]) == 2
    assert "[0, 1]" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("build", ["smoke_build", "smoke_bin_build"])
def test_threshold_memory_faults_hardware_equals_binary_search_model(build, request, monkeypatch):
    """Faults in the threshold memories: the RTL (FINN's binary-search Thresholding_rtl, or the
    counting BinMVAU) equals the software model on every map. For Thresholding_rtl the model must
    search like the RTL: counting the faulty, unsorted thresholds (FINN's MultiThreshold
    semantics) mispredicts it, which is checked too."""
    import torch

    from hw_sim import predict
    from mcel_train.faults.faultmap import FaultMap
    from mcel_train.intnet import ThresholdPostOp

    run = request.getfixturevalue(build)
    path = run_sim(run, [0.0, 0.01, 0.05], maps=4, images=40, seed=2, memories="thresholds", force=True)
    record = json.loads(path.read_text())
    assert record["memories"] == "thresholds" and len(record["maps"]) == 9
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])
    hw = np.load(run / "sim" / "hw_outputs.npz")["outputs"]
    assert any(not np.array_equal(hw[m["id"]], hw[0]) for m in record["maps"] if m["rate"] == 0.05)
    if build != "smoke_build":
        return
    monkeypatch.setattr(predict, "threshold_post", lambda owner, t, out_bits=None: ThresholdPostOp(
        torch.from_numpy(np.asarray(t, dtype=np.float64)), out_bias=float(owner["act_val"])))
    from mcel_train.runio import load_run

    x, _ = load_run(run).test_inputs(40)
    counted = predict.fast_predict(run / "build", x, [FaultMap.load(run / "sim" / m["file"]) for m in record["maps"]])
    assert any(not np.array_equal(counted[i], hw[i]) for i in range(len(hw)))


@pytest.mark.slow
def test_transient_upset_while_streaming(smoke_build):
    """Bits flipped mid-stream: images that left before the upset equal the clean prediction,
    images that entered well after it equal the faulty one (hw_sim.transient). The early run
    also applies back-pressure, whose stalled cycles the record counts (they were recorded as 0
    for transient runs)."""
    early = json.loads(run_sim(smoke_build, [0.05], maps=3, images=60, seed=3, transient_cycle=5,
                               backpressure=True, force=True).read_text())
    assert all(m["identical_to_software"] for m in early["maps"])
    assert all(m["stalled_output_cycles"] > 0 for m in early["maps"])
    assert all(m["transient"]["images_after"] > 10 for m in early["maps"])
    assert all(m["ii_cycles"] > 0 for m in early["maps"])  # measured (it was recorded as 0)
    with np.load(smoke_build / "sim" / "hw_outputs.npz") as f:
        early_out, late_cycle = f["outputs"], int(f["out_cycles"][0][20])  # 20 images are out by then
    late = json.loads(run_sim(smoke_build, [0.05], maps=3, images=60, seed=3, transient_cycle=late_cycle,
                              force=True).read_text())
    for m in late["maps"]:
        t = m["transient"]
        assert m["identical_to_software"] and t["images_before"] >= 20 and t["before_equal_clean"] == t["images_before"]
    # the upset matters: after an early upset some map's outputs differ from the clean run's
    clean = run_sim(smoke_build, [0.0], maps=1, images=60, seed=3, force=True)
    clean_out = np.load(smoke_build / "sim" / "hw_outputs.npz")["outputs"][0]
    assert any(not np.array_equal(early_out[i], clean_out) for i in range(3))
    assert json.loads(clean.read_text())["maps"][0]["identical_to_software"]


@pytest.mark.slow
def test_make_flow_writes_results_xml_and_identical_outputs(smoke_build):
    """The documented make flow (cocotb's Makefiles) on the same build: results.xml and
    hw_ber.json with every map identical to the software prediction."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["make", "-C", str(root / "hw_sim"), f"RUN={smoke_build}", "BER=0,0.02", "MAPS=2", "FORCE=1",
                           "SEED=4", "IMAGES=30"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = (smoke_build / "sim" / "make" / "results.xml").read_text()
    assert "<testcase" in results and "<failure" not in results and 'failures="0"' in results
    record = json.loads((smoke_build / "sim" / "hw_ber.json").read_text())
    assert record["flow"].startswith("make") and len(record["maps"]) == 3
    assert all(m["identical_to_software"] for m in record["maps"])


@pytest.mark.slow
def test_profile_guided_build_equals_software(smoke_build, tmp_path):
    """--pgo: instrumented build, a training run that writes a profile, rebuild; same outputs."""
    run = tmp_path / "pgo_run"  # links the build, so the shared fixture's simulator stays as it is
    run.mkdir()
    for part in ("train", "export", "build"):
        if (smoke_build / part).exists():
            (run / part).symlink_to(smoke_build / part)
    # First a plain build in the same folder: its objects must not survive into the PGO build.
    assert not json.loads(run_sim(run, [0.0], maps=1, images=20, seed=0, jobs=1).read_text())["build"]["pgo"]
    record = json.loads(run_sim(run, [0.0, 0.02], maps=2, images=60, seed=0, jobs=1, pgo=True,
                                force=True).read_text())
    assert record["build"]["pgo"] and list((run / "sim" / "sim_build").glob("*.gcda"))
    assert "-fprofile-use" in (run / "sim" / "sim_build.log").read_text()
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"])


@pytest.mark.slow
@pytest.mark.parametrize("case, kwargs", [
    ("stuck-at", {"bers": [0.0, 0.02], "fault_model": "stuck"}),
    ("finn-predictor", {"bers": [0.0, 0.02], "predictor": "finn", "images": 12}),
    ("backpressure", {"bers": [0.0, 0.02], "backpressure": True}),
    ("all-memories-no-rate-0", {"bers": [0.01, 0.03], "memories": "all"}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_paths_through_the_rtl(smoke_build, case, kwargs):
    """Stuck-at faults, FINN's execution as the predictor, a sink that stalls the output stream,
    and faults in every memory without a clean rate: each end to end, every output identical,
    and the faults must change some output (or the equality would prove nothing)."""
    kw = {"maps": 2, "images": 30, "seed": 4, "force": True, "jobs": 1} | kwargs
    bers = kw.pop("bers")
    record = json.loads(run_sim(smoke_build, bers, **kw).read_text())
    assert all(m["identical_to_software"] and not m["hang"] for m in record["maps"]), case
    hw = np.load(smoke_build / "sim" / "hw_outputs.npz")["outputs"]
    clean = fast_clean_outputs(smoke_build, kw["images"])
    assert any(not np.array_equal(out, clean) for out, m in zip(hw, record["maps"], strict=True) if m["faults"]), case
    # every rate its maps (only a rate 0 has a single one), each map's faults in the memories asked
    assert [(m["rate"], m["map_index"]) for m in record["maps"]] == \
        [(b, k) for b in bers for k in range(1 if b == 0 else kw["maps"])], case
    kinds = memory_kinds(smoke_build)
    hit_kinds = set()
    for m in record["maps"]:
        fmap = FaultMap.load(smoke_build / "sim" / m["file"])
        hit_kinds |= {kinds[fmap.memory_names[i]] for i in np.unique(fmap.memory)}
    assert hit_kinds == ({"weights", "thresholds"} if kw.get("memories") == "all" else {"weights"}), case
    stalled = [m["stalled_output_cycles"] for m in record["maps"]]
    if case == "backpressure":  # the sink stalled (it once never did); the ii may not move here
        assert record["backpressure"] and min(stalled) > 0, stalled
    else:  # an always-ready sink, back to back: one image per FINN initiation interval
        assert max(stalled) == 0, stalled
        assert all(m["ii_cycles"] <= record["expected_ii_cycles"] + 1 for m in record["maps"]), \
            [m["ii_cycles"] for m in record["maps"]]


def memory_kinds(run) -> dict[str, str]:
    """Per memory name, ``weights`` or ``thresholds``, as the build's manifest gives it."""
    from mcel_train.manifest import load_manifest

    return {m.name: m.kind for m in load_manifest(run / "build").memories}


def fast_clean_outputs(run, images: int) -> np.ndarray:
    from hw_sim.predict import fast_predict
    from mcel_train.runio import load_run

    x, _ = load_run(run).test_inputs(images)
    return fast_predict(run / "build", x, [None], method="dense")[0]


@pytest.mark.slow
def test_manifest_path_missing_in_rtl_is_one_line(smoke_build, tmp_path, capsys):
    """A manifest that names a memory the RTL does not have (a corrupted or mismatched build):
    one line naming the path and the fix, exit 2, and no result written."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_build, run, symlinks=True, ignore=shutil.ignore_patterns("sim"))
    manifest = json.loads((run / "build" / "manifest.json").read_text())
    victim = manifest["memories"][0]
    victim["path"] = victim["path"].rsplit(".", 1)[0] + ".no_such_memory"
    (run / "build" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["sim", str(run), "--ber", "0.01", "--maps", "1", "--images", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_memory" in err and "does not exist in the RTL" in err and "--force" in err
    assert err.count("\n") == 0
    assert not (run / "sim" / "hw_ber.json").exists()


def test_a_build_or_simulation_of_other_weights_is_refused(smoke_build, tmp_path, capsys):
    """A run retrained in place kept its old export and build, and mcel sim simulated the old
    network on the new run's images (a reviewer measured 0.8217 for a run trained to 0.6128);
    an edited memory init file simulated as the build's; a build replaced with --force kept
    the old simulation's verdict. Each is refused in one line naming the fix
    (mcel_train/provenance.py), before anything is written."""
    import shutil

    import torch

    from mcel_train.digest import state_digest

    run = tmp_path / "run"
    for stage in ("train", "export", "build"):
        shutil.copytree(smoke_build / stage, run / stage, symlinks=True)
    sim = ["sim", str(run), "--ber", "0", "--maps", "1", "--images", "10"]
    assert main(sim) == 0 and main(["compare", str(run)]) == 0
    assert main(["sweep", str(run), "--ber", "0,0.1", "--maps", "2", "--quiet"]) == 0
    sim.append("--force")

    def refused(argv: list[str], words: str) -> None:
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "--force" in err, err
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before

    # the build replaced since the simulation (as mcel build --force does: a new build.json)
    record = run / "build" / "build.json"
    original = record.read_bytes()
    record.write_text(json.dumps(json.loads(original) | {"total_seconds": -1.0}))
    refused(["compare", str(run)], "was simulated on an earlier build")
    record.write_bytes(original)
    # the memory init files changed after the build
    mem = next((run / "build" / "hdl" / "mem").glob("*.dat"))
    original = mem.read_bytes()
    mem.write_text(original.decode().replace("0", "1", 1))
    refused(sim, "memory init files changed after the build")
    mem.write_bytes(original)
    # retrained in place: other weights (and their digest, as a training records it)
    state = torch.load(run / "train" / "model.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] * 2
    torch.save(state, run / "train" / "model.pt")
    metrics = json.loads((run / "train" / "metrics.json").read_text())
    (run / "train" / "metrics.json").write_text(json.dumps(metrics | {"weights_sha256": state_digest(state)}))
    refused(sim, "was built from another network than the run's now")
    refused(["compare", str(run)], "are of another network than the run's now")  # it said "identical"
    refused(["plot", str(run), "-o", str(tmp_path / "curves.png")], "was swept on other weights")
    refused(["build", str(run), "--force"], "export was made from other weights")


def test_killing_mcel_sim_stops_its_simulator(smoke_build, tmp_path):
    """SIGKILL of `mcel sim` alone left its simulator running at full load, orphaned, to its last
    map: now the testbench checks its owner once per batch and ends (hw_sim/tb_accel.py)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    run = tmp_path / "run"
    for stage in ("train", "export", "build"):
        shutil.copytree(smoke_build / stage, run / stage, symlinks=True)

    def simulators() -> list[int]:  # processes whose testbench job lies in this run
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and str(run).encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return [p for p in found if p != os.getpid()]

    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "sim", str(run), "--ber", "0,0.01,0.02", "--maps",
                             "2000", "--images", "300", "--jobs", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "sim" / "work" / "sim" / "sim.log"
    deadline = time.monotonic() + 600
    while not (log.is_file() and "map" in log.read_text(errors="replace")) and time.monotonic() < deadline:
        assert proc.poll() is None, "mcel sim ended before its simulator ran"
        time.sleep(0.2)
    running = [p for p in simulators() if p != proc.pid]
    assert running, "no simulator process found"
    proc.send_signal(signal.SIGKILL)  # mcel sim alone, not its process group
    proc.wait()
    deadline = time.monotonic() + 20  # a batch takes well under a second; all 6000 maps, minutes
    while [p for p in simulators() if p in running] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in simulators() if p in running]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "the simulator outlived mcel sim"
