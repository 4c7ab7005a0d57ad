"""CP-LRP for vision transformers, and the check that refuses LRP where relevance would leak.

Relevance here follows zennit's convention: the gradient that reaches a tensor *is* its
relevance. zennit's rules only see modules, so every operation that mixes relevance outside
a module (a residual ``+``, the attention product, a LayerNorm, a layer scale, a position
embedding, a token pooling) is rewritten by a canonizer into an explicit LRP step:

- :func:`lrp_block` applies the epsilon rule to an affine function ``f`` of its inputs:
  ``R_x = x * (J_f(x)^T (R_out / stab(f(x))))``. It is exact gradient x input for ``f``
  (Ali et al. 2022, "XAI for Transformers: better explanations through conservative
  propagation"; LXT's ``cp_LRP`` computes the same quantities in the gradient x input frame).
- LayerNorm: the standard deviation is a constant (``lrp_block`` on the centring and
  scaling with a detached std); the mean subtraction stays linear.
- attention: the softmax weights are constants (computed without gradient); relevance flows
  only through the value path, ``A @ (x W_v + b_v)`` and the output projection.
- elementwise activations (GELU, QuickGELU, SiLU, ...): the identity rule (zennit ``Pass``).
- Linear and convolution layers: zennit's ``Epsilon``.

With zero biases every step conserves relevance exactly (up to the stabilisers).

:func:`lrp_coverage` traces a model with torch.fx, the composite's canonizers applied, and
lists the operations and modules that no rule covers (a residual add, a product of two
activations, a mean, a LayerNorm or GroupNorm without a rule, ...): there, zennit would pass
plain gradients and relevance would not be conserved. :func:`puretools.lrp_composite`
refuses such models with a :class:`~puretools.errors.PuretoolsError` naming them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from zennit.canonizers import AttributeCanonizer, Canonizer
from zennit.composites import LayerMapComposite
from zennit.core import Composite, stabilize
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass
from zennit.types import Activation, AvgPool, Convolution

from .errors import PuretoolsError

__all__ = [
    "CPLRPComposite",
    "TransformerCanonizer",
    "is_transformer",
    "lrp_block",
    "lrp_coverage",
    "lrp_scale",
    "lrp_sum",
    "transformer_blocks",
]

BLOCK_EPSILON = 1e-9
"""Stabiliser of :func:`lrp_block`'s denominators (only a guard against division by zero)."""

_MARK = "puretools_cp_lrp"  # set on every module a canonizer rewrote (removed with it): "leaf" if self-contained


# --------------------------------------------------------------------------- LRP steps on tensors


class _BlockRule(torch.autograd.Function):
    """Forward: ``fn(*inputs)``. Backward (relevance in, relevance out): the epsilon rule of ``fn``."""

    @staticmethod
    def forward(ctx, fn, epsilon, *inputs):
        ctx.fn, ctx.epsilon = fn, epsilon
        ctx.save_for_backward(*inputs)
        return fn(*inputs)

    @staticmethod
    def backward(ctx, relevance):
        inputs = [x.detach().requires_grad_(True) for x in ctx.saved_tensors]
        with torch.enable_grad():
            out = ctx.fn(*inputs)
        grads = torch.autograd.grad(out, inputs, relevance / stabilize(out.detach(), ctx.epsilon), allow_unused=True)
        rel = [None if g is None or not need else x.detach() * g
               for x, g, need in zip(inputs, grads, ctx.needs_input_grad[2:])]  # fmt: skip
        return (None, None, *rel)


