"""Image embedders behind one interface: CLIP (open_clip), DINOv2 (timm) and ground-truth concepts."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .checks import check_int, resolve_device
from .data import denormalize as imagenet_denormalize
from .errors import PuretoolsError, WeightsNotFoundError
from .forward import collate_images
from .hub import hf_cache_dir, hf_cached_files, hf_endpoint, load_pretrained
from .models import check_timm_name, timm_pretrained

__all__ = [
    "ClipEmbedder",
    "ConceptEmbedder",
    "DinoEmbedder",
    "Embedder",
    "embed_dataset",
]


def _is_weights_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike)) and Path(value).suffix in (
        ".bin", ".pt", ".pth", ".safetensors"
    )


def resize_center_crop(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize the short side to ``size`` (antialiased) and centre-crop to ``size x size``.

    Examples
    --------
    >>> resize_center_crop(torch.rand(2, 3, 20, 40), 10).shape
    torch.Size([2, 3, 10, 10])
    """
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        images = F.interpolate(images, size=new, mode=mode, align_corners=False, antialias=True)
        h, w = new
        top, left = (h - size) // 2, (w - size) // 2
        images = images[..., top : top + size, left : left + size]
    return images


class Embedder:
    """An image embedder: images [B, 3, H, W] with values in [0, 1] -> embeddings [B, dim].

    Subclasses resize and normalise images themselves (:meth:`preprocess`) and implement
    :meth:`encode` on the model's input. :meth:`__call__` embeds one batch without gradients;
    :meth:`embed` takes any leading dimensions and works in batches.

    Attributes
    ----------
    name : str
        Short description, used as a label in tables and plots.
    dim : int
        Embedding dimension D.
    device : torch.device
    """

    name: str = "embedder"
    dim: int = 0
    image_size: int = 224
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interpolation: str = "bicubic"
    device: torch.device = torch.device("cpu")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize (short side, centre crop) to :attr:`image_size` and normalise."""
        images = resize_center_crop(images.float(), self.image_size, self.interpolation)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Embeddings [B, dim] of preprocessed images."""
        raise NotImplementedError

    @staticmethod
    def check_images(images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise PuretoolsError(
                f"Embedders take RGB images [B, 3, H, W]; got shape {tuple(images.shape)}."
            )
        if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
            raise PuretoolsError(
                f"Embedders take images with values in [0, 1], got values in "
                f"[{float(images.min()):.2f}, {float(images.max()):.2f}]: un-normalise them first "
                "(e.g. puretools.data.denormalize, or the toy world's denormalize)."
            )
        return images

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, dim] (float32, on the CPU) of images [B, 3, H, W] in [0, 1]."""
        images = self.check_images(images)
        out = self.encode(self.preprocess(images.to(self.device)))
        return out.float().cpu()

    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embed images [..., 3, H, W] in batches; returns [..., dim].

        Examples
        --------
        >>> class Mean(Embedder):
        ...     name, dim, image_size = "mean colour", 3, 4
        ...     def encode(self, pixels): return pixels.mean((2, 3))
        >>> Mean().embed(torch.rand(2, 5, 3, 8, 8)).shape  # 2 neurons, 5 patches each
        torch.Size([2, 5, 3])
        """
        images = torch.as_tensor(images)
        if images.ndim < 4:
            raise PuretoolsError(f"Expected images [..., 3, H, W], got shape {tuple(images.shape)}.")
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        if batch_size < 1:
            raise PuretoolsError("batch_size must be a positive integer.")
        parts = [self(flat[s : s + batch_size]) for s in range(0, len(flat), batch_size)]
        out = torch.cat(parts) if parts else torch.zeros(0, self.dim)
        return out.reshape(*lead, out.shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class ClipEmbedder(Embedder):
    """CLIP image embeddings through open_clip_torch (the paper's evaluation space: ViT-B/32).

    Parameters
    ----------
    model : str
        open_clip model name, e.g. ``"ViT-B-32"``.
    pretrained : str, path or None
        open_clip pretrained tag (``"openai"``: the weights OpenAI released, which the paper
        uses through Hugging Face ``openai/clip-vit-base-patch32``), a local weights file, or
        None for random weights (tests).
    pooling : {"projected", "tokens"}
        ``"projected"``: CLIP's image embedding (class token after ``ln_post`` and the
        projection; 512-d for ViT-B-32). ``"tokens"``: the paper's pooling, the mean over all
        tokens (class token included) of the last transformer layer's output, before
        ``ln_post`` -- Hugging Face ``CLIPVisionModel(...).last_hidden_state.mean(1)`` as in the
        PURE code (768-d for ViT-B-32).
    device : str or torch.device
    cache_dir : path or None
        Where open_clip stores downloads (default: the Hugging Face cache).

    Raises
    ------
    WeightsNotFoundError
        The weights are not cached and cannot be downloaded; the message names the file.

    Examples
    --------
    Not run as a doctest (building ViT-B/32 takes seconds)::

        clip = ClipEmbedder(pretrained=None)   # random weights, offline
        clip(torch.rand(2, 3, 64, 64)).shape   # torch.Size([2, 512])
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | os.PathLike | None = "openai",
        pooling: Literal["projected", "tokens"] = "projected",
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        import open_clip

        if pooling not in ("projected", "tokens"):
            raise PuretoolsError(f"pooling must be 'projected' or 'tokens', not {pooling!r}.")
        if model not in open_clip.list_models():
            raise PuretoolsError(
                f"Unknown open_clip model {model!r}; e.g. 'ViT-B-32' (see open_clip.list_models())."
            )
        self.device = resolve_device(device)
        if pretrained is not None and not _is_weights_path(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise PuretoolsError(
                    f"open_clip has no pretrained weights {pretrained!r} for {model!r}; "
                    f"choose one of {tags}, a path to a weights file, or None."
                )
        if _is_weights_path(pretrained) and not Path(pretrained).is_file():
            raise WeightsNotFoundError(f"CLIP weights file {str(pretrained)!r} does not exist.")
        # OpenAI's weights were trained with QuickGELU; open_clip builds "ViT-B-32" with plain
        # GELU and only warns about the mismatch, so follow the tag's setting explicitly.
        quick_gelu = False
        if pretrained is not None and not _is_weights_path(pretrained):
            from open_clip.pretrained import get_pretrained_cfg

            quick_gelu = bool((get_pretrained_cfg(model, str(pretrained)) or {}).get("quick_gelu", False))
        def create() -> nn.Module:
            return open_clip.create_model(
                model,
                pretrained=None if pretrained is None else str(pretrained),
                device=self.device,
                cache_dir=None if cache_dir is None else str(cache_dir),
                force_quick_gelu=quick_gelu,
                require_pretrained=pretrained is not None,
            )

        if pretrained is None or _is_weights_path(pretrained):
            try:
                with _quiet_random_weights():  # random weights were asked for: no warning about them
                    clip = create()
            except Exception as err:
                raise WeightsNotFoundError(
                    f"Could not load the CLIP weights file {str(pretrained)!r} into {model!r} "
                    f"({type(err).__name__}: {err}): is it a complete open_clip {model} checkpoint?"
                ) from err
        else:
            clip = _load_clip_pretrained(create, model, str(pretrained), cache_dir)
        self.visual: nn.Module = clip.visual.eval()
        del clip  # the text tower is not needed
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)))
        size = cfg.get("size", getattr(self.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.pooling = pooling
        if pooling == "tokens":
            transformer = getattr(self.visual, "transformer", None)
            if transformer is None:
                raise PuretoolsError(f"pooling='tokens' needs a ViT image tower; {model!r} has none.")
            self.dim = int(transformer.width)
        else:
            self.dim = int(self.visual.output_dim)
        self.name = f"CLIP {model}" + (" tokens" if pooling == "tokens" else "")
        self.pretrained = None if pretrained is None else str(pretrained)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.pooling == "projected":
            out = self.visual(pixels)
            return out[0] if isinstance(out, tuple) else out
        store: dict[str, torch.Tensor] = {}
        transformer = self.visual.transformer
        handle = transformer.register_forward_hook(lambda m, i, o: store.__setitem__("tokens", o))
        try:
            self.visual(pixels)
        finally:
            handle.remove()
        tokens = store["tokens"]
        if not getattr(transformer, "batch_first", True):
            tokens = tokens.transpose(0, 1)
        return tokens.mean(1)


class _RandomWeightsFilter(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_weights():
    """open_clip logs a warning on the root logger when it builds a model without weights."""
    root, drop = logging.getLogger(), _RandomWeightsFilter()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _load_clip_pretrained(
    create: Callable[[], nn.Module], model: str, pretrained: str, cache_dir: str | os.PathLike | None
) -> nn.Module:
    """``create()`` through :func:`puretools.hub.load_pretrained`: cache first, then one network check."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, pretrained) or {}
    hub = (cfg.get("hf_hub") or "").strip("/")
    tail = "or pass pretrained='path/to/weights-file', or pretrained=None for random weights."
    what = f"CLIP {model!r} / {pretrained!r}"
    if hub:
        repo, filename = (hub, "") if hub.count("/") < 2 else hub.rsplit("/", 1)
        filename = filename or "open_clip_pytorch_model.bin"
        where = str(cache_dir) if cache_dir is not None else f"{hf_cache_dir()}; set HF_HOME to move it"
        fetch = (
            f"fetch '{filename}' (or 'open_clip_model.safetensors') from the Hugging Face repository "
            f"'{repo}' into the Hugging Face cache ({where}), e.g. `huggingface-cli download {repo} "
            f"{filename}` on a machine with network; {tail}"
        )
        files = [filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return load_pretrained(
            create, what=what, url=hf_endpoint(), fetch=fetch, hugging_face=True,
            cached=lambda: hf_cached_files(repo, files, cache_dir),
        )
    url = cfg.get("url") or ""
    target = Path(cache_dir or Path.home() / ".cache" / "clip") / Path(url).name if url else None
    fetch = (f"download {url} and put it at {target}; " if url else "") + tail
    return load_pretrained(
        create, what=what, url=url or hf_endpoint(), fetch=fetch, hugging_face=False,
        cached=lambda: [target] if target is not None and target.is_file() else [],
    )


class DinoEmbedder(Embedder):
    """DINOv2 image embeddings through timm (the paper's second baseline space).

    Parameters
    ----------
    name : str
        timm model name; default ``"vit_base_patch14_dinov2.lvd142m"`` (DINOv2 ViT-B/14, the
        weights of Hugging Face ``facebook/dinov2-base`` used by the paper).
    pretrained : bool, path
        True: download/load timm's weights; False or None: random weights (tests); a path:
        load that weights file.
    pooling : {"cls", "tokens"}
        ``"cls"``: the normalised class token (DINOv2's image embedding). ``"tokens"``: the
        paper's pooling, the mean over all normalised output tokens
        (``last_hidden_state.mean(1)`` of Hugging Face ``Dinov2Model``).
    img_size : int
        Input side. timm's default for DINOv2 is 518, slow on CPU; 224 is what the paper's
        Hugging Face processor feeds. Must be a multiple of the patch size (14).
    device : str or torch.device

    Raises
    ------
    WeightsNotFoundError
        The weights are not cached and cannot be downloaded; the message names the file.

    Examples
    --------
    Not run as a doctest (building ViT-B/14 takes seconds)::

        dino = DinoEmbedder(pretrained=False, img_size=56)  # random weights, offline
        dino(torch.rand(2, 3, 64, 64)).shape                # torch.Size([2, 768])
    """

    def __init__(
        self,
        name: str = "vit_base_patch14_dinov2.lvd142m",
        pretrained: bool | str | os.PathLike | None = True,
        pooling: Literal["cls", "tokens"] = "cls",
        img_size: int = 224,
        device: str | torch.device = "cpu",
    ) -> None:
        import timm

        if pooling not in ("cls", "tokens"):
            raise PuretoolsError(f"pooling must be 'cls' or 'tokens', not {pooling!r}.")
        self.device = resolve_device(device)
        kwargs: dict = {"num_classes": 0, "img_size": img_size}
        if isinstance(pretrained, (str, os.PathLike)):
            if not Path(pretrained).is_file():
                raise WeightsNotFoundError(f"DINOv2 weights file {str(pretrained)!r} does not exist.")
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
            use_pretrained = True
        else:
            use_pretrained = bool(pretrained)
        check_timm_name(name)
        if use_pretrained and not isinstance(pretrained, (str, os.PathLike)):
            model = timm_pretrained(
                name,
                lambda: timm.create_model(name, pretrained=True, **kwargs),
                what=f"DINOv2 (timm model {name!r})",
                fetch_tail="or pass pretrained='path/to/model.safetensors', or pretrained=False for random weights.",
            )
        else:
            try:
                model = timm.create_model(name, pretrained=use_pretrained, **kwargs)
            except Exception as err:  # a local file that is not this model's checkpoint
                raise WeightsNotFoundError(
                    f"Could not load the weights file {str(pretrained)!r} into timm model {name!r} "
                    f"({type(err).__name__}: {err})."
                ) from err
        self.model: nn.Module = model.eval().to(self.device)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.interpolation = cfg.get("interpolation", "bicubic")
        patch = getattr(model, "patch_embed", None)
        size = getattr(patch, "img_size", img_size) if patch is not None else img_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dim = int(model.num_features)
        self.pooling = pooling
        self.name = "DINOv2" + (" tokens" if pooling == "tokens" else "")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.pooling == "tokens":
            return self.model.forward_features(pixels).mean(1)
        return self.model(pixels)


class ConceptEmbedder(Embedder):
    """Ground-truth embedding of the toy world: the multi-hot concept vector of each sample.

    It embeds data-set indices, not pixels: use :meth:`embed_indices` or
    :func:`embed_dataset`.

    Parameters
    ----------
    labels : Tensor [N, n_concepts]
        Multi-hot concepts of every sample of the data set (e.g. ``ToyWorld(...).labels``).
    name : str

    Examples
    --------
    >>> labels = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0]])  # 3 samples, 3 concepts
    >>> emb = ConceptEmbedder(labels)
    >>> emb.embed_indices(torch.tensor([[2, 0]]))  # 1 neuron, 2 references
    tensor([[[1., 1., 0.],
             [1., 0., 0.]]])
    """

    def __init__(self, labels: torch.Tensor, name: str = "concepts") -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 2:
            raise PuretoolsError(f"labels must be [N, n_concepts], got shape {tuple(labels.shape)}.")
        self.labels = labels.float().cpu()
        self.dim = labels.shape[1]
        self.name = name

    def embed_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Concept vectors [..., n_concepts] of data-set ``indices`` [...]."""
        idx = torch.as_tensor(indices).long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self.labels)):
            raise PuretoolsError(
                f"Indices must lie in 0..{len(self.labels) - 1} (the data set the labels describe)."
            )
        return self.labels[idx]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise PuretoolsError(
            "ConceptEmbedder embeds data-set indices, not images: use embed_indices(indices) "
            "or embed_dataset(embedder, dataset, indices)."
        )


def embed_dataset(
    embedder: Embedder,
    dataset: Dataset,
    indices: torch.Tensor,
    batch_size: int = 64,
    denormalize: Callable[[torch.Tensor], torch.Tensor] = imagenet_denormalize,
) -> torch.Tensor:
    """Embed the data-set images at ``indices`` (each distinct image once).

    Parameters
    ----------
    embedder : Embedder
        With an ``embed_indices`` method (:class:`ConceptEmbedder`) that is used instead.
    dataset : torch.utils.data.Dataset
        Items are ``(image, ...)`` with normalised images.
    indices : LongTensor [...]
        E.g. ``references.indices`` [channels, n_ref].
    batch_size : int
    denormalize : callable
        Maps data-set images to [0, 1]; default ImageNet statistics.

    Returns
    -------
    Tensor [..., D]

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.randn(6, 3, 8, 8), torch.eye(6)[:, :4])
    >>> emb = ConceptEmbedder(data.tensors[1])
    >>> embed_dataset(emb, data, torch.tensor([[0, 5], [1, 1]])).shape
    torch.Size([2, 2, 4])
    """
    if not isinstance(embedder, Embedder) and not hasattr(embedder, "embed_indices"):
        raise PuretoolsError(
            f"embedder must be a puretools Embedder (ClipEmbedder, DinoEmbedder, ConceptEmbedder), got "
            f"{type(embedder).__name__}."
        )
    batch_size = check_int(batch_size, "batch_size", low=1)
    idx = torch.as_tensor(indices)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise PuretoolsError(f"indices must be integer data-set indices, got dtype {idx.dtype}.")
    idx = idx.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise PuretoolsError(f"indices must lie in 0..{len(dataset) - 1} (the data set), got {idx.min()}..{idx.max()}.")
    if hasattr(embedder, "embed_indices"):
        return embedder.embed_indices(idx)
    if idx.numel() and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise PuretoolsError(f"Indices must lie in 0..{len(dataset) - 1}.")
    unique, inverse = torch.unique(idx.reshape(-1), return_inverse=True)
    parts = []
    for s in range(0, len(unique), batch_size):
        images = collate_images([dataset[int(i)] for i in unique[s : s + batch_size]])
        parts.append(embedder(denormalize(images.float())))
    out = torch.cat(parts) if parts else torch.zeros(0, embedder.dim)
    return out[inverse].reshape(*idx.shape, out.shape[-1])
