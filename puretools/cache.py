"""Fingerprinted safetensors store: a result is reused only if everything that made it is the same.

What is fingerprinted (see the README's "Command line" section):

- model: every module's name, type and hyper-parameters (``extra_repr``: ``negative_slope``,
  ``inplace``, stride, ...) and every parameter and buffer (name, shape, dtype, bytes);
- data set: every image. Tensor data sets hash all their tensors, image folders every file's
  path, size, modification time in nanoseconds and class plus the transform, data sets with a
  ``fingerprint`` attribute that attribute; any other data set the bytes of every item's image
  (collect_references hashes them as it streams them, so no extra pass);
- composites and canonizers: their class and every parameter, closures included.

A written entry carries a checksum of its tensors; a hit whose checksum, keys or shapes do not
match is reported and recomputed. A write that fails costs a warning, never the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import types
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import PuretoolsError

__all__ = [
    "DatasetHasher",
    "dataset_fingerprint",
    "fingerprint",
    "items_change",
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
    from . import __version__

    return __version__


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


# --------------------------------------------------------------------------- models, objects


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture and every parameter and buffer of ``model``.

    The architecture is each module's name, class and ``extra_repr()`` (its hyper-parameters:
    kernel size, stride, ``negative_slope``, ``inplace``...); the weights are the names,
    shapes, dtypes and bytes of the ``state_dict``.

    Examples
    --------
    >>> import torch.nn as nn
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
    >>> relu, leaky = nn.Sequential(a, nn.ReLU()), nn.Sequential(a, nn.LeakyReLU())  # same weights
    >>> model_fingerprint(relu) == model_fingerprint(leaky)
    False
    """
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        digest.update(f"module {name}:{kind}({module.extra_repr()})\n".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"tensor {name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


_SKIP_ATTRIBUTES = frozenset({"handles", "stored_tensors", "hook_refs"})  # runtime state, not settings


def _code_digest(code: types.CodeType) -> str:
    """Digest of a function's byte code and constants (nested code objects recursively, no addresses)."""
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return hashlib.sha256(code.co_code + json.dumps(consts).encode()).hexdigest()[:16]


def _describe(obj: Any, seen: set[int], depth: int = 0) -> Any:
    """A JSON-able description of ``obj`` with every setting it holds, free of memory addresses."""
    if depth > 12:
        return "<deep>"
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, torch.Tensor):
        return ["tensor", list(obj.shape), str(obj.dtype), hashlib.sha256(_tensor_bytes(obj)).hexdigest()]
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_describe(v, seen, depth + 1) for v in obj]
        return sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, dict):
        return {str(k): _describe(v, seen, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, types.MethodType):  # bound method: its function and its owner's class
        return ["method", _describe(obj.__func__, seen, depth + 1), _describe(type(obj.__self__), seen, depth)]
    if isinstance(obj, types.FunctionType):  # lambdas of zennit rules keep their settings in closures
        code = obj.__code__
        return {
            "function": f"{obj.__module__}.{obj.__qualname__}",
            "code": _code_digest(code),
            "defaults": _describe(obj.__defaults__, seen, depth + 1),
            "closure": [_describe(c.cell_contents, seen, depth + 1) for c in obj.__closure__ or ()],
        }
    if isinstance(obj, nn.Module):
        return ["module", _describe(type(obj), seen, depth), repr(obj)]
    if id(obj) in seen:
        return ["cycle", _describe(type(obj), seen, depth)]
    seen.add(id(obj))
    attributes = getattr(obj, "__dict__", None)
    if attributes is None:
        return ["object", _describe(type(obj), seen, depth), repr(obj)]
    settings = {k: v for k, v in attributes.items() if k not in _SKIP_ATTRIBUTES}
    return ["object", _describe(type(obj), seen, depth), _describe(settings, seen, depth + 1)]


def object_fingerprint(obj: Any) -> str:
    """sha256 of an object's class and every setting it holds (attributes, closures, tensors).

    Used for zennit composites and canonizers, and for the transforms of image folders.

    Examples
    --------
    >>> from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    >>> object_fingerprint(EpsilonPlusFlat()) == object_fingerprint(EpsilonPlusFlat())
    True
    >>> object_fingerprint(EpsilonGammaBox(low=-3.0, high=3.0)) == object_fingerprint(EpsilonGammaBox(low=-2.0, high=2.0))
    False
    """
    text = json.dumps(_describe(obj, set()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- data sets


def item_image(item: Any, index: int) -> torch.Tensor:
    """The image tensor of a data-set item (``(image, ...)`` or a bare tensor); clear error otherwise.

    Examples
    --------
    >>> item_image((torch.zeros(3, 2, 2), 7), 0).shape
    torch.Size([3, 2, 2])
    >>> item_image({"image": torch.zeros(3, 2, 2)}, 5)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: Data-set item 5 is a dict with keys ['image']; puretools needs items that are (image, ...) tuples or image tensors. Wrap the data set so that __getitem__ returns (image_tensor, label), e.g. for dict items: `return item['image'], item['label']`.
    """
    image = item[0] if isinstance(item, (tuple, list)) and len(item) else item
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(item, dict):
        raise PuretoolsError(
            f"Data-set item {index} is a dict with keys {sorted(map(str, item))[:5]}; puretools needs items "
            "that are (image, ...) tuples or image tensors. Wrap the data set so that __getitem__ returns "
            "(image_tensor, label), e.g. for dict items: `return item['image'], item['label']`."
        )
    raise PuretoolsError(
        f"Data-set item {index} starts with a {type(image).__name__}, not an image tensor. Add "
        "torchvision.transforms.ToTensor() (and Normalize) to the data set's transform."
    )


def item_digest(image: torch.Tensor) -> bytes:
    """sha256 of one image's shape, dtype and bytes (32 bytes).

    Examples
    --------
    >>> x = torch.zeros(3, 2, 2)
    >>> item_digest(x) == item_digest(x.clone()), item_digest(x) == item_digest(x.double())
    (True, False)
    """
    digest = hashlib.sha256(f"{tuple(image.shape)}:{image.dtype}".encode())
    try:  # the common case without a copy or a torch call per step
        data = image.numpy() if image.is_contiguous() else None
    except (RuntimeError, TypeError):  # on a GPU, requires grad, or no numpy dtype (bfloat16)
        data = None
    digest.update(_tensor_bytes(image) if data is None else data)
    return digest.digest()


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _fast_parts(dataset: Any, indices: list[int] | None = None) -> list[Any] | None:
    """Everything that determines the images, without reading them; None if unknown."""
    own = getattr(dataset, "fingerprint", None)
    if own is not None:
        return ["own", _type_name(dataset), str(own() if callable(own) else own), indices]
    tensors = getattr(dataset, "tensors", None)
    if isinstance(dataset, torch.utils.data.TensorDataset) and isinstance(tensors, tuple):
        pick = torch.as_tensor(indices, dtype=torch.long) if indices is not None else None
        return ["tensors", [_describe(t if pick is None else t[pick], set()) for t in tensors]]
    if isinstance(dataset, torch.utils.data.Subset):
        sub = [int(i) for i in dataset.indices]
        return _fast_parts(dataset.dataset, sub if indices is None else [sub[i] for i in indices])
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and callable(getattr(dataset, "loader", None)):  # torchvision DatasetFolder
        files = []
        for i in range(len(samples)) if indices is None else indices:
            path, target = samples[i]
            try:
                st = os.stat(path)
            except OSError as err:
                raise PuretoolsError(
                    f"Image file {path} (data-set index {i}) cannot be read ({err.strerror}); it was moved "
                    "or deleted after the data set was made. Make the data set again."
                ) from err
            files.append([str(path), st.st_size, st.st_mtime_ns, _describe(target, set())])
        settings = [_describe(getattr(dataset, "loader", None), set())]
        for name in ("transform", "target_transform", "transforms"):
            settings.append(object_fingerprint(getattr(dataset, name, None)))
        return ["folder", _type_name(dataset), files, settings]
    return None


def _identity(dataset: Any) -> list[Any]:
    """Type, length and (when the class defines one) repr: cheap, but not the content."""
    own_repr = type(dataset).__repr__ is not object.__repr__
    return [_type_name(dataset), len(dataset), repr(dataset) if own_repr else None]


class DatasetHasher:
    """The fingerprint of a data set, computed up front or from its items as they stream by.

    ``complete`` says whether :attr:`identity` already covers every image (tensor data sets,
    image folders, data sets with a ``fingerprint`` attribute). If not, feed the digests of all
    items in index order to :meth:`update` (:func:`item_digest`); :meth:`hexdigest` then equals
    :func:`dataset_fingerprint`. The running state is 32 bytes (:attr:`state`), so a
    checkpointed run can :meth:`resume` it.

    Examples
    --------
    >>> class Plain(torch.utils.data.Dataset):  # neither tensors nor files: hashed item by item
    ...     def __len__(self):
    ...         return 3
    ...     def __getitem__(self, i):
    ...         return torch.full((3, 2, 2), float(i)), i
    >>> hasher = DatasetHasher(Plain())
    >>> hasher.complete
    False
    >>> hasher.update(item_digest(Plain()[i][0]) for i in range(3))
    >>> hasher.hexdigest() == dataset_fingerprint(Plain())
    True
    """

    def __init__(self, dataset: Any) -> None:
        fast = _fast_parts(dataset)
        self.complete = fast is not None
        parts = ["v2", _identity(dataset), fast]
        self.identity = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        self.state = bytes.fromhex(self.identity)
        self.count = 0

    def update(self, digests: Iterable[bytes]) -> None:
        if self.complete:
            return
        state = self.state
        for d in digests:
            state = hashlib.sha256(state + d).digest()
            self.count += 1
        self.state = state

    def resume(self, state: bytes, count: int) -> None:
        self.state, self.count = bytes(state), int(count)

    def hexdigest(self) -> str:
        return self.identity if self.complete else hashlib.sha256(self.state + b"items").hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """Identity of a data set that changes whenever any of its images changes.

    Tensor data sets: all their tensors. Image folders (torchvision ``DatasetFolder``): every
    file's path, size, modification time in nanoseconds and class, plus the transform. Data
    sets with a ``fingerprint`` attribute (or method): that value, which must then change with
    the content. Any other data set: the bytes of every item's image, read once (for a data
    set that is expensive to read, define ``fingerprint``). ``Subset``s fingerprint only their
    own items. The type, length and (if the class defines it) ``repr`` always count.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> x = torch.zeros(5, 3, 4, 4)
    >>> a = dataset_fingerprint(TensorDataset(x))
    >>> x[3, 0, 2, 2] = 1.0  # one pixel of one image
    >>> dataset_fingerprint(TensorDataset(x)) == a
    False
    """
    hasher = DatasetHasher(dataset)
    if not hasher.complete:
        hasher.update(item_digest(item_image(dataset[i], i)) for i in range(len(dataset)))
    return hasher.hexdigest()


def items_change(dataset: Any, warn: bool = True) -> bool:
    """True (with a warning) if item 0 differs between two reads, e.g. under random augmentation.

    Such a data set cannot be cached: every call would see other images.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> items_change(TensorDataset(torch.zeros(2, 3, 4, 4)))
    False
    """
    if len(dataset) == 0:
        return False
    first, second = (item_digest(item_image(dataset[0], 0)) for _ in range(2))
    if first != second and warn:
        warnings.warn(
            "Item 0 of the data set differs between two reads (random augmentation in the "
            "transform?), so its results are not cached and references cannot be matched to "
            "images. Use a deterministic transform (e.g. Resize + CenterCrop instead of "
            "RandomResizedCrop) for puretools.",
            UserWarning,
            stacklevel=3,
        )
    return first != second


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


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_orphans(folder: Path) -> None:
    """Delete temporary files left by writes that were killed (their process is gone)."""
    try:
        temps = list(folder.glob(".*.safetensors.*.tmp"))
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

    The file is written to a temporary file named after this process, then renamed, so a
    reader never sees half a file; it gets the permissions of any new file (``0666`` minus the
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
    tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"fingerprint": key, "kind": kind, "puretools_version": _version(), "checksum": _checksum(tensors)}
    meta["info"] = json.dumps(metadata or {}, default=str)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o666 & ~_umask())  # as any new file: a shared cache directory works for a group
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        warnings.warn(
            f"Could not write the cache file {path} ({type(err).__name__}: {err}); the result is "
            "returned but not cached. Check that the cache directory is a writable folder with "
            "free space, or pass another cache_dir.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
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
