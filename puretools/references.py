"""Reference samples: the top ``n_ref`` samples of every channel by spatial max activation."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import cache, distributed
from .errors import PuretoolsError
from .models import get_module

__all__ = ["References", "collect_references", "prepare_model", "resolve_device"]


@dataclass(frozen=True)
class References:
    """Top reference samples per channel of ``layer``, best first.

    Attributes
    ----------
    indices : LongTensor [channels, n_ref]
        Data-set indices of the reference samples of each channel.
    values : Tensor [channels, n_ref]
        Their spatial max activation, descending along dim 1.
    layer : str
        The module name the references were collected at.
    """

    indices: torch.Tensor
    values: torch.Tensor
    layer: str

    @property
    def n_channels(self) -> int:
        return self.indices.shape[0]

    @property
    def n_ref(self) -> int:
        return self.indices.shape[1]


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """``device`` as a torch.device; None means the model's device. Clear error if CUDA is absent."""
    if device is None:
        if model is not None:
            for p in model.parameters():
                return p.device
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PuretoolsError(
            f"device={str(device)!r} was requested but CUDA is not available on this machine. "
            "Use device='cpu' (or leave device=None to use the model's device)."
        )
    return device


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


def _expected_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def check_images(images: torch.Tensor, model: nn.Module, first_index: int = 0) -> None:
    """Raise a clear error for wrongly shaped, grayscale/RGBA or non-finite image batches."""
    if images.ndim != 4:
        raise PuretoolsError(
            f"Expected images of shape [channels, height, width], got a batch of shape "
            f"{tuple(images.shape)}. Convert images to tensors, e.g. with "
            "torchvision.transforms.ToTensor(), in the data set's transform."
        )
    expected = _expected_in_channels(model)
    if expected is not None and images.shape[1] != expected:
        fix = (
            "convert them to RGB (PIL: image.convert('RGB'); torchvision: "
            "transforms.Grayscale(num_output_channels=3) for grayscale, or drop the alpha "
            "channel of RGBA)"
        )
        raise PuretoolsError(
            f"Images have {images.shape[1]} channel(s) but the model's first convolution expects "
            f"{expected}; {fix}."
        )
    # one reduction first: a sum is finite when every value is (barring overflow, which the
    # exact check below then clears)
    if not torch.isfinite(images.sum()) and not torch.isfinite(images).all():
        bad = (~torch.isfinite(images.flatten(1))).any(1).nonzero().flatten()
        raise PuretoolsError(
            f"Images contain NaN or Inf values (data-set indices "
            f"{[first_index + int(i) for i in bad[:5]]}). Check the files and the transform."
        )


class _Stop(Exception):
    pass


def _capture(module: nn.Module, stop: bool):
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["out"] = output
        if stop:
            raise _Stop

    return store, module.register_forward_hook(hook)


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """Output of module ``layer`` for ``images``; the forward pass stops right after it."""
    store, handle = _capture(get_module(model, layer), stop=True)
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
        return layer_output(model, layer, images)
    except RuntimeError as err:
        if any(w in str(err) for w in ("size", "shape", "Kernel", "mat1")):
            raise PuretoolsError(
                f"The model could not process images of shape {tuple(images.shape[1:])} "
                f"({err}). Resize the images to the size the model expects (224 x 224 for "
                "ImageNet ResNets, the toy world's own size for the toy model)."
            ) from err
        raise


def check_dataset(dataset: Dataset, n_ref: int | None = None) -> int:
    """Length of ``dataset``; clear errors when it is empty or smaller than ``n_ref``."""
    n = len(dataset)
    if n == 0:
        raise PuretoolsError("The data set is empty: point it at a folder or split that holds images.")
    if n_ref is not None and not 1 <= n_ref <= n:
        raise PuretoolsError(
            f"n_ref={n_ref} reference samples were asked for but the data set holds {n} "
            f"images; use 1 <= n_ref <= {n}, or a larger data set."
        )
    return n


