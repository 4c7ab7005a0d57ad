"""LRP circuits to and from layers inside residual blocks (ViT MLP layers, ResNet convolutions).

The subnetwork between the two layers runs the block's code traced by torch.fx; under an LRP
composite it must follow the block's canonized forward (its residual add an LRP sum), or the
relevance reaches the residual stream twice. Checked two ways: conservation with zero biases,
and equality with relevance read CRP-style in the whole model under the same composite.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import puretools as pt
from conftest import zero_biases
from puretools.forward import forward_to
from puretools.layouts import layer_layout
from puretools.subnet import subnetwork
from puretools.transformer_lrp import CPLRPComposite, is_transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_vit() -> nn.Module:
    return copy.deepcopy(pt.load_model("toy-vit"))


def _timm_vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=32)


def _convnext() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False)


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return pt.load_model("resnet18", weights=None)


# (model, image size, layer, lower_layer, cut)
CASES = [
    (_toy_vit, 32, "blocks.3.mlp.act", "blocks.2", None),
    (_toy_vit, 32, "blocks.3.mlp.act", "blocks.2.mlp.act", "blocks.1"),
    (_timm_vit, 32, "blocks.2.mlp.act", "blocks.1", None),
    (_timm_vit, 32, "blocks.2.mlp.fc2", "blocks.1.mlp.act", "blocks.0"),
    (_resnet18, 64, "layer4.0.conv2", "layer3", None),
    (_resnet18, 64, "layer4.1.conv1", "layer4.0.conv2", "layer3"),
]
# ConvNeXt's block scales its branch by a layer scale (lrp_scale) before the add; its z+ rule on
# depthwise convolutions drops some relevance, so it is only compared with the whole model
REFERENCE_CASES = CASES + [(_convnext, 64, "stages.3.blocks.1.mlp.act", "stages.3.blocks.0.mlp.act", "stages.2")]


def _ids(cases):
    return [f"{build.__name__[1:]}:{layer}<-{lower}" + (f"(cut {cut})" if cut else "") for build, _, layer, lower, cut in cases]


IDS = _ids(CASES)


@pytest.mark.parametrize("build, size, layer, lower, cut", CASES, ids=IDS)
def test_lrp_from_inside_a_block_conserves_relevance_withzero_biases(build, size, layer, lower, cut):
    """The relevance arriving where the backward pass ends (lower_layer, or the cut) sums to the start."""
    model = zero_biases(build()).double().eval()
    torch.manual_seed(1)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    bottom = cut or lower
    with torch.no_grad():
        h = forward_to(model, bottom, x)
    sub = subnetwork(model, layer, lower, cut=cut)
    lay = layer_layout(model, layer, x[:2])
    # lrp_composite's rules; on transformers with the epsilon rule's stabiliser almost off (zennit's
    # z+ rule of the ResNet has its own fixed one), so that only the rounding is left
    composite = CPLRPComposite(epsilon=1e-12) if is_transformer(model) else pt.lrp_composite(model)
    with composite.context(model):
        h = h.clone().requires_grad_(True)
        y = sub(h)
        y = y[0] if cut else y
        positive = lay.to_channels(y.detach()).clamp(min=0)  # [B, C, positions]
        k = int(positive.sum((0, 2)).argmax())  # the neuron with the most positive activation
        start = torch.zeros_like(y)
        lay.to_channels(start)[:, k] = positive[:, k]  # relu(a_k) at every position
        (relevance,) = torch.autograd.grad(y, h, start)
    assert start.sum() > 0
    assert float((relevance.sum() - start.sum()).abs() / start.sum()) <= 1e-5
    assert sub.cuts_into  # the block whose canonized forward the part followed
    # outside the composite the part runs the model's own forward again
    plain = sub(h.detach())
    assert "lrp_sum" not in sub.code and "canonizer_sum" not in sub.code
    with torch.no_grad():
        torch.testing.assert_close(plain[0] if cut else plain, forward_to(model, layer, x), atol=1e-10, rtol=0)


def _crp_reference(model, x, layer, lower, neurons, ref_idx):
    """Relevance at lower_layer's output in the whole model under lrp_composite, from relu(a_k) at
    layer's output (zennit-crp's way: hooks read both outputs of one full forward pass)."""
    lay_top, lay_low = layer_layout(model, layer, x[:2]), layer_layout(model, lower, x[:2])
    out = []
    with pt.lrp_composite(model).context(model):
        for k in neurons:
            store = {}
            handles = [model.get_submodule(name).register_forward_hook(
                lambda _m, _i, o, name=name: store.__setitem__(name, o)) for name in (layer, lower)]  # fmt: skip
            try:
                model(x[ref_idx[k]].clone().requires_grad_(True))
            finally:
                for handle in handles:
                    handle.remove()
            y, low = store[layer], store[lower]
            start = torch.zeros_like(y)
            lay_top.to_channels(start)[:, k] = lay_top.to_channels(y.detach())[:, k].clamp(min=0)
            (relevance,) = torch.autograd.grad(y, low, start)
            out.append(lay_low.to_channels(relevance).sum(-1) if relevance.ndim > 2 else relevance)
    out = torch.stack(out)
    return out / out.abs().sum(-1, keepdim=True).clamp(min=1e-300)  # a dead pair stays zero


@pytest.mark.parametrize("build, size, layer, lower, cut", REFERENCE_CASES, ids=_ids(REFERENCE_CASES))
def test_lrp_circuits_inside_a_block_equal_relevance_read_in_the_whole_model(build, size, layer, lower, cut):
    model = build().double().eval()  # biases and all
    torch.manual_seed(2)
    x = torch.randn(10, 3, size, size, dtype=torch.float64)
    data = TensorDataset(x)
    refs = pt.collect_references(model, data, layer, n_ref=3, progress=False)
    channels = refs.indices.shape[0]
    neurons = [0, channels // 2, channels - 1]
    circuits = pt.circuit_attributions(model, data, layer, lower, refs, neurons=neurons, method="lrp", cut=cut,
                                       progress=False)  # fmt: skip
    reference = _crp_reference(model, x, layer, lower, neurons, refs.indices)
    assert reference.abs().sum() > 0
    torch.testing.assert_close(circuits.double(), reference, atol=1e-6, rtol=0)


def test_lrp_into_a_step_it_treats_as_one_is_refused_by_name():
    """A layer inside timm's attention, which CP-LRP treats as one step: a clear error, not a wrong answer."""
    model = _timm_vit().eval()
    data = TensorDataset(torch.randn(4, 3, 32, 32))
    refs = torch.zeros(192, 2, dtype=torch.long)
    with pytest.raises(pt.PuretoolsError, match=r"'blocks.2.attn.proj' lies inside 'blocks.2.attn'.*one step"):
        pt.circuit_attributions(model, data, "blocks.2.attn.proj", "blocks.1", refs, neurons=[0], method="lrp",
                                progress=False)  # fmt: skip
    with pytest.raises(pt.PuretoolsError, match="cannot be cut into"):
        pt.circuit_attributions(model, data, "blocks.0", "patch_embed", refs, neurons=[0], method="lrp", progress=False)
