"""The part of a model between two layers (torch.fx), the working memory of its backward, precisions."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import warnings
from typing import Literal

import torch
from torch import fx, nn

from .checks import check_images, resolve_device
from .errors import PuretoolsError
from .forward import forward_to
from .models import get_module
from .transformer_lrp import _MARK, _lrp_step

__all__ = ["Subnetwork", "memory_plan", "subnetwork", "subnetwork_input", "tf32_matmuls"]

Precision = Literal["float32", "tf32", "bfloat16"]


class _LeafTracer(fx.Tracer):
    """Traces through containers of the two named layers and keeps every other module whole.

    Whole modules keep their zennit hooks and canonized forwards working in the subnetwork.
    """

    def __init__(self, targets: tuple[str, ...]) -> None:
        super().__init__()
        self.targets = targets

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not (qualname == "" or any(t.startswith(qualname + ".") for t in self.targets))


def _optional_arguments(model: nn.Module) -> dict[str, object]:
    """The arguments of ``model.forward`` that have a default: never part of the model's input."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters[1:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def subnetwork(model: nn.Module, layer: str, lower_layer: str, cut: str | None = None) -> Subnetwork:
    """The part of ``model`` that maps the output of ``lower_layer`` to the output of ``layer``.

    Built by tracing the model with torch.fx and keeping only the nodes between the two
    layers. The returned module shares its parameters (and hooks) with ``model``. Optional
    arguments of ``model.forward`` (timm's ``attn_mask=None``) are fixed at their defaults and
    never count as the model's input.

    The modules holding ``layer`` or ``lower_layer`` (a residual block that ``layer`` lies
    inside) run as traced code, not as modules. When a canonizer replaces one of their forwards
    (an LRP composite's context: the block's residual add becomes an LRP sum), the part is
    traced again on its next call, so that it always computes what the model computes at that
    moment: under LRP, relevance splits at the residual add as it does in the whole model.

    With ``cut``: the part that maps the output of the layer ``cut`` to the output of ``layer``,
    returning ``(layer output, lower_layer output)``, for a ``lower_layer`` that lies between
    them but that ``layer`` also reaches around (inside a residual block, e.g.
    ``lower_layer='blocks.4.mlp.act'`` for ``layer='blocks.5.mlp.act'`` with
    ``cut='blocks.3'``). A backward pass from ``layer`` to ``cut`` is then exact, and the
    relevance passing ``lower_layer`` can be read on the way (as zennit-crp does).

    The arguments follow the house order (model, data, layer, lower_layer, references). Until
    release 0.2 they were ``(model, lower_layer, layer)``: a call in that order (``lower_layer``
    runs before ``layer``, which the other order can never satisfy) still works, with a
    DeprecationWarning.

    Raises
    ------
    PuretoolsError
        If ``layer`` does not depend on ``lower_layer``, or also depends on the input through
        a path that skips ``lower_layer`` (then a circuit from ``lower_layer`` alone is not
        defined; the message names a ``cut`` that works), or the model cannot be traced; with
        ``cut``, if ``layer`` depends on the input around ``cut`` or ``lower_layer`` does not lie
        between them.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    >>> sub = subnetwork(model, "2", "0")  # layer "2", lower_layer "0"
    >>> sub(torch.randn(1, 4, 6, 6)).shape
    torch.Size([1, 2, 4, 4])
    """
    get_module(model, layer)
    get_module(model, lower_layer)
    if cut is not None:
        get_module(model, cut)
    if layer == lower_layer:
        raise PuretoolsError(f"layer and lower_layer are both {layer!r}; lower_layer must be a layer below layer.")
    if cut in (layer, lower_layer):
        raise PuretoolsError(f"cut={cut!r} must be a layer below lower_layer={lower_layer!r}, not one of the two layers.")
    part, layer, lower_layer = _trace_part(model, layer, lower_layer, cut)
    return Subnetwork(model, part, layer, lower_layer, cut)


