"""Circuits across ranks: the engine's batches of reference images dealt by pair count, rows gathered."""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from .. import cache
from ..errors import PuretoolsError
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
    from ..circuits import _reference_indices

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
    from .. import circuits as C

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

    from ..models import lrp_composite

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
