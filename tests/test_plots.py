"""Figures are written as PNG of the expected size, with the expected content."""

import numpy as np
import pytest
import torch
from PIL import Image

from puretools.errors import PuretoolsError
from puretools.evaluate import PAPER_CORRELATIONS, PAPER_DISTANCES, evaluate_clusterings
from puretools.plots import (
    cluster_colors,
    patch_grid,
    plot_cluster_distances,
    plot_distance_correlation,
    plot_umap,
    umap_embedding,
    virtual_neuron_grids,
)


def open_png(path, size):
    """The PNG at ``path``, checked to be ``size`` pixels and not a single flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 5  # something was drawn
    return pixels


def test_cluster_distance_bars(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 12, 4, generator=g)
    table = evaluate_clusterings(emb, {"PURE": torch.randint(0, 2, (5, 12), generator=g),
                                       "activations": torch.randint(0, 2, (5, 12), generator=g)})
    fig = plot_cluster_distances(table, path=tmp_path / "bars.png", figsize=(6, 4), dpi=50)
    open_png(tmp_path / "bars.png", (300, 200))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([table["PURE"].intra.mean, table["activations"].intra.mean,
                                     table["PURE"].inter.mean, table["activations"].inter.mean])
    line = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(line) == 1 and line[0].get_ydata()[0] == pytest.approx(table.unclustered.mean)


def test_paper_figures_draw(tmp_path):
    plot_cluster_distances(PAPER_DISTANCES, path=tmp_path / "paper.png", dpi=40)
    open_png(tmp_path / "paper.png", (240, 160))
    fig = plot_distance_correlation(PAPER_CORRELATIONS, path=tmp_path / "corr.png", figsize=(5, 4), dpi=40)
    open_png(tmp_path / "corr.png", (200, 160))
    assert [round(float(p.get_height()), 2) for p in fig.axes[0].patches] == [0.57, 0.38, 0.17]


def test_draws_into_a_given_axes(tmp_path):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=30)
    plt.close(fig)
    out = plot_cluster_distances(PAPER_DISTANCES, ax=a)
    out2 = plot_distance_correlation(PAPER_CORRELATIONS, ax=b, path=tmp_path / "both.png")
    assert out is fig and out2 is fig and len(fig.axes) == 2
    open_png(tmp_path / "both.png", (240, 90))


def test_patch_grid_layout_and_size(tmp_path):
    patches = torch.zeros(7, 3, 6, 6)
    patches[3] = 1.0
    patches[3, 0] = 0.0  # patch 3: cyan
    fig = patch_grid(patches, ncols=4, title="neuron 3", path=tmp_path / "grid.png", figsize=(4, 2.5), dpi=40)
    open_png(tmp_path / "grid.png", (160, 100))
    mosaic = fig.axes[0].images[0].get_array()
    assert mosaic.shape == (2 + 2 * 8, 2 + 4 * 8, 3)  # 2 rows of 4, 6 px + 2 px padding
    assert np.allclose(mosaic[2:8, 26:32], [0, 1, 1])  # patch 3: row 0, column 3
    assert np.allclose(mosaic[10:16, 26:32], 1.0)  # the empty eighth cell stays white
    assert np.allclose(mosaic[10:16, 2:8], 0.0)  # patch 4: row 1, column 0 (black)
    with pytest.raises(PuretoolsError, match="patches"):
        patch_grid(torch.rand(3, 8, 8))


def test_virtual_neuron_grids_one_row_per_cluster(tmp_path):
    patches = torch.stack([torch.full((3, 5, 5), i / 20) for i in range(20)])
    labels = torch.tensor([2, 0, 0, 1, 2, 0] + [1] * 14)
    fig = virtual_neuron_grids(patches, labels, per_cluster=4, title="neuron 7",
                               path=tmp_path / "vn.png", figsize=(5, 4), dpi=40)
    open_png(tmp_path / "vn.png", (200, 160))
    assert [ax.get_ylabel() for ax in fig.axes] == ["VN 0\n(n=3)", "VN 1\n(n=15)", "VN 2\n(n=2)"]
    row0 = fig.axes[0].images[0].get_array()
    # cluster 0 holds references 1, 2, 5 in that order, then a white blank
    assert [round(float(row0[4, 2 + 7 * j, 0]), 3) for j in range(4)] == [0.05, 0.1, 0.25, 1.0]
    colours = [ax.spines["left"].get_edgecolor() for ax in fig.axes]
    assert colours == [tuple(c) for c in cluster_colors(3)]


def test_umap_embedding_is_seeded_and_plot_umap(tmp_path):
    g = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g) + 6])
    labels = torch.tensor([0] * 50 + [1] * 50)
    coords = umap_embedding(features, seed=0)
    assert coords.shape == (100, 2) and np.isfinite(coords).all()
    assert np.array_equal(coords, umap_embedding(features, seed=0))
    # the two separated groups stay apart in 2-D
    centre0, centre1 = coords[:50].mean(0), coords[50:].mean(0)
    spread = max(coords[:50].std(0).max(), coords[50:].std(0).max())
    assert np.linalg.norm(centre0 - centre1) > 3 * spread

    thumbs = torch.rand(100, 3, 12, 12)
    fig = plot_umap(coords, labels, thumbnails=thumbs, n_thumbnails=10, title="neuron 0",
                    path=tmp_path / "umap.png", figsize=(5, 5), dpi=40)
    open_png(tmp_path / "umap.png", (200, 200))
    ax = fig.axes[0]
    boxes = list(ax.artists)  # thumbnails: at most 10, both clusters, not overlapping
    assert 2 <= len(boxes) <= 10
    assert {int(labels[int(np.argmin(np.abs(coords - b.xy).sum(1)))]) for b in boxes} == {0, 1}
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    extents = [b.get_window_extent(renderer) for b in boxes]
    assert all(e.width > 5 for e in extents)
    for i in range(len(extents)):
        for j in range(i):
            overlap_w = min(extents[i].x1, extents[j].x1) - max(extents[i].x0, extents[j].x0)
            overlap_h = min(extents[i].y1, extents[j].y1) - max(extents[i].y0, extents[j].y0)
            assert min(overlap_w, overlap_h) <= 1.0
    more = plot_umap(coords, labels, thumbnails=thumbs, n_thumbnails=10, figsize=(12, 12), dpi=20)
    assert len(more.axes[0].artists) > len(boxes)  # more room, more thumbnails
    assert len(ax.collections) >= 4  # two scatters plus contours
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["VN 0 (n=50)", "VN 1 (n=50)"]


def test_plot_umap_without_extras_and_bad_input(tmp_path):
    coords = np.random.default_rng(0).normal(size=(6, 2))
    fig = plot_umap(coords, contours=False, path=tmp_path / "plain.png", figsize=(3, 3), dpi=30)
    open_png(tmp_path / "plain.png", (90, 90))
    assert fig.axes[0].get_legend() is None and not fig.axes[0].artists
    # collinear points: the density contour is skipped, not an error
    plot_umap(np.c_[np.arange(5.0), np.zeros(5)], np.zeros(5, dtype=int))
    with pytest.raises(PuretoolsError, match="labels"):
        plot_umap(coords, labels=[0, 1])
    with pytest.raises(PuretoolsError, match="n_neighbors"):
        umap_embedding(np.zeros((10, 3)), n_neighbors=10)


def _rendered(fig):
    """An Agg renderer of ``fig``, drawn, to measure where things landed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.parametrize("figsize", [(6, 4), (3, 2.5)])