class Subnetwork(nn.Module):
    """The part of a model between two layers, from :func:`subnetwork`: lower-layer output in,
    ``layer``'s output out (with a ``cut``: the cut's output in, both outputs out).

    ``part`` is the torch.fx graph module. Before each call the forwards of the modules it
    was traced through (the model and the containers of the layers) are compared with those
    it was traced with; if a canonizer changed one since, the part is traced again.
    """

    def __init__(self, model: nn.Module, part: fx.GraphModule, layer: str, lower_layer: str, cut: str | None) -> None:
        super().__init__()
        self.part = part
        self.layer, self.lower_layer, self.cut = layer, lower_layer, cut
        object.__setattr__(self, "_model", model)  # not a submodule: its parameters are the part's
        names = (layer, lower_layer) if cut is None else (layer, lower_layer, cut)
        self._traced_through = [m for q, m in model.named_modules() if q == "" or any(t.startswith(q + ".") for t in names)]
        self._forwards = _forwards(self._traced_through)
        if cut is None:
            # while it runs, edits of ``layer`` (puretools.editing) read the lower-layer input from here:
            # ``lower_layer`` itself does not run in this pass (with a cut it does, and its hooks see it)
            self.register_forward_pre_hook(lambda _m, args: _enter_pass(model, lower_layer, args[0]))
            self.register_forward_hook(lambda *_: _leave_pass(), always_call=True)

    @property
    def cuts_into(self) -> list[str]:
        """The modules with a forward of their own (residual blocks, not containers such as
        ``nn.Sequential``) that the part cuts into: those whose canonized forward it follows."""
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        names = {id(m): n for n, m in self._model.named_modules()}
        return [names[id(m)] for m in self._traced_through[1:] if not isinstance(m, containers)]

    @property
    def code(self) -> str:
        """The Python code of the traced part."""
        return self.part.code

    def forward(self, lower: torch.Tensor):
        forwards = _forwards(self._traced_through)
        if len(forwards) != len(self._forwards) or any(a is not b for a, b in zip(forwards, self._forwards)):
            self.part = _trace_part(self._model, self.layer, self.lower_layer, self.cut)[0]
            self._forwards = forwards
        return self.part(lower)


def _forwards(modules: list[nn.Module]) -> list[object]:
    """What decides the code traced through ``modules``: their callable instance attributes (a
    canonizer's forward, timm's ``_pos_embed``) and their submodules (zennit's ``canonizer_sum``).
    Kept alive in the list, so comparing by identity is safe."""
    found: list[object] = []
    for module in modules:
        found.append(module)
        found.extend(v for k, v in vars(module).items() if callable(v) and not isinstance(v, nn.Module))
        found.extend(module._modules.values())
    return found