def lrp_block(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, epsilon: float = BLOCK_EPSILON) -> torch.Tensor:
    """``fn(*inputs)``, whose backward pass applies the LRP epsilon rule to ``fn`` as one step.

    ``fn`` must be affine in its inputs (anything else it uses is a constant): the relevance
    ``R`` of the output goes to input ``x`` as ``x * J^T (R / stab(fn(x)))``; with no constant
    term, ``sum(R_x) == sum(R)``.

    Parameters
    ----------
    fn : callable
        Tensors -> one tensor, affine in each input.
    *inputs : Tensor
    epsilon : float
        Stabiliser of the denominator.

    Returns
    -------
    Tensor
        ``fn(*inputs)``.

    Examples
    --------
    >>> x = torch.tensor([1.0, 3.0], requires_grad=True)
    >>> y = lrp_block(lambda t: t.sum(0, keepdim=True) * 2, x)
    >>> (grad,) = torch.autograd.grad(y, x, torch.tensor([8.0]))
    >>> grad  # the relevance 8 split in proportion to the contributions
    tensor([2., 6.])
    """
    if any(isinstance(x, fx.Proxy) for x in inputs):  # traced by lrp_coverage: one opaque, covered step
        return _lrp_step(*inputs)
    return _BlockRule.apply(fn, epsilon, *inputs)


def _lrp_step(*inputs: torch.Tensor) -> torch.Tensor:
    """What :func:`lrp_block` is in a torch.fx graph (only traced, never run)."""
    raise NotImplementedError("only a placeholder in torch.fx graphs")


def _add(*tensors: torch.Tensor) -> torch.Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


def lrp_sum(*tensors: torch.Tensor) -> torch.Tensor:
    """``tensors[0] + tensors[1] + ...`` (broadcast), relevance split in proportion to each term.

    Examples
    --------
    >>> a, b = torch.tensor([1.0], requires_grad=True), torch.tensor([3.0], requires_grad=True)
    >>> torch.autograd.grad(lrp_sum(a, b), (a, b), torch.tensor([4.0]))
    (tensor([1.]), tensor([3.]))
    """
    return lrp_block(_add, *tensors)


