"""Editing a model through virtual neurons: switch a neuron off for the inputs routed to some of them."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .checks import resolve_device
from .circuits import normalize_circuits, subnetwork
from .errors import PuretoolsError
from .forward import prepare_model
from .models import get_module, lrp_composite
from .routing import Method, _check_fitted, _check_method
from .virtual import VirtualNeurons

__all__ = ["VirtualEdit", "edit_virtual_neurons"]


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
    >>> from puretools import virtual_activations
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