def _trace_part(model: nn.Module, layer: str, lower_layer: str, cut: str | None) -> tuple[fx.GraphModule, str, str]:
    """The traced part of :func:`subnetwork` with the model's current forwards, and (layer, lower_layer)
    in the house order."""
    names = (layer, lower_layer) if cut is None else (layer, lower_layer, cut)
    for name, module in model.named_modules():
        if vars(module).get(_MARK) == "leaf" and any(t.startswith(name + ".") for t in names):
            inside = [t for t in names if t.startswith(name + ".")]
            raise PuretoolsError(
                f"{inside[0]!r} lies inside {name!r} ({type(module).__name__}), which LRP treats as one step "
                f"(its canonizer computes it without calling {inside[0]!r}): pick a layer outside {name!r} "
                "or use method='gradient'."
            )
    optional = _optional_arguments(model)
    try:
        try:  # optional arguments (timm's attn_mask=None, is_causal=False) fixed at their defaults
            graph = _LeafTracer(names).trace(model, concrete_args=optional or None)
        except Exception:
            if not optional:
                raise
            graph = _LeafTracer(names).trace(model)
    except Exception as err:
        raise PuretoolsError(
            f"Could not trace the model with torch.fx to cut out the part between {lower_layer!r} "
            f"and {layer!r} ({type(err).__name__}: {err}). Data-dependent control flow in "
            "forward() prevents tracing; wrap that code in a module."
        ) from err
    # Only arguments without a default are the model's input; an optional argument that is
    # still in the graph (tracing with it fixed failed) is its default in the subnetwork.
    defaults = {n: optional[n.target] for n in graph.nodes if n.op == "placeholder" and n.target in optional}
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target in names]
    for name in names:
        count = sum(1 for n in calls if n.target == name)
        if count != 1:
            raise PuretoolsError(f"Layer {name!r} is called {count} times in forward(); it must be called exactly once.")
    nodes = {n.target: n for n in calls}
    top, low = nodes[layer], nodes[lower_layer]
    position = {n: i for i, n in enumerate(graph.nodes)}
    if position[low] > position[top]:  # the order before 0.2: (model, lower_layer, layer)
        warnings.warn(
            f"subnetwork(model, {layer!r}, {lower_layer!r}): {layer!r} runs before {lower_layer!r}, so they "
            f"were given in the old order (lower_layer, layer). The order is now subnetwork(model, layer, "
            f"lower_layer), like every puretools function: call subnetwork(model, {lower_layer!r}, {layer!r}). "
            "The old order stops working in the next release.",
            DeprecationWarning,
            stacklevel=3,
        )
        layer, lower_layer, top, low = lower_layer, layer, low, top
    bottom = low if cut is None else nodes[cut]
    needed, reached, skips = _between(top, bottom, defaults)
    if cut is not None:
        if skips or not reached:
            raise PuretoolsError(
                f"cut={cut!r} is not a cut below {layer!r}: the output of {layer!r} "
                + ("also depends on the model input around it." if skips else f"does not depend on {cut!r}.")
                + " Pick the layer whose output is the only input of the part holding both layers "
                "(for ViTs the residual stream before lower_layer's block, e.g. cut='blocks.3' for "
                "lower_layer='blocks.4.mlp.act')."
            )
        if low not in needed:
            raise PuretoolsError(
                f"lower_layer={lower_layer!r} does not lie between cut={cut!r} and layer={layer!r}: pick a "
                "cut below lower_layer that all of layer's input passes through."
            )
    elif skips:
        found = _find_cut(graph, top, low, position, defaults)
        hint = f" Or read the relevance at {lower_layer!r} on the way to a cut below it: cut={found!r}." if found else ""
        raise PuretoolsError(
            f"The output of {layer!r} also depends on the model input through a path that "
            f"skips {lower_layer!r}, so a circuit from {lower_layer!r} alone is not defined. "
            f"Pick as lower_layer the layer directly feeding {layer!r} (for ResNets: "
            "layer='layer4', lower_layer='layer3'; for vision transformers the residual stream "
            "after the previous block: layer='blocks.5.mlp.act', lower_layer='blocks.4')." + hint
        )
    elif not reached:
        raise PuretoolsError(
            f"The output of {layer!r} does not depend on {lower_layer!r}: lower_layer must be a "
            f"layer below layer (e.g. layer='layer4', lower_layer='layer3')."
        )
    steps = [n for n in needed if n.op == "call_function" and n.target is _lrp_step]
    if steps:  # only while a canonizer is applied: a step it wrote as one function of its input
        stack = list((steps[0].meta.get("nn_module_stack") or {"": ("the model's forward", None)}).values())
        raise PuretoolsError(
            f"Between {lower_layer!r} and {layer!r} lies an LRP step that cannot be cut into ({stack[-1][0] or 'the model'}: "
            "a position embedding, pooling or projection that LRP treats as one step): pick layers above or below it, "
            "or use method='gradient'."
        )
    sub = fx.Graph()
    # A copy of the input, so that an in-place op right after the input layer (torchvision's
    # ReLU(inplace=True)) modifies the copy, not the leaf tensor autograd differentiates by.
    env: dict[fx.Node, object] = {bottom: sub.call_function(torch.clone, (sub.placeholder("lower"),))}
    env.update(defaults)
    for node in graph.nodes:
        if node in needed:
            env[node] = sub.node_copy(node, lambda n: env[n])
    sub.output(env[top] if cut is None else (env[top], env[low]))
    return fx.GraphModule(model, sub, class_name="SubnetworkPart"), layer, lower_layer


def _between(top: fx.Node, bottom: fx.Node, defaults: dict) -> tuple[set[fx.Node], bool, bool]:
    """The nodes ``top`` needs above ``bottom``; whether it reaches ``bottom``; whether it reaches the input."""
    needed: set[fx.Node] = set()
    stack = [top]
    reached = skips = False
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        for parent in node.all_input_nodes:
            if parent is bottom:
                reached = True
            elif parent in defaults:
                continue
            elif parent.op == "placeholder":
                skips = True
            else:
                stack.append(parent)
    return needed, reached, skips


def _find_cut(graph: fx.Graph, top: fx.Node, low: fx.Node, position: dict, defaults: dict) -> str | None:
    """The nearest module below ``low`` whose output is all that ``top`` depends on (None: none)."""
    for node in sorted(position, key=position.get, reverse=True):
        if node.op != "call_module" or position[node] >= position[low]:
            continue
        needed, reached, skips = _between(top, node, defaults)
        if reached and not skips and low in needed:
            return str(node.target)
    return None


_PASSES: contextvars.ContextVar[tuple[tuple[nn.Module, str, torch.Tensor], ...]] = contextvars.ContextVar(
    "puretools_subnetwork_passes", default=()
)


