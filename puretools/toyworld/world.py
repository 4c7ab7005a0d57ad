"""The toy world's images: seeded synthetic scenes of known concepts, rendered and normalised."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import register_dataset
from ..errors import PuretoolsError

__all__ = ["CONCEPTS", "IMAGE_SIZE", "MEAN", "SPLIT_SIZES", "STD", "VARIANTS", "ToyWorld", "denormalize"]

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
#: Default number of images per split.
SPLIT_SIZES = {"train": 24_000, "test": 3_000}

_STREAMS = {"train": 0, "test": 1}  # independent random streams: the splits never share an image
_CHUNK = 500  # generated in fixed chunks, so a smaller split is a prefix of a larger one
_MAX_OBJECTS = 3
_OBJECT_COUNTS = (0.7, 0.2, 0.1)  # probabilities of 1, 2, 3 objects (before placement)
_SIZE_RANGE = (8.0, 15.0)  # side of an object's bounding box, pixels

#: Variants of the world (``benchmarks/README.md``, "Where circuits should matter"): per variant,
#: the concepts drawn differently (concept -> drawing). The scenes (which concept where, sizes,
#: colours, phases), the labels and the concept list are the default world's; only these
#: concepts' pixels change. ``"v2"``: ``stripes_h`` and ``dots`` become composites that share a
#: solid square outline (the frame) and differ only inside it (horizontal stripes vs dots).
VARIANTS: dict[str, dict[str, str]] = {
    "v2": {"stripes_h": "framed_stripes", "dots": "framed_dots"},
}
_FRAME = 1.5  # width of the composites' frame, pixels


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
    if name in ("framed_stripes", "framed_dots"):  # variant V2: the same frame, different content
        inner = (ax <= r - _FRAME) & (ay <= r - _FRAME)
        inner_name = {"framed_stripes": "stripes_h", "framed_dots": "dots"}[name]
        content = _shape(inner_name, dx, dy, r, phase, period, width)[1]
        return box, (box & ~inner) | content
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


def _render(scenes: dict[str, np.ndarray], with_masks: bool = False, variant: str | None = None):
    """Images as uint8 [n, 3, S, S] and, if asked, per-object masks bool [n, 3, S, S]."""
    drawings = VARIANTS[variant] if variant is not None else {}
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
            inside, pattern = _shape(drawings.get(name, name), dx, dy, col(scenes["size"]) / 2, phase,
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
def _generate(split: str, n: int, seed: int, variant: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Pixels uint8 [n, 3, S, S], labels [n, C] and scene parameters of a split (cached)."""
    pixels, labels, scenes = [], [], []
    for chunk in range(-(-n // _CHUNK)):
        sc = _chunk_scenes(split, seed, chunk)
        take = min(_CHUNK, n - chunk * _CHUNK)
        sc = {k: v[:take] for k, v in sc.items()}
        pixels.append(_render(sc, variant=variant)[0])
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
    variant : str, optional
        A key of :data:`VARIANTS`: the same scenes and labels, with some concepts drawn
        differently (``"v2"``: ``stripes_h`` and ``dots`` inside one shared square frame). None
        (default): the world of the shipped checkpoint and the notebooks.

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

    Scenes are parametric, so an image can be rendered again without some of its objects:

    >>> ds.objects(2)  # (slot, concept id) of every object of image 2
    [(0, 2), (1, 8)]
    >>> [CONCEPTS[c] for _, c in ds.objects(2)]
    ['triangle', 'checkerboard']
    >>> torch.equal(ds.render_without(2, []), ds[2][0])  # nothing removed: the image itself
    True
    >>> no_checkerboard = ds.render_without(2, [1])  # [3, 32, 32], normalised like ds[2][0]
    >>> changed = (no_checkerboard != ds[2][0]).any(0)  # [32, 32]
    >>> bool(changed.any()), bool((changed & ~ds.masks(2)[8]).any())  # only its own pixels changed
    (True, False)
    """

    concept_names: tuple[str, ...] = CONCEPTS

    def __init__(self, split: str = "test", n: int | None = None, seed: int = 0, variant: str | None = None) -> None:
        if split not in _STREAMS:
            raise PuretoolsError(f"Unknown toy-world split {split!r}; use 'train' or 'test'.")
        n = SPLIT_SIZES[split] if n is None else int(n)
        if n < 1:
            raise PuretoolsError(f"A toy world needs n >= 1 images, got n={n}.")
        if variant is not None and variant not in VARIANTS:
            raise PuretoolsError(f"Unknown toy-world variant {variant!r}; use None (the default world) or one of "
                                 f"{sorted(VARIANTS)}.")  # fmt: skip
        self.split, self.n, self.seed, self.variant = split, n, seed, variant
        self.pixels, self.labels, self._scenes = _generate(split, n, seed, variant)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(self.pixels[i]), self.labels[i]

    @functools.cached_property
    def images(self) -> torch.Tensor:
        return _normalize(self.pixels)

    def _index(self, i: int) -> int:
        """``i`` as a position in ``0..n-1`` (negative counts from the end), else a clear error."""
        if not isinstance(i, (int, np.integer)) and not (isinstance(i, torch.Tensor) and i.numel() == 1):
            raise TypeError(f"An image index must be an int, got {type(i).__name__}.")
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"Image index {i} is out of range for {self!r} (0..{self.n - 1}).")
        return i % self.n

    def objects(self, i: int) -> list[tuple[int, int]]:
        """The objects of image ``i`` as ``(slot, concept_id)`` pairs, in slot order.

        A slot names one object of the scene (0, 1 or 2); :meth:`render_without` takes slots.
        """
        i = self._index(i)
        placed, concept = self._scenes["placed"][i], self._scenes["concept"][i]
        return [(int(j), int(concept[j])) for j in np.nonzero(placed)[0]]

    def render_without(self, i: int, slots: Sequence[int]) -> torch.Tensor:
        """Image ``i`` rendered again without the objects in ``slots``, normalised like ``self[i][0]``.

        Everything else (background, gradient, noise, the other objects) is identical, and
        ``render_without(i, [])`` equals ``self[i][0]`` exactly. Objects never overlap, so the
        pixels of a removed object show the background.

        Parameters
        ----------
        i : int
            Image index.
        slots : sequence of int
            Slots of objects of image ``i`` (see :meth:`objects`) to leave out.

        Returns
        -------
        Tensor [3, H, W]
        """
        i = self._index(i)
        return self._render_rows([i], [slots])[0]

    def _render_rows(self, rows: Sequence[int], drop: Sequence[Sequence[int]]) -> torch.Tensor:
        """Images ``rows`` [m] without the slots ``drop[r]`` each: normalised [m, 3, H, W], vectorised."""
        rows = np.asarray(rows, dtype=np.int64)
        scene = {k: v[rows] for k, v in self._scenes.items()}
        placed = scene["placed"].copy()
        for r, (i, slots) in enumerate(zip(rows, drop)):
            if isinstance(slots, (int, np.integer, str, bytes)):
                raise PuretoolsError(f"slots={slots!r} must be a list of slot numbers, e.g. slots=[0].")
            slots = list(slots)
            if len(set(slots)) != len(slots):
                raise PuretoolsError(f"slots={slots!r} names a slot more than once; give each slot once.")
            for slot in slots:
                if not (isinstance(slot, (int, np.integer)) and 0 <= slot < _MAX_OBJECTS and placed[r, slot]):
                    raise PuretoolsError(
                        f"Image {i} has no object in slot {slot!r}; its objects are "
                        f"{self.objects(int(i))} as (slot, concept id): pass slots from these."
                    )
                placed[r, slot] = False
        scene["placed"] = placed
        return _normalize(torch.from_numpy(_render(scene, variant=self.variant)[0]))

    def masks(self, i: int) -> torch.Tensor:
        """Location masks BoolTensor [n_concepts, H, W] of image ``i``; empty for absent ones."""
        i = self._index(i)
        scene = {k: v[i : i + 1] for k, v in self._scenes.items()}
        _, obj = _render(scene, with_masks=True, variant=self.variant)
        out = torch.zeros(len(CONCEPTS), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        for j in np.nonzero(scene["placed"][0])[0]:
            out[scene["concept"][0, j]] |= torch.from_numpy(obj[0, j])
        return out

    def __repr__(self) -> str:
        variant = "" if self.variant is None else f", variant={self.variant!r}"
        return f"ToyWorld(split={self.split!r}, n={self.n}, seed={self.seed}{variant})"


register_dataset("toy", lambda split: ToyWorld(split=split))  # load_dataset("toy:test"), the command line's --data