def test_cluster_distance_legend_never_covers_bars_and_axis_starts_at_zero(figsize):
    from matplotlib.transforms import Bbox

    g = torch.Generator().manual_seed(1)
    emb = torch.randn(6, 12, 4, generator=g)
    table = evaluate_clusterings(emb, {m: torch.randint(0, 2, (6, 12), generator=g)
                                       for m in ("PURE", "activations", "DINOv2")})
    for t in (table, PAPER_DISTANCES):
        fig = plot_cluster_distances(t, figsize=figsize, dpi=60)
        ax = fig.axes[0]
        renderer = _rendered(fig)
        legend = ax.get_legend().get_window_extent(renderer)
        assert ax.get_ylim()[0] == 0.0
        covered = [p.get_window_extent(renderer) for p in ax.patches]
        covered += [text.get_window_extent(renderer) for text in ax.texts]  # the values on the bars
        covered += [Bbox(ax.transData.transform(seg)) for c in ax.collections  # the error bars
                    for seg in c.get_segments() if len(seg) and np.isfinite(seg).all()]
        assert covered and not any(legend.overlaps(b) for b in covered)
        assert len(ax.texts) == 2 * len(t.rows)  # every bar carries its value


def test_cluster_distances_say_when_the_axis_does_not_start_at_zero():
    fig = plot_cluster_distances(PAPER_DISTANCES, zero=False)
    ax = fig.axes[0]
    bottom = ax.get_ylim()[0]
    assert bottom > 0 and "not 0" in ax.get_ylabel() and f"{bottom:.2f}" in ax.get_ylabel()


def test_correlation_bars_are_coloured_by_method_not_position():
    from matplotlib.colors import to_rgba

    from puretools.plots import method_color

    a = plot_distance_correlation({"PURE": 0.4, "activations": 0.2}).axes[0].patches
    b = plot_distance_correlation({"DINOv2": 0.6, "activations": 0.2, "PURE": 0.4}).axes[0].patches
    assert a[0].get_facecolor() == b[2].get_facecolor() == to_rgba(method_color("PURE"))
    assert a[1].get_facecolor() == b[1].get_facecolor() == to_rgba(method_color("activations"))
    assert len({p.get_facecolor() for p in b}) == 3
    assert method_color("some new method") == method_color("some new method")


def test_concept_mix_labels_are_readable():
    from matplotlib.colors import to_rgba

    from puretools.plots import plot_concept_mix

    mix = torch.tensor([[0.05, 0.3, 0.9]])
    ax = plot_concept_mix(mix, ["a", "b", "c"]).axes[0]
    texts = {t.get_text(): t for t in ax.texts}
    assert set(texts) == {"30", "90"}  # 5 % is below min_label
    assert to_rgba(texts["30"].get_color()) == to_rgba("white")  # on a dark cell
    assert to_rgba(texts["90"].get_color()) == to_rgba("black")  # on a light cell
    assert texts["30"].get_fontsize() >= 8


def test_every_plotting_name_is_importable_from_the_package():
    """``puretools.plots`` is a package of figure modules; its public names stay where they were."""
    import puretools as pt
    import puretools.plots as plots

    assert set(plots.__all__) == {
        "cluster_colors", "method_color", "patch_grid", "plot_cluster_distances", "plot_concept_mix",
        "plot_distance_correlation", "plot_umap", "umap_embedding", "virtual_neuron_grids",
    }
    assert all(callable(getattr(plots, name)) for name in plots.__all__)
    for name in ("patch_grid", "plot_cluster_distances", "plot_concept_mix", "plot_distance_correlation",
                 "plot_umap", "umap_embedding", "virtual_neuron_grids"):
        assert getattr(pt, name) is getattr(plots, name), name
