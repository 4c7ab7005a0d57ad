"""Circuit attributions: conditional relevance of a neuron flowing into the layer below, batched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import cache, ranks
from .checks import (
    check_activations,
    check_choice,
    check_images,
    check_int,
    check_number,
    check_optional_int,
    resolve_device,
)
from .errors import PuretoolsError
from .forward import collate_images, forward_to, prepare_model
from .layouts import Layout, layer_layout
from .models import lrp_composite
from .progress import tqdm
from .reference_type import References, check_references
from .subnet import Precision, _precision_context, memory_plan, subnetwork, tf32_matmuls

# memory_plan, subnetwork and tf32_matmuls live in .subnet (the part of the model between the layers).
# The engine's steps (Pairs ... save_circuits) are public for puretools.distributed, which runs the same
# steps on each rank's share of the pairs.
__all__ = [
    "CircuitsPlan",
    "Pairs",
    "attribute_chunk",
    "circuit_attributions",
    "finish_circuits",
    "lower_activations",
    "memory_plan",
    "normalize_circuits",
    "pairs_by_image",
    "prepare_circuits",
    "save_circuits",
    "subnetwork",
    "tf32_matmuls",
]

#: Attribution rule of circuits and heatmaps: gradient x activation (PURE) or LRP (CRP). Defined once, here.
Method = Literal["gradient", "lrp"]


def normalize_circuits(circuits: torch.Tensor) -> torch.Tensor:
    """Divide each circuit by the sum of absolute values over its last dim (zeros stay zero).

    Examples
    --------
    >>> normalize_circuits(torch.tensor([[1.0, -3.0], [0.0, 0.0]]))
    tensor([[ 0.2500, -0.7500],
            [ 0.0000,  0.0000]])
    """
    norm = circuits.abs().sum(-1, keepdim=True)
    return torch.where(norm > 0, circuits / norm.clamp_min(torch.finfo(circuits.dtype).tiny), circuits)


#: Images per forward pass to the lower layer on CPU: large batches of large early activations
#: are slower there (ResNet-18 at 112 px: 1.5 s per 512 images at 64, 2.7 s in one batch).
_CPU_FORWARD_BATCH = 64

#: Re-forward into a smaller graph when fewer than this share of its rows still have a pair.
_REFORWARD_BELOW = 0.75


def _load_images(dataset: Dataset, indices: torch.Tensor, num_workers: int) -> torch.Tensor:
    if num_workers <= 0:
        return collate_images([dataset[int(i)] for i in indices])
    loader = DataLoader(
        Subset(dataset, indices.tolist()), batch_size=64, num_workers=num_workers, collate_fn=collate_images
    )
    return torch.cat(list(loader))


def lower_activations(
    model: nn.Module,
    dataset: Dataset,
    images: torch.Tensor,
    positions: torch.Tensor,
    chunk_len: int,
    lower_layer: str,
    precision: str,
    device: torch.device,
    num_workers: int,
    sequence_first: bool = False,
) -> torch.Tensor:
    """Load, check and forward reference images to ``lower_layer``: Tensor [len(images), C_lower, ...].

    With ``sequence_first`` (a ``[T, B, C]`` layer) the activations are stored batch first,
    ``[len(images), T, C]``.

    ``images`` are data-set indices, at ``positions`` of a chunk of ``chunk_len`` distinct
    reference images (one process: all of the chunk; a rank: its share of it). On the CPU
    each image goes through a forward pass of the size its pass has when one process
    forwards the whole chunk (``_CPU_FORWARD_BATCH`` images, or the rest at the end of the
    chunk), filled up with copies of an image where there are fewer: the same batch size
    gives the same bits. Elsewhere all of them go in one pass.
    """
    x_all = check_images(_load_images(dataset, images, num_workers), model, images)
    if device.type == "cpu":
        step = _CPU_FORWARD_BATCH
        size = (chunk_len - positions // step * step).clamp(max=step)
    else:
        size = torch.full_like(positions, len(positions))
    lower = None
    with torch.inference_mode(), _precision_context(precision, device):
        for s in size.unique().tolist():
            members = (size == s).nonzero().flatten()
            for b in range(0, len(members), s):
                batch = members[b : b + s]
                x = x_all[batch]
                if len(batch) < s:  # fill up to the batch size of one process
                    x = torch.cat([x, x[:1].expand(s - len(batch), *x.shape[1:])])
                low = forward_to(model, lower_layer, x.to(device, non_blocking=True))
                low = (low.transpose(0, 1) if sequence_first else low)[: len(batch)]
                if lower is None:
                    lower = low.new_empty((len(images), *low.shape[1:]))
                lower[batch.to(lower.device)] = low
    assert lower is not None
    check_activations(lower, lower_layer, images)
    return lower


def attribute_chunk(
    sub: nn.Module,
    lower: torch.Tensor,
    pairs: torch.Tensor,
    counts: torch.Tensor,
    pair_channel: torch.Tensor,
    out: torch.Tensor,
    method: str,
    batch_size: int,
    precision: str,
    device: torch.device,
    bar,
    layouts: tuple[Layout, Layout, Layout] | None = None,
    reads_lower: bool = False,
) -> None:
    """Write the unnormalised circuits of the pairs of one chunk of images into ``out``.

    ``layouts``: of the subnetwork's input (stored batch first in ``lower``), of ``layer`` and
    of ``lower_layer`` (None: channels first, as for CNNs). With ``reads_lower`` the subnetwork
    starts at a cut below ``lower_layer`` and returns ``(layer output, lower_layer output)``;
    the relevance is read at the latter.

    ``lower`` holds the chunk's images' lower-layer activations; ``pairs`` the flat ids of the
    pairs whose image is in the chunk, grouped by image in the order of ``lower``, ``counts``
    of them per image. The subnetwork runs forward once for ``batch_size`` images; then, in
    round r, one backward pass computes the r-th pair of every image of the block (each row
    with its own channel mask) and the graph is kept for the next round. Images are taken in
    decreasing order of their pair counts so that the images of a block need about as many
    rounds each. When fewer than ``_REFORWARD_BELOW`` of the graph's rows still have a pair,
    those rows are forwarded again into a smaller graph, so that at most a quarter of the rows
    of a backward pass carry no pair (one more forward of them is cheaper than many backward
    passes of empty rows).
    """
    lay_in, lay_top, lay_low = layouts or (Layout("channels_first"),) * 3
    offsets = torch.cumsum(counts, 0) - counts  # position in `pairs` of each image's first pair
    by_count = torch.argsort(counts, descending=True, stable=True)
    for b in range(0, len(by_count), batch_size):
        images = by_count[b : b + batch_size]
        n_pairs = counts[images]  # decreasing
        rounds, r = int(n_pairs[0]), 0
        while r < rounds:
            # forward the images that still have pairs (a prefix of the block)
            size = int((n_pairs > r).sum())
            x = lower[images[:size].to(lower.device)].requires_grad_(True)
            with torch.enable_grad(), _precision_context(precision, device):
                x_in = x.transpose(0, 1) if lay_in.kind == "sequence_first" else x  # [T, B, C] for the model
                y = sub(x_in)
            y, low = y if reads_lower else (y, x_in)
            start = y.detach().clamp(min=0)  # the neuron's relevance at `layer`: relu(a_k)
            x_value = low.detach()
            grad_out = torch.zeros_like(y)
            # [B, C, positions] views (CNNs: the tensors themselves, flattened)
            start_c, grad_out_c = lay_top.to_channels(start), lay_top.to_channels(grad_out)
            n_rows = size
            while True:  # one backward round per r, on the same graph while it stays full enough
                pair_ids = pairs[offsets[images[:n_rows]] + r]
                rows = torch.arange(n_rows, device=device)
                channel = pair_channel[pair_ids].to(device)
                grad_out_c[rows, channel] = start_c[rows, channel]
                r += 1
                n_next = int((n_pairs > r).sum())
                keep = r < rounds and n_next >= _REFORWARD_BELOW * size
                with torch.enable_grad(), _precision_context(precision, device):
                    (grad,) = torch.autograd.grad(y, low, grad_out, retain_graph=keep)
                grad_out_c[rows, channel] = 0
                value, lay = x_value, lay_low
                if lay.kind == "sequence_first":  # batch first, so that rows are images
                    grad, value, lay = grad.transpose(0, 1), value.transpose(0, 1), Layout("tokens")
                rel = grad[:n_rows] * value[:n_rows] if method == "gradient" else grad[:n_rows]
                # summed over positions (CNNs: exactly rel.float().flatten(2).sum(-1))
                rel = lay.to_channels(rel.float()).sum(-1) if rel.ndim > 2 else rel.float()
                out[pair_ids] = rel.cpu()
                bar.update(n_rows)
                if not keep:
                    break
                n_rows = n_next


def circuit_attributions(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    lower_layer: str,
    references: References | torch.Tensor,
    neurons: list[int] | torch.Tensor | None = None,
    method: Method = "gradient",
    batch_size: int | None = None,
    image_chunk: int | None = None,
    max_memory: float | None = None,
    device: str | torch.device | None = None,
    precision: Precision = "float32",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    num_workers: int = 0,
    checkpoint_every: int = 20,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
    cut: str | None = None,
) -> torch.Tensor:
    """Circuits of (neuron, reference) pairs: relevance of each neuron flowing into ``lower_layer``.

    For neuron k of ``layer`` and a reference image x, the backward pass starts at ``layer``
    with the incoming gradient ``relu(a_k)`` on channel k only (zero elsewhere) and goes down
    to ``lower_layer``. ``method="gradient"``: relevance there is gradient x activation (the
    PURE reference code). ``method="lrp"``: relevance is propagated with the composite of
    :func:`puretools.lrp_composite` (CNNs: zennit's ``EpsilonPlusFlat`` and the model's
    canonizers, as CRP; vision transformers: CP-LRP). A ``layer`` inside a residual block gets
    the block's rules too (its residual add splits the relevance, as in the whole model). The
    relevance is summed over space and divided by its L1 norm over channels.

    Transformer layers (tokens ``[B, T, C]``, see :func:`puretools.layouts.layer_layout`) work
    the same way with tokens as positions: a neuron is a feature, its starting relevance is
    ``relu(a_k)`` on every token, and the relevance at ``lower_layer`` is summed over tokens.

    The lower-layer activations of each reference image are computed once, however many
    neurons share it; then only the subnetwork between the two layers runs: forward once per
    image, for ``batch_size`` images at a time, and backward once per (neuron, image) pair,
    for the next pair of every image of the batch at a time, each row with its own channel
    mask. Per-neuron Python work stays out of the loop.

    Parameters
    ----------
    model : torch.nn.Module
    dataset : torch.utils.data.Dataset
        The data set the references index into; items are ``(image, ...)``.
    layer, lower_layer : str
        Module names, e.g. ``"layer4"`` and ``"layer3"``. ``layer``'s output must depend on
        the input only through ``lower_layer``.
    references : References or LongTensor [channels, n_ref]
        From :func:`puretools.collect_references`.
    neurons : sequence of int or None
        Channels of ``layer`` to attribute; None means all.
    method : {"gradient", "lrp"}
    batch_size : int or None
        Reference images per forward pass through the subnetwork, and so rows per backward
        pass; memory grows with it. None: 256, or the most that fit in ``max_memory``.
    image_chunk : int or None
        Reference images whose lower-layer activations are held at once. None: 512, or the
        most that fit in ``max_memory``.
    max_memory : float or None
        GiB of device memory the working tensors may use (weights and the result excluded);
        sets ``batch_size`` and ``image_chunk`` by :func:`memory_plan` (explicit values lower
        than the plan's win). None: no bound beyond the two sizes.
    device : str, torch.device or None
        None: the model's device.
    precision : {"float32", "tf32", "bfloat16"}
        ``"bfloat16"`` runs the subnetwork under autocast; ``"tf32"`` allows TF32 matmuls on
        CUDA. Both trade accuracy for speed (see benchmarks/RESULTS.md).
    cache_dir : path or None
        Store/reuse the result, fingerprinted by everything that determines it.
    progress : bool
        Show a tqdm progress bar over pairs.
    num_workers : int
        Data-loading worker processes for the reference images.
    checkpoint_every : int
        With a ``cache_dir``, save partial results every this many image chunks; re-running
        the same call after an interruption continues from there. 0 disables checkpoints.
    layout, lower_layout : str, Layout or None
        The layouts of ``layer`` and ``lower_layer`` (``"channels_first"``, ``"channels_last"``,
        ``"tokens"``, ``"sequence_first"`` or a :class:`~puretools.layouts.Layout`). None:
        found from the model.
    cut : str or None
        For a ``lower_layer`` that ``layer`` also reaches around (inside the previous residual
        block, e.g. ``lower_layer='blocks.4.mlp.act'`` for ``layer='blocks.5.mlp.act'``): a
        layer below it that all of ``layer``'s input passes through (``'blocks.3'``). The
        backward pass runs from ``layer`` to ``cut`` and the relevance is read at
        ``lower_layer`` on the way, as zennit-crp does (see :func:`subnetwork`). The error for
        such a pair of layers names the cut.

    Returns
    -------
    Tensor [len(neurons), n_ref, C_lower]
        float32 circuits on the CPU, ordered like ``neurons`` and the references.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(30, 3, 10, 10))  # 30 images
    >>> from puretools import collect_references
    >>> refs = collect_references(model, data, "3", n_ref=5, progress=False)
    >>> circuit_attributions(model, data, "3", "1", refs, progress=False).shape
    torch.Size([4, 5, 8])
    """
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", low=0)
    num_workers = check_int(num_workers, "num_workers", low=0)
    split = ranks.split_step("circuits")  # under torchrun: the pairs split across ranks (puretools/distributed/)
    if split is not None:
        return split(model, dataset, layer, lower_layer, references, neurons=neurons, method=method,
                     batch_size=batch_size, image_chunk=image_chunk, max_memory=max_memory, device=device,
                     precision=precision, cache_dir=cache_dir, progress=progress, num_workers=num_workers,
                     checkpoint_every=checkpoint_every, layout=layout, lower_layout=lower_layout,
                     cut=cut)  # fmt: skip
    plan = prepare_circuits(model, dataset, layer, lower_layer, references, neurons, method, batch_size,
                            image_chunk, max_memory, device, precision, cache_dir, layout=layout,
                            lower_layout=lower_layout, cut=cut)  # fmt: skip
    if plan.hit is not None:
        return plan.hit
    model, device, key, pairs = plan.model, plan.device, plan.key, plan.pairs
    image_chunk, unique_images, counts = plan.image_chunk, pairs.unique_images, pairs.counts
    pair_end = torch.cumsum(counts, 0)

    out: torch.Tensor | None = None
    first_chunk = 0
    prefix = hashlib.sha256()  # of the reference images done so far, as the references' checkpoints
    if key is not None and checkpoint_every:
        state = cache.load_cached(cache_dir, "circuits-partial", key,
                                  expect={"out": (len(pairs.images), None), "next": (), "hash": (32,)})
        if state is not None:  # an interrupted run with the same fingerprint: continue it, if its images
            done_images = unique_images[: int(state["next"])]  # are still the ones the checkpoint saw
            cache.items_prefix(prefix, dataset, done_images)
            if 0 < int(state["next"]) <= len(unique_images) and prefix.digest() == state["hash"].numpy().tobytes():
                out, first_chunk = state["out"], int(state["next"])
            else:
                warnings.warn(
                    "The circuits checkpoint in the cache does not match the reference images read so far "
                    "(changed images, or a forged file); starting over.", RuntimeWarning, stacklevel=2,
                )  # fmt: skip
                prefix = hashlib.sha256()
    composite = lrp_composite(model) if method == "lrp" else None
    done = int(pair_end[first_chunk - 1]) if first_chunk else 0
    bar = tqdm(total=len(pairs.images), initial=done, desc=f"circuits {lower_layer}<-{layer}",
               disable=not progress, unit="pair")
    with composite.context(model) if composite else contextlib.nullcontext():
        for chunk_number, start in enumerate(range(first_chunk, len(unique_images), image_chunk), 1):
            chunk = unique_images[start : start + image_chunk]
            lower = lower_activations(model, dataset, chunk, torch.arange(len(chunk)), len(chunk), plan.input_layer,
                                      precision, device, num_workers, plan.sequence_first)  # fmt: skip
            if out is None:
                out = torch.zeros(len(pairs.images), plan.lower_channels)
            first = int(pair_end[start - 1]) if start else 0
            end = start + len(chunk)
            last = int(pair_end[end - 1])
            attribute_chunk(plan.sub, lower, pairs.order[first:last], counts[start:end], pairs.channel, out,
                            method, plan.batch_size, precision, device, bar, plan.layouts,
                            plan.cut is not None)  # fmt: skip
            if key is not None and checkpoint_every:
                cache.items_prefix(prefix, dataset, chunk)
            if key is not None and checkpoint_every and chunk_number % checkpoint_every == 0 and end < len(unique_images):
                saved = cache.save_cached(cache_dir, "circuits-partial", key, {
                    "out": out, "next": torch.tensor(end),
                    "hash": torch.frombuffer(bytearray(prefix.digest()), dtype=torch.uint8)})  # fmt: skip
                checkpoint_every = checkpoint_every if saved is not None else 0  # warned once; go on
    bar.close()
    assert out is not None
    circuits = finish_circuits(out, plan, layer, lower_layer)
    if key is not None:
        saved = save_circuits(cache_dir, key, circuits, layer, lower_layer, method, precision)
        if saved is not None:
            cache.remove_cached(cache_dir, "circuits-partial", key)
    return circuits


@dataclass(frozen=True)
class Pairs:
    """The (neuron, reference) pairs of a call, grouped by reference image.

    Pair ``p`` is reference ``p % n_ref`` of the ``p // n_ref``-th neuron.
    """

    images: torch.Tensor  # LongTensor [P]: data-set index of each pair's image
    channel: torch.Tensor  # LongTensor [P]: neuron (channel of ``layer``) of each pair
    order: torch.Tensor  # LongTensor [P]: pair ids grouped by image (stable: pair order within an image)
    unique_images: torch.Tensor  # LongTensor [U]: the distinct images, ascending
    counts: torch.Tensor  # LongTensor [U]: pairs per distinct image


def pairs_by_image(ref_idx: torch.Tensor, neurons: torch.Tensor) -> Pairs:
    """The pairs of ``neurons`` and their references ``ref_idx`` [channels, n_ref], grouped by image."""
    n_ref = ref_idx.shape[1]
    images = ref_idx[neurons].reshape(-1)
    order = torch.argsort(images, stable=True)
    unique_images, counts = torch.unique_consecutive(images[order], return_counts=True)
    channel = neurons[:, None].expand(-1, n_ref).reshape(-1)
    return Pairs(images, channel, order, unique_images, counts)


@dataclass(frozen=True)
class CircuitsPlan:
    """What :func:`circuit_attributions` checked and decided before loading any image.

    Shared with the several-process path (``distributed/pairs.py``), so both check the same
    things, use the same batch sizes and the same cache key.
    """

    model: nn.Module  # in eval mode, on ``device``
    sub: nn.Module  # the subnetwork from ``lower_layer`` to ``layer``
    device: torch.device
    batch_size: int
    image_chunk: int
    neurons: torch.Tensor  # LongTensor [N]
    n_ref: int
    pairs: Pairs
    key: str | None  # cache key; None without a cache (or for a data set whose items change)
    hit: torch.Tensor | None  # the verified cached circuits (only when looked up)
    layouts: tuple[Layout, Layout, Layout]  # of the subnetwork's input, of ``layer``, of ``lower_layer``
    lower_channels: int  # neurons of ``lower_layer``: the length of a circuit
    input_layer: str  # the layer whose output the subnetwork takes: ``cut``, else ``lower_layer``
    cut: str | None = None  # a layer below ``lower_layer`` the subnetwork starts at (None: lower_layer)

    @property
    def sequence_first(self) -> bool:
        """True when the subnetwork's input is ``[T, B, C]`` (stored batch first)."""
        return self.layouts[0].kind == "sequence_first"


