"""Reference patches: CRP heatmaps of each reference's most activating unit, cropped and masked."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from zennit.core import Composite

from . import cache
from .checks import (
    check_activations,
    check_called_once,
    check_choice,
    check_images,
    check_int,
    check_number,
    resolve_device,
)
from .data import denormalize as imagenet_denormalize
from .errors import PuretoolsError
from .forward import collate_images, forward_to, prepare_model
from .layouts import Layout, layer_layout
from .models import get_module, lrp_composite
from .progress import tqdm
from .reference_type import References, check_references

__all__ = [
    "CROP_THRESHOLD",
    "KERNEL_SIZE",
    "MASK_ALPHA",
    "VISIBILITY_THRESHOLD",
    "crop_box",
    "crop_patch",
    "masked_patch",
    "patches_from_heatmaps",
    "reference_heatmaps",
    "reference_patches",
    "relevance_map",
]

PatchMode = Literal["crop", "mask", "full"]

#: Gaussian blur kernel applied to a heatmap before thresholding (PURE's ``crop_and_mask_images``).
KERNEL_SIZE = 5
#: Crop to the box where the blurred ``|h| / max|h|`` exceeds this (PURE's ``crop_th``).
CROP_THRESHOLD = 0.02
#: The masked patch dims pixels whose blurred ``|h| / max|h|`` is at or below this
#: (zennit-crp's ``vis_opaque_img`` default ``vis_th``).
VISIBILITY_THRESHOLD = 0.2
#: Dimmed pixels keep this fraction of their contrast to the background (zennit-crp's ``alpha``).
MASK_ALPHA = 0.3


# --------------------------------------------------------------------------- heatmaps


def _argmax_relevance(activation: torch.Tensor, channels: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """Zeros like ``activation`` except, per sample b, the activation of channel ``channels[b]``
    at its argmax spatial position or token (first one on ties)."""
    layout = layout or Layout("channels_first")
    flat = layout.to_channels(activation)  # [B, C, positions]; CNNs: activation.flatten(2)
    b = flat.shape[0]
    rows = torch.arange(b, device=activation.device)
    own = flat[rows, channels]  # [B, positions]
    pos = own.argmax(1)
    init = torch.zeros_like(flat)
    init[rows, channels, pos] = own[rows, pos]
    return layout.from_channels(init, activation.shape)


def reference_heatmaps(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    references: References | torch.Tensor,
    neurons: int | Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    composite: Composite | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    layout: str | Layout | None = None,
) -> torch.Tensor:
    """CRP heatmaps of the most activating spatial unit of each neuron, for each of its references.

    For a transformer layer (tokens, :func:`puretools.layouts.layer_layout`) the unit is the
    token where feature k is largest, and the heatmap is on the input pixels as for a CNN.

    For neuron k and reference image x the backward pass starts at ``layer`` with the initial
    relevance zero everywhere except at channel k's spatial argmax, where it is that
    activation; relevance is propagated to the input with ``composite`` (default: zennit's
    ``EpsilonPlusFlat`` with the model's canonizers, :func:`puretools.lrp_composite`). The
    heatmap is the input relevance summed over colour channels. This is zennit-crp's
    ``CondAttribution`` with ``start_layer=layer``, condition ``{layer: [k]}`` and that
    ``init_rel``, but many (neuron, reference) pairs go through one batched pass, each batch
    element with its own neuron.

    Parameters
    ----------
    model : torch.nn.Module
        Switched to eval mode if it is not.
    dataset : torch.utils.data.Dataset
        The data set the references index into; items are ``(image, ...)``.
    layer : str
        Module name, e.g. ``"layer4"``.
    references : References or LongTensor [channels, n_ref]
        From :func:`puretools.collect_references`.
    neurons : int, sequence of int or None
        Channels of ``layer``; None means all (memory: ``channels * n_ref * H * W`` floats, so
        pick a few neurons on ImageNet-size images). An int is treated as ``[neuron]``.
    batch_size : int
        (neuron, reference) pairs per forward/backward pass.
    device : str, torch.device or None
        None: the model's device.
    composite : zennit Composite or None
        None: :func:`puretools.lrp_composite`. ``zennit.core.Composite()`` gives plain
        gradients.
    cache_dir : path or None
        Store/reuse the result, fingerprinted by the model, every image of the data set, layer,
        references, neurons and the composite with all its parameters and canonizers.
    progress : bool
        Show a tqdm progress bar over pairs.
    layout : str, Layout or None
        ``layer``'s layout; None: found from the model.

    Returns
    -------
    Tensor [len(neurons), n_ref, H, W]
        float32 heatmaps on the CPU (signed relevance).

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(10, 3, 8, 8))  # 10 images, 8 x 8
    >>> refs = torch.randint(0, 10, (4, 3))  # 4 channels, 3 references each
    >>> reference_heatmaps(model, data, "1", refs, neurons=[0, 2]).shape
    torch.Size([2, 3, 8, 8])
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    get_module(model, layer)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    use_cache = cache_dir is not None and not cache.items_change(dataset)
    dataset_fp = cache.dataset_fingerprint(dataset) if use_cache or getattr(references, "dataset", None) else None
    ref_idx, neurons_t = check_references(references, dataset, layer, neurons, model, dataset_fp, layout)
    n_ref = ref_idx.shape[1]

    key = None
    if use_cache:
        key = cache.fingerprint(
            kind="heatmaps",
            model=cache.model_fingerprint(model),
            dataset=dataset_fp,
            layer=layer,
            references=ref_idx[neurons_t].tolist(),
            neurons=neurons_t.tolist(),
            composite="lrp" if composite is None else cache.object_fingerprint(composite),
            **({"layout": repr(layout)} if layout is not None else {}),  # only when given: old keys stay valid
        )
        example = collate_images([dataset[int(ref_idx.flatten()[0]) if ref_idx.numel() else 0]])
        expect = {"heatmaps": (len(neurons_t), n_ref, *example.shape[2:])}
        hit = cache.load_cached(cache_dir, "heatmaps", key, expect=expect)
        if hit is not None:
            return hit["heatmaps"]

    pair_images = ref_idx[neurons_t].reshape(-1)
    pair_channels = neurons_t.repeat_interleave(n_ref)
    composite = lrp_composite(model) if composite is None else composite
    out: torch.Tensor | None = None
    if len(pair_images):
        first = pair_images[:1]
        example = check_images(collate_images([dataset[int(first)]]), model, first).to(device)
        check_called_once(model, layer, example)
        layout = layer_layout(model, layer, example, layout)
    bar = tqdm(total=len(pair_images), desc=f"heatmaps @ {layer}", disable=not progress, unit="pair")
    with composite.context(model):
        for start in range(0, len(pair_images), batch_size):
            idx = pair_images[start : start + batch_size]
            channels = pair_channels[start : start + batch_size].to(device)
            unique, inverse = torch.unique(idx, return_inverse=True)
            images = check_images(collate_images([dataset[int(i)] for i in unique]), model, unique)
            x = images.to(device)[inverse.to(device)].detach().requires_grad_(True)
            with torch.enable_grad():
                # The hook of forward_to is registered after the composite's, so it sees the
                # output zennit's rule hooks produced (also when ``layer`` is a leaf module).
                activation = forward_to(model, layer, x)
                if activation.ndim < 2:
                    raise PuretoolsError(
                        f"Layer {layer!r} output has shape {tuple(activation.shape)}; expected [B, C, ...]."
                    )
                check_activations(activation.detach(), layer, idx)
                init = _argmax_relevance(activation.detach(), channels, layout)
                (grad,) = torch.autograd.grad(activation, x, init)
            heat = grad.detach().float().sum(1).cpu()
            bad = (~torch.isfinite(heat.flatten(1))).any(1)
            if bad.any():
                raise PuretoolsError(
                    f"The heatmaps of the images at data-set indices {idx[bad].unique()[:5].tolist()} contain "
                    f"NaN or Inf: the relevance overflowed on its way down from {layer!r} (pixel values far "
                    "too large? are the images normalised?). Check those images."
                )
            if out is None:
                out = torch.zeros(len(pair_images), *heat.shape[1:])
            out[start : start + len(idx)] = heat
            bar.update(len(idx))
    bar.close()
    if out is None:  # no pairs at all
        image = collate_images([dataset[0]])
        out = torch.zeros(0, *image.shape[2:])
    heatmaps = out.reshape(len(neurons_t), n_ref, *out.shape[1:])
    if key is not None:
        cache.save_cached(cache_dir, "heatmaps", key, {"heatmaps": heatmaps}, {"layer": layer})
    return heatmaps


