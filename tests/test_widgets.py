"""The explorer: precomputation, figure, scores, and widgets that redraw in place."""

import numpy as np
import pytest
import torch

import puretools as pt
from puretools.widgets import (
    Explorer,
    ExplorerData,
    explorer_figure,
    explorer_heatmap_figure,
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
    assert data.baseline == "peak"  # the default: the strongest simple baseline
    maps = _brute_force_maps(vgg, small_images, "features.9")  # [n_images, C, H, W], by a plain hook
    for pos, n in enumerate(data.neurons):  # the layer's vector at the neuron's own peak, brute force
        per_ref = [maps[j].flatten(1)[:, maps[j][n].flatten().argmax()] for j in refs.indices[n].tolist()]
        torch.testing.assert_close(data.features["activations"][pos], torch.stack(per_ref), rtol=1e-5, atol=1e-5)
    mean = prepare_explorer(vgg, small_images, "features.9", "features.6", refs, neurons=[0, 3, 5],
                            concept_labels=labels, denormalize=lambda x: x.clamp(0, 1), patch_size=16, umap=False,
                            progress=False, heatmaps=False, baseline="mean")  # fmt: skip
    assert mean.baseline == "mean" and mean.neurons == data.neurons
    for pos, n in enumerate(mean.neurons):  # the paper's spatial mean, brute force
        torch.testing.assert_close(mean.features["activations"][pos], maps[refs.indices[n]].mean((2, 3)),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(pt.PuretoolsError, match="baseline must be one of"):
        prepare_explorer(vgg, small_images, "features.9", "features.6", refs, neurons=[0], baseline="max",
                         umap=False, progress=False)  # fmt: skip


def _brute_force_maps(model, images, layer):
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model(torch.stack([images[j][0] for j in range(len(images))]))
    finally:
        handle.remove()
    return out[0]


def test_rank_label_matches_the_slider():
    explorer = Explorer(two_concept_data(), k=2)
    assert explorer.neuron.min == 0
    assert "neuron rank 0 of 0-1" in explorer.scores.value
    explorer.neuron.value = 1
    assert f"neuron rank {explorer.neuron.value} of 0-1" in explorer.scores.value


def test_display_bundle_holds_the_current_figure_as_png():
    import base64

    from IPython.core.formatters import DisplayFormatter

    explorer = Explorer(two_concept_data(), k=2)
    data, _ = DisplayFormatter().format(explorer)  # what IPython puts in the output
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    assert base64.b64decode(data["image/png"]) == explorer.image.value
    explorer.k.value = 3
    again, _ = DisplayFormatter().format(explorer)
    assert base64.b64decode(again["image/png"]) == explorer.image.value != base64.b64decode(data["image/png"])


def test_explorer_heatmap_view(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=8, progress=False)
    data = prepare_explorer(vgg, small_images, "features.9", "features.6", refs, neurons=[0, 3, 5],
                            denormalize=lambda x: x.clamp(0, 1), patch_size=16, umap=False, max_k=3,
                            progress=False, heatmap_method="gradient")
    assert sorted(data.heatmaps) == [(p, k) for p in range(3) for k in (1, 2, 3)]
    for (pos, k), view in data.heatmaps.items():
        labels = data.labels(pos, "PURE", k)
        assert view.members == [int(np.flatnonzero(labels == j)[0]) for j in range(k)]
        assert view.images.shape == (k, 3, 48, 48) and view.virtual.shape == (k, k, 48, 48)
        torch.testing.assert_close(view.virtual.sum(0), view.full, atol=1e-4, rtol=1e-4)  # documented relation
        idx = refs.indices[data.neurons[pos], view.members]
        torch.testing.assert_close(view.images, torch.stack([small_images[int(i)][0] for i in idx]).clamp(0, 1))
    pos, k = 0, 2  # against the public function with virtual neurons fitted on the same circuits
    neuron = data.neurons[pos]
    vn = pt.VirtualNeurons().fit(data.features["PURE"][pos], k=k, neurons=[neuron])
    assert np.array_equal(vn.labels[0].numpy(), data.labels(pos, "PURE", k))
    view = data.heatmaps[(pos, k)]
    idx = refs.indices[neuron, view.members]
    heat = pt.virtual_heatmaps(vgg, torch.stack([small_images[int(i)][0] for i in idx]), "features.9",
                               "features.6", vn, neuron, weights="partition")
    torch.testing.assert_close(heat, view.virtual, atol=1e-5, rtol=1e-4)

    explorer = Explorer(data, k=2)
    assert explorer.view.options == ("patches", "virtual heatmaps")
    png = explorer.image.value
    explorer.view.value = "virtual heatmaps"
    assert explorer.image.value != png
    fig = explorer_heatmap_figure(data, 0, 3)
    mosaic = fig.axes[0].images[0].get_array()
    assert mosaic.shape == (3 * 50, 5 * 50, 3)  # k rows of: image, whole neuron, k virtual heatmaps
    view = data.heatmaps[(0, 3)]
    np.testing.assert_allclose(mosaic[50:98, :48], view.images[1].permute(1, 2, 0).numpy())
    scale = max(float(view.full[1].abs().max()), float(view.virtual[:, 1].abs().max()))
    import matplotlib

    tile = matplotlib.colormaps["bwr"]((view.virtual[2, 1].numpy() / scale + 1) / 2)[..., :3]
    np.testing.assert_allclose(mosaic[50:98, 200:248], tile)  # virtual 2 on the image of row 1, row scale
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["image", "whole neuron", "virtual 0",
                                                                    "virtual 1", "virtual 2"]
    assert scale > 0
    no_heat = prepare_explorer(vgg, small_images, "features.9", "features.6", refs, neurons=[0],
                               denormalize=lambda x: x.clamp(0, 1), patch_size=16, umap=False, max_k=2,
                               progress=False, heatmaps=False)
    assert no_heat.heatmaps == {} and Explorer(no_heat).view.options == ("patches",)
    with pytest.raises(pt.PuretoolsError, match="No virtual heatmaps"):
        explorer_heatmap_figure(no_heat, 0, 2)


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_06_shows_the_explorer_as_an_image(notebook_run):
    """Executed with nbclient (widget state stored; the session's one run), the
    explorer cell's output holds an image/png; static HTML without the widget state shows it as an <img>."""
    import base64

    from nbconvert import HTMLExporter

    run = notebook_run("06_explorer")
    if run.error is not None:
        pytest.fail(f"notebook 06 failed:\n{run.error}", pytrace=False)
    nb = run.shipped()  # a copy: the cells as shipped, with their outputs
    bundles = [o["data"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if "data" in o]
    views = [b for b in bundles if "application/vnd.jupyter.widget-view+json" in b]
    assert views, "no cell of notebook 06 displays the explorer"
    pngs = [b["image/png"] for b in views if "image/png" in b]
    assert len(pngs) == 1 and base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    nb.metadata.pop("widgets", None)  # what a viewer without the widget state (GitHub, offline HTML) has
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert f"data:image/png;base64,{pngs[0].strip()}" in html.replace("\n", "")
