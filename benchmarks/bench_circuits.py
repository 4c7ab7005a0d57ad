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
import datetime
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import puretools as pt  # noqa: E402
from puretools.circuits import tf32_matmuls  # noqa: E402

# Lines the tests (tests/test_benchmarks.py) look for; keep their wording.
RATIO_LABEL = "RATIO reference/ours"
DIFF_LABEL = "MAX_ABS_DIFF"

DEFAULT_SIZE = {"resnet18": 112, "resnet34": 224, "resnet50": 224, "resnet101": 224}


# --------------------------------------------------------------------------- machine, timing, memory


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: CPU, cores, threads, torch, GPU, date, load."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        from importlib.metadata import version

        import zennit

        info["zennit"] = zennit.__version__ if hasattr(zennit, "__version__") else version("zennit")
        info["zennit_crp"] = version("zennit-crp")
    except Exception:  # pragma: no cover - informational only
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


def print_machine(info: dict) -> None:
    line = (f"machine: {info['cpu']} ({info['cpu_count']} cores, {info['cpu_affinity']} usable), "
            f"torch {info['torch']}, {info['threads']} threads, python {info['python']}")
    if "gpu" in info:
        line += f"\n         GPU {info['gpu']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, " \
                f"TF32 matmul={info['tf32_matmul']} cudnn={info['tf32_cudnn']}"
    print(line)
    print(f"date: {info['date']}   load average (1 min) at start: {info['load_avg_1min']}")
    load = info["load_avg_1min"]
    if load is not None and info["cpu_affinity"] and load > 0.5 * info["cpu_affinity"]:
        print(f"WARNING: the machine is busy (load {load} on {info['cpu_affinity']} cores): "
              "wall-clock times are inflated; CPU times are printed beside them.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have been busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Measure:
    """Wall time, process CPU time and peak memory of a block (CUDA synchronised around it).

    Peak memory: CUDA ``torch.cuda.max_memory_allocated`` (reset at the start); CPU the
    process's peak resident set size during the block (Linux: VmHWM, reset through
    /proc/self/clear_refs; elsewhere ru_maxrss, the peak since the process started).
    ``others``: the share of the machine's cores that other processes kept busy meanwhile
    (Linux), which tells whether the wall time is trustworthy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.others: float | None = None
        self.wall = self.cpu = 0.0
        self.peak_bytes: int | None = None
        self.base_bytes: int | None = None
        self.kind = "CUDA max_memory_allocated" if device.type == "cuda" else "process peak RSS"

    def __enter__(self) -> "Measure":
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_bytes = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            rss = _status_kib("VmRSS")
            self.base_bytes = rss * 1024 if rss is not None else None
        self._busy0 = _busy_seconds()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        busy = _busy_seconds()
        if busy is not None and self._busy0 is not None and self.wall > 0:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            self.others = max(0.0, (busy - self._busy0 - self.cpu) / (self.wall * (os.cpu_count() or cores)))
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_kib("VmHWM")
            self.peak_bytes = hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def busy(self) -> str:
        return "n/a" if self.others is None else f"{100 * self.others:.0f}%"

    def mem(self) -> str:
        if self.peak_bytes is None:
            return "n/a"
        extra = ""
        if self.base_bytes is not None:
            extra = f" (+{(self.peak_bytes - self.base_bytes) / 2**30:.2f} over start)"
        return f"{self.peak_bytes / 2**30:.2f} GiB{extra}"


# --------------------------------------------------------------------------- model and data


class Skip(Exception):
    """A configuration that cannot run here (e.g. the toy world is not built yet)."""


def random_images(n: int, size: int, seed: int) -> TensorDataset:
    """``n`` seeded random images [3, size, size] (normal noise, like normalised pixels)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long))