# --------------------------------------------------------------------------- crops and masks


def _check_unit(name: str, value: float) -> None:
    check_number(value, name, 0, 1, high_open=True)


def relevance_map(heatmap: torch.Tensor, kernel_size: int = KERNEL_SIZE) -> torch.Tensor:
    """Blurred, max-normalised absolute relevance ``|blur(h)| / max|blur(h)|``, in [0, 1].

    The Gaussian blur is torchvision's ``gaussian_blur`` (sigma from the kernel size, reflect
    padding), as in the PURE reference code. A heatmap that is zero everywhere gives zeros.

    Parameters
    ----------
    heatmap : Tensor [H, W] or [n, H, W]
        A batch is blurred in one call and normalised map by map.
    kernel_size : int
        Odd kernel size; 1 (or 0) means no blur.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> h = torch.zeros(5, 5); h[2, 2] = -4.0
    >>> relevance_map(h, kernel_size=1)[2]
    tensor([0., 0., 1., 0., 0.])
    """
    from torchvision.transforms.functional import gaussian_blur

    heatmap = torch.as_tensor(heatmap).detach().float()
    if heatmap.ndim not in (2, 3):
        raise PuretoolsError(f"Expected a heatmap of shape [H, W] (or a batch [n, H, W]), got {tuple(heatmap.shape)}.")
    kernel_size = check_int(kernel_size, "kernel_size", low=0, fix="Use a positive odd integer such as 5.")
    if kernel_size not in (0, 1):
        if kernel_size % 2 == 0:
            raise PuretoolsError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
        # reflect padding needs the padding (k // 2) to be smaller than the image side
        k = min(kernel_size, 2 * min(heatmap.shape[-2:]) - 1)
        if k > 1 and heatmap.numel():
            flat = heatmap.reshape(-1, 1, *heatmap.shape[-2:])
            heatmap = gaussian_blur(flat, kernel_size=[k, k]).reshape(heatmap.shape)
    magnitude = heatmap.abs()
    if not magnitude.numel():
        return magnitude
    peak = magnitude.flatten(-2).amax(-1)[..., None, None]
    valid = (peak > 0) & torch.isfinite(peak)
    return torch.where(valid, magnitude / torch.where(valid, peak, torch.ones_like(peak)), torch.zeros_like(magnitude))


