"""LRP canonizers for modern CNNs: ConvNeXt (timm), EfficientNet and MobileNet (torchvision).

Their residual adds become :func:`~puretools.transformer_lrp.lrp_sum` steps, ConvNeXt's layer
scale an :func:`~puretools.transformer_lrp.lrp_scale`, squeeze-and-excitation gates constants
(as CP-LRP treats gates: relevance passes through the product to the gated features), and
``LayerNorm2d`` the LayerNorm rule of :class:`~puretools.transformer_lrp.TransformerCanonizer`
(std constant). BatchNorms are merged into the preceding convolution by zennit's
``SequentialMergeBatchNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.rules import Pass

from .transformer_lrp import (
    TransformerCanonizer,
    _classes,
    _elementwise_activations,
    lrp_block,
    lrp_scale,
    lrp_sum,
)

# Traced (puretools.subnet cutting into a canonized block, lrp_coverage): one node each, run as themselves.
fx.wrap("lrp_sum")
fx.wrap("lrp_scale")

__all__ = ["ModernCNNCanonizer", "is_modern_cnn", "modern_cnn_blocks", "modern_cnn_composite"]


def _convnext_block_forward(self, x):
    shortcut = x
    x = self.conv_dw(x)
    if self.use_conv_mlp:
        x = self.mlp(self.norm(x))
    else:
        x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if self.gamma is not None:
        x = lrp_scale(x, self.gamma.reshape(1, -1, 1, 1))
    return lrp_sum(self.drop_path(x), self.shortcut(shortcut))


def _mbconv_forward(self, input):
    result = self.block(input)
    if self.use_res_connect:
        depth = getattr(self, "stochastic_depth", None)  # MobileNetV3's block has none
        result = lrp_sum(depth(result) if depth is not None else result, input)
    return result


def _mobilenet_v2_forward(self, x):
    return lrp_sum(x, self.conv(x)) if self.use_res_connect else self.conv(x)


def _squeeze_excitation_forward(self, input):
    with torch.no_grad():  # a detached input: zennit's hooks on the gate's layers stay out of it
        scale = self._scale(input.detach())
    return lrp_scale(input, scale)


def _mobilenet_v2_forward_impl(self, x):
    x = self.features(x)
    x = lrp_block(lambda t: torch.flatten(F.adaptive_avg_pool2d(t, (1, 1)), 1), x)
    return self.classifier(x)


def _blocks() -> dict[str, tuple[type, ...]]:
    return {
        "convnext": _classes([("timm.models.convnext", "ConvNeXtBlock")]),
        "mbconv": _classes([("torchvision.models.efficientnet", "MBConv"), ("torchvision.models.efficientnet", "FusedMBConv"),
                            ("torchvision.models.mobilenetv3", "InvertedResidual")]),  # fmt: skip
        "mobilenet_v2": _classes([("torchvision.models.mobilenetv2", "InvertedResidual")]),
        "squeeze_excitation": _classes([("torchvision.ops.misc", "SqueezeExcitation")]),
        "mobilenet_v2_model": _classes([("torchvision.models.mobilenetv2", "MobileNetV2")]),
    }


def _forwards(name: str, module: nn.Module) -> dict | None:
    blocks = _blocks()
    for kind, forward in (("convnext", _convnext_block_forward), ("mbconv", _mbconv_forward),
                          ("mobilenet_v2", _mobilenet_v2_forward), ("squeeze_excitation", _squeeze_excitation_forward)):  # fmt: skip
        if blocks[kind] and type(module) in blocks[kind]:
            return {"forward": forward.__get__(module), "puretools_cp_lrp": "container"}
    if blocks["mobilenet_v2_model"] and type(module) in blocks["mobilenet_v2_model"]:  # its average pooling
        return {"_forward_impl": _mobilenet_v2_forward_impl.__get__(module), "puretools_cp_lrp": "container"}
    return None


class ModernCNNCanonizer(AttributeCanonizer):
    """Rewrites ConvNeXt, EfficientNet and MobileNet blocks into explicit LRP steps while applied.

    Examples
    --------
    >>> import torchvision
    >>> model = torchvision.models.mobilenet_v2()
    >>> handles = ModernCNNCanonizer().apply(model)
    >>> "forward" in vars(model.features[3])  # a residual InvertedResidual block
    True
    >>> for handle in handles:
    ...     handle.remove()
    >>> "forward" in vars(model.features[3])
    False
    """

    def __init__(self) -> None:
        super().__init__(_forwards)

    def copy(self) -> ModernCNNCanonizer:
        return ModernCNNCanonizer()


def modern_cnn_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of ``model`` that :class:`ModernCNNCanonizer` rewrites."""
    blocks = _blocks()
    classes = blocks["convnext"] + blocks["mbconv"] + blocks["mobilenet_v2"]
    return [m for m in model.modules() if type(m) in classes]


def is_modern_cnn(model: nn.Module) -> bool:
    """True if ``model`` holds ConvNeXt, EfficientNet or MobileNet blocks.

    Examples
    --------
    >>> is_modern_cnn(nn.Sequential(nn.Conv2d(3, 4, 3)))
    False
    """
    return bool(modern_cnn_blocks(model))


def modern_cnn_composite(canonizers: list[Canonizer] | None = None) -> EpsilonPlusFlat:
    """``EpsilonPlusFlat`` with the modern-CNN canonizers and the identity rule on timm's activations.

    As on ResNets, the z+ rule of the convolutions drops the relevance of an output that has no
    positive contribution; depthwise convolutions (3x3 inputs per output) meet that more often
    (EfficientNet-B0 with zero biases keeps about 98% of the relevance, MobileNetV2 99.9%).
    The canonized blocks themselves conserve it exactly.

    Examples
    --------
    >>> type(modern_cnn_composite()).__name__
    'EpsilonPlusFlat'
    """
    if canonizers is None:
        canonizers = [SequentialMergeBatchNorm(), ModernCNNCanonizer(), TransformerCanonizer()]
    composite = EpsilonPlusFlat(canonizers=canonizers)
    extra = _elementwise_activations()
    if extra:
        composite.layer_map = [(extra, Pass())] + list(composite.layer_map)
    return composite
