"""Several processes: reference collection and circuits with 1 vs N processes (torch.distributed, gloo, CPU).

For each process count, the script spawns that many processes (``torch.multiprocessing.spawn``,
a gloo process group, ``--threads`` threads each, default 1), builds in each the same seeded
model and random images, and times, between barriers:

(a) ``puretools.collect_references`` over the whole data set (every channel of ``layer4``),
(b) ``puretools.circuit_attributions`` of every neuron of ``layer4`` x ``--n-ref`` references
    (from ``layer3``), the standard setting of bench_circuits.py (ResNet-18, 112 px, 512 x 100).

One process runs without a process group (the plain single-process code). It prints the
times, the speed-up over one process, whether the results are bit-identical to one process,
and a markdown row ready to paste into RESULTS.md.

Examples
--------
CPU (RESULTS.md)::

    python benchmarks/bench_distributed.py --procs 1,2

Smoke test (seconds)::

    python benchmarks/bench_distributed.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
import warnings

import common
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import random_images

import puretools as pt

RATIO_LABEL = "RATIO 1 process / N processes"


def _worker(rank: int, world: int, args: argparse.Namespace, tmp: str) -> None:
    warnings.filterwarnings("ignore", message=r"Neuron\(s\)", category=RuntimeWarning)  # random weights: dead neurons
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store-{world}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    torch.manual_seed(args.seed)
    model = pt.load_model(args.model, weights=None)
    data = random_images(args.n_images, args.size, args.seed + 1)
    sync = dist.barrier if world > 1 else (lambda: None)

    def timed(fn):
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpu = time.process_time() - cpu  # this rank's own work
        sync()  # the slowest rank ends the phase
        return result, time.perf_counter() - start, cpu

    refs, t_refs, c_refs = timed(lambda: pt.collect_references(
        model, data, "layer4", n_ref=args.n_ref, batch_size=args.batch_size, progress=False))
    circuits, t_circ, c_circ = timed(lambda: pt.circuit_attributions(
        model, data, "layer4", "layer3", refs, method=args.method, progress=False))
    cpu = [(c_refs, c_circ)]
    if world > 1:
        cpu = [None] * world
        dist.all_gather_object(cpu, (c_refs, c_circ))
    if rank == 0:
        torch.save({"indices": refs.indices, "values": refs.values, "circuits": circuits,
                    "references_s": t_refs, "circuits_s": t_circ, "cpu_s": cpu,
                    "distinct": len(refs.indices.unique())},
                   f"{tmp}/result-{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace, tmp: str) -> dict:
    mp.spawn(_worker, args=(world, args, tmp), nprocs=world, join=True)
    return torch.load(f"{tmp}/result-{world}.pt")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}" if hasattr(os, "getloadavg") else "unknown"


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34", "resnet50"],
                   help="torchvision ResNet with seeded random weights (default resnet18)")
    p.add_argument("--size", type=int, default=112, help="image size (default 112)")
    p.add_argument("--n-images", type=int, default=1000, help="random images in the data set (default 1000)")
    p.add_argument("--n-ref", type=int, default=100, help="references per neuron (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch when collecting (default 64)")
    p.add_argument("--method", default="gradient", choices=["gradient", "lrp"], help="circuit method")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts; 1 is always run (default 1,2)")
    common.add_threads(p, default=1, help="torch threads per process (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (images: seed + 1)")
    common.add_quick(p, help="tiny smoke run (48 px, 64 images, 8 references)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.n_images, args.n_ref = 48, 64, 8
    procs = sorted({1, *(int(n) for n in args.procs.split(","))})

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # the threads are set in each worker process, not here
    info = common.start(f"== distributed benchmark: {args.model} at {args.size} px, {args.n_images} random images, "
                        f"layer4 <- layer3, {args.method}, {args.n_ref} references, {args.threads} thread(s) per "
                        "process, gloo ==", torch.device("cpu"))
    command = common.command_line()
    start_load = uptime()
    print(f"uptime at start: {start_load}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in procs:
            results[world] = run(world, args, tmp)
            r = results[world]
            cpu = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in r["cpu_s"])
            print(f"{world} process(es): references {r['references_s']:.2f} s, circuits {r['circuits_s']:.2f} s "
                  f"(CPU s per rank, references / circuits: {cpu})", flush=True)
    end_load = uptime()
    print(f"uptime at end: {end_load}")

    one = results[1]
    print(f"\n{'processes':>9s} {'references s':>13s} {'speed-up':>9s} {'circuits s':>11s} {'speed-up':>9s}  "
          "equal to 1 process")
    rows = []
    for world, r in results.items():
        same = all(torch.equal(r[k], one[k]) for k in ("indices", "values", "circuits"))
        s_refs, s_circ = one["references_s"] / r["references_s"], one["circuits_s"] / r["circuits_s"]
        print(f"{world:9d} {r['references_s']:13.2f} {s_refs:8.2f}x {r['circuits_s']:11.2f} {s_circ:8.2f}x  "
              f"{'bit-identical' if same else 'DIFFERENT'}")
        if world > 1:
            print(f"{RATIO_LABEL} ({world}, circuits, wall clock): {s_circ:.2f}x")
            print(f"{RATIO_LABEL} ({world}, references, wall clock): {s_refs:.2f}x")
            rows.append(f"| {info['date']} | {info['cpu']}, {info['cpu_affinity']} cores | {world} x "
                        f"{args.threads} thread | {one['circuits_s']:.1f} s -> {r['circuits_s']:.1f} s "
                        f"(**{s_circ:.2f}x**) | {one['references_s']:.1f} s -> {r['references_s']:.1f} s "
                        f"({s_refs:.2f}x) | {'yes' if same else 'NO'} | {start_load.split('load average:')[-1].strip()}"
                        f" / {end_load.split('load average:')[-1].strip()} | `{command}` |")
    print(f"({one['distinct']} distinct reference images; times between barriers, the slowest rank ends each phase)")
    for world in procs[1:]:
        plan = pt.distributed.plan_split(one["indices"], world)
        print(f"plan for {world} processes: {len(plan['units'])} units of work, pairs per rank {plan['loads']}, "
              f"ideal speed-up {plan['ideal_speedup']}x (if time were proportional to pairs)")
    print("\nmarkdown rows for RESULTS.md:")
    print("| date | machine | processes | circuits, whole layer4 (1 -> N) | collection (1 -> N) | bit-identical "
          "| load at start / end (1, 5, 15 min) | command |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
