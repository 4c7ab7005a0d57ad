"""Using virtual neurons: routing, virtual activations, virtual heatmaps and edits, on the toy model.

References: brute-force autograd on the full model (circuits, heatmaps), zennit-crp's
CondAttribution (LRP heatmaps), the plain forward pass (activations, edits).
"""

import pytest
import torch
from crp.attribution import CondAttribution

import puretools as pt
from puretools import toyworld
from puretools.editing import edit_virtual_neurons
from puretools.routing import (
    route_images,
    virtual_activations,
    virtual_conditions,
    virtual_heatmaps,
)

LAYER, LOWER = toyworld.LAYER, toyworld.LOWER_LAYER
NEURONS = [1, 4, 7]


@pytest.fixture(scope="module")
def toy():
    model = pt.load_model("toy")
    data = toyworld.ToyWorld("test", n=600)
    refs = pt.collect_references(model, data, LAYER, n_ref=40, progress=False)
    circuits = pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=NEURONS, progress=False)
    vn = pt.VirtualNeurons().fit(circuits, k=[2, 3, 2], neurons=NEURONS, layer=LAYER, lower_layer=LOWER)
    images = toyworld.ToyWorld("test", n=660).images[600:]  # 60 images the fit never saw
    return model, vn, images


def brute_force_circuit(model, image, neuron):
    """One image, one neuron: autograd through the whole model, gradient x activation at LOWER."""
    store = {}
    handle = pt.get_module(model, LOWER).register_forward_hook(lambda m, i, o: store.__setitem__("low", o))
    try:
        with torch.enable_grad():
            x = image[None].clone().requires_grad_(True)
            feats = {}
            h2 = pt.get_module(model, LAYER).register_forward_hook(lambda m, i, o: feats.__setitem__("y", o))
            model(x)
            h2.remove()
            y, low = feats["y"], store["low"]
            (grad,) = torch.autograd.grad(y[0, neuron], low, y[0, neuron].detach().clamp(min=0))
    finally:
        handle.remove()
    rel = (grad * low.detach())[0].sum((1, 2))
    return rel / rel.abs().sum() if rel.abs().sum() > 0 else rel


def test_virtual_activations_sum_to_the_plain_spatial_max(toy):
    model, vn, images = toy
    acts = virtual_activations(model, images, LAYER, LOWER, vn)
    assert acts.shape == (60, 3, 3)
    store = {}
    h = pt.get_module(model, LAYER).register_forward_hook(lambda m, i, o: store.__setitem__("y", o))
    with torch.inference_mode():
        model(images)
    h.remove()
    expected = store["y"].amax((2, 3))[:, NEURONS]
    torch.testing.assert_close(acts.sum(-1), expected)
    assert ((acts > 0).sum(-1) <= 1).all()  # hard routing: one virtual neuron per (input, neuron)
    assert (acts[:, [0, 2], 2] == 0).all()  # neurons 1 and 7 have only k=2
    soft = virtual_activations(model, images, LAYER, LOWER, vn, soft=True)
    torch.testing.assert_close(soft.sum(-1), expected)
    assert (soft[:, [0, 2], 2] == 0).all() and (soft > 0).sum() > (acts > 0).sum()
    cold = virtual_activations(model, images, LAYER, LOWER, vn, soft=True, temperature=1e-5)
    active = acts.sum(-1) > 0
    assert torch.equal(cold.argmax(-1)[active], acts.argmax(-1)[active])  # temperature -> 0: hard routing
    assert (cold - acts).abs().sum() <= 1e-3 * acts.sum()


def test_routing_equals_assign_on_circuits_computed_separately(toy):
    model, vn, images = toy
    r = route_images(model, images, LAYER, LOWER, vn)
    brute = torch.stack([torch.stack([brute_force_circuit(model, im, n) for im in images[:20]]) for n in NEURONS])
    torch.testing.assert_close(r.circuits[:, :20], brute, atol=1e-5, rtol=1e-4)
    assert torch.equal(r.routes[:, :20], vn.assign(brute))
    assert torch.equal(r.routes, vn.assign(r.circuits))
    acts = virtual_activations(model, images, LAYER, LOWER, vn)
    active = r.activations > 0  # [M, N]
    assert torch.equal(acts.argmax(-1)[active], r.routes.T[active])


def test_edit_zeroes_routed_inputs_and_leaves_the_rest_bit_identical(toy):
    model, vn, images = toy
    routes = route_images(model, images, LAYER, LOWER, vn).routes
    with torch.inference_mode():
        before = model(images)
    store = {}
    layer = pt.get_module(model, LAYER)
    for suppress in ({4: [1]}, {1: [0], 7: [1]}, {4: [0, 2]}):
        hit = torch.zeros(len(images), dtype=torch.bool)
        for n, ids in suppress.items():
            hit |= torch.isin(routes[NEURONS.index(n)], torch.tensor(ids))
        assert 0 < int(hit.sum()) < len(images)  # the test has both kinds of inputs
        with edit_virtual_neurons(model, LAYER, LOWER, vn, suppress=suppress) as edited:
            h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("y", o))
            with torch.inference_mode():
                after = edited(images)
            h.remove()
        y = store["y"]
        for n, ids in suppress.items():
            own = torch.isin(routes[NEURONS.index(n)], torch.tensor(ids))
            assert (y[own, n] == 0).all()  # exactly zero for the routed inputs
        assert torch.equal(after[~hit], before[~hit])  # bit-identical elsewhere
        assert not torch.equal(after[hit], before[hit])
    with torch.inference_mode():
        assert torch.equal(model(images), before)  # the hooks are gone


