"""References and gradient circuits on vision transformers (timm, open_clip, torchvision), ConvNeXt's
channels-last layers and a sequence-first model, against brute force over forward hooks and full-model autograd."""

import pytest
import timm
import torch
from test_layouts import (
    Ambiguous,
    SequenceFirst,
    tiny_open_clip_vit,
    tiny_timm_vit,
    tiny_torchvision_vit,
)
from torch.utils.data import TensorDataset

import puretools as pt
from puretools.circuits import normalize_circuits
from puretools.errors import PuretoolsError


def images(n, size=32, dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g).to(dtype))


def capture(model, names, x, grad=False):
    """Outputs of the modules ``names`` in one full forward pass of ``x``."""
    store = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o)) for n in names]
    try:
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return store


def brute_references(model, data, layer, n_ref, reduce):
    """Per image, the layer's output by a forward hook, reduced over tokens (last axis = features)."""
    values = []
    for (x,) in data:
        out = capture(model, [layer], x[None])[layer][0]  # [T, C] (or [H, W, C] / [C, H, W])
        values.append(reduce(out))
    values = torch.stack(values, 1).float()  # [C, N]
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :n_ref]
    return order, values.gather(1, order)


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()


@pytest.mark.parametrize("make, layer", [
    (timm_vit, "blocks.5.mlp.act"),
    (timm_vit, "blocks.5"),
    (tiny_open_clip_vit, "transformer.resblocks.1.mlp.gelu"),
    (tiny_torchvision_vit, "encoder.layers.encoder_layer_1.mlp.1"),
])  # fmt: skip
def test_vit_references_equal_a_brute_force_token_max(make, layer):
    model, data = make(), images(12)
    refs = pt.collect_references(model, data, layer, n_ref=4, batch_size=5, progress=False)
    idx, val = brute_references(model, data, layer, 4, lambda out: out.amax(0))
    features = capture(model, [layer], data.tensors[0][:1])[layer].shape[-1]
    assert refs.indices.shape == (features, 4)  # neurons are the features, not the tokens
    assert torch.equal(refs.indices, idx)
    torch.testing.assert_close(refs.values, val, rtol=1e-5, atol=1e-6)


def test_token_reduce_mean_and_cls():
    model, data = timm_vit(), images(10)
    layer = "blocks.3.mlp.act"
    for reduce, brute in (("mean", lambda out: out.mean(0)), ("cls", lambda out: out[0])):
        refs = pt.collect_references(model, data, layer, n_ref=3, batch_size=4, progress=False, token_reduce=reduce)
        idx, val = brute_references(model, data, layer, 3, brute)
        assert refs.token_reduce == reduce and torch.equal(refs.indices, idx)
        torch.testing.assert_close(refs.values, val, rtol=1e-5, atol=1e-6)
    with pytest.raises(PuretoolsError, match="token_reduce='first'"):
        pt.collect_references(model, data, layer, n_ref=3, progress=False, token_reduce="first")


def test_convnext_channels_last_references_equal_brute_force():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval()
    data = images(8)
    layer = "stages.1.blocks.0.mlp.act"  # [B, H, W, 4C]
    refs = pt.collect_references(model, data, layer, n_ref=3, batch_size=3, progress=False)
    idx, val = brute_references(model, data, layer, 3, lambda out: out.flatten(0, 1).amax(0))
    assert refs.indices.shape[0] == 320 and torch.equal(refs.indices, idx)
    torch.testing.assert_close(refs.values, val, rtol=1e-5, atol=1e-6)


def test_ambiguous_layout_refuses_and_layout_argument_fixes_it():
    model, data = Ambiguous().eval(), images(6, size=4)
    with pytest.raises(PuretoolsError, match="layout="):
        pt.collect_references(model, data, "act2", n_ref=2, progress=False)
    refs = pt.collect_references(model, data, "act2", n_ref=2, progress=False, layout="channels_last")
    idx, _ = brute_references(model, data, "act2", 2, lambda out: out.flatten(0, 1).amax(0))
    assert torch.equal(refs.indices, idx)


def autograd_circuits(model, data, layer, lower, refs, neurons, read=None):
    """Full-model autograd, one neuron and image at a time: the backward starts at ``layer`` with
    relu(a_k) on every token (position) of feature k; gradient x activation at ``lower``, summed over
    tokens, L1-normalised. ``read(t)`` moves the feature axis last ([..., C]) for both layers."""
    read = read or (lambda t: t)
    out = []
    for k in neurons:
        rows = []
        for i in refs.indices[k]:
            x = data.tensors[0][int(i)][None]
            store = capture(model, [layer, lower], x, grad=True)
            top, low = store[layer], store[lower]
            mask = torch.zeros_like(read(top))
            mask[..., k] = read(top).detach().clamp(min=0)[..., k]
            (grad,) = torch.autograd.grad(read(top), low, mask)
            rel = read(grad * low.detach())
            rows.append(rel.reshape(-1, rel.shape[-1]).sum(0))
        out.append(normalize_circuits(torch.stack(rows)))
    return torch.stack(out)


