"""Benchmark: the batched integer fault evaluator against the per-map Brevitas way.

On a run folder (``--run``, conv networks included; default a briefly trained sfc_w2a2 on
Fashion-MNIST), the test set (``--test-images``: its first N) and ``--maps`` flip maps at each
of ``--rates`` (default 0.01), it measures (map x image) evaluations per second for

- ``intnet``: :class:`mcel_train.evaluate.MapEvaluator` (all maps batched, sparse layer 0),
  its products on oneDNN's int8 kernels (``dense``) and in float32 as before
  (``dense_float``, :mod:`mcel_train.int8_products`);
- ``brevitas``: per map, deepcopy the Brevitas model, install the faulty integer weights
  (scale fixed) and run its forward (reference (a));
- ``roof``: a plain float32 matmul chain of the same shapes, one map at a time (reference (b)).

It asserts that every prediction of every map is the same on the dense, difference and auto
paths, and equals the Brevitas reference on the first ``--brevitas-maps`` maps (Brevitas per
map is the slow way; 0 checks all), prints a table and writes a JSON record.

    .venv/bin/python bench/sw_faults.py [--run runs/NAME] [--maps 100] [--rates 1e-4,1e-3,0.02]

Every rate's maps also go through the difference evaluator (:mod:`mcel_train.difference`) and
the ``auto`` choice; the bench asserts that all paths predict the same for every map and
image, and records the fraction of (map, image) pairs that still differ after each layer.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flags import count, parser, record_path, run_folder, run_main
from flags import rates as rate_list
from record import write_record  # bench/record.py (the script's folder is on sys.path)

from mcel_train.data import load_dataset
from mcel_train.evaluate import MapEvaluator, predict
from mcel_train.fault_training import override_quant_weights
from mcel_train.faults.apply import apply_map
from mcel_train.faults.generate import generate_map
from mcel_train.intnet import from_brevitas
from mcel_train.models import parse_model_name
from mcel_train.quicktrain import model_inputs, quick_train
from mcel_train.runio import load_run
from mcel_train.stage import run_name
from mcel_train.train import EVAL_BATCH


def brevitas_way(model, net, mems, maps, x, batch: int = EVAL_BATCH) -> np.ndarray:
    """Reference (a): per map a deepcopy of the Brevitas model with the faulty weights."""
    preds = []
    for fmap in maps:
        faulty = apply_map(net.contents(), mems, fmap)
        m = copy.deepcopy(model)
        override_quant_weights(m, {i: faulty[mem.name] for i, mem in enumerate(mems)})
        with torch.no_grad():
            out = []
            for lo in range(0, len(x), batch):
                logits, scale = m.logits_and_scale(x[lo : lo + batch])
                out.append(predict(torch.round(logits / scale)))
        preds.append(torch.cat(out).numpy())
    return np.stack(preds)


def roof(net, n_maps: int, x: torch.Tensor) -> None:
    """Reference (b): the plain float32 matmul (and conv + pool) chain of the same shapes, map by map."""
    ws = []
    for layer in net.layers:
        w = torch.as_tensor(layer.weight, dtype=torch.float32)
        if layer.conv is not None:
            ws.append(w.reshape(w.shape[0], layer.conv.in_channels, *layer.conv.kernel).contiguous())
        else:
            ws.append(w.T.contiguous())
    with torch.no_grad():
        for _ in range(n_maps):
            h = x
            for i, (layer, w) in enumerate(zip(net.layers, ws, strict=True)):
                if layer.conv is not None:
                    h = F.conv2d(h, w, padding=layer.conv.padding)
                else:
                    h = h.flatten(1) @ w
                if i < len(ws) - 1:
                    h = torch.clamp(torch.round(h * 0.01), 0, 3)
                if layer.pool:
                    h = F.max_pool2d(h, layer.pool)
            h.argmax(-1)


def unchanged_reach(diff) -> list[dict]:
    """Per layer but the logit layer, how close the clean accumulators sit to a threshold: the
    median of ``min(-lo, hi)`` (the smallest accumulator change that can move the output) and
    the fraction of outputs an accumulator change of 1 or of 2 can move. Where these are large,
    every changed input must be checked against most outputs, whatever the evaluator. (A conv
    layer of the compiled step keeps no ranges in its clean state: they are counted here.)"""
    out = []
    for i, st in enumerate(diff._clean(0)[:-1]):
        lo, hi = (st.lo, st.hi) if st.lo is not None else diff.net.layers[i].post.unchanged_range(
            st.acc.to(diff.dtypes[i]))
        reach = torch.minimum(-lo, hi).flatten().numpy()
        out.append({"layer": i, "median_steps_to_threshold": float(np.median(reach)),
                    "moved_by_a_change_of_1": float((reach < 1).mean()),
                    "moved_by_a_change_of_2": float((reach < 2).mean())})
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, help="run folder with train/model.pt (default: quick-train)")
    p.add_argument("--maps", type=count(1), default=100)
    p.add_argument("--rates", type=rate_list, default="0.01", help="comma-separated bit error rates, one row each")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--steps", type=count(1), default=300, help="quick-training steps without --run")
    p.add_argument("--roof-maps", type=count(0), default=0, help="maps timed for the roof (0: all)")
    p.add_argument("--brevitas-maps", type=count(0), default=0,
                   help="maps checked against the per-map Brevitas reference (0: all)")
    p.add_argument("--threads", type=count(1), default=1,
                   help="torch threads for every method (1: steadiest on a shared machine)")
    p.add_argument("--test-images", type=count(0), default=0, help="first N test images (0 = all)")
    p.add_argument("--rows", type=count(1), default=8192, help="evaluator (map, image) rows per step")
    p.add_argument("--no-compile", action="store_true", help="eager threshold post-ops")
    p.add_argument("--repeat", type=count(1), default=1,
                   help="time dense, difference and auto this many times each, interleaved, and keep the "
                        "fastest (a shared machine's noise only ever adds time); auto gets a fresh evaluator "
                        "each time, so every run includes its probe")
    p.add_argument("--out", type=record_path, default=Path("runs/bench/sw_faults.json"))
    args = p.parse_args(argv)
    if args.brevitas_maps > args.maps:  # Brevitas' time per map would be divided by maps never run
        p.error(f"argument --brevitas-maps: {args.brevitas_maps} is more than --maps {args.maps}")
    torch.set_num_threads(args.threads)
    rates = args.rates

    if args.run:
        run = load_run(args.run)
        model, spec = run.model, run.spec
        x, y = run.test_set()
        source = run_name(args.run)
    else:
        spec = parse_model_name("sfc_w2a2")
        ds = load_dataset("fashion_mnist")
        print(f"quick-training sfc_w2a2 for {args.steps} steps on Fashion-MNIST ...", flush=True)
        torch.manual_seed(args.seed)
        model = quick_train(spec, ds, steps=args.steps)
        x, y = model_inputs(ds.test.images, spec), ds.test.labels
        source = f"quick_train({args.steps} steps)"
    if args.test_images:
        x, y = x[: args.test_images], y[: args.test_images]
    net = from_brevitas(model)
    mems = net.memories()
    n = len(y)
    compile_post = not args.no_compile
    dense_ev = MapEvaluator(net, x, y, rows=args.rows, compile_post=compile_post, method="dense")
    float_ev = MapEvaluator(net, x, y, rows=args.rows, compile_post=compile_post, method="dense", int8=False)
    diff_ev = MapEvaluator(net, x, y, rows=args.rows, compile_post=compile_post, method="difference")
    _, t_diff_setup = timed(lambda: diff_ev.difference)  # the clean state: once per test set

    def new_auto(like: MapEvaluator | None = None, rate: float = 0.0) -> MapEvaluator:
        """An auto evaluator; ``like``: one whose state before its call at ``rate`` it copies
        (the dense time and the choices at the rates before), for a repeated timing."""
        ev = MapEvaluator(net, x, y, rows=args.rows, compile_post=compile_post, method="auto")
        ev._difference = diff_ev.difference  # the clean state is shared, as the test set is
        if like is not None:
            ev._dense_per_map = before_rate[0]
            ev._choice = {k: c for k, c in like._choice.items() if k != ("flip", rate)}
        return ev

    auto_ev = new_auto()
    before_rate: list[float | None] = [None]  # auto_ev's dense time before the current rate's call
    rows_out = []
    for rate in rates:
        maps, t_gen = timed(lambda r=rate: [generate_map(mems, "flip", r, args.seed, i) for i in range(args.maps)])
        first, t_warm = timed(dense_ev.evaluate, maps)  # first call includes torch.compile
        dense, t_dense = timed(dense_ev.evaluate, maps)
        assert np.array_equal(first.predictions, dense.predictions)
        timed(float_ev.evaluate, maps)  # its first call, as the dense one's
        dense_float, t_float = timed(float_ev.evaluate, maps)
        assert np.array_equal(dense_float.predictions, dense.predictions), "int8 and float products differ"
        _, t_diff_warm = timed(diff_ev.evaluate, maps[:2])  # first call loads (or compiles) the kernels
        before = diff_ev.difference.active_after.copy()
        changed_before = diff_ev.difference.changed_after.copy()
        seconds_before = diff_ev.difference.seconds_in.copy()
        diff, t_diff = timed(diff_ev.evaluate, maps)
        active_pairs = diff_ev.difference.active_after - before
        active = active_pairs / (args.maps * n)
        changed = (diff_ev.difference.changed_after - changed_before) / np.maximum(active_pairs, 1)
        layer_seconds = diff_ev.difference.seconds_in - seconds_before
        widths = [st.out[0].numel() for st in diff_ev.difference._clean(0)]  # outputs per image
        before_rate[0] = auto_ev._dense_per_map
        auto, t_auto = timed(auto_ev.evaluate, maps)
        auto_choice = auto_ev._choice.get(("flip", rate))
        for _ in range(args.repeat - 1):
            t_dense = min(t_dense, timed(dense_ev.evaluate, maps)[1])
            t_float = min(t_float, timed(float_ev.evaluate, maps)[1])
            t_diff = min(t_diff, timed(diff_ev.evaluate, maps)[1])
            t_auto = min(t_auto, timed(new_auto(auto_ev, rate).evaluate, maps)[1])
        n_brev = args.brevitas_maps or args.maps
        ref, t_brev = timed(brevitas_way, model, net, mems, maps[:n_brev], x)
        for name, res in (("difference", diff), ("auto", auto)):
            assert np.array_equal(res.predictions, dense.predictions), f"{name} predictions differ from dense"
        assert np.array_equal(ref, dense.predictions[:n_brev]), "predictions differ from Brevitas"
        roof_maps = args.roof_maps or args.maps
        _, t_roof = timed(roof, net, roof_maps, x)
        work = args.maps * n
        row = {
            "rate": rate,
            "faults_per_map_mean": float(np.mean([len(f) for f in maps])),
            "mean_accuracy": float(dense.accuracy.mean()),
            "seconds": {"generate_maps": t_gen, "dense_first_call_incl_compile": t_warm, "dense": t_dense,
                        "dense_float": t_float, "difference_first_two_maps_incl_compile": t_diff_warm,
                        "difference": t_diff, "auto": t_auto, "brevitas_per_map": t_brev,
                        "matmul_roof": t_roof},
            "map_images_per_s": {"dense": work / t_dense, "dense_float": work / t_float,
                                 "difference": work / t_diff, "auto": work / t_auto,
                                 "brevitas_per_map": n_brev * n / t_brev, "matmul_roof": roof_maps * n / t_roof},
            "difference_vs_dense": t_dense / t_diff,
            # the products in float32, as the dense path ran them before the int8 kernels
            "dense_int8_vs_float": t_float / t_dense,
            "difference_vs_dense_float": t_float / t_diff,
            "auto_vs_dense": t_dense / t_auto,
            "auto_choice": auto_choice,
            "dense_vs_brevitas": (work / t_dense) / (n_brev * n / t_brev),
            # where the difference path's time goes: the fraction of (map, image) pairs that
            # still differ from the clean network after each layer
            "difference_active_after_layer": [float(a) for a in active],
            # and, per differing (map, image) pair, the fraction of the layer's outputs that
            # changed: the part of the next layer's inputs a difference path must redo
            "difference_changed_fraction_after_layer": [
                float(c / w) for c, w in zip(changed[:-1], widths[:-1], strict=True)],
            # and the difference path's seconds in each layer's steps, then in the dense passes
            # that finish maps whose changes became dense (the rest: clean state, bookkeeping)
            "difference_seconds_in_layer": [float(t) for t in layer_seconds[:-1]],
            "difference_seconds_dense_finish": float(layer_seconds[-1]),
            "brevitas_maps_checked": n_brev,
            "identical_predictions": True,
        }
        rows_out.append(row)
        print(f"p={rate:g} (~{row['faults_per_map_mean']:.0f} flips/map, mean acc {row['mean_accuracy']:.4f}): "
              f"dense {t_dense:.2f} s (float products {t_float:.2f} s), "
              f"difference {t_diff:.2f} s ({row['difference_vs_dense']:.2f}x), "
              f"auto {t_auto:.2f} s ({row['auto_vs_dense']:.2f}x, chose {row['auto_choice']}), "
              f"brevitas {t_brev:.2f} s for {n_brev} maps; still differing after each layer: "
              + ", ".join(f"{a:.0%}" for a in active) + "; outputs changed per differing image: "
              + ", ".join(f"{c:.1%}" for c in row["difference_changed_fraction_after_layer"])
              + "; seconds per layer: " + ", ".join(f"{t:.2f}" for t in layer_seconds[:-1])
              + f", dense finish {layer_seconds[-1]:.2f}", flush=True)
    record = {
        "model": spec.to_dict(),
        "source": source,
        "maps": args.maps,
        "seed": args.seed,
        "images": n,
        "difference_setup_s": t_diff_setup,
        "unchanged_reach": unchanged_reach(diff_ev.difference),
        "rows": rows_out,
        "torch_threads": torch.get_num_threads(),
        "evaluator_rows": args.rows,
        "repeat": args.repeat,
        "compiled_post_ops": compile_post,
        "brevitas_eval_batch": EVAL_BATCH,
    }
    print("every prediction of every map identical across dense, difference, auto and the Brevitas reference")
    write_record(args.out, record, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
