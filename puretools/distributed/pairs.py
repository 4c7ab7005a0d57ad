"""Circuits across ranks: the engine's batches of reference images dealt by pair count, rows gathered."""

from __future__ import annotations

import contextlib
import hashlib
import warnings

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .. import cache
from ..circuits import (
    attribute_chunk,
    finish_circuits,
    lower_activations,
    pairs_by_image,
    prepare_circuits,
    save_circuits,
)
from ..errors import PuretoolsError
from ..models import lrp_composite
from ..ranks import register_split
from ..reference_type import check_references
from .group import _agree, _broadcast, _collective, _group, _remove_after_barrier, _run

__all__ = ["balance", "plan_split", "split_circuits"]


def balance(pairs: list[int], world_size: int) -> list[list[int]]:
    """Deal units of work to ranks, largest first, each to the rank with the fewest pairs so far.

    Deterministic (ties: the earlier unit first, the lower rank); each rank's list is in unit order.

    Examples
    --------
    >>> balance([50, 10, 40, 30], 2)  # 50 -> 0, 40 -> 1, 30 -> 1, 10 -> 0
    [[0, 1], [2, 3]]
    >>> balance([7], 3)  # a rank may get nothing
    [[0], [], []]
    """
    load = [0] * world_size
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    for unit in sorted(range(len(pairs)), key=lambda u: -pairs[u]):  # sorted() is stable
        r = min(range(world_size), key=lambda r: load[r])
        ranks[r].append(unit)
        load[r] += pairs[unit]
    return [sorted(units) for units in ranks]


def _units(counts: torch.Tensor, batch_size: int, image_chunk: int) -> list[tuple[int, torch.Tensor]]:
    """The batches one process walks: ``(first image of the chunk, positions of the batch's images)``.

    ``counts`` are the pairs per distinct image (``circuits.Pairs.counts``); within a chunk
    the images are taken in decreasing order of their pair counts, as ``circuits.attribute_chunk`` does.
    """
    units: list[tuple[int, torch.Tensor]] = []
    for start in range(0, len(counts), image_chunk):
        by_count = torch.argsort(counts[start : start + image_chunk], descending=True, stable=True)
        units += [(start, start + by_count[b : b + batch_size]) for b in range(0, len(by_count), batch_size)]
    return units


def plan_split(
    references,
    world_size: int,
    neurons=None,
    batch_size: int = 256,
    image_chunk: int = 512,
) -> dict[str, list[int] | float]:
    """How :func:`puretools.circuit_attributions` would split its pairs across ``world_size`` ranks.

    Parameters
    ----------
    references : References or LongTensor [channels, n_ref]
    world_size : int
    neurons : sequence of int or None
        None: all channels.
    batch_size, image_chunk : int
        As given to ``circuit_attributions`` (its defaults here).

    Returns
    -------
    dict
        ``units``: pairs per unit of work; ``loads``: pairs per rank; ``ideal_speedup``: all
        pairs over the largest load (the speed-up if time were proportional to pairs).

    Examples
    --------
    >>> refs = torch.tensor([[0, 1], [1, 2], [2, 3]])  # 3 neurons x 2 references; images 1 and 2 have 2 pairs
    >>> plan_split(refs, 2, batch_size=1)
    {'units': [2, 2, 1, 1], 'loads': [3, 3], 'ideal_speedup': 2.0}
    """
    counts = pairs_by_image(*check_references(references, neurons=neurons)).counts
    pairs = [int(counts[p].sum()) for _, p in _units(counts, batch_size, image_chunk)]
    loads = [sum(pairs[u] for u in rank_units) for rank_units in balance(pairs, world_size)]
    return {"units": pairs, "loads": loads, "ideal_speedup": round(sum(pairs) / max(loads), 3)}


