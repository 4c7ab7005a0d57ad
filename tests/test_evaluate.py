"""Distance metrics on hand-computed examples, distance correlation, the toy-world evaluation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import puretools as pt
from puretools.errors import PuretoolsError
from puretools.evaluate import (
    PAPER_CORRELATIONS,
    PAPER_DISTANCES,
    MeanSem,
    cluster_distances,
    distance_correlation,
    evaluate_clusterings,
    mean_sem,
    pairwise_distances,
)

# Five points on a line: cluster A = {0, 2, 4}, cluster B = {10, 11}.
# A pairs: 2, 4, 2 (mean 8/3); B pair: 1; between: 10 11 8 9 6 7 (mean 8.5);
# all ten pairs: (2 + 4 + 2 + 1 + 51) / 10 = 6.
POINTS = torch.tensor([[0.0], [2.0], [4.0], [10.0], [11.0]])
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_cluster_distances_hand_computed():
    d = cluster_distances(POINTS, LABELS)
    assert d.intra == pytest.approx((8 / 3 + 1) / 2)
    assert d.inter == pytest.approx(8.5)
    assert d.unclustered == pytest.approx(6.0)
    pooled = cluster_distances(POINTS, LABELS, average="pairs")
    assert pooled.intra == pytest.approx(9 / 4)  # (2 + 4 + 2 + 1) / 4 pairs
    assert pooled.inter == d.inter and pooled.unclustered == d.unclustered


def test_cluster_distances_in_two_dimensions_and_label_permutation():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0], [6.0, 8.0]])  # 3-4-5 triangles
    d = cluster_distances(x, torch.tensor([1, 1, 0, 0]))
    assert d.intra == pytest.approx((5 + 6) / 2)
    inter = np.mean([8, 10, math.hypot(3, 4), math.hypot(3, 4)])  # (0,2) (0,3) (1,2) (1,3)
    assert d.inter == pytest.approx(inter)
    assert cluster_distances(x, torch.tensor([0, 0, 7, 7])) == d


def test_singletons_and_one_cluster_give_nan():
    d = cluster_distances(POINTS, torch.tensor([0, 1, 2, 3, 4]))
    assert math.isnan(d.intra) and d.inter == pytest.approx(6.0)
    d = cluster_distances(POINTS, torch.zeros(5, dtype=torch.long))
    assert math.isnan(d.inter) and d.intra == pytest.approx(6.0)
    # a singleton cluster is left out of the per-cluster average
    d = cluster_distances(POINTS, torch.tensor([0, 0, 0, 1, 2]))
    assert d.intra == pytest.approx(8 / 3)


def test_pairwise_distances_match_cdist():
    x = torch.randn(3, 7, 5)
    torch.testing.assert_close(pairwise_distances(x), torch.cdist(x.double(), x.double()), atol=1e-10, rtol=0)


def test_mean_sem():
    assert mean_sem([2.0, 4.0]) == MeanSem(3.0, 1.0)  # std(ddof=1) = sqrt(2), / sqrt(2)
    assert math.isnan(mean_sem([5.0]).sem) and mean_sem([5.0]).mean == 5.0
    assert all(math.isnan(v) for v in mean_sem([]))


def test_evaluate_clusterings_averages_over_neurons():
    emb = torch.stack([POINTS, 2 * POINTS])  # second neuron: all distances doubled
    labels = torch.stack([LABELS, LABELS])
    swapped = torch.tensor([[0, 1, 0, 1, 0]] * 2)
    table = evaluate_clusterings(emb, {"PURE": labels, "bad": swapped}, space="test space")
    intra = (8 / 3 + 1) / 2
    assert table["PURE"].intra.mean == pytest.approx(1.5 * intra)
    assert table["PURE"].intra.sem == pytest.approx(0.5 * intra)  # std(ddof=1) of (a, 2a) / sqrt(2)
    assert table["PURE"].inter.mean == pytest.approx(1.5 * 8.5)
    assert table.unclustered.mean == pytest.approx(9.0)
    assert table["PURE"].n_neurons == 2
    assert table["bad"].intra.mean > table["PURE"].intra.mean
    assert table["bad"].inter.mean < table["PURE"].inter.mean
    assert table.per_neuron["PURE"].shape == (2, 2)
    text = str(table)
    assert "test space" in text and "| PURE | 2.75 ± 0.92 | 12.75 ± 4.25 | 2 |" in text
    assert "| unclustered | 9.00 ± 3.00 |" in text
    with pytest.raises(KeyError, match="PURE"):
        table["DINO"]


def test_evaluate_clusterings_accepts_virtual_neurons_and_checks_shapes():
    emb = torch.randn(3, 12, 4)
    vn = pt.VirtualNeurons(seed=0).fit(emb, k=2)
    a = evaluate_clusterings(emb, {"vn": vn})
    b = evaluate_clusterings(emb, {"vn": vn.labels})
    assert a == b
    with pytest.raises(PuretoolsError, match="shape"):
        evaluate_clusterings(emb, {"vn": vn.labels[:, :5]})


def test_paper_numbers_are_recorded():
    assert PAPER_DISTANCES["DINOv2"].intra.mean == 5.87 and PAPER_DISTANCES["DINOv2"].inter.mean == 6.65
    assert PAPER_DISTANCES["PURE"].intra.mean == 5.94 and PAPER_DISTANCES["PURE"].inter.mean == 6.56
    assert PAPER_DISTANCES["activations"].intra.mean == 6.09 and PAPER_DISTANCES["activations"].inter.mean == 6.34
    assert PAPER_DISTANCES.unclustered.mean == 6.20
    assert {k: v.mean for k, v in PAPER_CORRELATIONS.items()} == {"DINOv2": 0.57, "PURE": 0.38, "activations": 0.17}
    assert "5.87" in PAPER_DISTANCES.to_markdown()


def test_distance_correlation_identical_and_scaled_spaces():
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(60, 10, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    noise = torch.randn(60, 10, 8, generator=g)
    r = distance_correlation(
        clip,
        {"same": clip, "scaled": 2.5 * clip, "rotated": clip @ rotation + 1.0, "noise": noise, "mixed": clip + noise},
        n_subsets=6,
        seed=0,
    )
    assert r["same"].mean == pytest.approx(1.0, abs=1e-12)
    assert r["scaled"].mean == pytest.approx(1.0, abs=1e-9)
    assert r["rotated"].mean == pytest.approx(1.0, abs=1e-6)
    assert abs(r["noise"].mean) < 0.2
    assert 0.3 < r["mixed"].mean < 0.95
    assert r["noise"].sem > 0


def test_distance_correlation_is_pooled_pearson_over_subsets():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 5, 3, generator=g)
    b = torch.randn(4, 5, 2, generator=g)
    r = distance_correlation(a, {"b": b}, n_subsets=1, subset_size=4)  # one subset: all neurons
    iu = np.triu_indices(5, 1)
    da = np.concatenate([pairwise_distances(a[i]).numpy()[iu] for i in range(4)])
    db = np.concatenate([pairwise_distances(b[i]).numpy()[iu] for i in range(4)])
    assert r["b"].mean == pytest.approx(np.corrcoef(da, db)[0, 1])
    assert math.isnan(r["b"].sem)
    # seeded: same seed, same subsets
    many = {"n_subsets": 3, "subset_size": 3, "seed": 5}  # 9 > 4 neurons: independent draws
    assert distance_correlation(a, {"b": b}, **many) == distance_correlation(a, {"b": b}, **many)
    with pytest.raises(PuretoolsError, match="shape"):
        distance_correlation(a, {"b": b[:, :3]})


def test_evaluate_toy_world_in_one_call(tmp_path, toy_pipeline):
    import time

    from PIL import Image

    toy_pipeline.references()  # the session's references, cached in the session's cache (computed once)
    start = time.perf_counter()
    result = pt.evaluate_toy_world(cache_dir=toy_pipeline.cache_dir)
    elapsed = time.perf_counter() - start
    assert len(result.neurons) >= 2
    assert result.table.methods == ["PURE", "activations", "ground truth"]
    for row in result.table.rows:  # splitting can only lower intra / raise inter vs no split on average
        assert row.intra.mean < result.table.unclustered.mean < row.inter.mean
    assert set(result.correlations) == {"PURE", "activations"}
    # ARI against causal labels; k-means in the concept space itself is the ground-truth bound
    assert set(result.ari) == {"PURE", "activations", "ground truth"}
    assert all(-1 <= v.mean <= 1 for v in result.ari.values())
    assert result.ari["PURE"].mean > 0.5
    figures = {"distances": pt.plot_cluster_distances(result.table), "correlation":
               pt.plot_distance_correlation(result.correlations)}
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert Image.open(tmp_path / f"{name}.png").size[0] > 100
    print(f"evaluate_toy_world took {elapsed:.1f} s")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 25), k=st.integers(2, 4),
       scale=st.floats(0.1, 10), shift=st.floats(-5, 5))
def test_cluster_distance_properties(seed, n, k, scale, shift):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, 3)))
    labels = torch.from_numpy(rng.integers(0, k, size=n))
    d = cluster_distances(x, labels)
    moved = cluster_distances(x * scale + shift, labels)  # Euclidean: translation-free, scales linearly
    for a, b in [(d.intra, moved.intra), (d.inter, moved.inter), (d.unclustered, moved.unclustered)]:
        if np.isfinite(a):
            assert b == pytest.approx(a * scale, rel=1e-6, abs=1e-9)
    perm = torch.from_numpy(rng.permutation(n))
    renamed = cluster_distances(x[perm], (labels[perm] + 1) % k)  # order and names of clusters do not matter
    assert renamed.unclustered == pytest.approx(d.unclustered)
    if np.isfinite(d.inter):
        assert renamed.inter == pytest.approx(d.inter)
    assert d.unclustered >= 0 and (not np.isfinite(d.intra) or d.intra >= 0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.5, 4))
def test_distance_correlation_of_a_scaled_copy_is_one(seed, scale):
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(4, 10, 3)))
    r = distance_correlation(x, {"same": x, "scaled": x * scale}, n_subsets=2, subset_size=2)
    assert r["same"].mean == pytest.approx(1.0) and r["scaled"].mean == pytest.approx(1.0)


def test_evaluation_never_imports_plotting():
    """Data flow one way: plots import evaluate, never the reverse (not even inside a function)."""
    import ast
    import inspect

    import puretools.evaluate as evaluate

    tree = ast.parse(inspect.getsource(evaluate))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m and m.split(".")[-1] in ("plots", "widgets")}, imported