def crop_box(
    heatmap: torch.Tensor, threshold: float = CROP_THRESHOLD, kernel_size: int = KERNEL_SIZE
) -> tuple[int, int, int]:
    """Square crop around the relevant region of a heatmap: ``(top, left, size)``.

    The box is the smallest rectangle holding every pixel where :func:`relevance_map` exceeds
    ``threshold``; its shorter side is widened symmetrically (an odd surplus pixel goes to the
    bottom/right) to make it square. Near the border the square is shifted inwards, never
    padded, so ``0 <= top``, ``top + size <= H`` and likewise for columns. The size is at most
    ``min(H, W)``; if the box is larger than that (non-square images only) the square is
    centred on it. A heatmap without relevant pixels (e.g. all zero) gives the centred square
    of side ``min(H, W)``, i.e. the whole image when it is square.

    Parameters
    ----------
    heatmap : Tensor [H, W]
    threshold : float in [0, 1)
        Fraction of the maximum blurred relevance (the paper's code uses 0.02).
    kernel_size : int
        Gaussian blur kernel (the paper's code uses 5).

    Returns
    -------
    (top, left, size) : tuple of int

    Examples
    --------
    >>> h = torch.zeros(10, 10); h[2:4, 5:9] = 1.0  # 2 rows x 4 columns
    >>> crop_box(h, kernel_size=1)
    (1, 5, 4)
    >>> crop_box(torch.zeros(10, 10))
    (0, 0, 10)
    """
    _check_unit("threshold", threshold)
    heatmap = torch.as_tensor(heatmap)
    if heatmap.ndim != 2:
        raise PuretoolsError(f"Expected a heatmap of shape [H, W], got {tuple(heatmap.shape)}.")
    return _box(relevance_map(heatmap, kernel_size), threshold)


