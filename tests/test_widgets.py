"""The explorer: precomputation, figure, scores, and widgets that redraw in place."""

import numpy as np
import pytest
import torch

import puretools as pt
from puretools.widgets import (
    Explorer,
    ExplorerData,
    explorer_figure,
    explorer_scores,
    prepare_explorer,
)


def two_concept_data(n_neurons=2, n_ref=20):
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(n_ref) % 2  # two concepts per neuron
    pure = torch.randn(n_neurons, n_ref, 6, generator=g) * 0.1 + truth[None, :, None] * 3.0
    acts = torch.randn(n_neurons, n_ref, 4, generator=g)  # carries no concept information
    patches = torch.rand(n_neurons, n_ref, 3, 8, 8, generator=g)
    coords = np.random.default_rng(0).normal(size=(n_neurons, n_ref, 2))
    concepts = torch.stack([truth * 5 + 1] * n_neurons)  # concept ids 1 and 6
    return ExplorerData(
        neurons=[4, 9], scores=[2.0, 1.5], features={"PURE": pure, "activations": acts},
        patches={"crop": patches, "mask": patches.clone()}, umap={"PURE": coords, "activations": coords},
        concepts=concepts, concept_names=[f"c{i}" for i in range(8)], eval_space=truth.expand(n_neurons, -1)[..., None].float(),
    )


def test_scores_see_ground_truth():
    data = two_concept_data()
    pure = explorer_scores(data, 0, 2, "PURE")
    assert pure["ari"] == pytest.approx(1.0) and pure["purity"] == pytest.approx(1.0)
    assert pure["intra"] == pytest.approx(0.0) and pure["inter"] == pytest.approx(1.0)
    assert explorer_scores(data, 0, 2, "activations")["ari"] < 0.5
    assert "intra" not in explorer_scores(data, 0, 1, "PURE")  # no split, no distances


def test_labels_are_memoised():
    data = two_concept_data()
    a = data.labels(1, "PURE", 3)
    assert data.labels(1, "PURE", 3) is a
    with pytest.raises(pt.PuretoolsError, match="method must be one of"):
        data.labels(0, "DINO", 2)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_figure_has_one_patch_row_per_virtual_neuron(k):
    fig = explorer_figure(two_concept_data(), 0, k, "PURE", "crop")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("virtual neuron")]
    assert len(titles) == k
    assert sum(int(t.split(": ")[1].split(" ")[0]) for t in titles) == 20  # every reference in one row


def test_figure_rejects_bad_position():
    with pytest.raises(pt.PuretoolsError, match="position must lie in 0..1"):
        explorer_figure(two_concept_data(), 2, 2)


def test_explorer_redraws_in_place():
    explorer = Explorer(two_concept_data(), k=2)
    png, scores = explorer.image.value, explorer.scores.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "k = 2" in scores and "ARI vs ground truth 1.00" in scores
    image_widget = explorer.image
    explorer.k.value = 3
    assert explorer.image is image_widget and explorer.image.value != png and "k = 3" in explorer.scores.value
    explorer.method.value = "activations"
    assert "activations" in explorer.scores.value
    explorer.neuron.value = 1
    assert "<b>neuron 9</b>" in explorer.scores.value
    assert explorer.k.max == 5 and explorer.neuron.max == 1
    assert "puretools-explorer" in explorer.widget._dom_classes


def test_prepare_explorer_ranks_and_shapes(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=8, progress=False)
    labels = torch.zeros(len(small_images), 3)
    labels[torch.arange(len(small_images)), torch.arange(len(small_images)) % 3] = 1
    data = prepare_explorer(vgg, small_images, "features.9", "features.6", refs, neurons=[0, 3, 5],
                            concept_labels=labels, concept_names=["a", "b", "c"], denormalize=lambda x: x.clamp(0, 1),
                            patch_size=16, umap=False, progress=False)
    assert sorted(data.neurons) == [0, 3, 5]
    assert data.scores == sorted(data.scores, reverse=True)
    assert data.features["PURE"].shape == (3, 8, 16) and data.features["activations"].shape == (3, 8, 12)
    assert data.patches["crop"].shape == (3, 8, 3, 16, 16) and data.umap["PURE"].shape == (3, 8, 2)
    i = data.neurons.index(3)  # arrays follow the ranking
    circuits = pt.circuit_attributions(vgg, small_images, "features.9", "features.6", refs, neurons=[3], progress=False)
    torch.testing.assert_close(data.features["PURE"][i], circuits[0])
    assert torch.equal(data.concepts[i], labels[refs.indices[3]].argmax(-1))
