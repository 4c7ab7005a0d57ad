"""What the explorer shows, computed before it draws: circuits, features, patches, 2-D maps,
clusterings and virtual heatmaps of a model's neurons, by :class:`puretools.Pipeline`.

:mod:`puretools.widgets` draws :class:`ExplorerData` and computes nothing of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .circuits import Method
from .data import denormalize as imagenet_denormalize
from .errors import PuretoolsError
from .forward import collate_images
from .pipeline import DEFAULT_METHOD, Pipeline
from .plots import umap_embedding
from .polysemanticity import polysemanticity_scores
from .progress import tqdm
from .reference_type import References
from .routing import conditional_heatmaps, partition_conditions
from .toyworld import dominant_concepts
from .virtual import activation_features, kmeans_labels

__all__ = ["BASELINES", "METHODS", "ExplorerData", "VirtualHeatmapView", "prepare_explorer"]

#: The explorer's clusterings: PURE (circuits) and the activation baseline.
METHODS = ("PURE", "activations")
#: Where the activation baseline reads the layer (:func:`puretools.activation_features`'s
#: ``where``): ``"peak"``, the layer's vector at the neuron's peak location (the default: the
#: strongest simple baseline of ``benchmarks/RESULTS.md``), or ``"mean"``, the spatial mean (the
#: paper's baseline).
BASELINES = ("peak", "mean")


@dataclass(frozen=True)
class VirtualHeatmapView:
    """Precomputed heatmaps of one neuron's PURE virtual neurons at one k.

    Attributes
    ----------
    members : list of int
        Reference rank (0 = most activating) of the image shown for each virtual neuron: its
        most activating member.
    images : Tensor [k, 3, H, W]
        Those images, values in [0, 1].
    full : Tensor [k, H, W]
        The whole neuron's heatmap of each image.
    virtual : Tensor [k, k, H, W]
        ``virtual[j, i]``: heatmap of virtual neuron j on image i
        (:func:`puretools.virtual_heatmaps`; they sum to ``full`` over j).
    """

    members: list[int]
    images: torch.Tensor
    full: torch.Tensor
    virtual: torch.Tensor


@dataclass
class ExplorerData:
    """Everything the explorer shows, precomputed for ``neurons`` (ranked, most polysemantic first).

    Arrays are indexed by position in ``neurons``: ``features["PURE"][i]`` are the circuits of
    neuron ``neurons[i]``, shape [n_ref, C_lower].

    Attributes
    ----------
    neurons : list of int
    scores : list of float
        Polysemanticity score of each neuron (higher: splits more clearly into two groups).
    features : dict str -> Tensor [N, n_ref, D]
        ``"PURE"`` (circuits) and ``"activations"`` (the layer's activations, read as ``baseline`` says).
    patches : dict str -> Tensor [N, n_ref, 3, s, s]
        ``"crop"`` and ``"mask"`` reference patches, values in [0, 1].
    umap : dict str -> ndarray [N, n_ref, 2]
        2-D UMAP of each method's features, per neuron.
    concepts : LongTensor [N, n_ref] or None
        Ground-truth concept of each reference (toy world), for ARI and purity; -1: no label
        (left out of the scores and the panel titles).
    concept_names : list of str or None
    eval_space : Tensor [N, n_ref, D] or None
        Embeddings for the intra/inter-cluster distances.
    heatmaps : dict (position, k) -> VirtualHeatmapView
        Heatmaps of the PURE virtual neurons (empty if not precomputed).
    concepts_name : str
        Which labels ``concepts`` holds ("causal labels" or "dominant labels"); the scores
        line and the panel titles name them.
    baseline : {"peak", "mean"}
        How ``features["activations"]`` were read (:data:`BASELINES`); the scores line names it.
    """

    neurons: list[int]
    scores: list[float]
    features: dict[str, torch.Tensor]
    patches: dict[str, torch.Tensor]
    umap: dict[str, np.ndarray]
    concepts: torch.Tensor | None = None
    concept_names: list[str] | None = None
    eval_space: torch.Tensor | None = None
    heatmaps: dict[tuple[int, int], VirtualHeatmapView] = field(default_factory=dict)
    concepts_name: str = "dominant labels"
    baseline: str = "peak"
    _labels: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict, repr=False)

    def labels(self, position: int, method: str, k: int, seed: int = 0) -> np.ndarray:
        """Virtual-neuron labels of the neuron at ``position`` (memoised k-means)."""
        if method not in self.features:
            raise PuretoolsError(f"method must be one of {list(self.features)}, not {method!r}.")
        key = (position, method, k)
        if key not in self._labels:
            x = self.features[method][position].double().numpy()
            self._labels[key] = kmeans_labels(x, k, seed=seed)[0]
        return self._labels[key]


def prepare_explorer(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    lower_layer: str,
    references: References,
    neurons: Sequence[int] | None = None,
    concept_labels: torch.Tensor | None = None,
    concept_names: Sequence[str] | None = None,
    eval_space: torch.Tensor | None = None,
    denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    patch_size: int = 32,
    umap: bool = True,
    max_k: int = 5,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    heatmaps: bool = True,
    heatmap_method: Method | None = None,
    method: Method = DEFAULT_METHOD,
    causal_labels: torch.Tensor | None = None,
    baseline: str = "peak",
) -> ExplorerData:
    """Compute circuits, activations, patches, UMAPs and the ranking the explorer needs.

    Parameters
    ----------
    model, dataset, layer, lower_layer, references
        As for :func:`puretools.circuit_attributions`.
    neurons : sequence of int or None
        Neurons to explore (None: all channels of ``layer``).
    concept_labels : Tensor [len(dataset), n_concepts] or None
        Multi-hot ground truth (toy world); enables ARI / purity and the ranking by
        ground-truth polysemanticity.
    concept_names : sequence of str or None
    eval_space : Tensor [N, n_ref, D] or None
        Embeddings of the references (e.g. CLIP) for distances and the ranking; default:
        the concept vectors when ``concept_labels`` is given, else the circuits.
    denormalize : callable or None
        Maps data-set images to [0, 1] for display (default: ImageNet statistics).
    patch_size : int
        Side of the patches shown.
    umap : bool
        Compute UMAP embeddings (else PCA, which is instant).
    max_k : int
        Clusterings for k = 1..max_k are computed up front, for both methods.
    heatmaps : bool
        Precompute the virtual-neuron heatmaps view: for every neuron and k, the most
        activating reference of each PURE virtual neuron with the heatmap of every virtual
        neuron on it (:func:`puretools.virtual_heatmaps`; k x (k + 1) rows of one batched
        pass per neuron and k).
    heatmap_method : {"gradient", "lrp"} or None
        Rule of the virtual heatmaps; None (default): ``method``, the rule the circuits were
        clustered on (:class:`puretools.Pipeline`'s defaults).
    method : {"gradient", "lrp"}
        Attribution rule of the circuits.
    causal_labels : LongTensor [channels of layer, n_ref] or None
        The ground truth to score against, one concept per reference of ``references`` and -1
        where none (``toyworld.causal_concepts``). Without it, each reference counts for its
        dominant concept in ``concept_labels`` (the concept the neuron prefers among those in
        the image), which the scores line then names.
    baseline : {"peak", "mean"}
        The activation baseline clustered beside PURE (``features["activations"]``):
        :func:`puretools.activation_features` with ``where=baseline``. ``"peak"`` (default): the
        layer's vector at the neuron's peak location, the strongest simple baseline of the
        benchmark (``benchmarks/RESULTS.md``); ``"mean"``: the spatial mean, the paper's.
    """
    if baseline not in BASELINES:
        raise PuretoolsError(f"baseline must be one of {BASELINES} (where the activation baseline reads the "
                             f"layer), not {baseline!r}.")  # fmt: skip
    denormalize = imagenet_denormalize if denormalize is None else denormalize
    pipe = Pipeline(model, dataset, layer, lower_layer, references, method=method, heatmap_method=heatmap_method,
                    seed=seed, cache_dir=cache_dir, progress=progress)
    neurons = pipe.neurons(neurons)
    circuits = pipe.circuits(neurons)
    acts = activation_features(model, dataset, layer, references, neurons=neurons, where=baseline, device=pipe.device)
    idx = references.indices[neurons]  # [N, R]
    concepts = None
    if causal_labels is not None:
        concepts = torch.as_tensor(causal_labels)[neurons].long()
    elif concept_labels is not None:
        concepts = torch.stack([dominant_concepts(concept_labels[row]) for row in idx])
    if concept_labels is not None and eval_space is None:
        eval_space = concept_labels[idx].float()
    patches = {mode: pipe.patches(neurons, mode=mode, size=patch_size, denormalize=denormalize)
               for mode in ("crop", "mask")}
    features = {"PURE": circuits, "activations": acts}
    rank_space = eval_space if eval_space is not None else circuits
    scores = polysemanticity_scores(rank_space, k=2, seed=seed)
    order = sorted(range(len(neurons)), key=lambda i: -np.nan_to_num(float(scores[i]), nan=-np.inf))
    coords = {}
    for name, feats in features.items():
        coords[name] = np.stack(
            [_project(feats[i], umap, seed) for i in tqdm(order, desc=f"2-D map of {name}", disable=not progress)]
        )
    data = ExplorerData(
        neurons=[neurons[i] for i in order],
        scores=[float(scores[i]) for i in order],
        features={m: f[order] for m, f in features.items()},
        patches={m: p[order] for m, p in patches.items()},
        umap=coords,
        concepts=None if concepts is None else concepts[order],
        concept_names=None if concept_names is None else list(concept_names),
        eval_space=None if eval_space is None else torch.as_tensor(eval_space)[order],
        concepts_name="causal labels" if causal_labels is not None else "dominant labels",
        baseline=baseline,
    )
    n_ref = references.n_ref
    for position in range(len(neurons)):  # every slider position's clustering, so updates only draw
        for name in METHODS:
            for k in range(1, min(max_k, n_ref) + 1):
                data.labels(position, name, k, seed=seed)
    if heatmaps:
        for position in tqdm(range(len(neurons)), desc="virtual heatmaps", disable=not progress):
            _precompute_heatmaps(data, position, model, dataset, layer, lower_layer,
                                 idx[order[position]], min(max_k, n_ref), denormalize, pipe.heatmap_method)  # fmt: skip
    return data


def _precompute_heatmaps(data: ExplorerData, position: int, model: nn.Module, dataset: Dataset, layer: str,
                         lower_layer: str, ref_idx: torch.Tensor, max_k: int, denormalize, method: str) -> None:  # fmt: skip
    """The heatmap views of one neuron for k = 1..max_k: k images x (k conditions + none) per k."""
    circuits = data.features["PURE"][position].float()
    for k in range(1, max_k + 1):
        labels = torch.from_numpy(data.labels(position, "PURE", k))
        centroids = torch.stack([circuits[labels == j].mean(0) for j in range(k)])  # k-means centres
        members = [int(torch.nonzero(labels == j)[0]) for j in range(k)]  # references are best first
        images = collate_images([dataset[int(ref_idx[m])] for m in members])
        heat, full = conditional_heatmaps(model, images, layer, lower_layer, data.neurons[position],
                                          partition_conditions(centroids), method=method)  # fmt: skip
        data.heatmaps[(position, k)] = VirtualHeatmapView(members, denormalize(images).clamp(0, 1), full, heat)


def _project(features: torch.Tensor, use_umap: bool, seed: int) -> np.ndarray:
    x = features.double().numpy()
    if use_umap:
        return umap_embedding(x, seed=seed)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T