def split_circuits(
    model,
    dataset: Dataset,
    layer: str,
    lower_layer: str,
    references,
    neurons=None,
    method: str = "gradient",
    batch_size: int | None = None,
    image_chunk: int | None = None,
    max_memory: float | None = None,
    device=None,
    precision: str = "float32",
    cache_dir=None,
    progress: bool = True,
    num_workers: int = 0,
    checkpoint_every: int = 20,
    layout=None,
    lower_layout=None,
    cut: str | None = None,
) -> torch.Tensor:
    """:func:`puretools.circuit_attributions` with its pairs split across the ranks.

    What ``circuit_attributions`` runs when :func:`active` (registered with
    :func:`puretools.ranks.register_split`), with the same arguments; see the module docstring.
    The checks, plan, cache key and hit are the engine's (``circuits.prepare_circuits``), the
    images are loaded, checked and forwarded by the engine's ``lower_activations`` and
    attributed by its ``attribute_chunk``, on this rank's units; the result is checked,
    normalised and saved by the engine's ``finish_circuits`` and ``save_circuits``. Every
    rank returns the whole tensor.
    """
    me, world = dist.get_rank(), dist.get_world_size()
    plan, error = _run(prepare_circuits, model, dataset, layer, lower_layer, references, neurons, method,
                       batch_size, image_chunk, max_memory, device, precision, cache_dir, lookup=me == 0,
                       layout=layout, lower_layout=lower_layout, cut=cut)  # fmt: skip
    _agree(error, what="checking the arguments")
    hit = _broadcast(plan.hit, "sharing the cached result") if cache_dir is not None else None
    if hit is not None:
        return hit

    pairs, key = plan.pairs, plan.key
    units = _units(pairs.counts, plan.batch_size, plan.image_chunk)
    pair_start = torch.cumsum(pairs.counts, 0) - pairs.counts
    assigned = balance([int(pairs.counts[p].sum()) for _, p in units], world)
    mine = [units[u] for u in assigned[me]]
    my_pairs = torch.cat([_unit_pairs(p, pairs.order, pair_start, pairs.counts) for _, p in mine] or [pairs.images[:0]])

    partial_kind = f"circuits-partial-rank{me}of{world}"
    part, error = _run(
        _compute_units, plan, dataset, mine, my_pairs, method, precision, num_workers, lower_layer, layer,
        progress=progress and me == 0, checkpoint=(cache_dir, partial_kind, key, checkpoint_every)
        if key is not None and checkpoint_every else None,
    )
    sizes = _agree(error, None if part is None else part.shape[1], "computing the circuits")
    width = max((s for s in sizes if s is not None), default=None)
    if width is None:
        raise PuretoolsError("There are no (neuron, reference) pairs to attribute: the layer has no channels.")
    out = torch.zeros(len(pairs.images), width)
    counts_all = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    _collective("gathering the circuits", dist.all_gather, counts_all, torch.tensor([len(my_pairs)]), group=_group())
    most = int(max(c.item() for c in counts_all))
    rows = torch.zeros(most, width)
    ids = torch.zeros(most, dtype=torch.long)
    if part is not None and len(my_pairs):
        rows[: len(my_pairs)], ids[: len(my_pairs)] = part, my_pairs
    all_rows = [torch.empty_like(rows) for _ in range(world)]
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    _collective("gathering the circuits", dist.all_gather, all_rows, rows, group=_group())
    _collective("gathering the circuits", dist.all_gather, all_ids, ids, group=_group())
    for c, r, i in zip(counts_all, all_rows, all_ids):
        out[i[: int(c)]] = r[: int(c)]

    # every rank holds the same rows: the same check passes or raises on all of them
    circuits = finish_circuits(out, plan, layer, lower_layer, warn=me == 0, stacklevel=4)
    if key is not None:
        _, error = _run(lambda: me == 0 and save_circuits(cache_dir, key, circuits, layer, lower_layer, method,
                                                             precision))  # fmt: skip
        _agree(error, what="writing the cache")
        _remove_after_barrier(cache_dir, [(partial_kind, key)])
    return circuits


def _unit_pairs(positions: torch.Tensor, order: torch.Tensor, pair_start: torch.Tensor, counts: torch.Tensor):
    """Pair ids of a unit's images, grouped by image in the unit's order (as the engine reads them)."""
    return torch.cat([order[int(pair_start[p]) : int(pair_start[p] + counts[p])] for p in positions])


