"""Collecting reference samples: the top ``n_ref`` samples of every channel by spatial max activation.

The :class:`~puretools.reference_type.References` type and its checks live in
``reference_type.py``; the model helpers (``prepare_model``, ``layer_output``, ...) in ``forward.py``.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import cache, forward, ranks, reference_type
from .checks import check_activations, check_called_once, check_images, check_int, resolve_device
from .errors import PuretoolsError
from .layouts import Layout, TokenReduce, check_token_reduce, layer_layout
from .models import get_module
from .progress import tqdm
from .reference_type import References

# The engine's steps (ReferencesPlan ... save_references) are public for puretools.distributed, which
# runs them on each rank's shard of the data set.
__all__ = [
    "References",
    "ReferencesPlan",
    "check_dataset",
    "collect_in_process",
    "collect_references",
    "prepare_references",
    "references_key",
    "save_references",
]

# Names that lived here before references.py was split (issue 21); importable from here for one
# more release, with a DeprecationWarning that names their new home.
_MOVED = {
    "check_neurons": reference_type,
    "check_references": reference_type,
    "layer_output": forward,
    "_capture": forward,
    "prepare_model": forward,
    "collate_images": forward,
    "collate_with_digests": forward,
    "forward_to": forward,
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, new = _MOVED[name], "capture_output" if name == "_capture" else name
        warnings.warn(
            f"puretools.references.{name} moved to {module.__name__}.{new}; import it from there "
            f"(or from puretools where it is exported). The old name goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    layout: str | Layout | None = None,
    token_reduce: TokenReduce = "max",
) -> References:
    """Top ``n_ref`` samples of every channel of ``layer``, ranked by spatial max activation.

    A neuron is a channel of a CNN layer, a feature (last axis) of a transformer's token layer
    ``[B, T, C]``; the layout comes from :func:`puretools.layouts.layer_layout`. Its value for
    an image is the max over all spatial positions or tokens (``token_reduce``).

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
    layout : str, Layout or None
        Where the neurons sit in ``layer``'s output: ``"channels_first"`` ([B, C, H, W],
        [B, C]), ``"channels_last"`` ([B, H, W, C]), ``"tokens"`` ([B, T, C]),
        ``"sequence_first"`` ([T, B, C]) or a :class:`~puretools.layouts.Layout`. None: found
        from the model (an error names this argument when the model does not settle it).
    token_reduce : {"max", "mean", "cls"}
        A neuron's value per image: the max over all positions or tokens (class and register
        tokens included, as a CNN's spatial max covers every position), their mean, or the
        class token's value (transformers).

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
    split = ranks.split_step("references")  # under torchrun: one shard per rank, merged (puretools/distributed/)
    return (split or collect_in_process)(model, dataset, layer, n_ref, batch_size, device, num_workers, cache_dir,
                                         progress, checkpoint_every, layout=layout,
                                         token_reduce=token_reduce)  # fmt: skip


@dataclass(frozen=True)
class ReferencesPlan:
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


def references_key(model: nn.Module, hasher: cache.DatasetHasher, layer: str, n_ref: int,
                   token_reduce: str = "max", layout: str | Layout | None = None) -> str:  # fmt: skip
    """The cache key of the references of ``model`` at ``layer`` on the data set of ``hasher``."""
    # token_reduce and layout enter the key only when given, so the keys of earlier results stay valid
    extra = {"token_reduce": token_reduce} if token_reduce != "max" else {}
    extra.update({"layout": repr(layout)} if layout is not None else {})
    return cache.fingerprint(kind="references", model=cache.model_fingerprint(model), dataset=hasher.identity,
                             layer=layer, n_ref=n_ref, **extra)  # fmt: skip


def prepare_references(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    n_ref: int,
    batch_size: int,
    device: str | torch.device | None,
    cache_dir: str | os.PathLike | None,
    lookup: bool = True,
    token_reduce: str = "max",
    layout: str | Layout | None = None,
) -> ReferencesPlan:
    """The checks, the device, the cache key and (with ``lookup``) the verified cache hit."""
    n = check_dataset(dataset, n_ref)
    check_token_reduce(token_reduce)
    if layout is not None and not isinstance(layout, Layout):
        Layout(layout)  # a clear error for an unknown kind, before any image is read
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise PuretoolsError(f"batch_size must be a positive integer, not {batch_size!r}.")
    device = resolve_device(device, model)
    get_module(model, layer)
    model = forward.prepare_model(model, device)
    hasher = cache.DatasetHasher(dataset)  # fed with every image as it streams by
    key = hit = None
    if cache_dir is not None and not cache.items_change(dataset):
        key = references_key(model, hasher, layer, n_ref, token_reduce, layout)
        entry = cache.load_entry(cache_dir, "references", key,
                                 expect={"indices": (None, n_ref), "values": (None, n_ref)}) if lookup else None
        if entry is not None:
            (tensors, info), fp = entry, hasher.hexdigest() if hasher.complete else cache.dataset_fingerprint(dataset)
            if info.get("dataset") == fp:  # else some image changed since: recompute, overwrite
                hit = References(tensors["indices"], tensors["values"], layer, len(tensors["indices"]), fp,
                                 token_reduce)  # fmt: skip
    return ReferencesPlan(n, model, device, hasher, key, hit)


def save_references(cache_dir: str | os.PathLike, key: str, result: References, n: int) -> Path | None:
    """Write ``result`` under ``key`` (the file of one process, whoever computed it)."""
    return cache.save_cached(
        cache_dir, "references", key, {"indices": result.indices, "values": result.values},
        {"layer": result.layer, "n_ref": result.n_ref, "dataset_len": n, "channels": result.channels,
         "dataset": result.dataset},
    )


def collect_in_process(
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
    layout: str | Layout | None = None,
    token_reduce: str = "max",
) -> References:
    """:func:`collect_references` in this process; ``digests`` (if given) receives the item digests
    of the images it streams, in index order, when the data set is hashed item by item."""
    plan = prepare_references(model, dataset, layer, n_ref, batch_size, device, cache_dir,
                              token_reduce=token_reduce, layout=layout)  # fmt: skip
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
        collate_fn=forward.collate_images if hasher.complete else forward.collate_with_digests,
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
            out = forward.forward_to(model, layer, images)
            if out.ndim < 2:
                raise PuretoolsError(f"Layer {layer!r} output has shape {tuple(out.shape)}; expected [B, C, ...].")
            if not isinstance(layout, Layout):
                layout = layer_layout(model, layer, images[:2], layout)
            check_activations(layout.to_channels(out), layer, start)
            batch_max = layout.reduce(out, token_reduce)  # CNNs: out.flatten(2).amax(-1), [B, C]: out
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
    result = References(indices.cpu(), values.cpu(), layer, int(values.shape[0]), hasher.hexdigest(), token_reduce)
    if key is not None:
        saved = save_references(cache_dir, key, result, n)
        if saved is not None:
            cache.remove_cached(cache_dir, "references-partial", key)
    return result
