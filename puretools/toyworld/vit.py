"""The toy ViT: a small timm vision transformer for the toy world, its MLP layer of interest, its checkpoint.

Built as timm's own ``VisionTransformer`` (fused attention, ``Block``, ``Mlp``), so whatever
puretools does for timm ViTs (token layouts, prefix tokens, LRP rules) applies to it unchanged,
and it is checked against ground truth, which no ImageNet ViT can be.

Why this layer of interest. The last block's MLP is made narrower (``layer_width = 8`` hidden
neurons) than the number of concepts (16), as the toy ResNet's ``layer4`` is, so its neurons
must share concepts (polysemantic). The head averages the patch tokens (``global_pool="avg"``,
as the ResNet's average pool), so every patch token of the last block reaches the logits and
a neuron's value on a patch token means what a CNN channel's value at a position means; with
the CLS token as the only input of the head, the last block's MLP on patch tokens would feed
nothing. The CLS token is kept (16 patch tokens + CLS = 17 tokens, ``[B, 17, C]``): it is
what real ViTs have, and it shows what token max over all tokens does with a token that
belongs to no patch. The lower layer is the residual stream entering that block
(``blocks.2``'s output, ``[B, 17, 48]``).

Why 8 px patches (a 4 x 4 grid) and not 4 px (8 x 8). The cost of a ViT grows with the number
of tokens; with 65 tokens one training step costs about 1.2 toy-ResNet steps, with 17 tokens
about 0.35, and training, references, causal labels and circuits all had to run on a 2-core
machine shared with other jobs. Objects are 8-15 px, so an object covers one to four patches.

Why a convolutional stem. With timm's linear patch embedding (one 8 x 8 convolution of stride
8) the training loss stayed near the all-absent baseline's for half of the training run (0.25
after 1,050 of 2,244 steps; the toy ResNet is below 0.25 by step 260): a shape that can sit anywhere
inside or across patches is hard to read from one linear map of the patch. As Xiao et al. (2021,
"Early convolutions help transformers see better") recommend, the patch embedding is a small
stack of stride-2 convolutions (3 x 3, GELU, 3 x 3, GELU, then a 2 x 2 projection to the token
width: still one token per 8 x 8 patch, ``patch_embed.proj``); everything after it is timm's ViT.
With that stem and a learning rate of 2e-3 the loss still sat at the base rate (0.288 at step
219), so the shipped recipe trains with 1e-3, batches of 64, and the head's bias starts at the
logit of the share of present concepts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch import nn

from ..errors import PuretoolsError
from ..models import register_model
from .model import DATA_DIR, checkpoint_config
from .world import _OBJECT_COUNTS, CONCEPTS, IMAGE_SIZE, MEAN, STD

__all__ = [
    "DEFAULT_VIT",
    "VIT_LAYER",
    "VIT_LOWER_LAYER",
    "build_vit",
    "load_toy_vit",
]

#: Default architecture of the toy ViT (see the module docstring for the choice).
DEFAULT_VIT = {"patch_size": 8, "dim": 48, "depth": 4, "heads": 3, "mlp_ratio": 2.0, "layer_width": 8, "stem_width": 24}
#: The toy ViT's layer of interest: the GELU of the last block's narrow MLP, ``[B, 17, 8]``.
VIT_LAYER = f"blocks.{DEFAULT_VIT['depth'] - 1}.mlp.act"
#: The layer below: the residual stream that enters the last block, ``[B, 17, 48]``.
VIT_LOWER_LAYER = f"blocks.{DEFAULT_VIT['depth'] - 2}"
#: Expected share of present concepts per image (1-3 objects of 16 concepts): the head's initial bias.
PRIOR = sum((i + 1) * p for i, p in enumerate(_OBJECT_COUNTS)) / len(CONCEPTS)
#: File names of the shipped toy ViT beside the toy ResNet's.
VIT_FILE, VIT_RECORD = "vit.safetensors", "vit_record.json"


def build_vit(num_concepts: int = len(CONCEPTS), **config) -> nn.Module:
    """A randomly initialised toy ViT (train mode); ``config`` overrides :data:`DEFAULT_VIT`.

    A timm ``VisionTransformer`` for 32 px images: patch embedding ``patch_size`` (8: a
    4 x 4 grid of 16 patch tokens), a CLS token, learned position embeddings, ``depth``
    pre-norm blocks of ``heads``-head attention and a GELU MLP (``mlp_ratio * dim`` hidden,
    except the last block: ``layer_width``, the layer of interest's neurons), and a linear
    head on the mean of the patch tokens (``global_pool="avg"``). Module names are timm's
    (``blocks.3.mlp.act``, ``blocks.2``, ``head``).

    Parameters
    ----------
    num_concepts : int
        Outputs of ``head`` (one logit per concept).
    **config
        ``patch_size``, ``dim``, ``depth``, ``heads`` (int), ``mlp_ratio`` (float),
        ``layer_width`` (int), ``stem_width`` (int: channels of the convolutional stem's first
        layer, doubling per layer; 0: timm's linear patch embedding); defaults :data:`DEFAULT_VIT`.

    Examples
    --------
    >>> import torch
    >>> model = build_vit(dim=24, heads=2, depth=2, layer_width=4).eval()
    >>> logits = model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))  # [batch, n_concepts]
    >>> tokens = model.blocks[1].mlp.fc1(model.forward_features(torch.zeros(2, 3, 32, 32)))
    >>> logits.shape == (2, len(CONCEPTS)), tokens.shape  # [batch, 1 CLS + 16 patches, layer_width]
    (True, torch.Size([2, 17, 4]))
    """
    from timm.layers import Mlp
    from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm

    unknown = sorted(set(config) - set(DEFAULT_VIT))
    if unknown:
        raise PuretoolsError(f"build_vit got unknown settings {unknown}; it takes {sorted(DEFAULT_VIT)}.")
    c = {**DEFAULT_VIT, **config}
    patch, dim, depth, heads, width = (int(c[k]) for k in ("patch_size", "dim", "depth", "heads", "layer_width"))
    if IMAGE_SIZE % patch or dim % heads or depth < 2 or width < 1:
        raise PuretoolsError(
            f"The toy ViT needs a patch size dividing {IMAGE_SIZE}, dim divisible by heads, depth >= 2 "
            f"and layer_width >= 1: got patch_size={patch}, dim={dim}, heads={heads}, depth={depth}, "
            f"layer_width={width}."
        )
    model = VisionTransformer(
        img_size=IMAGE_SIZE, patch_size=patch, num_classes=int(num_concepts), global_pool="avg",
        embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=float(c["mlp_ratio"]),
    )  # fmt: skip
    model.blocks[-1].mlp = Mlp(dim, width)  # GELU; the narrow layer of interest
    model.blocks[-1].mlp.apply(init_weights_vit_timm)
    # start the logits at the share of present concepts, so training need not first learn it
    nn.init.constant_(model.head.bias, math.log(PRIOR / (1 - PRIOR)))
    stem = int(c["stem_width"])
    if stem > 0:  # stride-2 convolutions instead of one linear map per patch, same token grid
        n = patch.bit_length() - 1
        if patch != 2**n or n < 2:
            raise PuretoolsError(f"A convolutional stem needs a patch size 4, 8 or 16, got {patch}; or stem_width=0.")
        layers, channels = [], 3
        for i in range(n - 1):
            layers += [nn.Conv2d(channels, stem * 2**i, 3, stride=2, padding=1), nn.GELU()]
            channels = stem * 2**i
        model.patch_embed.proj = nn.Sequential(*layers, nn.Conv2d(channels, dim, 2, stride=2))
    return model


def _vit_config(model: nn.Module) -> dict:
    dim, depth = model.embed_dim, len(model.blocks)
    return {
        "architecture": "ToyViT",
        "num_concepts": model.head.out_features,
        "patch_size": model.patch_embed.patch_size[0],
        "dim": dim,
        "depth": depth,
        "heads": model.blocks[0].attn.num_heads,
        "mlp_ratio": model.blocks[0].mlp.fc1.out_features / dim,
        "layer_width": model.blocks[-1].mlp.fc1.out_features,
        "stem_width": model.patch_embed.proj[0].out_channels if isinstance(model.patch_embed.proj, nn.Sequential) else 0,
        "global_pool": model.global_pool,
        "prefix_tokens": model.num_prefix_tokens,
        "concepts": list(CONCEPTS),
        "image_size": IMAGE_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        "layer": f"blocks.{depth - 1}.mlp.act",
        "lower_layer": f"blocks.{depth - 2}",
    }


def load_toy_vit(path: str | os.PathLike | None = None) -> nn.Module:
    """The toy ViT shipped in ``data/toyworld/vit.safetensors`` (or ``path``), in eval mode.

    The architecture is read from the file's safetensors metadata, so nothing is guessed.

    Raises
    ------
    WeightsNotFoundError
        The checkpoint is missing; the message says how to train it.

    Examples
    --------
    >>> model = load_toy_vit()
    >>> model.training, model.blocks[-1].mlp.fc1.out_features < len(CONCEPTS)  # 8 neurons, 16 concepts
    (False, True)
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DATA_DIR / VIT_FILE
    config = checkpoint_config(
        path,
        f"The toy ViT checkpoint {str(path)!r} does not exist. Train it with "
        f"`python -m puretools toy train --arch vit` (a few minutes on a CPU), which writes "
        f"{DATA_DIR / VIT_FILE}.",
    ) or {}
    if config.get("architecture") != "ToyViT":
        raise PuretoolsError(
            f"{str(path)!r} does not hold a toy ViT (its metadata says architecture "
            f"{config.get('architecture')!r}); load a toy ResNet with toyworld.load_toy_model."
        )
    model = build_vit(config["num_concepts"], **{k: config.get(k, 0) for k in DEFAULT_VIT})
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _load_registered(weights: str | os.PathLike | None) -> nn.Module:
    """``load_model("toy-vit", weights)``: the shipped checkpoint for ``"default"`` or None, else that file."""
    return load_toy_vit(None if weights in ("default", None) else weights)


register_model("toy-vit", _load_registered)
