"""A sparse-autoencoder baseline: a TopK SAE (``overcomplete``) on a layer's activations, and its split of a neuron.

An SAE learns a dictionary of directions in the layer's activation space (positions as
samples), each meant to carry one feature. Its split of neuron k: each reference goes to the
SAE latent that contributes most to channel k at the neuron's max location. That is the
rival PURE is compared with in ``benchmarks/bench_disentangle.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from . import cache
from .checks import (
    check_activations,
    check_images,
    check_int,
    check_number,
    check_optional_int,
    resolve_device,
)
from .errors import PuretoolsError
from .forward import collate_images, layer_output, prepare_model
from .models import get_module
from .reference_type import References, check_references
from .virtual import VirtualNeurons

__all__ = ["SPLIT_RULES", "LayerSAE", "activations_at_max", "sae_contributions", "sae_split", "train_layer_sae"]


@dataclass(frozen=True)
class LayerSAE:
    """A trained sparse autoencoder of one layer (:func:`train_layer_sae`).

    Attributes
    ----------
    sae : nn.Module
        overcomplete's ``TopKSAE`` (eval mode); it reads activations divided by ``scale``.
    layer : str
    n_latents, top_k : int
    scale : float
        Root mean square of the training activations; inputs are divided by it.
    r2 : float
        Share of the training activations' variance the reconstruction explains.
    dead : float
        Share of latents never active on the training positions.
    """

    sae: nn.Module
    layer: str
    n_latents: int
    top_k: int
    scale: float
    r2: float
    dead: float

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Codes [M, n_latents] of activation vectors ``h`` [M, C] (TopK: ``top_k`` nonzero per row)."""
        return self.sae.encode(h / self.scale)[1]

    @property
    def dictionary(self) -> torch.Tensor:
        """Decoder directions [n_latents, C] in the layer's units: ``h ~ codes @ dictionary``."""
        return self.sae.get_dictionary().detach() * self.scale


def _overcomplete_sae():
    """overcomplete's ``TopKSAE``, ``train_sae`` and ``r2_score``.

    overcomplete 0.3.0 calls ``matplotlib.cm.get_cmap`` when imported (for its plotting
    helpers), which matplotlib 3.9 removed; for that import only, ``matplotlib.cm`` gets the
    registry's equivalent ``matplotlib.colormaps.get_cmap``, removed again afterwards.
    """
    import matplotlib
    import matplotlib.cm

    shim = not hasattr(matplotlib.cm, "get_cmap")
    if shim:
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    try:
        from overcomplete.metrics import r2_score
        from overcomplete.sae import TopKSAE, train_sae
    except ImportError as err:
        raise PuretoolsError(
            f"The SAE baseline needs the package overcomplete ({err}); install it with `pip install overcomplete`."
        ) from err
    finally:
        if shim:
            del matplotlib.cm.get_cmap
    return TopKSAE, train_sae, r2_score


def _positions(model, dataset, layer, n_images, batch_size, device) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for s in range(0, n_images, batch_size):
            images = collate_images([dataset[i] for i in range(s, min(s + batch_size, n_images))])
            images = check_images(images, model, s)  # NaN/Inf pixels, uint8: named, with the fix
            out = layer_output(model, images.to(device), layer).float()
            if out.ndim != 4:
                raise PuretoolsError(f"Layer {layer!r} gives outputs of shape {tuple(out.shape)}; expected [B, C, H, W].")
            check_activations(out, layer, s)
            rows.append(out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).cpu())
    return torch.cat(rows)


