"""Reference samples: the top ``n_ref`` samples of every channel by spatial max activation."""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import cache, distributed
from .checks import check_activations, check_called_once, check_images, check_int, resolve_device
from .errors import PuretoolsError
from .models import get_module

__all__ = [
    "References",
    "check_neurons",
    "check_references",
    "collect_references",
    "prepare_model",
    "resolve_device",
]


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
    channels : int or None
        The layer's channel count when they were collected (None: unknown, e.g. made by hand).
    dataset : str or None
        :func:`puretools.cache.dataset_fingerprint` of the data set they index into (None:
        unknown). :func:`check_references` compares it with the data set of a call.
    """

    indices: torch.Tensor
    values: torch.Tensor
    layer: str
    channels: int | None = None
    dataset: str | None = None

    @property
    def n_channels(self) -> int:
        return self.indices.shape[0]

    @property
    def n_ref(self) -> int:
        return self.indices.shape[1]


def check_neurons(
    neurons: int | Sequence[int] | torch.Tensor | None, n_channels: int, layer: str | None = None
) -> torch.Tensor:
    """``neurons`` as a LongTensor [N] of distinct channel indices; None means all channels.

    Raises
    ------
    PuretoolsError
        For an empty list, a non-integer, a repeated or an out-of-range neuron, naming it.

    Examples
    --------
    >>> check_neurons([2, 0], 4)
    tensor([2, 0])
    >>> check_neurons([1.7], 4)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: neurons[0] = 1.7 is not an integer: neurons are channel indices of the layer (0..3).
    """
    where = f"layer {layer!r}" if layer is not None else "the layer"
    if neurons is None:
        return torch.arange(n_channels)
    if isinstance(neurons, torch.Tensor):
        items = neurons.reshape(-1).tolist() if neurons.dtype != torch.bool else [bool(v) for v in neurons.reshape(-1)]
    elif isinstance(neurons, (numbers.Number, np.generic)) or isinstance(neurons, (str, bytes)):
        items = [neurons]
    else:
        try:
            items = [v.item() if isinstance(v, (torch.Tensor, np.generic)) and v.ndim == 0 else v for v in neurons]
        except TypeError:
            raise PuretoolsError(f"neurons must be None, an int or a sequence of ints, not {neurons!r}.") from None
    if not items:
        raise PuretoolsError(
            "neurons is empty, so there is nothing to compute: pass the channel indices to use "
            "(e.g. neurons=[0, 3]) or neurons=None for all channels."
        )
    seen: dict[int, int] = {}
    for position, value in enumerate(items):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise PuretoolsError(
                f"neurons[{position}] = {value!r} is not an integer: neurons are channel indices of "
                f"{where} (0..{n_channels - 1})."
            )
        if not 0 <= value < n_channels:
            raise PuretoolsError(
                f"neurons[{position}] = {value} is out of range: {where} has {n_channels} channels, so "
                f"neurons must lie in 0..{n_channels - 1}."
            )
        if int(value) in seen:
            raise PuretoolsError(
                f"neurons[{position}] = {value} repeats neurons[{seen[int(value)]}]; list each neuron once."
            )
        seen[int(value)] = position
    return torch.tensor([int(v) for v in items], dtype=torch.long)


def _layer_channels(model: nn.Module, layer: str, dataset: Dataset) -> int | None:
    """Channel count of ``layer``'s output, from one forward pass of image 0 (checked first)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        out = forward_to(model, layer, check_images(collate_images([dataset[0]]), model, 0).to(device))
    return int(out.shape[1]) if out.ndim >= 2 else None


