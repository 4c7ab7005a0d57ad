"""Circuit attributions: puretools vs the PURE reference loop (zennit-crp CondAttribution), one run.

On the same model, references and device this times

(a) the reference loop exactly as the PURE code does it
    (maxdreyer/PURE, experiments/preprocessing/compute_latent_features.py): one neuron at
    a time, its reference images in batches of 40, ``CondAttribution(model)(x, [{layer: [k]}],
    Composite(), record_layer=[lower_layer], start_layer=layer, init_rel=lambda a:
    a.clamp(min=0))``; the circuit is relevance x activation at ``lower_layer`` summed over
    space and L1-normalised (``ChannelConcept().attribute(..., abs_norm=True)``). Only a sample
    of neurons is run; the whole-layer time is extrapolated (time per neuron x channels);

(b) ``puretools.circuit_attributions`` on ALL neurons of the layer,

and prints per-neuron and whole-layer times, the ratio reference / ours, the max abs difference
on the sampled neurons, the peak memory and the machine.

The single condition ``[{layer: [k]}]`` is broadcast by ``CondAttribution.broadcast`` to one
condition per image (``conditions * len(data)``; the images are not repeated), which is what
the PURE code relies on.

Examples
--------
CPU (this repository's RESULTS.md)::

    python benchmarks/bench_circuits.py --model resnet18 --size 112 --device cpu
    python benchmarks/bench_circuits.py --model toy --device cpu

GPU (H100)::

    python benchmarks/bench_circuits.py --model resnet50 --size 224 --device cuda --precision float32
    python benchmarks/bench_circuits.py --model resnet50 --size 224 --device cuda --precision bfloat16

Smoke test (seconds)::

    python benchmarks/bench_circuits.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

import common
import torch
from common import (
    DIFF_LABEL,
    RATIO_LABEL,
    Measure,
    Skip,
    first_image,
    load_setup,
    reference_circuits,
)
from torch.utils.data import Dataset

import puretools as pt
from puretools.circuits import tf32_matmuls


class _AsDouble(Dataset):
    """The images of ``dataset`` in float64 (items ``(image,)``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return (image.double(),)


def float64_check(model, dataset, layer, lower, refs, sample, device, method, ours, ref) -> dict:
    """Max abs errors of ours and of the float32 reference loop against the reference loop in float64.

    Circuits are L1-normalised sums over space; where the terms nearly cancel, float32 rounding
    alone moves single entries by ~1e-4, so a float64 judge tells rounding from real differences.
    """
    import copy

    model64 = copy.deepcopy(model).double()
    ref64 = reference_circuits(model64, _AsDouble(dataset), layer, lower, refs, sample, device, method)
    d_ours = (ours[sample].double() - ref64).abs()
    d_ref = (ref.double() - ref64).abs()
    return {"ours_vs_f64": d_ours.max().item(), "ref_vs_f64": d_ref.max().item(),
            "ours_vs_f64_q": d_ours.flatten().quantile(0.999).item(), "ref_vs_f64_q": d_ref.flatten().quantile(0.999).item()}


def our_circuits(model, dataset, layer, lower, references, neurons, device, args) -> torch.Tensor:
    return pt.circuit_attributions(
        model, dataset, layer, lower, references, neurons=neurons, method=args.method,
        batch_size=args.batch_size, image_chunk=args.image_chunk, device=device,
        precision=args.precision, progress=False,
    )


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--model", default="resnet18", choices=["toy", "resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--size", type=int, default=None,
                   help="image size of the random images (default: 112 for resnet18, 224 for the others; "
                        "ignored for toy)")
    p.add_argument("--n-images", type=int, default=None,
                   help="random images in the data set (default 1000 on CPU, 2000 on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--neurons-sample", type=int, default=8,
                   help="neurons run through the reference loop; its whole-layer time is extrapolated (default 8)")
    p.add_argument("--n-ref", type=int, default=100, help="references per neuron (default 100)")
    p.add_argument("--method", default="gradient", choices=["gradient", "lrp"])
    p.add_argument("--precision", default="float32", choices=["float32", "tf32", "bfloat16"],
                   help="precision of puretools (the reference loop always runs float32; with float32 "
                        "TF32 is switched off on CUDA for both)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="(neuron, reference) pairs per batch in puretools (default: the library default, "
                        "or what --max-memory allows)")
    p.add_argument("--max-memory", type=float, default=None,
                   help="GiB for puretools' pair batches: picks --batch-size from the measured bytes per pair")
    p.add_argument("--image-chunk", type=int, default=None, help="puretools image_chunk (default 512)")
    p.add_argument("--ref-batch-size", type=int, default=40, help="batch size of the reference loop (PURE: 40)")
    p.add_argument("--ref-workers", type=int, default=0,
                   help="DataLoader workers of the reference loop, created per neuron as in PURE (which uses 8 "
                        "and reads files); default 0: the images are in memory")
    p.add_argument("--channels-last", action="store_true",
                   help="convert the model to channels_last before both pipelines (tensor-core friendly on CUDA)")
    p.add_argument("--fp64-check", choices=["on", "off"], default=None,
                   help="also run the reference loop in float64 on the sampled neurons (untimed) and print how "
                        "far ours and the float32 reference are from it (default: on for CPU, off for CUDA)")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions of each pipeline; the fastest counts")
    common.add_threads(p, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy-weights", default="default",
                   help="toy checkpoint (default: the shipped data/toyworld/model.safetensors)")
    common.add_json(p, help="also write the results to this JSON file")
    common.add_quick(p, help="tiny smoke run (resnet18 at 48 px, 64 images, 8 references, 2 sampled neurons)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = args.size or 48
        args.n_images = args.n_images or 64
        args.n_ref = min(args.n_ref, 8)
        args.neurons_sample = min(args.neurons_sample, 2)
    return args


def run(args: argparse.Namespace) -> dict | None:
    device = pt.checks.resolve_device(args.device)
    if device.type == "cuda" and args.precision != "tf32":
        # "fp32" means fp32: PyTorch lets cuDNN use TF32 by default, which costs ~1e-3 accuracy.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    n_images = args.n_images or (2000 if device.type == "cuda" else 1000)
    info = common.start(f"== circuits benchmark: {args.model}, {args.method}, puretools {args.precision}, {device} ==",
                        device, args.threads)
    try:
        model, dataset, layer, lower, data_desc = load_setup(
            args.model, args.size, n_images, args.seed, device, max_images=300 if args.quick else None,
            toy_weights=args.toy_weights)
    except Skip as err:
        print(f"SKIPPED {args.model}: {err}. Build the toy world first (python -m puretools toy train).")
        return None
    n_ref = min(args.n_ref, len(dataset))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(f"data: {data_desc}; layer {layer!r} <- lower layer {lower!r}"
          + ("; model in channels_last" if args.channels_last else ""))

    with Measure(device) as m_refs:
        refs = pt.collect_references(model, dataset, layer, n_ref=n_ref, device=device, progress=False)
    n_channels = refs.n_channels
    n_distinct = len(refs.indices.unique())
    print(f"references: {n_channels} channels x {n_ref} (collected once, shared; {m_refs.wall:.1f} s), "
          f"{n_distinct} distinct reference images")

    if args.max_memory is not None:  # puretools' own memory plan, as circuit_attributions applies it
        plan = pt.memory_plan(model, first_image(dataset), layer, lower, args.max_memory, args.precision, device)
        print(f"--max-memory {args.max_memory} GiB: ~{plan['bytes_per_row'] / 2**20:.2f} MiB per row, "
              f"~{plan['bytes_per_image'] / 2**20:.2f} MiB per image -> batch size {plan['batch_size']}, "
              f"image chunk {plan['image_chunk']}")
        args.batch_size = min(args.batch_size or plan["batch_size"], plan["batch_size"])
        args.image_chunk = min(args.image_chunk or plan["image_chunk"], plan["image_chunk"])
    args.batch_size, args.image_chunk = args.batch_size or 256, args.image_chunk or 512

    g = torch.Generator().manual_seed(args.seed)
    sample = sorted(torch.randperm(n_channels, generator=g)[: max(1, min(args.neurons_sample, n_channels))].tolist())

    # warm-up (untimed): oneDNN/cuDNN primitive caches, CUDA context, lazy imports
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_circuits(model, dataset, layer, lower, refs, sample[:1], device, args.method, args.ref_batch_size,
                           args.ref_workers)
        our_circuits(model, dataset, layer, lower, refs, sample[:1], device, args)

    def best(fn, repeats):
        result, best_m = None, None
        for _ in range(max(1, repeats)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # dead neurons of random models
                with Measure(device) as m:
                    result = fn()
            if best_m is None or m.wall < best_m.wall:
                best_m = m
        return result, best_m

    ref, m_ref = best(lambda: reference_circuits(model, dataset, layer, lower, refs, sample, device,
                                                 args.method, args.ref_batch_size, args.ref_workers), args.repeats)
    with tf32_matmuls(args.precision == "tf32") if device.type == "cuda" else contextlib.nullcontext():
        ours, m_ours = best(lambda: our_circuits(model, dataset, layer, lower, refs, None, device, args), args.repeats)

    diffs = (ours[sample].double() - ref.double()).abs()
    diff = diffs.max().item()
    diff_q = diffs.flatten().quantile(0.999).item() if diffs.numel() <= 2**24 else float("nan")
    ref_per_neuron = m_ref.wall / len(sample)
    ref_layer = ref_per_neuron * n_channels
    ours_per_neuron = m_ours.wall / n_channels
    ratio = ref_layer / m_ours.wall
    cpu_ratio = (m_ref.cpu / len(sample) * n_channels) / max(m_ours.cpu, 1e-9)

    print()
    header = (f"{'':34s} {'neurons':>7s} {'pairs':>8s} {'wall s':>8s} {'per neuron s':>13s} {'whole layer s':>14s} "
              f"{'CPU s (layer)':>14s} {'others busy':>11s}  peak memory ({m_ours.kind})")
    print(header)
    print("-" * len(header))
    print(f"{'reference loop (CondAttribution)':34s} {len(sample):7d} {len(sample) * n_ref:8d} {m_ref.wall:8.2f} "
          f"{ref_per_neuron:13.4f} {ref_layer:11.1f} ex {m_ref.cpu / len(sample) * n_channels:14.1f} "
          f"{m_ref.busy():>11s}  {m_ref.mem()}")
    print(f"{'puretools.circuit_attributions':34s} {n_channels:7d} {n_channels * n_ref:8d} {m_ours.wall:8.2f} "
          f"{ours_per_neuron:13.4f} {m_ours.wall:14.1f} {m_ours.cpu:14.1f} {m_ours.busy():>11s}  {m_ours.mem()}")
    print("(ex = extrapolated from the sampled neurons: time per neuron x channels; others busy = share of the "
          "machine's cores used by other processes meanwhile)")
    print(f"puretools batch_size={args.batch_size} image_chunk={args.image_chunk}; reference batch {args.ref_batch_size}, "
          f"{args.ref_workers} workers; "
          f"sampled neurons {sample if len(sample) <= 16 else str(sample[:16])[:-1] + ', ...]'}")
    print()
    print(f"{RATIO_LABEL} (whole layer, wall clock): {ratio:.2f}x")
    if device.type == "cpu":  # on CUDA the host CPU time says nothing about the work
        print(f"{RATIO_LABEL} (whole layer, process CPU time): {cpu_ratio:.2f}x")
    print(f"{DIFF_LABEL} ({len(sample)} sampled neurons x {n_ref} references, ours {args.precision} vs reference float32): "
          f"{diff:.3e} (99.9th percentile {diff_q:.1e})")
    acc = {}
    if (args.fp64_check or ("on" if device.type == "cpu" else "off")) == "on":
        acc = float64_check(model, dataset, layer, lower, refs, sample, device, args.method, ours, ref)
        print(f"ACCURACY vs float64 reference loop (untimed): ours max abs error {acc['ours_vs_f64']:.3e}, "
              f"float32 reference loop {acc['ref_vs_f64']:.3e} (99.9th percentiles {acc['ours_vs_f64_q']:.1e} / "
              f"{acc['ref_vs_f64_q']:.1e})")
    result = {
        "model": args.model, "method": args.method, "precision": args.precision, "device": str(device),
        "data": data_desc, "layer": layer, "lower_layer": lower, "channels": n_channels, "n_ref": n_ref,
        "distinct_reference_images": n_distinct, "sampled_neurons": sample,
        "reference_wall_s": m_ref.wall, "reference_cpu_s": m_ref.cpu, "reference_per_neuron_s": ref_per_neuron,
        "reference_layer_extrapolated_s": ref_layer, "reference_peak_bytes": m_ref.peak_bytes,
        "ours_wall_s": m_ours.wall, "ours_cpu_s": m_ours.cpu, "ours_per_neuron_s": ours_per_neuron,
        "ours_peak_bytes": m_ours.peak_bytes, "memory_kind": m_ours.kind,
        "reference_others_busy": m_ref.others, "ours_others_busy": m_ours.others,
        "ratio_wall": ratio, "ratio_cpu": cpu_ratio, "max_abs_diff": diff, "max_abs_diff_q999": diff_q, **acc,
        "batch_size": args.batch_size, "image_chunk": args.image_chunk, "references_s": m_refs.wall,
        "machine": info,
        "argv": sys.argv[1:],
    }
    return common.finish(result, args.json)


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