def prepare_circuits(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    lower_layer: str,
    references: References | torch.Tensor,
    neurons: list[int] | torch.Tensor | None,
    method: str,
    batch_size: int | None,
    image_chunk: int | None,
    max_memory: float | None,
    device: str | torch.device | None,
    precision: str,
    cache_dir: str | os.PathLike | None,
    lookup: bool = True,
    layout: str | Layout | None = None,
    lower_layout: str | Layout | None = None,
    cut: str | None = None,
) -> CircuitsPlan:
    """The argument checks, the device, the subnetwork, the memory plan, the references and
    neurons (:func:`check_references`), the pairs, the cache key and (with ``lookup``) the hit."""
    check_choice(method, "method", ("gradient", "lrp"))
    check_choice(precision, "precision", ("float32", "tf32", "bfloat16"))
    batch_size = check_optional_int(batch_size, "batch_size", low=1)
    image_chunk = check_optional_int(image_chunk, "image_chunk", low=1)
    if max_memory is not None:
        max_memory = check_number(max_memory, "max_memory", 0, low_open=True)
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    sub = subnetwork(model, layer, lower_layer, cut=cut)
    example = check_images(collate_images([dataset[0]]), model, 0).to(device)
    with torch.inference_mode():
        lower_out = forward_to(model, lower_layer, example)
    layouts = (
        layer_layout(model, cut, example) if cut is not None else layer_layout(model, lower_layer, example, lower_layout),
        layer_layout(model, layer, example, layout),
        layer_layout(model, lower_layer, example, lower_layout),
    )
    lower_channels = layouts[2].channels(lower_out)
    if max_memory is not None:
        plan = memory_plan(model, example[0], layer, lower_layer, max_memory, precision, device)
        batch_size = min(batch_size or plan["batch_size"], plan["batch_size"])
        image_chunk = min(image_chunk or plan["image_chunk"], plan["image_chunk"])
    batch_size, image_chunk = batch_size or 256, image_chunk or 512
    use_cache = cache_dir is not None and not cache.items_change(dataset)
    dataset_fp = cache.dataset_fingerprint(dataset) if use_cache or getattr(references, "dataset", None) else None
    ref_idx, neurons_t = check_references(references, dataset, layer, neurons, model, dataset_fp, layouts[1])
    n_ref = ref_idx.shape[1]
    key = hit = None
    if use_cache:
        key = cache.fingerprint(
            kind="circuits",
            model=cache.model_fingerprint(model),
            dataset=dataset_fp,
            layer=layer,
            lower_layer=lower_layer,
            references=ref_idx.tolist(),
            neurons=neurons_t.tolist(),
            method=method,
            precision=precision,
            # only when given, so that the keys of earlier results stay valid
            **{k: repr(v) for k, v in (("layout", layout), ("lower_layout", lower_layout), ("cut", cut)) if v is not None},
            # LRP cutting into a residual block follows the block's canonized forward (before, its add was
            # plain and the relevance arrived twice): a key of its own, so that no earlier result is reused
            **({"lrp_cuts_into": sub.cuts_into} if method == "lrp" and sub.cuts_into else {}),
        )
        if lookup:
            found = cache.load_cached(cache_dir, "circuits", key, expect={"circuits": (len(neurons_t), n_ref, None)})
            hit = None if found is None else found["circuits"]
    return CircuitsPlan(model, sub, device, batch_size, image_chunk, neurons_t, n_ref, pairs_by_image(ref_idx, neurons_t),
                        key, hit, layouts, lower_channels, cut or lower_layer, cut)  # fmt: skip