def lrp_scale(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``x * scale`` with ``scale`` a constant: the relevance passes to ``x`` unchanged.

    Examples
    --------
    >>> x = torch.tensor([2.0, -1.0], requires_grad=True)
    >>> torch.autograd.grad(lrp_scale(x, torch.tensor([0.5, 3.0])), x, torch.tensor([1.0, 2.0]))
    (tensor([1., 2.]),)
    """
    scale = scale.detach() if isinstance(scale, torch.Tensor) else scale
    return lrp_block(lambda t: t * scale, x)


fx.wrap("_lrp_step")
# Traced (puretools.subnet cutting into a canonized block, lrp_coverage): one node each, run as themselves.
fx.wrap("lrp_sum")
fx.wrap("lrp_scale")


def _cp_layer_norm_fn(x: torch.Tensor, shape, weight, bias, eps: float, channels_first: bool = False) -> torch.Tensor:
    """LayerNorm with the standard deviation a constant (affine in ``x``)."""
    if channels_first:  # timm LayerNorm2d: normalise over dim 1 of [B, C, H, W]
        mean = x.mean(1, keepdim=True)
        std = (x - mean).pow(2).mean(1, keepdim=True).add(eps).sqrt().detach()
        y = (x - mean) / std
        if weight is not None:
            y = y * weight.reshape(1, -1, *([1] * (x.ndim - 2)))
        if bias is not None:
            y = y + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
        return y
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dims, keepdim=True)
    std = (x - mean).pow(2).mean(dims, keepdim=True).add(eps).sqrt().detach()
    y = (x - mean) / std
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _is_layer_norm_2d(module: nn.Module) -> bool:
    return type(module).__name__ == "LayerNorm2d"


def _layer_norm_fn(module: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: _cp_layer_norm_fn(t, module.normalized_shape, module.weight, module.bias, module.eps,
                                       channels_first=_is_layer_norm_2d(module))  # fmt: skip


# --------------------------------------------------------------------------- canonized forwards


def _layer_norm_forward(self, x):
    return lrp_block(_layer_norm_fn(self), x)


def _layer_scale_forward(self, x):
    gamma = self.gamma
    if x.ndim == 4 and gamma.ndim == 1 and getattr(self, "puretools_channels_first", False):
        gamma = gamma.reshape(1, -1, 1, 1)
    return lrp_scale(x, gamma)


def _timm_attention_forward(self, x, attn_mask=None, is_causal=False):
    """timm ``Attention``: the softmax weights (and a gate) computed without gradient; relevance
    flows through ``v`` and the output projection only."""
    from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

    B, N, _ = x.shape
    H, D = self.num_heads, self.head_dim
    with torch.no_grad():  # on a detached x, so that zennit's hooks (q_norm, gate) stay out of it
        qkv = F.linear(x.detach(), self.qkv.weight, self.qkv.bias).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(qkv[0]), self.k_norm(qkv[1])
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = attn.softmax(dim=-1)
        gate = self.gate(x.detach()).sigmoid() if getattr(self, "gate", None) is not None else None
    dim = self.attn_dim
    w_v = self.qkv.weight[2 * dim : 3 * dim]
    b_v = self.qkv.bias[2 * dim : 3 * dim] if self.qkv.bias is not None else None
    norm = None if isinstance(self.norm, nn.Identity) else _layer_norm_fn(self.norm)

    def value_path(t):
        v = F.linear(t, w_v, b_v).reshape(B, N, H, D).transpose(1, 2)
        out = (attn @ v).transpose(1, 2).reshape(B, N, dim)
        if norm is not None:
            out = norm(out)
        if gate is not None:
            out = out * gate
        return F.linear(out, self.proj.weight, self.proj.bias)

    return lrp_block(value_path, x)


def _mha_forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False):  # fmt: skip
    """``nn.MultiheadAttention`` written out: softmax weights without gradient, relevance through the value path."""
    if not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn or query.ndim != 3:
        raise PuretoolsError(
            "LRP supports nn.MultiheadAttention with one in_proj_weight, no bias_k/bias_v, no add_zero_attn and "
            "batched 3-d inputs; this module has another configuration. Use method='gradient'."
        )
    if not self.batch_first:  # [T, B, C] -> [B, T, C]
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    E, H = self.embed_dim, self.num_heads
    D = E // H
    w, b = self.in_proj_weight, self.in_proj_bias
    B, Tq, Tk = query.shape[0], query.shape[1], key.shape[1]
    with torch.no_grad():
        q = F.linear(query, w[:E], None if b is None else b[:E]).reshape(B, Tq, H, D).transpose(1, 2)
        k = F.linear(key, w[E : 2 * E], None if b is None else b[E : 2 * E]).reshape(B, Tk, H, D).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask.reshape(-1, H, Tq, Tk) if attn_mask.ndim == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        attn = scores.softmax(dim=-1)
    batch_first = self.batch_first
    w_v, b_v = w[2 * E :], None if b is None else b[2 * E :]
    out_w, out_b = self.out_proj.weight, self.out_proj.bias

    def value_path(t):
        t = t if batch_first else t.transpose(0, 1)
        v = F.linear(t, w_v, b_v).reshape(B, Tk, H, D).transpose(1, 2)
        out = F.linear((attn @ v).transpose(1, 2).reshape(B, Tq, E), out_w, out_b)
        return out if batch_first else out.transpose(0, 1)

    out = lrp_block(value_path, value)
    weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
    return out, weights


def _timm_block_forward(self, x, attn_mask=None, is_causal=False):
    x = lrp_sum(x, self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))))
    return lrp_sum(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


def _timm_vit_pos_embed(self, x):
    return lrp_block(lambda t: type(self)._pos_embed(self, t), x)


def _timm_vit_pool(self, x, pool_type=None):
    if getattr(self, "attn_pool", None) is not None:
        raise PuretoolsError("LRP has no rule for timm's attention pooling ('map'); use method='gradient'.")
    return lrp_block(lambda t: type(self).pool(self, t, pool_type=pool_type), x)


def _torchvision_block_forward(self, input):
    x = self.ln_1(input)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = lrp_sum(self.dropout(x), input)
    return lrp_sum(x, self.mlp(self.ln_2(x)))


def _torchvision_encoder_forward(self, input):
    input = lrp_block(lambda t: t + self.pos_embedding, input)
    return self.ln(self.layers(self.dropout(input)))


def _open_clip_block_forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
    if k_x is not None or v_x is not None:
        raise PuretoolsError("LRP covers open_clip's self-attention blocks only (k_x and v_x None); use method='gradient'.")
    x = lrp_sum(q_x, self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask)))
    return lrp_sum(x, self.ls_2(self.mlp(self.ln_2(x))))


def _open_clip_embeds(self, x):
    from open_clip.transformer import _expand_token

    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)

    def embed(t):
        cls = _expand_token(self.class_embedding, t.shape[0]).to(t.dtype)
        return torch.cat([cls, t], dim=1) + self.positional_embedding.to(t.dtype)

    x = lrp_block(embed, x)
    return self.ln_pre(self.patch_dropout(x))


def _open_clip_vit_forward(self, x):
    if getattr(self, "attn_pool", None) is not None:
        raise PuretoolsError("LRP has no rule for open_clip's attentional pooler; use method='gradient'.")
    x = self.transformer(self._embeds(x))
    pooled, tokens = self._pool(x)
    if self.proj is not None:
        proj = self.proj
        pooled = lrp_block(lambda t: t @ proj, pooled)
    return (pooled, tokens) if self.output_tokens else pooled


def _open_clip_global_pool(self, x):
    tokens = x[:, 1:] if self.pool_type in ("avg", "tok") else x
    return lrp_block(lambda t: type(self)._global_pool(self, t)[0], x), tokens


# --------------------------------------------------------------------------- canonizer


def _classes(spec: list[tuple[str, str]]) -> tuple[type, ...]:
    import importlib

    found = []
    for module_name, class_name in spec:
        try:
            found.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _family_classes() -> dict[str, tuple[type, ...]]:
    return {
        "timm_attention": _classes([("timm.layers.attention", "Attention"), ("timm.models.vision_transformer", "Attention")]),
        "timm_block": _classes([("timm.models.vision_transformer", "Block")]),
        "timm_vit": _classes([("timm.models.vision_transformer", "VisionTransformer")]),
        "timm_layer_scale": _classes([("timm.layers", "LayerScale"), ("timm.models.vision_transformer", "LayerScale")]),
        "torchvision_block": _classes([("torchvision.models.vision_transformer", "EncoderBlock")]),
        "torchvision_encoder": _classes([("torchvision.models.vision_transformer", "Encoder")]),
        "open_clip_block": _classes([("open_clip.transformer", "ResidualAttentionBlock")]),
        "open_clip_vit": _classes([("open_clip.transformer", "VisionTransformer")]),
        "open_clip_layer_scale": _classes([("open_clip.transformer", "LayerScale")]),
    }


def _elementwise_activations() -> tuple[type, ...]:
    """Activation modules zennit's ``Activation`` type misses (they get the identity rule too)."""
    return _classes([
        ("open_clip.transformer", "QuickGELU"),
        ("timm.layers.activations", "GELU"), ("timm.layers.activations", "GELUTanh"),
        ("timm.layers.activations", "QuickGELU"), ("timm.layers.activations", "Swish"),
        ("timm.layers.activations", "Mish"), ("timm.layers.activations", "HardSwish"),
        ("timm.layers.activations", "HardSigmoid"), ("timm.layers.activations", "Sigmoid"),
        ("timm.layers.activations", "Tanh"), ("timm.layers.activations", "PReLU"),
        ("torch.nn", "Mish"), ("torch.nn", "Tanh"),
    ])  # fmt: skip


def _forwards(name: str, module: nn.Module) -> dict | None:
    """The attributes :class:`TransformerCanonizer` sets on ``module``, or None."""
    fam = _family_classes()

    def bind(fn):
        return fn.__get__(module)

    if isinstance(module, nn.MultiheadAttention):
        return {"forward": bind(_mha_forward), _MARK: "leaf"}
    if isinstance(module, nn.LayerNorm):
        return {"forward": bind(_layer_norm_forward), _MARK: "leaf"}
    if fam["timm_attention"] and isinstance(module, fam["timm_attention"]):
        return {"forward": bind(_timm_attention_forward), _MARK: "leaf"}
    if fam["timm_block"] and type(module) in fam["timm_block"]:
        return {"forward": bind(_timm_block_forward), _MARK: "container"}
    if fam["timm_vit"] and isinstance(module, fam["timm_vit"]):
        return {"_pos_embed": bind(_timm_vit_pos_embed), "pool": bind(_timm_vit_pool), _MARK: "container"}
    if isinstance(module, fam["timm_layer_scale"] + fam["open_clip_layer_scale"]):
        return {"forward": bind(_layer_scale_forward), _MARK: "leaf"}
    if fam["torchvision_block"] and isinstance(module, fam["torchvision_block"]):
        return {"forward": bind(_torchvision_block_forward), _MARK: "container"}
    if fam["torchvision_encoder"] and isinstance(module, fam["torchvision_encoder"]):
        return {"forward": bind(_torchvision_encoder_forward), _MARK: "container"}
    if fam["open_clip_block"] and type(module) in fam["open_clip_block"]:
        return {"forward": bind(_open_clip_block_forward), _MARK: "container"}
    if fam["open_clip_vit"] and isinstance(module, fam["open_clip_vit"]):
        return {"forward": bind(_open_clip_vit_forward), "_embeds": bind(_open_clip_embeds),
                "_global_pool": bind(_open_clip_global_pool), _MARK: "container"}  # fmt: skip
    return None


class TransformerCanonizer(AttributeCanonizer):
    """Rewrites the forwards of ViT parts into explicit CP-LRP steps, for as long as it is applied.

    Covered: ``nn.LayerNorm`` and its subclasses (timm ``LayerNorm``/``LayerNorm2d``, open_clip's),
    ``nn.MultiheadAttention`` (torchvision, open_clip), timm ``Attention`` (fused or not),
    timm ``Block`` and ``LayerScale``, timm ``VisionTransformer`` (position embedding, pooling),
    torchvision ``Encoder``/``EncoderBlock``, open_clip ``ResidualAttentionBlock``,
    ``LayerScale`` and ``VisionTransformer`` (embeddings, pooling, projection). Removing the
    canonizer deletes every attribute it set, so the modules' class methods are back.

    Examples
    --------
    >>> layer_norm = nn.LayerNorm(4)
    >>> handles = TransformerCanonizer().apply(nn.Sequential(layer_norm))
    >>> "forward" in vars(layer_norm)
    True
    >>> for handle in handles:
    ...     handle.remove()
    >>> "forward" in vars(layer_norm)
    False
    """

    def __init__(self) -> None:
        super().__init__(_forwards)

    def copy(self) -> TransformerCanonizer:
        return TransformerCanonizer()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of the recognised ViT families in ``model`` (timm, torchvision, open_clip).

    Examples
    --------
    >>> from torchvision.models import VisionTransformer
    >>> vit = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
    >>> len(transformer_blocks(vit))
    2
    """
    fam = _family_classes()
    classes = fam["timm_block"] + fam["torchvision_block"] + fam["open_clip_block"]
    return [m for m in model.modules() if type(m) in classes]


def is_transformer(model: nn.Module) -> bool:
    """True if ``model`` holds a ViT family that :class:`TransformerCanonizer` covers.

    Examples
    --------
    >>> is_transformer(nn.Sequential(nn.Linear(2, 2)))
    False
    """
    fam = _family_classes()
    attention = fam["timm_attention"] + (nn.MultiheadAttention,)
    return bool(transformer_blocks(model)) or any(isinstance(m, attention) for m in model.modules())


class CPLRPComposite(LayerMapComposite):
    """CP-LRP for vision transformers (Ali et al. 2022; LXT's ``cp_LRP``), as a zennit composite.

    Rules: ``Epsilon(epsilon)`` on Linear and convolution layers, the identity rule (``Pass``)
    on elementwise activations, zennit's ``Norm`` on ``Sum`` and average pooling; LayerNorm,
    attention, residual adds, layer scales and the embedding/pooling steps are rewritten by
    :class:`TransformerCanonizer` (LayerNorm's std and the attention weights constant).
    ``nn.MultiheadAttention`` gets no zennit rule (zennit's ``Pass`` would crash on its three
    inputs); its canonized forward carries its rule.

    Parameters
    ----------
    epsilon : float
        Of the epsilon rule on Linear and convolution layers.
    canonizers : list of zennit Canonizer or None
        None: ``[TransformerCanonizer()]``.

    Examples
    --------
    >>> from torchvision.models import VisionTransformer
    >>> vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
    ...                         mlp_dim=16, num_classes=3).eval()
    >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)  # 2 images
    >>> with CPLRPComposite().context(vit) as modified:
    ...     y = modified(x)
    ...     (relevance,) = torch.autograd.grad(y, x, torch.eye(3)[[0, 1]] * y)
    >>> relevance.shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, epsilon: float = 1e-6, canonizers: list[Canonizer] | None = None) -> None:
        self.epsilon = epsilon
        layer_map = [
            (nn.MultiheadAttention, None),
            (Activation, Pass()),
            (_elementwise_activations() or (Activation,), Pass()),
            (Sum, Norm()),
            (AvgPool, Norm()),
            (nn.Linear, Epsilon(epsilon)),
            (Convolution, Epsilon(epsilon)),
        ]
        super().__init__(layer_map, canonizers=[TransformerCanonizer()] if canonizers is None else canonizers)


