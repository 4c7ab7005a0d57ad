"""The :class:`References` type (the top reference samples per channel) and the checks of references and neurons."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import cache
from .checks import check_images
from .errors import PuretoolsError
from .forward import collate_images, forward_to
from .layouts import Layout, layer_layout

__all__ = ["References", "check_neurons", "check_references"]


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
    token_reduce : {"max", "mean", "cls"}
        How each image's activation map of a neuron became its value (see
        :meth:`puretools.layouts.Layout.reduce`): the max over all positions or tokens by default.
    """

    indices: torch.Tensor
    values: torch.Tensor
    layer: str
    channels: int | None = None
    dataset: str | None = None
    token_reduce: str = "max"

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


def _layer_channels(model: nn.Module, layer: str, dataset: Dataset, layout: str | Layout | None = None) -> int | None:
    """Channel count of ``layer``'s output (in its :func:`~puretools.layouts.layer_layout`), from
    a forward pass of image 0 (checked first)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    image = check_images(collate_images([dataset[0]]), model, 0).to(device)
    with torch.inference_mode():
        out = forward_to(model, layer, image)
    if out.ndim < 2:
        return None
    return layer_layout(model, layer, image, layout).channels(out)


def check_references(
    references: References | torch.Tensor,
    dataset: Dataset | None = None,
    layer: str | None = None,
    neurons: int | Sequence[int] | torch.Tensor | None = None,
    model: nn.Module | None = None,
    dataset_fingerprint: str | None = None,
    layout: str | Layout | None = None,
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
    layout : str, Layout or None
        ``layer``'s layout for the channel count (:func:`puretools.layouts.layer_layout`);
        None: found from the model.

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
            channels = _layer_channels(model, layer, dataset, layout)
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
