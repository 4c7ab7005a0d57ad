"""Reference collection across ranks: contiguous shards by whole batches, top-n lists merged."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .. import cache
from ..layouts import Layout
from ..ranks import register_split
from ..reference_type import References
from ..references import collect_in_process, prepare_references, references_key, save_references
from .group import _agree, _broadcast, _collective, _group, _remove_after_barrier, _run

__all__ = ["merge_top", "shard_bounds", "sharded_references"]


def shard_bounds(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous data-set indices ``[start, stop)`` of ``rank``: whole batches, balanced.

    The ``ceil(n / batch_size)`` batches one process reads are dealt in contiguous runs, rank
    r taking batches ``r * b // w`` to ``(r + 1) * b // w``; a rank may get none when there
    are fewer batches than ranks.

    Examples
    --------
    >>> [shard_bounds(1001, 50, r, 2) for r in range(2)]  # 21 batches: 10 and 11
    [(0, 500), (500, 1001)]
    >>> shard_bounds(10, 16, 0, 2), shard_bounds(10, 16, 1, 2)  # one batch: rank 0 has none
    ((0, 0), (0, 10))
    """
    batches = -(-n // batch_size)
    first, last = rank * batches // world_size, (rank + 1) * batches // world_size
    return min(first * batch_size, n), min(last * batch_size, n)


class _Shard(Dataset):
    """Items ``start..stop-1`` of ``dataset``.

    When the data set's fingerprint needs no image (``hasher.complete``), the shard's is the
    range of it; otherwise the shard is hashed from its images like any such data set (its
    ``repr`` names the range, so the ranks' shards have different cache keys).
    """

    def __init__(self, dataset: Dataset, start: int, stop: int, hasher: cache.DatasetHasher) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop
        self.name = f"shard {start}:{stop} of {hasher.identity}"
        self.fingerprint = self.name if hasher.complete else None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.dataset[self.start + i]

    def __repr__(self) -> str:
        return self.name


def merge_top(values: torch.Tensor, indices: torch.Tensor, n_ref: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_ref`` best candidates per row by (value descending, index ascending).

    ``torch.sort`` places NaN first when descending, as the single-process streaming merge does.

    Examples
    --------
    >>> v = torch.tensor([[1.0, 3.0, 3.0, 2.0]]); i = torch.tensor([[0, 7, 4, 1]])
    >>> merge_top(v, i, 3)
    (tensor([[3., 3., 2.]]), tensor([[4, 7, 1]]))
    """
    by_index = torch.sort(indices, dim=1, stable=True).indices
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :n_ref]
    return values.gather(1, by_value), indices.gather(1, by_value)


def sharded_references(
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
    token_reduce: str = "max",
) -> References:
    """:func:`puretools.collect_references` with the same arguments, one shard of the data set per rank.

    What ``collect_references`` runs when :func:`active` (registered with
    :func:`puretools.ranks.register_split`); see the module docstring. The checks, cache key
    and cache hit are the engine's own (:func:`puretools.references.prepare_references`), each
    shard is collected by its one-process body
    (:func:`puretools.references.collect_in_process`); every rank returns the same
    :class:`~puretools.References` as one process, with the fingerprint of the whole data set.
    """
    me, world = dist.get_rank(), dist.get_world_size()

    plan, error = _run(prepare_references, model, dataset, layer, n_ref, batch_size, device, cache_dir,
                       lookup=me == 0, token_reduce=token_reduce, layout=layout)  # fmt: skip
    _agree(error, what="checking the arguments")
    hit = _broadcast(plan.hit, "sharing the cached result") if cache_dir is not None else None
    if hit is not None:
        return hit

    n, hasher = plan.n, plan.hasher
    start, stop = shard_bounds(n, batch_size, me, world)
    shard = _Shard(dataset, start, stop, hasher)
    local_n_ref = min(n_ref, stop - start)
    digests: list[bytes] = []  # of this shard's images, when the data set is hashed image by image

    def compute():
        if stop == start:
            return None
        refs = collect_in_process(model, shard, layer, local_n_ref, batch_size, device, num_workers, cache_dir,
                                  progress and me == 0, checkpoint_every, digests=digests, layout=layout,
                                  token_reduce=token_reduce)  # fmt: skip
        if not hasher.complete and len(digests) < stop - start:  # resumed or cached shard: read the rest
            missing = range(start, stop - len(digests))
            digests[:0] = [cache.item_digest(cache.item_image(dataset[i], i)) for i in missing]
        return refs.values, refs.indices + start

    part, error = _run(compute)
    payload = (None if part is None else part[0].shape[0], b"".join(digests))
    gathered = _agree(error, payload, "collecting the shards")
    channels = next(c for c, _ in gathered if c is not None)
    for _, blob in gathered:  # shards in index order: the digests one process streams
        hasher.update(blob[i : i + 32] for i in range(0, len(blob), 32))
    values = torch.full((channels, n_ref), float("-inf"))
    indices = torch.full((channels, n_ref), n, dtype=torch.long)  # padding: after every real index
    if part is not None:
        values[:, :local_n_ref], indices[:, :local_n_ref] = part[0].cpu(), part[1].cpu()
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    _collective("gathering the shards' references", dist.all_gather, all_values, values, group=_group())
    _collective("gathering the shards' references", dist.all_gather, all_indices, indices, group=_group())
    values, indices = merge_top(torch.cat(all_values, 1), torch.cat(all_indices, 1), n_ref)
    result = References(indices, values, layer, channels, hasher.hexdigest(), token_reduce)

    if plan.key is not None:
        _, error = _run(lambda: me == 0 and save_references(cache_dir, plan.key, result, n))  # one process's file
        _agree(error, what="writing the cache")
        # the shard's own result (kept by the engine until now, so a killed run resumes quickly)
        shard_key = references_key(plan.model, cache.DatasetHasher(shard), layer, local_n_ref, token_reduce, layout)
        _remove_after_barrier(cache_dir, [("references", shard_key)] if stop > start else [])
    return result


register_split("references", sharded_references)
