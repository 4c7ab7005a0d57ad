"""VirtualNeurons: deterministic k-means per neuron, nearest-centroid assignment, baselines."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import puretools as pt
from puretools.virtual import kmeans_labels


def blobs(n_neurons=3, n_ref=40, dim=6, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_neurons, k, dim, generator=g) * 5
    truth = torch.randint(0, k, (n_neurons, n_ref), generator=g)
    x = centers.gather(1, truth[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(n_neurons, n_ref, dim, generator=g)
    return x, truth


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return all(len(set(b[a == v])) == 1 for v in set(a)) and len(set(a)) == len(set(b))


def test_recovers_separated_clusters():
    x, truth = blobs(k=3)
    vn = pt.VirtualNeurons(seed=0).fit(x, k=3)
    assert vn.labels.shape == (3, 40) and vn.ks == [3, 3, 3]
    assert all(same_partition(vn.labels[i], truth[i]) for i in range(3))
    assert [c.shape for c in vn.centroids] == [(3, 6)] * 3


def test_deterministic_and_assign_reproduces_labels():
    x = torch.rand(4, 30, 5)
    a = pt.VirtualNeurons(seed=0).fit(x, k=3)
    b = pt.VirtualNeurons(seed=0).fit(x, k=3)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.assign(x), a.labels)
    assert torch.equal(a.assign(x[2], neuron=2), a.labels[2])


def test_auto_k_by_silhouette():
    x, truth = blobs(n_neurons=2, k=4, seed=1)
    vn = pt.VirtualNeurons().fit(x, k="auto")
    assert vn.ks == [len(truth[0].unique()), len(truth[1].unique())]
    assert set(vn.silhouettes[0]) == {2, 3, 4, 5}


def test_k_per_neuron_and_k_one():
    x, _ = blobs()
    vn = pt.VirtualNeurons().fit(x, k=[1, 2, 3])
    assert vn.ks == [1, 2, 3]
    assert vn.labels[0].unique().tolist() == [0]


@pytest.mark.parametrize("k", [0, 41])
def test_k_out_of_range(k):
    with pytest.raises(pt.PuretoolsError, match="1 <= k <= 40"):
        pt.VirtualNeurons().fit(torch.rand(2, 40, 3), k=k)


def test_assign_before_fit():
    with pytest.raises(pt.PuretoolsError, match="fit"):
        pt.VirtualNeurons().assign(torch.rand(5, 3))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 30), k=st.integers(1, 4))
def test_properties(seed, n, k):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(1, n, 3)))
    vn = pt.VirtualNeurons().fit(x, k=k)
    labels = vn.labels[0]
    assert labels.min() >= 0 and labels.max() < k
    assert torch.equal(vn.assign(x), vn.labels)
    perm = torch.from_numpy(rng.permutation(n))
    permuted = pt.VirtualNeurons().fit(x[:, perm], k=k)
    assert torch.equal(permuted.labels[0], labels[perm])


def test_kmeans_labels_sizes_descending():
    x = np.concatenate([np.zeros((3, 2)), np.ones((7, 2)) * 5])
    labels, centroids = kmeans_labels(x, 2)
    assert (labels[3:] == 0).all() and (labels[:3] == 1).all()
    np.testing.assert_allclose(centroids[0], [5, 5])


def test_activation_baseline_features(vgg, small_images):
    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=5, progress=False)
    feats = pt.activation_features(vgg, small_images, "features.9", refs, neurons=[1, 4])
    assert feats.shape == (2, 5, 12)
    x = small_images[int(refs.indices[4, 2])][0][None]
    with torch.no_grad():
        expected = vgg.features(x).mean((2, 3))[0]
    torch.testing.assert_close(feats[1, 2], expected, atol=1e-5, rtol=1e-5)
    vn = pt.VirtualNeurons().fit(feats, k=2)
    assert vn.labels.shape == (2, 5)


def test_fit_remembers_neurons_and_rejects_fractional_k():
    circuits = torch.rand(2, 10, 4)
    vn = pt.VirtualNeurons().fit(circuits, k=2, neurons=[6, 3], layer="layer4", lower_layer="layer3")
    assert vn.neurons == [6, 3] and vn.position(3) == 1 and (vn.layer, vn.lower_layer) == ("layer4", "layer3")
    assert pt.VirtualNeurons().fit(circuits, k=2).neurons == [0, 1]
    for bad in (2.5, [2, 2.5], True):
        with pytest.raises(pt.PuretoolsError, match="int"):
            pt.VirtualNeurons().fit(circuits, k=bad)
    with pytest.raises(pt.PuretoolsError, match="2 neuron ids|one id per row"):
        pt.VirtualNeurons().fit(circuits, k=2, neurons=[1, 2, 3])
    with pytest.raises(pt.PuretoolsError, match="distinct"):
        pt.VirtualNeurons().fit(circuits, k=2, neurons=[1, 1])