def _box(rel: torch.Tensor, threshold: float) -> tuple[int, int, int]:
    """:func:`crop_box` of an already computed :func:`relevance_map` [H, W]."""
    height, width = rel.shape
    side = min(height, width)
    mask = rel > threshold
    if not mask.any():
        return (height - side) // 2, (width - side) // 2, side
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    r0, r1 = int(rows[0]), int(rows[-1])
    c0, c1 = int(cols[0]), int(cols[-1])
    box_h, box_w = r1 - r0 + 1, c1 - c0 + 1
    size = min(max(box_h, box_w), side)
    top = r0 - (size - box_h) // 2
    left = c0 - (size - box_w) // 2
    top = min(max(top, 0), height - size)
    left = min(max(left, 0), width - size)
    return top, left, size


def _check_image(image: torch.Tensor, heatmap: torch.Tensor) -> None:
    if image.ndim != 3 or tuple(image.shape[1:]) != tuple(heatmap.shape):
        raise PuretoolsError(
            f"Expected an image [C, H, W] and a heatmap [H, W] of the same size, got "
            f"{tuple(image.shape)} and {tuple(heatmap.shape)}."
        )


def crop_patch(
    image: torch.Tensor,
    heatmap: torch.Tensor,
    threshold: float = CROP_THRESHOLD,
    kernel_size: int = KERNEL_SIZE,
) -> torch.Tensor:
    """The square crop of ``image`` given by :func:`crop_box` of its heatmap.

    Parameters
    ----------
    image : Tensor [C, H, W]
    heatmap : Tensor [H, W]

    Returns
    -------
    Tensor [C, s, s]

    Examples
    --------
    >>> image = torch.rand(3, 10, 10)
    >>> h = torch.zeros(10, 10); h[2:4, 5:9] = 1.0
    >>> crop_patch(image, h, kernel_size=1).shape
    torch.Size([3, 4, 4])
    """
    _check_image(image, heatmap)
    top, left, size = crop_box(heatmap, threshold, kernel_size)
    return image[:, top : top + size, left : left + size]


