"""Bad input, table-driven: every case is one ``error:`` line naming the field, file or flag,
exit status 2, and not one file under the run folder created, changed or removed.

Each case works on its own copy of a small trained run (and, where the case needs one, a fake
build folder holding only the artifact under test), hashes every file, runs the command in
process, and hashes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import CONFIGS


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} | \
           {str(p.relative_to(root)) + "/": "dir" for p in sorted(root.rglob("*")) if p.is_dir()}


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _truncate(rel: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    return setup


def _flip_tensor_bytes(rel: str) -> Callable[[Path], None]:
    """Bytes flipped inside the largest tensor of a torch zip, its zip structure intact: torch's
    loader does not check the zip's checksums, so only the recorded weights digest sees it."""
    def setup(root: Path) -> None:
        import struct
        import zipfile

        path = root / rel
        with zipfile.ZipFile(path) as z:
            info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        raw = bytearray(path.read_bytes())
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        for k in range(start, start + info.file_size, 50):
            raw[k] ^= 0x40
        path.write_bytes(bytes(raw))
    return setup


def _damaged_dataset(name: str, keep: int) -> Callable[[Path], None]:
    """``ROOT/fm``: the installed Fashion-MNIST files with ``name`` cut to its first ``keep`` bytes."""
    def setup(root: Path) -> None:
        from mcel_train.data import find_fashion_mnist

        shutil.copytree(find_fashion_mnist(), root / "fm")
        path = root / "fm" / name
        path.write_bytes(path.read_bytes()[:keep])
    return setup


def _manifest(**change) -> Callable[[Path], None]:
    """A fake build holding a manifest (valid JSON) with fields changed."""
    base = {"version": 2, "top": "accel_top", "top_file": "hdl/accel_top.sv", "filelist": "hdl/filelist.f",
            "clock": "ap_clk", "reset": "ap_rst_n", "nodes": [], "memories": [],
            "streams": {"input": {"tdata_bits": 8, "datatype": "UINT8", "element_bits": 8, "elements": 64,
                                  "elements_per_beat": 1, "beats_per_image": 64, "shape": [1, 64]},
                        "output": {"tdata_bits": 16, "datatype": "INT16", "element_bits": 16, "elements": 10,
                                   "elements_per_beat": 1, "beats_per_image": 10, "shape": [1, 10]}}}
    return _write("build/manifest.json", json.dumps({**base, **change}))


def _manifest_in(folder: str) -> Callable[[Path], None]:
    """A run folder ``folder`` holding the fake build of :func:`_manifest`."""
    def setup(root: Path) -> None:
        (root / folder).mkdir()
        _manifest()(root / folder)
    return setup


def _config(text: str) -> Callable[[Path], None]:
    return _write("cfg.yaml", text)


def _edit_run_config(**change) -> Callable[[Path], None]:
    """The run's saved training config with top-level or ``model`` fields changed (``model_arch``)."""
    import yaml

    def setup(root: Path) -> None:
        path = root / "train" / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        for key, value in change.items():
            if key.startswith("model_"):
                cfg["model"][key.removeprefix("model_")] = value
            elif key.startswith("data_"):
                cfg["data"][key.removeprefix("data_")] = value
            else:
                cfg[key] = value
        path.write_text(yaml.safe_dump(cfg))
    return setup


def _campaign_folder(yaml_text: str, store: str | bytes | None) -> Callable[[Path], None]:
    """A campaign folder ``c``: its saved campaign file and a results store (``"empty-store"``:
    a valid store with no results, else the bytes given)."""
    def setup(root: Path) -> None:
        _write("c/campaign.yaml", yaml_text)(root)
        if store == "empty-store":
            from flows.campaign.store import ResultStore

            ResultStore(root / "c" / "results.sqlite").close()
        elif store is not None:
            _write("c/results.sqlite", store)(root)
    return setup


def _hw_record(**change) -> Callable[[Path], None]:
    base = {"bers": [0.0, 0.01], "images": 5, "fault_model": "flip",
            "maps": [{"id": 0, "rate": 0.0, "map_index": 0, "file": "maps/rate0_map0.npz", "accuracy": 1.0,
                      "predicted_accuracy": 1.0, "identical_to_software": True}]}
    return _write("sim/hw_ber.json", json.dumps({**base, **change}))


def _onnx(rel: str, nodes: str) -> Callable[[Path], None]:
    """A small ONNX file: ``"float"`` one MatMul of an 8x8 image by float weights (no quantizer),
    ``"empty"`` a graph without nodes."""
    def setup(root: Path) -> None:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
        if nodes == "float":
            w = numpy_helper.from_array(np.ones((64, 10), np.float32), "w")
            graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
        else:
            graph = helper.make_graph([], "g", [x], [y])
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(helper.make_model(graph), path)
    return setup


SMOKE = str(CONFIGS / "smoke_digits.yaml")
CAMPAIGN = "name: c\ngrid: {models: [tfc_w2a2], losses: [ce], seeds: [0]}\nsoftware: {ber: [0], maps: 2}\n"
GRID = "name: c\nsoftware: {ber: [0], maps: 2}\n"  # + a grid
RUN_C = ["campaign", "{run}/c.yaml", "--out", "{run}/c"]  # the campaign file c.yaml into the folder c

