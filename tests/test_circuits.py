"""circuit_attributions against zennit-crp's CondAttribution, the independent reference."""

import warnings

import pytest
import torch
from crp.attribution import CondAttribution
from torch.utils.data import TensorDataset
from zennit.composites import Composite

import puretools as pt
from puretools.circuits import normalize_circuits


def crp_circuits(model, dataset, layer, lower, refs, neurons, method):
    """One neuron at a time, exactly as the PURE reference code does it."""
    attribution = CondAttribution(model)
    composite = Composite() if method == "gradient" else pt.lrp_composite(model)
    out = []
    for n in neurons:
        x = torch.stack([dataset[int(i)][0] for i in refs.indices[n]]).requires_grad_(True)
        attr = attribution(
            x, [{layer: [n]}], composite, record_layer=[lower],
            start_layer=layer, init_rel=lambda a: a.clamp(min=0),
        )
        rel = attr.relevances[lower]
        if method == "gradient":
            rel = rel * attr.activations[lower]
        out.append(normalize_circuits(rel.flatten(2).sum(-1)))
    model.requires_grad_(True)  # CondAttribution switched parameter gradients off
    return torch.stack(out)


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_resnet18_matches_crp_float32(resnet18, small_images, method):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=6, batch_size=16, progress=False)
    neurons = [0, 7, 300, 511]
    ours = pt.circuit_attributions(
        resnet18, small_images, "layer4", "layer3", refs, neurons=neurons, method=method,
        batch_size=5, image_chunk=7, progress=False,
    )
    ref = crp_circuits(resnet18, small_images, "layer4", "layer3", refs, neurons, method)
    assert ours.shape == (4, 6, 256)
    assert ours.abs().sum() > 0
    assert (ours - ref).abs().max() <= 1e-4
    # L1-normalised over lower channels
    torch.testing.assert_close(ours.abs().sum(-1), torch.ones(4, 6), atol=1e-5, rtol=0)


def test_resnet18_matches_crp_float64(resnet18, small_images):
    model = pt.load_model("resnet18", weights=None)
    model.load_state_dict(resnet18.state_dict())
    model = model.double()
    data = TensorDataset(small_images.tensors[0][:12].double())
    refs = pt.collect_references(model, data, "layer4", n_ref=4, batch_size=5, progress=False)
    ours = pt.circuit_attributions(model, data, "layer4", "layer3", refs, neurons=[1, 2, 3], progress=False)
    ref = crp_circuits(model, data, "layer4", "layer3", refs, [1, 2, 3], "gradient")
    assert (ours.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_vgg_style_matches_crp(vgg, small_images, method):
    layer, lower = "features.9", "features.6"
    refs = pt.collect_references(vgg, small_images, layer, n_ref=8, progress=False)
    ours = pt.circuit_attributions(vgg, small_images, layer, lower, refs, method=method, batch_size=13, progress=False)
    ref = crp_circuits(vgg, small_images, layer, lower, refs, range(12), method)
    assert ours.shape == (12, 8, 16)
    assert (ours - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_images_shared_by_many_neurons_match_crp(resnet18, small_images, method):
    """One forward per image, one backward round per pair of it: rounds of unequal size."""
    from types import SimpleNamespace

    neurons = [0, 1, 2, 3, 4, 5]
    idx = torch.zeros(512, 4, dtype=torch.long)
    for n in neurons:  # image 3 is a reference of all six, 30-32 of two each, the rest of one
        idx[n] = torch.tensor([3, 10 + n, 20 + n, 30 + n % 3])
    idx[2, 1] = 3 + 1  # and image 4 of neuron 2 alone, placed among the shared ones
    ours = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", idx, neurons=neurons,
                                   method=method, batch_size=2, image_chunk=5, progress=False)  # fmt: skip
    ref = crp_circuits(resnet18, small_images, "layer4", "layer3", SimpleNamespace(indices=idx),
                       neurons, method)  # fmt: skip
    assert ours.shape == (6, 4, 256) and ours.abs().sum() > 0
    assert (ours - ref).abs().max() <= 1e-4


def test_batching_does_not_change_results(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=5, progress=False)
    a = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=range(20), batch_size=1000, progress=False)
    b = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=range(20), batch_size=3, image_chunk=2, progress=False)
    assert (a - b).abs().max() <= 1e-5


def test_neurons_order_and_subset(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=3, progress=False)
    full = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=range(10), progress=False)
    sub = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=[9, 2], progress=False)
    torch.testing.assert_close(sub, full[[9, 2]], atol=1e-6, rtol=0)


