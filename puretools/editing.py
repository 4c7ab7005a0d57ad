"""Editing a model through virtual neurons: switch a neuron off for the inputs routed to some of them."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from copy import deepcopy

import torch
from torch import nn

from .checks import check_ids, check_int, check_virtual_neurons, resolve_device
from .circuits import normalize_circuits, subnetwork
from .errors import PuretoolsError
from .forward import prepare_model
from .layouts import Layout, layer_layout
from .models import FORWARD_HOOK_DICTS, get_module, lrp_composite
from .routing import Method, _check_fitted, _check_method
from .subnet import subnetwork_input
from .virtual import VirtualNeurons

__all__ = ["HOOK_DICTS", "VirtualEdit", "edit_virtual_neurons", "private_copy"]

#: The hook dictionaries of a torch module (what an edit must leave empty behind it).
HOOK_DICTS = (
    *FORWARD_HOOK_DICTS, "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


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
                 suppress: dict[int, list[int]], method: Method, layout: str | Layout | None = None,
                 lower_layout: str | Layout | None = None) -> None:  # fmt: skip
        self.model, self.layer, self.lower_layer, self.vn = model, layer, lower_layer, vn
        self.suppress, self.method = suppress, method
        self._given = (layout, lower_layout)
        self._layouts: tuple[Layout, Layout] | None = None  # found at the first forward pass
        self._input: torch.Tensor | None = None
        self.last_routes: dict[int, torch.Tensor] = {}
        self.last_suppressed: dict[int, torch.Tensor] = {}
        self._busy = False
        self._checked = False
        self._lower: torch.Tensor | None = None
        self._private: nn.Module | None = None
        self._sub: nn.Module | None = None
        self._versions: dict[str, tuple[torch.Tensor, int]] = {}
        self._refresh()
        self._handles: list = []
        try:
            self._handles.append(model.register_forward_pre_hook(self._keep_input))
            self._modules = (get_module(model, layer), get_module(model, lower_layer))
            self._handles.append(self._modules[1].register_forward_hook(self._keep_lower))
            # prepend: an edit of ``layer`` applies before another edit's hook keeps it as its lower layer
            self._handles.append(self._modules[0].register_forward_hook(self._edit, prepend=True))
        except BaseException:
            self.remove()
            raise

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"p:{n}": p for n, p in self.model.named_parameters()},
                **{f"b:{n}": b for n, b in self.model.named_buffers()}}  # fmt: skip

    def _weights_changed(self) -> bool:
        """Whether a weight (parameter or buffer) of the model changed since the private copy was made.

        In-place updates (an optimiser step, ``load_state_dict``) bump a tensor's version; a tensor
        replaced wholesale (``conv.weight = nn.Parameter(...)``, a replaced submodule) is another
        object under the same name. An LRP composite's canonizers, which swap ``.data`` and add
        zero biases where a layer had none for the length of a call, do neither (new names are
        not compared): no copy is made then.
        """
        now = self._tensors()
        return any(now.get(name) is not t or t._version != v for name, (t, v) in self._versions.items())

    def _refresh(self) -> None:
        """(Re)build the private copy of the model that the routing circuits are computed on.

        The circuits never run on ``model`` itself: an LRP composite of the edit registered on
        the model while another one is (an LRP call inside the ``with`` block, a nested edit)
        would stack canonizers on the same modules, and a gradient edit inside an LRP call
        would see that call's rules. The copy has no hooks and no replaced ``forward``; it is
        rebuilt when the model's weights change in place (e.g. an optimiser step).
        """
        with torch.inference_mode(False):  # the copy's weights must be usable by autograd
            self._private = private_copy(self.model)
            self._sub = subnetwork(self._private, self.layer, self.lower_layer)
        self._versions = {name: (t, t._version) for name, t in self._tensors().items()}

    def _keep_input(self, _module, inputs) -> None:
        if not self._busy:
            for name, module in ((self.layer, self._modules[0]), (self.lower_layer, self._modules[1])):
                if get_module(self.model, name) is not module:
                    raise PuretoolsError(
                        f"The module {name!r} was replaced inside the `with edit_virtual_neurons(...)` block: "
                        "the edit's hooks are on the old module, so this forward pass would not be edited. "
                        "Replace modules before the edit (or leave the block and edit again)."
                    )
        if not self._busy and self._layouts is None and inputs and isinstance(inputs[0], torch.Tensor):
            self._input = inputs[0].detach()

    def layouts(self) -> tuple[Layout, Layout]:
        """The layouts of ``layer`` and ``lower_layer`` (found by a forward pass of the first input)."""
        if self._layouts is None:
            given = self._given
            if self._input is None and not all(isinstance(g, Layout) for g in given):
                raise PuretoolsError("The layouts of the edited layers are not known yet: run the model once.")
            # on the private hook-free copy: a pass on the model would run other edits' hooks (nested edits)
            assert self._private is not None
            busy, self._busy = self._busy, True
            try:
                x = self._input[:2] if self._input is not None else None
                if x is not None:
                    x = x.to(next(self._private.parameters(), x).device)
                self._layouts = (layer_layout(self._private, self.layer, x, given[0]),
                                 layer_layout(self._private, self.lower_layer, x, given[1]))  # fmt: skip
            finally:
                self._busy = busy
                self._input = None
        return self._layouts

    def _keep_lower(self, _module, _inputs, output) -> None:
        if not self._busy:
            self._lower = output.detach().clone()  # safe from in-place ops further up

    def circuits(self, lower: torch.Tensor, neuron: int) -> torch.Tensor:
        """Circuits [M, C_lower] of ``neuron`` from the lower-layer activations ``lower``."""
        if self._weights_changed():
            self._refresh()
        assert self._private is not None and self._sub is not None
        device = lower.device
        if any(p.device != device for p in self._private.parameters()):
            self._private.to(device)
        lay_top, lay_low = self.layouts()  # before the composite: its forward pass runs on the model
        composite = lrp_composite(self._private) if self.method == "lrp" else None
        self._busy = True
        try:
            with torch.inference_mode(False), torch.enable_grad(), (
                composite.context(self._private) if composite else contextlib.nullcontext()
            ):
                x = lower.detach().clone().requires_grad_(True)
                y = self._sub(x)
                grad_out = torch.zeros_like(y)  # relu(a_k) on every position (token) of channel k
                lay_top.to_channels(grad_out)[:, neuron] = lay_top.to_channels(y.detach())[:, neuron].clamp(min=0)
                (grad,) = torch.autograd.grad(y, x, grad_out)
                rel = grad * x.detach() if self.method == "gradient" else grad
                # summed over positions (CNNs: exactly rel.float().flatten(2).sum(-1))
                rel = lay_low.to_channels(rel.float()).sum(-1) if rel.ndim > 2 else rel.float()
        finally:
            self._busy = False
        return normalize_circuits(rel.detach().cpu())

    def _edit(self, _module, _inputs, output):
        if self._busy:
            return None
        lower, self._lower = self._lower, None
        sub_input = subnetwork_input(self.model, self.lower_layer)
        if sub_input is not None:  # a pass that starts at the lower layer (e.g. circuit_attributions)
            lower = sub_input.detach()
        if lower is None or len(lower) != len(output):
            raise PuretoolsError(
                f"The edit of {self.layer!r} routes each input by its circuit from {self.lower_layer!r}, but "
                f"{self.lower_layer!r} did not run before {self.layer!r} in this forward pass (a pass that starts "
                "between the two layers?). Run that computation outside the `with edit_virtual_neurons(...)` block, "
                "or edit with a lower_layer that the pass runs."
            )
        if not self._checked:
            lay_top, lay_low = self.layouts()
            check_virtual_neurons(self.vn, self.layer, self.lower_layer, lay_top.channels(output),
                                  lay_low.channels(lower))  # fmt: skip
            self._checked = True
        edited = None
        for neuron, ids in self.suppress.items():
            pos = self.vn.position(neuron)
            routes = self.vn.assign(self.circuits(lower, neuron), neuron=pos)
            hit = torch.isin(routes, torch.as_tensor(ids, dtype=torch.long))
            self.last_routes[neuron], self.last_suppressed[neuron] = routes, hit
            if hit.any():
                if edited is None:
                    edited = output.clone()
                self.layouts()[0].to_channels(edited)[hit.to(output.device), neuron] = 0
        return edited  # None keeps the original output object

    def remove(self) -> None:
        """Remove the hooks: the model behaves as before the edit. Safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._lower = None

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        self.remove()  # whatever happened inside: exceptions propagate, the hooks go


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without any hook or replaced ``forward`` (zennit's canonizers
    replace some), whatever is registered on ``model`` now; its weights are copies too.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = model[0].register_forward_hook(lambda *a: None)
    >>> copy = private_copy(model)
    >>> len(model[0]._forward_hooks), len(copy[0]._forward_hooks), torch.equal(copy[0].weight, model[0].weight)
    (1, 0, True)
    """
    memo: dict[int, object] = {}
    for module in model.modules():  # the copy gets empty hook dictionaries, not copies of these
        for name in HOOK_DICTS:
            hooks = module.__dict__.get(name)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)()
    with torch.no_grad():
        copy = deepcopy(model, memo)
    for module in copy.modules():
        module.__dict__.pop("forward", None)
    return copy.eval()


def edit_virtual_neurons(
    model: nn.Module,
    layer: str,
    lower_layer: str,
    vn: VirtualNeurons,
    suppress: Mapping[int, Sequence[int] | int],
    method: Method = "gradient",
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
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
    layout, lower_layout : str, Layout or None
        The layouts of ``layer`` and ``lower_layer`` (:func:`puretools.layouts.layer_layout`);
        None: found by a forward pass of the first input. For a transformer layer the neuron
        (a feature) is zeroed on every token.

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
    check_virtual_neurons(vn, layer, lower_layer)
    if not isinstance(suppress, Mapping):
        raise PuretoolsError(
            f"suppress={suppress!r} must be a dict neuron -> virtual-neuron ids, e.g. suppress={{{vn.neurons[0]}: [0]}}."
        )
    if not suppress:
        raise PuretoolsError("suppress={} is empty; name at least one neuron and its virtual neurons, "
                             f"e.g. suppress={{{vn.neurons[0]}: [0]}}.")  # fmt: skip
    clean: dict[int, list[int]] = {}
    for neuron, ids in suppress.items():
        n = check_int(neuron, "suppress key (a neuron)")
        if n not in vn.neurons:
            raise PuretoolsError(
                f"suppress names neuron {n}, which vn was not fitted for; its neurons are {vn.neurons}."
            )
        k = vn.ks[vn.position(n)]
        clean[n] = check_ids(ids, f"suppress[{n}]", k, what=f"virtual neurons of neuron {n}")
    if model.training:
        prepare_model(model, resolve_device(None, model))
    return VirtualEdit(model, layer, lower_layer, vn, clean, method, layout, lower_layout)
