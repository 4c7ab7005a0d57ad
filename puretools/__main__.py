"""Command line for the long steps: ``python -m puretools collect|attribute|toy train|demo``."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .config import cache_dir

__all__ = ["main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="'toy', 'resnet50', 'timm/resnet50.a1_in1k', ... (default: toy)")
    p.add_argument("--weights", default="default", help="'default', 'none' (random) or a path to a state dict")
    p.add_argument("--data", default="toy:test", help="'toy:test', 'toy:train' or an ImageNet-style folder")
    p.add_argument("--size", type=int, default=224, help="image size for folders (default 224)")
    p.add_argument("--layer", default=None, help="layer of interest (default: the model's, e.g. layer4)")
    p.add_argument("--n-ref", type=int, default=100, help="reference samples per neuron (default 100)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="'cpu', 'cuda', ... (default: cuda if available)")
    p.add_argument("--cache-dir", default=str(cache_dir()), help="where results are stored (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for random initialisation (default 0)")


def _setup(args):
    import torch

    from . import load_model
    from .data import load_dataset

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)  # random weights (--weights none) are the same on every run
    weights = None if args.weights.lower() == "none" else args.weights
    model = load_model(args.model, weights=weights, device=device)
    dataset = load_dataset(args.data, size=args.size)
    if args.model == "toy":
        from .toyworld import LAYER, LOWER_LAYER
    else:
        LAYER, LOWER_LAYER = "layer4", "layer3"
    layer = args.layer or LAYER
    lower = getattr(args, "lower_layer", None) or LOWER_LAYER
    return model, dataset, layer, lower, device


def _collect(args) -> None:
    from . import collect_references

    model, dataset, layer, _, device = _setup(args)
    t = time.perf_counter()
    refs = collect_references(
        model, dataset, layer, n_ref=args.n_ref, batch_size=args.batch_size,
        device=device, num_workers=args.workers, cache_dir=args.cache_dir,
    )
    print(f"references: {tuple(refs.indices.shape)} at {layer} in {time.perf_counter() - t:.1f} s "
          f"(cached in {args.cache_dir})")


def _attribute(args) -> None:
    from . import circuit_attributions, collect_references

    model, dataset, layer, lower, device = _setup(args)
    refs = collect_references(
        model, dataset, layer, n_ref=args.n_ref, batch_size=args.batch_size,
        device=device, num_workers=args.workers, cache_dir=args.cache_dir,
    )
    neurons = [int(n) for n in args.neurons.split(",")] if args.neurons else None
    t = time.perf_counter()
    circuits = circuit_attributions(
        model, dataset, layer, lower, refs, neurons=neurons, method=args.method,
        batch_size=args.pair_batch_size, max_memory=args.max_memory, device=device, precision=args.precision,
        cache_dir=args.cache_dir,
    )
    print(f"circuits: {tuple(circuits.shape)} ({lower} <- {layer}, {args.method}) in "
          f"{time.perf_counter() - t:.1f} s (cached in {args.cache_dir})")


def _toy_train(args) -> None:
    from . import toyworld

    kwargs = {"seed": args.seed, "overwrite": args.force}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.out is not None:
        kwargs["out_dir"] = args.out
    record = toyworld.train(**kwargs)  # refuses to overwrite a checkpoint unless --force
    print({k: v for k, v in record.items() if not isinstance(v, (list, dict))})


def _demo(args) -> None:
    root = Path(__file__).resolve().parent.parent
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        sys.exit("No notebooks found under notebooks/.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        t = time.perf_counter()
        print(f"executing {nb.name} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
             "--ExecutePreprocessor.timeout=900", "--output-dir", str(out), str(nb)],
            check=True, cwd=nb.parent,
        )
        print(f"  -> {out / nb.with_suffix('.html').name} ({time.perf_counter() - t:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m puretools`` and the ``puretools`` script."""
    parser = argparse.ArgumentParser(prog="python -m puretools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect the top-n_ref reference samples of every neuron")
    _add_common(p)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.set_defaults(func=_collect)

    p = sub.add_parser("attribute", help="compute circuits for (neuron, reference) pairs")
    _add_common(p)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--lower-layer", default=None, help="the layer below (default: e.g. layer3)")
    p.add_argument("--neurons", default=None, help="comma-separated neuron indices (default: all)")
    p.add_argument("--method", choices=("gradient", "lrp"), default="gradient")
    p.add_argument("--precision", choices=("float32", "tf32", "bfloat16"), default="float32")
    p.add_argument("--pair-batch-size", type=int, default=None,
                   help="reference images per subnetwork pass (default 256, or what --max-memory allows)")
    p.add_argument("--max-memory", type=float, default=None,
                   help="GiB of device memory for the working tensors; sets the batch sizes")
    p.set_defaults(func=_attribute)

    p = sub.add_parser("toy", help="the toy world")
    toy = p.add_subparsers(dest="toy_command", required=True)
    t = toy.add_parser("train", help="train a toy model (never overwrites a checkpoint unless --force)")
    t.add_argument("--epochs", type=int, default=None, help="passes over the train split (default 10)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling (default 0)")
    t.add_argument("--out", default=None,
                   help="output folder for model.safetensors and record.json (default: data/toyworld, "
                        "which already holds the shipped checkpoint: use e.g. --out /tmp/toy-seed1)")
    t.add_argument("--force", action="store_true",
                   help="replace a checkpoint already in the output folder (e.g. --out data/toyworld --force)")
    t.set_defaults(func=_toy_train)

    p = sub.add_parser("demo", help="execute all notebooks headless and write HTML")
    p.add_argument("--out", default="build")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    from .errors import PuretoolsError

    try:
        args.func(args)
    except PuretoolsError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
