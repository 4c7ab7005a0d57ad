"""Several processes (``torchrun``): reference collection and circuits split across ranks, equal to one process.

When a ``torch.distributed`` process group is initialised (and holds more than one process),
:func:`puretools.collect_references` and :func:`puretools.circuit_attributions` hand their work
to this module; every rank calls them with the same arguments and gets the same result, equal
to what one process computes:

- **Reference collection.** The data set is cut into contiguous shards by index, along the
  batches one process would read (``batch_size`` images each), one run of batches per rank,
  so every image goes through the model in the same batch as in one process. Each rank keeps
  its shard's top ``n_ref`` per channel (with global data-set indices); the shards' lists are
  all-gathered and merged in the order (activation descending, data-set index ascending). One
  process breaks ties the same way: its streaming merge is a stable sort of the running top
  (lower indices) followed by the new batch (in index order), so among equal activations the
  lower data-set index wins; the top ``n_ref`` of a total order does not depend on how the
  candidates were grouped, hence the same references in the same order.
- **Circuits.** One process walks the distinct reference images in chunks of ``image_chunk``
  and, within a chunk, in batches of ``batch_size`` images sorted by their number of pairs.
  Those batches are the units of work: they are dealt to the ranks, largest first, each to
  the rank with the fewest pairs so far (balanced by pair count); each rank runs the engine's
  own batch routine on its units; the rows are all-gathered, so every rank returns the whole
  tensor. On the CPU, a rank computes the lower-layer activations of its images in forward
  passes of the same sizes as one process does (CPU kernels give bit-identical per-image
  results for equal batch sizes, whatever the other images), so the result is bit-identical
  to one process with the same ``batch_size``, ``image_chunk`` and threads per process. On
  other devices the lower-layer forward passes hold only the rank's images of a chunk (no
  padding work), so results agree to float32 rounding (different batch sizes can pick
  different kernels), not bit for bit.
- **Cache and checkpoints.** Rank 0 looks up and writes the final result under the same
  cache key as one process (one file). Each rank checkpoints its own part (reference shards
  through the single-process checkpoints, circuits in ``circuits-partial-rank<r>of<w>-*``
  files): re-running the same command after a rank was killed resumes every rank's part; the
  partial files are removed once the result is written.
- **Failures.** A rank whose work raises tells the others at the next exchange; every rank
  then raises (the failing one its own exception, the others :class:`RankFailedError` naming
  it) instead of waiting forever. A rank that dies outright breaks the connection, which the
  others report as :class:`RankFailedError` too; a rank that hangs is caught by the process
  group's timeout (``timeout=`` of ``init_process_group``, ``--timeout`` on the command line).

Results travel as CPU tensors through a gloo group (created beside an NCCL default group), so
this works the same with NCCL on GPUs and gloo on CPUs. ``with local():`` turns all of this off
(each rank then computes on its own).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from . import cache
from .errors import PuretoolsError

__all__ = [
    "RankFailedError",
    "active",
    "balance",
    "local",
    "merge_top",
    "plan_split",
    "rank",
    "rank_zero_first",
    "setup",
    "shard_bounds",
    "teardown",
    "world_size",
]

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("puretools_local", default=False)


class RankFailedError(PuretoolsError):
    """Another rank of the process group failed (or was lost); this rank stops too.

    ``failed_rank`` is the rank that reported an error, or None when the connection was lost.
    """

    def __init__(self, message: str, failed_rank: int | None = None) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank


# --------------------------------------------------------------------------- the process group


def active() -> bool:
    """True when puretools splits its work: a process group of 2+ processes, outside :func:`local`.

    Examples
    --------
    >>> active()  # no process group in this process
    False
    """
    return (
        not _LOCAL.get()
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block every rank computes on its own, as if it were alone.

    For work that differs between ranks (e.g. each rank attributes another layer).

    Examples
    --------
    >>> with local():
    ...     active()
    False
    """
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def rank() -> int:
    """This process's rank in the process group (0 without one).

    Examples
    --------
    >>> rank()
    0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the process group (1 without one).

    Examples
    --------
    >>> world_size()
    1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def setup(device: str | torch.device | None = None, timeout: float = 1800.0) -> torch.device:
    """Under ``torchrun``: initialise the default process group and return this rank's device.

    Reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``). Backend NCCL when the device is CUDA, else gloo; a CUDA device without an
    index becomes ``cuda:<LOCAL_RANK>`` (one GPU per process) and is made the current device.
    Without torchrun (no ``WORLD_SIZE`` above 1) or with a group already initialised, nothing
    is initialised.

    Parameters
    ----------
    device : str, torch.device or None
        None: CUDA if available, else the CPU.
    timeout : float
        Seconds a collective waits for the other ranks before failing (a rank that hangs
        then stops the others). It must exceed the longest time one rank may compute while
        another waits for it.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> setup("cpu")  # a plain process: nothing to set up
    device(type='cpu')
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        _TIMEOUT[0] = datetime.timedelta(seconds=timeout)
        dist.init_process_group(backend, timeout=_TIMEOUT[0])
    return device


