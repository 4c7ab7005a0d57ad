"""Load a model by name, address its layers by module name, and pick its zennit canonizers."""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer

from .checks import check_module, resolve_device
from .cnn_lrp import is_modern_cnn, modern_cnn_blocks, modern_cnn_composite
from .errors import PuretoolsError, WeightsNotFoundError
from .hub import hf_cache_dir, hf_cached_files, hf_endpoint, load_pretrained, torch_hub_file
from .transformer_lrp import (
    CPLRPComposite,
    TransformerCanonizer,
    is_transformer,
    lrp_coverage,
    transformer_blocks,
)

__all__ = [
    "FORWARD_HOOK_DICTS",
    "TORCHVISION_RESNETS",
    "CanonizerReport",
    "TimmResNetCanonizer",
    "canonizer_report",
    "canonizers_for",
    "check_timm_name",
    "get_module",
    "layer_names",
    "load_model",
    "lrp_composite",
    "register_model",
    "timm_pretrained",
]

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")

#: name -> loader(weights) for models defined elsewhere in puretools; the toy world registers "toy"
#: (models.py never imports the toy world: it sits below it).
_REGISTERED: dict[str, Callable[[str | os.PathLike | None], nn.Module]] = {}


def register_model(name: str, loader: Callable[[str | os.PathLike | None], nn.Module]) -> None:
    """Make :func:`load_model` load ``name`` with ``loader(weights)``.

    ``weights`` is what ``load_model`` was given (``"default"``, None or a path). The toy world
    registers ``"toy"`` when :mod:`puretools.toyworld` is imported (``import puretools`` does).

    Examples
    --------
    >>> register_model("tiny", lambda weights: nn.Sequential(nn.Conv2d(3, 4, 3)))
    >>> load_model("tiny", weights=None)
    Sequential(
      (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
    )
    >>> del _REGISTERED["tiny"]
    """
    if not isinstance(name, str) or not name or name in TORCHVISION_RESNETS or name.startswith("timm/"):
        raise PuretoolsError(f"Cannot register a model as {name!r}: use a new, non-empty name without 'timm/'.")
    _REGISTERED[name] = loader


