"""Fingerprints of what determines a result: the model, the data set's images, composites.

- model: every module's name, type and hyper-parameters (``extra_repr``: ``negative_slope``,
  ``inplace``, stride, ...) and every parameter and buffer (name, shape, dtype, bytes);
- data set: every image. Tensor data sets hash all their tensors, image folders every file's
  path, size, modification time in nanoseconds and class plus the transform, data sets with a
  ``fingerprint`` attribute that attribute; any other data set the bytes of every item's image
  (collect_references hashes them as it streams them, so no extra pass);
- composites and canonizers: their class and every parameter, closures included.

:mod:`puretools.cache` keys its entries with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import PuretoolsError

__all__ = [
    "DatasetHasher",
    "dataset_fingerprint",
    "item_digest",
    "item_image",
    "items_change",
    "items_prefix",
    "model_fingerprint",
    "object_fingerprint",
]


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


def items_prefix(prefix: Any, dataset: Any, indices: Any) -> Any:
    """Add the digests of the data-set images ``indices`` (in that order) to the sha256 ``prefix``.

    What a resumable checkpoint stores of the images it has done, so that a later run continues
    it only when those images are still the same (changed images, or a forged file, start over).
    Returns ``prefix``.

    Examples
    --------
    >>> data = [(torch.zeros(3, 2, 2), 0), (torch.ones(3, 2, 2), 1)]
    >>> a = items_prefix(hashlib.sha256(), data, [0, 1]).digest()
    >>> a == items_prefix(hashlib.sha256(), data, torch.tensor([0, 1])).digest()
    True
    >>> a == items_prefix(hashlib.sha256(), data, [1, 0]).digest()
    False
    """
    for i in torch.as_tensor(indices, dtype=torch.long).tolist():
        prefix.update(item_digest(item_image(dataset[i], i)))
    return prefix


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
