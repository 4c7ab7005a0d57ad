"""PURE against its strongest simple rivals on the toy models' polysemantic neurons, without leaks.

Runs :func:`puretools.baselines.compare_protocol` on each toy checkpoint: methods PURE-gradient,
PURE-LRP, act-mean (the paper's spatial-mean baseline), act-peak and act-peak-lower (the
layer's and the lower layer's activation vector at the neuron's peak location) and the best
SAE (size, top-k and split rule chosen on validation). Every setting (the k rule, shared by
all methods; each method's distance; the SAE) is chosen on validation images
(``ToyWorld("test", seed=1)``: another world from the same generator, never scored); the scores
come from the test split (``ToyWorld("test")``), with ``--seeds`` k-means seeds (a model trained on
a world variant, ``"variant"`` in its ``record.json``, e.g. V2 of ``README.md``, gets the same
variant's validation, test and SAE-training worlds). Label-free k
is the main row, ground-truth k the oracle row. Scores: ARI over the causally labelled
references (as before) and ARI counting the unlabelled references as a class of their own,
with the coverage (share labelled); mean +- sd over models [sd over seeds], and paired
bootstrap 95 % intervals of PURE-gradient minus each method (neurons resampled within models).
``--quick`` (under 3 minutes on one thread: see ``RESULTS.md``) measures the same thing on
less: the first model only, 3 k-means seeds on test (full: 10) and 1 on validation (full: 3),
one SAE config (32 latents, top-4; full: 16x2, 32x4, 64x4 to choose from) trained 5 epochs
(full: 20). The references, causal labels, methods, k rules, distances, split rules, SAE
training images, validation and test worlds are those of the full run. (An SAE on 500 instead
of 2,000 train images saved about 10 s but scored 0.77 instead of 0.98: not worth it.) Where the time goes (cProfile of ``--quick``): k-means (about a third,
sklearn's ``KMeans`` with 10 initialisations, for k = 2..5 per neuron, method, distance and
seed), the k rules' scores (a sixth), the model's forward and backward passes for
references, causal labels and circuits (a quarter), the imports (a sixth).
``--legacy`` runs the earlier comparison (:func:`puretools.disentangle.compare_on_toy`, with
the planted case) instead.

Examples
--------
::

    python benchmarks/bench_disentangle.py --quick        # shipped model, 3 seeds, one SAE (5 epochs)
    python -m puretools toy train --seed 1 --out /tmp/toy-seed1
    python benchmarks/bench_disentangle.py --models shipped /tmp/toy-seed1 \\
        --json benchmarks/results/disentangle_protocol.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import common
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from puretools import toyworld
from puretools.baselines import (
    FEATURE_METHODS,
    PROTOCOL_METHODS,
    compare_protocol,
    format_protocol_table,
    run_split,
    summarize,
)
from puretools.disentangle import CASES, METHODS, aggregate, compare_on_toy, format_table
from puretools.references import collect_references

SAE_TRAIN_IMAGES = 2000


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["shipped"],
                   help="toy checkpoints: 'shipped' (data/toyworld) or folders/files written by "
                        "`python -m puretools toy train --out DIR` (default: shipped)")
    p.add_argument("--pairs", type=int, default=12, help="planted pairs per model (default 12; --quick: 4)")
    common.add_quick(p, help="the first model only, 3 k-means seeds (1 on validation), one SAE (5 epochs); "
                            "--legacy: 4 planted pairs")
    p.add_argument("--seeds", type=int, default=10, help="k-means seeds on test (default 10; --quick: 3)")
    p.add_argument("--legacy", action="store_true", help="the earlier comparison with planted neurons instead")
    p.add_argument("--probe-pairs", action="store_true",
                   help="for models trained with merged labels (V1): also a diagnostic, outside the protocol, "
                        "of whether each method's features hold a merged pair's difference at all (5-fold "
                        "logistic-regression accuracy on the validation world's references of the pair)")
    p.add_argument("--peak-where", action="store_true",
                   help="for models of a world variant with composites (V2): also a diagnostic, outside the protocol, "
                        "of where each neuron peaks on the validation world's references of a merged pair: the "
                        "share of the peak's 4x4-pixel block on the composite's frame, inside it, or outside it")
    common.add_threads(p, default=1, help="torch threads (default 1)")
    common.add_json(p, help="write the results to this JSON file")
    return p.parse_args(argv)


def checkpoint(spec: str) -> Path:
    if spec == "shipped":
        return toyworld.DATA_DIR / "model.safetensors"
    path = Path(spec)
    return path / "model.safetensors" if path.is_dir() else path


def run_protocol(args) -> dict:
    info = common.start(None, torch.device("cpu"), args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    specs = args.models[:1] if args.quick else args.models
    n_seeds = 3 if args.quick else args.seeds
    grid = ((32, 4),) if args.quick else ((16, 2), (32, 4), (64, 4))
    choose_seeds = (0,) if args.quick else (0, 1, 2)
    start = time.perf_counter()
    worlds = {}  # per toy-world variant (record.json's "variant"; None: the default world)
    runs, models = [], []
    for spec in specs:
        path = checkpoint(spec)
        if not path.is_file():
            raise SystemExit(f"No toy checkpoint at {path}: train one with "
                             "`python -m puretools toy train --seed S --out DIR` and pass DIR.")
        record_path = path.parent / "record.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        merged = [tuple(pair) for pair in record.get("merge", [])]  # variant V1: pairs trained as one label
        variant = record.get("variant")  # variant V2: the model was trained (and is scored) on another world
        if variant not in worlds:
            worlds[variant] = (
                toyworld.ToyWorld("test", seed=1, variant=variant),  # another world of the same generator: chooses, never scored
                toyworld.ToyWorld("test", variant=variant),
                toyworld.ToyWorld("train", n=SAE_TRAIN_IMAGES, variant=variant),
            )
        val, test, train = worlds[variant]
        t = time.perf_counter()
        r = compare_protocol(toyworld.load_toy_model(path), val, test, train, n_seeds=n_seeds, sae_grid=grid,
                             choose_seeds=choose_seeds, sae_epochs=5 if args.quick else 20,
                             merged_pairs=merged)  # fmt: skip
        runs.append(r)
        st = r.settings
        print(f"\n{spec} (train seed {record.get('seed')}{'' if variant is None else f', world variant {variant}'}, "
              f"{time.perf_counter() - t:.0f} s): test neurons "
              f"{r.neurons} (ground-truth k {r.true_k}); coverage {r.coverage:.3f} "
              f"({r.n_unlabelled} of {r.n_references} references unlabelled)")
        print(f"  chosen on validation (neurons {st['val_neurons']}): k rule {st['k_rule']} "
              f"(val ARI {', '.join(f'{k} {v:.3f}' for k, v in st['validation']['k_rules'].items())}); "
              f"distances {st['distance']}; SAE {st['sae']} (val ARI {st['validation']['sae'][st['sae']]:.3f})")
        for m in PROTOCOL_METHODS:
            k = r.chosen_k[m]
            print(f"  {m:15s} label-free ARI {np.nanmean(r.scores[m]['label-free'][..., 0]):.3f} "
                  f"(k chosen = ground truth on {float((k == np.array(r.true_k)[:, None]).mean()):.0%}), "
                  f"oracle {np.nanmean(r.scores[m]['oracle'][..., 0]):.3f}")
        if merged:
            print(f"  merged pairs {merged}; test neurons that mix one: {r.pair_neurons or 'none'}")
            for m in PROTOCOL_METHODS:
                if r.pair_neurons:
                    print(f"  {m:15s} pair ARI (references of the pair only) label-free "
                          f"{np.nanmean(r.pair_scores[m]['label-free']):.3f}, oracle "
                          f"{np.nanmean(r.pair_scores[m]['oracle']):.3f}")
        probe = probe_pairs(toyworld.load_toy_model(path), val, merged) if merged and args.probe_pairs else []
        where = peak_where(toyworld.load_toy_model(path), val, merged) if merged and args.peak_where else []
        for row in where:
            print(f"  peak (validation) neuron {row['neuron']} {row['concept']} ({row['n']} references): share of the "
                  f"peak block on the frame {row['frame']:.2f}, inside {row['inside']:.2f}, outside {row['outside']:.2f}")
        for row in probe:
            print(f"  probe (validation) neuron {row['neuron']} {row['pair'][0]} {row['n'][0]} / {row['pair'][1]} "
                  f"{row['n'][1]}: majority {row['majority']:.2f}; "
                  + ", ".join(f"{m} {v:.2f}" for m, v in row["accuracy"].items()))
        models.append({"model": spec, "train_seed": record.get("seed"), "sha256": record.get("sha256"),
                       "merge": [list(pair) for pair in merged], "variant": variant, "pair_probe": probe,
                       "peak_where": where,
                       "pair_neurons": {str(n): v for n, v in r.pair_neurons.items()},
                       "pair_scores": {m: {mode: _row_means(v) for mode, v in r.pair_scores[m].items()}
                                       for m in r.pair_scores},  # per neuron; None: mixes no pair
                       "settings": st, "neurons": r.neurons, "true_k": r.true_k, "coverage": r.coverage,
                       "n_unlabelled": r.n_unlabelled, "n_references": r.n_references,
                       "overlap_val_test_images": r.selection_digests_overlap, "sae": r.sae,
                       "times_s": r.times_s,
                       "per_neuron": {m: {mode: np.round(np.nanmean(v, axis=1), 4).tolist()
                                          for mode, v in r.scores[m].items()} for m in PROTOCOL_METHODS},
                       "chosen_k": {m: v.tolist() for m, v in r.chosen_k.items()}})  # fmt: skip
    summary = summarize(runs)
    n = len(runs)
    print(f"\nARI against causal labels on test ({n} model{'s' if n > 1 else ''}, {n_seeds} k-means seeds): "
          "mean +- sd over models [sd over seeds]")
    print(format_protocol_table(summary, [r.coverage for r in runs]))
    pair_summary = summarize_pairs(runs)
    probes = [row for m in models for row in m["pair_probe"]]
    if probes:
        print(f"\nprobe (validation, outside the protocol): mean 5-fold accuracy over {len(probes)} (model, neuron, "
              f"pair) cases, majority share {np.mean([row['majority'] for row in probes]):.3f}: " + ", ".join(
                  f"{m} {np.mean([row['accuracy'][m] for row in probes]):.3f}" for m in FEATURE_METHODS))
    if pair_summary:
        print("\nmerged pairs (V1): ARI on the references of a merged pair only, over the test neurons that "
              f"mix one ({pair_summary['n_neurons']} neuron(s) over {n} models): mean over those neurons [sd over seeds]")
        for m in PROTOCOL_METHODS:
            c = pair_summary[m]
            print(f"  {m:15s} label-free {c['label-free']['mean']:.3f} [{c['label-free']['sd_seeds']:.3f}]   "
                  f"oracle {c['oracle']['mean']:.3f} [{c['oracle']['sd_seeds']:.3f}]")
    wall = time.perf_counter() - start
    result = {
        "benchmark": "bench_disentangle (protocol)", "argv": sys.argv[1:], "machine": info,
        "load_avg_1min_end": common.load_avg(),
        "wall_s": round(wall, 1), "methods": list(PROTOCOL_METHODS), "n_seeds": n_seeds,
        "validation_world": "ToyWorld('test', seed=1)", "test_world": "ToyWorld('test')",
        "world_variants": sorted(v for v in worlds if v is not None),  # worlds of the models' record.json
        "summary": summary, "pair_summary": pair_summary, "models": models,
    }
    print(f"\nwall time {wall:.0f} s; load average (1 min) at end: {result['load_avg_1min_end']}")
    if args.json:
        common.write_json(args.json, result, indent=1, default=float, newline=True)
        print(f"wrote {args.json}")
    return result


def probe_pairs(model, val, merged, min_refs: int = 5) -> list[dict]:
    """Diagnostic, not part of the protocol (nothing is chosen or scored from it): on the validation
    world, for every neuron with >= ``min_refs`` references of each member of a merged pair, the
    5-fold cross-validated accuracy of a logistic regression (standardised features) that tells the
    two members apart from each feature method. Near the majority share: the features do not hold
    the difference; well above it while the pair ARI is near 0: they hold it, but it is not what
    k-means splits on."""
    r = run_split(model, val, "val", {})
    rows = []
    for j, n in enumerate(r.neurons):
        truth = r.truth[j].numpy()
        for a, b in merged:
            ia, ib = toyworld.CONCEPTS.index(a), toyworld.CONCEPTS.index(b)
            keep = np.isin(truth, [ia, ib])
            na, nb = int((truth == ia).sum()), int((truth == ib).sum())
            if min(na, nb) < min_refs:
                continue
            y = (truth[keep] == ib).astype(int)
            acc = {}
            for m in FEATURE_METHODS:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
                acc[m] = round(float(cross_val_score(clf, r.features[m][j][keep], y, cv=min(5, na, nb)).mean()), 4)
            rows.append({"neuron": n, "pair": [a, b], "n": [na, nb], "majority": round(max(na, nb) / (na + nb), 4),
                         "accuracy": acc})  # fmt: skip
    return rows


def peak_where(model, val, merged, min_refs: int = 5) -> list[dict]:
    """Diagnostic, not part of the protocol: on the validation world, for every neuron with >=
    ``min_refs`` references causally labelled with a member of a merged pair (per member), where
    the neuron peaks on that object. The peak is the argmax of the neuron's ``layer4`` map; with
    ``layer4`` at 1/4 of the image's resolution it covers a block of 4 x 4 pixels. Returned: the
    mean share of that block's pixels on the object's frame (the outer ``_FRAME`` px of its box,
    the part the two V2 composites share), inside the frame (where they differ) and outside the
    object's box."""
    layer = toyworld.LAYER
    refs = collect_references(model, val, layer, n_ref=100, progress=False)
    causal = toyworld.causal_concepts(model, val, layer, refs)  # [C, n_ref]
    maps = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: maps.__setitem__("out", o))
    sc, s = val._scenes, toyworld.IMAGE_SIZE
    grid = np.arange(s) + 0.5
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    rows = []
    try:
        for n in range(refs.n_channels):
            for c in sorted({name for pair in merged for name in pair}):
                cid = toyworld.CONCEPTS.index(c)
                idx = refs.indices[n][causal[n] == cid]
                if len(idx) < min_refs:
                    continue
                with torch.no_grad():
                    model(val.images[idx])
                fmap = maps["out"][:, n]  # [m, h, w]
                h, w = fmap.shape[-2:]
                flat = fmap.flatten(1).argmax(1)
                shares = []
                for i, f in zip(idx.tolist(), flat.tolist()):
                    j = next(slot for slot, cc in val.objects(i) if cc == cid)
                    r = sc["size"][i, j] / 2
                    ax, ay = np.abs(gx - sc["cx"][i, j]), np.abs(gy - sc["cy"][i, j])
                    box = (ax <= r) & (ay <= r)
                    inner = (ax <= r - toyworld.world._FRAME) & (ay <= r - toyworld.world._FRAME)
                    by, bx = (f // w) * s // h, (f % w) * s // w
                    block = np.zeros((s, s), dtype=bool)
                    block[by : by + s // h, bx : bx + s // w] = True
                    shares.append([(block & box & ~inner).mean(), (block & inner).mean(), (block & ~box).mean()])
                frame, inside, outside = (np.mean(shares, 0) / block.mean()).round(4).tolist()
                rows.append({"neuron": n, "concept": c, "n": len(idx), "frame": frame, "inside": inside,
                             "outside": outside})  # fmt: skip
    finally:
        handle.remove()
    return rows


def _row_means(v: np.ndarray) -> list:
    """Mean over seeds per neuron, rounded; None for a neuron without a value (valid JSON, no NaN)."""
    return [None if np.isnan(row).all() else round(float(np.nanmean(row)), 4) for row in v]


def summarize_pairs(runs) -> dict:
    """Pair ARI (V1) per method and mode: mean over the (model, neuron) cases that mix a merged pair."""
    cases = [(r, j) for r in runs if r.pair_scores for j in range(len(r.neurons))
             if not np.isnan(r.pair_scores["PURE-gradient"]["oracle"][j]).all()]  # fmt: skip
    if not cases:
        return {}
    out = {"n_neurons": len(cases)}
    for m in PROTOCOL_METHODS:
        out[m] = {}
        for mode in ("label-free", "oracle"):
            x = np.stack([r.pair_scores[m][mode][j] for r, j in cases])  # [cases, seeds]
            out[m][mode] = {"mean": round(float(np.nanmean(x)), 4),
                            "sd_seeds": round(float(np.std(np.nanmean(x, axis=0), ddof=1)), 4) if x.shape[1] > 1 else 0.0,
                            "per_case": np.round(np.nanmean(x, axis=1), 4).tolist()}  # fmt: skip
    return out


def run(args) -> dict:
    info = common.start(None, torch.device("cpu"), args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
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
        "load_avg_1min_end": common.load_avg(),
        "wall_s": round(wall, 1), "methods": list(METHODS), "cases": list(CASES),
        "table": table, "models": models,
    }
    print(f"\nwall time {wall:.0f} s; load average (1 min) at end: {result['load_avg_1min_end']}")
    if args.json:
        common.write_json(args.json, result, indent=1, newline=True)
        print(f"wrote {args.json}")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    (run if args.legacy else run_protocol)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
