"""Explorer update latency on the toy world: time per slider move (target: < 1 s on 2 cores).

    python benchmarks/bench_explorer.py [--quick]

Prints the one-off precomputation time (with and without the virtual-heatmap view) and, for
every kind of update (neuron, k, method, patch mode, view), the time from the value change to
the redrawn image.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import common
import torch

import puretools as pt
from puretools import toyworld
from puretools.widgets import Explorer, prepare_explorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_quick(parser, help="few neurons, PCA instead of UMAP")
    common.add_threads(parser, default=2, help="torch threads (default 2; 1 on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pt.load_model("toy")
    data = toyworld.ToyWorld(split="test")
    cache = tempfile.mkdtemp()
    t = time.perf_counter()
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=100, progress=False)
    neurons = [0, 1, 2] if args.quick else None
    explorer_data = prepare_explorer(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=neurons,
        concept_labels=data.labels, concept_names=toyworld.CONCEPTS, denormalize=toyworld.denormalize,
        umap=not args.quick, cache_dir=cache, progress=False,
    )
    precompute = time.perf_counter() - t
    torch.set_num_threads(args.threads)  # importing UMAP's numba may have changed it
    t = time.perf_counter()  # the same again from the cache, without the heatmap view, to price it
    prepare_explorer(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=neurons,
        concept_labels=data.labels, concept_names=toyworld.CONCEPTS, denormalize=toyworld.denormalize,
        umap=not args.quick, cache_dir=cache, progress=False, heatmaps=False,
    )
    cached_without = time.perf_counter() - t
    t = time.perf_counter()
    prepare_explorer(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=neurons,
        concept_labels=data.labels, concept_names=toyworld.CONCEPTS, denormalize=toyworld.denormalize,
        umap=not args.quick, cache_dir=cache, progress=False,
    )
    cached_with = time.perf_counter() - t
    explorer = Explorer(explorer_data, k=2)
    moves = {
        "k": [(explorer.k, v) for v in (3, 4, 5, 1, 2)],
        "neuron": [(explorer.neuron, v) for v in range(1, len(explorer_data.neurons))] + [(explorer.neuron, 0)],
        "method": [(explorer.method, v) for v in ("activations", "PURE")],
        "patches": [(explorer.mode, v) for v in ("masked", "cropped")],
        "view": [(explorer.view, "virtual heatmaps"), (explorer.k, 5), (explorer.k, 3), (explorer.neuron, 1),
                 (explorer.view, "patches")],
    }
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"precompute (references, circuits, patches, 2-D maps of {len(explorer_data.neurons)} neurons): "
          f"{precompute:.1f} s")
    print(f"again from the cache: {cached_with:.1f} s with the virtual-heatmap view, {cached_without:.1f} s without "
          f"(the view costs {cached_with - cached_without:+.1f} s)")
    worst = 0.0
    for name, steps in moves.items():
        times = []
        for widget, value in steps:
            t = time.perf_counter()
            widget.value = value  # observers redraw synchronously
            times.append(time.perf_counter() - t)
        worst = max(worst, max(times))
        print(f"update {name:8s} median {statistics.median(times) * 1000:6.0f} ms   max {max(times) * 1000:6.0f} ms")
    print(f"worst update: {worst * 1000:.0f} ms (target < 1000 ms)")


if __name__ == "__main__":
    main()
