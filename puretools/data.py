"""Image data sets: ImageNet-style folders, their transforms, and un-normalising for display."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import PuretoolsError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "denormalize",
    "image_folder",
    "load_dataset",
    "make_image_folder",
    "read_image_file",
    "register_dataset",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Undo ``Normalize(mean, std)`` and clip to [0, 1]; works on [3, H, W] and [B, 3, H, W].

    Examples
    --------
    >>> x = torch.zeros(3, 2, 2)
    >>> denormalize(x)[:, 0, 0]
    tensor([0.4850, 0.4560, 0.4060])
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise PuretoolsError(
            f"images must be a floating-point Tensor [3, H, W] or [B, 3, H, W] of normalised images, got "
            f"{type(images).__name__}{f' of dtype {images.dtype}' if isinstance(images, torch.Tensor) else ''}."
        )
    if len(mean) != len(std):
        raise PuretoolsError(f"mean and std must have one value per channel each, got {len(mean)} and {len(std)}.")
    if images.ndim not in (3, 4) or images.shape[-3] != len(mean):
        raise PuretoolsError(
            f"images of shape {tuple(images.shape)} do not have {len(mean)} channels at axis -3: denormalize "
            f"takes [{len(mean)}, H, W] or [B, {len(mean)}, H, W] (one mean and std per channel)."
        )
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * s + m).clamp(0, 1)


def _positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive int (this module sits beside :mod:`puretools.checks`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PuretoolsError(f"{name}={value!r} must be a positive integer (e.g. {name}=32).")
    return value


def image_folder(root: str | os.PathLike, size: int = 224, resize: int | None = None) -> Dataset:
    """An ImageNet-style folder (``root/class/image.jpg``) with the ImageNet evaluation transform.

    Images are converted to RGB (grayscale and RGBA files are fine), resized so the short
    side is ``resize`` (default ``size * 8 / 7``), centre-cropped to ``size`` and normalised.
    """
    from torchvision import datasets, transforms

    _positive_int(size, "size")
    if resize is not None:
        _positive_int(resize, "resize")
    root = Path(root)
    if not root.is_dir():
        raise PuretoolsError(f"Image folder {str(root)!r} does not exist.")
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(resize or round(size * 8 / 7)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    try:
        return datasets.ImageFolder(str(root), transform=transform, loader=read_image_file)
    except (FileNotFoundError, RuntimeError) as err:
        raise PuretoolsError(
            f"No images found under {str(root)!r} ({err}). Expected the layout root/<class>/<image>.jpg."
        ) from err


def read_image_file(path: str | os.PathLike):
    """Open an image file as an RGB PIL image, decoding it fully; a clear error names a bad file.

    Raises
    ------
    PuretoolsError
        The file is truncated, corrupt or not an image; the message names it.

    Examples
    --------
    >>> import tempfile
    >>> root = make_image_folder(tempfile.mkdtemp(), n=1, size=16)
    >>> path = next(root.glob("*/*.jpg"))
    >>> read_image_file(path).size
    (16, 16)
    >>> _ = path.write_bytes(path.read_bytes()[:200])  # cut the file short
    >>> read_image_file(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: Could not read the image file '...img_000000.jpg' (OSError: ...). It is truncated or corrupt (an interrupted download or copy?): copy or download it again, or remove it from the folder.
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # decodes the whole file while it is open
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise PuretoolsError(
            f"Could not read the image file {str(path)!r} ({type(err).__name__}: {err}). It is truncated "
            "or corrupt (an interrupted download or copy?): copy or download it again, or remove it "
            "from the folder."
        ) from err


#: prefix -> factory(split) for data sets defined elsewhere in puretools; the toy world registers "toy"
#: (data.py never imports the toy world: it sits below it).
_REGISTERED: dict[str, Callable[[str], Dataset]] = {}


def register_dataset(prefix: str, factory: Callable[[str], Dataset]) -> None:
    """Make :func:`load_dataset` turn ``"<prefix>:<split>"`` into ``factory(split)``.

    The toy world registers ``"toy"`` when :mod:`puretools.toyworld` is imported (``import puretools`` does).
    """
    if not isinstance(prefix, str) or not prefix.isidentifier():
        raise PuretoolsError(f"A data-set prefix must be a name such as 'toy', not {prefix!r}.")
    _REGISTERED[prefix] = factory


def load_dataset(spec: str, size: int = 224) -> Dataset:
    """A data set from a short spec: ``"toy:test"``, ``"toy:train"`` (a registered prefix) or a folder path."""
    prefix, sep, split = spec.partition(":")
    if sep and prefix in _REGISTERED:
        return _REGISTERED[prefix](split)
    return image_folder(spec, size=size)


def make_image_folder(
    root: str | os.PathLike, n: int = 40, size: int = 256, classes: int = 2, seed: int = 0
) -> Path:
    """Write ``n`` random JPEG images in ImageNet layout (``root/class_i/img_j.jpg``).

    For smoke runs and benchmarks: a stand-in for an image folder when none is at hand.
    Each image is smooth random noise (upsampled) so JPEG decoding costs what photos cost.

    Examples
    --------
    >>> import tempfile
    >>> root = make_image_folder(tempfile.mkdtemp(), n=4, size=32)
    >>> len(image_folder(root, size=16))
    4
    """
    from PIL import Image

    for name, value in (("n", n), ("size", size), ("classes", classes)):
        _positive_int(value, name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PuretoolsError(f"seed={seed!r} must be a non-negative integer (e.g. seed=0).")
    root = Path(root)
    g = torch.Generator().manual_seed(seed)
    for j in range(n):
        folder = root / f"class_{j % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        low = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=g)
        pixels = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        pixels = (pixels[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"img_{j:06d}.jpg", quality=90)
    return root