def load_setup(name: str, size: int | None, n_images: int, seed: int, device: torch.device,
               max_images: int | None = None, toy_weights: str = "default"):
    """Model (eval, on device), data set, layer, lower layer and a description of the data.

    ``toy``: the shipped checkpoint (or ``toy_weights``) and the ToyWorld test split (``Skip``
    if either is missing). Otherwise a torchvision ResNet with seeded random weights on random
    images.
    """
    torch.manual_seed(seed)
    if name == "toy":
        try:
            from puretools import toyworld
        except ImportError as err:
            raise Skip(f"puretools.toyworld is not available yet ({err})") from err
        try:
            model = pt.load_model("toy", weights=toy_weights, device=device)
            dataset = toyworld.ToyWorld(split="test")
        except (FileNotFoundError, OSError, pt.PuretoolsError) as err:
            raise Skip(f"the toy checkpoint or data set is missing ({type(err).__name__}: {err})") from err
        if max_images is not None and len(dataset) > max_images:
            dataset = Subset(dataset, range(max_images))
        shape = tuple(dataset[0][0].shape)
        return model, dataset, toyworld.LAYER, toyworld.LOWER_LAYER, f"ToyWorld test split ({len(dataset)} images {shape})"
    size = size or DEFAULT_SIZE.get(name, 224)
    model = pt.load_model(name, weights=None, device=device)
    dataset = random_images(n_images, size, seed + 1)
    return model, dataset, "layer4", "layer3", f"{n_images} random images 3x{size}x{size} (seed {seed + 1}), random weights (seed {seed})"


def first_image(dataset: Dataset) -> torch.Tensor:
    item = dataset[0]
    return item[0] if isinstance(item, (tuple, list)) else item


# --------------------------------------------------------------------------- the two pipelines


def reference_circuits(model, dataset: Dataset, layer: str, lower: str, references, neurons,
                       device: torch.device, method: str = "gradient", batch_size: int = 40,
                       num_workers: int = 0) -> torch.Tensor:
    """The PURE reference loop: CondAttribution per neuron, ``batch_size`` references at a time.

    Returns [len(neurons), n_ref, C_lower] on the CPU. Restores the parameters'
    ``requires_grad`` flags, which ``CondAttribution`` switches off.
    """
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from zennit.composites import Composite

    flags = [p.requires_grad for p in model.parameters()]
    attribution = CondAttribution(model)  # no_param_grad=True, as in PURE
    cc = ChannelConcept()
    composite = Composite() if method == "gradient" else pt.lrp_composite(model)
    out = []
    try:
        for k in neurons:
            k = int(k)
            subset = Subset(dataset, references.indices[k].tolist())
            loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            per_neuron = []
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device).requires_grad_()
                attr = attribution(
                    x, [{layer: [k]}], composite, record_layer=[lower],
                    start_layer=layer, init_rel=lambda act: act.clamp(min=0),
                )
                rel = attr.relevances[lower].detach()
                if method == "gradient":
                    rel = rel * attr.activations[lower].detach()
                per_neuron.append(cc.attribute(rel, abs_norm=True).float().cpu())
            out.append(torch.cat(per_neuron))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return torch.stack(out)


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy-weights", default="default",
                   help="toy checkpoint (default: the shipped data/toyworld/model.safetensors)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run (resnet18 at 48 px, 64 images, 8 references, 2 sampled neurons)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = args.size or 48
        args.n_images = args.n_images or 64
        args.n_ref = min(args.n_ref, 8)
        args.neurons_sample = min(args.neurons_sample, 2)
    return args


def run(args: argparse.Namespace) -> dict | None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pt.checks.resolve_device(args.device)
    if device.type == "cuda" and args.precision != "tf32":
        # "fp32" means fp32: PyTorch lets cuDNN use TF32 by default, which costs ~1e-3 accuracy.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    n_images = args.n_images or (2000 if device.type == "cuda" else 1000)
    info = machine_info(device)
    print(f"== circuits benchmark: {args.model}, {args.method}, puretools {args.precision}, {device} ==")
    print_machine(info)
    print("command: python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]))
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
        "machine": info, "load_avg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "argv": sys.argv[1:],
    }
    print(f"load average (1 min) at end: {result['load_avg_1min_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
