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

from .checks import check_activations, check_called_once, check_ids, check_int
from .errors import PuretoolsError
from .references import (
    References,
    check_images,
    check_references,
    collate_images,
    layer_output,
    prepare_model,
    resolve_device,
)

__all__ = ["VirtualNeurons", "activation_features", "kmeans_labels"]


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


def activation_features(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The activation baseline's features: spatial mean of all channels of ``layer`` per reference.

    Returns
    -------
    Tensor [len(neurons), n_ref, C_layer]

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    >>> data = TensorDataset(torch.randn(20, 3, 8, 8))
    >>> refs = torch.randint(0, 20, (4, 6))  # 4 channels, 6 references each
    >>> activation_features(model, data, "1", refs).shape
    torch.Size([4, 6, 4])
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    idx, neurons_t = check_references(references, dataset, layer, neurons)
    idx = idx[neurons_t]
    device = resolve_device(device, model)
    model = prepare_model(model, device)
    unique, inverse = torch.unique(idx, return_inverse=True)
    feats = []
    with torch.inference_mode():
        for s in range(0, len(unique), batch_size):
            batch = unique[s : s + batch_size]
            images = check_images(collate_images([dataset[int(i)] for i in batch]), model, batch)
            if s == 0:
                check_called_once(model, layer, images[:1].to(device))
            out = layer_output(model, layer, images.to(device)).float()
            check_activations(out, layer, batch)
            feats.append((out.flatten(2).mean(-1) if out.ndim > 2 else out).cpu())
            check_activations(feats[-1], layer, batch)  # the spatial mean of huge values can overflow
    return torch.cat(feats)[inverse]
