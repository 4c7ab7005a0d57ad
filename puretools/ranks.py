"""Is this process one of several ranks (``torchrun``), and which implementation runs then.

The engines (:func:`puretools.collect_references`, :func:`puretools.circuit_attributions`)
ask :func:`split_step` at their start. Outside a process group of 2+ processes it returns
None and they compute in this process; inside one it returns the several-process
implementation that :mod:`puretools.distributed` registered for the step when it was
imported (``puretools`` imports it). So the engines never import :mod:`puretools.distributed`,
which is built on their public steps: data and imports flow one way.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch.distributed as dist

from .errors import PuretoolsError

__all__ = ["active", "local", "rank", "register_split", "split_step", "world_size"]

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("puretools_local", default=False)

#: step name -> its several-process implementation, filled by puretools.distributed
_SPLIT: dict[str, Callable] = {}


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


def register_split(step: str, implementation: Callable) -> None:
    """Make ``implementation`` what :func:`split_step` returns for ``step`` under a process group.

    Called by :mod:`puretools.distributed` when it is imported; the implementation takes the
    same arguments as the engine's public function (``"references"``:
    :func:`puretools.collect_references`, ``"circuits"``: :func:`puretools.circuit_attributions`).
    """
    _SPLIT[step] = implementation


def split_step(step: str) -> Callable | None:
    """The several-process implementation of ``step`` when :func:`active`, else None.

    Raises
    ------
    PuretoolsError
        Under a process group when nothing was registered for ``step``.

    Examples
    --------
    >>> split_step("circuits") is None  # one process: the engine computes here
    True
    """
    if not active():
        return None
    if step not in _SPLIT:
        raise PuretoolsError(
            f"This process is one of {world_size()} ranks but no several-process implementation of "
            f"{step!r} is registered: import puretools (which imports puretools.distributed) rather than "
            f"a single module of it, or run the step inside puretools.distributed.local()."
        )
    return _SPLIT[step]
