"""How well PURE and its rivals split polysemantic neurons, against ground truth, across toy models.

Methods (every one scored against the same ground truth, none tuned on it):

- ``PURE-gradient``: k-means on the gradient circuits from the lower layer (the paper's PURE).
- ``PURE-LRP``: k-means on LRP circuits (EpsilonPlusFlat + ResNet canonizer, CRP-style).
- ``PURE-cosine``: k-means on the gradient circuits scaled to unit length (cosine distance): a
  circuit says where relevance comes from, so its direction, not its size, should matter.
- ``activations``: k-means on the spatial mean activations of the layer's own channels (the
  paper's baseline).
- ``SAE``: a TopK sparse autoencoder (overcomplete, 4 x C latents, top-k C / 2, trained on
  the train split's layer activations, positions as samples); each reference goes to the
  latent contributing most to the neuron at its max location (no k to choose).

Cases:

- ``natural``: the model's own polysemantic neurons of ``layer4`` (at least two concepts with
  >= 20 % of the causally labelled references), scored against causal labels (which object's
  removal halves the neuron's activation; references without one are left out and counted).
  k = the neuron's number of such concepts. ``natural-dominant`` scores the same clusterings
  against the older dominant-concept labels, for comparison with earlier figures.
- ``planted``: neurons made of the rectified class-activation maps of two concepts, planted as
  extra channels of ``layer4`` (``puretools.planted``); the true source of a reference is the
  map that is larger at the neuron's max location; k = 2. Pairs are chosen by ground-truth
  balance only: all 120 pairs are planted, and those whose top-100 references split most
  evenly between the two sources are kept (never by any method's score).

Each model's score per method and case is the mean over its neurons (ARI, adjusted Rand index:
1 = the ground truth, 0 = chance); across models the table shows mean and spread.

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
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_circuits import machine_info, print_machine  # noqa: E402

import puretools as pt  # noqa: E402
from puretools import toyworld  # noqa: E402
from puretools.planted import class_activation_units, plant_neurons, planted_sources  # noqa: E402
from puretools.sae import activations_at_max, sae_split, train_layer_sae  # noqa: E402

METHODS = ("PURE-gradient", "PURE-LRP", "PURE-cosine", "activations", "SAE")
CASES = ("natural", "planted", "natural-dominant")
N_REF = 100
SAE_TRAIN_IMAGES = 2000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shipped"],
                   help="toy checkpoints: 'shipped' (data/toyworld) or folders/files written by "
                        "`python -m puretools toy train --out DIR` (default: shipped)")
    p.add_argument("--pairs", type=int, default=12, help="planted pairs per model (default 12; --quick: 4)")
    p.add_argument("--quick", action="store_true", help="first model only, 4 planted pairs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def checkpoint(spec: str) -> Path:
    if spec == "shipped":
        return toyworld.DATA_DIR / "model.safetensors"
    path = Path(spec)
    return path / "model.safetensors" if path.is_dir() else path


def record_of(path: Path) -> dict:
    rec = path.parent / "record.json"
    return json.loads(rec.read_text()) if rec.is_file() else {}


def kmeans(features: torch.Tensor, ks: list[int]) -> torch.Tensor:
    return pt.VirtualNeurons(seed=0).fit(features, k=ks).labels


def unit_length(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def score(labels: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean ARI and purity over neurons, and per-neuron ARI; unlabelled references left out."""
    per = [toyworld.ground_truth_scores(c, t) for c, t in zip(labels, truth)]
    ari = [s["ari"] for s in per]
    return {"ari": float(np.nanmean(ari)), "purity": float(np.nanmean([s["purity"] for s in per])),
            "per_neuron_ari": [round(a, 4) for a in ari],
            "excluded": int(sum(s["n_excluded"] for s in per)), "scored": int(sum(s["n_scored"] for s in per))}