@pytest.mark.parametrize("make, layer, lower, cut", [
    (tiny_timm_vit, "blocks.2.mlp.act", "blocks.1", None),
    (tiny_timm_vit, "blocks.2", "blocks.1", None),
    (tiny_timm_vit, "blocks.2.mlp.act", "blocks.1.mlp.act", "blocks.0"),
    (tiny_open_clip_vit, "transformer.resblocks.1.mlp.gelu", "transformer.resblocks.0", None),
    (tiny_torchvision_vit, "encoder.layers.encoder_layer_1.mlp.1", "encoder.layers.encoder_layer_0", None),
])  # fmt: skip
def test_vit_gradient_circuits_equal_full_model_autograd_float64(make, layer, lower, cut):
    model = make().double()
    data = images(8, dtype=torch.float64)
    refs = pt.collect_references(model, data, layer, n_ref=3, batch_size=4, progress=False)
    neurons = [0, 5, 17]
    ours = pt.circuit_attributions(model, data, layer, lower, refs, neurons=neurons, batch_size=2, image_chunk=3,
                                   progress=False, cut=cut)  # fmt: skip
    ref = autograd_circuits(model, data, layer, lower, refs, neurons)
    assert ours.shape == ref.shape and ref.abs().sum() > 0
    assert (ours.double() - ref).abs().max() <= 1e-6


@pytest.mark.parametrize("layer, lower", [
    ("stages.1.blocks.1.mlp.act", "stages.1.blocks.0"),  # channels last <- channels first
    ("stages.1.blocks.1.mlp.fc2", "stages.1.blocks.1.mlp.act"),  # channels last <- channels last
])  # fmt: skip
def test_convnext_channels_last_circuits_equal_autograd(layer, lower):
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval().double()
    data = images(6, dtype=torch.float64)
    refs = pt.collect_references(model, data, layer, n_ref=2, batch_size=3, progress=False)
    ours = pt.circuit_attributions(model, data, layer, lower, refs, neurons=[1, 4], progress=False)
    channels_first = lower == "stages.1.blocks.0"
    lower_c = ours.shape[-1]
    assert lower_c == (80 if channels_first else 320)

    def read(t):  # both layers to [..., C]: the channels-first one is [B, C, H, W]
        return t.permute(0, 2, 3, 1) if t.shape[1] == 80 and t.shape[-1] != 80 else t

    ref = autograd_circuits(model, data, layer, lower, refs, [1, 4], read)
    assert ref.abs().sum() > 0 and (ours.double() - ref).abs().max() <= 1e-6


def test_sequence_first_circuits_equal_autograd():
    torch.manual_seed(0)
    model = SequenceFirst().eval().double()
    data = images(6, size=16, dtype=torch.float64)
    refs = pt.collect_references(model, data, "fc2", n_ref=2, progress=False)
    ours = pt.circuit_attributions(model, data, "fc2", "act", refs, neurons=[0, 3], batch_size=2, progress=False)
    ref = autograd_circuits(model, data, "fc2", "act", refs, [0, 3], lambda t: t.transpose(0, 1))
    assert ours.shape == (2, 2, 16) and (ours.double() - ref).abs().max() <= 1e-6


def test_vit_real_skip_still_raises():
    model, data = tiny_timm_vit(), images(4)
    refs = pt.collect_references(model, data, "blocks.2.mlp.act", n_ref=2, progress=False)
    with pytest.raises(PuretoolsError, match="skips 'blocks.1.mlp.act'.*cut='blocks.0'"):
        pt.circuit_attributions(model, data, "blocks.2.mlp.act", "blocks.1.mlp.act", refs, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["open_clip", "torchvision"])
def test_full_size_vits_references_equal_brute_force(family):
    torch.manual_seed(0)
    if family == "open_clip":
        import open_clip

        model, layer = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval(), "transformer.resblocks.5.mlp.gelu"
        data = images(3, size=224)
    else:
        import torchvision

        model, layer = torchvision.models.vit_b_16(weights=None).eval(), "encoder.layers.encoder_layer_5.mlp.1"
        data = images(3, size=224)
    refs = pt.collect_references(model, data, layer, n_ref=2, batch_size=3, progress=False)
    idx, val = brute_references(model, data, layer, 2, lambda out: out.amax(0))
    assert refs.indices.shape == (3072, 2) and torch.equal(refs.indices, idx)
    torch.testing.assert_close(refs.values, val, rtol=1e-5, atol=1e-5)


def test_vit_routing_heatmaps_and_editing_use_tokens():
    model, data = tiny_timm_vit(), images(5)
    x = data.tensors[0]
    layer, lower = "blocks.2.mlp.act", "blocks.1"
    vn = pt.VirtualNeurons().fit(torch.rand(2, 6, 192), k=2, neurons=[3, 7])  # 192 lower features
    acts = pt.virtual_activations(model, x, layer, lower, vn)
    plain = capture(model, [layer], x)[layer].amax(1)[:, [3, 7]]  # token max by a hook
    assert acts.shape == (5, 2, 2) and torch.allclose(acts.sum(-1), plain, atol=1e-6)
    heat, full = pt.virtual_heatmaps(model, x[:2], layer, lower, vn, 3, return_full=True, weights="partition")
    assert heat.shape == (2, 2, 32, 32) and full.abs().sum() > 0
    torch.testing.assert_close(heat.sum(0), full, rtol=1e-4, atol=1e-6)
    routes = pt.route_images(model, x, layer, lower, vn).routes[0]
    with pt.edit_virtual_neurons(model, layer, lower, vn, suppress={3: [0]}) as edited:
        out = capture(edited, [layer], x)[layer]
    hit = routes == 0
    assert bool((out[hit][..., 3] == 0).all())  # every token of feature 3
    assert torch.equal(out[~hit], capture(model, [layer], x)[layer][~hit])