def teardown() -> None:
    """Destroy the default process group if there is one (the end of a torchrun script).

    Examples
    --------
    >>> teardown()  # nothing to destroy here
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_GROUPS: list[tuple[Any, Any]] = []  # (default group, its gloo companion)
_TIMEOUT: list[datetime.timedelta | None] = [None]  # the timeout setup() gave the default group


def _group():
    """The group results travel in: the default one if it is gloo, else a gloo group beside it."""
    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    for default, gloo in _GROUPS:
        if default is world:
            return gloo
    gloo = dist.new_group(backend="gloo", timeout=_TIMEOUT[0])  # collective: every rank gets here in the same call
    _GROUPS.append((world, gloo))
    return gloo


def _collective(what: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as err:  # gloo/NCCL: a peer closed the connection, or the timeout expired
        raise RankFailedError(
            f"Rank {rank()} lost contact with the other ranks while {what} ({type(err).__name__}: "
            f"{str(err).strip()[:300]}). Another rank probably crashed, was killed or timed out; "
            "its own output says why."
        ) from err


def _agree(error: BaseException | None, payload: Any = None, what: str = "exchanging results") -> list:
    """Every rank's ``payload``; if any rank passes an ``error``, every rank raises instead.

    The rank that failed re-raises its own exception; the others raise :class:`RankFailedError`
    naming the first rank that failed and its message.
    """
    message = None if error is None else f"{type(error).__name__}: {error}"
    items: list = [None] * dist.get_world_size()
    _collective(what, dist.all_gather_object, items, (message, payload), group=_group())
    failed = [(r, m) for r, (m, _) in enumerate(items) if m is not None]
    if failed:
        if error is not None:
            raise error
        r, m = failed[0]
        raise RankFailedError(
            f"Rank {r} of {len(items)} failed ({m}); rank {rank()} stops too. "
            f"See rank {r}'s output for its traceback.",
            failed_rank=r,
        )
    return [p for _, p in items]


def _broadcast(obj: Any, what: str) -> Any:
    box = [obj]
    _collective(what, dist.broadcast_object_list, box, src=0, group=_group())
    return box[0]


def _run(fn: Callable, *args, **kwargs) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args, **kwargs), None
    except Exception as err:  # handed to _agree, which re-raises it on this rank
        return None, err


def rank_zero_first(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, then on the other ranks; each rank returns its own result.

    For steps that fill a shared cache, such as downloading weights: rank 0 downloads, the
    others then read the file. If ``fn`` fails on any rank, every rank raises. Without an
    active process group this is just ``fn(*args, **kwargs)``.

    Examples
    --------
    >>> rank_zero_first(max, 2, 3)
    3
    """
    if not active():
        return fn(*args, **kwargs)
    first = rank() == 0
    result, error = _run(fn, *args, **kwargs) if first else (None, None)
    _agree(error, what="waiting for rank 0")
    if not first:
        result, error = _run(fn, *args, **kwargs)
    _agree(error, what="waiting for the other ranks")
    return result


