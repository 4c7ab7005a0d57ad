"""The whole toy-world PURE pipeline, timed stage by stage (target: <= 30 s on 2 CPU cores).

Stages: load the shipped toy model; generate the ToyWorld test split; then ``puretools.Pipeline``
with the library's defaults: the top-n_ref references of every channel of ``toyworld.LAYER``;
circuits of every neuron of that layer from ``toyworld.LOWER_LAYER``; virtual neurons (k-means
with k=2 by default, or ``--k auto``) for every neuron. The target counts collection + circuits +
clustering; the table also shows the total with model loading and data generation.

An untimed check compares the circuits of two neurons with zennit-crp's CondAttribution
(``MAX_ABS_DIFF`` line).

Examples
--------
::

    python benchmarks/bench_pipeline.py
    python benchmarks/bench_pipeline.py --k auto
    python benchmarks/bench_pipeline.py --quick   # smoke run; falls back to a small random ResNet-18
                                                  # when the toy checkpoint is not built yet
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import common
from common import DIFF_LABEL, Measure, Skip, load_setup, reference_circuits

import puretools as pt

TARGET_S = 30.0


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--model", default="toy", choices=["toy", "resnet18", "resnet50"],
                   help="toy (default) or a random ResNet on random images (for smoke runs)")
    p.add_argument("--size", type=int, default=None, help="image size for the random ResNet data")
    p.add_argument("--n-images", type=int, default=1000, help="random images for the ResNet fallback")
    p.add_argument("--n-ref", type=int, default=100)
    p.add_argument("--k", default="2", help="virtual neurons per neuron: an int or 'auto' (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fit-neurons", type=int, default=None,
                   help="cluster only the first this many neurons (default: all)")
    common.add_threads(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy-weights", default="default", help="toy checkpoint (default: the shipped one)")
    common.add_json(p)
    common.add_quick(p, help="smoke run: 300 toy images, or a random ResNet-18 at 32 px if the toy world is missing")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict | None:
    device = pt.checks.resolve_device(args.device)
    info = common.start(f"== toy-world pipeline benchmark ({device}) ==", device, args.threads)
    stages: list[tuple[str, float, float]] = []
    model_name = args.model
    t0 = time.perf_counter()
    try:
        model, dataset, layer, lower, desc = load_setup(
            model_name, args.size, args.n_images, args.seed, device,
            max_images=300 if args.quick else None, toy_weights=args.toy_weights)
    except Skip as err:
        print(f"SKIPPED {model_name}: {err}. Build the toy world first (python -m puretools toy train).")
        if not args.quick:
            return None
        model_name = "resnet18"
        print("--quick: running the same pipeline on a random ResNet-18 (32 px, 200 images) instead.")
        model, dataset, layer, lower, desc = load_setup(model_name, 32, 200, args.seed, device)
        args.n_ref, args.fit_neurons = min(args.n_ref, 10), args.fit_neurons or 16
    setup_s = time.perf_counter() - t0
    if model_name == "toy" and not args.quick:
        # ToyWorld generates lazily in parts; touch every item so generation is not billed to collection
        t = time.perf_counter()
        _ = dataset[len(dataset) - 1]
        setup_s += time.perf_counter() - t
    stages.append(("model + data set (generation)", setup_s, float("nan")))
    busies = ["n/a"]
    n_ref = min(args.n_ref, len(dataset))
    print(f"data: {desc}; layer {layer!r} <- {lower!r}, n_ref {n_ref}, k={args.k}")

    k = args.k if args.k == "auto" else int(args.k)
    pipe = pt.Pipeline(model, dataset, layer, lower, n_ref=n_ref, k=k, device=device)  # the library's defaults
    with Measure(device) as m:
        refs = pipe.references()
    stages.append((f"references ({len(dataset)} images)", m.wall, m.cpu))
    busies.append(m.busy())
    with warnings.catch_warnings(record=True) as caught, Measure(device) as m:
        warnings.simplefilter("always", RuntimeWarning)
        circuits = pipe.circuits()
    dead = [str(w.message) for w in caught if "dead" in str(w.message)]
    stages.append((f"circuits ({refs.n_channels} neurons x {n_ref}, {pipe.method})", m.wall, m.cpu))
    busies.append(m.busy())
    fit_neurons = None if args.fit_neurons is None else list(range(min(args.fit_neurons, refs.n_channels)))
    with warnings.catch_warnings(), Measure(device) as m:
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning on dead (all-zero) neurons
        vn = pipe.virtual_neurons(neurons=fit_neurons)
    stages.append((f"virtual neurons ({len(vn.ks)} neurons, k={args.k})", m.wall, m.cpu))
    busies.append(m.busy())

    pipeline_s = sum(s[1] for s in stages[1:])
    total_s = sum(s[1] for s in stages)
    print()
    print(f"{'stage':52s} {'wall s':>8s} {'CPU s':>8s} {'others busy':>12s}")
    print("-" * 83)
    for (name, wall, cpu), busy in zip(stages, busies):
        print(f"{name:52s} {wall:8.2f} {cpu:8.2f} {busy:>12s}")
    print("-" * 83)
    print(f"{'collection + circuits + clustering':52s} {pipeline_s:8.2f}")
    print(f"{'total, with model loading and data generation':52s} {total_s:8.2f}")
    if dead:
        print(f"note: {dead[0]}")
    print(f"virtual neurons per neuron: {vn.ks[:12]}{' ...' if len(vn.ks) > 12 else ''}")

    sample = list(range(min(2, refs.n_channels)))
    ref = reference_circuits(model, dataset, layer, lower, refs, sample, device)
    diff = (circuits[sample].double() - ref.double()).abs().max().item()
    print(f"{DIFF_LABEL} (circuits of neurons {sample} vs zennit-crp CondAttribution, untimed): {diff:.3e}")
    met = "met" if pipeline_s <= TARGET_S else "NOT met"
    print(f"PIPELINE {pipeline_s:.2f} s (target <= {TARGET_S:.0f} s: {met}; {model_name})")
    result = {"model": model_name, "data": desc, "layer": layer, "lower_layer": lower, "n_ref": n_ref,
              "k": args.k, "stages": [{"stage": s, "wall_s": w, "cpu_s": c} for s, w, c in stages],
              "pipeline_s": pipeline_s, "total_s": total_s, "max_abs_diff": diff, "machine": info,
              "argv": sys.argv[1:]}
    common.write_json(args.json, result, default=str)
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
