"""What the benchmarks share: the machine header, the common options, timing and memory, the
set-ups and the PURE reference loop, and the results file.

Not a benchmark itself. The scripts import it as a sibling module (``from common import ...``):
Python puts a script's own folder first on ``sys.path``, so ``python benchmarks/bench_x.py``
finds it from any working directory without editing ``sys.path``. ``puretools`` must be
importable (an install, ``pip install -e .``, or ``PYTHONPATH`` pointing at the checkout).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import puretools as pt

ROOT = Path(__file__).resolve().parents[1]

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


# --------------------------------------------------------------------------- the common tail


def parser(doc: str, raw: bool = True) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring ``doc``."""
    if raw:
        return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def add_threads(p: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    """``--threads N``: ``torch.set_num_threads`` (``start`` applies it)."""
    p.add_argument("--threads", type=int, default=default, help=help)


def add_json(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--json FILE``: also write the results to FILE (``write_json``)."""
    p.add_argument("--json", default=None, help=help)


def add_quick(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--quick``: a seconds-long smoke run (``tests/test_benchmarks.py`` runs it)."""
    p.add_argument("--quick", action="store_true", help=help)


def load_avg() -> float | None:
    """The 1-minute load average, rounded to 2 decimals (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def command_line() -> str:
    """The command that runs this process, with the script's path relative to the checkout."""
    return "python " + " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])


def start(title: str | None, device: torch.device, threads: int | None = None) -> dict:
    """Set ``threads`` (if any), print ``title``, the machine and the command line; return the machine.

    Parameters
    ----------
    title : str or None
        The first line, e.g. ``"== pipeline benchmark =="`` (None: no title line).
    device : torch.device
        The device the numbers are measured on (its GPU is described on CUDA).
    threads : int or None
        ``torch.set_num_threads(threads)`` before anything is measured; None or 0 keeps torch's.

    Returns
    -------
    dict
        ``machine_info(device)``, for the results file.
    """
    if threads:
        torch.set_num_threads(threads)
    info = machine_info(device)
    if title is not None:
        print(title)
    print_machine(info)
    print("command: " + command_line())
    return info


def write_json(path: str | os.PathLike | None, result: dict, indent: int = 2, default=None,
               newline: bool = False) -> None:
    """Write ``result`` as JSON to ``path``, making its folder (nothing if ``path`` is None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=indent, default=default) + ("\n" if newline else ""))


def finish(result: dict, path: str | os.PathLike | None) -> dict:
    """Add the 1-minute load average at the end to ``result``, print it and write the JSON file."""
    result["load_avg_1min_end"] = load_avg()
    print(f"load average (1 min) at end: {result['load_avg_1min_end']}")
    write_json(path, result)
    return result