def check_references(
    references: References | torch.Tensor,
    dataset: Dataset | None = None,
    layer: str | None = None,
    neurons: int | Sequence[int] | torch.Tensor | None = None,
    model: nn.Module | None = None,
    dataset_fingerprint: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``references`` (and ``neurons``) against the call that uses them.

    Every function that takes references calls this. Checked: the shape [channels, n_ref]
    and integer dtype; for :class:`References`, that they were collected at ``layer``, with
    the layer's channel count, on this data set (same :func:`puretools.cache.dataset_fingerprint`;
    a data set that is read once for this when it is neither tensors nor an image folder); with
    ``model``, that ``layer`` has as many channels as the references have rows (one image is
    forwarded); that every index lies in the data set; and ``neurons`` (:func:`check_neurons`).

    Parameters
    ----------
    references : References or LongTensor [channels, n_ref]
    dataset : Dataset or None
        The call's data set; None skips the data-set checks.
    layer : str or None
        The call's layer.
    neurons : int, sequence of int, LongTensor or None
        Channels of ``layer``; None means all.
    model : torch.nn.Module or None
        With ``dataset`` and ``layer``: check the layer's channel count.
    dataset_fingerprint : str or None
        The data set's fingerprint if the caller already has it.

    Returns
    -------
    indices : LongTensor [channels, n_ref]
    neurons : LongTensor [N]

    Raises
    ------
    PuretoolsError
        Naming the mismatch: another layer, another channel count, another data set, an index
        out of range, or a bad neuron.

    Examples
    --------
    >>> refs = References(torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2), "layer3")
    >>> check_references(refs, layer="layer4")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: These references were collected at layer 'layer3' but this call is for layer 'layer4'. Collect references at 'layer4': collect_references(model, dataset, 'layer4').
    """
    is_refs = isinstance(references, References)
    idx = references.indices if is_refs else references
    try:
        idx = torch.as_tensor(idx)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PuretoolsError(f"references must be References or a LongTensor [channels, n_ref] ({err}).") from None
    if idx.ndim != 2:
        raise PuretoolsError(
            f"references must be References or a LongTensor [channels, n_ref]; got shape {tuple(idx.shape)}."
        )
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise PuretoolsError(f"references must hold integer data-set indices, got dtype {idx.dtype}.")
    idx = idx.long()
    if is_refs and layer is not None and references.layer != layer:
        raise PuretoolsError(
            f"These references were collected at layer {references.layer!r} but this call is for layer "
            f"{layer!r}. Collect references at {layer!r}: collect_references(model, dataset, {layer!r})."
        )
    if is_refs and references.channels is not None and references.channels != idx.shape[0]:
        raise PuretoolsError(
            f"These references hold {idx.shape[0]} rows but their layer {references.layer!r} had "
            f"{references.channels} channels; pass all rows (select channels with neurons=...)."
        )
    if dataset is not None:
        n = len(dataset)
        bad = ((idx < 0) | (idx >= n)).nonzero()
        if len(bad):
            c, r = (int(v) for v in bad[0])
            raise PuretoolsError(
                f"Reference {r} of channel {c} is data-set index {int(idx[c, r])} but the data set holds {n} "
                f"images (0..{n - 1}): were the references collected on another data set?"
            )
        if model is not None and layer is not None:
            channels = _layer_channels(model, layer, dataset)
            if channels is not None and channels != idx.shape[0]:
                raise PuretoolsError(
                    f"The references have {idx.shape[0]} rows (channels) but layer {layer!r} of this model has "
                    f"{channels} channels: were they collected at another layer or on another model?"
                )
        if is_refs and references.dataset is not None:
            fp = dataset_fingerprint or cache.dataset_fingerprint(dataset)
            if fp != references.dataset and not cache.items_change(dataset):
                raise PuretoolsError(
                    f"These references were collected on another data set (or its images changed since): "
                    f"the data set of this call has fingerprint {fp[:12]}, the references' data set "
                    f"{references.dataset[:12]}. Collect the references on this data set."
                )
    return idx, check_neurons(neurons, idx.shape[0], layer)


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
    if n_ref is not None:
        n_ref = check_int(n_ref, "n_ref")
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
        If given (``~`` is expanded), the result is stored there as safetensors,
        fingerprinted by the model (architecture and weights), every image of the data set
        (:func:`puretools.cache.dataset_fingerprint`), ``layer`` and ``n_ref``; a matching,
        verified file is reused. A write that fails only warns.
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
    num_workers = check_int(num_workers, "num_workers", low=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", low=0)
    if distributed.active():  # under torchrun: one shard per rank, merged (puretools/distributed/)
        return distributed.sharded_references(_collect, locals())
    return _collect(model, dataset, layer, n_ref, batch_size, device, num_workers, cache_dir, progress,
                    checkpoint_every)


@dataclass(frozen=True)
class _ReferencesPlan:
    """What :func:`collect_references` checked and decided before reading any image.

    Shared with the several-process path (``distributed/shards.py``), so both check the same
    things and use the same cache key.
    """

    n: int  # images in the data set
    model: nn.Module  # in eval mode, on ``device``
    device: torch.device
    hasher: cache.DatasetHasher  # the data set's fingerprint, complete or to be fed while streaming
    key: str | None  # cache key; None without a cache (or for a data set whose items change)
    hit: References | None  # the verified cached result (only when looked up)


def _references_key(model: nn.Module, hasher: cache.DatasetHasher, layer: str, n_ref: int) -> str:
    return cache.fingerprint(kind="references", model=cache.model_fingerprint(model), dataset=hasher.identity,
                             layer=layer, n_ref=n_ref)  # fmt: skip


def _prepare_references(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    n_ref: int,
    batch_size: int,
    device: str | torch.device | None,
    cache_dir: str | os.PathLike | None,
    lookup: bool = True,
) -> _ReferencesPlan:
    """The checks, the device, the cache key and (with ``lookup``) the verified cache hit."""
    n = check_dataset(dataset, n_ref)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise PuretoolsError(f"batch_size must be a positive integer, not {batch_size!r}.")
    device = resolve_device(device, model)
    get_module(model, layer)
    model = prepare_model(model, device)
    hasher = cache.DatasetHasher(dataset)  # fed with every image as it streams by
    key = hit = None
    if cache_dir is not None and not cache.items_change(dataset):
        key = _references_key(model, hasher, layer, n_ref)
        entry = cache.load_entry(cache_dir, "references", key,
                                 expect={"indices": (None, n_ref), "values": (None, n_ref)}) if lookup else None
        if entry is not None:
            (tensors, info), fp = entry, hasher.hexdigest() if hasher.complete else cache.dataset_fingerprint(dataset)
            if info.get("dataset") == fp:  # else some image changed since: recompute, overwrite
                hit = References(tensors["indices"], tensors["values"], layer, len(tensors["indices"]), fp)
    return _ReferencesPlan(n, model, device, hasher, key, hit)


def _save_references(cache_dir: str | os.PathLike, key: str, result: References, n: int) -> Path | None:
    """Write ``result`` under ``key`` (the file of one process, whoever computed it)."""
    return cache.save_cached(
        cache_dir, "references", key, {"indices": result.indices, "values": result.values},
        {"layer": result.layer, "n_ref": result.n_ref, "dataset_len": n, "channels": result.channels,
         "dataset": result.dataset},
    )


def _collect(
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
    digests: list[bytes] | None = None,
) -> References:
    """:func:`collect_references` in this process; ``digests`` (if given) receives the item digests
    of the images it streams, in index order, when the data set is hashed item by item."""
    plan = _prepare_references(model, dataset, layer, n_ref, batch_size, device, cache_dir)
    if plan.hit is not None:
        return plan.hit
    n, model, device, hasher, key = plan.n, plan.model, plan.device, plan.hasher, plan.key

    values = indices = None
    start = 0
    if key is not None and checkpoint_every:
        state = cache.load_cached(
            cache_dir, "references-partial", key,
            expect={"values": (None, n_ref), "indices": (None, n_ref), "next": (), "hash": (32,)},
        )
        prefix = cache.DatasetHasher(dataset)
        if state is not None and not prefix.complete:  # were the images read so far the same?
            prefix.update(cache.item_digest(cache.item_image(dataset[i], i)) for i in range(int(state["next"])))
            state = state if prefix.state == state["hash"].numpy().tobytes() else None
        if state is not None:  # an interrupted run with the same fingerprint: continue it
            values, indices = state["values"].to(device), state["indices"].to(device)
            start = int(state["next"])
            hasher.resume(state["hash"].numpy().tobytes(), start)
    loader = DataLoader(
        Subset(dataset, range(start, n)) if start else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images if hasher.complete else collate_with_digests,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(total=n, initial=start, desc=f"references @ {layer}", disable=not progress, unit="img")
    with torch.inference_mode():
        for batch_number, images in enumerate(loader, 1):
            if not hasher.complete:
                images, batch_digests = images
                hasher.update(batch_digests)
                if digests is not None:
                    digests.extend(batch_digests)
            images = check_images(images, model, start).to(device, non_blocking=True)
            if batch_number == 1:
                check_called_once(model, layer, images[:1])
            out = forward_to(model, layer, images)
            check_activations(out, layer, start)
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
                saved = cache.save_cached(
                    cache_dir, "references-partial", key,
                    {"values": values, "indices": indices, "next": torch.tensor(start),
                     "hash": torch.frombuffer(bytearray(hasher.state), dtype=torch.uint8)},
                )
                checkpoint_every = checkpoint_every if saved is not None else 0  # warned once; go on
    bar.close()
    assert start == n and values is not None
    result = References(indices.cpu(), values.cpu(), layer, int(values.shape[0]), hasher.hexdigest())
    if key is not None:
        saved = _save_references(cache_dir, key, result, n)
        if saved is not None:
            cache.remove_cached(cache_dir, "references-partial", key)
    return result
