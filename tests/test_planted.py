"""Tests of puretools.planted: planted neurons keep the model, have true sources, and work with circuits."""

import copy

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


# ---------------------------------------------------------------- token layouts: the toy ViT

VIT_PAIRS = [(1, 5), (2, 6), (0, 3)]  # MLP neurons of VIT_LAYER: triangle + disc, stripes_v + square, ring + plus


def vit_features(model, x, layer=tw.VIT_LAYER):
    with torch.no_grad():
        return pt.layer_output(model, x, layer)  # [B, 17, 8]


@pytest.fixture(scope="module")
def vit_setup():
    model = pt.load_model("toy-vit")
    data = tw.ToyWorld("test", n=400)
    planted = plant_neurons(model, tw.VIT_LAYER, nn.Identity(), VIT_PAIRS)
    refs = pt.collect_references(planted.model, data, planted.layer, n_ref=30, progress=False)
    return model, data, planted, refs


def test_vit_planted_channel_is_the_sum_of_rectified_features_at_every_token(vit_setup):
    model, data, planted, _ = vit_setup
    x = data.images[:16]
    h = vit_features(model, x)
    out = vit_features(planted.model, x, planted.layer)
    assert planted.layout.kind == "tokens" and planted.layout.prefix_tokens == 1 and planted.channels == [8, 9, 10]
    assert out.shape == (16, 17, 8 + len(VIT_PAIRS))
    assert torch.equal(out[..., :8], h)  # the layer's own features, every token
    for p, (a, b) in enumerate(VIT_PAIRS):
        assert torch.allclose(out[..., 8 + p], torch.relu(h[..., a]) + torch.relu(h[..., b]), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(planted.model(x), model(x), atol=1e-6)  # the ViT's outputs are unchanged
    assert torch.equal(vit_features(planted.model, x, planted.inner), h)


def test_vit_planted_references_and_sources_by_brute_force(vit_setup):
    model, data, planted, refs = vit_setup
    h = torch.cat([vit_features(model, data.images[s : s + 200]) for s in range(0, len(data), 200)])  # [N, 17, 8]
    idx = refs.indices[planted.channels]
    sources = planted_sources(planted, data, refs)  # References: the planted rows are taken
    assert torch.equal(sources, planted_sources(planted, data, idx))
    for p, (a, b) in enumerate(VIT_PAIRS):
        ua, ub = torch.relu(h[..., a]), torch.relu(h[..., b])  # [N, 17]
        token_max = (ua + ub).amax(1)  # the planted neuron's value: max over all 17 tokens
        assert torch.allclose(refs.values[planted.channels[p]], token_max[idx[p]], atol=1e-5)
        assert token_max[idx[p]].min() >= token_max.sort(descending=True).values[idx.shape[1] - 1] - 1e-5
        where = (ua + ub)[idx[p]].argmax(1)  # the token where the planted neuron peaks
        at_a, at_b = ua[idx[p], where], ub[idx[p], where]
        expected = torch.where(at_a > at_b, a, b)
        expected = torch.where(torch.maximum(at_a, at_b) > 0, expected, -1)
        assert torch.equal(sources[p], expected), p
    assert all(set(sources[p].tolist()) <= {a, b, -1} for p, (a, b) in enumerate(VIT_PAIRS))


def test_vit_planted_circuits_equal_full_model_autograd_float64(vit_setup):
    """Gradient circuits of a planted token feature from the residual stream, against autograd through the
    original (unplanted) ViT: backward from relu(h_a) + relu(h_b) at every token, started at its own value."""
    model, data, _, _ = vit_setup
    model = copy.deepcopy(model).double()
    x = data.images[:24].double()
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(x)))
    planted = plant_neurons(model, tw.VIT_LAYER, nn.Identity(), VIT_PAIRS[:2])
    refs = pt.collect_references(planted.model, dataset, planted.layer, n_ref=4, progress=False)
    ours = pt.circuit_attributions(planted.model, dataset, planted.layer, tw.VIT_LOWER_LAYER, refs,
                                   neurons=planted.channels, batch_size=3, progress=False)  # fmt: skip
    lower, top = pt.get_module(model, tw.VIT_LOWER_LAYER), pt.get_module(model, tw.VIT_LAYER)
    for p, (a, b) in enumerate(VIT_PAIRS[:2]):
        for r, i in enumerate(refs.indices[planted.channels[p]]):
            store = {}
            hooks = [lower.register_forward_hook(lambda m, i, o: store.setdefault("low", o.detach().requires_grad_())),
                     top.register_forward_hook(lambda m, i, o: store.__setitem__("top", o))]  # fmt: skip
            try:
                model(x[int(i)][None])
            finally:
                for hook in hooks:
                    hook.remove()
            unit = torch.relu(store["top"][..., a]) + torch.relu(store["top"][..., b])  # [1, 17]
            (grad,) = torch.autograd.grad(unit, store["low"], unit.detach())
            expected = (grad * store["low"]).detach().sum((0, 1))  # summed over tokens: [48]
            expected = expected / expected.abs().sum()
            assert torch.allclose(ours[p, r].double(), expected, atol=1e-6), (p, r)


def test_vit_lrp_circuits_run_on_a_planted_feature(vit_setup):
    _, data, planted, refs = vit_setup
    lrp = pt.circuit_attributions(planted.model, data, planted.layer, tw.VIT_LOWER_LAYER, refs,
                                  neurons=planted.channels[:1], method="lrp", progress=False)  # fmt: skip
    assert lrp.shape == (1, refs.n_ref, 48) and torch.isfinite(lrp).all() and lrp.abs().sum() > 0


def test_planting_on_tokens_checks_the_layout(vit_setup):
    model = vit_setup[0]
    with pytest.raises(pt.PuretoolsError, match=r"expected \[B, C, H, W\]"):  # the given layout does not fit
        plant_neurons(model, tw.VIT_LAYER, nn.Identity(), [(0, 1)], layout="channels_first")
    with pytest.raises(pt.PuretoolsError, match="not a layout"):
        plant_neurons(model, tw.VIT_LAYER, nn.Identity(), [(0, 1)], layout="rows")
    with pytest.raises(ValueError, match="out of range"):
        plant_neurons(model, tw.VIT_LAYER, nn.Identity(), [(0, 8)])  # 8 features: 0..7
    with pytest.raises(pt.PuretoolsError, match="units must map"):
        plant_neurons(model, tw.VIT_LAYER, nn.Flatten(1), [(0, 1)])
    with pytest.raises(pt.PuretoolsError, match="units must be a torch nn.Module"):
        plant_neurons(model, tw.VIT_LAYER, torch.relu, [(0, 1)])
