"""The toy world: seeded synthetic concepts with ground truth, their toy ResNet, and training."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .errors import PuretoolsError, WeightsNotFoundError

__all__ = [
    "CONCEPTS",
    "DATA_DIR",
    "IMAGE_SIZE",
    "LAYER",
    "LOWER_LAYER",
    "MEAN",
    "SPLIT_SIZES",
    "STD",
    "ToyResNet",
    "ToyWorld",
    "build_model",
    "concept_mix",
    "denormalize",
    "dominant_concepts",
    "dominant_shares",
    "ground_truth_scores",
    "load_toy_model",
    "polysemantic_neurons",
    "train",
]

#: Ground-truth concepts: 6 solid shapes, 4 two-colour textures, 6 thin strokes.
CONCEPTS: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "plus", "star",
    "stripes_h", "stripes_v", "checkerboard", "dots",
    "diagonal", "anti_diagonal", "x_cross", "h_line", "v_line", "zigzag",
)  # fmt: skip
IMAGE_SIZE = 32
#: Per-channel mean and standard deviation of the train split (pixels in [0, 1]).
MEAN = (0.496, 0.496, 0.496)
STD = (0.32, 0.32, 0.32)
#: The toy model's layer of interest (narrower than the number of concepts) and the layer below.
LAYER = "layer4"
LOWER_LAYER = "layer3"
#: Where the shipped checkpoint and its training record live.
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toyworld"
#: Default number of images per split.
SPLIT_SIZES = {"train": 24_000, "test": 3_000}

_STREAMS = {"train": 0, "test": 1}  # independent random streams: the splits never share an image
_CHUNK = 500  # generated in fixed chunks, so a smaller split is a prefix of a larger one
_MAX_OBJECTS = 3
_OBJECT_COUNTS = (0.7, 0.2, 0.1)  # probabilities of 1, 2, 3 objects (before placement)
_SIZE_RANGE = (8.0, 15.0)  # side of an object's bounding box, pixels


# --------------------------------------------------------------------------------------------
# Image generator
# --------------------------------------------------------------------------------------------


def _sample_scenes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random scene parameters of ``n`` images: background, up to 3 objects, their looks."""
    s, c = IMAGE_SIZE, len(CONCEPTS)
    n_obj = rng.choice(np.arange(1, _MAX_OBJECTS + 1), n, p=_OBJECT_COUNTS)
    concept = np.argsort(rng.random((n, c)), axis=1)[:, :_MAX_OBJECTS]  # distinct per image
    size = rng.uniform(*_SIZE_RANGE, (n, _MAX_OBJECTS))
    cx = np.zeros((n, _MAX_OBJECTS))
    cy = np.zeros((n, _MAX_OBJECTS))
    placed = np.zeros((n, _MAX_OBJECTS), dtype=bool)
    tries = 64
    rows = np.arange(n)
    for j in range(_MAX_OBJECTS):  # rejection sampling, vectorised over images
        half = size[:, j : j + 1] / 2
        u = rng.random((n, tries, 2))
        x = half + u[..., 0] * (s - 2 * half)
        y = half + u[..., 1] * (s - 2 * half)
        ok = np.ones((n, tries), dtype=bool)
        for i in range(j):  # bounding boxes 1 px apart from every object already placed
            gap = half + size[:, i : i + 1] / 2 + 1
            apart = (np.abs(x - cx[:, i : i + 1]) >= gap) | (np.abs(y - cy[:, i : i + 1]) >= gap)
            ok &= apart | ~placed[:, i : i + 1]
        first = ok.argmax(1)
        cx[:, j], cy[:, j] = x[rows, first], y[rows, first]
        placed[:, j] = (j < n_obj) & ok.any(1)
    dark = rng.random(n) < 0.5
    level = np.where(dark, rng.uniform(0.02, 0.35, n), rng.uniform(0.62, 0.98, n))
    bg = np.clip(level[:, None] + rng.uniform(-0.08, 0.08, (n, 3)), 0, 1)
    raw = rng.random((n, _MAX_OBJECTS, 3))
    colour = np.where(dark[:, None, None], 0.5 + 0.5 * raw, 0.5 * raw)  # contrasts with the bg
    return {
        "concept": concept,
        "placed": placed,
        "cx": cx,
        "cy": cy,
        "size": size,
        "colour": colour,
        "phase": rng.uniform(0, 12, (n, _MAX_OBJECTS, 2)),
        "period": rng.choice([4.0, 6.0], (n, _MAX_OBJECTS)),
        "width": rng.uniform(0.6, 1.0, (n, _MAX_OBJECTS)),  # half-width of strokes, pixels
        "bg": bg,
        "grad_amp": rng.uniform(0, 0.2, n),
        "grad_angle": rng.uniform(0, 2 * np.pi, n),
        "noise_sigma": rng.uniform(0.0, 0.06, n),
        "noise_seed": rng.integers(0, 2**31, n),
    }