def masked_patch(
    image: torch.Tensor,
    heatmap: torch.Tensor,
    threshold: float = CROP_THRESHOLD,
    visibility: float = VISIBILITY_THRESHOLD,
    alpha: float = MASK_ALPHA,
    background: float = 0.0,
    kernel_size: int = KERNEL_SIZE,
) -> torch.Tensor:
    """The crop of :func:`crop_patch` with the irrelevant region dimmed.

    A pixel stays as it is where :func:`relevance_map` of the heatmap (normalised over the
    whole image) exceeds ``visibility``; elsewhere it becomes
    ``background + alpha * (pixel - background)``. With the defaults (``visibility=0.2``,
    ``alpha=0.3``, ``background=0``: toward black) this is zennit-crp's ``vis_opaque_img``,
    the style of CRP reference figures; ``background=1.0`` dims toward white.

    Parameters
    ----------
    image : Tensor [C, H, W]
        Values in [0, 1] (un-normalised) for ``background`` to mean black/white.
    heatmap : Tensor [H, W]
    threshold : float
        Crop threshold, see :func:`crop_box`.
    visibility : float in [0, 1)
        Pixels at or below this normalised relevance are dimmed.
    alpha : float in [0, 1]
        1 keeps the image unchanged, 0 replaces the dimmed region by ``background``.
    background : float
    kernel_size : int

    Returns
    -------
    Tensor [C, s, s]

    Examples
    --------
    >>> image = torch.ones(3, 4, 4)
    >>> h = torch.zeros(4, 4); h[:, :2] = 1.0  # left half relevant
    >>> masked_patch(image, h, kernel_size=1)[0]
    tensor([[1.0000, 1.0000, 0.3000, 0.3000],
            [1.0000, 1.0000, 0.3000, 0.3000],
            [1.0000, 1.0000, 0.3000, 0.3000],
            [1.0000, 1.0000, 0.3000, 0.3000]])
    """
    _check_image(image, heatmap)
    _check_unit("visibility", visibility)
    check_number(alpha, "alpha", 0, 1)
    _check_unit("threshold", threshold)
    return _masked(image, relevance_map(heatmap, kernel_size), threshold, visibility, alpha, background)


def _masked(image, rel, threshold, visibility, alpha, background) -> torch.Tensor:
    """:func:`masked_patch` with an already computed :func:`relevance_map`."""
    dimmed = background + alpha * (image - background)
    full = torch.where((rel > visibility).to(image.device), image, dimmed)
    top, left, size = _box(rel, threshold)
    return full[:, top : top + size, left : left + size]