# --------------------------------------------------------------------------- reference collection


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
    from .models import get_module
    from .references import References, check_dataset

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


def _remove_after_barrier(cache_dir, entries: list[tuple[str, str]]) -> None:
    """Once every rank got here (the final file exists), delete this rank's partial files."""
    _collective("waiting for the cache to be written", dist.barrier, group=_group())
    for kind, key in entries:
        cache.remove_cached(cache_dir, kind, key)


# --------------------------------------------------------------------------- circuits


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


def _plan(flat_images: torch.Tensor, batch_size: int, image_chunk: int):
    """The plan of one process: pairs grouped by image, chunks of images, batches sorted by pair count.

    Returns the pairs' order by image, the distinct images, their pair counts and the units:
    ``(first image of the chunk, positions of the batch's images in the distinct images)``.
    """
    order = torch.argsort(flat_images, stable=True)
    unique_images, counts = torch.unique_consecutive(flat_images[order], return_counts=True)
    units: list[tuple[int, torch.Tensor]] = []
    for start in range(0, len(unique_images), image_chunk):
        by_count = torch.argsort(counts[start : start + image_chunk], descending=True, stable=True)
        units += [(start, start + by_count[b : b + batch_size]) for b in range(0, len(by_count), batch_size)]
    return order, unique_images, counts, units


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
    from .circuits import _reference_indices

    idx = _reference_indices(references)
    chosen = torch.arange(idx.shape[0]) if neurons is None else torch.as_tensor(neurons, dtype=torch.long)
    _, _, counts, units = _plan(idx[chosen].reshape(-1), batch_size, image_chunk)
    pairs = [int(counts[p].sum()) for _, p in units]
    loads = [sum(pairs[u] for u in rank_units) for rank_units in balance(pairs, world_size)]
    return {"units": pairs, "loads": loads, "ideal_speedup": round(sum(pairs) / max(loads), 3)}


