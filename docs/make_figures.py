"""Regenerate the README's figures in docs/ from the shipped toy model.

    .venv/bin/python docs/make_figures.py          # about a minute on a 2-core CPU

writes ``docs/virtual_neurons.png`` (one polysemantic neuron split into two virtual neurons:
the one notebook 03 features, chosen from its causal labels),
``docs/concept_mix.png`` (the concept mix of every neuron of ``layer4``) and
``docs/distances.png`` (``evaluate_toy_world``'s intra/inter distances, k = 2), and prints the
facts the README's caption states (scores against causal labels). Run it again whenever ``data/toyworld/model.safetensors``
changes. Results are cached in ``$PURETOOLS_CACHE`` like the notebooks'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

import puretools as pt  # noqa: E402
import puretools.config  # noqa: E402
from puretools import toyworld  # noqa: E402
from puretools.virtual import kmeans_labels  # noqa: E402
from puretools.widgets import explorer_figure, prepare_explorer  # noqa: E402

DOCS = Path(__file__).resolve().parent
DPI = 70  # the README shows the figures small (the size of the figures it showed before)


def _save(fig, name: str) -> None:
    fig.savefig(DOCS / name, dpi=DPI, bbox_inches="tight")
    print(f"wrote docs/{name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neuron", type=int, default=None,
                        help="neuron of virtual_neurons.png (default: the one notebook 03 features, "
                             "toyworld.clearest_two_concept_neuron of the causal labels)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cache = pt.config.cache_dir()
    model = pt.load_model("toy")
    data = toyworld.ToyWorld(split="test")
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=100, cache_dir=cache)
    causal = toyworld.causal_concepts(model, data, toyworld.LAYER, refs)  # [channels, n_ref], -1: no cause
    poly = toyworld.polysemantic_neurons(refs.indices, data.labels, concepts=causal)

    mix = torch.stack([toyworld.concept_mix(data.labels[row]) for row in refs.indices])
    _save(pt.plot_concept_mix(mix, toyworld.CONCEPTS), "concept_mix.png")

    evaluation = pt.evaluate_toy_world(cache_dir=cache)
    _save(pt.plot_cluster_distances(evaluation.table, title="toy world, ground-truth concept space"),
          "distances.png")

    n_concepts = len(toyworld.CONCEPTS)
    neuron = toyworld.clearest_two_concept_neuron(causal, n_concepts) if args.neuron is None else args.neuron
    explorer_data = prepare_explorer(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=[neuron],
        concept_labels=data.labels, concept_names=toyworld.CONCEPTS, causal_labels=causal,
        denormalize=toyworld.denormalize, cache_dir=cache, progress=False,
    )
    _save(explorer_figure(explorer_data, 0, 2, "PURE", "crop"), "virtual_neurons.png")

    def shares_text(labels: torch.Tensor, top: int = 3) -> str:
        shares = toyworld.label_shares(labels, n_concepts)
        return ", ".join(f"{toyworld.CONCEPTS[c]} {shares[c]:.0%}" for c in shares.argsort(descending=True)[:top]
                         if shares[c] > 0)

    truth = causal[neuron]
    print(f"\npolysemantic neurons of {toyworld.LAYER} ({refs.n_channels} channels, causal labels): {poly}")
    print(f"neuron {neuron}: {shares_text(truth)} of its {int((truth >= 0).sum())} causally labelled "
          f"references ({int((truth < 0).sum())} of {refs.n_ref} have no single cause)")
    # the explorer clusters PURE and the peak-location baseline; the paper's spatial mean beside them
    mean_acts = pt.activation_features(model, data, toyworld.LAYER, refs, neurons=[neuron], where="mean")[0]
    clusterings = {"PURE": explorer_data.labels(0, "PURE", 2),
                   f"activations ({explorer_data.baseline})": explorer_data.labels(0, "activations", 2),
                   "activations (mean)": kmeans_labels(mean_acts.double().numpy(), 2, seed=0)[0]}  # fmt: skip
    for method, labels in clusterings.items():
        labels = torch.as_tensor(labels)
        for c in range(2):
            print(f"  {method} virtual neuron {c}: {int((labels == c).sum())} references, {shares_text(truth[labels == c], 2)}")
        print(f"  {method} vs causal labels (k = 2):", toyworld.ground_truth_scores(labels, truth))

    # over all polysemantic neurons, ground-truth k, as notebook 03 section 6 and the benchmark
    ks = [int((toyworld.label_shares(causal[n], n_concepts) >= 0.2).sum()) for n in poly]
    circuits = pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=poly,
                                       cache_dir=cache, progress=False)
    acts = {where: pt.activation_features(model, data, toyworld.LAYER, refs, neurons=poly, where=where)
            for where in ("mean", "peak")}  # fmt: skip
    for name, features in (("PURE", circuits), ("activations (mean)", acts["mean"]),
                           ("activations (peak)", acts["peak"])):  # fmt: skip
        vn = pt.VirtualNeurons(seed=0).fit(features, k=ks)
        ari = [toyworld.ground_truth_scores(vn.labels[j], causal[n])["ari"] for j, n in enumerate(poly)]
        print(f"mean ARI over the {len(poly)} polysemantic neurons, {name}: {sum(ari) / len(ari):.2f}")


if __name__ == "__main__":
    main()
