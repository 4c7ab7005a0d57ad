"""Tests of puretools.planted: planted neurons keep the model, have true sources, and work with circuits."""

import pytest
import torch
from torch import nn

import puretools as pt
from puretools import toyworld as tw
from puretools.planted import class_activation_units, plant_neurons, planted_sources

PAIRS = [(2, 10), (0, 6), (4, 13)]  # triangle + diagonal, disc + stripes_h, plus + h_line


@pytest.fixture(scope="module")
def setup():
    model = pt.load_model("toy")
    data = tw.ToyWorld("test", n=600)
    planted = plant_neurons(model, tw.LAYER, class_activation_units(model.fc), PAIRS)
    refs = pt.collect_references(planted.model, data, planted.layer, n_ref=40, progress=False)
    return model, data, planted, refs


def test_planting_leaves_the_model_and_its_channels_unchanged(setup):
    model, data, planted, _ = setup
    x = data.images[:16]
    with torch.no_grad():
        assert torch.allclose(planted.model(x), model(x), atol=1e-6)
        own = pt.layer_output(model, x, tw.LAYER)
        out = pt.layer_output(planted.model, x, planted.layer)
    assert out.shape[1] == own.shape[1] + len(PAIRS) and planted.channels == [8, 9, 10]
    assert torch.allclose(out[:, : own.shape[1]], own, atol=1e-6)
    assert not any(n.startswith(f"{tw.LAYER}.planted") for n, _ in model.named_modules())  # model untouched


def test_planted_channel_is_the_sum_of_rectified_class_activation_maps(setup):
    model, data, planted, _ = setup
    x = data.images[:8]
    with torch.no_grad():
        h = pt.layer_output(model, x, tw.LAYER)  # [B, 8, H, W]
        out = pt.layer_output(planted.model, x, planted.layer)
    for p, (a, b) in enumerate(PAIRS):
        cam = lambda c: torch.einsum("bchw,c->bhw", h, model.fc.weight[c]) + model.fc.bias[c]  # noqa: E731
        expected = torch.relu(cam(a)) + torch.relu(cam(b))
        assert torch.allclose(out[:, planted.channels[p]], expected, atol=1e-5)


def test_true_sources_by_hand(setup):
    model, data, planted, refs = setup
    idx = refs.indices[planted.channels]
    sources = planted_sources(planted, data, idx)
    assert sources.shape == idx.shape
    for p, (a, b) in enumerate(PAIRS):
        assert set(sources[p].unique().tolist()) <= {a, b, -1}
        for r in range(0, idx.shape[1], 5):
            x = data[int(idx[p, r])][0][None]
            with torch.no_grad():
                h = pt.layer_output(model, x, tw.LAYER)[0]
            ua = torch.relu(torch.einsum("chw,c->hw", h, model.fc.weight[a]) + model.fc.bias[a]).flatten()
            ub = torch.relu(torch.einsum("chw,c->hw", h, model.fc.weight[b]) + model.fc.bias[b]).flatten()
            where = (ua + ub).argmax()
            assert int(sources[p, r]) == (a if ua[where] > ub[where] else b), (p, r)
    # the top references of a planted neuron hold one of its concepts, mostly
    for p, (a, b) in enumerate(PAIRS):
        holds = data.labels[idx[p]][:, [a, b]].any(1).float().mean()
        assert holds > 0.9, (p, holds)


@pytest.mark.parametrize("p", [0, 2])
def test_circuits_of_a_planted_neuron_match_brute_force_autograd(setup, p):
    model, data, planted, refs = setup
    channel = planted.channels[p]
    circuits = pt.circuit_attributions(planted.model, data, planted.layer, tw.LOWER_LAYER, refs,
                                       neurons=[channel], progress=False)[0]  # [n_ref, C_lower]  # fmt: skip
    plant = pt.get_module(planted.model, planted.layer)
    inner = pt.get_module(planted.model, planted.inner)
    for r in range(0, refs.n_ref, 4):
        x = data[int(refs.indices[channel, r])][0][None]
        with torch.no_grad():
            low = pt.layer_output(model, x, tw.LOWER_LAYER)
        low.requires_grad_(True)
        a = plant(inner(low))[:, channel]  # [1, H, W], independent of torch.fx
        (grad,) = torch.autograd.grad(a, low, grad_outputs=a.detach().clamp(min=0))
        expected = (grad * low).sum((2, 3))[0]
        expected = expected / expected.abs().sum()
        assert torch.allclose(circuits[r], expected, atol=1e-5), r


def test_lrp_circuits_run_on_a_planted_neuron(setup):
    _, data, planted, refs = setup
    lrp = pt.circuit_attributions(planted.model, data, planted.layer, tw.LOWER_LAYER, refs,
                                  neurons=planted.channels[:1], method="lrp", progress=False)  # fmt: skip
    assert lrp.shape == (1, refs.n_ref, 64) and torch.isfinite(lrp).all() and lrp.abs().sum() > 0


def test_planting_checks_its_input():
    model = pt.load_model("toy")
    units = class_activation_units(model.fc)
    with pytest.raises(ValueError, match="out of range"):
        plant_neurons(model, tw.LAYER, units, [(0, 16)])
    with pytest.raises(ValueError, match=">= 2 units"):
        plant_neurons(model, tw.LAYER, units, [(0,)])
    with pytest.raises(ValueError):
        plant_neurons(model, "layer9", units, [(0, 1)])
    with pytest.raises(pt.PuretoolsError, match="Linear"):
        class_activation_units(nn.Conv2d(3, 3, 1))
