"""Activation baselines (peak-location features) and the SAE's split rules, against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from puretools.errors import PuretoolsError
from puretools.sae import SPLIT_RULES, sae_split


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(),  # "1": 5 x 8 x 8
        nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.ReLU(),  # "3": 4 x 4 x 4
    ).eval()


def _brute_force(model, data, refs, layer, read_layer, where):
    """One image at a time, hooks on both layers, explicit loops for the argmax and the mapping."""
    modules = dict(model.named_modules())
    out = torch.zeros(refs.shape[0], refs.shape[1], 0).tolist()
    for n in range(refs.shape[0]):
        for r in range(refs.shape[1]):
            store = {}
            hs = [modules[name].register_forward_hook(lambda m, i, o, name=name: store.__setitem__(name, o.clone()))
                  for name in (layer, read_layer)]
            with torch.no_grad():
                model(data[int(refs[n, r])][0][None])
            for h in hs:
                h.remove()
            at, read = store[layer][0], store[read_layer][0]
            if where == "mean":
                out[n][r] = [float(read[c].mean()) for c in range(read.shape[0])]
                continue
            best, bi, bj = -math.inf, 0, 0
            for i in range(at.shape[1]):
                for j in range(at.shape[2]):
                    if float(at[n, i, j]) > best:
                        best, bi, bj = float(at[n, i, j]), i, j
            ri = min(int((bi + 0.5) * read.shape[1] / at.shape[1]), read.shape[1] - 1)
            rj = min(int((bj + 0.5) * read.shape[2] / at.shape[2]), read.shape[2] - 1)
            out[n][r] = [float(read[c, ri, rj]) for c in range(read.shape[0])]
    return torch.tensor(out)


@pytest.mark.parametrize("where", ["mean", "peak"])
@pytest.mark.parametrize("read_layer", ["3", "1"])  # the layer itself, and a lower layer twice its size
def test_activation_features_equal_brute_force(where, read_layer):
    model = _model()
    data = TensorDataset(torch.randn(15, 3, 8, 8))
    refs = torch.randint(0, 15, (4, 5))
    got = pt.activation_features(model, data, "3", refs, where=where, read_layer=read_layer, batch_size=4)
    want = _brute_force(model, data, refs, "3", read_layer, where)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_peak_features_of_a_subset_of_neurons_and_smaller_read_layer():
    model = _model()
    data = TensorDataset(torch.randn(12, 3, 8, 8))
    refs = torch.randint(0, 12, (5, 4))  # 5 channels of "1"
    got = pt.activation_features(model, data, "1", refs, neurons=[1, 4], where="peak", read_layer="3")
    want = _brute_force(model, data, refs, "1", "3", "peak")[[1, 4]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_peak_features_toy_model_match_reference_values():
    from puretools import toyworld

    model = pt.load_model("toy")
    data = toyworld.ToyWorld("test", n=120)
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=6, progress=False)
    peak = pt.activation_features(model, data, toyworld.LAYER, refs, neurons=[2, 5], where="peak")
    torch.testing.assert_close(peak[0, :, 2], refs.values[2])  # its own entry is the reference's value
    torch.testing.assert_close(peak[1, :, 5], refs.values[5])
    lower = pt.activation_features(model, data, toyworld.LAYER, refs, neurons=[2], where="peak",
                                   read_layer=toyworld.LOWER_LAYER)
    assert lower.shape == (1, 6, 64)


def test_peak_features_on_a_vit_read_the_token_where_the_neuron_peaks():
    """Toy ViT: the residual stream's vector at the token of each neuron's max (brute force with hooks)."""
    from puretools import toyworld

    model = pt.load_model("toy-vit")
    data = toyworld.ToyWorld("test", n=60)
    refs = pt.collect_references(model, data, toyworld.VIT_LAYER, n_ref=5, progress=False)
    got = pt.activation_features(model, data, toyworld.VIT_LAYER, refs, neurons=[1, 6], where="peak",
                                 read_layer=toyworld.VIT_LOWER_LAYER)
    own = pt.activation_features(model, data, toyworld.VIT_LAYER, refs, neurons=[1, 6], where="peak")
    for row, neuron in enumerate([1, 6]):
        x = torch.stack([data[int(i)][0] for i in refs.indices[neuron]])
        with torch.no_grad():
            at = pt.layer_output(model, x, toyworld.VIT_LAYER)  # [5, 17 tokens, 8]
            read = pt.layer_output(model, x, toyworld.VIT_LOWER_LAYER)  # [5, 17, 48]
        token = at[:, :, neuron].argmax(1)
        torch.testing.assert_close(got[row], read[torch.arange(5), token])
        torch.testing.assert_close(own[row], at[torch.arange(5), token])
        torch.testing.assert_close(own[row, :, neuron], refs.values[neuron])  # the token max itself
    with pytest.raises(PuretoolsError, match="same tokens"):  # tokens read at a map's position: refused
        pt.activation_features(model, data, toyworld.VIT_LAYER, refs, neurons=[1], where="peak",
                               read_layer="patch_embed.proj")


def test_activation_features_bad_where():
    model = _model()
    with pytest.raises(PuretoolsError, match="where"):
        pt.activation_features(model, TensorDataset(torch.randn(4, 3, 8, 8)), "3", torch.zeros(4, 2, dtype=torch.long),
                               where="max")


class _FakeSAE:
    """A LayerSAE stand-in with a fixed dictionary: codes are relu(h @ D.T), no top-k."""

    layer, n_latents, top_k, scale = "x", 3, 3, 1.0

    def __init__(self, dictionary):
        self._d = dictionary

    def encode(self, h):
        return (h @ self._d.T).clamp(min=0)

    @property
    def dictionary(self):
        return self._d


def test_sae_split_rules_by_hand():
    # latent 0 is the neuron's own direction: active everywhere and the largest contributor
    d = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0.6, 0, 0.8]])
    h = torch.tensor([[3.0, 1, 0], [3, 1.2, 0], [3, 0, 1], [3, 0, 1.1], [3, 0, 0], [3, 0, 0]])
    sae = _FakeSAE(d)
    z = sae.encode(h)
    contrib = z * d[:, 0]
    assert torch.equal(sae_split(sae, h, 0, rule="argmax"), contrib.argmax(-1))
    assert sae_split(sae, h, 0, rule="argmax").tolist() == [0] * 6  # the own direction wins everywhere
    # the rule written out: among latents active on < half of the references, else all latents
    sparse = sae_split(sae, h, 0, rule="sparse")
    rare = (z > 0).float().mean(0) < 0.5
    for r in range(6):
        cand = [j for j in range(3) if rare[j] and contrib[r, j] > 0]
        want = max(cand, key=lambda j: float(contrib[r, j])) if cand else int(contrib[r].argmax())
        assert int(sparse[r]) == want
    km = sae_split(sae, h, 0, rule="kmeans", k=2)
    assert km.shape == (6,) and km.unique().numel() == 2
    with pytest.raises(PuretoolsError, match="rule"):
        sae_split(sae, h, 0, rule="best")
    with pytest.raises(PuretoolsError, match="needs k"):
        sae_split(sae, h, 0, rule="kmeans")
    assert set(SPLIT_RULES) == {"argmax", "sparse", "kmeans"}


def test_sae_sparse_rule_picks_the_rare_latent():
    d = torch.eye(3)  # latent j = channel j
    # channel 0 (the neuron) is on everywhere; channel 1 on refs 0-1, channel 2 on refs 2-3, nothing else on 4-5
    h = torch.tensor([[5.0, 1, 0], [5, 1, 0], [5, 0, 1], [5, 0, 1], [5, 0, 0], [5, 0, 0]])
    sae = _FakeSAE(d)

    def readout(x):  # the neuron reads all three channels
        return x.sum(-1)

    assert sae_split(sae, h, readout, rule="argmax").tolist() == [0] * 6
    assert sae_split(sae, h, readout, rule="sparse").tolist() == [1, 1, 2, 2, 0, 0]


# ----------------------------------------------------------------- the protocol without leaks


def test_ari_counting_unlabelled_and_choose_k():
    from sklearn.metrics import adjusted_rand_score

    from puretools.baselines import K_RULES, ari_counting_unlabelled, choose_k
    from puretools.virtual import kmeans_labels

    clusters, truth = [0, 0, 1, 1, 1, 1], [3, 3, 5, 5, -1, -1]
    assert pt.toyworld.ground_truth_scores(clusters, truth)["ari"] == 1.0  # dropping hides the mixed cluster
    assert ari_counting_unlabelled(clusters, truth) == adjusted_rand_score([3, 3, 5, 5, 6, 6], clusters) < 1
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, (10, 2)) for c in (0, 5, 10)])
    by_k = {k: kmeans_labels(x, k)[0] for k in (2, 3, 4)}
    assert all(choose_k(x, by_k, r) == 3 for r in K_RULES)
    with pytest.raises(PuretoolsError, match="rule"):
        choose_k(x, by_k, "elbow")


def test_pair_ari_scores_only_the_references_of_the_pair():
    from sklearn.metrics import adjusted_rand_score

    from puretools.baselines import pair_ari

    rng = np.random.default_rng(0)
    truth, clusters = rng.integers(-1, 5, 60), rng.integers(0, 3, 60)
    keep = [i for i in range(60) if truth[i] in (1, 3)]  # brute force: the pair's references only
    assert pair_ari(clusters, truth, [1, 3]) == adjusted_rand_score(truth[keep], clusters[keep])
    assert pair_ari(np.where(np.isin(truth, [1, 3]), truth, 0), truth, [1, 3]) == 1.0  # other concepts ignored
    assert np.isnan(pair_ari(clusters, truth, [3, 9]))  # only one member present: nothing to separate


@pytest.mark.slow
def test_protocol_chooses_settings_on_validation_images_only(monkeypatch):
    from puretools import baselines, toyworld

    events, seen = [], {}
    real_run_split, real_choose = baselines.run_split, baselines.choose_settings

    def spy_run_split(model, dataset, name, *a, **k):
        events.append(f"features:{name}")
        run = real_run_split(model, dataset, name, *a, **k)
        seen[name] = run
        return run

    def spy_choose(run, *a, **k):
        events.append(f"choose:{run.name}")
        seen["chooser_input"] = run
        return real_choose(run, *a, **k)

    monkeypatch.setattr(baselines, "run_split", spy_run_split)
    monkeypatch.setattr(baselines, "choose_settings", spy_choose)
    model = pt.load_model("toy")
    val, test = toyworld.ToyWorld("test", n=300, seed=1), toyworld.ToyWorld("test", n=300)
    train = toyworld.ToyWorld("train", n=100)
    r = baselines.compare_protocol(model, val, test, train, n_ref=12, n_seeds=2, sae_grid=((16, 2),), sae_epochs=1,
                                   choose_seeds=(0,), merged_pairs=[("disc", "checkerboard"), ("square", "dots")])
    # every setting was chosen before any test image was looked at, from the validation run only
    assert events == ["features:val", "choose:val", "features:test"]
    chooser = seen["chooser_input"]
    assert chooser is seen["val"] and chooser.name == "val"
    # independent check on the pixels: the images the chooser saw are validation images, none is scored
    val_images = baselines.image_digests(val, torch.arange(len(val)))
    test_refs = baselines.image_digests(test, seen["test"].reference_indices)
    assert chooser.digests <= val_images
    assert not chooser.digests & test_refs and r.selection_digests_overlap == 0
    assert set(r.scores) == set(baselines.PROTOCOL_METHODS)
    assert r.scores["PURE-gradient"]["label-free"].shape == (len(r.neurons), 2, 2)
    assert 0 < r.coverage <= 1
    for j, n in enumerate(r.neurons):  # pair scores exist exactly for the neurons that mix a merged pair
        shares = toyworld.label_shares(seen["test"].truth[j], len(toyworld.CONCEPTS))
        mixes = [[a, b] for a, b in [("disc", "checkerboard"), ("square", "dots")]
                 if min(shares[toyworld.CONCEPTS.index(a)], shares[toyworld.CONCEPTS.index(b)]) >= 0.2]
        assert r.pair_neurons.get(n, []) == mixes
        for m in baselines.PROTOCOL_METHODS:
            assert r.pair_scores[m]["oracle"].shape == (len(r.neurons), 2)
            assert np.isnan(r.pair_scores[m]["label-free"][j]).all() == (not mixes)
    with pytest.raises(PuretoolsError, match="validation"):
        real_choose(seen["test"])
    with pytest.raises(PuretoolsError, match="both validation references and scored"):
        baselines.compare_protocol(model, test, test, train, n_ref=20, n_seeds=1, sae_grid=((16, 2),),
                                   sae_epochs=1, choose_seeds=(0,))


# ----------------------------------------------------------------- virtual heatmaps: weights


def _heat_by_hand(model, x, neuron, w):
    """Gradient x input of ``neuron`` with the relevance at model[:2]'s output weighted by w [C_lower]."""
    x = x.clone().requires_grad_(True)
    lower = model[1](model[0](x))
    y = model[3](model[2](lower))
    start = y[:, neuron].detach().clamp(min=0)
    (g_low,) = torch.autograd.grad((y[:, neuron] * start).sum(), lower, retain_graph=True)
    (g_x,) = torch.autograd.grad((lower * (g_low * w[None, :, None, None])).sum(), x)
    return (g_x * x).detach().sum(1)