def _enter_pass(model: nn.Module, lower_layer: str, lower: torch.Tensor) -> None:
    _PASSES.set((*_PASSES.get(), (model, lower_layer, lower)))


def _leave_pass() -> None:
    _PASSES.set(_PASSES.get()[:-1])


def subnetwork_input(model: nn.Module, lower_layer: str) -> torch.Tensor | None:
    """The input of the innermost running :func:`subnetwork` pass of ``model`` that starts at
    ``lower_layer`` (the output of that layer it was given), or None outside such a pass.

    Examples
    --------
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> seen = []
    >>> _ = model[2].register_forward_hook(lambda *_: seen.append(subnetwork_input(model, "0")))
    >>> _ = subnetwork(model, "2", "0")(torch.ones(1, 4, 2, 2))
    >>> seen[0].shape, subnetwork_input(model, "0") is None
    (torch.Size([1, 4, 2, 2]), True)
    """
    for owner, name, lower in reversed(_PASSES.get()):
        if owner is model:
            return lower if name == lower_layer else None
    return None


def _precision_context(precision: str, device: torch.device):
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "tf32":
        return tf32_matmuls(True)
    raise PuretoolsError(f"precision must be 'float32', 'tf32' or 'bfloat16', not {precision!r}.")


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN convolutions inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def memory_plan(
    model: nn.Module,
    example: torch.Tensor,
    layer: str,
    lower_layer: str,
    max_memory: float,
    precision: Precision = "float32",
    device: str | torch.device | None = None,
) -> dict[str, int]:
    """The largest ``batch_size`` and ``image_chunk`` whose working memory fits ``max_memory``.

    Measured on one ``example`` image [3, H, W]: the tensors autograd saves for the backward
    of the subnetwork per row (from 1 and 3 rows, so the weights do not count), plus the row's
    input, gradients and output, with a 1.5x margin for the backward's temporaries; and per
    image of a chunk, the image, its lower-layer activations (twice) and three times the
    largest activation on the way up to ``lower_layer``. A third of ``max_memory`` goes to the
    image chunk, two thirds to the batch of rows. The model's weights and the result (on the
    CPU) are not part of the budget.

    Parameters
    ----------
    max_memory : float
        GiB of device memory for the working tensors.

    Returns
    -------
    dict
        ``batch_size``, ``image_chunk``, ``bytes_per_row`` and ``bytes_per_image``.

    Raises
    ------
    PuretoolsError
        If not even one row and one image fit.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU()).eval()
    >>> plan = memory_plan(model, torch.randn(3, 32, 32), "3", "1", max_memory=0.01)
    >>> plan["batch_size"] >= 1 and plan["image_chunk"] >= 1
    True
    """
    if not max_memory > 0:
        raise PuretoolsError(f"max_memory is in GiB and must be positive, not {max_memory!r}.")
    device = resolve_device(device, model)
    sub = subnetwork(model, layer, lower_layer)
    x = check_images(example[None], model).to(device)
    largest = [0]

    def track(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(track) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode(), _precision_context(precision, device):
            low = forward_to(model, lower_layer, x)
    finally:
        for h in handles:
            h.remove()
    low = low.clone()

    def saved(n: int) -> tuple[int, torch.Tensor]:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        rows = low.expand(n, *low.shape[1:]).clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _precision_context(precision, device):
            out = sub(rows)
        return total[0], out

    s1, _ = saved(1)
    s3, out = saved(3)
    per_row = 1.5 * ((s3 - s1) / 2 + 3 * low[0].numel() * 4 + 3 * out[0].numel() * 4)
    per_image = example.numel() * 4 + 2 * low[0].numel() * 4 + 3 * largest[0]
    budget = max_memory * 2**30
    batch_size, image_chunk = int(budget * 2 / 3 // per_row), int(budget / 3 // per_image)
    if batch_size < 1 or image_chunk < 1:
        raise PuretoolsError(
            f"max_memory={max_memory} GiB is too small: one row of the subnetwork needs about "
            f"{per_row / 2**20:.1f} MiB and one image {per_image / 2**20:.1f} MiB. Raise max_memory "
            f"to at least {3 * max(per_row / 2, per_image) / 2**30:.3g} GiB."
        )
    return {"batch_size": batch_size, "image_chunk": image_chunk,
            "bytes_per_row": int(per_row), "bytes_per_image": int(per_image)}  # fmt: skip