def collect_references(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    n_ref: int = 100,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 50,
) -> References:
    """Top ``n_ref`` samples of every channel of ``layer``, ranked by spatial max activation.

    One streaming pass: each batch's per-channel maxima are merged into the running top
    ``n_ref`` with a stable sort, so memory is ``O(channels * (n_ref + batch_size))``
    whatever the data-set size. Ties go to the lower data-set index.

    Parameters
    ----------
    model : torch.nn.Module
        Switched to eval mode if it is not.
    dataset : torch.utils.data.Dataset
        Items are ``(image, ...)`` tuples (or bare image tensors).
    layer : str
        Module name, e.g. ``"layer4"``.
    n_ref : int
        Reference samples per channel (the paper uses 100).
    batch_size, num_workers : int
        Data loading.
    device : str, torch.device or None
        None: the model's device.
    cache_dir : path or None
        If given, the result is stored there as safetensors, fingerprinted by the model's
        weights, the data set, ``layer`` and ``n_ref``; a matching file is reused.
    progress : bool
        Show a tqdm progress bar.
    checkpoint_every : int
        With a ``cache_dir``, save the running state every this many batches; re-running
        the same call after an interruption continues from there and gives the same
        result as an uninterrupted run. 0 disables checkpoints.

    Returns
    -------
    References
        ``.indices`` and ``.values``, both [channels, n_ref], best first.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(50, 3, 8, 8))  # 50 images
    >>> refs = collect_references(model, data, "1", n_ref=10, batch_size=16, progress=False)
    >>> refs.indices.shape  # 4 channels, 10 references each
    torch.Size([4, 10])
    """
    if distributed.active():  # under torchrun: one shard per rank, merged (puretools/distributed/)
        return distributed.sharded_references(collect_references, locals())
    n = check_dataset(dataset, n_ref)
    device = resolve_device(device, model)
    get_module(model, layer)
    model = prepare_model(model, device)

    key = None
    if cache_dir is not None:
        key = cache.fingerprint(
            kind="references",
            model=cache.model_fingerprint(model),
            dataset=cache.dataset_fingerprint(dataset),
            layer=layer,
            n_ref=n_ref,
        )
        hit = cache.load_cached(cache_dir, "references", key)
        if hit is not None:
            return References(hit["indices"], hit["values"], layer)

    values = indices = None
    start = 0
    if key is not None and checkpoint_every:
        state = cache.load_cached(cache_dir, "references-partial", key)
        if state is not None:  # an interrupted run with the same fingerprint: continue it
            values, indices = state["values"].to(device), state["indices"].to(device)
            start = int(state["next"])
    loader = DataLoader(
        Subset(dataset, range(start, n)) if start else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(total=n, initial=start, desc=f"references @ {layer}", disable=not progress, unit="img")
    with torch.inference_mode():
        for batch_number, images in enumerate(loader, 1):
            check_images(images, model, start)
            out = forward_to(model, layer, images.to(device, non_blocking=True))
            if out.ndim < 2:
                raise PuretoolsError(f"Layer {layer!r} output has shape {tuple(out.shape)}; expected [B, C, ...].")
            batch_max = out.flatten(2).amax(-1) if out.ndim > 2 else out
            batch_max = batch_max.float().T  # [C, B]
            batch_idx = torch.arange(start, start + len(images), device=device).expand_as(batch_max)
            if values is None:
                values = torch.full((batch_max.shape[0], 0), float("-inf"), device=device)
                indices = torch.zeros((batch_max.shape[0], 0), dtype=torch.long, device=device)
            values = torch.cat([values, batch_max], 1)
            indices = torch.cat([indices, batch_idx], 1)
            order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :n_ref]
            values = values.gather(1, order)
            indices = indices.gather(1, order)
            start += len(images)
            bar.update(len(images))
            if key is not None and checkpoint_every and batch_number % checkpoint_every == 0 and start < n:
                cache.save_cached(
                    cache_dir, "references-partial", key,
                    {"values": values, "indices": indices, "next": torch.tensor(start)},
                )
    bar.close()
    assert start == n and values is not None
    result = References(indices.cpu(), values.cpu(), layer)
    if key is not None:
        cache.save_cached(
            cache_dir,
            "references",
            key,
            {"indices": result.indices, "values": result.values},
            {"layer": layer, "n_ref": n_ref, "dataset_len": n},
        )
        cache.remove_cached(cache_dir, "references-partial", key)
    return result
