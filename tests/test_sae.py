"""Tests of puretools.sae: the overcomplete TopK SAE on a layer, its contributions and split."""

import pytest
import torch

import puretools as pt
from puretools import toyworld as tw
from puretools.sae import activations_at_max, sae_contributions, sae_split, train_layer_sae


@pytest.fixture(scope="module")
def setup():
    model = pt.load_model("toy")
    train = tw.ToyWorld("train", n=200)
    sae = train_layer_sae(model, train, tw.LAYER, epochs=12, batch_size=256, seed=0)
    return model, train, sae


def test_training_is_seeded_sparse_and_reconstructs(setup):
    model, train, sae = setup
    short = [train_layer_sae(model, train, tw.LAYER, epochs=1, batch_size=256, seed=s) for s in (0, 0, 1)]
    assert torch.equal(short[0].dictionary, short[1].dictionary)  # seeded: the same run twice
    assert not torch.equal(short[0].dictionary, short[2].dictionary)
    assert type(sae.sae).__name__ == "TopKSAE" and type(sae.sae).__module__.startswith("overcomplete")
    assert (sae.n_latents, sae.top_k) == (32, 4) and sae.dictionary.shape == (32, 8)
    h = torch.rand(50, 8) * 3
    codes = sae.encode(h)
    assert ((codes > 0).sum(1) <= sae.top_k).all() and (codes >= 0).all()
    assert 0.5 < sae.r2 <= 1 and 0 <= sae.dead < 1


def test_contributions_add_up_to_the_reconstruction(setup):
    _, _, sae = setup
    h = torch.rand(40, 8) * 3
    with torch.no_grad():
        x_hat = sae.encode(h) @ sae.dictionary  # [40, 8] in the layer's units
    for k in (0, 5):
        c = sae_contributions(sae, h, k)
        assert c.shape == (40, sae.n_latents)
        assert torch.allclose(c.sum(1), x_hat[:, k], atol=1e-4)
    # a function of the vector: for a linear one the first-order shares are exact
    w = torch.randn(8)
    c = sae_contributions(sae, h, lambda x: x @ w)
    assert torch.allclose(c.sum(1), x_hat @ w, atol=1e-4)
    assert torch.equal(sae_split(sae, h, 5), sae_contributions(sae, h, 5).argmax(1))
    with pytest.raises(ValueError, match="not a channel"):
        sae_contributions(sae, h, 8)


def test_activations_at_max_read_the_max_location(setup):
    model, _, _ = setup
    data = tw.ToyWorld("test", n=300)
    refs = pt.collect_references(model, data, tw.LAYER, n_ref=10, progress=False)
    h = activations_at_max(model, data, tw.LAYER, refs, [1, 4])
    assert h.shape == (2, 10, 8)
    # the neuron's own entry at its max location is its spatial max: the reference value
    assert torch.allclose(h[0, :, 1], refs.values[1], atol=1e-5)
    assert torch.allclose(h[1, :, 4], refs.values[4], atol=1e-5)
    # and the whole vector, by hand, for one reference
    with torch.no_grad():
        out = pt.layer_output(model, data[int(refs.indices[4, 3])][0][None], tw.LAYER)[0]
    where = out[4].flatten().argmax()
    assert torch.allclose(h[1, 3], out.flatten(1)[:, where], atol=1e-6)