def _shape(name: str, dx, dy, r, phase, period, width):
    """Inside-mask [m, S, S] of one concept and, for textures, its pattern (else None)."""
    ax, ay = np.abs(dx), np.abs(dy)
    box = (ax <= r) & (ay <= r)
    if name == "disc":
        return dx**2 + dy**2 <= r**2, None
    if name == "square":
        return (ax <= 0.8 * r) & (ay <= 0.8 * r), None
    if name == "triangle":
        return (dy <= 0.75 * r) & (ax <= 0.6 * (dy + r)), None
    if name == "diamond":
        return ax + ay <= r, None
    if name == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2), None
    if name == "plus":
        return ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r)), None
    if name == "star":
        theta = np.arctan2(dy, dx) + np.pi / 2
        return np.hypot(dx, dy) <= r * (0.42 + 0.58 * np.abs(np.cos(2.5 * theta)) ** 4), None
    px, py = dx + phase[..., 0], dy + phase[..., 1]
    if name in ("stripes_h", "stripes_v", "checkerboard", "dots", "grid"):
        patch = (ax <= 0.85 * r) & (ay <= 0.85 * r)
        cell_x = np.floor(2 * px / period) % 2
        cell_y = np.floor(2 * py / period) % 2
        if name == "stripes_h":
            pattern = cell_y == 0
        elif name == "stripes_v":
            pattern = cell_x == 0
        elif name == "checkerboard":
            pattern = cell_x == cell_y
        elif name == "dots":
            ux, uy = px % period - period / 2, py % period - period / 2
            pattern = ux**2 + uy**2 <= (period / 4 + 0.2) ** 2
        else:
            pattern = (px % period < 1) | (py % period < 1)
        return patch, pattern
    w = width
    diag = np.abs(dx - dy) / math.sqrt(2) <= w
    anti = np.abs(dx + dy) / math.sqrt(2) <= w
    if name == "diagonal":
        return box & diag, None
    if name == "anti_diagonal":
        return box & anti, None
    if name == "x_cross":
        return box & (diag | anti), None
    if name == "h_line":
        return box & (ay <= w), None
    if name == "v_line":
        return box & (ax <= w), None
    if name == "zigzag":
        half_period = 0.5 * r
        tri = np.abs((dx + r) % (2 * half_period) - half_period) / half_period  # 0..1
        return box & (np.abs(dy - 0.45 * r * (2 * tri - 1)) <= w + 0.2), None
    raise ValueError(name)


