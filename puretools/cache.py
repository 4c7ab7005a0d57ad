"""Fingerprinted safetensors store: a result is reused only if everything that made it is the same.

Keys are built from :mod:`puretools.fingerprints` (model architecture and weights, every image of
the data set, composites with all their parameters). A written entry carries a checksum of its
tensors; a hit whose checksum, keys or shapes do not match is reported and recomputed. A write
that fails costs a warning, never the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ._version import __version__
from .files import TEMP_MARK, atomic_save_file, remove_stale_temps
from .fingerprints import (
    DatasetHasher,
    _tensor_bytes,
    dataset_fingerprint,
    item_digest,
    item_image,
    items_change,
    items_prefix,
    model_fingerprint,
    object_fingerprint,
)

__all__ = [
    "DatasetHasher",
    "dataset_fingerprint",
    "fingerprint",
    "item_digest",
    "item_image",
    "items_change",
    "items_prefix",
    "load_cached",
    "load_entry",
    "model_fingerprint",
    "object_fingerprint",
    "remove_cached",
    "save_cached",
]

#: Temporary files of writes by a process of another machine are removed after this many seconds.
STALE_TEMP_SECONDS = 24 * 3600


def _version() -> str:
    return __version__


# --------------------------------------------------------------------------- the store


def fingerprint(**parts: Any) -> str:
    """sha256 of the JSON of ``parts`` plus the package version.

    Examples
    --------
    >>> fingerprint(layer="layer4", n_ref=100) == fingerprint(n_ref=100, layer="layer4")
    True
    """
    parts = {**parts, "puretools_version": _version()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _dir(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir).expanduser()


def _path(cache_dir: str | os.PathLike, kind: str, key: str) -> Path:
    return _dir(cache_dir) / f"{kind}-{key[:20]}.safetensors"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


_HOST = socket.gethostname().replace(".", "_") or "host"


def _remove_orphans(folder: Path) -> None:
    """Delete temporary files left by writes that were killed (their process is gone): those of
    :func:`puretools.files.atomic_save_file`, and those of the earlier naming scheme."""
    remove_stale_temps(folder)
    try:
        temps = [p for p in folder.glob(".*.safetensors.*.tmp") if TEMP_MARK not in p.name]
    except OSError:
        return
    for tmp in temps:
        parts = tmp.name.split(".")  # .<entry>.safetensors.<host>.<pid>.<random>.tmp
        try:
            host, pid = parts[-4], int(parts[-3])
        except (IndexError, ValueError):
            host, pid = "", 0  # written by an older version: judged by its age
        try:
            if host == _HOST:
                try:
                    os.kill(pid, 0)
                    continue  # a live writer
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue  # alive, someone else's
            elif tmp.stat().st_mtime > time.time() - STALE_TEMP_SECONDS:
                continue
            tmp.unlink()
        except OSError:
            pass


def save_cached(
    cache_dir: str | os.PathLike,
    kind: str,
    key: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``tensors`` atomically with JSON metadata and a checksum; None (and a warning) on failure.

    The file is written by :func:`puretools.files.atomic_save_file` (a temporary file named
    after this process, fsync, rename), so a reader never sees half a file; it gets the permissions of any new file (``0666`` minus the
    umask), so a shared cache directory works for a group. A write that fails (``cache_dir``
    is a file, the entry's path is a directory, the disk is full...) warns and returns None:
    the caller keeps its result.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = save_cached(folder, "demo", "k" * 64, {"x": torch.arange(3)})
    >>> load_cached(folder, "demo", "k" * 64)["x"]
    tensor([0, 1, 2])
    """
    path = _path(cache_dir, kind, key)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"fingerprint": key, "kind": kind, "puretools_version": _version(), "checksum": _checksum(tensors)}
    meta["info"] = json.dumps(metadata or {}, default=str)
    try:
        _remove_orphans(path.parent)
        atomic_save_file(tensors, path, meta)
    except (OSError, SafetensorError) as err:
        warnings.warn(
            f"Could not write the cache file {path} ({type(err).__name__}: {err}); the result is "
            "returned but not cached. Check that the cache directory is a writable folder with "
            "free space, or pass another cache_dir.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return path


def load_entry(
    cache_dir: str | os.PathLike | None,
    kind: str,
    key: str,
    expect: dict[str, tuple[int | None, ...]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and metadata stored under ``key``; None when absent, stale or not verified.

    A file is used only if its fingerprint is ``key``, the checksum of its tensors matches the
    one stored when it was written, and (with ``expect``) it holds exactly the keys of
    ``expect`` with those shapes (None in a shape matches any size). Otherwise a warning says
    why and None is returned, so the caller recomputes and overwrites the file. Temporary files
    of killed writes in ``cache_dir`` are removed first.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_cached(folder, "demo", "k" * 64, {"x": torch.zeros(2, 3)}, {"layer": "layer4"})
    >>> tensors, info = load_entry(folder, "demo", "k" * 64, expect={"x": (2, None)})
    >>> info
    {'layer': 'layer4'}
    """
    if cache_dir is None:
        return None
    path = _path(cache_dir, kind, key)
    _remove_orphans(path.parent)
    if not path.is_file():
        if path.exists():
            warnings.warn(f"Cache entry {path} is not a file; recomputing it.", RuntimeWarning, stacklevel=3)
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") != key:
            return None
        tensors = load_file(str(path))
        info = json.loads(meta.get("info") or "{}")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        _warn_bad(path, f"corrupt or truncated ({err})")
        return None
    if meta.get("checksum") != _checksum(tensors):
        _warn_bad(path, "corrupt: its tensors do not match the checksum stored when it was written")
        return None
    if expect is not None:
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        ok = shapes.keys() == expect.keys() and all(
            len(shapes[k]) == len(want) and all(w is None or w == s for s, w in zip(shapes[k], want))
            for k, want in expect.items()
        )
        if not ok:
            wanted = {k: tuple("*" if w is None else w for w in v) for k, v in expect.items()}
            _warn_bad(path, f"not what this call computes (holds {shapes}, expected {wanted})")
            return None
    return tensors, info


def _warn_bad(path: Path, why: str) -> None:
    warnings.warn(f"Cache file {path} is {why}; recomputing it.", RuntimeWarning, stacklevel=4)


def load_cached(
    cache_dir: str | os.PathLike | None,
    kind: str,
    key: str,
    expect: dict[str, tuple[int | None, ...]] | None = None,
) -> dict[str, torch.Tensor] | None:
    """The tensors stored under ``key``, or None when absent, stale or corrupt (see :func:`load_entry`).

    Examples
    --------
    >>> import tempfile
    >>> load_cached(tempfile.mkdtemp(), "demo", "k" * 64) is None  # nothing stored yet
    True
    """
    entry = load_entry(cache_dir, kind, key, expect)
    return None if entry is None else entry[0]


def remove_cached(cache_dir: str | os.PathLike, kind: str, key: str) -> None:
    """Delete the file stored under ``key`` (e.g. a checkpoint once the run is complete).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_cached(folder, "demo", "k" * 64, {"x": torch.zeros(1)})
    >>> remove_cached(folder, "demo", "k" * 64)
    >>> load_cached(folder, "demo", "k" * 64) is None
    True
    """
    try:
        _path(cache_dir, kind, key).unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"Could not remove the cache file {_path(cache_dir, kind, key)} ({err}).", RuntimeWarning,
                      stacklevel=3)