def test_edit_under_grad_and_with_whole_neuron(toy):
    model, vn, images = toy
    edit = edit_virtual_neurons(model, LAYER, LOWER, vn, suppress={7: [0, 1]})  # every virtual neuron
    store = {}
    h = pt.get_module(model, LAYER).register_forward_hook(lambda m, i, o: store.__setitem__("y", o))
    try:
        model(images[:10])
    finally:
        h.remove()
        edit.remove()
    assert (store["y"][:, 7] == 0).all() and (store["y"][:, 1] != 0).any()
    assert edit.last_suppressed[7].all()


def test_bad_edits_and_unfitted_neurons(toy):
    model, vn, images = toy
    with pytest.raises(pt.PuretoolsError, match="2 virtual neurons of neuron 1"):
        edit_virtual_neurons(model, LAYER, LOWER, vn, suppress={1: [2]})
    with pytest.raises(pt.PuretoolsError, match="was not fitted"):
        edit_virtual_neurons(model, LAYER, LOWER, vn, suppress={0: [0]})
    with pytest.raises(pt.PuretoolsError, match="not fitted yet"):
        virtual_activations(model, images, LAYER, LOWER, pt.VirtualNeurons())
    with pytest.raises(pt.PuretoolsError, match="was not fitted"):
        virtual_heatmaps(model, images, LAYER, LOWER, vn, neuron=3)


def test_conditions_partition_the_lower_channels(toy):
    _, vn, _ = toy
    for n, k in zip(NEURONS, vn.ks):
        cond = virtual_conditions(vn, n)
        assert cond.shape == (k, 64) and torch.equal(cond.sum(0), torch.ones(64, dtype=torch.long))
        best = vn.centroids[vn.position(n)].argmax(0)
        assert all(cond[int(best[c]), c] for c in range(64))


def test_gradient_heatmaps_sum_to_the_brute_force_full_heatmap(toy):
    model, vn, images = toy
    x = images[:6]
    heat, full = virtual_heatmaps(model, x, LAYER, LOWER, vn, neuron=4, weights="partition", return_full=True)
    assert heat.shape == (3, 6, 32, 32)
    with torch.enable_grad():  # brute force: the whole model, no capture of the lower layer
        xg = x.clone().requires_grad_(True)
        store = {}
        h = pt.get_module(model, LAYER).register_forward_hook(lambda m, i, o: store.__setitem__("y", o))
        model(xg)
        h.remove()
        y = store["y"]
        init = torch.zeros_like(y)
        init[:, 4] = y[:, 4].detach().clamp(min=0)
        (grad,) = torch.autograd.grad(y, xg, init)
    brute = (grad * x).sum(1)
    scale = brute.abs().amax()
    assert scale > 0
    assert (full - brute).abs().max() <= 1e-5 * scale
    assert (heat.sum(0) - brute).abs().max() <= 1e-4 * scale
    assert all((heat[j] - brute).abs().max() > 1e-3 * scale for j in range(3))  # each is a real part


def test_lrp_heatmaps_match_zennit_crp_conditions(toy):
    model, vn, images = toy
    x, neuron = images[:3], 7
    heat, full = virtual_heatmaps(model, x, LAYER, LOWER, vn, neuron, method="lrp", weights="partition",
                                  return_full=True)
    cond = virtual_conditions(vn, neuron)
    attribution = CondAttribution(model)
    composite = pt.lrp_composite(model)
    try:
        for j in range(len(cond)):
            channels = cond[j].nonzero().flatten().tolist()
            ref = attribution(x.clone().requires_grad_(True), [{LAYER: [neuron], LOWER: channels}], composite,
                              start_layer=LAYER, init_rel=lambda a: a.clamp(min=0)).heatmap
            scale = ref.abs().amax()
            assert scale > 0 and (heat[j] - ref).abs().max() <= 1e-4 * scale
    finally:
        model.requires_grad_(True)  # CondAttribution switches parameter gradients off
    scale = full.abs().amax()
    assert (heat.sum(0) - full).abs().max() <= 1e-4 * scale


def test_lrp_edit_routes_like_the_lrp_circuit_engine(toy):
    model, _, images = toy
    data = toyworld.ToyWorld("test", n=600)
    refs = pt.collect_references(model, data, LAYER, n_ref=30, progress=False)
    circuits = pt.circuit_attributions(model, data, LAYER, LOWER, refs, neurons=[4], method="lrp", progress=False)
    vn = pt.VirtualNeurons().fit(circuits, k=2, neurons=[4])
    routes = route_images(model, images, LAYER, LOWER, vn, method="lrp").routes[0]
    with torch.inference_mode():
        before = model(images)
    edit = edit_virtual_neurons(model, LAYER, LOWER, vn, suppress={4: [1]}, method="lrp")
    with edit as edited, torch.inference_mode():
        after = edited(images)
    hit = routes == 1
    assert torch.equal(edit.last_routes[4], routes) and torch.equal(edit.last_suppressed[4], hit)
    assert 0 < int(hit.sum()) < len(images)
    assert torch.equal(after[~hit], before[~hit]) and not torch.equal(after[hit], before[hit])
    with torch.inference_mode():
        assert torch.equal(model(images), before)  # hooks and canonizers are gone