def finish_circuits(
    out: torch.Tensor, plan: CircuitsPlan, layer: str, lower_layer: str, warn: bool = True, stacklevel: int = 3
) -> torch.Tensor:
    """Unnormalised circuits of all pairs [P, C_lower] -> checked, normalised [N, n_ref, C_lower].

    Raises for NaN/Inf (naming the images), warns (if ``warn``) about dead neurons.
    """
    bad = (~torch.isfinite(out)).any(1)
    if bad.any():
        raise PuretoolsError(
            f"The circuits of the reference images at data-set indices {plan.pairs.images[bad].unique()[:5].tolist()} "
            f"contain NaN or Inf: the relevance overflowed between {lower_layer!r} and {layer!r} "
            "(pixel values far too large? are the images normalised?). Check those images."
        )
    circuits = normalize_circuits(out).reshape(len(plan.neurons), plan.n_ref, -1)
    dead = [int(n) for n, c in zip(plan.neurons, circuits) if not c.abs().sum()]
    if dead and warn:
        warnings.warn(
            f"Neuron(s) {dead} of {layer!r} have zero relevance for all their references "
            "(dead neurons); their circuits are all zero.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return circuits


def save_circuits(cache_dir, key: str, circuits: torch.Tensor, layer: str, lower_layer: str, method: str,
                   precision: str) -> Path | None:  # fmt: skip
    """Write ``circuits`` under ``key`` (the file of one process, whoever computed it)."""
    return cache.save_cached(
        cache_dir, "circuits", key, {"circuits": circuits},
        {"layer": layer, "lower_layer": lower_layer, "method": method, "precision": precision},
    )