def split_all(model, data, layer, lower, refs, neurons, ks, act_layer, sae, read_layer, readouts) -> dict:
    """Cluster labels [N, n_ref] of every method for the given neurons of ``layer``."""
    t = {}
    start = time.perf_counter()
    grad = pt.circuit_attributions(model, data, layer, lower, refs, neurons=neurons, progress=False)
    lrp = pt.circuit_attributions(model, data, layer, lower, refs, neurons=neurons, method="lrp", progress=False)
    t["circuits_s"] = time.perf_counter() - start
    acts = pt.activation_features(model, data, act_layer, refs.indices[neurons])
    h = activations_at_max(model, data, layer, refs, neurons, read_layer=read_layer)
    start = time.perf_counter()
    labels = {
        "PURE-gradient": kmeans(grad, ks),
        "PURE-LRP": kmeans(lrp, ks),
        "PURE-cosine": kmeans(unit_length(grad), ks),
        "activations": kmeans(acts, ks),
        "SAE": torch.stack([sae_split(sae, h[j], readouts[j]) for j in range(len(neurons))]),
    }
    t["clustering_s"] = time.perf_counter() - start
    return labels, t


def run_model(spec: str, n_pairs: int, data, train) -> dict:
    path = checkpoint(spec)
    if not path.is_file():
        raise SystemExit(f"No toy checkpoint at {path}: train one with "
                         f"`python -m puretools toy train --seed S --out DIR` and pass DIR.")
    rec = record_of(path)
    model = toyworld.load_toy_model(path)
    layer, lower = toyworld.LAYER, toyworld.LOWER_LAYER
    times = {}
    start = time.perf_counter()
    refs = pt.collect_references(model, data, layer, n_ref=N_REF, progress=False)
    causal = toyworld.causal_concepts(model, data, layer, refs)  # [C, n_ref]
    times["references_and_causal_labels_s"] = time.perf_counter() - start
    n_concepts = len(toyworld.CONCEPTS)
    shares = toyworld.label_shares(causal, n_concepts)
    natural = toyworld.polysemantic_neurons(refs, data.labels, concepts=causal)
    ks = [int((shares[n] >= 0.2).sum()) for n in natural]

    start = time.perf_counter()
    sae = train_layer_sae(model, train, layer, n_images=SAE_TRAIN_IMAGES, seed=0)
    times["sae_training_s"] = time.perf_counter() - start

    out = {"model": spec, "checkpoint": str(path), "train_seed": rec.get("seed"), "sha256": rec.get("sha256"),
           "exact_match_accuracy": rec.get("exact_match_accuracy"), "macro_f1": rec.get("macro_f1"),
           "sae": {"n_latents": sae.n_latents, "top_k": sae.top_k, "r2_train": round(sae.r2, 4),
                   "dead_latents": round(sae.dead, 4), "train_images": SAE_TRAIN_IMAGES},
           "natural_neurons": natural, "natural_k": ks,
           "unlabelled_references": int((causal[natural] < 0).sum()), "scores": {m: {} for m in METHODS}}
    if natural:
        labels, t = split_all(model, data, layer, lower, refs, natural, ks, layer, sae, layer, natural)
        times.update({f"natural_{k}": v for k, v in t.items()})
        dominant = torch.stack([toyworld.dominant_concepts(data.labels[refs.indices[n]]) for n in natural])
        for m in METHODS:
            out["scores"][m]["natural"] = score(labels[m], causal[natural])
            out["scores"][m]["natural-dominant"] = score(labels[m], dominant)

    # planted: plant every pair, keep the most balanced ones by their true sources
    start = time.perf_counter()
    all_pairs = [(a, b) for a in range(n_concepts) for b in range(a + 1, n_concepts)]
    units = class_activation_units(model.fc)
    everything = plant_neurons(model, layer, units, all_pairs)
    prefs = pt.collect_references(everything.model, data, everything.layer, n_ref=N_REF, progress=False)
    sources = planted_sources(everything, data, prefs.indices[everything.channels])  # [120, n_ref]
    balance = []
    for p, (a, b) in enumerate(all_pairs):
        known = sources[p][sources[p] >= 0]
        share = float((known == a).float().mean()) if len(known) else 0.0
        balance.append(min(share, 1 - share))
    order = sorted(range(len(all_pairs)), key=lambda p: (-balance[p], p))[:n_pairs]
    pairs = [all_pairs[p] for p in order]
    planted = plant_neurons(model, layer, units, pairs)
    prefs = pt.collect_references(planted.model, data, planted.layer, n_ref=N_REF, progress=False)
    truth = planted_sources(planted, data, prefs.indices[planted.channels])
    times["planting_s"] = time.perf_counter() - start
    plant = pt.get_module(planted.model, planted.layer)
    readouts = [lambda x, c=c: plant(x[:, :, None, None])[:, c, 0, 0] for c in planted.channels]
    labels, t = split_all(planted.model, data, planted.layer, lower, prefs, planted.channels, [2] * len(pairs),
                          planted.inner, sae, planted.inner, readouts)  # fmt: skip
    times.update({f"planted_{k}": v for k, v in t.items()})
    for m in METHODS:
        out["scores"][m]["planted"] = score(labels[m], truth)
    out["planted_pairs"] = [[toyworld.CONCEPTS[a], toyworld.CONCEPTS[b]] for a, b in pairs]
    out["planted_balance"] = [round(balance[p], 3) for p in order]
    out["unlabelled_planted_references"] = int((truth < 0).sum())
    out["times_s"] = {k: round(v, 1) for k, v in times.items()}
    return out