def _render(scenes: dict[str, np.ndarray], with_masks: bool = False):
    """Images as uint8 [n, 3, S, S] and, if asked, per-object masks bool [n, 3, S, S]."""
    n, s = len(scenes["bg"]), IMAGE_SIZE
    grid = np.arange(s, dtype=np.float32) + 0.5
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # [S, S]
    ramp = (np.cos(scenes["grad_angle"])[:, None, None] * (gx - s / 2)
            + np.sin(scenes["grad_angle"])[:, None, None] * (gy - s / 2)) / s  # fmt: skip
    img = scenes["bg"][:, :, None, None] + (scenes["grad_amp"][:, None, None] * ramp)[:, None]
    img = img.astype(np.float32)
    masks = np.zeros((n, _MAX_OBJECTS, s, s), dtype=bool) if with_masks else None
    for j in range(_MAX_OBJECTS):
        for c, name in enumerate(CONCEPTS):
            idx = np.nonzero(scenes["placed"][:, j] & (scenes["concept"][:, j] == c))[0]
            if len(idx) == 0:
                continue
            col = lambda a: a[idx, j].astype(np.float32)[:, None, None]
            dx = gx[None] - col(scenes["cx"])
            dy = gy[None] - col(scenes["cy"])
            phase = scenes["phase"][idx, j].astype(np.float32)[:, None, None, :]
            inside, pattern = _shape(name, dx, dy, col(scenes["size"]) / 2, phase,
                                     col(scenes["period"]), col(scenes["width"]))  # fmt: skip
            fg = scenes["colour"][idx, j].astype(np.float32)[:, :, None, None]  # [m, 3, 1, 1]
            if pattern is None:
                paint = np.broadcast_to(fg, (len(idx), 3, s, s))
            else:  # textures: the colour on a half-way mix of colour and background
                off = 0.5 * (fg + scenes["bg"][idx].astype(np.float32)[:, :, None, None])
                paint = np.where(pattern[:, None], fg, off)
            img[idx] = np.where(inside[:, None], paint, img[idx])
            if with_masks:
                masks[idx, j] = inside
    noise = np.stack([np.random.default_rng(int(k)).standard_normal((3, s, s), dtype=np.float32)
                      for k in scenes["noise_seed"]])  # fmt: skip
    img += scenes["noise_sigma"].astype(np.float32)[:, None, None, None] * noise
    pixels = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return pixels, masks


def _labels(scenes: dict[str, np.ndarray]) -> np.ndarray:
    n = len(scenes["bg"])
    labels = np.zeros((n, len(CONCEPTS)), dtype=np.float32)
    rows, slots = np.nonzero(scenes["placed"])
    labels[rows, scenes["concept"][rows, slots]] = 1.0
    return labels


def _chunk_scenes(split: str, seed: int, chunk: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, _STREAMS[split], chunk])
    return _sample_scenes(rng, _CHUNK)