def test_skip_path_is_refused():
    """layer depends on the input through a path that skips lower_layer."""

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 3, 1)
            self.b = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.b(self.a(x) + x)

    with pytest.raises(pt.PuretoolsError, match="skips 'a'"):
        pt.subnetwork(Skip(), "b", "a")


def test_subnetwork_takes_layer_then_lower_layer_and_the_old_order_warns(resnet18):
    """House order (model, layer, lower_layer); the old (model, lower_layer, layer) works for one release."""
    x = torch.randn(2, 256, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = pt.subnetwork(resnet18, "layer4", "layer3")
    with pytest.warns(DeprecationWarning, match=r"old order.*subnetwork\(model, 'layer4', 'layer3'\)"):
        old = pt.subnetwork(resnet18, "layer3", "layer4")
    with torch.no_grad():
        assert new(x).shape == (2, 512, 2, 2) and torch.equal(new(x), old(x))


def test_neuron_out_of_range(resnet18, small_images):
    refs = torch.zeros(512, 2, dtype=torch.long)
    with pytest.raises(pt.PuretoolsError, match="0..511"):
        pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=[512], progress=False)


def test_unknown_method(resnet18, small_images):
    with pytest.raises(pt.PuretoolsError, match="'gradient' or 'lrp'"):
        pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", torch.zeros(512, 2, dtype=torch.long), method="ig")


def test_dead_neuron_is_reported_not_fatal(vgg, small_images):
    model = type(vgg)().eval()
    model.load_state_dict(vgg.state_dict())
    with torch.no_grad():
        model.features[7].weight[3].zero_()
        model.features[8].bias[3] = -1.0  # channel 3 of features.9 is always zero
    refs = pt.collect_references(model, small_images, "features.9", n_ref=4, progress=False)
    with pytest.warns(RuntimeWarning, match=r"\[3\]"):
        c = pt.circuit_attributions(model, small_images, "features.9", "features.6", refs, neurons=[2, 3], progress=False)
    assert c[1].abs().sum() == 0 and c[0].abs().sum() > 0


def test_cache_reuses_and_fingerprints(resnet18, small_images, tmp_path):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=3, progress=False)
    kw = dict(neurons=[0, 1], progress=False, cache_dir=tmp_path)
    a = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, **kw)
    files = list(tmp_path.glob("circuits-*.safetensors"))
    assert len(files) == 1
    b = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, method="lrp", **kw)
    assert len(list(tmp_path.glob("circuits-*.safetensors"))) == 2


def test_max_memory_sets_the_batch_sizes_and_keeps_the_results(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=4, progress=False)
    example = small_images[0][0]
    small = pt.memory_plan(resnet18, example, "layer4", "layer3", max_memory=0.01)
    large = pt.memory_plan(resnet18, example, "layer4", "layer3", max_memory=1.0)
    # the plan is linear in the budget (up to rounding) and counts what autograd saves per row
    assert 1 <= small["batch_size"] < large["batch_size"]
    assert abs(large["batch_size"] / small["batch_size"] - 100) < 100 / small["batch_size"] + 1
    rows = small["batch_size"] * small["bytes_per_row"] + small["image_chunk"] * small["bytes_per_image"]
    assert rows <= 0.01 * 2**30

    def saved_bytes(n):  # what autograd keeps for the backward of n rows (layer3 output at 48 px)
        sizes = []
        x = torch.randn(n, 256, 3, 3, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):  # fmt: skip
            pt.subnetwork(resnet18, "layer4", "layer3")(x)
        return sum(sizes)

    per_row = (saved_bytes(6) - saved_bytes(2)) / 4  # the weights cancel
    assert per_row > 0
    assert per_row <= small["bytes_per_row"] <= 3 * per_row + 6 * 256 * 9 * 4
    ours = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=range(8),
                                   max_memory=0.01, progress=False)  # fmt: skip
    plain = pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=range(8), progress=False)
    assert (ours - plain).abs().max() <= 1e-6


def test_max_memory_too_small_says_how_much_is_needed(resnet18, small_images):
    refs = pt.collect_references(resnet18, small_images, "layer4", n_ref=2, progress=False)
    with pytest.raises(pt.PuretoolsError, match="too small.*Raise max_memory to at least"):
        pt.circuit_attributions(resnet18, small_images, "layer4", "layer3", refs, neurons=[0],
                                max_memory=1e-7, progress=False)  # fmt: skip
    with pytest.raises(pt.PuretoolsError, match="must be positive"):
        pt.memory_plan(resnet18, small_images[0][0], "layer4", "layer3", max_memory=0)
