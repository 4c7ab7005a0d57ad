"""Virtual neurons: k-means on the circuits of each neuron, assignment of new samples, baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from torch import nn
from torch.utils.data import Dataset

from .checks import (
    check_activations,
    check_called_once,
    check_ids,
    check_images,
    check_int,
    resolve_device,
)
from .errors import PuretoolsError
from .forward import collate_images, layer_output, prepare_model
from .layouts import Layout, layer_layout
from .models import get_module
from .reference_type import References, check_references

__all__ = ["VirtualNeurons", "activation_features", "kmeans_labels", "peak_positions"]


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels [n] and centroids [k, d] that do not depend on the order of the rows.

    The rows are put in a canonical (lexicographic) order before scikit-learn's KMeans
    (``n_init``, ``random_state=seed``) so that permuting the samples permutes the labels
    the same way; clusters are numbered by size, largest first.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    >>> kmeans_labels(x, 2)[0]
    array([0, 0, 1])
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise PuretoolsError(f"k={k} virtual neurons need 1 <= k <= {n} (the number of samples clustered).")
    order = np.lexsort(x.T[::-1]) if x.shape[1] else np.arange(n)
    xs = x[order]
    if k == 1:
        labels_sorted = np.zeros(n, dtype=np.int64)
        centroids = xs.mean(0, keepdims=True)
    else:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(xs)
        labels_sorted, centroids = km.labels_.astype(np.int64), km.cluster_centers_
    sizes = np.bincount(labels_sorted, minlength=k)
    rank = sorted(range(k), key=lambda c: (-sizes[c], tuple(centroids[c])))
    remap = np.empty(k, dtype=np.int64)
    remap[rank] = np.arange(k)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = remap[labels_sorted]
    return labels, centroids[rank]


class VirtualNeurons:
    """Virtual neurons of one or many neurons: k-means clusters of their circuits.

    Works the same for any per-reference features: PURE circuits [N, n_ref, C_lower], the
    activation baseline from :func:`activation_features`, or image embeddings.

    Parameters
    ----------
    seed : int
        ``random_state`` of scikit-learn's KMeans.
    n_init : int
        KMeans restarts (the paper's code uses 10).
    k_range : tuple of int
        Candidate k when fitting with ``k="auto"`` (chosen by silhouette score).

    Attributes (after :meth:`fit`)
    ----------
    labels : LongTensor [N, n_ref]
        Virtual neuron of every reference of every neuron.
    centroids : list of Tensor [k_i, D]
        Cluster centres per neuron.
    ks : list of int
        k per neuron.
    silhouettes : list of dict
        With ``k="auto"``: silhouette score per candidate k, per neuron.
    neurons : list of int
        Channel of ``layer`` that each fitted row is (default ``0..N-1``).
    layer, lower_layer : str or None
        Names of the layer and the lower layer the circuits came from, if given to :meth:`fit`.

    Examples
    --------
    >>> circuits = torch.rand(3, 20, 8)  # 3 neurons, 20 references, 8 lower channels
    >>> vn = VirtualNeurons(seed=0).fit(circuits, k=2)
    >>> vn.labels.shape, vn.ks
    (torch.Size([3, 20]), [2, 2, 2])
    >>> bool((vn.assign(circuits) == vn.labels).all())
    True
    >>> vn = VirtualNeurons().fit(circuits[:2], k=2, neurons=[5, 7])  # rows are channels 5 and 7
    >>> vn.neurons, vn.position(7), vn.max_k
    ([5, 7], 1, 2)
    """

    def __init__(self, seed: int = 0, n_init: int = 10, k_range: tuple[int, int] = (2, 5)) -> None:
        self.seed = check_int(seed, "seed", low=0)
        self.n_init = check_int(n_init, "n_init", low=1)
        if isinstance(k_range, (str, bytes)) or len(k_range) != 2:
            raise PuretoolsError(f"k_range={k_range!r} must be two integers (lowest, highest k), e.g. (2, 5).")
        lo, hi = check_int(k_range[0], "k_range[0]", low=1), check_int(k_range[1], "k_range[1]", low=1)
        if lo > hi:
            raise PuretoolsError(f"k_range={k_range!r} must be (lowest, highest) with lowest <= highest, e.g. (2, 5).")
        self.k_range = (lo, hi)
        self.labels: torch.Tensor | None = None
        self.centroids: list[torch.Tensor] = []
        self.ks: list[int] = []
        self.silhouettes: list[dict[int, float]] = []
        self.neurons: list[int] = []
        self.neurons_given = True
        self.layer: str | None = None
        self.lower_layer: str | None = None

    @staticmethod
    def _as_3d(features: torch.Tensor) -> torch.Tensor:
        features = torch.as_tensor(features)
        if features.ndim == 2:
            features = features[None]
        if features.ndim != 3:
            raise PuretoolsError(
                f"Expected features of shape [neurons, n_ref, dim] (or [n_ref, dim] for one neuron), "
                f"got {tuple(features.shape)}."
            )
        return features

    def fit(
        self,
        circuits: torch.Tensor,
        k: int | Sequence[int] | Literal["auto"] = 2,
        neurons: Sequence[int] | torch.Tensor | None = None,
        layer: str | None = None,
        lower_layer: str | None = None,
    ) -> VirtualNeurons:
        """Cluster each neuron's references into ``k`` virtual neurons.

        Parameters
        ----------
        circuits : Tensor [N, n_ref, D] or [n_ref, D]
        k : int, sequence of int (one per neuron) or "auto"
            ``"auto"`` picks, per neuron, the k in ``k_range`` with the best silhouette.
        neurons : sequence of int or None
            The channel of the layer each row of ``circuits`` belongs to (what was passed as
            ``neurons`` to :func:`puretools.circuit_attributions`); default ``0..N-1``.
            Routing, heatmaps and edits (:mod:`puretools.routing`) find centroids by it.
        layer, lower_layer : str or None
            Remembered for reference (e.g. ``"layer4"``, ``"layer3"``).
        """
        x = self._as_3d(circuits).detach().double().cpu()
        n_neurons, n_ref, dim = x.shape
        if not (n_neurons and n_ref and dim):
            raise PuretoolsError(
                f"circuits of shape {tuple(x.shape)} are empty; fit needs at least one neuron, one reference "
                "and one feature."
            )
        if not torch.isfinite(x).all():
            raise PuretoolsError(
                "circuits contain NaN or Inf values; recompute them (circuit_attributions checks its own)."
            )
        neuron_ids = self._check_neurons(neurons, n_neurons)
        if isinstance(k, str):
            if k != "auto":
                raise PuretoolsError(f"k must be an int, a list of ints or 'auto', not {k!r}.")
            ks: list[int | None] = [None] * n_neurons
        elif isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, Sequence, torch.Tensor, np.ndarray)):
            raise PuretoolsError(
                f"k must be an int (the number of virtual neurons), a list of ints or 'auto', not {k!r}; "
                "e.g. k=2."
            )
        elif isinstance(k, (int, np.integer)):
            ks = [int(k)] * n_neurons
        else:
            values = list(k.tolist() if isinstance(k, (torch.Tensor, np.ndarray)) else k)
            for i, v in enumerate(values):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise PuretoolsError(f"k[{i}] = {v!r} is not an int: give whole numbers of virtual neurons.")
            ks = [int(v) for v in values]
            if len(ks) != n_neurons:
                raise PuretoolsError(f"Got {len(ks)} values of k for {n_neurons} neurons.")
        for value in ks:
            if value is not None and not 1 <= value <= n_ref:
                raise PuretoolsError(
                    f"k={value} is out of range: each neuron has {n_ref} references, so use 1 <= k <= {n_ref}."
                )
        labels, self.centroids, self.ks, self.silhouettes = [], [], [], []
        for i in range(n_neurons):
            xi = x[i].numpy()
            scores: dict[int, float] = {}
            ki = ks[i]
            if ki is None:
                lo, hi = self.k_range
                for cand in range(max(lo, 2), min(hi, n_ref - 1) + 1):
                    lab, _ = kmeans_labels(xi, cand, self.seed, self.n_init)
                    scores[cand] = (
                        float(silhouette_score(xi, lab)) if len(np.unique(lab)) > 1 else -1.0
                    )
                ki = max(scores, key=lambda c: (scores[c], -c)) if scores else 1
            lab, cen = kmeans_labels(xi, ki, self.seed, self.n_init)
            labels.append(torch.from_numpy(lab))
            self.centroids.append(torch.from_numpy(cen).float())
            self.ks.append(ki)
            self.silhouettes.append(scores)
        self.labels = torch.stack(labels)
        self.neurons = neuron_ids
        self.neurons_given = neurons is not None  # else rows 0..N-1: routing checks it covers the layer
        self.layer, self.lower_layer = layer, lower_layer
        return self

    @staticmethod
    def _check_neurons(neurons: Sequence[int] | torch.Tensor | None, n_neurons: int) -> list[int]:
        if neurons is None:
            return list(range(n_neurons))
        out = check_ids(neurons, "neurons", what="channels")
        if len(out) != n_neurons:
            raise PuretoolsError(
                f"neurons={out[:8]}{'...' if len(out) > 8 else ''} names {len(out)} channel(s) but the circuits "
                f"hold {n_neurons} neuron row(s); give one id per row (the neurons= of circuit_attributions)."
            )
        return out

    @property
    def max_k(self) -> int:
        """The largest number of virtual neurons of any fitted neuron (0 before :meth:`fit`)."""
        return max(self.ks, default=0)

    def position(self, neuron: int) -> int:
        """Row of the fitted neuron ``neuron`` (a channel id of the layer) in this fit.

        Raises
        ------
        PuretoolsError
            If ``neuron`` was not fitted.
        """
        if self.labels is None:
            raise PuretoolsError("Call fit(...) before using the virtual neurons.")
        if int(neuron) not in self.neurons:
            raise PuretoolsError(
                f"Neuron {neuron} was not fitted; the fitted neurons are {self.neurons} "
                "(pass neurons=... to fit to name the rows of the circuits)."
            )
        return self.neurons.index(int(neuron))

    def assign(self, circuits: torch.Tensor, neuron: int | None = None) -> torch.Tensor:
        """Virtual neuron (nearest centroid) of new samples.

        Parameters
        ----------
        circuits : Tensor [N, M, D] (one row of samples per fitted neuron) or [M, D]
            With [M, D], ``neuron`` says which fitted neuron (position in the fit) to use;
            default 0.

        Returns
        -------
        LongTensor [N, M] or [M]
        """
        if self.labels is None:
            raise PuretoolsError("Call fit(...) before assign(...).")
        x = torch.as_tensor(circuits).detach().double().cpu()
        if x.ndim == 2:
            pos = 0 if neuron is None else neuron
            if not 0 <= pos < len(self.centroids):
                raise PuretoolsError(f"neuron={pos} is out of range: {len(self.centroids)} neurons were fitted.")
            return torch.cdist(x, self.centroids[pos].double()).argmin(-1)
        if x.ndim != 3 or len(x) != len(self.centroids):
            raise PuretoolsError(
                f"Expected circuits [{len(self.centroids)}, M, D] (one row per fitted neuron), got {tuple(x.shape)}."
            )
        return torch.stack([torch.cdist(xi, c.double()).argmin(-1) for xi, c in zip(x, self.centroids)])


def peak_positions(height: int, width: int, flat: torch.Tensor, read_height: int, read_width: int) -> torch.Tensor:
    """Flat positions in a ``read_height x read_width`` map that correspond to ``flat`` positions of a ``height x width`` map.

    The rule: a position's centre is mapped proportionally, ``row_read = floor((row + 0.5) *
    read_height / height)`` (columns the same), so equal sizes map to themselves, a map half the
    size maps 2 x 2 blocks onto one position, and a map twice the size takes the upper-left of the
    four positions under it.

    Examples
    --------
    >>> peak_positions(8, 8, torch.tensor([0, 9, 63]), 8, 8)  # same size: unchanged
    tensor([ 0,  9, 63])
    >>> peak_positions(8, 8, torch.tensor([9, 63]), 4, 4)  # (1, 1) -> (0, 0), (7, 7) -> (3, 3)
    tensor([ 0, 15])
    >>> peak_positions(4, 4, torch.tensor([5]), 8, 8)  # (1, 1) -> (3, 3) of the larger map
    tensor([27])
    """
    row, col = flat // width, flat % width
    r = ((row.double() + 0.5) * read_height / height).floor().long().clamp(0, read_height - 1)
    c = ((col.double() + 0.5) * read_width / width).floor().long().clamp(0, read_width - 1)
    return r * read_width + c


def _grid(layout: Layout, x: torch.Tensor) -> tuple[int, ...]:
    """The position axes of an output: (H, W) of a map, (T,) of tokens, () of a vector."""
    if layout.is_tokens:
        return (int(x.shape[1] if layout.kind == "tokens" else x.shape[0]),)
    return tuple(int(d) for d in (x.shape[2:] if layout.kind == "channels_first" else x.shape[1:-1]))


def _peak_vectors(at: torch.Tensor, read: torch.Tensor, layouts: Sequence[Layout], neurons: torch.Tensor,
                  layer: str, read_layer: str) -> torch.Tensor:  # fmt: skip
    """[b, N, C_read]: the vector of ``read`` at the position where each neuron of ``at`` peaks.

    Maps (channels first or last) of any two sizes: the peak mapped by :func:`peak_positions`.
    Tokens: the same token, so both layers need the same tokens (e.g. the MLP and the residual
    stream of one ViT).
    """
    lay_at, lay_read = layouts
    grid_at, grid_read = _grid(lay_at, at), _grid(lay_read, read)
    a, r = lay_at.to_channels(at), lay_read.to_channels(read)  # [b, C, P], [b, C_read, P_read]
    peak = a[:, neurons].argmax(-1)  # [b, N] flat position (token) of each neuron's max, first on ties
    if len(grid_at) == 2 and len(grid_read) == 2 and not lay_at.is_tokens and not lay_read.is_tokens:
        pos = peak_positions(*grid_at, peak, *grid_read)
    elif lay_at.is_tokens and lay_read.is_tokens and grid_at == grid_read:
        pos = peak
    else:
        raise PuretoolsError(
            f"where='peak' reads {read_layer!r} at the position where each neuron of {layer!r} peaks, so both "
            f"need positions that correspond: maps [B, C, H, W] (or channels last), or the same tokens; got "
            f"{lay_at.kind} {tuple(at.shape)} and {lay_read.kind} {tuple(read.shape)}. Use where='mean', or a "
            "read_layer of the same kind."
        )
    return r.gather(2, pos[:, None, :].expand(-1, r.shape[1], -1)).transpose(1, 2)


def activation_features(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    layout: str | Layout | None = None,
    *,
    where: Literal["mean", "peak"] = "mean",
    read_layer: str | None = None,
) -> torch.Tensor:
    """Activation features of each reference: the activation baselines of PURE.

    ``where="mean"`` (the paper's baseline, the default): the spatial mean of every channel of
    ``read_layer`` over the whole image. ``where="peak"``: the activation vector of
    ``read_layer`` at the neuron's own peak, the position where channel ``neuron`` of ``layer``
    is largest in that image (``argmax`` over the flattened map, the first one on ties; the
    position :func:`puretools.collect_references` takes its value from). A ``read_layer`` of
    another spatial size is read at the corresponding position (:func:`peak_positions`: the
    peak's centre mapped proportionally). The spatial mean mixes every object of the image in;
    the peak vector describes what is at the place that made the neuron fire.

    Parameters
    ----------
    model, dataset, layer, references, neurons
        As in :func:`puretools.circuit_attributions`; ``neurons`` are channels of ``layer``.
    batch_size : int
    device : str, torch.device or None
    where : {"mean", "peak"}
    read_layer : str, optional
        The layer whose channels form the features (default ``layer``), e.g. the lower layer
        that the circuits come from.

    For a transformer layer: ``"mean"`` is the mean over tokens of every feature, ``"peak"`` the
    features of ``read_layer`` at the token where the neuron is largest (both layers must have
    the same tokens, e.g. an MLP layer and the residual stream). ``layout``: ``layer``'s layout
    (:func:`puretools.layouts.layer_layout`); None: found from the model.

    Returns
    -------
    Tensor [len(neurons), n_ref, C_read]

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(20, 3, 8, 8))
    >>> refs = torch.randint(0, 20, (4, 6))  # 4 channels, 6 references each
    >>> activation_features(model, data, "1", refs).shape
    torch.Size([4, 6, 4])
    >>> peak = activation_features(model, data, "1", refs, where="peak")  # the vector at each peak
    >>> maps = model(torch.stack([data[int(i)][0] for i in refs[2]]))[:, 2]  # channel 2, its 6 refs
    >>> torch.allclose(peak[2, :, 2], maps.flatten(1).amax(1))  # its own entry is its maximum
    True
    >>> activation_features(model, data, "1", refs, where="peak", read_layer="0").shape  # the conv's output
    torch.Size([4, 6, 4])
    """
    if where not in ("mean", "peak"):
        raise PuretoolsError(f"where must be 'mean' (spatial mean) or 'peak' (the neuron's peak location), not {where!r}.")
    batch_size = check_int(batch_size, "batch_size", low=1)
    idx, neurons_t = check_references(references, dataset, layer, neurons)
    idx = idx[neurons_t]
    read_layer = layer if read_layer is None else read_layer
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    unique, inverse = torch.unique(idx, return_inverse=True)
    if where == "mean" and read_layer == layer:
        feats = []
        with torch.inference_mode():
            for s in range(0, len(unique), batch_size):
                batch = unique[s : s + batch_size]
                images = check_images(collate_images([dataset[int(i)] for i in batch]), model, batch)
                if s == 0:
                    check_called_once(model, layer, images[:1].to(device))
                out = layer_output(model, images.to(device), layer).float()
                if not isinstance(layout, Layout):
                    layout = layer_layout(model, layer, images[:2].to(device), layout)
                check_activations(layout.to_channels(out), layer, batch)
                feats.append(layout.reduce(out, "mean").cpu())  # CNNs: out.flatten(2).mean(-1), [B, C]: out
                check_activations(feats[-1], layer, batch)  # the spatial mean of huge values can overflow
        return torch.cat(feats)[inverse]
    store: dict[str, torch.Tensor] = {}
    modules = {name: get_module(model, name) for name in {layer, read_layer}}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, out.detach().clone()))
               for name, m in modules.items()]  # fmt: skip
    rows = []
    n = torch.arange(len(neurons_t))
    try:
        with torch.inference_mode():
            for s in range(0, len(unique), batch_size):
                batch = unique[s : s + batch_size]
                images = check_images(collate_images([dataset[int(i)] for i in batch]), model, batch)
                if s == 0:
                    check_called_once(model, layer, images[:1].to(device))
                store.clear()
                model(images.to(device))
                for name in (layer, read_layer):
                    if name not in store:
                        raise PuretoolsError(f"Layer {name!r} was not called during the forward pass of the model.")
                    check_activations(store[name].float(), name, batch)
                at, read = store[layer].float().cpu(), store[read_layer].float().cpu()
                if s == 0:
                    layouts = [layer_layout(model, name, images[:2].to(device), layout if name == layer else None)
                               for name in (layer, read_layer)]  # fmt: skip
                if where == "mean":
                    rows.append(layouts[1].reduce(read, "mean"))
                    continue
                rows.append(_peak_vectors(at, read, layouts, neurons_t, layer, read_layer))  # [b, N, C_read]
    finally:
        for h in handles:
            h.remove()
    feats_all = torch.cat(rows)  # [U, C] (mean) or [U, N, C] (peak)
    if where == "mean":
        return feats_all[inverse]
    return feats_all[inverse, n[:, None].expand_as(idx)]