# --------------------------------------------------------------------------- coverage check

_ROUTING = {
    # ops that only move, copy, select or reshape entries: relevance-as-gradient passes them intact
    "getitem", "getattr", "reshape", "view", "permute", "transpose", "flatten", "unflatten", "contiguous",
    "squeeze", "unsqueeze", "cat", "concat", "stack", "split", "chunk", "unbind", "size", "dim", "to", "type",
    "float", "double", "half", "bfloat16", "clone", "detach", "expand", "expand_as", "narrow", "select",
    "index_select", "roll", "movedim", "dropout", "identity", "pad", "pixel_shuffle", "pixel_unshuffle",
    "_lrp_step", "lrp_sum", "lrp_scale", "numel", "shape", "repeat", "tile", "_assert", "__getitem__",
    "requires_grad_", "cpu", "cuda", "masked_fill", "zeros_like", "ones_like", "new_zeros", "new_ones",
    "stochastic_depth", "drop_path",
}  # fmt: skip
_SHAPES = {"size", "dim", "numel"}
_BIAS_OPS = {"add", "iadd", "add_", "sub", "isub", "sub_", "__add__", "__sub__", "__iadd__"}
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target.strip("_") if target.startswith("__") else target
    name = getattr(target, "__name__", str(target))
    return name.strip("_") if name.startswith("__") else name


