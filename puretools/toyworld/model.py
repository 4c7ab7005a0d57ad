"""The toy model: a small ResNet of torchvision blocks, its layer of interest, the shipped checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import PuretoolsError, WeightsNotFoundError
from ..models import register_model
from ..resources import resource_path
from .world import CONCEPTS, IMAGE_SIZE, MEAN, STD

__all__ = [
    "DATA_DIR",
    "DEFAULT_STRIDES",
    "DEFAULT_WIDTHS",
    "LAYER",
    "LOWER_LAYER",
    "ToyResNet",
    "build_model",
    "load_toy_model",
]

#: The toy model's layer of interest (narrower than the number of concepts) and the layer below.
LAYER = "layer4"
LOWER_LAYER = "layer3"
#: Where the shipped checkpoint and its training record live: data/toyworld of the source tree,
#: shipped in the package as puretools._data (see puretools.resources).
DATA_DIR = resource_path("_data", "toyworld")

#: Default architecture: stem and layer widths, and the strides of stem, layer1..layer4.
DEFAULT_WIDTHS = (16, 32, 64, 8)
DEFAULT_STRIDES = (2, 1, 2, 1, 1)


class ToyResNet(nn.Module):
    """A small ResNet of torchvision ``BasicBlock`` s with torchvision's module names.

    ``conv1, bn1, relu, layer1, layer2, layer3, layer4, avgpool, fc`` (no max pool), one block
    per layer, so zennit's ``ResNetCanonizer`` and torch.fx apply as to torchvision ResNets.

    Parameters
    ----------
    num_concepts : int
        Outputs of ``fc`` (one logit per concept).
    widths : sequence of 4 int
        Channels of layer1..layer4 (the stem has ``widths[0]``).
    strides : sequence of 5 int
        Strides of the stem convolution and of layer1..layer4.
    """

    def __init__(
        self,
        num_concepts: int = len(CONCEPTS),
        widths: Sequence[int] = DEFAULT_WIDTHS,
        strides: Sequence[int] = DEFAULT_STRIDES,
    ) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        widths, strides = tuple(int(w) for w in widths), tuple(int(s) for s in strides)
        if len(widths) != 4 or len(strides) != 5:
            raise PuretoolsError(f"ToyResNet needs 4 widths and 5 strides: {widths}, {strides}.")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=strides[0], padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, strides[1:]), start=1):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes)
                )
            block = BasicBlock(inplanes, planes, stride, downsample)
            setattr(self, f"layer{i}", nn.Sequential(block))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_concepts)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(
    num_concepts: int = len(CONCEPTS),
    widths: Sequence[int] = DEFAULT_WIDTHS,
    strides: Sequence[int] = DEFAULT_STRIDES,
) -> nn.Module:
    """A randomly initialised :class:`ToyResNet` (train mode).

    Examples
    --------
    >>> model = build_model(widths=(8, 8, 16, 4)).eval()
    >>> logits = model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))  # [batch, n_concepts]
    >>> logits.shape == (2, len(CONCEPTS))
    True
    """
    return ToyResNet(num_concepts, widths, strides)


def _config(model: ToyResNet) -> dict:
    widths = tuple(getattr(model, f"layer{i}")[0].conv2.out_channels for i in range(1, 5))
    strides = (model.conv1.stride[0],) + tuple(
        getattr(model, f"layer{i}")[0].conv1.stride[0] for i in range(1, 5)
    )
    return {
        "architecture": "ToyResNet",
        "num_concepts": model.fc.out_features,
        "widths": list(widths),
        "strides": list(strides),
        "concepts": list(CONCEPTS),
        "image_size": IMAGE_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        "layer": LAYER,
        "lower_layer": LOWER_LAYER,
    }


def checkpoint_config(path: Path, missing: str) -> dict | None:
    """The ``config`` metadata of a toy checkpoint (None: it has none).

    Raises WeightsNotFoundError with the message ``missing`` when the file does not exist.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise WeightsNotFoundError(missing)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["config"]) if "config" in meta else None


def load_toy_model(path: str | os.PathLike | None = None) -> nn.Module:
    """The toy model shipped in ``data/toyworld/model.safetensors`` (or ``path``), in eval mode.

    The architecture is read from the file's safetensors metadata, so nothing is guessed.

    Raises
    ------
    WeightsNotFoundError
        The checkpoint is missing; the message says how to train it.

    Examples
    --------
    >>> model = load_toy_model()
    >>> model.training, model.layer4[0].conv2.out_channels < len(CONCEPTS)
    (False, True)
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DATA_DIR / "model.safetensors"
    config = checkpoint_config(
        path,
        f"The toy model checkpoint {str(path)!r} does not exist. Train it with "
        "`python -m puretools toy train` (under 2 minutes on a CPU), which writes "
        f"{DATA_DIR / 'model.safetensors'}.",
    )
    if config is None:
        raise PuretoolsError(
            f"{str(path)!r} has no 'config' metadata: it was not written by toyworld.train."
        )
    if config.get("architecture", "ToyResNet") != "ToyResNet":
        raise PuretoolsError(
            f"{str(path)!r} holds a {config['architecture']}, not a toy ResNet: load it with "
            "toyworld.load_toy_vit (or load_model('toy-vit', weights=path))."
        )
    model = build_model(config["num_concepts"], config["widths"], config["strides"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _load_registered(weights: str | os.PathLike | None) -> nn.Module:
    """``load_model("toy", weights)``: the shipped checkpoint for ``"default"`` or None, else that file."""
    return load_toy_model(None if weights in ("default", None) else weights)


register_model("toy", _load_registered)