def _compute_units(plan, dataset, mine, my_pairs, method, precision, num_workers, lower_layer, layer, progress,
                   checkpoint):  # fmt: skip
    """The unnormalised circuits [len(my_pairs), C_lower] of this rank's units (None if it has none)."""
    if not mine:
        return None
    pairs, device = plan.pairs, plan.device
    local_channel = pairs.channel[my_pairs]
    out, done = None, torch.zeros(len(my_pairs), dtype=torch.bool)
    sizes = [int(pairs.counts[p].sum()) for _, p in mine]
    offsets = [sum(sizes[:u]) for u in range(len(mine))]
    digests: dict[int, bytes] = {}  # of each finished unit's images, read once
    # as for references: a data set whose fingerprint covers its images (tensors, its own
    # ``fingerprint``) is in the cache key already; others are hashed image by image
    by_image = checkpoint is not None and not cache.DatasetHasher(dataset).complete

    def done_digest(done: torch.Tensor) -> torch.Tensor:
        """sha256 over the images of the finished units, in unit order (the checkpoint's prefix hash)."""
        prefix = hashlib.sha256()
        for u, (_, positions) in enumerate(mine):
            if by_image and bool(done[offsets[u] : offsets[u] + sizes[u]].all()):
                if u not in digests:
                    images = pairs.unique_images[positions]
                    digests[u] = cache.items_prefix(hashlib.sha256(), dataset, images).digest()
                prefix.update(digests[u])
        return torch.frombuffer(bytearray(prefix.digest()), dtype=torch.uint8)

    if checkpoint is not None:
        cache_dir, kind, key, every = checkpoint
        n = len(my_pairs)
        state = cache.load_cached(cache_dir, kind, key,
                                  expect={"out": (n, None), "done": (n,), "pairs": (n,), "hash": (32,)})  # fmt: skip
        if state is not None and torch.equal(state["pairs"], my_pairs):  # this rank was interrupted: resume,
            if torch.equal(done_digest(state["done"]), state["hash"]):  # if its images are still the same
                out, done = state["out"], state["done"]
            else:
                digests.clear()
                warnings.warn(
                    f"The circuits checkpoint {kind!r} in the cache does not match the reference images "
                    "it saw (changed images, or a forged file); this rank starts over.",
                    RuntimeWarning, stacklevel=2,
                )  # fmt: skip
    bar = tqdm(total=len(my_pairs), initial=int(done.sum()), desc=f"circuits {lower_layer}<-{layer}",
               disable=not progress, unit="pair")
    composite = lrp_composite(plan.model) if method == "lrp" else None
    chunks = sorted({start for start, _ in mine})
    processed = 0
    with composite.context(plan.model) if composite else contextlib.nullcontext():
        for start in chunks:
            todo = [u for u, (s, _) in enumerate(mine)
                    if s == start and not done[offsets[u] : offsets[u] + sizes[u]].all()]  # fmt: skip
            if not todo:
                continue
            positions = torch.cat([mine[u][1] for u in todo])
            chunk_len = min(plan.image_chunk, len(pairs.unique_images) - start)
            lower = lower_activations(plan.model, dataset, pairs.unique_images[positions], positions - start,
                                      chunk_len, plan.input_layer, precision, device, num_workers,
                                      plan.sequence_first)  # fmt: skip
            if out is None:
                out = torch.zeros(len(my_pairs), plan.lower_channels)
            row = 0
            for u in todo:
                n_images = len(mine[u][1])
                attribute_chunk(
                    plan.sub, lower[row : row + n_images], torch.arange(offsets[u], offsets[u] + sizes[u]),
                    pairs.counts[mine[u][1]], local_channel, out, method, plan.batch_size, precision, device, bar,
                    plan.layouts, plan.cut is not None,
                )
                done[offsets[u] : offsets[u] + sizes[u]] = True
                row += n_images
            processed += 1
            if checkpoint is not None and (processed % every == 0 or done.all()):
                # also when this rank is through: if another rank fails, a re-run skips this part
                cache.save_cached(cache_dir, kind, key,
                                  {"out": out, "done": done, "pairs": my_pairs, "hash": done_digest(done)})
    bar.close()
    return out


register_split("circuits", split_circuits)
