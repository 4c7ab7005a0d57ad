"""Using virtual neurons on held-out images: heatmap weights, and editing routed by circuits or by activations.

Two sections, both on the shipped toy model (or ``--model DIR``), virtual neurons fitted on
the test split's references of every polysemantic neuron of ``layer4`` (causal labels, k = the
neuron's ground-truth number of concepts; each virtual neuron's concept is the most common
causal label of its references), and measured on images of other toy worlds (same generator,
other seeds), none of them a reference:

- ``heatmaps`` (world seed 2): for every virtual neuron and every held-out image holding both
  its own concept and another concept of the same neuron, the share of the heatmap's positive
  relevance inside the own object's mask and inside the other object's mask
  (``ToyWorld.masks``), for ``virtual_heatmaps(weights="partition")`` and
  ``weights="contrastive"``, with LRP and with gradient x input; the whole neuron's heatmap
  beside them.
- ``editing`` (world seed 1): each virtual neuron is switched off (the neuron's map set to 0
  for the images routed to it), routing by circuits (PURE-gradient, nearest centroid, as
  ``edit_virtual_neurons``) or by activation features (``act-mean``, ``act-peak``: k-means
  on the references' features, nearest centroid for the new image). Per virtual neuron: the
  drop in recall (logit > 0) of its own concept, the drop of the neuron's other concepts
  (collateral), and the drop of the own concept when the whole neuron is off; selectivity =
  own drop / whole-neuron drop.

Examples
--------
::

    python benchmarks/bench_virtual_use.py --quick      # fewer images
    python benchmarks/bench_virtual_use.py --json benchmarks/results/virtual_use.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import common
import numpy as np
import torch

import puretools as pt
from puretools import toyworld
from puretools.models import get_module

LAYER, LOWER = toyworld.LAYER, toyworld.LOWER_LAYER
ROUTERS = ("PURE-gradient", "act-mean", "act-peak")


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__, raw=False)
    p.add_argument("--model", default="shipped", help="toy checkpoint folder (default: the shipped one)")
    common.add_quick(p, help="fewer held-out images")
    p.add_argument("--sections", nargs="+", default=["heatmaps", "editing"], choices=["heatmaps", "editing"])
    common.add_threads(p, default=1)
    common.add_json(p)
    return p.parse_args(argv)


def fit_all(model, data):
    refs = pt.collect_references(model, data, LAYER, n_ref=100, progress=False)
    causal = toyworld.causal_concepts(model, data, LAYER, refs)
    poly = toyworld.polysemantic_neurons(refs, data.labels, concepts=causal)
    shares = toyworld.label_shares(causal, len(toyworld.CONCEPTS))
    ks = [int((shares[n] >= 0.2).sum()) for n in poly]
    feats = {
        "PURE-gradient": pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=poly, progress=False),
        "act-mean": pt.activation_features(model, data, LAYER, refs, neurons=poly),
        "act-peak": pt.activation_features(model, data, LAYER, refs, neurons=poly, where="peak"),
    }
    vns = {m: pt.VirtualNeurons(seed=0).fit(f, k=ks, neurons=poly) for m, f in feats.items()}
    for vn in vns.values():
        vn.n_channels = refs.n_channels
    concept = {}  # (router, neuron, j) -> concept id of the virtual neuron (most common causal label)
    for m, vn in vns.items():
        for i, n in enumerate(poly):
            for j in range(ks[i]):
                lab = causal[n][(vn.labels[i] == j) & (causal[n] >= 0)]
                concept[(m, n, j)] = int(torch.bincount(lab).argmax()) if len(lab) else -1
    top = {n: [int(c) for c in torch.nonzero(shares[n] >= 0.2).flatten()] for n in poly}
    return refs, causal, poly, ks, vns, concept, top


def share_in(h, m):
    pos = h.clamp(min=0)
    return (pos * m).flatten(1).sum(1) / pos.flatten(1).sum(1).clamp_min(1e-12)


def heatmaps(model, vns, poly, concept, top, n_world):
    world = toyworld.ToyWorld("test", n=n_world, seed=2)
    vn = vns["PURE-gradient"]
    rows = []
    for i, n in enumerate(poly):
        for j in range(vn.ks[i]):
            own = concept[("PURE-gradient", n, j)]
            others = [c for c in top[n] if c != own]
            if own < 0 or not others:
                continue
            for other in others:
                idx = torch.nonzero((world.labels[:, own] > 0) & (world.labels[:, other] > 0)).flatten()
                if not len(idx):
                    continue
                images = torch.stack([world[int(t)][0] for t in idx])
                masks = torch.stack([world.masks(int(t)) for t in idx]).float()
                for method in ("lrp", "gradient"):
                    for weights in ("partition", "contrastive"):
                        heat, full = pt.virtual_heatmaps(model, images, LAYER, LOWER, vn, n, method=method,
                                                         weights=weights, return_full=True)  # fmt: skip
                        rows.append({"neuron": n, "virtual": j, "own": own, "other": other, "method": method,
                                     "weights": weights, "n_images": len(idx),
                                     "own_share": float(share_in(heat[j], masks[:, own]).mean()),
                                     "other_share": float(share_in(heat[j], masks[:, other]).mean()),
                                     "whole_own": float(share_in(full, masks[:, own]).mean()),
                                     "whole_other": float(share_in(full, masks[:, other]).mean())})  # fmt: skip
    table = {}
    for method in ("lrp", "gradient"):
        for weights in ("partition", "contrastive"):
            sel = [r for r in rows if r["method"] == method and r["weights"] == weights]
            w = np.array([r["n_images"] for r in sel], dtype=float)
            table[f"{method}/{weights}"] = {
                key: round(float(np.average([r[key] for r in sel], weights=w)), 4)
                for key in ("own_share", "other_share", "whole_own", "whole_other")
            } | {"pairs": len(sel), "images": int(w.sum()),
                 "own_minus_other_unweighted": round(float(np.mean([r["own_share"] - r["other_share"] for r in sel])), 4)}  # fmt: skip
    return rows, table


def recall(model, images, labels, off=None, batch=500):
    """Recall per concept (logit > 0 on the images holding it); ``off`` = BoolTensor [M, C_layer] zeroed maps."""
    handle = None
    state = {"s": 0}
    if off is not None:
        def hook(_m, _i, out):
            rows = off[state["s"] : state["s"] + len(out)].to(out.device)
            return out * (~rows).float()[:, :, None, None]

        handle = get_module(model, LAYER).register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = []
            for s in range(0, len(images), batch):
                state["s"] = s
                logits.append(model(images[s : s + batch]))
            logits = torch.cat(logits)
    finally:
        if handle is not None:
            handle.remove()
    present = labels > 0
    return ((logits > 0) & present).sum(0).float() / present.sum(0).clamp(min=1)


def routes_for(model, world, images, poly, vns, router):
    """Virtual neuron [N, M] of every new image for every fitted neuron, by one router."""
    vn = vns[router]
    if router == "PURE-gradient":
        return pt.route_images(model, images, LAYER, LOWER, vn).routes
    m = len(world)
    refs = torch.arange(m).expand(vn.n_channels, m)
    where = "peak" if router == "act-peak" else "mean"
    feats = pt.activation_features(model, world, LAYER, refs, neurons=poly, where=where)
    return vn.assign(feats)


def editing(model, vns, poly, concept, top, n_world, n_channels):
    world = toyworld.ToyWorld("test", n=n_world, seed=1)
    images, labels = world.images, world.labels
    base = recall(model, images, labels)
    rows = []
    whole = {}
    for i, n in enumerate(poly):
        off = torch.zeros(len(images), n_channels, dtype=torch.bool)
        off[:, n] = True
        whole[n] = recall(model, images, labels, off)
    for router in ROUTERS:
        routes = routes_for(model, world, images, poly, vns, router)
        for i, n in enumerate(poly):
            for j in range(vns[router].ks[i]):
                own = concept[(router, n, j)]
                others = [c for c in top[n] if c != own]
                off = torch.zeros(len(images), n_channels, dtype=torch.bool)
                off[:, n] = routes[i] == j
                r = recall(model, images, labels, off)
                own_drop = float(base[own] - r[own]) if own >= 0 else float("nan")
                whole_drop = float(base[own] - whole[n][own]) if own >= 0 else float("nan")
                coll = float(np.mean([float(base[c] - r[c]) for c in others])) if others else float("nan")
                coll_whole = float(np.mean([float(base[c] - whole[n][c]) for c in others])) if others else float("nan")
                rows.append({"router": router, "neuron": n, "virtual": j, "concept": toyworld.CONCEPTS[own] if own >= 0 else None,
                             "own_recall": round(float(base[own]), 4), "own_drop": round(own_drop, 4),
                             "collateral_drop": round(coll, 4), "whole_own_drop": round(whole_drop, 4),
                             "whole_collateral_drop": round(coll_whole, 4),
                             "share_routed": round(float((routes[i] == j).float().mean()), 4)})  # fmt: skip
    summary = {}
    for router in ROUTERS:
        sel = [r for r in rows if r["router"] == router and r["whole_own_drop"] > 0.05]
        summary[router] = {
            "virtual_neurons": len(sel),
            "own_drop": round(float(np.mean([r["own_drop"] for r in sel])), 4),
            "collateral_drop": round(float(np.mean([r["collateral_drop"] for r in sel])), 4),
            "whole_own_drop": round(float(np.mean([r["whole_own_drop"] for r in sel])), 4),
            "selectivity": round(float(np.sum([r["own_drop"] for r in sel]) / np.sum([r["whole_own_drop"] for r in sel])), 4),
        }  # fmt: skip
    return rows, summary


def main(argv=None) -> int:
    args = parse_args(argv)
    info = common.start(None, torch.device("cpu"), args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    path = toyworld.DATA_DIR / "model.safetensors" if args.model == "shipped" else Path(args.model) / "model.safetensors"
    model = toyworld.load_toy_model(path)
    data = toyworld.ToyWorld("test")
    refs, causal, poly, ks, vns, concept, top = fit_all(model, data)
    print(f"polysemantic neurons {poly}, ground-truth k {ks}")
    result = {"benchmark": "bench_virtual_use", "argv": sys.argv[1:], "machine": info, "neurons": poly, "ks": ks}
    if "heatmaps" in args.sections:
        rows, table = heatmaps(model, vns, poly, concept, top, 1500 if args.quick else 6000)
        print("\nvirtual heatmaps on held-out images holding both concepts (ToyWorld('test', seed=2)):")
        print(f"{'method/weights':24s} {'own mask':>9s} {'other mask':>11s} {'whole: own':>11s} {'whole: other':>13s} "
              f"{'pairs':>6s} {'images':>7s}")  # fmt: skip
        for key, c in table.items():
            print(f"{key:24s} {c['own_share']:9.3f} {c['other_share']:11.3f} {c['whole_own']:11.3f} "
                  f"{c['whole_other']:13.3f} {c['pairs']:6d} {c['images']:7d}")  # fmt: skip
        result["heatmaps"] = {"table": table, "rows": rows}
    if "editing" in args.sections:
        rows, summary = editing(model, vns, poly, concept, top, 1000 if args.quick else 3000, refs.n_channels)
        print("\nediting on held-out images (ToyWorld('test', seed=1)); drops in recall (logit > 0):")
        print(f"{'router':14s} {'neuron':>6s} {'VN':>3s} {'concept':>14s} {'routed':>7s} {'own drop':>9s} "
              f"{'collateral':>11s} {'whole: own':>11s} {'whole: coll.':>13s}")  # fmt: skip
        for r in rows:
            print(f"{r['router']:14s} {r['neuron']:6d} {r['virtual']:3d} {str(r['concept']):>14s} {r['share_routed']:7.2f} "
                  f"{r['own_drop']:9.3f} {r['collateral_drop']:11.3f} {r['whole_own_drop']:11.3f} "
                  f"{r['whole_collateral_drop']:13.3f}")  # fmt: skip
        print("\nsummary over virtual neurons whose whole neuron's removal drops their concept by > 0.05:")
        for router, s in summary.items():
            print(f"{router:14s} n={s['virtual_neurons']:2d}  own drop {s['own_drop']:.3f}  collateral "
                  f"{s['collateral_drop']:.3f}  whole-neuron drop {s['whole_own_drop']:.3f}  selectivity "
                  f"(own / whole) {s['selectivity']:.3f}")
        result["editing"] = {"rows": rows, "summary": summary}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["load_avg_1min_end"] = common.load_avg()
    print(f"\nwall time {result['wall_s']:.0f} s; load average (1 min) at end: {result['load_avg_1min_end']}")
    if args.json:
        common.write_json(args.json, result, indent=1, newline=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
