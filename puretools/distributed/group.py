"""The process group: is there one, this rank, setting it up, and exchanges that fail together."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .. import cache
from ..errors import PuretoolsError
from ..ranks import active, local, rank, world_size

# active, local, rank and world_size live in puretools.ranks (the engines ask it; it imports nothing of theirs)
__all__ = ["RankFailedError", "active", "local", "rank", "rank_zero_first", "setup", "teardown", "world_size"]


class RankFailedError(PuretoolsError):
    """Another rank of the process group failed (or was lost); this rank stops too.

    ``failed_rank`` is the rank that reported an error, or None when the connection was lost.
    """

    def __init__(self, message: str, failed_rank: int | None = None) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank


# --------------------------------------------------------------------------- the process group


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


def _remove_after_barrier(cache_dir, entries: list[tuple[str, str]]) -> None:
    """Once every rank got here (the final file exists), delete this rank's partial files."""
    _collective("waiting for the cache to be written", dist.barrier, group=_group())
    for kind, key in entries:
        cache.remove_cached(cache_dir, kind, key)

