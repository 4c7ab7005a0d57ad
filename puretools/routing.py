"""Using virtual neurons: route new inputs, explain each virtual neuron, switch virtual neurons off.

A fitted :class:`~puretools.VirtualNeurons` splits a neuron of ``layer`` into virtual neurons,
one per cluster of circuits. A new input is *routed* to the virtual neuron whose centroid is
nearest to the input's own circuit (:meth:`VirtualNeurons.assign`), computed by the circuit
engine (:func:`puretools.circuit_attributions`) with the input as the only reference.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from .circuits import circuit_attributions, normalize_circuits, subnetwork
from .errors import PuretoolsError
from .models import get_module, lrp_composite
from .references import (
    _capture,
    check_images,
    collate_images,
    forward_to,
    prepare_model,
    resolve_device,
)
from .virtual import VirtualNeurons

__all__ = [
    "Routes",
    "VirtualEdit",
    "edit_virtual_neurons",
    "route_images",
    "virtual_activations",
    "virtual_conditions",
    "virtual_heatmaps",
]

Method = Literal["gradient", "lrp"]


def _check_fitted(vn: VirtualNeurons) -> None:
    if not isinstance(vn, VirtualNeurons):
        raise PuretoolsError(f"vn must be a fitted puretools.VirtualNeurons, got {type(vn).__name__}.")
    if vn.labels is None:
        raise PuretoolsError("The VirtualNeurons are not fitted yet: call vn.fit(circuits, k, neurons=...) first.")


def _check_method(method: str) -> None:
    if method not in ("gradient", "lrp"):
        raise PuretoolsError(f"method must be 'gradient' or 'lrp', not {method!r}.")


def _as_images(images: torch.Tensor | Dataset) -> torch.Tensor:
    if isinstance(images, Dataset) and not isinstance(images, torch.Tensor):
        return collate_images([images[i] for i in range(len(images))])  # type: ignore[arg-type]
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    return images


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
    x = _as_images(images)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    check_images(x, model)
    with torch.inference_mode():
        out = forward_to(model, layer, x.to(device)).float()
    n_channels = out.shape[1]
    bad = [n for n in vn.neurons if n >= n_channels]
    if bad:
        raise PuretoolsError(
            f"The virtual neurons were fitted for neuron(s) {bad} but layer {layer!r} has {n_channels} "
            "channels: was vn fitted on another layer?"
        )
    acts = (out.flatten(2).amax(-1) if out.ndim > 2 else out)[:, vn.neurons].cpu()
    m = len(x)
    refs = torch.arange(m).expand(n_channels, m)  # every image is a reference of every neuron
    with warnings.catch_warnings():  # an input on which a neuron is silent has a zero circuit
        warnings.filterwarnings("ignore", message=".*dead neurons.*", category=RuntimeWarning)
        circuits = circuit_attributions(
            model, TensorDataset(x.cpu()), layer, lower_layer, refs, neurons=vn.neurons, method=method,
            device=device, progress=False,
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
) -> torch.Tensor:
    """Activations of the virtual neurons: each neuron's spatial max, routed to one virtual neuron.

    Hard routing (default): the spatial-max activation of fitted neuron i goes to the virtual
    neuron whose centroid is nearest to the input's circuit (:func:`route_images`); its other
    virtual neurons get 0. Soft routing (``soft=True``): the activation is shared out with
    weights ``softmax(-d / temperature)`` over the neuron's k centroid distances ``d``
    (L1-normalised circuits are compared, so distances lie in [0, 2]); as ``temperature``
    goes to 0 this becomes hard routing. Either way the virtual activations of a neuron sum to
    its plain spatial-max activation. Entries beyond a neuron's k are 0.

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
    if not temperature > 0:
        raise PuretoolsError(f"temperature must be positive, got {temperature!r}.")
    r = route_images(model, images, layer, lower_layer, vn, method=method, device=device)
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
    centroids = vn.centroids[vn.position(neuron)]
    owner = centroids.argmax(0)
    return owner[None] == torch.arange(len(centroids))[:, None]


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Input heatmaps of each virtual neuron of ``neuron``: CRP restricted to its circuit.

    The backward pass starts at ``layer`` with the relevance ``relu(a_k)`` on the whole map of
    channel k = ``neuron`` (zero on the other channels), as the circuits do. At
    ``lower_layer`` it keeps only the channels of virtual neuron j
    (:func:`virtual_conditions`: each lower channel goes to the virtual neuron whose centroid
    weights it most; weight 1 inside, 0 outside, no threshold) and continues to the input.
    ``method="gradient"``: heatmap = gradient x input, summed over colour channels.
    ``method="lrp"``: zennit's ``EpsilonPlusFlat`` with the model's canonizers (as
    :func:`puretools.reference_heatmaps`), input relevance summed over colour channels; this is
    zennit-crp's ``CondAttribution`` with the conditions ``{layer: [k], lower_layer: S_j}``.

    Relation to the whole neuron's heatmap: the backward below ``lower_layer`` is linear in the
    relevance it receives (the forward pass is fixed), and the conditions partition the lower
    channels, so **the k virtual heatmaps sum to the neuron's full heatmap** (up to float
    rounding), for both methods.

    Parameters
    ----------
    neuron : int
        A channel of ``layer`` that ``vn`` was fitted for (see ``vn.neurons``).
    conditions : BoolTensor or Tensor [k, C_lower] or None
        Other channel weights per virtual neuron (default :func:`virtual_conditions`).
    return_full : bool
        Also return the full heatmap [M, H, W] of the neuron (no condition at ``lower_layer``).

    Returns
    -------
    Tensor [k, M, H, W]
        (and the full heatmap [M, H, W] with ``return_full``), float32 on the CPU.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()).eval()
    >>> vn = VirtualNeurons().fit(torch.rand(10, 6), k=2, neurons=[2])  # neuron 2, 10 refs
    >>> heat, full = virtual_heatmaps(model, torch.randn(3, 3, 8, 8), "3", "1", vn, 2, return_full=True)
    >>> heat.shape  # 2 virtual neurons, 3 images, 8 x 8
    torch.Size([2, 3, 8, 8])
    >>> torch.allclose(heat.sum(0), full, atol=1e-5)
    True
    """
    _check_fitted(vn)
    _check_method(method)
    pos = vn.position(neuron)
    masks = (virtual_conditions(vn, neuron) if conditions is None else torch.as_tensor(conditions)).float()
    n_lower = vn.centroids[pos].shape[1]
    if masks.ndim != 2 or masks.shape[1] != n_lower:
        raise PuretoolsError(f"conditions must have shape [k, {n_lower}] (one row per virtual neuron), got {tuple(masks.shape)}.")
    x = _as_images(images)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    check_images(x, model)
    composite = lrp_composite(model) if method == "lrp" else None
    store, handle = _capture(get_module(model, lower_layer), stop=False)
    try:
        with composite.context(model) if composite else contextlib.nullcontext(), torch.enable_grad():
            xg = x.to(device).detach().requires_grad_(True)
            y = forward_to(model, layer, xg)
            if "out" not in store:
                raise PuretoolsError(f"Layer {lower_layer!r} did not run before {layer!r}.")
            low = store["out"]
            if low.shape[1] != n_lower:
                raise PuretoolsError(
                    f"{lower_layer!r} has {low.shape[1]} channels but the circuits of vn have {n_lower}: "
                    "was vn fitted on another lower layer?"
                )
            init = torch.zeros_like(y)
            init[:, neuron] = y[:, neuron].detach().clamp(min=0)
            (grad_low,) = torch.autograd.grad(y, low, init, retain_graph=True)
            shape = (1, n_lower) + (1,) * (grad_low.ndim - 2)
            rows = [masks[j].to(device).view(shape) for j in range(len(masks))]
            if return_full:
                rows.append(torch.ones(shape, device=device))
            heats = []
            for r, weight in enumerate(rows):
                (grad_x,) = torch.autograd.grad(low, xg, grad_low * weight, retain_graph=r < len(rows) - 1)
                rel = grad_x * xg.detach() if method == "gradient" else grad_x
                heats.append(rel.detach().float().sum(1).cpu())
    finally:
        handle.remove()
    out = torch.stack(heats[: len(masks)])
    return (out, heats[-1]) if return_full else out


# --------------------------------------------------------------------------------- editing


class VirtualEdit:
    """Hooks that switch virtual neurons off; a context manager (``with`` removes them).

    Made by :func:`edit_virtual_neurons`. While active, every forward pass of the model
    computes each input's circuit for the edited neurons (from the lower layer's output of
    that same pass), routes it with ``vn.assign`` and sets the activation map of the neuron to
    exactly 0 for inputs routed to a suppressed virtual neuron. Every other value of the
    layer's output is passed on unchanged (the same tensor when no input is routed there).

    Attributes
    ----------
    model : nn.Module
        The edited model (the same object, with hooks).
    last_routes : dict int -> LongTensor [M]
        Virtual neuron of each input of the last forward pass, per edited neuron.
    last_suppressed : dict int -> BoolTensor [M]
        Which inputs had the neuron zeroed in the last forward pass.
    """

    def __init__(self, model: nn.Module, layer: str, lower_layer: str, vn: VirtualNeurons,
                 suppress: dict[int, list[int]], method: Method) -> None:  # fmt: skip
        self.model, self.layer, self.lower_layer, self.vn = model, layer, lower_layer, vn
        self.suppress, self.method = suppress, method
        self.last_routes: dict[int, torch.Tensor] = {}
        self.last_suppressed: dict[int, torch.Tensor] = {}
        self._sub = subnetwork(model, lower_layer, layer)
        self._busy = False
        self._lower: torch.Tensor | None = None
        self._handles = [
            get_module(model, lower_layer).register_forward_hook(self._keep_lower),
            get_module(model, layer).register_forward_hook(self._edit),
        ]

    def _keep_lower(self, _module, _inputs, output) -> None:
        if not self._busy:
            self._lower = output.detach().clone()  # safe from in-place ops further up

    def circuits(self, lower: torch.Tensor, neuron: int) -> torch.Tensor:
        """Circuits [M, C_lower] of ``neuron`` from the lower-layer activations ``lower``."""
        composite = lrp_composite(self.model) if self.method == "lrp" else None
        self._busy = True
        try:
            with torch.inference_mode(False), torch.enable_grad(), (
                composite.context(self.model) if composite else contextlib.nullcontext()
            ):
                x = lower.detach().clone().requires_grad_(True)
                y = self._sub(x)
                grad_out = torch.zeros_like(y)
                grad_out[:, neuron] = y[:, neuron].detach().clamp(min=0)
                (grad,) = torch.autograd.grad(y, x, grad_out)
                rel = grad * x.detach() if self.method == "gradient" else grad
                rel = rel.float().flatten(2).sum(-1) if rel.ndim > 2 else rel.float()
        finally:
            self._busy = False
        return normalize_circuits(rel.detach().cpu())

    def _edit(self, _module, _inputs, output):
        if self._busy:
            return None
        if self._lower is None:
            raise PuretoolsError(f"{self.lower_layer!r} did not run before {self.layer!r} in this forward pass.")
        lower, self._lower = self._lower, None
        edited = None
        for neuron, ids in self.suppress.items():
            pos = self.vn.position(neuron)
            routes = self.vn.assign(self.circuits(lower, neuron), neuron=pos)
            hit = torch.isin(routes, torch.as_tensor(ids, dtype=torch.long))
            self.last_routes[neuron], self.last_suppressed[neuron] = routes, hit
            if hit.any():
                if edited is None:
                    edited = output.clone()
                edited[hit.to(output.device), neuron] = 0
        return edited  # None keeps the original output object

    def remove(self) -> None:
        """Remove the hooks: the model behaves as before the edit."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        self.remove()