def _circuits_key(model, dataset, layer, lower_layer, ref_idx, neurons_t, method, precision) -> str:
    # the key circuit_attributions computes (tests/test_distributed.py checks that the file names agree)
    return cache.fingerprint(
        kind="circuits",
        model=cache.model_fingerprint(model),
        dataset=cache.dataset_fingerprint(dataset),
        layer=layer,
        lower_layer=lower_layer,
        references=ref_idx.tolist(),
        neurons=neurons_t.tolist(),
        method=method,
        precision=precision,
    )


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
) -> torch.Tensor:
    """:func:`puretools.circuit_attributions` with its pairs split across the ranks.

    Called by ``circuit_attributions`` itself when :func:`active`, with its own arguments (an
    argument it does not know is a TypeError: it must learn it); see the module docstring.
    It runs the engine's batch routine (``circuits._attribute_chunk``) on this rank's units.
    Every rank returns the whole tensor.
    """
    from . import circuits as C

    me, world = dist.get_rank(), dist.get_world_size()

    def prepare():  # the checks and the plan of circuit_attributions, in the same order
        nonlocal batch_size, image_chunk, device, model
        if method not in ("gradient", "lrp"):
            raise PuretoolsError(f"method must be 'gradient' or 'lrp', not {method!r}.")
        if (batch_size is not None and batch_size < 1) or (image_chunk is not None and image_chunk < 1):
            raise PuretoolsError("batch_size and image_chunk must be positive integers.")
        device = C.resolve_device(device, model)
        model = C.prepare_model(model, device)
        sub = C.subnetwork(model, lower_layer, layer)
        if max_memory is not None:
            example = C.collate_images([dataset[0]])[0]
            plan = C.memory_plan(model, example, layer, lower_layer, max_memory, precision, device)
            batch_size = min(batch_size or plan["batch_size"], plan["batch_size"])
            image_chunk = min(image_chunk or plan["image_chunk"], plan["image_chunk"])
        batch_size, image_chunk = batch_size or 256, image_chunk or 512
        ref_idx = C._reference_indices(references)
        n_channels = ref_idx.shape[0]
        if neurons is None:
            neurons_t = torch.arange(n_channels)
        else:
            neurons_t = torch.as_tensor(neurons, dtype=torch.long).reshape(-1)
            bad = neurons_t[(neurons_t < 0) | (neurons_t >= n_channels)]
            if len(bad):
                raise PuretoolsError(
                    f"Neuron index {int(bad[0])} is out of range: layer {layer!r} has {n_channels} "
                    f"channels, so neurons must lie in 0..{n_channels - 1}."
                )
        n_data = len(dataset)
        if len(ref_idx) and (ref_idx.min() < 0 or ref_idx.max() >= n_data):
            raise PuretoolsError(
                f"The references index images up to {int(ref_idx.max())} but the data set holds "
                f"{n_data}: were they collected on another data set?"
            )
        key = hit = None
        if cache_dir is not None:
            key = _circuits_key(model, dataset, layer, lower_layer, ref_idx, neurons_t, method, precision)
            hit = cache.load_cached(cache_dir, "circuits", key) if me == 0 else None
        return sub, ref_idx, neurons_t, key, hit

    prepared, error = _run(prepare)
    _agree(error, what="checking the arguments")
    sub, ref_idx, neurons_t, key, hit = prepared
    hit = _broadcast(hit, "sharing the cached result") if cache_dir is not None else None
    if hit is not None:
        return hit["circuits"]

    n_ref = ref_idx.shape[1]
    pair_channel = neurons_t[:, None].expand(-1, n_ref).reshape(-1)
    flat_images = ref_idx[neurons_t].reshape(-1)
    order, unique_images, counts, units = _plan(flat_images, batch_size, image_chunk)
    pair_start = torch.cumsum(counts, 0) - counts
    assigned = balance([int(counts[p].sum()) for _, p in units], world)
    mine = [units[u] for u in assigned[me]]
    my_pairs = torch.cat([_unit_pairs(p, order, pair_start, counts) for _, p in mine] or [flat_images[:0]])

    partial_kind = f"circuits-partial-rank{me}of{world}"
    part, error = _run(
        _compute_units, C, model, sub, dataset, mine, my_pairs, counts, unique_images, pair_channel,
        image_chunk, method, batch_size, precision, device, num_workers, lower_layer, layer,
        progress=progress and me == 0, checkpoint=(cache_dir, partial_kind, key, checkpoint_every)
        if key is not None and checkpoint_every else None,
    )
    sizes = _agree(error, None if part is None else part.shape[1], "computing the circuits")
    width = max((s for s in sizes if s is not None), default=None)
    if width is None:
        raise PuretoolsError("There are no (neuron, reference) pairs to attribute: neurons is empty.")
    out = torch.zeros(len(flat_images), width)
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

    circuits = C.normalize_circuits(out).reshape(len(neurons_t), n_ref, -1)
    if me == 0:
        dead = [int(n) for n, c in zip(neurons_t, circuits) if not c.abs().sum()]
        if dead:
            warnings.warn(
                f"Neuron(s) {dead} of {layer!r} have zero relevance for all their references "
                "(dead neurons); their circuits are all zero.",
                RuntimeWarning,
                stacklevel=3,
            )
    if key is not None:
        def save():
            if me == 0:
                cache.save_cached(
                    cache_dir, "circuits", key, {"circuits": circuits},
                    {"layer": layer, "lower_layer": lower_layer, "method": method, "precision": precision},
                )

        _, error = _run(save)
        _agree(error, what="writing the cache")
        _remove_after_barrier(cache_dir, [(partial_kind, key)])
    return circuits


def _unit_pairs(positions: torch.Tensor, order: torch.Tensor, pair_start: torch.Tensor, counts: torch.Tensor):
    """Pair ids of a unit's images, grouped by image in the unit's order (as the engine reads them)."""
    return torch.cat([order[int(pair_start[p]) : int(pair_start[p] + counts[p])] for p in positions])


