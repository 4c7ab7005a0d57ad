"""Fingerprinted safetensors store: a result is reused only if everything that made it is the same."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "dataset_fingerprint",
    "fingerprint",
    "load_cached",
    "model_fingerprint",
    "remove_cached",
    "save_cached",
]


def _version() -> str:
    from . import __version__

    return __version__


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer.

    Examples
    --------
    >>> import torch.nn as nn
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """Identity of a data set: its type, length, own ``fingerprint`` if any, and sample contents.

    Hashes the type name, ``len``, a ``fingerprint`` attribute when the data set has one,
    the file list of image folders (``.samples``), all tensors of a ``TensorDataset``, and
    the first, middle and last images. Data sets that are neither should define a
    ``fingerprint`` attribute if two of them can have the same length and end images.
    """
    digest = hashlib.sha256()
    n = len(dataset)
    digest.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}:{n}".encode())
    own = getattr(dataset, "fingerprint", None)
    if own is not None:
        digest.update(str(own() if callable(own) else own).encode())
    tensors = getattr(dataset, "tensors", None)  # TensorDataset: cheap to hash whole
    if isinstance(tensors, tuple):
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list):
        digest.update(json.dumps([str(s) for s in samples]).encode())
    for i in sorted({0, n // 2, n - 1}) if n else []:
        image = dataset[i][0]
        if isinstance(image, torch.Tensor):
            digest.update(image.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(image).encode())
    return digest.hexdigest()


def fingerprint(**parts: Any) -> str:
    """sha256 of the JSON of ``parts`` plus the package version.

    Examples
    --------
    >>> fingerprint(layer="layer4", n_ref=100) == fingerprint(n_ref=100, layer="layer4")
    True
    """
    parts = {**parts, "puretools_version": _version()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _path(cache_dir: str | os.PathLike, kind: str, key: str) -> Path:
    return Path(cache_dir) / f"{kind}-{key[:20]}.safetensors"


def save_cached(
    cache_dir: str | os.PathLike,
    kind: str,
    key: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` atomically (temporary file, then rename) with JSON metadata."""
    path = _path(cache_dir, kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": key, "kind": kind, "puretools_version": _version()}
    meta["info"] = json.dumps(metadata or {}, default=str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_cached(
    cache_dir: str | os.PathLike | None, kind: str, key: str
) -> dict[str, torch.Tensor] | None:
    """The tensors stored under ``key``, or None when absent, stale or corrupt (with a warning)."""
    if cache_dir is None:
        return None
    path = _path(cache_dir, kind, key)
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") != key:
            return None
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        warnings.warn(
            f"Cache file {path} is corrupt or truncated ({err}); recomputing it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def remove_cached(cache_dir: str | os.PathLike, kind: str, key: str) -> None:
    """Delete the file stored under ``key`` (e.g. a checkpoint once the run is complete)."""
    _path(cache_dir, kind, key).unlink(missing_ok=True)
