"""Running a model up to a layer: eval mode and device, collating data-set items, forward hooks.

The helpers every engine (references, circuits, patches, routing, ...) uses to feed images
to a model and read one layer's output.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from . import cache
from .errors import PuretoolsError
from .models import get_module

__all__ = [
    "capture_output",
    "collate_images",
    "collate_with_digests",
    "forward_to",
    "layer_output",
    "prepare_model",
]


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` and switch to eval mode, saying so if the model was training."""
    if model.training:
        warnings.warn(
            "The model was in training mode; puretools switched it to eval mode "
            "(batch norm and dropout must not change the results). Call model.eval() to silence this.",
            UserWarning,
            stacklevel=3,
        )
        model.eval()
    return model.to(device)


def _first_item(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def collate_images(batch: list) -> torch.Tensor:
    """Stack the images of ``(image, ...)`` items, ignoring the rest of each item."""
    images = [_first_item(item) for item in batch]
    if not all(isinstance(im, torch.Tensor) for im in images):
        kinds = sorted({type(im).__name__ for im in images})
        raise PuretoolsError(
            f"Data-set items must start with an image tensor, got {kinds}. Add "
            "torchvision.transforms.ToTensor() (and Normalize) to the data set's transform."
        )
    sizes = sorted({tuple(im.shape) for im in images})
    if len(sizes) > 1:
        raise PuretoolsError(
            f"Images of different sizes in one batch: {sizes[:3]}. Resize and crop them to one "
            "size in the data set's transform (e.g. Resize(256) + CenterCrop(224))."
        )
    return torch.stack(images)


def collate_with_digests(batch: list) -> tuple[torch.Tensor, list[bytes]]:
    """:func:`collate_images` plus the :func:`puretools.cache.item_digest` of each item's image.

    Examples
    --------
    >>> images, digests = collate_with_digests([(torch.zeros(3, 2, 2), 0), (torch.ones(3, 2, 2), 1)])
    >>> images.shape, len(digests), digests[0] == cache.item_digest(torch.zeros(3, 2, 2))
    (torch.Size([2, 3, 2, 2]), 2, True)
    """
    images = collate_images(batch)
    return images, [cache.item_digest(cache.item_image(item, i)) for i, item in enumerate(batch)]


class _Stop(Exception):
    pass


def capture_output(module: nn.Module, stop: bool) -> tuple[dict[str, torch.Tensor], Any]:
    """Hook ``module``: its output lands in ``store["out"]``; with ``stop``, the forward pass ends there.

    Returns ``(store, handle)``; call ``handle.remove()`` when done.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["out"] = output
        if stop:
            raise _Stop

    return store, module.register_forward_hook(hook)


def layer_output(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """Output of module ``layer`` for the batch ``images``; the forward pass stops right after it.

    The arguments come in the package's order (model, data, layer). The old order
    ``layer_output(model, layer, images)`` still works for one release, with a DeprecationWarning.

    Examples
    --------
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    >>> layer_output(model, torch.zeros(2, 3, 5, 5), "1").shape
    torch.Size([2, 4, 3, 3])
    """
    if isinstance(images, str) and not isinstance(layer, str):
        warnings.warn(
            f"layer_output(model, {images!r}, images) is the old order; write layer_output(model, images, "
            f"{images!r}) (model, data, layer, as everywhere in puretools).", DeprecationWarning, stacklevel=2,
        )  # fmt: skip
        images, layer = layer, images
    store, handle = capture_output(get_module(model, layer), stop=True)
    try:
        model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in store:
        raise PuretoolsError(f"Layer {layer!r} was not called during the forward pass of the model.")
    return store["out"]


def forward_to(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """:func:`layer_output`, turning shape errors of the model into a clear message."""
    try:
        return layer_output(model, images, layer)
    except RuntimeError as err:
        if any(w in str(err) for w in ("size", "shape", "Kernel", "mat1")):
            raise PuretoolsError(
                f"The model could not process images of shape {tuple(images.shape[1:])} "
                f"({err}). Resize the images to the size the model expects (224 x 224 for "
                "ImageNet ResNets, the toy world's own size for the toy model)."
            ) from err
        raise
