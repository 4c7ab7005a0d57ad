"""PURE on the toy ViT's MLP neurons, scored against causal labels: the toy ResNet's protocol on a ViT.

The shipped toy ViT (``load_model("toy-vit")``, a timm ``VisionTransformer``), its layer of
interest ``toyworld.VIT_LAYER`` (the GELU of the last block's 8-neuron MLP, ``[B, 17, 8]``) and
the residual stream below it (``toyworld.VIT_LOWER_LAYER``), on the toy world's test split:

1. references: the top ``n_ref`` images of each neuron by its max over all tokens (CLS included);
2. causal labels (``toyworld.causal_concepts``: the object whose removal lowers that max most,
   when it halves it); natural polysemantic neurons: >= 2 concepts with >= 20 % of the labelled
   references, k = their number (the protocol of ``bench_disentangle.py``, case ``natural``);
3. circuits from the residual stream, summed over tokens: gradient (``circuit_attributions``,
   checked against autograd by hand, :func:`circuits_by_autograd`; where the installed
   puretools still reads tokens as channels, the autograd circuits are used and the run says
   so) and LRP where the installed puretools has transformer rules;
4. virtual neurons by k-means (``VirtualNeurons(seed=0)``) with k from the ground truth and with
   k from the silhouette (``k="auto"``, k = 2..5); the activation baseline
   (every neuron of the layer, mean over all tokens: :func:`token_mean_activations`) likewise;
5. ARI of each clustering against the causal labels, references without one left out.

Nothing here is tuned on the scores.

``--planted`` runs the other test instead: planted polysemantic neurons (:mod:`puretools.planted`)
with a known true source, since the layer's own neurons turned out monosemantic:

1. units: the layer's own 8 MLP neurons (``units = nn.Identity()``): a planted neuron is
   ``relu(a_i) + relu(a_j)`` at every token, appended as feature ``8 + p`` of the layer;
2. pairs, by a rule fixed before any score was seen: every pair of neurons whose top causal
   concepts (on the references of the run above) differ, ranked by balance (the smaller
   share of the two true sources among the planted neuron's references), the ``--pairs``
   most balanced ones (the rule of ``compare_on_toy``'s planted case, ``bench_disentangle.py
   --legacy``), ties by pair order;
3. true source of each reference (:func:`puretools.planted_sources`): the unit that is larger
   at the token where the planted neuron peaks;
4. features: PURE-gradient and PURE-LRP circuits from the residual stream
   (``VIT_LOWER_LAYER``, summed over tokens), and the activation baselines on the layer's own
   8 features (``activation_features(where="mean")``: mean over all tokens; ``where="peak"``:
   the vector at the token where the planted neuron peaks, checked against a computation by
   hand, :func:`peak_features_by_hand`); and
   ``act-peak-lower``: the residual stream (the lower layer, 48 features) at that token, the
   input PURE's circuits start from (a diagnostic row added after the first run);
5. k-means (``VirtualNeurons(seed=s)``, ``--seeds`` seeds) with k = 2 (the truth) and k by
   silhouette (``k="auto"``, k = 2..5); ARI against the true source, mean over the pairs,
   then mean and sd over the seeds. Per pair the run also prints (a diagnostic added after the
   first run) the share of references in which both units are strong (the smaller unit's
   token max >= half the larger's).

Examples
--------
::

    python benchmarks/bench_toy_vit.py --json benchmarks/results/toy_vit.json
    python benchmarks/bench_toy_vit.py --planted --json benchmarks/results/toy_vit_planted.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import common
import numpy as np
import torch
from torch import nn

import puretools as pt
from puretools import toyworld


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--weights", default=None,
                   help="a toy ViT checkpoint written by `toy train --arch vit --out DIR` (default: the shipped one)")
    p.add_argument("--n-ref", type=int, default=100, help="references per neuron (default 100)")
    p.add_argument("--n-images", type=int, default=None, help="test images (default: the whole split, 3,000)")
    p.add_argument("--min-share", type=float, default=0.2,
                   help="share of the labelled references a concept needs to count for a neuron (default 0.2)")
    p.add_argument("--planted", action="store_true",
                   help="score planted pairs of the layer's own neurons instead (see the docstring)")
    p.add_argument("--pairs", type=int, default=12, help="--planted: the most balanced pairs kept (default 12)")
    p.add_argument("--seeds", type=int, default=5, help="--planted: k-means seeds (default 5)")
    common.add_threads(p, default=1, help="torch threads (default 1)")
    common.add_json(p, help="write the results to this JSON file")
    common.add_quick(p, help="a smoke run: 500 images, 20 references, 3 pairs, 2 seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.n_images, args.n_ref, args.pairs, args.seeds = 500, 20, 3, 2
    return args


def mean_ari(labels: torch.Tensor, truth: torch.Tensor) -> tuple[float, list[float]]:
    per = [toyworld.ground_truth_scores(c, t)["ari"] for c, t in zip(labels, truth)]
    return float(np.nanmean(per)), [round(a, 4) for a in per]


def _images(data, indices: torch.Tensor) -> torch.Tensor:
    return torch.stack([data[int(i)][0] for i in indices])


def circuits_by_autograd(model, data, refs, neurons, batch_size: int = 100) -> torch.Tensor:
    """Gradient circuits by their definition, one neuron at a time: Tensor [len(neurons), n_ref, dim].

    The residual stream ``h`` entering the last block (``VIT_LOWER_LAYER``) is captured; the
    block is run from it by hand (timm's ``Block``: ``x = h + attn(norm1(h))``, then
    ``act(fc1(norm2(x)))``, the layer of interest); the backward pass starts from ``relu(a_k)``
    on neuron k at every token, and the circuit is gradient x activation at ``h``, summed over
    tokens and divided by its L1 norm.
    """
    block = model.blocks[-1]
    lower = model.blocks[-2]  # VIT_LOWER_LAYER
    out = []
    for k in neurons:
        rows = []
        for s in range(0, refs.indices.shape[1], batch_size):
            x = _images(data, refs.indices[k, s : s + batch_size])
            store = {}
            hook = lower.register_forward_hook(lambda m, i, o: store.__setitem__("h", o.detach()))
            with torch.no_grad():
                model(x)
            hook.remove()
            h = store["h"].clone().requires_grad_(True)  # [B, 17, dim]
            a = block.mlp.act(block.mlp.fc1(block.norm2(h + block.attn(block.norm1(h)))))  # [B, 17, 8]
            start = torch.zeros_like(a)
            start[..., k] = a[..., k].detach().clamp(min=0)
            (grad,) = torch.autograd.grad(a, h, start)
            c = (grad * h).sum(1).detach()  # [B, dim]
            rows.append(c / c.abs().sum(-1, keepdim=True).clamp(min=1e-12))
        out.append(torch.cat(rows))
    return torch.stack(out)


@torch.no_grad()
def token_mean_activations(model, data, indices: torch.Tensor) -> torch.Tensor:
    """The activation baseline's features: every neuron of the layer, mean over all tokens [N, n_ref, 8].

    The ViT counterpart of ``activation_features``' spatial mean on a CNN.
    """
    flat = indices.flatten()
    layer = f"blocks.{len(model.blocks) - 1}.mlp.act"  # VIT_LAYER
    acts = torch.cat([pt.layer_output(model, _images(data, flat[s : s + 500]), layer).mean(1)
                      for s in range(0, len(flat), 500)])  # fmt: skip
    return acts.reshape(*indices.shape, -1)


def setup(args):
    """Machine header, the toy ViT (shipped or ``--weights``), its record, layers and test images."""
    info = common.start(None, torch.device("cpu"), args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    path = Path(args.weights) if args.weights else toyworld.DATA_DIR / "vit.safetensors"
    record = json.loads((path.parent / "vit_record.json").read_text())
    layer, lower = record["config"]["layer"], record["config"]["lower_layer"]  # VIT_LAYER, VIT_LOWER_LAYER
    model = pt.load_model("toy-vit", weights=path)
    return info, path, record, layer, lower, model, toyworld.ToyWorld("test", n=args.n_images)


def summary(benchmark: str, info: dict, wall: float, times: dict) -> dict:
    """Print the wall time (by step) and the end-of-run load; the result's common fields."""
    load_end = common.load_avg()
    print(f"\nwall time {wall:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); "
          f"load average (1 min) at end: {load_end:.2f}")
    return {"benchmark": benchmark, "argv": sys.argv[1:], "machine": info, "load_avg_1min_end": load_end,
            "wall_s": round(wall, 1), "times_s": {k: round(v, 1) for k, v in times.items()}}