@functools.lru_cache(maxsize=4)
def _generate(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Pixels uint8 [n, 3, S, S], labels [n, C] and scene parameters of a split (cached)."""
    pixels, labels, scenes = [], [], []
    for chunk in range(-(-n // _CHUNK)):
        sc = _chunk_scenes(split, seed, chunk)
        take = min(_CHUNK, n - chunk * _CHUNK)
        sc = {k: v[:take] for k, v in sc.items()}
        pixels.append(_render(sc)[0])
        labels.append(_labels(sc))
        scenes.append(sc)
    merged = {k: np.concatenate([sc[k] for sc in scenes]) for k in scenes[0]}
    pixels, labels = np.concatenate(pixels), np.concatenate(labels)
    return torch.from_numpy(pixels), torch.from_numpy(labels), merged


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1)
    return (pixels.float() / 255 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the toy world's normalisation, clipped to [0, 1]; for [3, H, W] or [B, 3, H, W].

    Examples
    --------
    >>> ds = ToyWorld("test", n=2)
    >>> img = denormalize(ds[0][0])  # [3, 32, 32] in [0, 1], ready for imshow(img.permute(1, 2, 0))
    >>> bool(img.min() >= 0) and bool(img.max() <= 1)
    True
    """
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


class ToyWorld(Dataset):
    """The toy world's images with their ground-truth concepts, generated from a seed.

    Every image (``IMAGE_SIZE`` px, RGB) shows 1 to 3 non-overlapping objects (about 73 %, 20 %
    and 7 % of the images), each of a different concept of :data:`CONCEPTS` (shapes, textures,
    strokes), at random positions, sizes (8-15 px) and colours, on a dark or light background
    with a colour tint, a linear gradient and pixel noise. Objects contrast with the background
    (light on dark, dark on light). Each concept is in about 8 % of the images. Generation is
    vectorised (about 0.3 s for the test split) and cached per process.

    Parameters
    ----------
    split : {"train", "test"}
        The two splits come from independent random streams, so they share no image.
    n : int, optional
        Number of images (default :data:`SPLIT_SIZES`). Images are generated in fixed chunks,
        so ``ToyWorld(split, n=8)`` holds the first 8 images of ``ToyWorld(split)``.
    seed : int
        Seed of the world; the same seed gives identical images.

    Attributes
    ----------
    labels : Tensor [N, n_concepts]
        Multi-hot ground truth of every image (float32).
    pixels : ByteTensor [N, 3, H, W]
        The raw images, uint8.
    images : Tensor [N, 3, H, W]
        All images normalised with ``MEAN`` / ``STD`` (float32, computed on first access).
    concept_names : tuple of str
        :data:`CONCEPTS`.

    Examples
    --------
    >>> ds = ToyWorld("test", n=8)
    >>> image, concepts = ds[0]
    >>> image.shape, image.dtype, concepts.shape == (len(CONCEPTS),)  # multi-hot [n_concepts]
    (torch.Size([3, 32, 32]), torch.float32, True)
    >>> ds.masks(0).shape == (len(CONCEPTS), 32, 32)  # one location mask per concept
    True
    >>> bool((ds.masks(0).flatten(1).any(1) == ds.labels[0].bool()).all())
    True
    """

    concept_names: tuple[str, ...] = CONCEPTS

    def __init__(self, split: str = "test", n: int | None = None, seed: int = 0) -> None:
        if split not in _STREAMS:
            raise PuretoolsError(f"Unknown toy-world split {split!r}; use 'train' or 'test'.")
        n = SPLIT_SIZES[split] if n is None else int(n)
        if n < 1:
            raise PuretoolsError(f"A toy world needs n >= 1 images, got n={n}.")
        self.split, self.n, self.seed = split, n, seed
        self.pixels, self.labels, self._scenes = _generate(split, n, seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(self.pixels[i]), self.labels[i]

    @functools.cached_property
    def images(self) -> torch.Tensor:
        return _normalize(self.pixels)

    def masks(self, i: int) -> torch.Tensor:
        """Location masks BoolTensor [n_concepts, H, W] of image ``i``; empty for absent ones."""
        i = int(i) % self.n
        scene = {k: v[i : i + 1] for k, v in self._scenes.items()}
        _, obj = _render(scene, with_masks=True)
        out = torch.zeros(len(CONCEPTS), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        for j in np.nonzero(scene["placed"][0])[0]:
            out[scene["concept"][0, j]] |= torch.from_numpy(obj[0, j])
        return out

    def __repr__(self) -> str:
        return f"ToyWorld(split={self.split!r}, n={self.n}, seed={self.seed})"


# --------------------------------------------------------------------------------------------
# The toy ResNet
# --------------------------------------------------------------------------------------------

#: Default architecture: stem and layer widths, and the strides of stem, layer1..layer4.
DEFAULT_WIDTHS = (16, 32, 64, 8)
DEFAULT_STRIDES = (2, 1, 2, 1, 1)


class ToyResNet(nn.Module):
    """A small ResNet of torchvision ``BasicBlock`` s with torchvision's module names.

    ``conv1, bn1, relu, layer1, layer2, layer3, layer4, avgpool, fc`` (no max pool), one block
    per layer, so zennit's ``ResNetCanonizer`` and torch.fx apply as to torchvision ResNets.

    Parameters
    ----------
    num_concepts : int
        Outputs of ``fc`` (one logit per concept).
    widths : sequence of 4 int
        Channels of layer1..layer4 (the stem has ``widths[0]``).
    strides : sequence of 5 int
        Strides of the stem convolution and of layer1..layer4.
    """

    def __init__(
        self,
        num_concepts: int = len(CONCEPTS),
        widths: Sequence[int] = DEFAULT_WIDTHS,
        strides: Sequence[int] = DEFAULT_STRIDES,
    ) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        widths, strides = tuple(int(w) for w in widths), tuple(int(s) for s in strides)
        if len(widths) != 4 or len(strides) != 5:
            raise PuretoolsError(f"ToyResNet needs 4 widths and 5 strides: {widths}, {strides}.")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=strides[0], padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, strides[1:]), start=1):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes)
                )
            block = BasicBlock(inplanes, planes, stride, downsample)
            setattr(self, f"layer{i}", nn.Sequential(block))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_concepts)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(
    num_concepts: int = len(CONCEPTS),
    widths: Sequence[int] = DEFAULT_WIDTHS,
    strides: Sequence[int] = DEFAULT_STRIDES,
) -> nn.Module:
    """A randomly initialised :class:`ToyResNet` (train mode).

    Examples
    --------
    >>> model = build_model(widths=(8, 8, 16, 4)).eval()
    >>> logits = model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))  # [batch, n_concepts]
    >>> logits.shape == (2, len(CONCEPTS))
    True
    """
    return ToyResNet(num_concepts, widths, strides)


