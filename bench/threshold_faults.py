"""Benchmark: threshold-memory faults through the difference evaluator's compiled steps, against
the per-map tensor steps they took before, and against the dense path.

Each map flips weights at ``--rate`` and changes the thresholds of ``--channels`` output
channels of one layer with thresholds (the maps take those layers in turn), as a
threshold-memory fault does: the layer gets a faulty post-op. The compiled conv step pools such
a channel at every position and tests each window against the faulty thresholds' range of its
clean level; the compiled dense step counts such an output anew for every image of the map;
the tensor steps (``DifferenceEvaluator._conv_step``, ``_dense_step``) recompute the map's whole
layer. Both must give the same logits for every map and image, and equal the dense path's
(asserted, and timed, on the first ``--dense-maps`` maps: the dense path runs a map with a
faulty post-op on its own). Writes a JSON record.

    .venv/bin/python bench/threshold_faults.py --run runs/vgg3_w4a4_paper --test-images 500
    .venv/bin/python bench/threshold_faults.py --run runs/sfc_w2a2 --test-images 0
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from flags import count, parser, rate, record_path, run_folder, run_main
from record import write_record  # bench/record.py (the script's folder is on sys.path)
from trained import trained_network  # bench/trained.py

from mcel_train import difference
from mcel_train.difference import DifferenceEvaluator
from mcel_train.evaluate import MapEvaluator
from mcel_train.faults.generate import generate_map
from mcel_train.intnet import ThresholdPostOp
from mcel_train.stage import run_name


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", type=run_folder, required=True,
                   help="run folder (train/model.pt) of a network with thresholds")
    p.add_argument("--test-images", type=count(0), default=500, help="first N test images (0 = all)")
    p.add_argument("--maps", type=count(1), default=16)
    p.add_argument("--rate", type=rate, default=1e-4, help="weight bit error rate of every map")
    p.add_argument("--channels", type=count(1), default=2, help="output channels with faulty thresholds per map")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--repeat", type=count(1), default=2, help="fastest of this many interleaved timings")
    p.add_argument("--dense-maps", type=count(1), default=2, help="maps checked against the dense path")
    p.add_argument("--out", type=record_path, default=Path("runs/bench/threshold_faults.json"))
    args = p.parse_args(argv)
    if args.dense_maps > args.maps:  # the dense time per map would be divided by maps never run
        p.error(f"argument --dense-maps: {args.dense_maps} is more than --maps {args.maps}")
    net, x, y = trained_network(args.run, args.test_images)
    layers = [i for i, layer in enumerate(net.layers) if type(layer.post) is ThresholdPostOp]
    if not layers:
        print(f"error: {args.run} has no layer with thresholds; pass --run with a quantized network", file=sys.stderr)
        return 2
    mems = net.memories()
    rng = np.random.default_rng(args.seed)
    maps, posts = [], []
    for k in range(args.maps):
        i = layers[k % len(layers)]
        post = net.layers[i].post
        t = post.thresholds.clone()
        chans = rng.choice(t.shape[0], size=min(args.channels, t.shape[0]), replace=False)
        t[chans] += torch.as_tensor(rng.integers(-6, 7, t[chans].shape), dtype=t.dtype)
        posts.append({i: ThresholdPostOp(t, post.out_scale, post.out_bias, post.out_mult, post.sign)})
        maps.append(generate_map(mems, "flip", args.rate, args.seed, k))
    diff = DifferenceEvaluator(net, x)
    compiled_form = difference._only_thresholds_differ
    seconds: dict[str, float] = {}
    results = {}
    diff.run_many(maps[:2], posts[:2])  # loads the compiled kernels
    for _ in range(args.repeat):
        for name, form in (("compiled_step", compiled_form), ("tensor_step", lambda *a: False)):
            difference._only_thresholds_differ = form  # the tensor step is what such maps took before
            try:
                t0 = time.perf_counter()
                results[name] = diff.run_many(maps, posts)
                seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
            finally:
                difference._only_thresholds_differ = compiled_form
    for a, b in zip(results["compiled_step"], results["tensor_step"], strict=True):
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.logits, b.logits), "the two steps differ"
    dense_ev = MapEvaluator(net, x, y, method="dense")
    dense_ev.logits(maps[:1], posts[:1])  # compiles the post-ops
    dense_seconds = float("inf")
    for _ in range(args.repeat):  # the fastest of --repeat, as the two steps above
        t0 = time.perf_counter()
        dense = dense_ev.logits(maps[: args.dense_maps], posts[: args.dense_maps])
        dense_seconds = min(dense_seconds, time.perf_counter() - t0)
    dense_per_map = dense_seconds / args.dense_maps
    clean = np.rint(diff.clean_logits.numpy()).astype(np.int64)
    for k, res in enumerate(results["compiled_step"][: args.dense_maps]):
        got = clean.copy()
        got[res.rows] = res.logits
        assert np.array_equal(got, dense[k]), f"map {k} differs from the dense path"
    ratio = seconds["tensor_step"] / seconds["compiled_step"]
    vs_dense = dense_per_map * args.maps / seconds["compiled_step"]
    record = {
        "run": run_name(args.run), "images": len(y), "maps": args.maps, "rate": args.rate,
        "channels": args.channels, "seed": args.seed, "repeat": args.repeat, "threshold_layers": layers,
        "conv_layers": [i for i in layers if net.layers[i].conv is not None],
        "seconds": seconds, "compiled_vs_tensor": ratio, "dense_seconds_per_map": dense_per_map,
        "compiled_vs_dense": vs_dense, "dense_maps_checked": args.dense_maps,
        "identical_logits": True,     }
    print(f"{args.maps} maps, {len(y)} images, weights at {args.rate:g} and {args.channels} faulty threshold "
          f"channels per map: compiled steps {seconds['compiled_step']:.2f} s, tensor steps "
          f"{seconds['tensor_step']:.2f} s ({ratio:.1f}x), dense path {dense_per_map:.2f} s per map "
          f"({vs_dense:.1f}x the compiled steps' time); identical logits, equal to dense on "
          f"{args.dense_maps} maps")
    write_record(args.out, record, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
