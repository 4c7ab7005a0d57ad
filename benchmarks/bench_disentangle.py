"""How well PURE and its rivals split polysemantic neurons, against ground truth, across toy models.

Runs :func:`puretools.disentangle.compare_on_toy` on each toy checkpoint: methods PURE-gradient,
PURE-LRP, PURE-cosine, activations (the paper's baseline) and a TopK SAE (overcomplete); cases
``natural`` (the model's own polysemantic neurons of layer4, causal labels), ``planted`` (two
concepts' rectified class-activation maps summed into one extra channel, true sources) and
``natural-dominant`` (the natural clusterings scored against the older dominant-concept
labels). The module docstring of ``puretools/disentangle.py`` says how each is defined. Each
model's score is the mean ARI over its neurons; across models the table shows mean +- sample
sd (min-max). Nothing is tuned on these scores.

Examples
--------
::

    python benchmarks/bench_disentangle.py --quick        # shipped model, 4 planted pairs: < 3 min
    python -m puretools toy train --seed 1 --out /tmp/toy-seed1
    python -m puretools toy train --seed 2 --out /tmp/toy-seed2
    python benchmarks/bench_disentangle.py --models shipped /tmp/toy-seed1 /tmp/toy-seed2 \\
        --json benchmarks/results/disentangle.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_circuits import machine_info, print_machine  # noqa: E402

from puretools import toyworld  # noqa: E402
from puretools.disentangle import CASES, METHODS, aggregate, compare_on_toy, format_table  # noqa: E402

SAE_TRAIN_IMAGES = 2000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shipped"],
                   help="toy checkpoints: 'shipped' (data/toyworld) or folders/files written by "
                        "`python -m puretools toy train --out DIR` (default: shipped)")
    p.add_argument("--pairs", type=int, default=12, help="planted pairs per model (default 12; --quick: 4)")
    p.add_argument("--quick", action="store_true", help="the first model only, 4 planted pairs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def checkpoint(spec: str) -> Path:
    if spec == "shipped":
        return toyworld.DATA_DIR / "model.safetensors"
    path = Path(spec)
    return path / "model.safetensors" if path.is_dir() else path


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    info = machine_info(torch.device("cpu"))
    print_machine(info)
    print("command: python benchmarks/bench_disentangle.py " + " ".join(sys.argv[1:]))
    specs = args.models[:1] if args.quick else args.models
    n_pairs = 4 if args.quick else args.pairs
    start = time.perf_counter()
    data = toyworld.ToyWorld("test")
    train = toyworld.ToyWorld("train", n=SAE_TRAIN_IMAGES)
    models, results = [], []
    for spec in specs:
        path = checkpoint(spec)
        if not path.is_file():
            raise SystemExit(f"No toy checkpoint at {path}: train one with "
                             "`python -m puretools toy train --seed S --out DIR` and pass DIR.")
        record_path = path.parent / "record.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        t = time.perf_counter()
        r = compare_on_toy(toyworld.load_toy_model(path), data, train, n_pairs=n_pairs)
        results.append(r)
        models.append({"model": spec, "train_seed": record.get("seed"), "sha256": record.get("sha256"),
                       "exact_match_accuracy": record.get("exact_match_accuracy"),
                       "macro_f1": record.get("macro_f1"), **dataclasses.asdict(r)})  # fmt: skip
        print(f"\n{spec} (train seed {record.get('seed')}, {time.perf_counter() - t:.0f} s): natural neurons "
              f"{r.natural_neurons} (k {r.natural_k}, {r.unlabelled['natural']} unlabelled references), "
              f"SAE R2 {r.sae['r2_train']:.2f} with {r.sae['dead_latents']:.0%} dead latents")
        print("  planted pairs (balance): " + ", ".join(
            f"{a}+{b} ({bal:.2f})" for (a, b), bal in zip(r.planted_pairs, r.planted_balance)))
        for m in METHODS:
            print(f"  {m:15s}" + "  ".join(f"{case} {r.ari(m, case):.2f}" for case in CASES))
    table = aggregate(results)
    n = len(results)
    print(f"\nmean ARI against ground truth ({n} model{'s' if n > 1 else ''}"
          + (": mean +- sd (min-max) over models" if n > 1 else "") + ")")
    print(format_table(table))
    wall = time.perf_counter() - start
    result = {
        "benchmark": "bench_disentangle", "argv": sys.argv[1:], "machine": info,
        "load_avg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "wall_s": round(wall, 1), "methods": list(METHODS), "cases": list(CASES),
        "table": table, "models": models,
    }
    print(f"\nwall time {wall:.0f} s; load average (1 min) at end: {result['load_avg_1min_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