def load_model(
    name: str,
    weights: str | os.PathLike | None = "default",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model by name, in eval mode.

    Parameters
    ----------
    name : str
        ``"toy"`` (the toy-world ResNet shipped in ``data/toyworld``), ``"toy-vit"`` (the
        toy-world ViT shipped beside it), a torchvision
        ResNet (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``) or a timm
        model prefixed with ``"timm/"`` (``"timm/resnet50.a1_in1k"``, the paper's weights).
    weights : str, path or None
        ``"default"``: the published ImageNet weights (downloaded once into the torch
        or Hugging Face cache). ``None``: random initialisation (offline, for tests).
        A path to a ``.safetensors`` or ``.pth`` file: load that state dict (``.pth``
        files are read with ``weights_only=True``, so they cannot execute code).
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    torch.nn.Module
        The model in eval mode; its layers are addressed by module name (``"layer4"``).

    Raises
    ------
    WeightsNotFoundError
        The weights are not cached and cannot be downloaded; the message names the file
        to fetch and where to put it.

    Examples
    --------
    >>> model = load_model("resnet18", weights=None)
    >>> model.training, "layer4" in layer_names(model)
    (False, True)
    """
    device = resolve_device(device)
    if not isinstance(name, str):
        raise PuretoolsError(f"name={name!r} must be a model name (a string) such as 'toy' or 'resnet50'.")
    if name not in _REGISTERED and name not in TORCHVISION_RESNETS and not name.startswith("timm/"):
        raise PuretoolsError(
            f"Unknown model name {name!r}. Use one of {sorted(_REGISTERED) + list(TORCHVISION_RESNETS)}, "
            "or a timm name prefixed with 'timm/' such as 'timm/resnet50.a1_in1k'."
        )
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise PuretoolsError(
            f"weights={weights!r} must be 'default', None or the path of a state dict (.safetensors or .pth)."
        )
    try:
        if name in _REGISTERED:
            model = _REGISTERED[name](weights)
        elif name in TORCHVISION_RESNETS:
            model = _load_torchvision(name, weights)
        else:
            model = _load_timm(name[len("timm/") :], weights)
    except PuretoolsError:
        raise
    except Exception as err:  # a corrupt or foreign weights file: safetensors, pickle or shape errors
        if weights in ("default", None):
            raise
        raise PuretoolsError(
            f"weights={str(weights)!r} could not be loaded into {name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no message'}). Check that the file is complete and "
            "is a state dict of this architecture, or use weights='default' (published weights) or None (random)."
        ) from err
    return model.eval().to(device)


def _load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Weights file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _load_torchvision(name: str, weights) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    if weights is None:
        return builder(weights=None)
    if weights != "default":
        model = builder(weights=None)
        model.load_state_dict(_load_state_dict_file(weights))
        return model
    enum = torchvision.models.get_model_weights(name).DEFAULT
    target = torch_hub_file(enum.url)
    fetch = (
        f"download {enum.url} and put it at {target} (the torch hub cache; set TORCH_HOME to "
        f"move it), or pass weights='path/to/{target.name}', or weights=None for a randomly "
        "initialised model."
    )
    return load_pretrained(
        lambda: builder(weights=enum), what=f"torchvision {name}", url=enum.url, fetch=fetch,
        cached=lambda: [target] if target.is_file() else [], hugging_face=False,
    )


def check_timm_name(name: str) -> None:
    """A clear error for a name timm does not know, or a pretrained tag it has no weights for.

    Examples
    --------
    >>> check_timm_name("resnet50.a1_in1k")
    >>> check_timm_name("resnet50.a9_in1k")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: timm has no pretrained weights 'a9_in1k' for 'resnet50'; its tags are [...
    """
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f" Close names: {close}." if close else ""
        raise PuretoolsError(
            f"timm has no model called {arch!r}.{hint} timm.list_models() lists all names, "
            "timm.list_models('resnet*', pretrained=True) those with pretrained weights; "
            "load_model takes them as 'timm/<name>', e.g. 'timm/resnet50.a1_in1k' (the paper's)."
        )
    if tag:
        tags = [m.partition(".")[2] for m in timm.list_pretrained(arch + ".*")]
        if tag not in tags:
            raise PuretoolsError(
                f"timm has no pretrained weights {tag!r} for {arch!r}; its "
                f"tags are {tags} (timm.list_pretrained('{arch}.*'))."
            )


def timm_pretrained(name: str, create: Callable[[], nn.Module], what: str, fetch_tail: str) -> nn.Module:
    """``create()`` (a timm model with ``pretrained=True``), through :func:`puretools.hub.load_pretrained`.

    The weights come from the Hugging Face hub (most timm models) or a URL (torch hub cache).

    Examples
    --------
    Not run as a doctest (it loads or downloads weights)::

        import timm
        model = timm_pretrained("resnet18.a1_in1k", lambda: timm.create_model("resnet18.a1_in1k", pretrained=True),
                                what="timm model 'resnet18.a1_in1k'", fetch_tail="or use weights=None.")
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        files += ["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        fetch = (
            f"fetch 'model.safetensors' from the Hugging Face repository '{repo}' into the Hugging Face "
            f"cache ({hf_cache_dir()}; set HF_HOME to move it), e.g. `huggingface-cli download {repo} "
            f"model.safetensors` on a machine with network; {fetch_tail}"
        )
        return load_pretrained(
            create, what=what, url=hf_endpoint(), fetch=fetch, hugging_face=True,
            cached=lambda: hf_cached_files(repo, files),
        )
    url = getattr(cfg, "url", None) or ""
    if not url:  # weights from a local file (the config's ``file``) or none at all
        try:
            return create()
        except Exception as err:
            raise WeightsNotFoundError(f"Could not load the weights of {what} ({type(err).__name__}: {err}); {fetch_tail}") from err
    target = torch_hub_file(url)
    fetch = f"download {url} and put it at {target} (the torch hub cache; set TORCH_HOME to move it); {fetch_tail}"
    return load_pretrained(
        create, what=what, url=url, fetch=fetch, hugging_face=False,
        cached=lambda: [target] if target.is_file() else [],
    )


def _load_timm(name: str, weights) -> nn.Module:
    import timm

    check_timm_name(name)
    if weights is None:
        return timm.create_model(name, pretrained=False)
    if weights != "default":
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(_load_state_dict_file(weights))
        return model
    return timm_pretrained(
        name,
        lambda: timm.create_model(name, pretrained=True),
        what=f"timm model {name!r}",
        fetch_tail="or pass weights='path/to/model.safetensors', or weights=None for random initialisation.",
    )


def layer_names(model: nn.Module) -> list[str]:
    """Names of all named submodules, in definition order (the valid ``layer`` arguments).

    Examples
    --------
    >>> import torch.nn as nn
    >>> layer_names(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    ['0', '1']
    """
    check_module(model)
    return [name for name, _ in model.named_modules() if name]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``, or a clear error listing close valid names.

    Examples
    --------
    >>> import torch.nn as nn
    >>> get_module(nn.Sequential(nn.Conv2d(3, 4, 3)), "0")
    Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
    """
    check_module(model)
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(str(name), names, n=5)
    top = [n for n in names if "." not in n]
    hint = f" Did you mean {close}?" if close else ""
    raise PuretoolsError(
        f"The model has no layer named {name!r}.{hint} Layers are addressed by module name; "
        f"top-level ones are {top} (see puretools.models.layer_names(model) for all)."
    )


# --------------------------------------------------------------------------- canonizers


def _timm_blocks():
    try:
        from timm.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    return (BasicBlock, Bottleneck)


class TimmResNetCanonizer(AttributeCanonizer):
    """Canonizer for timm's ResNet ``BasicBlock`` and ``Bottleneck``.

    zennit's ``ResNetCanonizer`` only matches torchvision's block classes, so on timm
    models it silently canonizes none of them. This one replaces the in-place residual
    ``x += shortcut`` by a zennit ``Sum`` module, so that LRP rules see the addition.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        blocks = _timm_blocks()
        if blocks and isinstance(module, blocks):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        """Residual forward with the addition routed through ``self.canonizer_sum``."""
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        if hasattr(self, "conv3"):  # Bottleneck
            x = self.act1(x)
            x = self.conv2(x)
            x = self.bn2(x)
            x = self.drop_block(x)
            x = self.act2(x)
            x = self.aa(x)
            x = self.conv3(x)
            x = self.bn3(x)
            final_act = self.act3
        else:  # BasicBlock
            x = self.drop_block(x)
            x = self.act1(x)
            x = self.aa(x)
            x = self.conv2(x)
            x = self.bn2(x)
            final_act = self.act2
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x = self.canonizer_sum(torch.stack([shortcut, x], dim=-1))
        return final_act(x)


def _is_timm(model: nn.Module) -> bool:
    blocks = _timm_blocks()
    return bool(blocks) and any(isinstance(m, blocks) for m in model.modules())


def canonizers_for(model: nn.Module) -> list[Canonizer]:
    """The zennit canonizers that fit ``model``.

    torchvision ResNets (and the toy model, built from torchvision blocks) get
    ``ResNetCanonizer``; timm ResNets get ``SequentialMergeBatchNorm`` plus
    :class:`TimmResNetCanonizer`; vision transformers (timm, torchvision, open_clip) get
    :class:`puretools.transformer_lrp.TransformerCanonizer`; anything else gets
    ``SequentialMergeBatchNorm``.

    Examples
    --------
    >>> model = load_model("resnet18", weights=None)
    >>> [type(c).__name__ for c in canonizers_for(model)]
    ['ResNetCanonizer']
    """
    check_module(model)
    if is_transformer(model):
        return [TransformerCanonizer()]
    if is_modern_cnn(model):
        return list(modern_cnn_composite().canonizers)
    if _is_timm(model):
        return [SequentialMergeBatchNorm(), TimmResNetCanonizer()]
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


@dataclass(frozen=True)
class CanonizerReport:
    """How many residual blocks a set of canonizers rewrote, out of how many there are.

    Only the block types puretools knows are counted (torchvision and timm ResNet blocks, ViT
    blocks of timm, torchvision and open_clip). ``complete`` is False when none was recognised
    (0/0): then the report says nothing, and :func:`puretools.transformer_lrp.lrp_coverage`
    is the check that finds residual adds and normalisation layers without a rule.
    """

    residual_blocks: int
    canonized_blocks: int

    @property
    def complete(self) -> bool:
        return self.residual_blocks > 0 and self.canonized_blocks == self.residual_blocks


def _residual_blocks(model: nn.Module) -> list[nn.Module]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    classes = (BasicBlock, Bottleneck) + tuple(_timm_blocks())
    return [m for m in model.modules() if isinstance(m, classes)] + transformer_blocks(model) + modern_cnn_blocks(model)


def canonizer_report(model: nn.Module, canonizers: list[Canonizer] | None = None) -> CanonizerReport:
    """Apply ``canonizers`` (default: :func:`canonizers_for`), count rewritten blocks, undo.

    Examples
    --------
    >>> model = load_model("resnet18", weights=None)
    >>> canonizer_report(model)
    CanonizerReport(residual_blocks=8, canonized_blocks=8)
    """
    check_module(model)
    canonizers = canonizers_for(model) if canonizers is None else canonizers
    blocks = _residual_blocks(model)
    handles = []
    try:
        for canonizer in canonizers:
            handles.extend(canonizer.apply(model))
        done = sum(1 for b in blocks if hasattr(b, "canonizer_sum") or "forward" in vars(b))
    finally:
        for handle in reversed(handles):
            handle.remove()
    return CanonizerReport(residual_blocks=len(blocks), canonized_blocks=done)


#: The hook dictionaries of a torch module that run during a forward pass.
FORWARD_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                  "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")  # fmt: skip


@contextlib.contextmanager
def _hooks_set_aside(model: nn.Module):
    """Every module's forward hooks emptied for the block, then put back as they were."""
    kept = [(m, name, getattr(m, name)) for m in model.modules() for name in FORWARD_HOOK_DICTS
            if getattr(m, name, None)]  # fmt: skip
    try:
        for m, name, hooks in kept:
            setattr(m, name, type(hooks)())
        yield
    finally:
        for m, name, hooks in kept:
            setattr(m, name, hooks)


def lrp_composite(model: nn.Module) -> EpsilonPlusFlat | CPLRPComposite:
    """The LRP composite for ``model``, or an error where LRP would not conserve relevance.

    CNNs get the CRP-style ``EpsilonPlusFlat`` with the model's canonizers; vision
    transformers (timm, torchvision, open_clip) get CP-LRP,
    :class:`puretools.transformer_lrp.CPLRPComposite` (LayerNorm's std and the attention
    weights constant, identity rule on GELU, epsilon on Linear layers).

    Raises
    ------
    PuretoolsError
        If some residual add, normalisation layer or other operation of the model has no
        rule or canonizer (:func:`puretools.transformer_lrp.lrp_coverage`); the message names
        them. Use ``method="gradient"`` for such models.

    Examples
    --------
    >>> composite = lrp_composite(load_model("resnet18", weights=None))
    >>> type(composite).__name__
    'EpsilonPlusFlat'
    """
    check_module(model)
    if is_transformer(model):
        composite = CPLRPComposite()
    elif is_modern_cnn(model):  # ConvNeXt, EfficientNet, MobileNet
        composite = modern_cnn_composite()
    else:
        composite = EpsilonPlusFlat(canonizers=canonizers_for(model))
    with _hooks_set_aside(model):  # an edit's hooks (or the user's) must not run on torch.fx's proxies
        problems = lrp_coverage(model, composite)
    if problems and problems[0].startswith("<untraceable"):  # cannot check: say so, do not block
        warnings.warn(
            f"Could not check that LRP conserves relevance in this {type(model).__name__}: torch.fx cannot "
            f"trace it ({problems[0][1:-1]}). Residual adds or normalisation layers without a rule would go "
            "unnoticed; compare with method='gradient'.",
            stacklevel=2,
        )
        return composite
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise PuretoolsError(
            f"LRP on this {type(model).__name__} would not conserve relevance: no rule or canonizer covers {shown}. "
            "puretools has LRP rules for ResNets (torchvision, timm), ConvNeXt (timm), EfficientNet and MobileNetV2 "
            "(torchvision) and vision transformers (timm, torchvision, open_clip); use method='gradient' for this "
            "model, or write a canonizer for these parts."
        )
    return composite
