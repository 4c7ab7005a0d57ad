"""Using virtual neurons: route new inputs, explain each virtual neuron, switch virtual neurons off.

A fitted :class:`~puretools.VirtualNeurons` splits a neuron of ``layer`` into virtual neurons,
one per cluster of circuits. A new input is *routed* to the virtual neuron whose centroid is
nearest to the input's own circuit (:meth:`VirtualNeurons.assign`), computed by the circuit
engine (:func:`puretools.circuit_attributions`) with the input as the only reference.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from .checks import (
    check_batch,
    check_choice,
    check_images,
    check_int,
    check_number,
    check_virtual_neurons,
    resolve_device,
)
from .circuits import Method, circuit_attributions
from .errors import PuretoolsError
from .forward import capture_output, collate_images, forward_to, prepare_model
from .layouts import Layout, TokenReduce, layer_layout
from .models import get_module, lrp_composite
from .virtual import VirtualNeurons

__all__ = [
    "Routes",
    "conditional_heatmaps",
    "contrastive_conditions",
    "partition_conditions",
    "route_images",
    "virtual_activations",
    "virtual_conditions",
    "virtual_heatmaps",
]

def _check_fitted(vn: VirtualNeurons) -> None:
    if not isinstance(vn, VirtualNeurons):
        raise PuretoolsError(f"vn must be a fitted puretools.VirtualNeurons, got {type(vn).__name__}.")
    check_virtual_neurons(vn)


def _check_method(method: str) -> None:
    check_choice(method, "method", ("gradient", "lrp"))


def _as_images(images: torch.Tensor | Dataset) -> torch.Tensor:
    """The images [M, C, H, W] of a tensor or a data set, checked to be a non-empty finite
    floating batch (float64 is fine: :func:`~puretools.checks.check_images` casts it)."""
    if isinstance(images, Dataset) and not isinstance(images, torch.Tensor):
        if len(images) == 0:  # type: ignore[arg-type]
            raise PuretoolsError("images is an empty data set; pass at least one image.")
        images = collate_images([images[i] for i in range(len(images))])  # type: ignore[arg-type]
    return check_batch(images)


def check_layer_pair(
    model: nn.Module,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    image: torch.Tensor,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
) -> tuple[int, int]:
    """Check ``vn`` against the channels of ``layer`` and ``lower_layer`` (one forward pass of
    ``image`` [B, C, H, W], B of 1 or 2, counted in the layers' layouts); return (channels of
    layer, channels of lower_layer)."""
    get_module(model, lower_layer)
    store, handle = capture_output(get_module(model, lower_layer), stop=False)
    try:
        with torch.inference_mode():
            out = forward_to(model, layer, image)
    finally:
        handle.remove()
    if "out" not in store:
        raise PuretoolsError(f"Layer {lower_layer!r} did not run before {layer!r}: is it the layer below?")
    lower_out = store["out"][0] if isinstance(store["out"], (tuple, list)) else store["out"]
    sizes = (
        layer_layout(model, layer, image, layout).channels(out),
        layer_layout(model, lower_layer, image, lower_layout).channels(lower_out),
    )
    check_virtual_neurons(vn, layer, lower_layer, *sizes)
    return sizes


@dataclass(frozen=True)
class Routes:
    """Where new inputs go: their circuits and their virtual neuron, per fitted neuron.

    Attributes
    ----------
    activations : Tensor [M, N]
        Spatial max of each fitted neuron's activation map (``N = len(vn.neurons)``).
    circuits : Tensor [N, M, C_lower]
        The inputs' circuits (L1-normalised, as in the fit).
    routes : LongTensor [N, M]
        Nearest virtual neuron (``vn.assign(circuits)``).
    distances : Tensor [N, M, max_k]
        Euclidean distance of each circuit to each centroid; ``inf`` beyond a neuron's k.
    """

    activations: torch.Tensor
    circuits: torch.Tensor
    routes: torch.Tensor
    distances: torch.Tensor


def route_images(
    model: nn.Module,
    images: torch.Tensor | Dataset,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    method: Method = "gradient",
    device: str | torch.device | None = None,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
    token_reduce: TokenReduce = "max",
) -> Routes:
    """Circuits, spatial-max activations and virtual neuron of each input for every fitted neuron.

    One forward pass to ``layer`` gives the activations; the circuits come from
    :func:`puretools.circuit_attributions` with every image as a reference of every fitted
    neuron (one forward to ``lower_layer`` per image, then the neurons of an image batched).
    Use the ``method`` the circuits of the fit were computed with.

    Parameters
    ----------
    model : torch.nn.Module
    images : Tensor [M, 3, H, W] or Dataset of ``(image, ...)``
    layer, lower_layer : str
    vn : VirtualNeurons
        Fitted with ``neurons=`` the channels of ``layer`` its rows belong to.
    method : {"gradient", "lrp"}
    device : str, torch.device or None
    layout, lower_layout : str, Layout or None
        The layouts of ``layer`` and ``lower_layer`` (:func:`puretools.layouts.layer_layout`);
        None: found from the model.
    token_reduce : {"max", "mean", "cls"}
        How a neuron's map becomes its activation (:meth:`puretools.layouts.Layout.reduce`;
        use the references' ``token_reduce``).

    Returns
    -------
    Routes

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU()).eval()
    >>> vn = VirtualNeurons().fit(torch.rand(2, 10, 6), k=2, neurons=[1, 3])  # 2 neurons, 6 lower channels
    >>> r = route_images(model, torch.randn(5, 3, 8, 8), "3", "1", vn)  # 5 new images
    >>> r.activations.shape, r.circuits.shape, r.routes.shape
    (torch.Size([5, 2]), torch.Size([2, 5, 6]), torch.Size([2, 5]))
    """
    _check_fitted(vn)
    _check_method(method)
    check_virtual_neurons(vn, layer, lower_layer)
    x = _as_images(images)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    x = check_images(x, model)  # float64 images for a float32 model: cast
    lay = layer_layout(model, layer, x[:2].to(device), layout)
    check_layer_pair(model, layer, lower_layer, vn, x[:2].to(device), lay, lower_layout)
    with torch.inference_mode():
        out = forward_to(model, layer, x.to(device)).float()
    n_channels = lay.channels(out)
    acts = lay.reduce(out, token_reduce)[:, vn.neurons].cpu()  # CNNs: the spatial max
    m = len(x)
    refs = torch.arange(m).expand(n_channels, m)  # every image is a reference of every neuron
    with warnings.catch_warnings():  # an input on which a neuron is silent has a zero circuit
        warnings.filterwarnings("ignore", message=".*dead neurons.*", category=RuntimeWarning)
        circuits = circuit_attributions(
            model, TensorDataset(x.cpu()), layer, lower_layer, refs, neurons=vn.neurons, method=method,
            device=device, progress=False, layout=lay, lower_layout=lower_layout,
        )
    routes = vn.assign(circuits)
    distances = torch.full((len(vn.neurons), m, vn.max_k), float("inf"))
    for i, centroid in enumerate(vn.centroids):
        distances[i, :, : len(centroid)] = torch.cdist(circuits[i].double(), centroid.double()).float()
    return Routes(acts, circuits, routes, distances)


def virtual_activations(
    model: nn.Module,
    images: torch.Tensor | Dataset,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    method: Method = "gradient",
    soft: bool = False,
    temperature: float = 0.05,
    device: str | torch.device | None = None,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
    token_reduce: TokenReduce = "max",
) -> torch.Tensor:
    """Activations of the virtual neurons: each neuron's spatial max, routed to one virtual neuron.

    Hard routing (default): the spatial-max activation of fitted neuron i goes to the virtual
    neuron whose centroid is nearest to the input's circuit (:func:`route_images`); its other
    virtual neurons get 0. Soft routing (``soft=True``): the activation is shared out with
    weights ``softmax(-d / temperature)`` over the neuron's k centroid distances ``d``
    (L1-normalised circuits are compared, so distances lie in [0, 2]); as ``temperature``
    goes to 0 this becomes hard routing. Either way the virtual activations of a neuron sum to
    its plain spatial-max activation. Entries beyond a neuron's k are 0. Transformer layers:
    the max over tokens (or ``token_reduce``); ``layout``, ``lower_layout`` and
    ``token_reduce`` as in :func:`route_images`.

    Returns
    -------
    Tensor [M, N, max_k]
        ``N = len(vn.neurons)``, ``max_k = max(vn.ks)``.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU()).eval()
    >>> vn = VirtualNeurons().fit(torch.rand(4, 10, 6), k=[2, 3, 2, 2])  # all 4 neurons of "3"
    >>> images = torch.randn(5, 3, 8, 8)
    >>> acts = virtual_activations(model, images, "3", "1", vn)
    >>> acts.shape  # 5 images, 4 neurons, up to 3 virtual neurons each
    torch.Size([5, 4, 3])
    >>> plain = model(images).amax((2, 3))
    >>> torch.allclose(acts.sum(-1), plain)
    True
    """
    check_number(temperature, "temperature", 0, low_open=True)
    if not isinstance(soft, bool):
        raise PuretoolsError(f"soft={soft!r} must be True or False.")
    r = route_images(model, images, layer, lower_layer, vn, method=method, device=device, layout=layout,
                     lower_layout=lower_layout, token_reduce=token_reduce)  # fmt: skip
    n, m = r.routes.shape
    if soft:
        weights = torch.softmax(-r.distances.double() / temperature, dim=-1).float()  # inf -> weight 0
        return r.activations[..., None] * weights.transpose(0, 1)
    out = torch.zeros(m, n, vn.max_k)
    out.scatter_(2, r.routes.T[..., None], r.activations[..., None])
    return out


# --------------------------------------------------------------------------------- heatmaps


def virtual_conditions(vn: VirtualNeurons, neuron: int) -> torch.Tensor:
    """Which lower-layer channels belong to each virtual neuron of ``neuron``: a partition.

    Channel c of the lower layer belongs to the virtual neuron whose centroid gives it the
    largest (signed) relevance, ``argmax_j centroid[j, c]`` (the lowest j on ties). Every
    channel belongs to exactly one virtual neuron, so the conditions partition the channels.

    Returns
    -------
    BoolTensor [k, C_lower]

    Examples
    --------
    >>> vn = VirtualNeurons().fit(torch.tensor([[1.0, 0, 0], [1, 0.1, 0], [0, 1, 0.5], [0, 1, 0.4]]), k=2)
    >>> vn.labels[0].tolist()  # two clusters of two (equal sizes: ordered by centroid)
    [1, 1, 0, 0]
    >>> virtual_conditions(vn, 0)  # channel 0 belongs to virtual neuron 1, channels 1-2 to 0
    tensor([[False,  True,  True],
            [ True, False, False]])
    """
    _check_fitted(vn)
    return partition_conditions(vn.centroids[vn.position(check_int(neuron, "neuron"))])


def partition_conditions(centroids: torch.Tensor) -> torch.Tensor:
    """The channel partition of :func:`virtual_conditions` from centroids [k, C_lower] directly.

    Examples
    --------
    >>> partition_conditions(torch.tensor([[0.5, 0.1, 0.0], [0.2, 0.3, 0.6]]))
    tensor([[ True, False, False],
            [False,  True,  True]])
    """
    centroids = torch.as_tensor(centroids)
    if centroids.ndim != 2:
        raise PuretoolsError(f"centroids must have shape [k, C_lower], got {tuple(centroids.shape)}.")
    return centroids.argmax(0)[None] == torch.arange(len(centroids))[:, None]


def contrastive_conditions(centroids: torch.Tensor) -> torch.Tensor:
    """Contrastive channel weights [k, C_lower]: each centroid minus the mean of the others, clipped at 0.

    ``w[j, c] = max(0, centroid[j, c] - mean_{i != j} centroid[i, c])``, divided by its row's
    largest value (so the strongest channel of each virtual neuron has weight 1; a row without a
    positive entry stays 0). A lower channel counts for virtual neuron j by how much more j's
    circuits use it than the other virtual neurons' do, rather than all-or-nothing by which one
    uses it most (:func:`partition_conditions`). The rows do not sum to 1 per channel, so the
    weighted heatmaps do not add up to the whole neuron's. With k = 1 the weights are the
    centroid clipped at 0 (nothing to contrast with).

    Examples
    --------
    >>> contrastive_conditions(torch.tensor([[0.5, 0.1, 0.0], [0.2, 0.3, 0.6]]))
    tensor([[1.0000, 0.0000, 0.0000],
            [0.0000, 0.3333, 1.0000]])
    """
    centroids = torch.as_tensor(centroids).double()
    if centroids.ndim != 2:
        raise PuretoolsError(f"centroids must have shape [k, C_lower], got {tuple(centroids.shape)}.")
    k = len(centroids)
    others = (centroids.sum(0, keepdim=True) - centroids) / (k - 1) if k > 1 else torch.zeros_like(centroids)
    w = (centroids - others).clamp(min=0)
    top = w.amax(1, keepdim=True)
    return torch.where(top > 0, w / top.clamp(min=1e-300), torch.zeros_like(w)).float()


def conditional_heatmaps(
    model: nn.Module,
    images: torch.Tensor | Dataset,
    layer: str,
    lower_layer: str,
    neuron: int,
    conditions: torch.Tensor,
    method: Method = "gradient",
    device: str | torch.device | None = None,
    batch_size: int = 256,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps of ``neuron`` with the relevance at ``lower_layer`` weighted by each condition.

    The engine behind :func:`virtual_heatmaps` (which documents the method). The images are
    repeated once per condition (plus once without condition) into batches of about
    ``batch_size`` rows; each batch takes one forward pass, one backward pass to
    ``lower_layer`` and, with each row's relevance there weighted by its condition, one
    backward pass to the input.

    Parameters
    ----------
    neuron : int
        Channel of ``layer``.
    conditions : Tensor [n_cond, C_lower]
        Weight of each lower channel per condition (0/1 for CRP's channel conditions).
    batch_size : int
        Rows (images x conditions) per pass; at least one condition per pass.
    layout, lower_layout : str, Layout or None
        The layouts of ``layer`` and ``lower_layer``; None: found from the model. For a
        transformer layer the start covers every token of the feature ``neuron``.

    Returns
    -------
    (Tensor [n_cond, M, H, W], Tensor [M, H, W])
        The conditional heatmaps and the unconditioned heatmap of the neuron.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    >>> cond = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])  # two halves of the 6 channels
    >>> heat, full = conditional_heatmaps(model, torch.randn(2, 3, 8, 8), "2", "1", 3, cond)
    >>> heat.shape, torch.allclose(heat.sum(0), full, atol=1e-5)
    (torch.Size([2, 2, 8, 8]), True)
    """
    _check_method(method)
    batch_size = check_int(batch_size, "batch_size", low=1)
    neuron = check_int(neuron, "neuron", low=0)
    masks = torch.as_tensor(conditions).float()
    x = _as_images(images)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    x = check_images(x, model)  # float64 images for a float32 model: cast
    if masks.ndim != 2 or 0 in masks.shape:
        raise PuretoolsError(f"conditions must have shape [n_conditions, C_lower], got {tuple(masks.shape)}.")
    rows = torch.cat([masks, torch.ones(1, masks.shape[1])])  # the last row: no condition
    m = len(x)
    per_pass = max(1, batch_size // max(m, 1))  # conditions per pass: images x conditions rows
    lay_top = layer_layout(model, layer, x[:2].to(device), layout)
    lay_low = layer_layout(model, lower_layer, x[:2].to(device), lower_layout)
    composite = lrp_composite(model) if method == "lrp" else None
    store, handle = capture_output(get_module(model, lower_layer), stop=False)
    heats = []
    try:
        with composite.context(model) if composite else contextlib.nullcontext(), torch.enable_grad():
            for c0 in range(0, len(rows), per_pass):
                block = rows[c0 : c0 + per_pass].to(device)  # [n, C_lower]
                xg = x.to(device).repeat(len(block), *([1] * (x.ndim - 1))).detach().requires_grad_(True)
                y = forward_to(model, layer, xg)  # row c * m + i: condition c, image i
                if "out" not in store:
                    raise PuretoolsError(f"Layer {lower_layer!r} did not run before {layer!r}.")
                low = store.pop("out")
                n_low, n_top = lay_low.channels(low), lay_top.channels(y)
                if n_low != masks.shape[1]:
                    raise PuretoolsError(
                        f"conditions must have shape [n_conditions, {n_low}] ({lower_layer!r} has "
                        f"{n_low} channels), got {tuple(masks.shape)}: was vn fitted on another lower layer?"
                    )
                if not 0 <= neuron < n_top:
                    raise PuretoolsError(f"neuron={neuron} is out of range: {layer!r} has {n_top} channels.")
                init = torch.zeros_like(y)  # relu(a_k) on every position (token) of channel k
                lay_top.to_channels(init)[:, neuron] = lay_top.to_channels(y.detach())[:, neuron].clamp(min=0)
                (grad_low,) = torch.autograd.grad(y, low, init, retain_graph=True)
                weight = block.repeat_interleave(m, 0)[:, :, None]  # [rows, C_lower, 1]
                weighted = lay_low.from_channels(lay_low.to_channels(grad_low) * weight, grad_low.shape)
                (grad_x,) = torch.autograd.grad(low, xg, weighted)
                rel = grad_x * xg.detach() if method == "gradient" else grad_x
                heats.append(rel.detach().float().sum(1).cpu().view(len(block), m, *rel.shape[2:]))
    finally:
        handle.remove()
    out = torch.cat(heats)
    return out[:-1], out[-1]


def virtual_heatmaps(
    model: nn.Module,
    images: torch.Tensor | Dataset,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    neuron: int,
    method: Method = "gradient",
    conditions: torch.Tensor | None = None,
    return_full: bool = False,
    device: str | torch.device | None = None,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
    weights: Literal["partition", "contrastive"] = "contrastive",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Input heatmaps of each virtual neuron of ``neuron``: CRP restricted to its circuit.

    The backward pass starts at ``layer`` with the relevance ``relu(a_k)`` on the whole map of
    channel k = ``neuron`` (zero on the other channels), as the circuits do. At
    ``lower_layer`` it weights each channel for virtual neuron j (``weights``, below) and
    continues to the input. ``weights="partition"`` keeps only the channels of virtual neuron
    j (:func:`virtual_conditions`: each lower channel goes to the virtual neuron whose
    centroid weights it most; weight 1 inside, 0 outside, no threshold).
    ``method="gradient"``: heatmap = gradient x input, summed over colour channels.
    ``method="lrp"``: zennit's ``EpsilonPlusFlat`` with the model's canonizers (as
    :func:`puretools.reference_heatmaps`), input relevance summed over colour channels; this is
    zennit-crp's ``CondAttribution`` with the conditions ``{layer: [k], lower_layer: S_j}``.

    ``weights="contrastive"`` (the default) weights lower channel c for virtual neuron j by
    how much more j's centroid uses it than the others' do (:func:`contrastive_conditions`:
    own centroid minus the mean of the other centroids, clipped at 0, scaled to a largest
    weight of 1) instead of the 0/1 partition (``weights="partition"``). It is the default
    because it separates the objects better: on held-out toy images holding two concepts of
    the same neuron (every virtual neuron of every polysemantic neuron of the shipped model,
    ``benchmarks/bench_virtual_use.py``), LRP virtual heatmaps put 0.29 of their positive
    relevance inside the own object's mask and 0.10 inside the other's, against 0.25 and 0.14
    with the partition (gradient x input: 0.12 / 0.08 against 0.11 / 0.09).

    Relation to the whole neuron's heatmap: the backward below ``lower_layer`` is linear in the
    relevance it receives (the forward pass is fixed). With ``weights="partition"`` the
    conditions partition the lower channels, so **the k virtual heatmaps sum to the neuron's
    full heatmap** (up to float rounding), for both methods. With ``weights="contrastive"``
    they do not (the weights of a channel do not sum to 1 over the virtual neurons, and a
    channel that every virtual neuron uses alike gets weight 0 in all of them): each heatmap
    shows what is specific to its virtual neuron, not a share of the neuron's relevance.

    Parameters
    ----------
    neuron : int
        A channel of ``layer`` that ``vn`` was fitted for (see ``vn.neurons``).
    conditions : BoolTensor or Tensor [k, C_lower] or None
        Other channel weights per virtual neuron (default: from ``weights``).
    return_full : bool
        Also return the full heatmap [M, H, W] of the neuron (no condition at ``lower_layer``).
    layout, lower_layout : str, Layout or None
        The layouts of ``layer`` and ``lower_layer`` (transformers: tokens); None: found from
        the model. The heatmaps are on the input pixels for every layout.
    weights : {"partition", "contrastive"}
        How lower channels are weighted per virtual neuron when ``conditions`` is None:
        :func:`contrastive_conditions` (default; does not add up to the whole heatmap) or
        :func:`virtual_conditions` (0/1, adds up).

    Returns
    -------
    Tensor [k, M, H, W]
        (and the full heatmap [M, H, W] with ``return_full``), float32 on the CPU.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()).eval()
    >>> vn = VirtualNeurons().fit(torch.rand(10, 6), k=2, neurons=[2])  # neuron 2, 10 refs
    >>> x = torch.randn(3, 3, 8, 8)
    >>> heat, full = virtual_heatmaps(model, x, "3", "1", vn, 2, weights="partition", return_full=True)
    >>> heat.shape  # 2 virtual neurons, 3 images, 8 x 8
    torch.Size([2, 3, 8, 8])
    >>> torch.allclose(heat.sum(0), full, atol=1e-5)  # the partition adds up to the whole heatmap
    True
    >>> virtual_heatmaps(model, x, "3", "1", vn, 2).shape  # contrastive (default): does not add up
    torch.Size([2, 3, 8, 8])
    """
    _check_fitted(vn)
    _check_method(method)
    check_virtual_neurons(vn, layer, lower_layer)
    check_choice(weights, "weights", ("partition", "contrastive"))
    pos = vn.position(check_int(neuron, "neuron"))
    if not isinstance(return_full, bool):
        raise PuretoolsError(f"return_full={return_full!r} must be True or False.")
    x = _as_images(images)
    dev = resolve_device(device, model)
    check_layer_pair(prepare_model(model, dev), layer, lower_layer, vn, check_images(x[:2], model).to(dev),
                     layout, lower_layout)  # fmt: skip
    images = x
    if conditions is not None:
        masks = torch.as_tensor(conditions)
    elif weights == "partition":
        masks = virtual_conditions(vn, neuron)
    else:
        masks = contrastive_conditions(vn.centroids[pos])
    heat, full = conditional_heatmaps(model, images, layer, lower_layer, neuron, masks, method, device,
                                      layout=layout, lower_layout=lower_layout)  # fmt: skip
    return (heat, full) if return_full else heat