def train_layer_sae(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    n_latents: int | None = None,
    top_k: int | None = None,
    epochs: int = 20,
    n_images: int | None = None,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LayerSAE:
    """Train a TopK sparse autoencoder (overcomplete's ``TopKSAE``) on ``layer``'s activations.

    Every spatial position of every image is one sample (a vector of the layer's C channels).
    The activations are divided by their root mean square; the SAE is overcomplete's default
    (linear encoder, ReLU, top-k, unit-norm dictionary), trained with overcomplete's
    ``train_sae`` on the mean squared error, Adam, seeded. On the toy world (3,000 images,
    64 positions each, C = 8) it takes a few seconds on a CPU.

    Parameters
    ----------
    model : nn.Module
    dataset : Dataset
        Images to train on (use another split than the one you evaluate on).
    layer : str
    n_latents : int, optional
        Dictionary size (default ``4 * C``).
    top_k : int, optional
        Active latents per sample (default ``max(1, C // 2)``).
    epochs, batch_size, lr
        Optimiser settings.
    n_images : int, optional
        Use the first ``n_images`` images (default: all).
    seed : int
        Seeds the initialisation and the shuffling.
    device : str or torch.device, optional
    cache_dir : path or None
        Store/reuse the trained SAE (its weights, scale, R2 and dead share), fingerprinted by
        the model, every image of ``dataset``, the layer and every setting above.

    Returns
    -------
    LayerSAE

    Examples
    --------
    >>> import puretools as pt
    >>> from puretools import toyworld
    >>> model, train = pt.load_model("toy"), toyworld.ToyWorld("train", n=200)
    >>> sae = train_layer_sae(model, train, "layer4", epochs=2)
    >>> sae.n_latents, sae.top_k, sae.dictionary.shape  # 8 channels: 32 latents, 4 active
    (32, 4, torch.Size([32, 8]))
    >>> codes = sae.encode(torch.rand(5, 8))  # [5 samples, 32 latents]
    >>> (codes > 0).sum(1).le(4).all().item()
    True
    """
    n_latents = check_optional_int(n_latents, "n_latents", low=1)
    top_k = check_optional_int(top_k, "top_k", low=1)
    epochs = check_int(epochs, "epochs", low=1)
    n_images = check_optional_int(n_images, "n_images", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    lr = check_number(lr, "lr", 0, low_open=True)
    seed = check_int(seed, "seed", low=0)
    if len(dataset) == 0:
        raise PuretoolsError("dataset is empty; train the SAE on at least one image.")
    get_module(model, layer)
    TopKSAE, train_sae, r2_score = _overcomplete_sae()
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    n_images = len(dataset) if n_images is None else min(n_images, len(dataset))
    key = None
    if cache_dir is not None and not cache.items_change(dataset):
        from importlib.metadata import version

        key = cache.fingerprint(kind="layer-sae", model=cache.model_fingerprint(model),
                                dataset=cache.dataset_fingerprint(dataset), layer=layer, n_latents=n_latents,
                                top_k=top_k, epochs=epochs, n_images=n_images, batch_size=batch_size, lr=lr,
                                seed=seed, overcomplete=version("overcomplete"))  # fmt: skip
        found = cache.load_entry(cache_dir, "layer-sae", key)
        if found is not None:
            weights, info = found
            sae = TopKSAE(info["c"], nb_concepts=info["n_latents"], top_k=info["top_k"], device=str(device))
            sae.load_state_dict(weights)
            return LayerSAE(sae.eval(), layer, info["n_latents"], info["top_k"], info["scale"], info["r2"], info["dead"])
    x = _positions(model, dataset, layer, n_images, 256, device)  # [n_images * H * W, C]
    c = x.shape[1]
    n_latents = 4 * c if n_latents is None else n_latents
    top_k = max(1, c // 2) if top_k is None else top_k
    if not 1 <= top_k <= n_latents:
        raise PuretoolsError(f"top_k must lie in 1..n_latents ({n_latents}), got {top_k}.")
    scale = float(x.square().mean().sqrt().clamp(min=1e-12))
    x = (x / scale).to(device)
    torch.manual_seed(seed)
    sae = TopKSAE(c, nb_concepts=n_latents, top_k=top_k, device=str(device))
    loader = torch.utils.data.DataLoader(
        x, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)

    def mse(x, x_hat, pre_codes, codes, dictionary):
        return (x - x_hat).square().mean()

    train_sae(sae, loader, mse, optimizer, nb_epochs=epochs, monitoring=0, device=str(device))
    sae.eval()
    with torch.no_grad():
        _, codes, x_hat = sae(x)
        r2 = float(r2_score(x, x_hat))
        dead = float(((codes > 0).sum(0) == 0).float().mean())
    if key is not None:
        cache.save_cached(cache_dir, "layer-sae", key, sae.state_dict(),
                          {"c": c, "n_latents": n_latents, "top_k": top_k, "scale": scale, "r2": r2, "dead": dead})
    return LayerSAE(sae, layer, n_latents, top_k, scale, r2, dead)


@torch.inference_mode()
def activations_at_max(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int],
    read_layer: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The activation vector of ``read_layer`` where each neuron of ``layer`` is largest, per reference.

    Parameters
    ----------
    model, dataset, layer, references
        As in :func:`puretools.collect_references`.
    neurons : sequence of int
        Channels of ``layer`` (rows of ``references``).
    read_layer : str, optional
        The layer whose vector is read (default ``layer``); it must have the same spatial size
        (e.g. the SAE's layer under a planted layer).

    Returns
    -------
    Tensor [len(neurons), n_ref, C_read]

    Examples
    --------
    >>> import puretools as pt
    >>> from puretools import toyworld
    >>> model, data = pt.load_model("toy"), toyworld.ToyWorld("test", n=200)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=10, progress=False)
    >>> h = activations_at_max(model, data, "layer4", refs, neurons=[3])  # [1, 10, 8]
    >>> torch.allclose(h[0, :, 3], refs.values[3])  # neuron 3's own entry is its spatial max
    True
    """
    idx, neurons_t = check_references(references, dataset, layer, neurons)
    idx = idx[neurons_t]
    read_layer = layer if read_layer is None else read_layer
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    unique, inverse = torch.unique(idx, return_inverse=True)
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, out))
               for name in {layer, read_layer}]  # fmt: skip
    at, read = [], []
    try:
        for s in range(0, len(unique), batch_size):
            model(collate_images([dataset[int(i)] for i in unique[s : s + batch_size]]).to(device))
            at.append(store[layer][:, neurons_t].flatten(2).float().cpu())  # [b, N, HW]
            read.append(store[read_layer].flatten(2).float().cpu())  # [b, C, HW]
    finally:
        for h in handles:
            h.remove()
    at, read = torch.cat(at), torch.cat(read)
    if at.shape[-1] != read.shape[-1]:
        raise PuretoolsError(f"{layer!r} and {read_layer!r} have different spatial sizes; read a layer of the same size.")
    where = at.argmax(-1)  # [U, N]
    n = torch.arange(len(neurons_t))[:, None].expand_as(idx)
    loc = where[inverse, n]  # [N, n_ref]
    return read[inverse].gather(-1, loc[..., None, None].expand(*idx.shape, read.shape[1], 1)).squeeze(-1)


def sae_contributions(
    sae: LayerSAE, h: torch.Tensor, readout: int | Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """How much each SAE latent contributes to one neuron, for activation vectors ``h``.

    For a channel ``k`` of the SAE's layer (``readout=k``) the reconstruction of the channel is
    ``sum_j z_j D[j, k]``, so latent j contributes ``z_j D[j, k]``. For a neuron computed from
    the layer's vector by a function ``f`` (``readout=f``, e.g. a planted neuron), latent j
    contributes ``z_j (grad f(h) . D[j])``, the first-order share of its direction.

    Parameters
    ----------
    sae : LayerSAE
    h : Tensor [M, C]
        Activation vectors of the SAE's layer (e.g. from :func:`activations_at_max`).
    readout : int or callable [M, C] -> [M]

    Returns
    -------
    Tensor [M, n_latents]

    Examples
    --------
    >>> import puretools as pt
    >>> from puretools import toyworld
    >>> sae = train_layer_sae(pt.load_model("toy"), toyworld.ToyWorld("train", n=100), "layer4", epochs=1)
    >>> h = torch.rand(6, 8)  # 6 activation vectors of layer4 (8 channels)
    >>> c = sae_contributions(sae, h, 2)  # [6, 32]: latent j's share of channel 2
    >>> torch.allclose(c.sum(1), (sae.encode(h) @ sae.dictionary)[:, 2], atol=1e-5)  # the reconstruction
    True
    """
    if not isinstance(sae, LayerSAE) and not (callable(getattr(sae, "encode", None)) and hasattr(sae, "dictionary")):
        raise PuretoolsError(
            f"sae must be a LayerSAE from train_layer_sae (or an object with .encode and .dictionary), "
            f"got {type(sae).__name__}."
        )
    h = torch.as_tensor(h)
    if h.ndim != 2 or h.shape[1] != sae.dictionary.shape[1] or not len(h):
        raise PuretoolsError(
            f"h must have shape [n_ref, {sae.dictionary.shape[1]}] (the vector of {sae.layer!r} per reference, "
            f"n_ref >= 1), got {tuple(h.shape)}."
        )
    h = h.float()
    if not torch.isfinite(h).all():
        raise PuretoolsError("h contains NaN or Inf values; check the activations it was read from.")
    with torch.no_grad():
        z = sae.encode(h)
    d = sae.dictionary  # [n_latents, C]
    if not callable(readout):
        readout = check_int(readout, "readout")
        if not 0 <= readout < d.shape[1]:
            raise PuretoolsError(f"readout={readout} is not a channel of {sae.layer!r} (0..{d.shape[1] - 1}).")
        return z * d[:, readout]
    with torch.enable_grad():
        x = h.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(readout(x).sum(), x)
    return z * (grad @ d.T)


SPLIT_RULES = ("argmax", "sparse", "kmeans")


def sae_split(
    sae: LayerSAE,
    h: torch.Tensor,
    readout: int | Callable[[torch.Tensor], torch.Tensor],
    rule: str = "argmax",
    k: int | str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The SAE's split of one neuron's references, by one of three rules.

    - ``"argmax"`` (the original rule): each reference goes to the latent that contributes
      most to the neuron (:func:`sae_contributions`). A latent that carries the neuron's own
      direction is active on nearly every reference and wins everywhere, so this rule often
      does not split at all.
    - ``"sparse"``: the same, among the latents active on fewer than half of the references
      (the ones that can tell references apart); a reference on which none of them contributes
      positively falls back to the argmax over all latents.
    - ``"kmeans"``: k-means (:func:`puretools.kmeans_labels`, ``seed``) on the references'
      codes ``sae.encode(h)``; ``k`` clusters (an int) or ``"auto"`` (silhouette over 2..5,
      as :class:`puretools.VirtualNeurons`).

    Parameters
    ----------
    sae : LayerSAE
    h : Tensor [n_ref, C]
        The SAE layer's vector at the neuron's max location, per reference
        (:func:`activations_at_max`).
    readout : int or callable
        The neuron: a channel of the SAE's layer, or a function of its vector
        (:func:`sae_contributions`).
    rule : {"argmax", "sparse", "kmeans"}
    k : int or "auto", optional
        Clusters of the ``"kmeans"`` rule (required there, ignored otherwise).
    seed : int
        k-means seed of the ``"kmeans"`` rule.

    Returns
    -------
    LongTensor [n_ref]
        Cluster label per reference (a latent index for ``"argmax"`` and ``"sparse"``).

    Examples
    --------
    >>> import puretools as pt
    >>> from puretools import toyworld
    >>> sae = train_layer_sae(pt.load_model("toy"), toyworld.ToyWorld("train", n=100), "layer4", epochs=1)
    >>> h = torch.rand(6, 8)
    >>> sae_split(sae, h, readout=2).shape  # one latent per reference
    torch.Size([6])
    >>> sae_split(sae, h, readout=2, rule="kmeans", k=2).unique().numel()
    2
    """
    if rule not in SPLIT_RULES:
        raise PuretoolsError(f"rule must be one of {SPLIT_RULES}, not {rule!r}.")
    if rule == "kmeans":
        if k is None:
            raise PuretoolsError("rule='kmeans' needs k: an int (clusters) or 'auto' (silhouette).")
        with torch.no_grad():
            z = sae.encode(torch.as_tensor(h).float())
        return VirtualNeurons(seed=seed).fit(z.double(), k=k).labels[0]
    contrib = sae_contributions(sae, h, readout)  # [n_ref, n_latents]
    if rule == "argmax":
        return contrib.argmax(-1)
    with torch.no_grad():
        active = sae.encode(torch.as_tensor(h).float()) > 0
    rare = active.float().mean(0) < 0.5  # [n_latents]
    masked = contrib.masked_fill(~rare[None], float("-inf"))
    best = masked.argmax(-1)
    none = ~(masked.max(-1).values > 0)
    return torch.where(none, contrib.argmax(-1), best)
