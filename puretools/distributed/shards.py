"""Reference collection across ranks: contiguous shards by whole batches, top-n lists merged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from .. import cache
from ..errors import PuretoolsError
from .group import _agree, _broadcast, _collective, _group, _remove_after_barrier, _run, local

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
    """Items ``start..stop-1`` of ``dataset``, fingerprinted by the data set's fingerprint and the range."""

    def __init__(self, dataset: Dataset, start: int, stop: int, parent_fingerprint: str) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop
        self.fingerprint = f"shard {start}:{stop} of {parent_fingerprint}"

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.dataset[self.start + i]


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


def _references_key(model_fp: str, dataset_fp: str, layer: str, n_ref: int) -> str:
    # the key collect_references computes (tests/test_distributed.py checks that the file names agree)
    return cache.fingerprint(kind="references", model=model_fp, dataset=dataset_fp, layer=layer, n_ref=n_ref)


def sharded_references(engine: Callable, args: dict[str, Any]):
    """:func:`puretools.collect_references` (``engine``) with ``args``, one shard per rank.

    Called by ``collect_references`` itself when :func:`active`; see the module docstring.
    Every rank returns the same :class:`~puretools.References`.
    """
    from ..models import get_module
    from ..references import References, check_dataset

    model, dataset, layer, n_ref = args["model"], args["dataset"], args["layer"], args["n_ref"]
    batch_size, cache_dir = args["batch_size"], args["cache_dir"]
    me, world = dist.get_rank(), dist.get_world_size()

    def prepare():
        n = check_dataset(dataset, n_ref)
        get_module(model, layer)
        if batch_size < 1:
            raise PuretoolsError(f"batch_size must be a positive integer, not {batch_size!r}.")
        model_fp = dataset_fp = key = hit = None
        if cache_dir is not None:
            model_fp, dataset_fp = cache.model_fingerprint(model), cache.dataset_fingerprint(dataset)
            key = _references_key(model_fp, dataset_fp, layer, n_ref)
            hit = cache.load_cached(cache_dir, "references", key) if me == 0 else None
        return n, model_fp, dataset_fp, key, hit

    prepared, error = _run(prepare)
    _agree(error, what="checking the arguments")
    n, model_fp, dataset_fp, key, hit = prepared
    hit = _broadcast(hit, "sharing the cached result") if cache_dir is not None else None
    if hit is not None:
        return References(hit["indices"], hit["values"], layer)

    start, stop = shard_bounds(n, batch_size, me, world)
    shard = _Shard(dataset, start, stop, dataset_fp or "")
    local_n_ref = min(n_ref, stop - start)

    def compute():
        if stop == start:
            return None
        with local():
            refs = engine(**{**args, "dataset": shard, "n_ref": local_n_ref,
                             "progress": args["progress"] and me == 0})  # fmt: skip
        return refs.values, refs.indices + start

    part, error = _run(compute)
    shapes = _agree(error, None if part is None else part[0].shape[0], "collecting the shards")
    channels = next(s for s in shapes if s is not None)
    values = torch.full((channels, n_ref), float("-inf"))
    indices = torch.full((channels, n_ref), n, dtype=torch.long)  # padding: after every real index
    if part is not None:
        values[:, :local_n_ref], indices[:, :local_n_ref] = part[0].cpu(), part[1].cpu()
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    _collective("gathering the shards' references", dist.all_gather, all_values, values, group=_group())
    _collective("gathering the shards' references", dist.all_gather, all_indices, indices, group=_group())
    values, indices = merge_top(torch.cat(all_values, 1), torch.cat(all_indices, 1), n_ref)
    result = References(indices, values, layer)

    if key is not None:
        def save():
            if me == 0:  # the file one process writes
                cache.save_cached(
                    cache_dir, "references", key, {"indices": result.indices, "values": result.values},
                    {"layer": layer, "n_ref": n_ref, "dataset_len": n},
                )

        _, error = _run(save)
        _agree(error, what="writing the cache")
        # the shard's own result (kept by the engine until now, so a killed run resumes quickly)
        shard_entry = ("references", _references_key(model_fp, cache.dataset_fingerprint(shard), layer, local_n_ref))
        _remove_after_barrier(cache_dir, [shard_entry] if stop > start else [])
    return result

