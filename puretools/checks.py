"""Input checks written once and called everywhere: devices, image batches, activations.

Every check raises a :class:`~puretools.errors.PuretoolsError` that says what was wrong,
which item (data-set index) and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import PuretoolsError

__all__ = ["MAX_PIXEL", "check_activations", "check_called_once", "check_images", "model_dtype", "resolve_device"]

_KNOWN_TYPES = ("cpu", "cuda", "mps", "xpu", "meta")


def _show(name: str, value: object) -> str:
    """``device='gpu'`` for a Python argument, ``--device gpu`` for a command-line flag."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def resolve_device(
    device: str | torch.device | int | None, model: nn.Module | None = None, name: str = "device"
) -> torch.device:
    """``device`` as a :class:`torch.device`, checked: a clear error for a name torch does not
    know (``"gpu"``) or a device this machine does not have (``"cuda"`` without CUDA).

    Parameters
    ----------
    device : str, torch.device, int or None
        None: the device of the model's first parameter (CPU for a model without any).
    model : torch.nn.Module or None
    name : str
        How the caller spells the argument, for the message (``"--device"`` on the command line).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: device='gpu' is not a device name torch knows. Use 'cuda' (or 'cuda:0') for an NVIDIA GPU, 'mps' on Apple silicon, or 'cpu'.
    """
    if device is None:
        if model is not None:
            for p in model.parameters():
                return p.device
        return torch.device("cpu")
    cpu_fix = "--device cpu" if name.startswith("--") else "device='cpu'"
    if isinstance(device, str) and device.strip().lower().startswith("gpu"):
        device_error = True
    else:
        try:
            device = torch.device(device)
            device_error = False
        except (RuntimeError, TypeError, ValueError):
            device_error = True
    if device_error:
        raise PuretoolsError(
            f"{_show(name, device)} is not a device name torch knows. Use 'cuda' (or 'cuda:0') for an "
            "NVIDIA GPU, 'mps' on Apple silicon, or 'cpu'."
        )
    assert isinstance(device, torch.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PuretoolsError(
                f"{_show(name, str(device))} was requested but CUDA is not available on this machine "
                f"(no NVIDIA GPU, or a CPU-only build of torch). Use {cpu_fix}"
                + ("." if name.startswith("--") else " (or leave device=None to use the model's device).")
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PuretoolsError(
                f"{_show(name, str(device))} was requested but this machine has {count} CUDA device(s), "
                f"numbered 0..{count - 1}."
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PuretoolsError(f"{_show(name, str(device))} was requested but MPS is not available. Use {cpu_fix}.")
    elif device.type not in _KNOWN_TYPES:
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise PuretoolsError(f"{_show(name, str(device))} is not available on this machine. Use {cpu_fix}.")
    return device


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (None: it has none).

    Examples
    --------
    >>> model_dtype(nn.Linear(2, 2).double())
    torch.float64
    """
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _expected_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _index_list(indices: int | Sequence[int] | torch.Tensor, n: int) -> list[int]:
    if isinstance(indices, int):
        return list(range(indices, indices + n))
    return [int(i) for i in torch.as_tensor(indices).reshape(-1)]


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor | None:
    """Row positions holding NaN or Inf, or None when all values are finite.

    One reduction first (a sum in float64, which cannot overflow for finite float32 values);
    the exact per-row check runs only when that sum is not finite.
    """
    if not x.is_floating_point() or torch.isfinite(x.sum(dtype=torch.float64)):
        return None
    bad = (~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero().flatten()
    return bad if len(bad) else None


#: Pixels beyond this magnitude are refused: their squares overflow float32 (any norm, variance
#: or dot product of them is Inf), so no image holds them; 3e38 is finite, but not a pixel.
MAX_PIXEL = float(torch.finfo(torch.float32).max) ** 0.5


def _bad_image_rows(images: torch.Tensor) -> torch.Tensor | None:
    """Images holding NaN, Inf or values beyond :data:`MAX_PIXEL`, or None when there are none.

    One fused reduction first: the norm bounds every value, and it stays far below
    :data:`MAX_PIXEL` for any real batch of images; only when it does not, the exact check runs.
    """
    norm = torch.linalg.vector_norm(images, dtype=torch.float64 if images.dtype == torch.float64 else torch.float32)
    if torch.isfinite(norm) and norm <= MAX_PIXEL:
        return None
    flat = images.reshape(len(images), -1)
    bad = (~(torch.isfinite(flat) & (flat.abs() <= MAX_PIXEL))).any(1).nonzero().flatten()
    return bad if len(bad) else None


def check_images(
    images: torch.Tensor, model: nn.Module, indices: int | Sequence[int] | torch.Tensor = 0
) -> torch.Tensor:
    """Check a batch of images [B, C, H, W] against ``model``; return it in the model's dtype.

    Parameters
    ----------
    images : Tensor [B, C, H, W]
    model : torch.nn.Module
    indices : int or sequence of int
        The data-set index of each image (or of the first one when the batch is contiguous),
        named in the messages.

    Returns
    -------
    Tensor [B, C, H, W]
        ``images`` cast to the model's floating dtype: float64 images for a float32 model and
        float32 images for a ``model.half()`` both work.

    Raises
    ------
    PuretoolsError
        Wrong shape, channel count (grayscale/RGBA), an integer dtype (uint8 images are not
        scaled or normalised, so they are refused rather than guessed at), NaN/Inf values, or
        values beyond :data:`MAX_PIXEL` (about 1.8e19, whose squares overflow float32).

    Examples
    --------
    >>> model = nn.Conv2d(3, 4, 3)
    >>> check_images(torch.zeros(2, 3, 8, 8, dtype=torch.float64), model).dtype
    torch.float32
    >>> bad = torch.zeros(2, 3, 8, 8); bad[1, 0, 0, 0] = float("nan")
    >>> check_images(bad, model, indices=[7, 42])
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: Images contain NaN or Inf values, or values beyond 1.8e+19, at data-set indices [42]. Check those files and the data set's transform.
    """
    if images.ndim != 4:
        raise PuretoolsError(
            f"Expected images of shape [channels, height, width], got a batch of shape "
            f"{tuple(images.shape)}. Convert images to tensors, e.g. with "
            "torchvision.transforms.ToTensor(), in the data set's transform."
        )
    expected = _expected_in_channels(model)
    if expected is not None and images.shape[1] != expected:
        fix = (
            "convert them to RGB (PIL: image.convert('RGB'); torchvision: "
            "transforms.Grayscale(num_output_channels=3) for grayscale, or drop the alpha "
            "channel of RGBA)"
        )
        raise PuretoolsError(
            f"Images have {images.shape[1]} channel(s) but the model's first convolution expects "
            f"{expected}; {fix}."
        )
    if not images.is_floating_point():
        first = _index_list(indices, len(images))[:1]
        raise PuretoolsError(
            f"Images are of dtype {images.dtype} (from data-set index {first[0] if first else '?'} on), "
            "but models take normalised floating-point images. Add "
            "torchvision.transforms.ToTensor() (PIL images) or ConvertImageDtype(torch.float32) "
            "(uint8 tensors; both scale to [0, 1]) followed by the model's Normalize(mean, std) "
            "to the data set's transform."
        )
    bad = _bad_image_rows(images)
    if bad is not None:
        index = _index_list(indices, len(images))
        raise PuretoolsError(
            f"Images contain NaN or Inf values, or values beyond {MAX_PIXEL:.2g}, at data-set indices "
            f"{[index[int(i)] for i in bad[:5]]}. Check those files and the data set's transform."
        )
    dtype = model_dtype(model)
    if dtype is not None and images.dtype != dtype:
        images = images.to(dtype)
        bad = _nonfinite_rows(images)
        if bad is not None:
            index = _index_list(indices, len(images))
            raise PuretoolsError(
                f"Images at data-set indices {[index[int(i)] for i in bad[:5]]} overflow when cast to the "
                f"model's dtype {dtype} (values up to {float(images.abs().max()):.3g}). Normalise them "
                "(the model's Normalize(mean, std)), or use a float32 model."
            )
    return images


def check_activations(
    activations: torch.Tensor, layer: str, indices: int | Sequence[int] | torch.Tensor = 0
) -> None:
    """Raise when a layer's activations [B, ...] hold NaN or Inf, naming the data-set indices.

    Finite images can still overflow inside the model (pixels of 1e38 are finite); this is
    where that matters.

    Examples
    --------
    >>> a = torch.ones(3, 2); a[2, 1] = float("inf")
    >>> check_activations(a, "layer4", indices=10)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: The activations of layer 'layer4' contain NaN or Inf for the images at data-set indices [12], although their pixels are finite: their values are too large for the model (are they normalised?). Check those files and the data set's transform.
    """
    bad = _nonfinite_rows(activations)
    if bad is not None:
        index = _index_list(indices, len(activations))
        raise PuretoolsError(
            f"The activations of layer {layer!r} contain NaN or Inf for the images at data-set indices "
            f"{[index[int(i)] for i in bad[:5]]}, although their pixels are finite: their values are "
            "too large for the model (are they normalised?). Check those files and the data set's transform."
        )


def check_called_once(model: nn.Module, layer: str, images: torch.Tensor) -> None:
    """Run ``model`` on ``images`` (one image is enough) and raise if module ``layer`` is called
    more than once: the output of a module that ``forward()`` reuses is not one layer.

    When the full forward pass fails (a classifier that needs another image size), there is
    no verdict and no error: the forward pass that stops at ``layer`` reports its own.

    Examples
    --------
    >>> relu = nn.ReLU()
    >>> model = nn.Sequential(nn.Conv2d(3, 3, 1), relu, nn.Conv2d(3, 3, 1), relu)
    >>> check_called_once(model, "0", torch.zeros(1, 3, 4, 4))
    >>> check_called_once(model, "1", torch.zeros(1, 3, 4, 4))
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: Layer '1' is called more than once in forward(); it must be called exactly once (a module reused in several places, e.g. one ReLU shared by all blocks, has no single output). Pick another layer, or give each use its own module.
    """
    module = dict(model.named_modules()).get(layer)
    if module is None:
        return  # get_module gives the clear error for unknown names
    calls = [0]

    class _Again(Exception):
        pass

    def hook(_module, _inputs, _output):
        calls[0] += 1
        if calls[0] > 1:
            raise _Again  # no need to run the rest of the model

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(images)
    except _Again:
        pass
    except Exception:  # e.g. a classifier that needs another image size: no verdict, and
        return  # the forward pass that stops at ``layer`` gives its own clear errors
    finally:
        handle.remove()
    if calls[0] > 1:
        raise PuretoolsError(
            f"Layer {layer!r} is called more than once in forward(); it must be called exactly once "
            "(a module reused in several places, e.g. one ReLU shared by all blocks, has no single "
            "output). Pick another layer, or give each use its own module."
        )