# (id, argv with {run} = the case's run folder, setup, expected text in the message)
CASES = [
    # train: configs and overrides
    ("train-missing-config", ["train", "{run}/none.yaml", "--out", "{run}/new"], None, "does not exist"),
    ("train-section-not-mapping", ["train", "{run}/cfg.yaml", "--out", "{run}/new"], _config("model: tfc_w2a2\ndata: 5\n"), "data"),
    ("train-malformed-yaml", ["train", "{run}/cfg.yaml", "--out", "{run}/new"], _config("model: [tfc\n  a: b\n"), "not valid YAML"),
    ("train-binary-config", ["train", "{run}/cfg.yaml", "--out", "{run}/new"], _write("cfg.yaml", bytes(range(256))), "not a text file"),
    ("train-top-level-list", ["train", "{run}/cfg.yaml", "--out", "{run}/new"], _config("- 1\n- 2\n"), "mapping"),
    ("train-momentum-abc", ["train", SMOKE, "--set", "optimizer.momentum=abc", "--out", "{run}/new"], None, "optimizer.momentum"),
    ("train-step-size-negative", ["train", SMOKE, "--set", "schedule.step_size=-1", "--out", "{run}/new"], None, "schedule.step_size"),
    ("train-unknown-key", ["train", SMOKE, "--set", "colour=3", "--out", "{run}/new"], None, "colour"),
    ("train-unknown-loss", ["train", SMOKE, "--set", "loss.name=foo", "--out", "{run}/new"], None, "loss.name"),
    ("train-unknown-model", ["train", SMOKE, "--set", "model=tfc_w9a9", "--out", "{run}/new"], None, "model"),
    ("train-zero-epochs", ["train", SMOKE, "--set", "epochs=0", "--out", "{run}/new"], None, "epochs"),
    ("train-bad-batch", ["train", SMOKE, "--set", "batch_size=abc", "--out", "{run}/new"], None, "batch_size"),
    ("train-bad-override-yaml", ["train", SMOKE, "--set", "loss.margin=[1", "--out", "{run}/new"], None, "loss.margin"),
    ("train-override-no-equals", ["train", SMOKE, "--set", "epochs", "--out", "{run}/new"], None, "key=value"),
    ("train-fault-rate", ["train", SMOKE, "--set", "fault_training={rate: 2}", "--out", "{run}/new"], None, "fault_training.rate"),
    ("train-val-fraction", ["train", SMOKE, "--set", "data.val_fraction=2", "--out", "{run}/new"], None, "data.val_fraction"),
    ("train-missing-data-dir", ["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--set", "data.data_dir=/nonexistent/x",
                                "--out", "{run}/new"], None, "/nonexistent/x"),
    ("train-existing-run", ["train", SMOKE, "--out", "{run}"], None, "exists"),
    ("train-empty-config", ["train", "{run}/cfg.yaml", "--out", "{run}/new"], _config(""), "cfg.yaml names no model"),
    ("train-empty-validation", ["train", SMOKE, "--set", "data.val_fraction=0.0001", "--out", "{run}/new"], None,
     "data.val_fraction 0.0001 leaves 0 of the"),
    ("train-cnv-on-digits", ["train", SMOKE, "--set", "model=cnv_w1a1", "--out", "{run}/new"], None,
     "do not fit 8x8 images"),
    ("train-seed-past-torch", ["train", SMOKE, "--set", "seed=18446744073709551616", "--out", "{run}/new"], None,
     "seed"),
    ("train-truncated-dataset", ["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--data-dir", "{run}/fm",
                                 "--out", "{run}/new"], _damaged_dataset("train-images-idx3-ubyte.gz", 50000),
     "train-images-idx3-ubyte.gz cannot be read"),
    ("train-dataset-not-idx", ["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--data-dir", "{run}/fm",
                               "--out", "{run}/new"], _damaged_dataset("t10k-labels-idx1-ubyte.gz", 10),
     "t10k-labels-idx1-ubyte.gz cannot be read"),
    ("train-key-twice", ["train", "{run}/cfg.yaml", "--out", "{run}/new"],
     _config("model: tfc_w2a2\nepochs: 30\nepochs: 1\n"), "key 'epochs' appears twice in one mapping at line 3"),
    ("train-config-is-a-folder", ["train", "{run}", "--out", "{run}/new"], None, "is a folder"),
    ("train-image-shape-1d", ["train", SMOKE, "--set", "model.image_shape=[5]", "--out", "{run}/new"], None,
     "image_shape must be [height, width]"),
    ("train-image-shape-not-the-datasets", ["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--set",
                                            "model.image_shape=[14,14]", "--out", "{run}/new"], None,
     "does not match fashion_mnist (images [28, 28])"),
    ("train-num-classes", ["train", SMOKE, "--set", "model.num_classes=3", "--out", "{run}/new"], None,
     "model.num_classes 3 does not match digits (10 classes)"),
    ("train-num-classes-zero", ["train", SMOKE, "--set", "model.num_classes=0", "--out", "{run}/new"], None,
     "num_classes must be a whole number >= 2"),
    ("train-const-scale-nan", ["train", SMOKE, "--set", "model.weight_scaling=const", "--set",
                               "model.const_weight_scale=.nan", "--out", "{run}/new"], None, "const_weight_scale"),
    ("train-const-scale-with-stats", ["train", SMOKE, "--set", "model.const_weight_scale=0.1", "--out",
                                      "{run}/new"], None, "const_weight_scale applies to weight_scaling const"),
    ("train-lr-inf", ["train", SMOKE, "--set", "optimizer.lr=.inf", "--out", "{run}/new"], None, "optimizer.lr"),
    ("train-margin-nan", ["train", SMOKE, "--set", "loss.margin=.nan", "--out", "{run}/new"], None, "loss.margin"),
    ("train-channels-on-mlp", ["train", SMOKE, "--set", "model.channels=[8,8]", "--out", "{run}/new"], None,
     "channels applies to conv networks"),
    ("train-hidden-empty", ["train", SMOKE, "--set", "model.hidden=[]", "--out", "{run}/new"], None,
     "model.hidden is empty"),
    ("train-override-without-key", ["train", SMOKE, "--set", "=5", "--out", "{run}/new"], None,
     "has no key before '='"),
    # a stage folder where its run belongs: the fixes named the wrong folder ("run mcel build RUN/build")
    ("sim-stage-folder", ["sim", "{run}/train"], None, "is a stage folder of the run"),
    # cocotb's runner builds with absolute paths that make and Verilator cannot take with these:
    # it said "the build's sources may be damaged: rebuild with mcel build --force"
    ("sim-colon-in-path", ["sim", "{run}/../r:1"], None, "cannot build in a folder whose path holds ':'"),
    ("sim-semicolon-in-path", ["sim", "{run}/../r;x"], None, "holds ';'"),
    ("sweep-stage-folder", ["sweep", "{run}/train", "--maps", "2"], None, "give the run folder"),
    ("train-hidden-a-number", ["train", SMOKE, "--set", "model.hidden=5", "--out", "{run}/new"], None,
     "hidden must be a list of sizes such as [64, 64], got 5"),
    ("train-hidden-fraction", ["train", SMOKE, "--set", "model.hidden=[1.7]", "--out", "{run}/new"], None,
     "hidden must be whole numbers"),
    ("train-weight-bits-bool", ["train", SMOKE, "--set", "model.weight_bits=true", "--out", "{run}/new"], None,
     "weight_bits"),
    ("train-model-extra", ["train", SMOKE, "--set", "model.extra={foo: 1}", "--out", "{run}/new"], None,
     "extra is reserved"),
    ("train-model-mapping-without-name", ["train", SMOKE, "--set", "model={arch: tfc}", "--out", "{run}/new"],
     None, "a mapping needs 'name'"),
    ("train-fault-training-unknown-model", ["train", SMOKE, "--set", "fault_training={model: bogus, rate: 0.01}",
                                            "--out", "{run}/new"], None, "fault_training.model: unknown fault model"),
    ("train-fault-training-asym-past-one", ["train", SMOKE, "--set",
                                            "fault_training={model: 'asym:p10=500', rate: 0.01}", "--out",
                                            "{run}/new"], None, "rate x p10 must be at most 1"),
    ("train-name-a-path", ["train", SMOKE, "--set", "name=/tmp/elsewhere"], None, "name: must be a plain folder"),
    ("train-name-dotdot", ["train", SMOKE, "--set", "name=.."], None, "name: must be a plain folder"),
    ("train-out-under-a-file", ["train", SMOKE, "--out", "{run}/train/config.yaml/new"], None,
     "is a file, not a folder"),
    ("train-no-fashion-mnist", ["train", str(CONFIGS / "tfc_w2a2_fmnist.yaml"), "--data-dir", "{run}/empty",
                                "--out", "{run}/new"], _write("empty/.keep", ""), "apt-get install dataset-fashion-mnist"),
    # export
    ("export-no-train", ["export", "{run}/empty"], _write("empty/.keep", ""), "not found"),
    ("export-truncated-weights", ["export", "{run}"], _truncate("train/model.pt"), "model.pt"),
    ("export-non-zip-weights", ["export", "{run}"], _write("train/model.pt", "not a zip"), "model.pt"),
    ("sweep-flipped-weight-bytes", ["sweep", "{run}", "--ber", "0"], _flip_tensor_bytes("train/model.pt"),
     "does not hold the weights this run trained"),
    ("export-broken-run-config", ["export", "{run}"], _write("train/config.yaml", "model: [x\n"), "config.yaml"),
    ("export-existing", ["export", "{run}"], _write("export/model.qonnx.onnx", "x"), "--force"),
    ("export-zero-images", ["export", "{run}", "--images", "0"], None, "--images must be >= 1"),
    ("export-negative-images", ["export", "{run}", "--images", "-5"], None, "--images must be >= 1"),
    ("export-unknown-arch-in-run", ["export", "{run}"], _edit_run_config(model_arch="nope"), "train/config.yaml"),
    # a saved run config edited by hand: one line naming it, for every command that loads the run
    ("sweep-unknown-arch-in-run", ["sweep", "{run}", "--ber", "0"], _edit_run_config(model_arch="nope"),
     "its model is not one this version builds"),
    ("sweep-unknown-dataset-in-run", ["sweep", "{run}", "--ber", "0"], _edit_run_config(data_dataset="cifar"),
     "data.dataset 'cifar'"),
    ("margins-bad-seed-in-run", ["margins", "{run}"], _edit_run_config(seed="abc"), "seed 'abc'"),
    ("margins-existing", ["margins", "{run}"], _write("margins/margins.json", "{}"), "pass --force"),
    # import
    ("import-float-network", ["import", "{run}/f.onnx", "--dataset", "digits", "--input-kind", "uint8", "--out",
                              "{run}/imp"], _onnx("f.onnx", "float"), "no layer's weights are quantized"),
    ("import-without-dataset", ["import", "{run}/f.onnx", "--input-kind", "uint8", "--out", "{run}/imp"],
     _onnx("f.onnx", "float"), "names no dataset (no mcel.dataset / mcel.input_kind metadata): give --dataset"),
    ("import-without-dataset-or-input-kind", ["import", "{run}/f.onnx", "--out", "{run}/imp"], _onnx("f.onnx", "float"),
     "names no dataset and no input-kind"),
    ("margins-imported-run", ["margins", "{run}/imp"], _write("imp/export/export.json", "{}"),
     "holds an imported network (no training stage)"),
    ("import-empty-graph", ["import", "{run}/e.onnx", "--dataset", "digits", "--input-kind", "uint8", "--out",
                            "{run}/imp"], _onnx("e.onnx", "empty"), "the graph has no nodes"),
    ("import-into-a-trained-run", ["import", "{run}/f.onnx", "--dataset", "digits", "--input-kind", "uint8",
                                   "--out", "{run}", "--force"], _onnx("f.onnx", "float"), "holds a trained run"),
    ("import-out-is-a-file", ["import", "{run}/f.onnx", "--dataset", "digits", "--input-kind", "uint8", "--out",
                              "{run}/f.onnx"], _onnx("f.onnx", "float"), "is a file; give a run folder"),
    # build
    ("build-truncated-onnx", ["build", "{run}"], _write("export/model.qonnx.onnx", b"\x08\x07garbage"), "ONNX"),
    ("build-existing", ["build", "{run}"], _write("build/build.json", "{}"), "--force"),
    ("build-bad-part-flag", ["build", "{run}", "--target-cycles", "x"], None, "--target-cycles"),
    # sweep
    ("sweep-rate-out-of-range", ["sweep", "{run}", "--ber", "2"], None, "--ber: bit error rates must be in [0, 1]"),
    ("sweep-rate-nan", ["sweep", "{run}", "--ber", "0,nan"], None, "--bers/--ber: rates must be >= 0"),
    ("sweep-rate-negative", ["sweep", "{run}", "--ber", "0,-0.1"], None, "--bers/--ber: rates must be >= 0"),
    # a value in scientific notation starting with "-": argparse took it for a flag ("expected one argument")
    ("sweep-rate-negative-scientific", ["sweep", "{run}", "--ber", "-1e-3"], None, "--bers/--ber: rates must be >= 0"),
    ("sweep-logspace-past-1", ["sweep", "{run}", "--ber", "logspace:1e-3:3:4"], None, "--ber: bit error rates"),
    # a count past the network's bits said "kflips needs an integer count 0..N", naming no flag
    ("sweep-kflips-past-the-bits", ["sweep", "{run}", "--ber", "0,10000000", "--fault-model", "kflips"], None,
     "--ber: kflips needs an integer count 0.."),
    ("sweep-kflips-fraction", ["sweep", "{run}", "--ber", "0,2.5", "--fault-model", "kflips"], None,
     "--ber: the kflips fault model takes whole flip counts"),
    ("experiment-rate-past-1", ["experiment", "--rates", "0,1.5", "--out", "{run}/exp"], None,
     "--rates: bit error rates must be in [0, 1]"),
    ("sweep-no-rate", ["sweep", "{run}", "--ber", ","], None, "--bers/--ber: no rate"),
    ("sweep-manifest-missing", ["sweep", "{run}", "--manifest", "{run}/build/manifest.json"], None,
     "--manifest {run}/build/manifest.json not found"),
    ("sweep-manifest-other-json", ["sweep", "{run}", "--manifest", "{run}/train/metrics.json"], None,
     "the manifest.json in it"),
    ("sweep-zero-maps", ["sweep", "{run}", "--maps", "0"], None, "--maps"),
    ("sweep-bad-fault-model", ["sweep", "{run}", "--fault-model", "zap"], None, "zap"),
    ("sweep-negative-seed", ["sweep", "{run}", "--seed", "-1"], None, "--seed"),
    ("sweep-no-train", ["sweep", "{run}/empty"], _write("empty/.keep", ""), "not found"),
    # sim: every argument is checked before the build (or its absence) is looked at
    ("sim-negative-seed", ["sim", "{run}", "--seed", "-1"], None, "--seed"),
    ("sim-zero-maps", ["sim", "{run}", "--maps", "0"], None, "--maps"),
    ("sim-zero-images", ["sim", "{run}", "--images", "0"], None, "--images"),
    ("sim-rate-out-of-range", ["sim", "{run}", "--ber", "1.5"], None, "--ber"),
    ("sim-rate-not-a-number", ["sim", "{run}", "--ber", "abc"], None, "--ber"),
    ("sim-asym-in-thresholds", ["sim", "{run}", "--fault-model", "asym", "--memories", "all"], None,
     "--fault-model asym puts faults in weight memories only: use --memories weights"),
    ("sim-kflips-fraction", ["sim", "{run}", "--fault-model", "kflips", "--ber", "0,1.5"], None,
     "--ber: the kflips fault model takes whole flip counts"),
    ("sim-bad-fault-model", ["sim", "{run}", "--fault-model", "zap"], None, "zap"),
    ("sim-negative-jobs", ["sim", "{run}", "--jobs", "-1"], None, "--jobs"),
    ("sim-negative-transient", ["sim", "{run}", "--transient-cycle", "-5"], None, "--transient-cycle"),
    ("sim-rate-twice", ["sim", "{run}", "--ber", "0,0.05,5e-2"], None, "--ber: the rate 0.05 is listed twice"),
    ("sim-finn-predictor-thresholds", ["sim", "{run}", "--predictor", "finn", "--memories", "all"], None,
     "--predictor finn predicts weight faults only"),
    ("sweep-rate-twice", ["sweep", "{run}", "--ber", "0,0"], None, "the rate 0 is listed twice"),
    # a sweep/ folder without its record: the sweep did all its work, then refused at the rename
    ("sweep-folder-without-record", ["sweep", "{run}", "--ber", "0,0.01", "--maps", "2"],
     _write("sweep/notes.txt", "mine"), "sweep exists already; pass --force"),
    ("sim-axilite-thresholds", ["sim", "{run}", "--inject", "axilite", "--memories", "all"], None, "axilite"),
    ("sim-unknown-inject", ["sim", "{run}", "--inject", "jtag"], None, "--inject"),
    ("sim-no-build", ["sim", "{run}"], None, "has no build"),
    ("sim-truncated-manifest", ["sim", "{run}"], lambda r: (_manifest()(r), _truncate("build/manifest.json")(r)),
     "manifest.json"),
    ("sim-old-manifest", ["sim", "{run}"], _manifest(version=1), "version"),
    # another live process (this test's parent) holds the run's simulation work folder: refused,
    # and its folder is left as it was
    ("sim-busy", ["sim", "{run}", "--images", "5", "--maps", "1"],
     lambda r: (_manifest()(r), _write("sim/.partial/owner", str(os.getppid()))(r),
                _write("sim/.partial/inputs.npy", "theirs")(r)), "is being simulated by process"),
    ("sim-manifest-bad-field", ["sim", "{run}"], _manifest(memories=5), "memories"),
    ("sim-missing-threshold-init-file", ["sim", "{run}", "--ber", "0"], _manifest(memories=[
        {"name": "Thr_0", "layer": "Thr", "kind": "thresholds", "path": "p", "depth": 4, "width": 8, "data_bits": 8,
         "element_bits": 8, "datatype": "INT8", "signed": True, "bipolar": False, "pe": 1,
         "layout": {"type": "thresholds"}, "init_file": "hdl/mem/thr.dat", "instance": "i",
         "init_param": "INIT_FILE"}]), "(init file of Thr_0) is missing; rebuild with `mcel build --force`"),
    ("sim-batch-images-huge", ["sim", "{run}", "--batch-images", "10000000"], None, "--batch-images: at most"),
    ("sim-fresh-run-path-with-space", ["sim", "{run}/a b"], _manifest_in("a b"), "the simulator must be built here"),
    ("build-unknown-part", ["build", "{run}", "--part", "unknown"], None, "--part 'unknown' is not a device"),
    ("build-empty-part", ["build", "{run}", "--part", ""], None, "--part '' is not a device"),
    # FINN folding configs carry string styles: it said ram_style "must be a whole number"
    ("build-folding-ram-style", ["build", "{run}", "--folding", "{run}/f.json"],
     _write("f.json", '{"MVAU_rtl_0": {"PE": 2, "ram_style": "block"}}'), "ram_style 'block' is an implementation style"),
    ("build-folding-before-existing", ["build", "{run}", "--folding", "{run}/none.json"],
     _write("build/build.json", "{}"), "--folding: {run}/none.json: no such file"),
    ("sim-existing-result-bad-arg-first", ["sim", "{run}", "--seed", "-1"], _write("sim/hw_ber.json", "{}"), "--seed"),
    # compare, plot, campaign, report
    ("compare-no-sim", ["compare", "{run}"], None, "hw_ber.json"),
    ("plot-no-sweep", ["plot", "{run}", "-o", "{run}/x.png"], None, "sw_ber.json"),
    ("plot-empty-sweep", ["plot", "{run}", "-o", "{run}/x.png"], _write("sweep/sw_ber.json", '{"results": []}'),
     "is not a sweep record"),
    ("plot-empty-label", ["plot", "{run}", "{run}", "--labels", "one,", "-o", "{run}/x.png"], None, "empty label"),
    ("sweep-logspace-from-zero", ["sweep", "{run}", "--ber", "logspace:0:1e-2:3"], None, "LO, HI > 0"),
    ("sweep-fault-parameter-twice", ["sweep", "{run}", "--ber", "0", "--fault-model", "asym:p01=0.1,p01=0.9"], None,
     "'p01' is given twice"),
    ("plot-labels-count", ["plot", "{run}", "{run}", "--labels", "a", "-o", "{run}/x.png"], None,
     "--labels gives 1 label(s) for 2 run(s)"),
    ("plot-torn-sweep", ["plot", "{run}", "-o", "{run}/x.png"], _write("sweep/sw_ber.json", '{"results": [{"ra'),
     "is not a sweep record of mcel sweep"),
    ("plot-foreign-json", ["plot", "{run}", "-o", "{run}/x.png"], _write("sweep/sw_ber.json", "[1, 2]"),
     "is not a sweep record of mcel sweep"),
    # a hand-made record with its interval upside down was plotted, exit 0
    ("plot-interval-upside-down", ["plot", "{run}", "-o", "{run}/x.png"],
     _write("sweep/sw_ber.json", '{"results": [{"rate": 0.001, "mean": 0.5, "ci95": [0.6, 0.4]}]}'),
     "is not a sweep record of mcel sweep"),
    ("plot-other-format", ["plot", "{run}", "-o", "{run}/x.png"],
     _write("sweep/sw_ber.json", '{"format": "other", "results": [{"rate": 0.001, "mean": 0.5}]}'),
     "is not a sweep record of mcel sweep"),
    ("plot-flip-counts-beside-rates", ["plot", "{run}/a", "{run}/b", "-o", "{run}/x.png"],
     lambda r: (_write("a/sweep/sw_ber.json", json.dumps({"fault_model": {"name": "flip", "spec": "flip"},
                                                           "results": [{"rate": 0.01, "mean": 0.5}]}))(r),
                _write("b/sweep/sw_ber.json", json.dumps({"fault_model": {"name": "kflips", "spec": "kflips"},
                                                           "results": [{"rate": 5, "mean": 0.5}]}))(r)),
     "was swept with --fault-model kflips (its x values are flip counts)"),
    ("plot-unwritable-folder", ["plot", "{run}", "-o", "/proc/x.png"], _write("sweep/sw_ber.json", json.dumps(
        {"fault_model": {"name": "flip", "spec": "flip"}, "results": [{"rate": 0.01, "mean": 0.5}]})),
     "/proc/x.png: cannot write the plot there"),
    ("plot-not-png", ["plot", "{run}", "-o", "{run}/x.pdf"], None, "must name a .png file"),
    ("plot-empty-out", ["plot", "{run}", "-o", ""], None, "must name a .png file"),
    ("plot-no-suffix", ["plot", "{run}", "-o", "{run}/x"], None, "must name a .png file"),
    ("compare-torn-record", ["compare", "{run}"], _write("sim/hw_ber.json", '{"bers": [0'),
     "is not a simulation record of mcel sim"),
    ("compare-foreign-record", ["compare", "{run}"], _write("sim/hw_ber.json", "{}"),
     "is not a simulation record of mcel sim"),
    ("compare-rate-without-maps", ["compare", "{run}"], _hw_record(), "has no maps at rate 0.01"),
    ("campaign-missing-file", ["campaign", "{run}/none.yaml", "--out", "{run}/c"], None, "none.yaml"),
    # it said "campaign name: Field required"; a rate as text named pydantic's "software.ber.float";
    # a rate out of range said "got" twice
    ("campaign-empty-file", RUN_C, _write("c.yaml", ""), "c.yaml is empty: a campaign needs name, train"),
    ("campaign-rate-as-text", RUN_C,
     _write("c.yaml", "name: c\ngrid: {models: [tfc_w2a2], losses: [ce]}\nsoftware: {ber: [0, a], maps: 2}\n"),
     "campaign software.ber: Input should be a valid number (got 'a')"),
    ("campaign-rate-past-1", RUN_C,
     _write("c.yaml", "name: c\ngrid: {models: [tfc_w2a2], losses: [ce]}\nsoftware: {ber: [0, 1.5], maps: 2}\n"),
     "got 1.5 (the kflips fault model takes flip counts)"),
    ("campaign-zero-workers", ["campaign", "{run}/c.yaml", "--workers", "0", "--out", "{run}/c"],
     _write("c.yaml", CAMPAIGN), "--workers"),
    ("campaign-bad-hardware-fault-model", RUN_C,
     _write("c.yaml", CAMPAIGN + "hardware: {ber: [0], maps: 1, images: 1, fault_model: zap}\n"), "hardware.fault_model"),
    # a damaged results store on --resume: refused before the campaign file and task list are rewritten
    ("campaign-resume-damaged-store", RUN_C + ["--resume"],
     lambda r: (_write("c.yaml", CAMPAIGN)(r), _campaign_folder(CAMPAIGN, b"not sqlite" * 100)(r),
                _write("c/tasks.json", "[]")(r)), "is not a readable campaign results store"),
    ("campaign-resume-damaged-campaign-file", RUN_C + ["--resume"],
     lambda r: (_write("c.yaml", CAMPAIGN)(r), _campaign_folder("name: [c\n", "empty-store")(r)),
     "campaign.yaml is damaged, so this folder's campaign is unknown: if it is 'c', delete that file"),
    ("campaign-address-without-ray", RUN_C + ["--address", "127.0.0.1:6379"], _write("c.yaml", CAMPAIGN),
     "add --executor ray"),
    ("report-not-a-campaign", ["report", "{run}"], None, "campaign"),
    ("report-torn-campaign-file", ["report", "{run}/c"], _campaign_folder("name: [c\n", "empty-store"),
     "is not a readable campaign folder"),
    ("report-garbage-store", ["report", "{run}/c"], _campaign_folder(CAMPAIGN, b"not sqlite" * 100),
     "is not a readable campaign results store"),
    ("report-empty-store-file", ["report", "{run}/c"], _campaign_folder(CAMPAIGN, b""),
     "holds no campaign tables"),  # and the file stays empty: the reader does not create tables
    ("report-nothing-finished", ["report", "{run}/c"], _campaign_folder(CAMPAIGN, "empty-store"),
     "no finished sweeps"),
    ("report-target-nothing-finished", ["report", "{run}/c", "--target-ber", "0.01"],
     _campaign_folder(CAMPAIGN, "empty-store"), "--fault-model flip: the campaign has no finished sweep"),
    ("report-drop-without-target", ["report", "{run}/c", "--max-clean-drop", "5"], None,
     "--max-clean-drop applies to --target-ber only"),
    ("report-fault-model-without-target", ["report", "{run}/c", "--fault-model", "stuck"], None,
     "--fault-model applies to --target-ber only"),
    ("report-target-rate-above-1", ["report", "{run}/c", "--target-ber", "4"], None,
     "--target-ber: bit error rates must be in [0, 1]"),
    ("report-target-fractional-kflips", ["report", "{run}/c", "--target-ber", "2.5", "--fault-model", "kflips"],
     None, "--target-ber: the kflips fault model takes whole flip counts"),
    ("report-target-zero", ["report", "{run}/c", "--target-ber", "0"], None, "--target-ber: must be above 0"),
    ("report-target-with-out", ["report", "{run}/c", "--target-ber", "0.01", "--out", "{run}/r"], None,
     "drop --out"),
    # campaign files: refused before any task, naming the key
    ("campaign-key-twice", RUN_C,
     _write("c.yaml", CAMPAIGN + "software: {ber: [0, 0.01], maps: 2}\n"), "key 'software' appears twice"),
    ("campaign-binary-file", RUN_C, _write("c.yaml", bytes(range(256))),
     "not a text file"),
    ("campaign-yaml-error-place", RUN_C,
     _write("c.yaml", "name: c\ngrid: {models: [tfc\n"), "at line"),
    ("campaign-name-dotdot", ["campaign", "{run}/c.yaml"], _write("c.yaml", CAMPAIGN.replace("name: c", "name: '..'")),
     "campaign name: must name a folder of its own"),
    ("campaign-name-nul", RUN_C,
     _write("c.yaml", CAMPAIGN.replace("name: c", 'name: "a\\0b"')), "campaign name"),
    ("campaign-loss-name-a-number", RUN_C,
     _write("c.yaml", GRID + "grid: {models: [tfc_w2a2], losses: [{name: 5}]}\n"), "needs a 'name'"),
    ("campaign-loss-without-name", RUN_C,
     _write("c.yaml", GRID + "grid: {models: [tfc_w2a2], losses: [{margin: 8}]}\n"), "needs a 'name'"),
    ("campaign-margin-text", RUN_C,
     _write("c.yaml", GRID + "grid: {models: [tfc_w2a2], losses: [{name: mcel, margin: '8'}]}\n"),
     "'margin' must be a number"),
    ("campaign-test-images-bool", RUN_C,
     _write("c.yaml", GRID + "grid: {models: [{name: tfc_w2a2, test_images: true}], losses: [ce]}\n"),
     "test_images must be a whole number"),
    ("campaign-train-config-broken", RUN_C,
     lambda r: (_write("c.yaml", CAMPAIGN + "train: {config: " + str(r / "t.yaml") + "}\n")(r),
                _write("t.yaml", "model: [unclosed\n")(r)), "campaign train.config: config file"),
    ("campaign-train-config-a-list", RUN_C,
     lambda r: (_write("c.yaml", CAMPAIGN + "train: {config: " + str(r / "t.yaml") + "}\n")(r),
                _write("t.yaml", "- 1\n- 2\n")(r)), "the top level must be a mapping"),
    ("campaign-train-set-whole-model", RUN_C,
     _write("c.yaml", CAMPAIGN + "train: {set: {model: tfc_w1a1}}\n"), "campaign train.set: 'model' is the grid's"),
    ("campaign-evidence-seed-not-trained", RUN_C,
     _write("c.yaml", CAMPAIGN + "evidence: {seeds: [5]}\n"), "evidence.seeds: 5 is not a training seed"),
    ("campaign-imported-without-hardware", RUN_C,
     _write("c.yaml", GRID + "grid: {imported: [somewhere]}\n"), "add a hardware section"),
    ("campaign-fault-training-unknown", RUN_C,
     _write("c.yaml", GRID + "grid: {models: [tfc_w2a2], losses: [{name: ce, fault_training: "
            "{model: bogus, rate: 0.01}}]}\n"), "unknown fault model 'bogus'"),
    ("campaign-asym-past-one", RUN_C,
     _write("c.yaml", CAMPAIGN.replace("software: {ber: [0]", "software: {fault_models: ['asym:p10=5'], ber: [0, 0.5]")),
     "rate x p10 must be at most 1"),
    ("campaign-asym-infinite", RUN_C,
     _write("c.yaml", CAMPAIGN.replace("software: {ber: [0]", "software: {fault_models: ['asym:p10=inf'], ber: [0]")),
     "finite"),
    ("campaign-folding-missing", RUN_C,
     _write("c.yaml", CAMPAIGN + "hardware: {ber: [0], maps: 1, images: 1, folding: /nonexistent/f.json}\n"),
     "campaign hardware.folding: /nonexistent/f.json: no such file"),
    ("campaign-folding-malformed", RUN_C,
     _write("c.yaml", CAMPAIGN + "hardware: {ber: [0], maps: 1, images: 1, folding: {MVAU_0: 4}}\n"),
     "node 'MVAU_0' must map to attributes"),
    ("campaign-hardware-only-empty", RUN_C,
     _write("c.yaml", CAMPAIGN + "hardware: {ber: [0], maps: 1, images: 1, only: {losses: []}}\n"),
     "campaign hardware.only.losses: List should have at least 1 item"),
    ("campaign-out-under-a-file", ["campaign", "{run}/c.yaml", "--out", "{run}/c.yaml/sub"],
     _write("c.yaml", CAMPAIGN), "is a file, not a folder"),
    ("campaign-resume-another-campaign", ["campaign", "{run}/c.yaml", "--out", "{run}/old", "--resume"],
     lambda r: (_write("c.yaml", CAMPAIGN)(r), _write("old/campaign.yaml", "name: other\n")(r),
                _write("old/results.sqlite", b"")(r)), "holds campaign 'other', not 'c'"),
    # experiment: its flags, not the campaign keys it becomes
    ("experiment-report-only-without-campaign", ["experiment", "--report-only", "--models", "tfc_w2a2", "--variants",
                                                "ce", "--out", "{run}/none", "--docs", "{run}/docs"],
     _write("docs/results.md", "a finished report"), "holds no experiment campaign"),
    ("experiment-into-another-campaign", ["experiment", "--models", "tfc_w2a2", "--variants", "ce", "--out",
                                          "{run}/old", "--docs", "{run}/docs"],
     lambda r: (_write("old/campaign.yaml", "name: other\n")(r), _write("old/results.sqlite", b"")(r)),
     "holds campaign 'other', not 'experiment'"),
    ("experiment-docs-under-a-file", ["experiment", "--models", "tfc_w2a2", "--variants", "ce", "--out", "{run}/exp",
                                      "--docs", "{run}/train/config.yaml/docs"], None, "--docs"),
    # a trial run with the default --docs replaced the committed four-model report
    ("experiment-docs-of-another-experiment", ["experiment", "--models", "tfc_w2a2", "--variants", "ce", "--out",
                                               "{run}/exp", "--docs", "{run}/docs"],
     _write("docs/results.json", '{"settings": {"out": "runs/experiment10"}}'),
     "holds the report of another experiment (runs/experiment10): pass --force"),
    ("experiment-negative-limit", ["experiment", "--limit-train", "-5", "--out", "{run}/exp"], None,
     "--limit-train must be >= 0"),
    ("experiment-negative-seed", ["experiment", "--seed", "-1", "--out", "{run}/exp"], None, "--seed must be >= 0"),
    ("experiment-negative-train-seed", ["experiment", "--train-seed", "-1", "--out", "{run}/exp"], None,
     "--train-seed must be >= 0"),
    ("experiment-rate-twice", ["experiment", "--rates", "0,0.01,0.01", "--out", "{run}/exp"], None,
     "--rates repeats a rate"),
    ("experiment-no-models", ["experiment", "--models", "", "--out", "{run}/exp"], None, "--models names nothing"),
    ("experiment-model-twice", ["experiment", "--models", "tfc_w2a2,tfc_w2a2", "--out", "{run}/exp"], None,
     "--models names tfc_w2a2 twice"),
    # --restore: a results file of another campaign, a torn one, a missing one; nothing is created
    ("campaign-restore-missing", ["campaign", "{run}/c.yaml", "--out", "{run}/c", "--restore", "{run}/r.json"],
     _write("c.yaml", CAMPAIGN), "no such file"),
    ("campaign-restore-torn", ["campaign", "{run}/c.yaml", "--out", "{run}/c", "--restore", "{run}/r.json"],
     lambda r: (_write("c.yaml", CAMPAIGN)(r), _write("r.json", '{"format": "mcel-campaign-res')(r)),
     "not a campaign results file"),
    ("campaign-restore-other-campaign", ["campaign", "{run}/c.yaml", "--out", "{run}/c", "--restore",
                                         "{run}/r.json"],
     lambda r: (_write("c.yaml", CAMPAIGN)(r), _write("r.json", json.dumps(
         {"format": "mcel-campaign-results/1", "campaign": "other", "rows": [], "sweep_checkpoints": {}}))(r)),
     "holds campaign 'other'"),
    ("unknown-command", ["frobnicate"], None, "frobnicate"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    run = tmp_path_factory.mktemp("bad") / "run"
    run_train(load_config(SMOKE, ["epochs=1"]), run, show_progress=False)
    return run


@pytest.mark.parametrize("case, argv, setup, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(trained, tmp_path, capsys, case, argv, setup, expected):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    if setup is not None:
        setup(run)
    before = _tree(tmp_path)
    try:
        code = main([a.replace("{run}", str(run)) for a in argv])
    except SystemExit as exc:  # argparse's errors (one line too: mcel_train/one_line_parser.py)
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {err!r}"
    expected = expected.replace("{run}", str(run))
    assert expected in lines[0], f"{case}: {lines[0]!r} does not name {expected!r}"
    assert _tree(tmp_path) == before, f"{case}: files changed"


def test_min_max_runs_sweep_but_refuse_to_build(tmp_path, capsys):
    """The paper's min/max quantizer is software-only: sweeps work, export and build refuse
    it in one line and write nothing."""
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    run = tmp_path / "run"
    run_train(load_config(SMOKE, ["epochs=1", "model.weight_scaling=minmax"]), run, show_progress=False)
    for command in (["export", str(run)], ["build", str(run)]):
        before = _tree(tmp_path)
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "software-only" in err and "weight_scaling" in err
        assert _tree(tmp_path) == before
    assert main(["sweep", str(run), "--ber", "0,0.05", "--maps", "3", "--quiet"]) == 0
    record = json.loads((run / "sweep" / "sw_ber.json").read_text())
    assert all(m["zero_point"] is not None for m in record["memories"][:-1])  # unsigned codes
    assert record["results"][1]["mean"] < record["results"][0]["mean"]  # the flips did something


@pytest.mark.parametrize("argv, expected", [
    (["{tmp}/campaign", "--evidence-maps", "0"], "--evidence-maps"),
    (["{tmp}/campaign", "--evidence-images", "-3"], "--evidence-images"),
    (["{tmp}/campaign", "--rate", "1.5"], "--rate"),
    (["{tmp}/campaign", "--rate", "abc"], "--rate"),
    (["{tmp}/campaign"], "campaign"),  # not a campaign folder
])
def test_paper_reproduction_bad_input_is_one_line_and_writes_no_doc(tmp_path, capsys, argv, expected):
    from flows.paper_reproduction import main as reproduce

    (tmp_path / "campaign").mkdir()
    before = _tree(tmp_path)
    try:
        code = reproduce([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--docs", str(tmp_path / "docs")])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert _tree(tmp_path) == before


def test_a_simulation_that_yields_no_results_is_exit_1_with_the_logs_tail(trained, monkeypatch, capsys):
    """Not bad input but a failed simulator (hw_sim/commands.py): exit 1, ``error:`` and the
    log's tail that diagnoses it, no traceback (``--debug`` re-raises)."""
    import hw_sim.sim
    from hw_sim.sim import SimulationError

    def no_results(*args, **kwargs):
        raise SimulationError("the cocotb simulation produced no results; last log:\nfirst log line\n%Error: died")

    monkeypatch.setattr(hw_sim.sim, "run_sim", no_results)
    assert main(["sim", str(trained)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the cocotb simulation produced no results") and "%Error: died" in err
    with pytest.raises(SimulationError):
        main(["--debug", "sim", str(trained)])


def test_an_existing_build_is_named_as_the_user_gave_the_run(trained, tmp_path, monkeypatch, capsys):
    """The refusal names the run's build folder relative, as typed: it printed the resolved,
    absolute path of the machine."""
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "run" / "build").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["build", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {Path('run', 'build')} exists; pass --force to replace it"
