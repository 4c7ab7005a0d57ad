"""Command line for the long steps: python -m puretools collect|attribute|toy train|demo."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import distributed, toyworld
from ._version import __version__
from .checks import resolve_device
from .config import cache_dir
from .data import load_dataset
from .errors import PuretoolsError
from .files import atomic_save_file, check_output_file, check_output_folder, remove_stale_temps
from .models import load_model
from .pipeline import DEFAULT_METHOD, DEFAULT_N_REF, Pipeline
from .resources import notebook_files, resource_path

__all__ = ["cli_message", "main"]

DESCRIPTION = (
    "PURE's long steps from the shell: collect the reference samples of every neuron, compute "
    "their circuits, train the toy model, run the notebooks. Results are cached (fingerprinted) "
    "and, with --out, written to a safetensors file."
)
EPILOG = """examples:
  python -m puretools collect   --model toy --data toy:test --out refs.safetensors
  python -m puretools attribute --model resnet50 --data /path/to/imagenet/val --out circuits.safetensors
  torchrun --standalone --nproc_per_node 4 -m puretools attribute --model resnet50 \\
      --data /path/to/imagenet/val --out circuits.safetensors   # 4 processes (GPUs), one file

Run 'python -m puretools COMMAND --help' for the options of a command."""

#: Python argument names in library messages and the flags that set them (see cli_message).
FLAGS = {
    "n_ref": "--n-ref", "max_memory": "--max-memory", "lower_layer": "--lower-layer", "layer": "--layer",
    "device": "--device", "num_workers": "--workers", "cache_dir": "--cache-dir", "neurons": "--neurons",
    "method": "--method", "precision": "--precision", "weights": "--weights",
}  # fmt: skip


def cli_message(message: str, command: str | None = None) -> str:
    """A library error message with the Python argument names replaced by the command-line flags.

    ``name=value`` becomes ``--flag value``, ``leave name=None`` becomes ``leave out --flag``,
    and a bare name with an underscore (``n_ref``) becomes its flag. ``batch_size`` is
    ``--pair-batch-size`` for ``attribute`` (the circuits' batches) and ``--batch-size`` otherwise.

    Examples
    --------
    >>> cli_message("n_ref=500 reference samples were asked for; use 1 <= n_ref <= 40.")
    '--n-ref 500 reference samples were asked for; use 1 <= --n-ref <= 40.'
    >>> cli_message("Use device='cpu' (or leave device=None to use the model's device).")
    "Use --device cpu (or leave out --device to use the model's device)."
    >>> cli_message("e.g. layer='layer4', lower_layer='layer3'")
    'e.g. --layer layer4, --lower-layer layer3'
    """
    flags = dict(FLAGS, batch_size="--pair-batch-size" if command == "attribute" else "--batch-size")
    names = "|".join(sorted(flags, key=len, reverse=True))
    message = re.sub(rf"\bleave ({names})=None\b", lambda m: f"leave out {flags[m[1]]}", message)
    message = re.sub(rf"\b({names})=None\b", lambda m: f"no {flags[m[1]]}", message)
    message = re.sub(rf"\b({names})=(['\"]?)([^\s'\",;)]*)\2", lambda m: f"{flags[m[1]]} {m[3]}", message)
    underscored = "|".join(n for n in flags if "_" in n)
    return re.sub(rf"(?<![-\w])({underscored})\b", lambda m: flags[m[1]], message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _neurons(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,5,9, got {text!r}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="'toy', 'toy-vit', 'resnet50', 'timm/resnet50.a1_in1k', ... (default: toy)")
    p.add_argument("--weights", default="default",
                   help="'default' (the published weights), 'none' (random, seeded by --seed) or a path to a "
                        "state dict (.safetensors or .pth)")
    p.add_argument("--data", default="toy:test",
                   help="'toy:test' or 'toy:train' (the toy world's splits), or an ImageNet-style folder "
                        "root/<class>/<image>.jpg (default: toy:test)")
    p.add_argument("--size", type=_positive_int, default=224,
                   help="image size for folders: resize and centre-crop to this (default 224)")
    p.add_argument("--layer", default=None, help="layer of interest (default: the model's, e.g. layer4)")
    p.add_argument("--n-ref", type=_positive_int, default=DEFAULT_N_REF,
                   help=f"reference samples per neuron (default {DEFAULT_N_REF})")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images per forward pass when collecting references (default 64)")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading worker processes (default 0: load in the main process)")
    p.add_argument("--device", default=None, help="'cpu', 'cuda', ... (default: cuda if available)")
    p.add_argument("--cache-dir", default=str(cache_dir()),
                   help="where results are cached, fingerprinted by everything that made them (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (--weights none) (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.safetensors",
                   help="also write the result to this file (collect: 'indices' and 'values' [neurons, n_ref]; "
                        "attribute: 'circuits' [neurons, n_ref, lower channels], 'neurons' and their "
                        "'indices'; metadata: JSON under 'puretools'); under torchrun rank 0 writes it")
    p.add_argument("--timeout", type=_positive_float, default=30.0,
                   help="under torchrun: minutes a rank waits for the others at an exchange before it gives "
                        "up (default 30); must exceed the longest imbalance between ranks")


def _setup(args):
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), name="--device")
    device = distributed.setup(device, timeout=args.timeout * 60)  # torchrun: one process group, a device per rank
    torch.manual_seed(args.seed)  # random weights (--weights none) are the same on every run
    weights = None if args.weights.lower() == "none" else args.weights
    # rank 0 first: it downloads missing weights, then the other ranks read them from the cache
    model = distributed.rank_zero_first(load_model, args.model, weights=weights, device=device)
    dataset = load_dataset(args.data, size=args.size)
    if args.model == "toy":
        LAYER, LOWER_LAYER = toyworld.LAYER, toyworld.LOWER_LAYER
    elif args.model == "toy-vit":
        LAYER, LOWER_LAYER = toyworld.VIT_LAYER, toyworld.VIT_LOWER_LAYER
    else:
        LAYER, LOWER_LAYER = "layer4", "layer3"
    layer = args.layer or LAYER
    lower = getattr(args, "lower_layer", None) or LOWER_LAYER
    return model, dataset, layer, lower, device


def _pipeline(args):
    """The :class:`puretools.Pipeline` of the command's options (the same defaults as the library's)."""
    model, dataset, layer, lower, device = _setup(args)
    return Pipeline(
        model, dataset, layer, lower, n_ref=args.n_ref, method=getattr(args, "method", DEFAULT_METHOD),
        batch_size=args.batch_size, pair_batch_size=getattr(args, "pair_batch_size", None),
        max_memory=getattr(args, "max_memory", None), precision=getattr(args, "precision", "float32"),
        device=device, num_workers=args.workers, cache_dir=args.cache_dir, progress=True,
    )


def _say(message: str) -> None:
    if distributed.rank() == 0:
        print(message, flush=True)


def _write(path: Path, tensors: dict, metadata: dict) -> None:
    """Rank 0 writes ``tensors`` to ``path`` (atomically: :func:`puretools.files.atomic_save_file`).

    The metadata (what made the file) are one JSON string under the key ``"puretools"``, with
    sorted keys: safetensors stores several metadata keys in a random order, and one key keeps
    the file the same byte for byte from run to run (and with any number of processes).
    """
    if distributed.rank() != 0:
        return
    meta = json.dumps({**metadata, "puretools_version": __version__}, sort_keys=True)
    try:
        atomic_save_file(tensors, path, metadata={"puretools": meta})
    except OSError as err:
        raise PuretoolsError(f"could not write --out {path} ({err.strerror or err}); pick a writable file.") from err


def _check_out(args) -> None:
    """Before any work: a result file (collect, attribute) or folder (toy train, demo) that can
    be written; temporary files that killed writes left beside it are removed."""
    out = getattr(args, "out", None)
    if args.command in ("collect", "attribute"):
        if out is not None:
            args.out = check_output_file(out, ".safetensors", "--out")
            remove_stale_temps(args.out.parent)
    elif args.command == "toy":
        folder = check_output_folder(out if out is not None else toyworld.DATA_DIR, "--out")
        remove_stale_temps(folder)
    elif args.command == "demo":
        check_output_folder(out, "--out")


def _metadata(args, layer: str, **more) -> dict:
    return {"command": args.command, "model": args.model, "weights": args.weights, "data": args.data,
            "size": args.size, "seed": args.seed, "layer": layer, "n_ref": args.n_ref, **more}  # fmt: skip


def _collect(args) -> None:
    pipe = _pipeline(args)
    t = time.perf_counter()
    refs = pipe.references()
    layer = pipe.layer
    _say(f"references: {tuple(refs.indices.shape)} at {layer} in {time.perf_counter() - t:.1f} s "
         f"(cached in {args.cache_dir})")
    if args.out is not None:
        _write(args.out, {"indices": refs.indices, "values": refs.values}, _metadata(args, layer))
        _say(f"wrote {args.out} (indices, values)")


def _attribute(args) -> None:
    pipe = _pipeline(args)
    refs, layer, lower = pipe.references(), pipe.layer, pipe.lower_layer
    neurons = args.neurons
    t = time.perf_counter()
    circuits = pipe.circuits(neurons)
    _say(f"circuits: {tuple(circuits.shape)} ({lower} <- {layer}, {args.method}) in "
         f"{time.perf_counter() - t:.1f} s (cached in {args.cache_dir})")
    if args.out is not None:
        chosen = torch.arange(refs.n_channels) if neurons is None else torch.tensor(neurons, dtype=torch.long)
        _write(args.out, {"circuits": circuits, "neurons": chosen, "indices": refs.indices[chosen]},
               _metadata(args, layer, lower_layer=lower, method=args.method, precision=args.precision))
        _say(f"wrote {args.out} (circuits, neurons, indices)")


def _toy_train(args) -> None:
    kwargs = {"seed": args.seed, "overwrite": args.force, "arch": args.arch}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.out is not None:
        kwargs["out_dir"] = args.out
    if args.merge:
        kwargs["merge"] = [tuple(m.split("+")) for m in args.merge]  # toyworld.train checks the names
    if args.variant is not None:
        kwargs["variant"] = args.variant
    record = toyworld.train(**kwargs)  # refuses to overwrite a checkpoint unless --force
    print({k: v for k, v in record.items() if not isinstance(v, (list, dict))})


def _machine() -> dict:
    """Where a timing was measured: CPU, cores, threads, load, versions."""
    import platform

    import torch

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def _demo(args) -> None:
    if args.times is None:  # beside the pages, never in the source tree (a demo must not change the checkout)
        args.times = str(Path(args.out) / "notebook_times.json")
    notebooks = notebook_files()  # shipped in the package (puretools._notebooks); 05b, 05c sort after 05
    if not notebooks:
        sys.exit(f"No notebooks found in {resource_path('_notebooks')}.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # bars print one finished line instead of a widget whose saved frame would read "0%"
    env = {**os.environ, "PURETOOLS_PROGRESS": "text"}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures are saved as images (not "<Figure ...>")
    record = {"machine": _machine(), "command": "python -m puretools demo", "notebooks": {}}
    for nb in notebooks:
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        print(f"executing {nb.name} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
             "--ExecutePreprocessor.timeout=900",
             # no saved widget state: offline HTML then shows the explorer's PNG, not an empty widget
             "--ExecutePreprocessor.store_widget_state=False",
             "--output-dir", str(out), str(nb)],
            check=True, cwd=out, env=env,  # not the notebooks' folder: an installed package is not ours to write into
        )
        seconds = time.perf_counter() - t
        record["notebooks"][nb.stem] = {"seconds": round(seconds, 1), "load_avg_1min_before": round(load_before, 2),
                                        "load_avg_1min_after": round(os.getloadavg()[0], 2)}  # fmt: skip
        print(f"  -> {out / nb.with_suffix('.html').name} ({seconds:.0f} s)")
        if args.times:  # after every notebook, so an interrupted demo keeps what it measured
            _write_times(Path(args.times), record)
    if args.times:
        loads = ", ".join(str(v["load_avg_1min_before"]) for v in record["notebooks"].values())
        print(f"times of {len(record['notebooks'])} notebooks -> {args.times} (load average before each: {loads}); "
              "'python docs/time_notebooks.py' writes them into the README and the notebooks")


def _write_times(path: Path, record: dict) -> None:
    """The demo's timing record, merged into what ``path`` holds (notebooks not run keep their time)."""
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("notebooks", {})
        except (ValueError, OSError):
            old = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "notebooks": {**old, **record["notebooks"]}}, indent=1) + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m puretools", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="collect the top --n-ref reference samples of every neuron",
                       description="Rank the data set by each neuron's spatial max activation at --layer and "
                                   "keep the top --n-ref. Under torchrun, each rank reads a shard.")
    _add_common(p)
    p.set_defaults(func=_collect)

    p = sub.add_parser("attribute", help="compute circuits for (neuron, reference) pairs",
                       description="Collect the references (or read them from the cache), then compute the "
                                   "circuit of every (neuron, reference) pair: the neuron's relevance flowing "
                                   "into --lower-layer. Under torchrun, the pairs are split across ranks.")
    _add_common(p)
    p.add_argument("--lower-layer", default=None, help="the layer below --layer (default: e.g. layer3)")
    p.add_argument("--neurons", type=_neurons, default=None, help="comma-separated neuron indices (default: all)")
    p.add_argument("--method", choices=("gradient", "lrp"), default=DEFAULT_METHOD,
                   help="'gradient': gradient x activation, as the PURE code; 'lrp': zennit's EpsilonPlusFlat "
                        f"with the model's canonizers, as CRP (default: {DEFAULT_METHOD})")
    p.add_argument("--precision", choices=("float32", "tf32", "bfloat16"), default="float32",
                   help="'tf32' and 'bfloat16' are faster on GPUs and less exact (default: float32)")
    p.add_argument("--pair-batch-size", type=_positive_int, default=None,
                   help="reference images per subnetwork pass (default 256, or what --max-memory allows)")
    p.add_argument("--max-memory", type=_positive_float, default=None,
                   help="GiB of device memory for the working tensors; sets the batch sizes")
    p.set_defaults(func=_attribute)

    p = sub.add_parser("toy", help="the toy world")
    toy = p.add_subparsers(dest="toy_command", required=True)
    t = toy.add_parser("train", help="train a toy model (never overwrites a checkpoint unless --force)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="passes over the train split (default 10; --arch vit: 15)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling (default 0)")
    t.add_argument("--arch", choices=("resnet", "vit"), default="resnet",
                   help="the toy ResNet (default; model.safetensors, record.json) or the toy ViT "
                        "(vit.safetensors, vit_record.json)")
    t.add_argument("--out", default=None,
                   help="output folder for model.safetensors and record.json (default: data/toyworld, "
                        "which already holds the shipped checkpoint: use e.g. --out /tmp/toy-seed1)")
    t.add_argument("--force", action="store_true",
                   help="replace a checkpoint already in the output folder (e.g. --out data/toyworld --force)")
    t.add_argument("--merge", action="append", default=None, metavar="A+B",
                   help="give concepts A and B one label (both outputs learn 'A or B'; the images are "
                        "unchanged); repeat for more pairs, e.g. --merge disc+checkerboard --merge square+dots")
    t.add_argument("--variant", choices=sorted(toyworld.VARIANTS), default=None,
                   help="train and test on a variant of the toy world (benchmarks/README.md; v2: stripes_h and "
                        "dots inside one shared square frame), recorded in record.json (default: the default world)")
    t.set_defaults(func=_toy_train)

    p = sub.add_parser("demo", help="execute all notebooks headless and write HTML")
    p.add_argument("--out", default="build", help="folder for the HTML files (default: build)")
    p.add_argument("--times", default=None,
                   help="JSON file for each notebook's wall time and the machine's load (default: "
                        "OUT/notebook_times.json); in a checkout, 'python docs/time_notebooks.py' makes them "
                        "the stated runtimes of the README and the notebooks")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m puretools`` and the ``puretools`` script.

    Under ``torchrun`` (``torchrun --nproc_per_node N -m puretools collect|attribute ...``) every
    rank runs the same command: the work is split, rank 0 prints and writes ``--out``, and a
    rank that fails makes every rank exit with an error.
    """
    args = _parser().parse_args(argv)
    try:
        _check_out(args)
        args.func(args)
    except PuretoolsError as err:
        here, other = distributed.rank(), isinstance(err, distributed.RankFailedError)
        if other and err.failed_rank is not None and here != 0:
            sys.exit(1)  # rank 0 says which rank failed: one message is enough
        prefix = f"rank {here}: " if distributed.world_size() > 1 and not other else ""
        sys.exit(f"error: {prefix}{cli_message(str(err), args.command)}")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