class _Root(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _CoverageTracer(fx.Tracer):
    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _identity_batch_norm(bn: nn.Module) -> bool:
    """A BatchNorm that a merge canonizer reduced to the identity (its statistics folded into a conv)."""
    if bn.running_mean is None or bn.running_var is None:
        return False
    scale = bn.weight / (bn.running_var + bn.eps).sqrt() if bn.weight is not None else 1 / (bn.running_var + bn.eps).sqrt()
    shift = (bn.bias if bn.bias is not None else 0) - bn.running_mean * scale
    return bool(torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift)))


def lrp_coverage(model: nn.Module, composite: Composite) -> list[str]:
    """Where LRP with ``composite`` would not conserve relevance in ``model``: one line per place.

    The canonizers of ``composite`` are applied, the model is traced with torch.fx (modules
    with a rule or a canonized forward kept whole) and each operation is checked: an
    operation on activations must be a module with a rule, an LRP step of this module
    (:func:`lrp_sum`, :func:`lrp_block`), a reshaping/indexing op, or the addition of a
    constant (a bias). A product or sum of two activations (residual add without a ``Sum``
    canonizer, gating), a mean, a nonlinear function applied in ``forward``, a LayerNorm or
    GroupNorm without a rule and a BatchNorm left unmerged are reported, with their module.

    Parameters
    ----------
    model : torch.nn.Module
    composite : zennit Composite

    Returns
    -------
    list of str
        Empty when every operation is covered. ``["<untraceable: ...>"]`` when torch.fx
        cannot trace the model (then coverage is unknown).

    Examples
    --------
    >>> from zennit.composites import EpsilonPlusFlat
    >>> lrp_coverage(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), EpsilonPlusFlat())
    []
    >>> lrp_coverage(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), EpsilonPlusFlat())
    ["module '1' (LayerNorm): no LRP rule"]
    """
    handles = []
    problems: list[str] = []
    try:
        for canonizer in getattr(composite, "canonizers", None) or []:
            handles.extend(canonizer.apply(model))
        names = {id(m): n for n, m in model.named_modules()}
        ruled = {id(m) for n, m in model.named_modules() if composite.module_map({}, n, m) is not None}
        marked_leaves = {id(m) for m in model.modules() if getattr(m, _MARK, None) == "leaf"}
        try:  # fx traces the class's forward of the root: wrap the model so that a canonized forward counts
            graph = _CoverageTracer(ruled | marked_leaves).trace(_Root(model))
        except Exception as err:  # data-dependent control flow and the like
            return [f"<untraceable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}>"]
        live: set[fx.Node] = set()
        for node in graph.nodes:
            if node.op == "placeholder":
                if node is next(iter(graph.nodes)):  # the model's input; other arguments keep their defaults
                    live.add(node)
                continue
            args = [a for a in node.all_input_nodes if a in live]
            if not args:
                continue
            live.add(node)
            where = _where(node, names)
            if node.op == "call_module":
                module = model.get_submodule(node.target.removeprefix("model.").removeprefix("model"))
                if id(module) in ruled or id(module) in marked_leaves:
                    continue
                if isinstance(module, _NORMS):
                    problems.append(f"module {names[id(module)]!r} ({type(module).__name__}): no LRP rule")
                elif isinstance(module, _BATCH_NORMS) and not _identity_batch_norm(module):
                    problems.append(f"module {names[id(module)]!r} ({type(module).__name__}): not merged into a layer")
                continue
            if node.op not in ("call_function", "call_method"):
                continue
            op = _op_name(node)
            if op in _SHAPES or (op == "getattr" and node.args[1] in ("shape", "dtype", "device", "ndim")):
                live.discard(node)  # a size, not an activation
                continue
            if op in _ROUTING:
                continue
            if op in _BIAS_OPS and len(args) == 1:
                continue  # activation + constant: a bias
            what = "adds two activations (a residual add without a Sum canonizer)" if op in _BIAS_OPS else f"applies {op!r}"
            problems.append(f"{where} {what}")
    finally:
        for handle in reversed(handles):
            handle.remove()
    return list(dict.fromkeys(problems))


def _where(node: fx.Node, names: dict[int, str]) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if len(stack) > 1:  # the first entry is the wrapper around the model
        path, kind = list(stack.values())[-1]
        path = path.removeprefix("model.")
        kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1].strip("'>")
        return f"module {path!r} ({kind_name}):"
    return "the model's forward:"