def _lower_activations(C, model, images: torch.Tensor, in_chunk: torch.Tensor, chunk_len: int,
                       lower_layer: str, precision: str, device: torch.device) -> torch.Tensor:
    """Lower-layer activations of ``images`` (at positions ``in_chunk`` of a chunk of ``chunk_len``).

    On the CPU each image goes through a forward pass of the size its pass has in one process
    (``_CPU_FORWARD_BATCH`` images, or the rest at the end of the chunk), filled up with
    copies of an image where the rank has fewer: the same batch size gives the same bits.
    Elsewhere all of them go in one pass, as one process forwards its whole chunk.
    """
    if device.type == "cpu":
        step = C._CPU_FORWARD_BATCH
        size = (chunk_len - in_chunk // step * step).clamp(max=step)
    else:
        size = torch.full_like(in_chunk, len(in_chunk))
    lower = None
    with torch.inference_mode(), C._precision_context(precision, device):
        for s in size.unique().tolist():
            members = (size == s).nonzero().flatten()
            for b in range(0, len(members), s):
                batch = members[b : b + s]
                x = images[batch]
                if len(batch) < s:  # fill up to the batch size of one process
                    x = torch.cat([x, x[:1].expand(s - len(batch), *x.shape[1:])])
                low = C.forward_to(model, lower_layer, x.to(device, non_blocking=True))[: len(batch)]
                if lower is None:
                    lower = low.new_empty((len(images), *low.shape[1:]))
                lower[batch.to(lower.device)] = low
    assert lower is not None
    return lower


def _compute_units(C, model, sub, dataset, mine, my_pairs, counts, unique_images, pair_channel, image_chunk,
                   method, batch_size, precision, device, num_workers, lower_layer, layer, progress, checkpoint):
    """The unnormalised circuits [len(my_pairs), C_lower] of this rank's units (None if it has none)."""
    from tqdm.auto import tqdm

    from .models import lrp_composite

    if not mine:
        return None
    local_channel = pair_channel[my_pairs]
    out, done = None, torch.zeros(len(my_pairs), dtype=torch.bool)
    if checkpoint is not None:
        cache_dir, kind, key, every = checkpoint
        state = cache.load_cached(cache_dir, kind, key)
        if state is not None and torch.equal(state["pairs"], my_pairs):  # this rank was interrupted: resume
            out, done = state["out"], state["done"]
    sizes = [int(counts[p].sum()) for _, p in mine]
    offsets = [sum(sizes[:u]) for u in range(len(mine))]
    bar = tqdm(total=len(my_pairs), initial=int(done.sum()), desc=f"circuits {lower_layer}<-{layer}",
               disable=not progress, unit="pair")
    composite = lrp_composite(model) if method == "lrp" else None
    chunks = sorted({start for start, _ in mine})
    processed = 0
    with composite.context(model) if composite else contextlib.nullcontext():
        for start in chunks:
            todo = [u for u, (s, _) in enumerate(mine)
                    if s == start and not done[offsets[u] : offsets[u] + sizes[u]].all()]  # fmt: skip
            if not todo:
                continue
            positions = torch.cat([mine[u][1] for u in todo])
            images = C._load_images(dataset, unique_images[positions], num_workers)
            C.check_images(images, model)
            chunk_len = min(image_chunk, len(unique_images) - start)
            lower = _lower_activations(C, model, images, positions - start, chunk_len, lower_layer, precision, device)
            if out is None:
                out = torch.zeros(len(my_pairs), lower.shape[1])
            row = 0
            for u in todo:
                n_images = len(mine[u][1])
                C._attribute_chunk(
                    sub, lower[row : row + n_images], torch.arange(offsets[u], offsets[u] + sizes[u]),
                    counts[mine[u][1]], local_channel, out, method, batch_size, precision, device, bar,
                )
                done[offsets[u] : offsets[u] + sizes[u]] = True
                row += n_images
            processed += 1
            if checkpoint is not None and (processed % every == 0 or done.all()):
                # also when this rank is through: if another rank fails, a re-run skips this part
                cache.save_cached(cache_dir, kind, key, {"out": out, "done": done, "pairs": my_pairs})
    bar.close()
    return out
