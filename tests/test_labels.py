"""Names of virtual neurons: ground-truth concept mix, CLIP text probing (random weights offline)."""

import pytest
import torch

import puretools as pt
from puretools.labels import clip_text_labels, concept_labels


def test_concept_labels_follow_the_ground_truth_of_each_cluster():
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(30) % 2  # references alternate between concept 2 and concept 5
    circuits = torch.randn(1, 30, 4, generator=g) * 0.05 + truth[None, :, None] * 2.0
    labels = torch.zeros(1, 30, 6)
    labels[0, truth == 0, 2] = 1
    labels[0, truth == 1, 5] = 1
    labels[0, :3, 0] = 1  # a few also hold concept 0 (under min_share)
    vn = pt.VirtualNeurons().fit(circuits, k=2, neurons=[9])
    out = concept_labels(vn, labels, [f"c{i}" for i in range(6)])
    assert out.neurons == [9]
    by_cluster = {int(truth[vn.labels[0] == j][0]): out.names[0][j] for j in range(2)}
    assert by_cluster == {0: "c2 100%", 1: "c5 100%"}
    for j in range(2):  # mix: share of the cluster's references holding each concept, by hand
        members = labels[0][vn.labels[0] == j]
        torch.testing.assert_close(out.mix[0][j], members.mean(0))


def test_concept_labels_check_shapes():
    vn = pt.VirtualNeurons().fit(torch.rand(2, 10, 3), k=2)
    with pytest.raises(pt.PuretoolsError, match=r"shape \[2, 10, n_concepts\]"):
        concept_labels(vn, torch.zeros(2, 9, 4), list("abcd"))
    with pytest.raises(pt.PuretoolsError, match="concept_names"):
        concept_labels(vn, torch.zeros(2, 10, 4), list("abc"))


def test_clip_text_probing_with_random_weights_says_so():
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(3, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)]
    out = clip_text_labels(batches, ["disc", "stripes", "ring"], pretrained=None)
    assert out.random_weights and out.scores.shape == (2, 3)
    assert out.words == [out.vocabulary[int(i)] for i in out.scores.argmax(1)]
    assert (out.scores.abs() <= 1 + 1e-5).all()  # cosine similarities
    with pytest.raises(pt.PuretoolsError, match="non-empty"):
        clip_text_labels(batches, [], pretrained=None)