def _config(model: ToyResNet) -> dict:
    widths = tuple(getattr(model, f"layer{i}")[0].conv2.out_channels for i in range(1, 5))
    strides = (model.conv1.stride[0],) + tuple(
        getattr(model, f"layer{i}")[0].conv1.stride[0] for i in range(1, 5)
    )
    return {
        "architecture": "ToyResNet",
        "num_concepts": model.fc.out_features,
        "widths": list(widths),
        "strides": list(strides),
        "concepts": list(CONCEPTS),
        "image_size": IMAGE_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        "layer": LAYER,
        "lower_layer": LOWER_LAYER,
    }


def load_toy_model(path: str | os.PathLike | None = None) -> nn.Module:
    """The toy model shipped in ``data/toyworld/model.safetensors`` (or ``path``), in eval mode.

    The architecture is read from the file's safetensors metadata, so nothing is guessed.

    Raises
    ------
    WeightsNotFoundError
        The checkpoint is missing; the message says how to train it.

    Examples
    --------
    >>> model = load_toy_model()
    >>> model.training, model.layer4[0].conv2.out_channels < len(CONCEPTS)
    (False, True)
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DATA_DIR / "model.safetensors"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"The toy model checkpoint {str(path)!r} does not exist. Train it with "
            "`python -m puretools toy train` (under 2 minutes on a CPU), which writes "
            f"{DATA_DIR / 'model.safetensors'}."
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise PuretoolsError(
            f"{str(path)!r} has no 'config' metadata: it was not written by toyworld.train."
        )
    config = json.loads(meta["config"])
    model = build_model(config["num_concepts"], config["widths"], config["strides"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def _evaluate(model: nn.Module, ds: ToyWorld, batch_size: int = 500) -> dict:
    model.eval()
    preds = torch.cat([model(_normalize(ds.pixels[i : i + batch_size])) > 0
                       for i in range(0, len(ds), batch_size)])  # fmt: skip
    truth = ds.labels.bool()
    per_concept = (preds == truth).float().mean(0)
    tp = (preds & truth).sum(0).float()
    f1 = 2 * tp / (preds.sum(0) + truth.sum(0)).clamp(min=1)
    return {
        "mean_per_concept_accuracy": per_concept.mean().item(),
        "per_concept_accuracy": dict(zip(CONCEPTS, [round(v, 4) for v in per_concept.tolist()])),
        "exact_match_accuracy": (preds == truth).all(1).float().mean().item(),
        "macro_f1": f1.mean().item(),
    }


def train(
    out_dir: str | os.PathLike = DATA_DIR,
    epochs: int | None = None,
    seed: int = 0,
    n_train: int | None = None,
    max_batches: int | None = None,
    verbose: bool = True,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    strides: Sequence[int] = DEFAULT_STRIDES,
    threads: int = 1,
    batch_size: int = 128,
    lr: float = 4e-3,
    weight_decay: float = 5e-4,
) -> dict:
    """Train the toy model on the toy world; write ``model.safetensors`` and ``record.json``.

    AdamW with a one-cycle learning rate, BCE-with-logits on the multi-hot concepts (multi-label),
    about 80 s on one CPU core. The data are the world of seed 0 (so the test split is the
    one the notebooks use); ``seed`` seeds the initialisation and the shuffling, so a run is
    reproducible on the same torch build and thread count (other thread counts change the
    rounding of convolutions, hence the weights a little).

    Parameters
    ----------
    out_dir : path
        Where to write ``model.safetensors`` (architecture in its metadata) and ``record.json``.
    epochs : int, optional
        Passes over the train split (default 10).
    seed : int
        Seed of initialisation and shuffling.
    n_train : int, optional
        Train images (default ``SPLIT_SIZES["train"]``).
    max_batches : int, optional
        Stop after this many batches (for quick tests); the schedule is shortened to match.
    verbose : bool
        Show a tqdm progress bar.
    widths : sequence of 4 int
        Channels of layer1..layer4.
    strides : sequence of 5 int
        Strides of the stem and layer1..layer4.
    threads : int
        CPU threads (restored afterwards). One by default: on a 2-core machine shared with other
        jobs, two threads that wait on each other ran up to 60 times slower, and the thread count
        changes the rounding of convolutions, so one thread reproduces the shipped checkpoint.
    batch_size, lr, weight_decay
        Optimiser settings.

    Returns
    -------
    dict
        The record written to ``record.json``: config, seed, epochs, wall time, the metric
        (``mean_per_concept_accuracy`` on the test split) and its value, per-concept and
        exact-match accuracy, ``loss_history`` (mean training loss per logged step) and the
        checkpoint's ``sha256``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     record = train(d, n_train=64, max_batches=2, widths=(4, 4, 8, 4), verbose=False)
    >>> record["metric"], len(record["loss_history"])
    ('mean_per_concept_accuracy', 2)
    """
    epochs = 10 if epochs is None else int(epochs)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(Path(out_dir), epochs, seed, n_train, max_batches, verbose, widths, strides,
                      batch_size, lr, weight_decay)  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_dir, epochs, seed, n_train, max_batches, verbose, widths, strides, batch_size, lr,
           weight_decay) -> dict:  # fmt: skip
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    ds = ToyWorld("train", n=n_train)
    test = ToyWorld("test")
    model = build_model(len(CONCEPTS), widths, strides)
    n_batches = len(ds) // batch_size if len(ds) >= batch_size else 1
    total = epochs * n_batches if max_batches is None else min(int(max_batches), epochs * n_batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    log_every = 1 if total <= 200 else 20
    history, running, step = [], [], 0
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc="toy model", disable=not verbose)
    model.train()
    while step < total:
        order = torch.randperm(len(ds), generator=gen)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = loss_fn(model(_normalize(ds.pixels[idx])), ds.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running.append(loss.item())
            step += 1
            if len(running) == log_every or step == total:
                history.append(round(sum(running) / len(running), 5))
                running = []
                bar.set_postfix(loss=history[-1])
            bar.update()
            if step == total:
                break
    bar.close()
    metrics = _evaluate(model, test)
    wall = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"config": json.dumps(config)})
    record = {
        "config": config,
        "seed": seed,
        "world_seed": 0,
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "n_train": len(ds),
        "n_test": len(test),
        "wall_time_s": round(wall, 1),
        "threads": threads,
        "torch": torch.__version__,
        "metric": "mean_per_concept_accuracy",
        "value": round(metrics["mean_per_concept_accuracy"], 4),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        "loss_log_every": log_every,
        "loss_history": history,
        "sha256": _sha256(out_dir / "model.safetensors"),
    }
    (out_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def concept_mix(labels: torch.Tensor) -> torch.Tensor:
    """Share of the references that contain each concept.

    Parameters
    ----------
    labels : Tensor [..., n_ref, n_concepts]
        Multi-hot ground truth of the references (e.g. ``ds.labels[refs.indices[k]]``).

    Returns
    -------
    Tensor [..., n_concepts]
        In [0, 1]; sums to more than 1 when images hold several concepts.

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])  # 4 references
    >>> concept_mix(labels)
    tensor([0.7500, 0.5000, 0.2500])
    """
    return (labels > 0).float().mean(-2)


def dominant_concepts(labels: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """One ground-truth concept per reference: the neuron's favourite among those in the image.

    An image may hold up to three concepts. Each reference gets the concept, among those
    present in it, with the largest share in the neuron's reference mix (:func:`concept_mix`
    of the same references unless ``mix`` is given): the concept most plausibly responsible
    for the neuron firing. Ties go to the lower concept index; an image without concepts
    gets -1.

    Parameters
    ----------
    labels : Tensor [n_ref, n_concepts]
        Multi-hot ground truth of one neuron's references.
    mix : Tensor [n_concepts], optional
        The preference order (default ``concept_mix(labels)``).

    Returns
    -------
    LongTensor [n_ref]

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])
    >>> dominant_concepts(labels)  # concept 0 is in 3 of 4 references, so it wins in image 1
    tensor([0, 0, 1, 0])
    """
    present = labels > 0
    mix = concept_mix(labels) if mix is None else mix.float()
    score = torch.where(present, mix.expand_as(present), torch.tensor(-1.0))
    # ties: argmax returns the first maximum, i.e. the lower concept index
    return torch.where(present.any(-1), score.argmax(-1), torch.tensor(-1))


def dominant_shares(labels: torch.Tensor) -> torch.Tensor:
    """Share of one neuron's references whose :func:`dominant_concepts` is each concept.

    Unlike :func:`concept_mix` this counts every reference once, so it sums to 1.

    Parameters
    ----------
    labels : Tensor [n_ref, n_concepts]

    Returns
    -------
    Tensor [n_concepts]

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])
    >>> dominant_shares(labels)
    tensor([0.7500, 0.2500, 0.0000])
    """
    dom = dominant_concepts(labels)
    counts = torch.bincount(dom[dom >= 0], minlength=labels.shape[-1]).float()
    return counts / len(dom)


def polysemantic_neurons(
    reference_indices: torch.Tensor, labels: torch.Tensor, min_share: float = 0.2
) -> list[int]:
    """Neurons whose references split between at least two concepts, in the ground-truth sense.

    Each reference counts once, for its :func:`dominant_concepts`; a neuron is polysemantic
    when at least two concepts each take a share ``>= min_share`` of its references
    (:func:`dominant_shares`).

    Parameters
    ----------
    reference_indices : LongTensor [channels, n_ref] or References
        Reference samples per neuron (``collect_references(...).indices``).
    labels : Tensor [N, n_concepts]
        Multi-hot ground truth of the whole data set (``ToyWorld.labels``).
    min_share : float
        Smallest share a concept needs to count.

    Returns
    -------
    list of int
        The polysemantic neurons, in increasing order.

    Examples
    --------
    >>> labels = torch.eye(3)[[0, 0, 1, 1, 2, 2]]  # 6 images, one concept each: 0 0 1 1 2 2
    >>> refs = torch.tensor([[0, 1, 2, 3],   # neuron 0: concepts 0 and 1, half each
    ...                      [0, 1, 4, 5],   # neuron 1: concepts 0 and 2
    ...                      [0, 1, 2, 1]])  # neuron 2: concept 0 75 %, concept 1 25 %
    >>> polysemantic_neurons(refs, labels), polysemantic_neurons(refs, labels, min_share=0.3)
    ([0, 1, 2], [0, 1])
    """
    out = []
    if not isinstance(reference_indices, torch.Tensor):  # References
        reference_indices = reference_indices.indices
    for k, idx in enumerate(reference_indices):
        shares = dominant_shares(labels[idx])
        if int((shares >= min_share).sum()) >= 2:
            out.append(k)
    return out


def ground_truth_scores(cluster_labels, concept_labels) -> dict[str, float]:
    """Agreement of a clustering of references (virtual neurons) with the ground-truth concepts.

    Parameters
    ----------
    cluster_labels : array-like [n_ref]
        Virtual neuron of every reference.
    concept_labels : array-like [n_ref] or [n_ref, n_concepts]
        Ground-truth concept per reference; a multi-hot matrix is first reduced with
        :func:`dominant_concepts`.

    Returns
    -------
    dict
        ``ari``: scikit-learn's adjusted Rand index (1 for a perfect match, about 0 for
        chance); ``purity``: share of references whose concept is the most common one of
        their cluster (1 when every cluster holds one concept).

    Examples
    --------
    >>> ground_truth_scores([0, 0, 1, 1], [5, 5, 2, 2])
    {'ari': 1.0, 'purity': 1.0}
    >>> ground_truth_scores([0, 1, 0, 1], [5, 5, 2, 2])
    {'ari': -0.5, 'purity': 0.5}
    """
    from sklearn.metrics import adjusted_rand_score

    concept_labels = torch.as_tensor(np.asarray(concept_labels))
    if concept_labels.ndim == 2:
        concept_labels = dominant_concepts(concept_labels)
    truth = concept_labels.numpy().astype(np.int64)
    clusters = np.asarray(cluster_labels).astype(np.int64)
    if clusters.shape != truth.shape:
        raise PuretoolsError(f"{len(clusters)} cluster labels for {len(truth)} concept labels.")
    offset = truth - truth.min()
    majority = sum(np.bincount(offset[clusters == c]).max() for c in np.unique(clusters))
    ari = adjusted_rand_score(truth, clusters)
    return {"ari": float(ari), "purity": float(majority / len(truth))}