def _resize(patch: torch.Tensor, size: int) -> torch.Tensor:
    if patch.shape[-2:] == (size, size):
        return patch
    return F.interpolate(
        patch[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]


def patches_from_heatmaps(
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    mode: PatchMode = "crop",
    size: int | None = None,
    threshold: float = CROP_THRESHOLD,
    visibility: float = VISIBILITY_THRESHOLD,
    alpha: float = MASK_ALPHA,
    background: float = 0.0,
    kernel_size: int = KERNEL_SIZE,
) -> torch.Tensor:
    """Patches of images with known heatmaps, resized to one size (no model involved).

    Parameters
    ----------
    images : Tensor [n, 3, H, W]
        Values in [0, 1].
    heatmaps : Tensor [n, H, W]
    mode : {"crop", "mask", "full"}
        ``"crop"``: :func:`crop_patch` (what the paper embeds with CLIP); ``"mask"``:
        :func:`masked_patch`; ``"full"``: the whole image.
    size : int or None
        Side of the returned patches; None: ``min(H, W)``. Resizing is bilinear with
        antialiasing.

    Returns
    -------
    Tensor [n, 3, size, size]
        Values in [0, 1].

    Examples
    --------
    >>> images = torch.rand(4, 3, 16, 16)
    >>> heatmaps = torch.randn(4, 16, 16)
    >>> patches_from_heatmaps(images, heatmaps, mode="mask", size=8).shape
    torch.Size([4, 3, 8, 8])
    """
    check_choice(mode, "mode", ("crop", "mask", "full"))
    images, heatmaps = torch.as_tensor(images), torch.as_tensor(heatmaps)
    if images.ndim != 4 or heatmaps.ndim != 3 or len(images) != len(heatmaps):
        raise PuretoolsError(
            f"Expected images [n, 3, H, W] and heatmaps [n, H, W], got {tuple(images.shape)} "
            f"and {tuple(heatmaps.shape)}."
        )
    size = min(images.shape[-2:]) if size is None else check_int(size, "size", low=1)
    if tuple(images.shape[-2:]) != tuple(heatmaps.shape[-2:]):
        raise PuretoolsError(
            f"Images {tuple(images.shape)} and heatmaps {tuple(heatmaps.shape)} differ in size."
        )
    _check_unit("threshold", threshold)
    _check_unit("visibility", visibility)
    check_number(alpha, "alpha", 0, 1)
    rels = relevance_map(heatmaps, kernel_size) if mode != "full" else heatmaps  # blurred in one call
    out = []
    for image, rel in zip(images, rels):
        if mode == "crop":
            top, left, side = _box(rel, threshold)
            patch = image[:, top : top + side, left : left + side]
        elif mode == "mask":
            patch = _masked(image, rel, threshold, visibility, alpha, background)
        else:
            h, w = image.shape[-2:]
            side = min(h, w)
            patch = image[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        out.append(_resize(patch, size).clamp(0, 1))
    if not out:
        return torch.zeros(0, images.shape[1] if images.ndim == 4 else 3, size, size)
    return torch.stack(out)


def reference_patches(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    references: References | torch.Tensor,
    neuron: int,
    mode: PatchMode = "crop",
    size: int | None = None,
    denormalize: Callable[[torch.Tensor], torch.Tensor] = imagenet_denormalize,
    heatmaps: torch.Tensor | None = None,
    threshold: float = CROP_THRESHOLD,
    visibility: float = VISIBILITY_THRESHOLD,
    alpha: float = MASK_ALPHA,
    background: float = 0.0,
    kernel_size: int = KERNEL_SIZE,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Cropped (or masked) patches of one neuron's reference images, ready for grids and embedders.

    Computes :func:`reference_heatmaps` (unless ``heatmaps`` are given), un-normalises the
    reference images with ``denormalize`` and applies :func:`patches_from_heatmaps`.

    Parameters
    ----------
    model, dataset, layer, references
        As for :func:`reference_heatmaps`.
    neuron : int
        Channel of ``layer``.
    mode : {"crop", "mask", "full"}
        See :func:`patches_from_heatmaps`.
    size : int or None
        Side of the returned patches; None: the image side.
    denormalize : callable
        Maps data-set images [B, 3, H, W] to [0, 1]; default: ImageNet statistics
        (:func:`puretools.data.denormalize`). For the toy world pass
        ``puretools.toyworld.denormalize``.
    heatmaps : Tensor [n_ref, H, W] or None
        Precomputed heatmaps of this neuron's references (e.g. to redraw with other
        thresholds without recomputing).
    threshold, visibility, alpha, background, kernel_size
        See :func:`crop_box` and :func:`masked_patch`.
    batch_size, device, cache_dir
        Passed to :func:`reference_heatmaps`.

    Returns
    -------
    Tensor [n_ref, 3, size, size]
        Values in [0, 1].

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(10, 3, 8, 8))
    >>> refs = torch.randint(0, 10, (4, 3))  # 4 channels, 3 references each
    >>> reference_patches(model, data, "1", refs, neuron=1, mode="mask", size=6).shape
    torch.Size([3, 3, 6, 6])
    """
    check_choice(mode, "mode", ("crop", "mask", "full"))
    neuron = check_int(neuron, "neuron", low=0)
    if size is not None:
        check_int(size, "size", low=1)
    if heatmaps is None:  # reference_heatmaps checks the references against the data set
        ref_idx, (neuron_t,) = check_references(references, None, layer, [neuron])
        heatmaps = reference_heatmaps(
            model, dataset, layer, references, [int(neuron_t)], batch_size=batch_size, device=device,
            cache_dir=cache_dir,
        )[0]
    else:
        ref_idx, (neuron_t,) = check_references(references, dataset, layer, [neuron])
    neuron = int(neuron_t)
    heatmaps = torch.as_tensor(heatmaps)
    if heatmaps.ndim != 3 or len(heatmaps) != ref_idx.shape[1]:
        raise PuretoolsError(
            f"heatmaps must have shape [n_ref={ref_idx.shape[1]}, H, W], got {tuple(heatmaps.shape)}."
        )
    images = collate_images([dataset[int(i)] for i in ref_idx[neuron]])
    images = denormalize(images.float().cpu())
    return patches_from_heatmaps(
        images, heatmaps.cpu(), mode, size, threshold, visibility, alpha, background, kernel_size
    )
