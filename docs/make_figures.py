"""Regenerate the README's figures in docs/ from the shipped toy model.

    .venv/bin/python docs/make_figures.py          # about a minute on a 2-core CPU

writes ``docs/virtual_neurons.png`` (one polysemantic neuron split into two virtual neurons),
``docs/concept_mix.png`` (the concept mix of every neuron of ``layer4``) and
``docs/distances.png`` (``evaluate_toy_world``'s intra/inter distances, k = 2), and prints the
facts the README's caption states. Run it again whenever ``data/toyworld/model.safetensors``
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
from puretools.widgets import explorer_figure, explorer_scores, prepare_explorer  # noqa: E402

DOCS = Path(__file__).resolve().parent
DPI = 70  # the README shows the figures small (the size of the figures it showed before)


def _save(fig, name: str) -> None:
    fig.savefig(DOCS / name, dpi=DPI, bbox_inches="tight")
    print(f"wrote docs/{name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neuron", type=int, default=None,
                        help="neuron of virtual_neurons.png (default: the most evenly split "
                             "polysemantic neuron, the one notebooks 03 and 04 follow)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cache = pt.config.cache_dir()
    model = pt.load_model("toy")
    data = toyworld.ToyWorld(split="test")
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=100, cache_dir=cache)
    poly = toyworld.polysemantic_neurons(refs.indices, data.labels)

    mix = torch.stack([toyworld.concept_mix(data.labels[row]) for row in refs.indices])
    _save(pt.plot_concept_mix(mix, toyworld.CONCEPTS), "concept_mix.png")

    evaluation = pt.evaluate_toy_world(cache_dir=cache)
    _save(pt.plot_cluster_distances(evaluation.table, title="toy world, ground-truth concept space"),
          "distances.png")

    def second_share(n: int) -> float:
        return float(toyworld.dominant_shares(data.labels[refs.indices[n]]).sort(descending=True).values[1])

    neuron = max(poly, key=second_share) if args.neuron is None else args.neuron
    explorer_data = prepare_explorer(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=[neuron],
        concept_labels=data.labels, concept_names=toyworld.CONCEPTS,
        denormalize=toyworld.denormalize, cache_dir=cache, progress=False,
    )
    _save(explorer_figure(explorer_data, 0, 2, "PURE", "crop"), "virtual_neurons.png")

    shares = toyworld.dominant_shares(data.labels[refs.indices[neuron]])
    top = shares.argsort(descending=True)[:3]
    print(f"\npolysemantic neurons of {toyworld.LAYER} ({refs.n_channels} channels): {poly}")
    print(f"neuron {neuron}: " + ", ".join(f"{toyworld.CONCEPTS[c]} {shares[c]:.0%}" for c in top if shares[c] > 0))
    labels = explorer_data.labels(0, "PURE", 2)
    concepts = explorer_data.concepts[0]
    for c in range(2):
        members = concepts[torch.as_tensor(labels == c)]
        counts = torch.bincount(members.clamp(min=0), minlength=len(toyworld.CONCEPTS)) / len(members)
        print(f"  virtual neuron {c}: {len(members)} references, " + ", ".join(
            f"{toyworld.CONCEPTS[i]} {counts[i]:.0%}" for i in counts.argsort(descending=True)[:2] if counts[i] > 0))
    print("  PURE vs ground truth (k = 2):", explorer_scores(explorer_data, 0, 2, "PURE"))
    print("  activations vs ground truth (k = 2):", explorer_scores(explorer_data, 0, 2, "activations"))


if __name__ == "__main__":
    main()
