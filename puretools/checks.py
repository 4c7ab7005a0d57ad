"""Input checks written once and called everywhere: devices, image batches, activations.

Every check raises a :class:`~puretools.errors.PuretoolsError` that says what was wrong,
which item (data-set index) and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import PuretoolsError

__all__ = [
    "MAX_PIXEL", "check_activations", "check_batch", "check_called_once", "check_choice", "check_ids", "check_images",
    "check_int", "check_module", "check_names", "check_number", "check_optional_int", "check_virtual_neurons",
    "model_dtype",
    "resolve_device",
]  # fmt: skip

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


# --------------------------------------------------------------------------- arguments


def _is_int(value: object) -> bool:
    """True for Python and numpy integers and integer 0-d tensors; False for bools and floats."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return False
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, (float, str)))


def check_int(
    value: object, name: str, low: int | None = None, high: int | None = None, fix: str = ""
) -> int:
    """``value`` as an int, refusing floats (no truncation), bools and strings, and values
    outside ``low <= value <= high``.

    Examples
    --------
    >>> check_int(3, "n_ref", low=1)
    3
    >>> check_int(2.5, "n_ref", low=1)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: n_ref=2.5 must be an integer (a float is not truncated); e.g. n_ref=2.
    >>> check_int(0, "batch_size", low=1)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: batch_size=0 must be at least 1.
    """
    if not _is_int(value):
        if isinstance(value, float) and value == value and abs(value) != float("inf"):
            example = f"e.g. {name}={int(value)}"
        else:
            example = f"e.g. {name}={max(low or 0, 1)}"
        raise PuretoolsError(
            f"{_show(name, value)} must be an integer"
            + (" (a float is not truncated)" if isinstance(value, float) else "")
            + f"; {fix or example}."
        )
    out = int(value)  # type: ignore[call-overload]
    if low is not None and out < low:
        raise PuretoolsError(f"{_show(name, out)} must be at least {low}." + (f" {fix}" if fix else ""))
    if high is not None and out > high:
        raise PuretoolsError(f"{_show(name, out)} must be at most {high}." + (f" {fix}" if fix else ""))
    return out


def check_optional_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int | None:
    """:func:`check_int`, with None passed through."""
    return None if value is None else check_int(value, name, low, high)


