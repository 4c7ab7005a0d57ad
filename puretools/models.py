"""Load a model by name, address its layers by module name, and pick its zennit canonizers."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer

from .errors import PuretoolsError, WeightsNotFoundError

__all__ = [
    "TORCHVISION_RESNETS",
    "CanonizerReport",
    "TimmResNetCanonizer",
    "canonizer_report",
    "canonizers_for",
    "get_module",
    "layer_names",
    "load_model",
    "lrp_composite",
]

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def load_model(
    name: str,
    weights: str | os.PathLike | None = "default",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model by name, in eval mode.

    Parameters
    ----------
    name : str
        ``"toy"`` (the toy-world ResNet shipped in ``data/toyworld``), a torchvision
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
    if name == "toy":
        from . import toyworld

        path = None if weights in ("default", None) else weights
        model = toyworld.load_toy_model(path)
    elif name in TORCHVISION_RESNETS:
        model = _load_torchvision(name, weights)
    elif name.startswith("timm/"):
        model = _load_timm(name[len("timm/") :], weights)
    else:
        raise PuretoolsError(
            f"Unknown model name {name!r}. Use 'toy', one of {list(TORCHVISION_RESNETS)}, "
            "or a timm name prefixed with 'timm/' such as 'timm/resnet50.a1_in1k'."
        )
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
    filename = Path(enum.url).name
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return builder(weights=enum)
    except Exception as err:  # no network, proxy, partial file...
        raise WeightsNotFoundError(
            f"Could not load the ImageNet weights of {name} ({type(err).__name__}: {err}). "
            f"Download {enum.url} and put it at {target} (the torch hub cache; set TORCH_HOME "
            f"to move it), or pass weights='path/to/{filename}', or weights=None for a "
            "randomly initialised model."
        ) from err


def _load_timm(name: str, weights) -> nn.Module:
    import timm

    if weights is None:
        return timm.create_model(name, pretrained=False)
    if weights != "default":
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(_load_state_dict_file(weights))
        return model
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as err:
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        raise WeightsNotFoundError(
            f"Could not load the pretrained weights of timm model {name!r} "
            f"({type(err).__name__}: {err}). Fetch 'model.safetensors' from the Hugging Face "
            f"repository 'timm/{name}' into the Hugging Face cache ({hf_home}/hub; "
            f"e.g. `huggingface-cli download timm/{name}` on a machine with network), or pass "
            "weights='path/to/model.safetensors', or weights=None for random initialisation."
        ) from err


def layer_names(model: nn.Module) -> list[str]:
    """Names of all named submodules, in definition order (the valid ``layer`` arguments).

    Examples
    --------
    >>> import torch.nn as nn
    >>> layer_names(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    ['0', '1']
    """
    return [name for name, _ in model.named_modules() if name]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``, or a clear error listing close valid names.

    Examples
    --------
    >>> import torch.nn as nn
    >>> get_module(nn.Sequential(nn.Conv2d(3, 4, 3)), "0")
    Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
    """
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
    :class:`TimmResNetCanonizer`; anything else gets ``SequentialMergeBatchNorm``.

    Examples
    --------
    >>> model = load_model("resnet18", weights=None)
    >>> [type(c).__name__ for c in canonizers_for(model)]
    ['ResNetCanonizer']
    """
    if _is_timm(model):
        return [SequentialMergeBatchNorm(), TimmResNetCanonizer()]
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


@dataclass(frozen=True)
class CanonizerReport:
    """How many residual blocks a set of canonizers rewrote, out of how many there are."""

    residual_blocks: int
    canonized_blocks: int

    @property
    def complete(self) -> bool:
        return self.canonized_blocks == self.residual_blocks


def _residual_blocks(model: nn.Module) -> list[nn.Module]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    classes = (BasicBlock, Bottleneck) + tuple(_timm_blocks())
    return [m for m in model.modules() if isinstance(m, classes)]


def canonizer_report(model: nn.Module, canonizers: list[Canonizer] | None = None) -> CanonizerReport:
    """Apply ``canonizers`` (default: :func:`canonizers_for`), count rewritten blocks, undo.

    Examples
    --------
    >>> model = load_model("resnet18", weights=None)
    >>> canonizer_report(model)
    CanonizerReport(residual_blocks=8, canonized_blocks=8)
    """
    canonizers = canonizers_for(model) if canonizers is None else canonizers
    blocks = _residual_blocks(model)
    handles = []
    try:
        for canonizer in canonizers:
            handles.extend(canonizer.apply(model))
        done = sum(1 for b in blocks if hasattr(b, "canonizer_sum"))
    finally:
        for handle in reversed(handles):
            handle.remove()
    return CanonizerReport(residual_blocks=len(blocks), canonized_blocks=done)


def lrp_composite(model: nn.Module) -> EpsilonPlusFlat:
    """The CRP-style LRP composite: ``EpsilonPlusFlat`` with the model's canonizers.

    Examples
    --------
    >>> composite = lrp_composite(load_model("resnet18", weights=None))
    >>> type(composite).__name__
    'EpsilonPlusFlat'
    """
    return EpsilonPlusFlat(canonizers=canonizers_for(model))