def test_virtual_heatmap_weights_by_hand():
    from puretools.routing import contrastive_conditions, partition_conditions

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()).eval()
    vn = pt.VirtualNeurons().fit(torch.rand(12, 6), k=3, neurons=[2])
    x = torch.randn(3, 3, 8, 8)
    cen = vn.centroids[0].double()
    # contrastive weights written out: own centroid minus the mean of the other two, clipped, max 1
    by_hand = torch.stack([(cen[j] - (cen.sum(0) - cen[j]) / 2).clamp(min=0) for j in range(3)])
    by_hand = by_hand / by_hand.amax(1, keepdim=True)
    torch.testing.assert_close(contrastive_conditions(cen), by_hand.float())
    for weights, w in (("partition", partition_conditions(cen).float()), ("contrastive", by_hand.float())):
        heat, full = pt.virtual_heatmaps(model, x, "3", "1", vn, 2, weights=weights, return_full=True)
        want = torch.stack([_heat_by_hand(model, x, 2, w[j]) for j in range(3)])
        torch.testing.assert_close(heat, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(full, _heat_by_hand(model, x, 2, torch.ones(6)), rtol=1e-4, atol=1e-5)
        adds_up = torch.allclose(heat.sum(0), full, atol=1e-5)
        assert adds_up == (weights == "partition")  # only the partition adds up to the whole heatmap
    with pytest.raises(PuretoolsError, match="weights"):
        pt.virtual_heatmaps(model, x, "3", "1", vn, 2, weights="soft")