def run(args) -> dict:
    info, path, record, layer, lower, model, data = setup(args)
    times, start = {}, time.perf_counter()

    t = time.perf_counter()
    refs = pt.collect_references(model, data, layer, n_ref=args.n_ref, progress=False)  # max over all tokens
    times["references"] = time.perf_counter() - t
    t = time.perf_counter()
    causal = toyworld.causal_concepts(model, data, layer, refs)  # [8, n_ref]
    times["causal_labels"] = time.perf_counter() - t
    n_concepts = len(toyworld.CONCEPTS)
    shares = toyworld.label_shares(causal, n_concepts)
    natural = toyworld.polysemantic_neurons(refs, data.labels, min_share=args.min_share, concepts=causal)
    ks = [int((shares[n] >= args.min_share).sum()) for n in natural]
    # where the max sits: the CLS token or a patch token
    with torch.no_grad():
        images = _images(data, refs.indices.flatten())
        acts = torch.cat([pt.layer_output(model, images[s : s + 500], layer)
                          for s in range(0, len(images), 500)])  # [8 * n_ref, 17, 8]  # fmt: skip
    neuron_of = torch.arange(refs.indices.shape[0]).repeat_interleave(refs.indices.shape[1])
    argmax_token = acts[torch.arange(len(acts)), :, neuron_of].argmax(-1)
    cls_share = [float((argmax_token[neuron_of == n] == 0).float().mean()) for n in range(refs.indices.shape[0])]

    neurons_info = []
    for n in range(refs.indices.shape[0]):
        top = shares[n].argsort(descending=True)[:3]
        neurons_info.append({
            "neuron": n, "polysemantic": n in natural, "unlabelled": int((causal[n] < 0).sum()),
            "max_at_cls": round(cls_share[n], 3),
            "top_concepts": {toyworld.CONCEPTS[int(c)]: round(float(shares[n, c]), 3) for c in top if shares[n, c] > 0},
        })  # fmt: skip
    print(f"\nlayer {layer} ({refs.indices.shape[0]} neurons), lower layer {lower}; {len(data)} test images, "
          f"{args.n_ref} references per neuron")
    for row in neurons_info:
        print(f"  neuron {row['neuron']}: {'polysemantic' if row['polysemantic'] else 'not polysemantic':17s} "
              f"max at CLS {row['max_at_cls']:.0%}, unlabelled {row['unlabelled']:3d}, {row['top_concepts']}")
    if not natural:  # a result too: record it rather than stop without one
        print(f"No polysemantic neuron by causal labels (>= 2 concepts with >= {args.min_share:.0%} of the "
              "labelled references): nothing to split, no ARI.")
        return _finish(args, info, record, layer, lower, data, neurons_info, natural, [], 0, {}, None, times, start)

    methods: dict[str, torch.Tensor] = {}
    t = time.perf_counter()
    by_hand = circuits_by_autograd(model, data, refs, natural)  # the definition, per reference
    times["circuits_by_autograd"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        engine = pt.circuit_attributions(model, data, layer, lower, refs, neurons=natural, progress=False)
    except pt.PuretoolsError as err:
        print(f"circuit_attributions refused: {str(err).splitlines()[0][:200]}")
        engine = torch.empty(0)
    times["circuits_gradient"] = time.perf_counter() - t
    if engine.shape == by_hand.shape:  # the engine sums over tokens: it must equal the definition
        diff = float((engine - by_hand).abs().max())
        print(f"circuit_attributions vs autograd by hand: max abs difference {diff:.1e}")
        methods["PURE-gradient"] = engine
    else:  # this puretools reads the tokens as channels: use the definition and say so
        diff = None
        print(f"circuit_attributions gives {tuple(engine.shape)}, not {tuple(by_hand.shape)} (no token "
              "layouts in its circuits yet): PURE-gradient uses the circuits computed by autograd here")
        methods["PURE-gradient"] = by_hand
    try:
        t = time.perf_counter()
        lrp = pt.circuit_attributions(model, data, layer, lower, refs, neurons=natural, method="lrp", progress=False)
        times["circuits_lrp"] = time.perf_counter() - t
        if lrp.shape == by_hand.shape:
            methods["PURE-LRP"] = lrp
        else:
            print("PURE-LRP left out: circuit_attributions(method='lrp') reads the tokens as channels here")
    except Exception as err:  # e.g. no LRP rules for attention in this puretools
        print(f"PURE-LRP left out: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    by_hand_acts = token_mean_activations(model, data, refs.indices[natural])
    acts_engine = pt.activation_features(model, data, layer, refs.indices[natural])
    if acts_engine.shape == by_hand_acts.shape:
        print(f"activation_features vs token mean by hand: max abs difference "
              f"{float((acts_engine - by_hand_acts).abs().max()):.1e}")
        methods["activations"] = acts_engine
    else:
        print(f"activation_features gives {tuple(acts_engine.shape)}: the baseline uses the token mean by hand")
        methods["activations"] = by_hand_acts

    truth = causal[natural]
    scores = {}
    for name, x in methods.items():
        fixed = pt.VirtualNeurons(seed=0).fit(x, k=ks)
        auto = pt.VirtualNeurons(seed=0).fit(x, k="auto")
        ari_fixed, per_fixed = mean_ari(fixed.labels, truth)
        ari_auto, per_auto = mean_ari(auto.labels, truth)
        scores[name] = {"ari_ground_truth_k": round(ari_fixed, 4), "per_neuron_ground_truth_k": per_fixed,
                        "ari_silhouette_k": round(ari_auto, 4), "per_neuron_silhouette_k": per_auto,
                        "silhouette_k": [int(k) for k in auto.ks]}  # fmt: skip
    return _finish(args, info, record, layer, lower, data, neurons_info, natural, ks, int((truth < 0).sum()), scores,
                   diff, times, start)


def _finish(args, info, record, layer, lower, data, neurons_info, natural, ks, unlabelled, scores, diff, times,
            start) -> dict:  # fmt: skip
    wall = time.perf_counter() - start
    print(f"\npolysemantic neurons {natural} (k {ks}); {unlabelled} of {len(natural) * args.n_ref} references "
          "without a causal label (left out)")
    print(f"{'method':15s}{'ARI, k = ground truth':>24s}{'ARI, k = silhouette':>22s}   silhouette k")
    for name, s in scores.items():
        print(f"{name:15s}{s['ari_ground_truth_k']:24.2f}{s['ari_silhouette_k']:22.2f}   {s['silhouette_k']}")
    for name, s in scores.items():
        print(f"  {name} per neuron (k = ground truth): {s['per_neuron_ground_truth_k']}")
    result = {
        **summary("bench_toy_vit", info, wall, times),
        "model": {"sha256": record["sha256"], "config": record["config"],
                  "exact_match_accuracy": record["exact_match_accuracy"], "macro_f1": record["macro_f1"],
                  "mean_per_concept_accuracy": record["mean_per_concept_accuracy"]},  # fmt: skip
        "layer": layer, "lower_layer": lower, "n_ref": args.n_ref, "n_images": len(data),
        "min_share": args.min_share, "neurons": neurons_info, "natural_neurons": natural, "natural_k": ks,
        "unlabelled": unlabelled, "scores": scores,
        "circuits_engine_vs_autograd_max_abs_diff": diff,
    }
    if args.json:
        common.write_json(args.json, result, indent=1, newline=True)
        print(f"wrote {args.json}")
    return result


def peak_features_by_hand(planted, data, indices: torch.Tensor, read_layer: str | None = None) -> torch.Tensor:
    """A token layer's vector at the token where each planted neuron peaks: Tensor [P, n_ref, C_read].

    ``activation_features(where="peak")`` for a token layer: argmax over all 17 tokens (the
    first on ties) of planted channel ``planted.channels[p]``, then ``read_layer``'s vector
    at that token (default ``planted.inner``: the layer's own 8 features; the lower layer,
    the residual stream, for ``act-peak-lower``).
    """
    rows = []
    for p, c in enumerate(planted.channels):
        x = _images(data, indices[p])
        with torch.no_grad():
            out = pt.layer_output(planted.model, x, planted.layer)  # [n_ref, 17, 8 + P]
            read = pt.layer_output(planted.model, x, read_layer) if read_layer else out[..., : planted.channels[0]]
        where = out[..., c].argmax(1)
        rows.append(read[torch.arange(len(x)), where])
    return torch.stack(rows)


def run_planted(args) -> dict:
    info, path, record, layer, lower, model, data = setup(args)
    names = toyworld.CONCEPTS
    times, start = {}, time.perf_counter()

    # the pair rule: top causal concept of each neuron (as in the run without --planted)
    t = time.perf_counter()
    refs = pt.collect_references(model, data, layer, n_ref=args.n_ref, progress=False)
    causal = toyworld.causal_concepts(model, data, layer, refs)
    shares = toyworld.label_shares(causal, len(names))
    top = [int(shares[n].argmax()) if shares[n].sum() > 0 else -1 for n in range(len(shares))]
    candidates = [(a, b) for a in range(len(top)) for b in range(a + 1, len(top)) if top[a] != top[b] or top[a] < 0]
    everything = pt.plant_neurons(model, layer, nn.Identity(), candidates)
    erefs = pt.collect_references(everything.model, data, everything.layer, n_ref=args.n_ref, progress=False)
    esources = pt.planted_sources(everything, data, erefs)
    balance = []
    for p, (a, _) in enumerate(candidates):
        known = esources[p][esources[p] >= 0]
        share = float((known == a).float().mean()) if len(known) else 0.0
        balance.append(min(share, 1 - share))
    order = sorted(range(len(candidates)), key=lambda p: (-balance[p], p))[: args.pairs]
    pairs = [candidates[p] for p in order]
    times["pair_choice"] = time.perf_counter() - t

    t = time.perf_counter()
    planted = pt.plant_neurons(model, layer, nn.Identity(), pairs)
    prefs = pt.collect_references(planted.model, data, planted.layer, n_ref=args.n_ref, progress=False)
    truth = pt.planted_sources(planted, data, prefs)  # [P, n_ref]
    times["planted_references"] = time.perf_counter() - t
    channels = planted.channels
    # a diagnostic added after the first run: how often both units are strong in a reference (the
    # smaller unit's token max >= half the larger's), i.e. both objects are in the image
    both = []
    for p, (a, b) in enumerate(pairs):
        with torch.no_grad():
            h = pt.layer_output(planted.model, _images(data, prefs.indices[channels[p]]), planted.inner)
        ma, mb = torch.relu(h[..., a]).amax(1), torch.relu(h[..., b]).amax(1)
        both.append(round(float((torch.minimum(ma, mb) >= 0.5 * torch.maximum(ma, mb)).float().mean()), 3))
    print(f"\nplanted: {len(pairs)} of {len(candidates)} pairs of the {len(top)} neurons of {layer} whose top causal "
          f"concepts differ, the most balanced; {len(data)} test images, {args.n_ref} references each, "
          f"lower layer {lower}, layout {planted.layout}")
    for p, (a, b) in enumerate(pairs):
        print(f"  feature {channels[p]}: neuron {a} ({names[top[a]]}) + neuron {b} ({names[top[b]]}), "
              f"balance {balance[order[p]]:.2f}, both units strong {both[p]:.2f}, unlabelled {int((truth[p] < 0).sum())}")

    methods: dict[str, torch.Tensor] = {}
    t = time.perf_counter()
    methods["PURE-gradient"] = pt.circuit_attributions(planted.model, data, planted.layer, lower, prefs,
                                                       neurons=channels, progress=False)  # fmt: skip
    times["circuits_gradient"] = time.perf_counter() - t
    t = time.perf_counter()
    methods["PURE-LRP"] = pt.circuit_attributions(planted.model, data, planted.layer, lower, prefs, neurons=channels,
                                                  method="lrp", progress=False)  # fmt: skip
    times["circuits_lrp"] = time.perf_counter() - t
    t = time.perf_counter()
    methods["act-mean"] = pt.activation_features(planted.model, data, planted.layer, prefs, neurons=channels,
                                                 read_layer=planted.inner, where="mean")  # fmt: skip
    methods["act-peak"] = pt.activation_features(planted.model, data, planted.layer, prefs, neurons=channels,
                                                 read_layer=planted.inner, where="peak")  # fmt: skip
    peak_by_hand = peak_features_by_hand(planted, data, prefs.indices[channels])
    print(f"activation_features(where='peak') vs by hand: max abs difference "
          f"{float((methods['act-peak'] - peak_by_hand).abs().max()):.1e}")
    # added after the first run (where both act rows beat PURE), as a diagnostic: the residual
    # stream PURE's circuits are computed from, read at the peak token (the protocol's act-peak-lower)
    methods["act-peak-lower"] = pt.activation_features(planted.model, data, planted.layer, prefs, neurons=channels,
                                                       read_layer=lower, where="peak")  # fmt: skip
    times["activations"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = {}
    for name, x in methods.items():
        fixed, auto, ks, per_pair = [], [], [], []
        for seed in range(args.seeds):
            f = pt.VirtualNeurons(seed=seed).fit(x, k=[2] * len(pairs))
            a = pt.VirtualNeurons(seed=seed).fit(x, k="auto")
            mf, pf = mean_ari(f.labels, truth)
            ma, _ = mean_ari(a.labels, truth)
            fixed.append(mf)
            auto.append(ma)
            ks.append([int(k) for k in a.ks])
            per_pair.append(pf)
        scores[name] = {"ari_k2_mean": round(float(np.mean(fixed)), 4), "ari_k2_sd_seeds": round(float(np.std(fixed, ddof=1)) if len(fixed) > 1 else 0.0, 4),
                        "ari_silhouette_mean": round(float(np.mean(auto)), 4), "ari_silhouette_sd_seeds": round(float(np.std(auto, ddof=1)) if len(auto) > 1 else 0.0, 4),
                        "ari_k2_per_seed": [round(v, 4) for v in fixed], "ari_silhouette_per_seed": [round(v, 4) for v in auto],
                        "per_pair_k2_seed0": per_pair[0], "per_pair_k2_mean_seeds": [round(float(v), 4) for v in np.mean(per_pair, 0)],
                        "silhouette_k_mean": round(float(np.mean(ks)), 2), "silhouette_k_seed0": ks[0]}  # fmt: skip
    times["kmeans"] = time.perf_counter() - t

    wall = time.perf_counter() - start
    print(f"\nARI against the planted source, mean over {len(pairs)} pairs; mean +- sd over {args.seeds} k-means seeds")
    print(f"{'method':15s}{'k = 2 (truth)':>18s}{'k = silhouette':>18s}{'mean k':>8s}")
    for name, sc in scores.items():
        print(f"{name:15s}{sc['ari_k2_mean']:11.3f} +- {sc['ari_k2_sd_seeds']:.3f}"
              f"{sc['ari_silhouette_mean']:11.3f} +- {sc['ari_silhouette_sd_seeds']:.3f}{sc['silhouette_k_mean']:8.2f}")
    for name, sc in scores.items():
        print(f"  {name} per pair (k = 2, mean over seeds): {sc['per_pair_k2_mean_seeds']}")
    result = {
        **summary("bench_toy_vit --planted", info, wall, times),
        "model": {"sha256": record["sha256"], "config": record["config"]},
        "layer": layer, "lower_layer": lower, "planted_layer": planted.layer, "n_ref": args.n_ref, "n_images": len(data),
        "seeds": args.seeds, "top_concept": [names[c] if c >= 0 else None for c in top],
        "candidate_pairs": [list(c) for c in candidates], "candidate_balance": [round(b, 3) for b in balance],
        "pairs": [list(pr) for pr in pairs], "pair_concepts": [[names[top[a]], names[top[b]]] for a, b in pairs],
        "balance": [round(balance[p], 3) for p in order], "both_units_strong": both, "unlabelled": int((truth < 0).sum()),
        "act_peak_from_engine": True, "scores": scores,
    }  # fmt: skip
    if args.json:
        common.write_json(args.json, result, indent=1, newline=True)
        print(f"wrote {args.json}")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    (run_planted if args.planted else run)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
