"""Layer layouts: which axis of a layer's output holds the neurons (channels or token features).

A CNN layer's output is channels first (``[B, C, H, W]`` or ``[B, C]``); a transformer's is
tokens (``[B, T, C]``, or sequence first ``[T, B, C]``); a ConvNeXt block built with
``conv_mlp=False`` has channels-last MLP layers (``[B, H, W, C]``). Everything in puretools
that reads neurons goes through :func:`layer_layout`, which finds the layout from the model
(or takes it from the caller) and returns a :class:`Layout` that converts the output to the
canonical view ``[B, C, positions]`` and back. Where the model does not settle the layout it
raises and names the fix (``layout=``); it never guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .checks import check_module
from .errors import PuretoolsError
from .models import get_module

__all__ = [
    "LAYOUT_KINDS",
    "TOKEN_REDUCES",
    "Layout",
    "TokenReduce",
    "check_token_reduce",
    "layer_layout",
    "token_grid",
    "prefix_tokens",
]

LayoutKind = Literal["channels_first", "channels_last", "tokens", "sequence_first"]
TokenReduce = Literal["max", "mean", "cls"]

#: The layouts :class:`Layout` knows: ``[B, C, *spatial]``, ``[B, *spatial, C]``, ``[B, T, C]``, ``[T, B, C]``.
LAYOUT_KINDS: tuple[str, ...] = ("channels_first", "channels_last", "tokens", "sequence_first")
#: How a neuron's activation map becomes one value per image (:meth:`Layout.reduce`).
TOKEN_REDUCES: tuple[str, ...] = ("max", "mean", "cls")


def check_token_reduce(token_reduce: str) -> str:
    """``token_reduce``, checked.

    Examples
    --------
    >>> check_token_reduce("cls")
    'cls'
    >>> check_token_reduce("sum")
    Traceback (most recent call last):
    ...
    puretools.errors.PuretoolsError: token_reduce='sum' is not known: use 'max' (the largest value over all positions or tokens, the default), 'mean' or 'cls' (the class token of a transformer layer).
    """
    if token_reduce not in TOKEN_REDUCES:
        raise PuretoolsError(
            f"token_reduce={token_reduce!r} is not known: use 'max' (the largest value over all positions or "
            "tokens, the default), 'mean' or 'cls' (the class token of a transformer layer)."
        )
    return token_reduce


@dataclass(frozen=True)
class Layout:
    """Where the neurons of one layer sit in its output, and how to view it as ``[B, C, P]``.

    Attributes
    ----------
    kind : {"channels_first", "channels_last", "tokens", "sequence_first"}
        ``channels_first``: ``[B, C]`` or ``[B, C, *spatial]`` (CNNs); ``channels_last``:
        ``[B, *spatial, C]``; ``tokens``: ``[B, T, C]``; ``sequence_first``: ``[T, B, C]``.
        The neurons are the C features; the other axes (spatial positions or tokens) are
        positions.
    prefix_tokens : int
        Token layouts: how many leading tokens are not image patches (class token,
        distillation token, registers); 0 otherwise.
    grid : tuple of int or None
        Token layouts: the patch grid (rows, columns) of the tokens after the prefix, when
        known. None: unknown (then :meth:`spatial` raises).

    Examples
    --------
    >>> lay = Layout("tokens", prefix_tokens=1, grid=(2, 2))
    >>> x = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)  # 2 images, 1 + 4 tokens, 3 features
    >>> lay.to_channels(x).shape  # [B, C, positions]
    torch.Size([2, 3, 5])
    >>> lay.reduce(x).tolist()  # max over tokens
    [[12.0, 13.0, 14.0], [27.0, 28.0, 29.0]]
    >>> lay.reduce(x, "cls").tolist()
    [[0.0, 1.0, 2.0], [15.0, 16.0, 17.0]]
    >>> lay.spatial(lay.to_channels(x)[:, 0]).shape  # feature 0 on the patch grid
    torch.Size([2, 2, 2])
    """

    kind: str
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise PuretoolsError(
                f"layout={self.kind!r} is not a layout: use one of {', '.join(map(repr, LAYOUT_KINDS))} "
                "([B, C, H, W], [B, H, W, C], [B, T, C], [T, B, C])."
            )
        if self.prefix_tokens < 0 or (self.prefix_tokens and not self.is_tokens):
            raise PuretoolsError(
                f"prefix_tokens={self.prefix_tokens} is only meaningful (>= 0) for the token layouts, not {self.kind!r}."
            )

    @property
    def is_tokens(self) -> bool:
        """True for ``tokens`` and ``sequence_first``."""
        return self.kind in ("tokens", "sequence_first")

    @property
    def channel_axis(self) -> int:
        """The axis of the neurons in the layer's own output (-1 for the features-last layouts)."""
        return 1 if self.kind == "channels_first" else -1

    def _check(self, x: torch.Tensor) -> None:
        need = 2 if self.kind == "channels_first" else 3
        if x.ndim < need or (self.is_tokens and x.ndim != 3):
            want = {"channels_first": "[B, C, ...]", "channels_last": "[B, ..., C]",
                    "tokens": "[B, T, C]", "sequence_first": "[T, B, C]"}[self.kind]  # fmt: skip
            raise PuretoolsError(
                f"An output of shape {tuple(x.shape)} does not have the layout {self.kind!r} ({want}); "
                "pass the layer's layout as layout=... ('channels_first', 'channels_last', 'tokens' "
                "or 'sequence_first')."
            )

    def channels(self, x: torch.Tensor) -> int:
        """The number of neurons (C) of an output ``x`` in this layout."""
        self._check(x)
        return int(x.shape[self.channel_axis])

    def batch_size(self, x: torch.Tensor) -> int:
        """The number of images (B) of an output ``x`` in this layout."""
        self._check(x)
        return int(x.shape[1] if self.kind == "sequence_first" else x.shape[0])

    def to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this layout as ``[B, C, P]`` (P: positions or tokens; 1 for ``[B, C]``).

        A view where torch allows one (always for channels first, tokens and sequence first),
        so writing into the result writes into ``x``. Channels first with more than two axes is
        exactly ``x.flatten(2)``.
        """
        self._check(x)
        if self.kind == "channels_first":
            return x.flatten(2) if x.ndim > 2 else x[:, :, None]
        if self.kind == "tokens":
            return x.transpose(1, 2)
        if self.kind == "sequence_first":
            return x.permute(1, 2, 0)
        return x.flatten(1, -2).transpose(1, 2)  # channels_last [B, *S, C] -> [B, C, prod(S)]

    def from_channels(self, y: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The inverse of :meth:`to_channels`: ``y`` [B, C, P] back to an output of ``shape``.

        Examples
        --------
        >>> lay = Layout("channels_last")
        >>> x = torch.randn(2, 3, 4, 5)  # [B, H, W, C]
        >>> torch.equal(lay.from_channels(lay.to_channels(x), x.shape), x)
        True
        """
        shape = tuple(int(s) for s in shape)
        if self.kind == "channels_first":
            return y.reshape(shape)
        if self.kind == "tokens":
            return y.transpose(1, 2).reshape(shape)
        if self.kind == "sequence_first":
            return y.permute(2, 0, 1).reshape(shape)
        return y.transpose(1, 2).reshape(shape)

    def reduce(self, x: torch.Tensor, token_reduce: str = "max") -> torch.Tensor:
        """One value per image and neuron: Tensor [B, C].

        ``"max"``: the largest value over all positions (all tokens, prefix tokens included, as
        a CNN's spatial max covers every position); ``"mean"``: the mean over them; ``"cls"``:
        the value at the first token (token layouts with a class token only). For channels
        first with spatial axes, ``"max"`` is exactly ``x.flatten(2).amax(-1)``; for ``[B, C]``
        the output itself.
        """
        check_token_reduce(token_reduce)
        if token_reduce == "cls":
            if not self.is_tokens or self.prefix_tokens < 1:
                raise PuretoolsError(
                    f"token_reduce='cls' reads the class token, but this layer's layout is {self.kind!r} with "
                    f"{self.prefix_tokens} prefix tokens. Use token_reduce='max' or 'mean', or pass "
                    "layout=Layout('tokens', prefix_tokens=1) if the first token is a class token."
                )
            return self.to_channels(x)[:, :, 0]
        if self.kind == "channels_first" and x.ndim == 2:
            self._check(x)
            return x
        flat = self.to_channels(x)
        return flat.amax(-1) if token_reduce == "max" else flat.mean(-1)

    def spatial(self, values: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Per-position ``values`` [..., P] as a map [..., h, w] on the image's grid.

        Token layouts drop the prefix tokens and use the patch :attr:`grid`; spatial layouts
        need the layer's output ``shape`` (with the batch axis) to know ``(H, W)``.
        """
        if self.is_tokens:
            if self.grid is None:
                raise PuretoolsError(
                    "The patch grid of this token layer is not known, so its tokens cannot be placed on the "
                    "image. Pass layout=Layout('tokens', prefix_tokens=..., grid=(rows, columns))."
                )
            n = values.shape[-1] - self.prefix_tokens
            if n != self.grid[0] * self.grid[1]:
                raise PuretoolsError(
                    f"The layer has {values.shape[-1]} tokens: {self.prefix_tokens} prefix token(s) leave {n}, "
                    f"which is not the patch grid {self.grid[0]} x {self.grid[1]}. Pass the right "
                    "layout=Layout('tokens', prefix_tokens=..., grid=...)."
                )
            return values[..., self.prefix_tokens :].reshape(*values.shape[:-1], *self.grid)
        if shape is None or len(shape) != 4:
            raise PuretoolsError(
                f"A map on the image needs a layer with two spatial axes; this one has shape "
                f"{None if shape is None else tuple(shape)} ({self.kind})."
            )
        hw = tuple(shape[2:]) if self.kind == "channels_first" else tuple(shape[1:3])
        return values.reshape(*values.shape[:-1], *hw)


# --- what the model says ----------------------------------------------------------------------

_FIRST_TYPES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def _op_side(module: nn.Module) -> str | None:
    """'first' for modules that read channels on axis 1, 'last' for those that read the last axis."""
    name = type(module).__name__
    if name.endswith(("2d", "1d", "3d")) and "LayerNorm" in name:  # timm's LayerNorm2d: channels first
        return "first"
    if isinstance(module, _FIRST_TYPES):
        return "first"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return "last"
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
        return "last"
    return None


def _channels_of(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embed_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return None


def _family(model: nn.Module) -> str | None:
    """'timm_vit', 'open_clip_vit', 'torchvision_vit' or None."""
    module = type(model).__module__
    if module.startswith("timm.") and hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):
        return "timm_vit"
    if module.startswith("open_clip.") and hasattr(model, "class_embedding") and hasattr(model, "conv1"):
        return "open_clip_vit"
    if module.startswith("torchvision.") and hasattr(model, "class_token") and hasattr(model, "patch_size"):
        return "torchvision_vit"
    return None


def prefix_tokens(model: nn.Module) -> int | None:
    """Leading non-patch tokens of a vision transformer's token layers; None for an unknown model.

    timm: ``model.num_prefix_tokens`` (class, distillation and register tokens); open_clip's
    and torchvision's ViTs: 1 (the class token).

    Examples
    --------
    >>> import torchvision
    >>> vit = torchvision.models.VisionTransformer(32, 16, 1, 2, 8, 16)  # a tiny vit_b_16
    >>> prefix_tokens(vit)
    1
    >>> prefix_tokens(nn.Linear(2, 2)) is None
    True
    """
    check_module(model)
    family = _family(model)
    if family == "timm_vit":
        return int(model.num_prefix_tokens)
    if family in ("open_clip_vit", "torchvision_vit"):
        return 1
    return None


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def token_grid(model: nn.Module, image_size: Sequence[int]) -> tuple[int, int] | None:
    """Patch grid (rows, columns) of a known vision transformer for images of ``image_size`` (H, W).

    None for a model whose family puretools does not know.

    Examples
    --------
    >>> import torchvision
    >>> vit = torchvision.models.VisionTransformer(32, 16, 1, 2, 8, 16)  # a tiny vit_b_16
    >>> token_grid(vit, (32, 32))
    (2, 2)
    """
    check_module(model)
    try:
        h, w = (int(v) for v in image_size[-2:]) if len(image_size) >= 2 else (0, 0)
        ok = len(image_size) >= 2 and all(float(v) == int(v) for v in image_size[-2:]) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PuretoolsError(
            f"image_size={image_size!r} must end in the image height and width, two positive integers "
            "(e.g. (224, 224) or images.shape)."
        )
    family = _family(model)
    if family == "timm_vit":
        patch = _pair(model.patch_embed.patch_size)
    elif family == "open_clip_vit":
        patch = _pair(model.patch_size)
    elif family == "torchvision_vit":
        patch = _pair(model.patch_size)
    else:
        return None
    h, w = (int(s) for s in image_size[-2:])
    return h // patch[0], w // patch[1]


def _grid_of_tokens(model: nn.Module, images: torch.Tensor, n_tokens: int, prefix: int) -> tuple[int, int] | None:
    grid = token_grid(model, images.shape[-2:])
    if grid is not None and grid[0] * grid[1] == n_tokens - prefix:
        return grid
    side = math.isqrt(max(n_tokens - prefix, 0))
    h, w = images.shape[-2:]
    if grid is None and h == w and side * side == n_tokens - prefix and side > 0:
        return side, side  # square images, a square number of patches
    return None


def _ambiguous(layer: str, shape: tuple[int, ...], options: str) -> PuretoolsError:
    return PuretoolsError(
        f"Cannot tell the layout of layer {layer!r} (output shape {shape}) from the model: {options}. "
        f"Pass it explicitly, e.g. layout='channels_first' ([B, C, H, W]), 'channels_last' ([B, H, W, C]), "
        "'tokens' ([B, T, C]) or 'sequence_first' ([T, B, C])."
    )


def layer_layout(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    layout: str | Layout | None = None,
) -> Layout:
    """The :class:`Layout` of ``layer``'s output, found by one forward pass of ``images``.

    The pass records every leaf module that runs, with the rank of its output, and whether it
    reads channels on axis 1 (convolutions, batch/group norms, pooling, timm's
    ``LayerNorm2d``) or on the last axis (linear layers, ``LayerNorm``, attention). Then:

    - ``[B, C]``: channels first.
    - ``[B, C, H, W]`` vs ``[B, H, W, C]``: the layer's own type when it settles it; else
      channels first when the model applies no last-axis module to tensors of this rank
      (a plain CNN), channels last when it applies no axis-1 module to them; else the axis
      whose size equals the channel count of the last module with weights that ran before the
      layer's output, when exactly one axis does.
    - 3 axes: tokens ``[B, T, C]`` or sequence first ``[T, B, C]`` by where the batch sits,
      vs ``[B, C, L]`` (Conv1d) by the same rules.

    Anything else raises. Token layouts get the model family's prefix tokens and patch grid
    (:func:`prefix_tokens`, :func:`token_grid`).

    Parameters
    ----------
    model : torch.nn.Module
    layer : str
        Module name.
    images : Tensor [B, 3, H, W]
        One or a few checked images on the model's device (2 or more avoid reading a batch of
        one as a token axis; one image is repeated).
    layout : str, Layout or None
        The caller's layout: a :class:`Layout` is returned as it is; a kind name
        (``"tokens"``, ...) is checked against the output's shape and completed with the
        model's prefix tokens and grid. None: detect.

    Returns
    -------
    Layout

    Raises
    ------
    PuretoolsError
        When the model does not settle the layout (naming ``layout=`` as the fix), or the
        given ``layout`` does not fit the output.

    Examples
    --------
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    >>> layer_layout(model, "1", torch.randn(2, 3, 8, 8)).kind
    'channels_first'
    """
    if isinstance(layout, Layout):
        return layout
    if layout is not None and layout not in LAYOUT_KINDS:
        Layout(str(layout))  # raises, naming the kinds
    check_module(model)
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or len(images) == 0:
        raise PuretoolsError(
            f"images must be a non-empty batch of images, a Tensor [B, C, H, W], got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "")
            + "; pass e.g. images[:2]."
        )
    target = get_module(model, layer)
    if images.shape[0] < 2:
        images = images.expand(2, *images.shape[1:])
    seen: list[tuple[nn.Module, int, str | None]] = []  # (module, output rank, side) in call order
    store: dict[str, object] = {}

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and "out" not in store:
            seen.append((module, output.ndim, _op_side(module)))

    def catch(_module, _inputs, output):
        if "out" not in store:
            store["out"] = output[0] if isinstance(output, (tuple, list)) else output
            store["at"] = len(seen)

    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, nn.MultiheadAttention)]
    handles = [m.register_forward_hook(record) for m in leaves]
    handles.append(target.register_forward_hook(catch))
    try:
        with torch.inference_mode():
            model(images)
    except Exception:  # a head that needs another image size: the layer's output is what counts
        if "out" not in store:
            raise
    finally:
        for h in handles:
            h.remove()
    # the rest of the model (after the layer) also says which modules the model applies
    all_ops = list(seen)
    out = store.get("out")
    if not isinstance(out, torch.Tensor):
        raise PuretoolsError(f"Layer {layer!r} did not return a tensor during the forward pass of the model.")
    shape, b = tuple(out.shape), images.shape[0]
    kind = _detect(model, layer, target, out, b, all_ops, seen[: store["at"]] if "at" in store else seen, layout)
    if kind not in ("tokens", "sequence_first"):
        return Layout(kind)
    prefix = prefix_tokens(model)
    n_tokens = shape[1] if kind == "tokens" else shape[0]
    grid = _grid_of_tokens(model, images, n_tokens, prefix or 0)
    return Layout(kind, prefix_tokens=prefix or 0, grid=grid)


def _detect(model, layer, target, out, b, all_ops, before, layout) -> str:
    shape = tuple(out.shape)
    ndim = out.ndim
    own = _op_side(target)
    if layout is not None:
        Layout(layout)._check(out)
        return layout
    if ndim == 2:
        if shape[0] != b:
            raise _ambiguous(layer, shape, f"its first axis is not the batch of {b} images")
        return "channels_first"
    if ndim < 2:
        raise PuretoolsError(f"Layer {layer!r} output has shape {shape}; expected [B, C, ...].")
    sides = {side for module, rank, side in all_ops if rank == ndim and side is not None}
    channels = next((_channels_of(m) for m, _r, s in reversed(before) if s is not None and _channels_of(m)), None)
    if own is not None:
        channels = _channels_of(target) or channels
    if ndim == 3:
        batch_first, batch_second = shape[0] == b, shape[1] == b
        if batch_second and not batch_first:
            if own == "first" or sides == {"first"}:
                raise _ambiguous(layer, shape, "its second axis is the batch but its modules read channels on axis 1")
            return "sequence_first"
        if not batch_first or batch_second:
            raise _ambiguous(layer, shape, f"the batch of {b} images is not on exactly one of the first two axes")
        first, last = "channels_first", "tokens"
    else:
        if shape[0] != b:
            raise _ambiguous(layer, shape, f"its first axis is not the batch of {b} images")
        first, last = "channels_first", "channels_last"
    if own == "first":
        return first
    if own == "last":
        return last
    if sides <= {"first"}:
        return first
    if sides == {"last"}:
        return last
    if channels is not None:
        on_first, on_last = shape[1] == channels, shape[-1] == channels
        if on_first != on_last:
            return first if on_first else last
    if ndim == 3 and _family(model) is not None:
        return last  # known vision transformers: every 3-axis output is tokens
    raise _ambiguous(
        layer, shape,
        f"the model applies modules that read channels on axis 1 and on the last axis to {ndim}-axis "
        f"tensors, and the channel count {channels} of the last module before it fits "
        + ("both axes" if channels is not None and shape[1] == shape[-1] == channels else "neither axis"),
    )