def check_number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the bounds (``low_open``: ``low`` itself excluded).

    Examples
    --------
    >>> check_number(0.5, "min_share", 0, 1, low_open=True)
    0.5
    >>> check_number(0, "min_share", 0, 1, low_open=True)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: min_share=0 must be in (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        isinstance(value, torch.Tensor) and value.ndim == 0
    ) and type(value).__module__ != "numpy":
        raise PuretoolsError(f"{_show(name, value)} must be a number.")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PuretoolsError(f"{_show(name, value)} must be a number.") from None
    bounds = (
        f"{'(' if low_open else '['}{'-inf' if low is None else _fmt(low)}, "
        f"{'inf' if high is None else _fmt(high)}{')' if high_open or high is None else ']'}"
    )
    ok = out == out and abs(out) != float("inf")
    if ok and low is not None:
        ok = out > low if low_open else out >= low
    if ok and high is not None:
        ok = out < high if high_open else out <= high
    if not ok:
        raise PuretoolsError(f"{_show(name, value)} must be in {bounds}.")
    return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("lrp", "method", ("gradient", "lrp"))
    'lrp'
    """
    if not isinstance(value, str) or value not in choices:
        quoted = [repr(c) for c in choices]
        options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        raise PuretoolsError(f"{_show(name, value)} is not valid: {name} must be {options}.")
    return value


def check_ids(
    values: object,
    name: str,
    n: int | None = None,
    what: str = "",
    allow_empty: bool = False,
    unique: bool = True,
) -> list[int]:
    """A list of integer ids in ``0 <= id < n``, without duplicates; one int is a list of one.

    Refused: floats (no truncation), bools, strings, ids out of range, duplicates, and (unless
    ``allow_empty``) an empty list. ``what`` names what the ids count (``"channels of 'layer4'"``).

    Examples
    --------
    >>> check_ids([0, 3], "neurons", 4)
    [0, 3]
    >>> check_ids([0, 0], "neurons", 4)
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: neurons=[0, 0] holds 0 more than once; ids must be distinct.
    """
    if isinstance(values, (str, bytes)):
        raise PuretoolsError(f"{_show(name, values)} must be integer ids (a list of ints), not a string.")
    if isinstance(values, torch.Tensor) or type(values).__module__ == "numpy":
        t = torch.as_tensor(values)
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise PuretoolsError(
                f"{name} must hold integer ids, got a tensor of dtype {t.dtype}; convert it with .long() "
                "if its values are whole numbers."
            )
        items: list = [int(v) for v in t.reshape(-1)]
    elif _is_int(values):
        items = [values]
    else:
        try:
            items = list(values)  # type: ignore[call-overload]
        except TypeError:
            raise PuretoolsError(f"{_show(name, values)} must be an int or a list of ints.") from None
    out = []
    for v in items:
        if not _is_int(v):
            raise PuretoolsError(
                f"{_show(name, values)} holds {v!r}, which is not an integer id"
                + (" (a float is not truncated)" if isinstance(v, float) else "")
                + "; give whole numbers."
            )
        out.append(int(v))
    if not out and not allow_empty:
        raise PuretoolsError(f"{_show(name, values)} is empty; give at least one id (or None for all).")
    bad = [v for v in out if v < 0 or (n is not None and v >= n)]
    if bad:
        span = f"0..{n - 1}" if n is not None else "non-negative"
        raise PuretoolsError(
            f"{_show(name, values)} holds {bad[:5]} out of range: "
            + (f"there are {n} {what or 'ids'}, so use ids in {span}." if n is not None else "ids must be >= 0.")
        )
    if unique and len(set(out)) != len(out):
        dup = sorted({v for v in out if out.count(v) > 1})
        raise PuretoolsError(
            f"{_show(name, values)} holds {', '.join(map(str, dup[:5]))} more than once; ids must be distinct."
        )
    return out


def check_names(values: object, name: str, n: int | None = None, allow_empty: bool = False) -> list[str]:
    """A list of strings; one string is refused (it would be split into its characters).

    Examples
    --------
    >>> check_names(["disc", "square"], "words")
    ['disc', 'square']
    >>> check_names("disc", "words")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: words='disc' is one string, not a list of names: it would be read letter by letter. Pass a list, e.g. words=['disc'].
    """
    if isinstance(values, str):
        raise PuretoolsError(
            f"{_show(name, values)} is one string, not a list of names: it would be read letter by letter. "
            f"Pass a list, e.g. {name}={[values]!r}."
        )
    try:
        out = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise PuretoolsError(f"{_show(name, values)} must be a list of strings.") from None
    bad = [v for v in out if not isinstance(v, str) or not v.strip()]
    if bad:
        raise PuretoolsError(f"{name} must hold non-empty strings, got {bad[:3]!r}.")
    if not out and not allow_empty:
        raise PuretoolsError(f"{name}=[] is empty; give a non-empty list (at least one name).")
    if n is not None and len(out) != n:
        raise PuretoolsError(f"{name} has {len(out)} names but {n} are needed (one per concept).")
    return out


def check_batch(images: object, model: nn.Module | None = None, name: str = "images") -> torch.Tensor:
    """A non-empty, finite, floating batch [B, C, H, W] (one image [C, H, W] becomes a batch
    of one), cast to the model's dtype: float64 works for a float32 model, uint8 is refused
    with the fix.

    Examples
    --------
    >>> check_batch(torch.zeros(2, 3, 4, 4, dtype=torch.float64), nn.Conv2d(3, 1, 1)).dtype
    torch.float32
    >>> check_batch(torch.zeros(0, 3, 4, 4))
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: images is empty (shape (0, 3, 4, 4)); pass at least one image.
    """
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError):
            raise PuretoolsError(
                f"{name} must be a tensor [B, C, H, W] (or a data set of (image, ...) items), "
                f"got {type(images).__name__}."
            ) from None
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise PuretoolsError(
            f"{name} must have shape [B, C, H, W] (or [C, H, W] for one image), got {tuple(images.shape)}."
        )
    if images.numel() == 0:
        raise PuretoolsError(f"{name} is empty (shape {tuple(images.shape)}); pass at least one image.")
    images = check_images(images, model if model is not None else nn.Identity())
    if images.dtype == torch.float64 and (model is None or model_dtype(model) is None):
        images = images.float()
    return images


def check_virtual_neurons(
    vn: object,
    layer: str | None = None,
    lower_layer: str | None = None,
    n_channels: int | None = None,
    n_lower: int | None = None,
    name: str = "vn",
) -> None:
    """Raise unless ``vn`` is a fitted VirtualNeurons that fits this layer pair.

    Checked: the layer names it was fitted with (when it knows them), its neuron ids against
    the channels of ``layer`` (a fit without ``neurons=`` names its rows 0..N-1, which is only
    unambiguous when it covers every channel), and its centroids' width against the channels
    of ``lower_layer``.
    """
    # the class lives in virtual.py (above this module): recognised by what it has
    if type(vn).__name__ != "VirtualNeurons" or not hasattr(vn, "centroids"):
        raise PuretoolsError(f"{name} must be a fitted puretools.VirtualNeurons, got {type(vn).__name__}.")
    if vn.labels is None:  # type: ignore[attr-defined]
        raise PuretoolsError(f"{name} is not fitted yet: call {name}.fit(circuits, k, neurons=...) first.")
    fit_layer, fit_lower = getattr(vn, "layer", None), getattr(vn, "lower_layer", None)
    if layer is not None and fit_layer is not None and fit_layer != layer:
        raise PuretoolsError(
            f"{name} was fitted for layer {fit_layer!r} but is used with layer={layer!r}; pass layer={fit_layer!r} "
            "or fit virtual neurons on this layer's circuits."
        )
    if lower_layer is not None and fit_lower is not None and fit_lower != lower_layer:
        raise PuretoolsError(
            f"{name} was fitted on circuits into {fit_lower!r} but is used with lower_layer={lower_layer!r}; "
            f"pass lower_layer={fit_lower!r} or fit virtual neurons on these circuits."
        )
    neurons = list(vn.neurons)  # type: ignore[attr-defined]
    if n_channels is not None:
        bad = [n for n in neurons if n >= n_channels]
        if bad:
            raise PuretoolsError(
                f"{name} was fitted for neuron(s) {bad[:5]} but layer {layer!r} has {n_channels} channels "
                f"(0..{n_channels - 1}): was {name} fitted on another layer?"
            )
        if not getattr(vn, "neurons_given", True) and len(neurons) != n_channels:
            raise PuretoolsError(
                f"{name} was fitted without neurons=, so its {len(neurons)} row(s) are taken as channels "
                f"{neurons[:5]}{'...' if len(neurons) > 5 else ''} of {layer!r}, which has {n_channels}. Pass "
                f"{name}.fit(circuits, k, neurons=...) the channels the circuits were computed for (the "
                "neurons= of circuit_attributions)."
            )
    if n_lower is not None:
        width = int(vn.centroids[0].shape[-1])  # type: ignore[attr-defined]
        if width != n_lower:
            raise PuretoolsError(
                f"{name}'s centroids have {width} values (lower-layer channels) but lower_layer={lower_layer!r} "
                f"has {n_lower} channels: was {name} fitted on circuits into another lower layer?"
            )


def check_module(model: object, name: str = "model") -> nn.Module:
    """Raise unless ``model`` is a torch module.

    Examples
    --------
    >>> check_module("resnet50")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: model must be a torch nn.Module, got str ('resnet50'); load one with puretools.load_model('resnet50').
    """
    if not isinstance(model, nn.Module):
        hint = f"; load one with puretools.load_model({model!r})" if isinstance(model, str) else ""
        raise PuretoolsError(f"{name} must be a torch nn.Module, got {type(model).__name__} ({model!r:.40}){hint}.")
    return model
