"""Planted polysemantic neurons: two units of known meaning summed into one extra channel of a layer.

A planted neuron is a ground truth you can build in any model: pick units whose meaning you
know (for the toy model, the class-activation maps of two concepts: ``fc`` applied at every
position of ``layer4``; for the toy ViT, the layer's own monosemantic MLP neurons, ``units =
nn.Identity()``), rectify them and add them up in one new channel. Each of its reference
samples then has a true source: the unit that is larger at the neuron's max location (a
spatial position of a CNN layer, a token of a transformer layer). Planting
two of the model's own polysemantic channels would not be a fair test (each already mixes
concepts, so k = 2 virtual neurons would be the wrong answer); units of one meaning each are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset
from zennit.layer import Sum

from .checks import check_ids, check_int, check_module, resolve_device
from .errors import PuretoolsError
from .forward import collate_images, layer_output, prepare_model
from .layouts import Layout, layer_layout
from .models import get_module
from .reference_type import References, check_references

__all__ = ["PlantedLayer", "PlantedNeurons", "class_activation_units", "plant_neurons", "planted_sources"]


class PlantedLayer(nn.Module):
    """Appends planted channels to its input: ``[h, sum over each group of relu(units(h))]``.

    Parameters
    ----------
    units : nn.Module
        Maps the layer's output [B, C, H, W] to unit maps [B, n_units, H, W] (in the layer's
        layout: [B, T, C] to [B, T, n_units] for tokens).
    groups : LongTensor [P, G]
        The units summed into each planted channel.
    layout : str or Layout
        The layer's layout (:class:`puretools.layouts.Layout`): the planted channels are
        appended on its channel axis (axis 1 for channels first, the last axis otherwise).

    Examples
    --------
    >>> units = nn.Conv2d(4, 3, 1)
    >>> plant = PlantedLayer(units, torch.tensor([[0, 1], [1, 2]]))
    >>> plant(torch.randn(2, 4, 5, 5)).shape  # 4 channels + 2 planted ones
    torch.Size([2, 6, 5, 5])
    >>> tokens = PlantedLayer(nn.Identity(), torch.tensor([[0, 1]]), layout="tokens")
    >>> tokens(torch.randn(2, 17, 4)).shape  # [B, T, 4 features + 1 planted]
    torch.Size([2, 17, 5])
    """

    def __init__(self, units: nn.Module, groups: torch.Tensor, layout: str | Layout = "channels_first") -> None:
        super().__init__()
        self.units = units
        self.layout = layout if isinstance(layout, Layout) else Layout(layout)
        self.register_buffer("groups", torch.as_tensor(groups, dtype=torch.long))
        # modules, not functions, so that LRP has a rule for each (zennit: Pass for the ReLU, Norm
        # for the Sum: relevance split in proportion to each unit); gradients are unchanged
        self.relu = nn.ReLU()
        self.sum = Sum(dim=-1)

    def unit_maps(self, h: torch.Tensor) -> torch.Tensor:
        """Rectified unit maps [B, n_units, H, W] (in the layer's layout, e.g. [B, T, n_units])."""
        return self.relu(self.units(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.unit_maps(h)
        if self.layout.channel_axis == 1:
            planted = self.sum(u[:, self.groups].permute(0, 1, 3, 4, 2))  # [B, P, H, W]
            return torch.cat([h, planted], 1)
        planted = self.sum(u[..., self.groups])  # features last: [..., P, G] -> [..., P]
        return torch.cat([h, planted], -1)


class _Host(nn.Module):
    """Stands where the original layer stood: runs it (``inner``), plants, passes the original channels on."""

    def __init__(self, inner: nn.Module, planted: PlantedLayer, n_channels: int, name: str) -> None:
        super().__init__()
        self.inner = inner
        self.name = name
        self.n_channels = n_channels
        self.channels_first = planted.layout.channel_axis == 1
        self.add_module(name, planted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, self.name)(self.inner(x))
        if self.channels_first:
            return out[:, : self.n_channels]
        return out[..., : self.n_channels]


@dataclass(frozen=True)
class PlantedNeurons:
    """Result of :func:`plant_neurons`.

    Attributes
    ----------
    model : nn.Module
        A copy of the model with the planted channels (its outputs are unchanged).
    layer : str
        The wrapper module whose output holds the layer's own channels followed by the planted
        ones, e.g. ``"layer4.planted"``; use it as the ``layer`` of collect_references,
        circuit_attributions (with the usual ``lower_layer``) and activation_features.
    inner : str
        The original layer inside the copy (e.g. ``"layer4.inner"``): its own channels only.
    channels : list of int
        Index of each planted neuron in ``layer``'s output (after the original channels).
    groups : LongTensor [P, G]
        The units summed into each planted neuron.
    """

    model: nn.Module
    layer: str
    inner: str
    channels: list[int]
    groups: torch.Tensor

    @property
    def planted_layer(self) -> PlantedLayer:
        return get_module(self.model, self.layer)

    @property
    def layout(self) -> Layout:
        """The layer's layout (that of ``layer`` and ``inner``), e.g. ``Layout('tokens', 1, (4, 4))``."""
        return self.planted_layer.layout


def class_activation_units(fc: nn.Linear) -> nn.Conv2d:
    """A linear head applied at every position: the class-activation maps of all its outputs.

    ``fc(mean over positions of h) = mean over positions of unit_maps(h)``, so each unit is the
    map of one class logit (bias included) over the layer's positions.

    Parameters
    ----------
    fc : nn.Linear
        The model's last layer (in_features = channels of the layer it follows).

    Returns
    -------
    nn.Conv2d
        1x1 convolution ``in_features -> out_features``, frozen copy of ``fc``'s weights.

    Examples
    --------
    >>> fc = nn.Linear(8, 16)
    >>> cam = class_activation_units(fc)
    >>> h = torch.randn(2, 8, 4, 4)
    >>> torch.allclose(cam(h).mean((2, 3)), fc(h.mean((2, 3))), atol=1e-6)
    True
    """
    if not isinstance(fc, nn.Linear):
        raise PuretoolsError(
            f"fc must be an nn.Linear head (e.g. model.fc), got {type(fc).__name__}; pass the model's final linear layer."
        )
    conv = nn.Conv2d(fc.in_features, fc.out_features, 1, bias=fc.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(fc.weight.detach()[:, :, None, None])
        if fc.bias is not None:
            conv.bias.copy_(fc.bias.detach())
    return conv.requires_grad_(False).to(fc.weight.device)


def plant_neurons(
    model: nn.Module,
    layer: str,
    units: nn.Module,
    groups: Sequence[Sequence[int]] | torch.Tensor,
    name: str = "planted",
    layout: str | Layout | None = None,
) -> PlantedNeurons:
    """Plant neurons made of known units as extra channels of ``layer``, in a copy of ``model``.

    The neurons of ``layer`` sit on its channel axis, found by
    :func:`puretools.layouts.layer_layout` (or given as ``layout``): axis 1 of a CNN layer
    ``[B, C, H, W]``, the features (last axis) of a transformer's token layer ``[B, T, C]``; the
    units map the output to unit maps in the same layout, and the planted channels are
    appended on that axis. The copy's module ``layer`` becomes a wrapper that runs the original layer (``inner``),
    then a :class:`PlantedLayer` named ``name`` that appends one channel per group:
    ``sum over u in group of relu(units(h)[u])``, and passes the original channels on, so the
    model's outputs do not change. The wrapper is traced by torch.fx like any container,
    so :func:`puretools.circuit_attributions` works from the usual lower layer to
    ``f"{layer}.{name}"``.

    Parameters
    ----------
    model : nn.Module
        Left unchanged (it is copied).
    layer : str
        The layer whose output [B, C, H, W] (or [B, T, C], ...) the units read.
    units : nn.Module
        [B, C, H, W] -> [B, n_units, H, W], e.g. :func:`class_activation_units` of the head;
        for a token layer [B, T, C] -> [B, T, n_units], e.g. ``nn.Identity()`` (the units are
        then the layer's own features).
    groups : sequence of sequences of int, or LongTensor [P, G]
        The units of each planted neuron, e.g. ``[(2, 10), (0, 6)]`` (G >= 2 units each).
    name : str
        Name of the planted module inside the wrapper.
    layout : str, Layout or None
        The layer's layout; None: found from the model (:func:`puretools.layouts.layer_layout`,
        which raises where the model does not settle it).

    Returns
    -------
    PlantedNeurons

    Examples
    --------
    >>> import puretools as pt
    >>> model = pt.load_model("toy")
    >>> planted = plant_neurons(model, "layer4", class_activation_units(model.fc), [(2, 10), (0, 6)])
    >>> planted.layer, planted.channels  # layer4 has 8 channels: the planted ones are 8 and 9
    ('layer4.planted', [8, 9])
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.allclose(planted.model(x), model(x))  # the model's outputs are unchanged
    True
    >>> vit = pt.load_model("toy-vit")  # tokens [B, 17, 8]: plant MLP neurons 1 + 5 as feature 8
    >>> pv = plant_neurons(vit, "blocks.3.mlp.act", nn.Identity(), [(1, 5)])
    >>> pv.layout.kind, pv.channels, tuple(pt.layer_output(pv.model, x, pv.layer).shape)
    ('tokens', [8], (2, 17, 9))
    """
    if isinstance(groups, (str, bytes)):
        raise PuretoolsError(f"groups={groups!r} must list groups of unit indices, e.g. [(2, 10)].")
    try:
        rows = groups.tolist() if isinstance(groups, torch.Tensor) else [list(g) for g in groups]
    except TypeError:
        raise PuretoolsError(f"groups={groups!r} must list groups of unit indices, e.g. [(2, 10)].") from None
    for i, g in enumerate(rows):
        check_ids(g, f"groups[{i}]")
    try:
        groups_t = torch.as_tensor(rows, dtype=torch.long)
    except (ValueError, TypeError):
        raise PuretoolsError(f"groups={groups!r} must be groups of equal size, e.g. [(2, 10), (0, 6)].") from None
    if groups_t.ndim != 2 or groups_t.shape[1] < 2 or not len(groups_t):
        raise PuretoolsError(
            f"groups must list at least one group of >= 2 units, e.g. [(2, 10)]; got shape {tuple(groups_t.shape)}."
        )
    if not isinstance(name, str) or not name.isidentifier():
        raise PuretoolsError(f"name must be a valid module name, not {name!r}.")
    check_module(model)
    check_module(units, "units")
    if layout is not None and not isinstance(layout, Layout):
        Layout(layout if isinstance(layout, str) else repr(layout))  # raises, naming the layouts
    get_module(model, layer)  # a clear error for a wrong name
    model = copy.deepcopy(model)
    parent_name, _, child = layer.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    inner = getattr(parent, child)
    with torch.no_grad():  # the layer's layout, width and number of units, from one probe pass
        lay, n_channels, n_units = _probe(model, layer, units, layout)
    bad = groups_t[(groups_t < 0) | (groups_t >= n_units)]
    if len(bad):
        raise PuretoolsError(f"Unit indices {bad.tolist()} are out of range: units gives {n_units} maps (0..{n_units - 1}).")
    host = _Host(inner, PlantedLayer(copy.deepcopy(units), groups_t, lay), n_channels, name)
    setattr(parent, child, host)
    channels = list(range(n_channels, n_channels + len(groups_t)))
    return PlantedNeurons(model.eval(), f"{layer}.{name}", f"{layer}.inner", channels, groups_t)


def _probe(model: nn.Module, layer: str, units: nn.Module, layout: str | Layout | None) -> tuple[Layout, int, int]:
    """Layout and channels of ``layer`` and the number of unit maps, from a forward pass on zero images."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise PuretoolsError("plant_neurons needs a model whose first layer is an nn.Conv2d (found none).")
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or (32, 32)  # timm ViTs: their size
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        images = torch.zeros(2, first.in_channels, *size, device=param.device, dtype=param.dtype)
        lay = layer_layout(model, layer, images, layout)
        h = layer_output(model, images, layer)
    finally:
        model.train(was_training)
    if lay.kind == "channels_first" and h.ndim != 4:
        raise PuretoolsError(f"Layer {layer!r} gives outputs of shape {tuple(h.shape)}; expected [B, C, H, W].")
    u = units.to(param.device)(h)
    axis = lay.channel_axis % h.ndim
    if u.ndim != h.ndim or u.shape[:axis] + u.shape[axis + 1 :] != h.shape[:axis] + h.shape[axis + 1 :]:
        want = "[B, C, H, W] to [B, n_units, H, W]" if lay.kind == "channels_first" else (
            f"the layer's {lay.kind} output to unit maps of the same shape but the last axis (n_units)")
        raise PuretoolsError(f"units must map {want}; it gave {tuple(u.shape)} for {tuple(h.shape)}.")
    return lay, int(h.shape[axis]), int(u.shape[axis])


@torch.inference_mode()
def planted_sources(
    planted: PlantedNeurons,
    dataset: Dataset,
    references: References | torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The true source of each reference of each planted neuron: its larger unit at the max location.

    Parameters
    ----------
    planted : PlantedNeurons
    dataset : Dataset
    references : References or LongTensor [P, n_ref]
        One row per planted neuron, in the order of ``planted.channels`` (e.g.
        ``collect_references(planted.model, dataset, planted.layer).indices[planted.channels]``).

    Returns
    -------
    LongTensor [P, n_ref]
        The unit (e.g. the concept of a class-activation map) that is larger at the location
        (position, or token of a token layer, prefix tokens included) where the planted neuron
        is largest; -1 where the neuron is 0 there.

    Examples
    --------
    >>> import puretools as pt
    >>> from puretools import toyworld
    >>> model, data = pt.load_model("toy"), toyworld.ToyWorld("test", n=500)
    >>> planted = plant_neurons(model, "layer4", class_activation_units(model.fc), [(2, 10)])
    >>> refs = pt.collect_references(planted.model, data, planted.layer, n_ref=20, progress=False)
    >>> sources = planted_sources(planted, data, refs.indices[planted.channels])  # [1, 20]
    >>> sorted(set(sources[0].tolist()) - {-1}) in ([2], [10], [2, 10])  # triangle or diagonal
    True
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    if isinstance(references, References):  # collected at the planted layer, on this data set
        idx, _ = check_references(references, dataset, planted.layer)
        if len(idx) != len(planted.channels) and len(idx) > max(planted.channels):
            idx = idx[planted.channels]  # all channels of the layer: keep the planted ones
    else:
        idx, _ = check_references(references, dataset)
    if idx.ndim != 2 or len(idx) != len(planted.channels):
        raise PuretoolsError(
            f"references must have one row per planted neuron ({len(planted.channels)}), got shape {tuple(idx.shape)}."
        )
    device = resolve_device(device, planted.model)
    model = prepare_model(planted.model, device)
    plant = get_module(model, planted.layer)
    groups = plant.groups
    unique, inverse = torch.unique(idx, return_inverse=True)
    units = []
    for s in range(0, len(unique), batch_size):
        images = collate_images([dataset[int(i)] for i in unique[s : s + batch_size]]).to(device)
        h = layer_output(model, images, planted.inner)
        units.append(plant.layout.to_channels(plant.unit_maps(h)).cpu())  # [b, n_units, HW or T]
    maps = torch.cat(units)[inverse]  # [P, n_ref, n_units, HW]
    n_p, n_ref, _, hw = maps.shape
    groups = groups.cpu()
    member = maps.gather(2, groups[:, None, :, None].expand(n_p, n_ref, -1, hw))  # [P, n_ref, G, HW]
    where = member.sum(2).argmax(-1)  # the planted neuron's max location [P, n_ref]
    at_max = member.gather(3, where[:, :, None, None].expand(n_p, n_ref, member.shape[2], 1)).squeeze(-1)
    source = groups.gather(1, at_max.argmax(-1))  # [P, n_ref]
    return torch.where(at_max.amax(-1) > 0, source, torch.tensor(-1))