def aggregate(models: list[dict]) -> dict:
    table = {}
    for m in METHODS:
        table[m] = {}
        for case in CASES:
            values = [r["scores"][m][case]["ari"] for r in models if case in r["scores"][m]]
            if values:
                table[m][case] = {"mean": round(float(np.mean(values)), 4),
                                  "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None,
                                  "min": round(float(np.min(values)), 4), "max": round(float(np.max(values)), 4),
                                  "per_model": [round(v, 4) for v in values]}
    return table


def print_table(table: dict, n_models: int) -> None:
    width = 28 if n_models > 1 else 18
    print(f"\nmean ARI against ground truth ({n_models} model{'s' if n_models > 1 else ''}"
          + (": mean +- sd (min-max) over models" if n_models > 1 else "") + ")")
    print(f"{'method':15s}" + "".join(f"{c:>{width}s}" for c in CASES))
    for m in METHODS:
        cells = []
        for case in CASES:
            c = table[m].get(case)
            if c is None:
                cells.append(f"{'-':>{width}s}")
            elif n_models > 1:
                cells.append(f"{c['mean']:.2f} +- {c['sd']:.2f} ({c['min']:.2f}-{c['max']:.2f})".rjust(width))
            else:
                cells.append(f"{c['mean']:{width}.2f}")
        print(f"{m:15s}" + "".join(cells))


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
    models = []
    for spec in specs:
        t = time.perf_counter()
        r = run_model(spec, n_pairs, data, train)
        models.append(r)
        print(f"\n{spec} (train seed {r['train_seed']}, {time.perf_counter() - t:.0f} s): natural neurons "
              f"{r['natural_neurons']} (k {r['natural_k']}, {r['unlabelled_references']} unlabelled references), "
              f"SAE R2 {r['sae']['r2_train']:.2f} with {r['sae']['dead_latents']:.0%} dead latents")
        print("  planted pairs (balance): " + ", ".join(
            f"{a}+{b} ({bal:.2f})" for (a, b), bal in zip(r["planted_pairs"], r["planted_balance"])))
        for m in METHODS:
            s = r["scores"][m]
            print(f"  {m:15s}" + "  ".join(f"{case} {s[case]['ari']:.2f}" for case in CASES if case in s))
    table = aggregate(models)
    print_table(table, len(models))
    wall = time.perf_counter() - start
    result = {
        "benchmark": "bench_disentangle", "argv": sys.argv[1:], "machine": info,
        "load_avg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "wall_s": round(wall, 1), "methods": list(METHODS), "cases": list(CASES), "n_ref": N_REF,
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