def edit_virtual_neurons(
    model: nn.Module,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    suppress: Mapping[int, Sequence[int] | int],
    method: Method = "gradient",
) -> VirtualEdit:
    """Switch off virtual neurons: zero a neuron exactly for the inputs routed to them.

    Registers forward hooks on ``lower_layer`` and ``layer`` of ``model`` (no copy). For each
    input of a forward pass and each neuron in ``suppress``, the input's circuit is computed
    from that pass's lower-layer activations (same formula as
    :func:`puretools.circuit_attributions` with ``method``), routed to the nearest centroid,
    and if that virtual neuron is suppressed the neuron's whole activation map at ``layer`` is
    set to 0 for that input. All other inputs, and all other channels, are untouched (bit
    for bit). Use as a context manager, or call ``.remove()``.

    Parameters
    ----------
    suppress : dict neuron -> list of virtual-neuron ids (or one id)
        Neurons are channels of ``layer`` that ``vn`` was fitted for.
    method : {"gradient", "lrp"}
        How the routing circuits are computed (use the fit's method).

    Returns
    -------
    VirtualEdit
        ``with edit_virtual_neurons(...) as edited_model: ...``.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    >>> vn = VirtualNeurons().fit(torch.rand(10, 6), k=2, neurons=[1])
    >>> x = torch.randn(8, 3, 8, 8)
    >>> with edit_virtual_neurons(model, "3", "1", vn, suppress={1: [0]}) as edited:
    ...     out = edited(x)
    >>> routed = virtual_activations(model, x, "3", "1", vn)[:, 0, 0] > 0  # images routed to 0
    >>> bool((out[routed, 1] == 0).all()), torch.equal(out[~routed], model(x)[~routed])
    (True, True)
    """
    _check_fitted(vn)
    _check_method(method)
    get_module(model, layer)
    get_module(model, lower_layer)
    clean: dict[int, list[int]] = {}
    for neuron, ids in suppress.items():
        k = vn.ks[vn.position(int(neuron))]
        ids_list = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        bad = [i for i in ids_list if not 0 <= i < k]
        if bad:
            raise PuretoolsError(f"Neuron {neuron} has {k} virtual neurons (0..{k - 1}); cannot suppress {bad}.")
        clean[int(neuron)] = ids_list
    if model.training:
        prepare_model(model, resolve_device(None, model))
    return VirtualEdit(model, layer, lower_layer, vn, clean, method)
