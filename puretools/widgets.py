"""The interactive explorer: sliders for the neuron and k over precomputed, tested pieces."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .circuits import circuit_attributions
from .errors import PuretoolsError
from .evaluate import cluster_distances
from .patches import patches_from_heatmaps, reference_heatmaps
from .polysemanticity import polysemanticity_scores
from .progress import tqdm
from .references import References, collate_images
from .routing import conditional_heatmaps, partition_conditions
from .virtual import activation_features, kmeans_labels

__all__ = [
    "Explorer",
    "ExplorerData",
    "VirtualHeatmapView",
    "explorer_figure",
    "explorer_heatmap_figure",
    "explorer_scores",
    "heatmap_mosaic",
    "prepare_explorer",
]

METHODS = ("PURE", "activations")
PATCH_MODES = {"cropped": "crop", "masked": "mask"}
VIEWS = ("patches", "virtual heatmaps")


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
        ``"PURE"`` (circuits) and ``"activations"`` (spatial mean activations of the layer).
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
    heatmap_method: str = "lrp",
    causal_labels: torch.Tensor | None = None,
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
    heatmap_method : {"lrp", "gradient"}
    causal_labels : LongTensor [channels of layer, n_ref] or None
        The ground truth to score against, one concept per reference of ``references`` and -1
        where none (``toyworld.causal_concepts``). Without it, each reference counts for its
        dominant concept in ``concept_labels`` (the concept the neuron prefers among those in
        the image), which the scores line then names.
    """
    from .toyworld import dominant_concepts

    if denormalize is None:
        from .data import denormalize
    n_channels = references.n_channels
    neurons = list(range(n_channels)) if neurons is None else [int(n) for n in neurons]
    circuits = circuit_attributions(
        model, dataset, layer, lower_layer, references, neurons=neurons, cache_dir=cache_dir, progress=progress
    )
    acts = activation_features(model, dataset, layer, references, neurons=neurons)
    idx = references.indices[neurons]  # [N, R]
    concepts = None
    if causal_labels is not None:
        concepts = torch.as_tensor(causal_labels)[neurons].long()
    elif concept_labels is not None:
        concepts = torch.stack([dominant_concepts(concept_labels[row]) for row in idx])
    if concept_labels is not None:
        if eval_space is None:
            eval_space = concept_labels[idx].float()
    heat = reference_heatmaps(model, dataset, layer, references, neurons, batch_size=256, cache_dir=cache_dir)
    images = denormalize(collate_images([dataset[int(i)] for i in idx.reshape(-1)]))
    flat_heat = heat.reshape(-1, *heat.shape[-2:])
    patches = {
        mode: patches_from_heatmaps(images, flat_heat, mode=mode, size=patch_size).reshape(
            *idx.shape, 3, patch_size, patch_size
        )
        for mode in ("crop", "mask")
    }
    features = {"PURE": circuits, "activations": acts}
    rank_space = eval_space if eval_space is not None else circuits
    scores = polysemanticity_scores(rank_space, k=2, seed=seed)
    order = sorted(range(len(neurons)), key=lambda i: -np.nan_to_num(float(scores[i]), nan=-np.inf))
    coords = {}
    for method, feats in features.items():
        coords[method] = np.stack(
            [
                _project(feats[i], umap, seed)
                for i in tqdm(order, desc=f"2-D map of {method}", disable=not progress)
            ]
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
    )
    n_ref = references.n_ref
    for position in range(len(neurons)):  # every slider position's clustering, so updates only draw
        for method in METHODS:
            for k in range(1, min(max_k, n_ref) + 1):
                data.labels(position, method, k, seed=seed)
    if heatmaps:
        for position in tqdm(range(len(neurons)), desc="virtual heatmaps", disable=not progress):
            _precompute_heatmaps(data, position, model, dataset, layer, lower_layer,
                                 idx[order[position]], min(max_k, n_ref), denormalize, heatmap_method)  # fmt: skip
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
        from .plots import umap_embedding

        return umap_embedding(x, seed=seed)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def explorer_scores(data: ExplorerData, position: int, k: int, method: str) -> dict[str, float]:
    """Scores of one clustering: ground-truth ARI and purity, intra/inter distances.

    Examples
    --------
    >>> data = ExplorerData([7], [1.0], {"PURE": torch.tensor([[[0.0], [0.1], [5.0], [5.1]]])},
    ...                     {}, {}, concepts=torch.tensor([[2, 2, 4, 4]]))
    >>> explorer_scores(data, 0, 2, "PURE")["ari"]
    1.0
    """
    from .toyworld import ground_truth_scores

    labels = data.labels(position, method, k)
    out: dict[str, float] = {}
    if data.concepts is not None:
        out.update(ground_truth_scores(labels, data.concepts[position]))
    if data.eval_space is not None and k > 1:
        d = cluster_distances(data.eval_space[position], labels)
        out.update(intra=d.intra, inter=d.inter, unclustered=d.unclustered)
    return out


def _concept_mix_text(data: ExplorerData, position: int, members: np.ndarray) -> str:
    if data.concepts is None or data.concept_names is None or not len(members):
        return ""
    concepts = data.concepts[position][members]
    concepts = concepts[concepts >= 0]  # references without a label are not counted
    if not len(concepts):
        return ""
    counts = np.bincount(concepts.numpy(), minlength=len(data.concept_names))
    top = np.argsort(-counts)[:2]
    return data.concepts_name.split()[0] + ": " + ", ".join(
        f"{data.concept_names[c]} {counts[c] / len(concepts):.0%}" for c in top if counts[c])


def explorer_figure(
    data: ExplorerData, position: int, k: int, method: str = "PURE", mode: str = "crop", per_cluster: int = 8
):
    """The explorer's figure: the 2-D map of the neuron's references and one patch row per virtual neuron.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .plots import cluster_colors, patch_grid, plot_umap

    if not 0 <= position < len(data.neurons):
        raise PuretoolsError(f"position must lie in 0..{len(data.neurons) - 1}, got {position}.")
    labels = data.labels(position, method, k)
    patches = data.patches[mode][position]
    fig = plt.figure(figsize=(11, max(3.2, 1.25 * k + 0.8)), dpi=80)
    grid = fig.add_gridspec(k, 2, width_ratios=[1, 2.2], wspace=0.05, hspace=0.45)
    ax_map = fig.add_subplot(grid[:, 0])
    plot_umap(data.umap[method][position], labels, contours=True, ax=ax_map,
              title=f"neuron {data.neurons[position]}: {method} space")
    colors = cluster_colors(k)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        ax = fig.add_subplot(grid[c, 1])
        mix = _concept_mix_text(data, position, members)
        patch_grid(patches[members[:per_cluster]], ncols=per_cluster, ax=ax,
                   title=f"virtual neuron {c}: {len(members)} refs" + (f" ({mix})" if mix else ""))
        ax.title.set_color(colors[c])
        ax.title.set_fontsize(9)
    return fig


def heatmap_mosaic(view: VirtualHeatmapView, pad: int = 2) -> np.ndarray:
    """The view as one RGB mosaic [k (H + pad), (k + 2) (W + pad), 3] in [0, 1], grey between tiles.

    Row i: the image, the whole neuron's heatmap and the k virtual heatmaps on it, coloured
    with ``bwr`` on one symmetric scale per row (``max |relevance|`` of the row).
    """
    import matplotlib

    cmap = matplotlib.colormaps["bwr"]
    k, _, h, w = view.images.shape
    out = np.full((k * (h + pad), (k + 2) * (w + pad), 3), 0.75)  # grey gaps between tiles
    for i in range(k):
        row = [view.full[i]] + [view.virtual[j, i] for j in range(k)]
        scale = max(float(t.abs().max()) for t in row) or 1.0
        tiles = [view.images[i].permute(1, 2, 0).numpy()] + [
            cmap((t.numpy() / scale + 1) / 2)[..., :3] for t in row
        ]
        for c, tile in enumerate(tiles):
            y, x = i * (h + pad), c * (w + pad)
            out[y : y + h, x : x + w] = tile
    return out


def explorer_heatmap_figure(data: ExplorerData, position: int, k: int):
    """The explorer's virtual-heatmap view: per virtual neuron, its top reference with every heatmap.

    Row i shows the most activating reference of PURE virtual neuron i, the whole neuron's
    heatmap on it, and the heatmap of each virtual neuron j (CRP restricted to j's circuit at
    the lower layer), all with one colour scale per row (:func:`heatmap_mosaic`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .plots import cluster_colors

    if not 0 <= position < len(data.neurons):
        raise PuretoolsError(f"position must lie in 0..{len(data.neurons) - 1}, got {position}.")
    view = data.heatmaps.get((position, k))
    if view is None:
        raise PuretoolsError(
            f"No virtual heatmaps for position {position}, k={k}: run prepare_explorer(..., heatmaps=True, max_k>={k})."
        )
    mosaic = heatmap_mosaic(view)
    h, w = view.images.shape[-2:]
    colors = cluster_colors(k)
    fig, ax = plt.subplots(figsize=(1.3 * (k + 2) + 1.6, 1.3 * k + 0.9), dpi=80)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([(c + 0.5) * (w + 2) - 1 for c in range(k + 2)],
                  ["image", "whole neuron"] + [f"virtual {j}" for j in range(k)], fontsize=8)  # fmt: skip
    ax.set_yticks([(i + 0.5) * (h + 2) - 1 for i in range(k)], [f"top ref. of\nvirtual {i}" for i in range(k)],
                  fontsize=8)  # fmt: skip
    for j, label in enumerate(ax.get_xticklabels()[2:]):
        label.set_color(colors[j])
    for i, label in enumerate(ax.get_yticklabels()):
        label.set_color(colors[i])
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"neuron {data.neurons[position]}, k = {k}: heatmap of each PURE virtual neuron; a row's virtual "
                 "heatmaps sum to its whole-neuron heatmap\n(red: positive, blue: negative relevance, "
                 "one symmetric scale per row)", fontsize=8)  # fmt: skip
    return fig


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


class Explorer:
    """ipywidgets explorer: neuron (by polysemanticity) and k sliders, method, patch and view toggles.

    Every change redraws one PNG image in place; the clustering of each (neuron, method, k)
    is computed once and memoised, everything else was precomputed by
    :func:`prepare_explorer`. The ``view`` toggle switches between reference patches and the
    heatmaps of the PURE virtual neurons (when precomputed). Where widgets cannot render
    (static HTML, GitHub), the display bundle still holds the current figure as ``image/png``.

    Examples
    --------
    >>> data = ExplorerData([3], [2.0], {"PURE": torch.rand(1, 12, 4), "activations": torch.rand(1, 12, 5)},
    ...                     {"crop": torch.rand(1, 12, 3, 8, 8), "mask": torch.rand(1, 12, 3, 8, 8)},
    ...                     {"PURE": np.random.rand(1, 12, 2), "activations": np.random.rand(1, 12, 2)})
    >>> explorer = Explorer(data)
    >>> explorer.k.value = 3
    >>> "k = 3" in explorer.scores.value
    True
    """

    def __init__(self, data: ExplorerData, k: int = 2, max_k: int = 5) -> None:
        import ipywidgets as w

        self.data = data
        n_ref = data.features["PURE"].shape[1]
        self.neuron = w.IntSlider(value=0, min=0, max=len(data.neurons) - 1, description="neuron rank",
                                  continuous_update=False, style={"description_width": "90px"})
        self.k = w.IntSlider(value=k, min=1, max=min(max_k, n_ref), description="k", continuous_update=False)
        self.method = w.ToggleButtons(options=list(METHODS), value="PURE", description="clustering")
        self.mode = w.ToggleButtons(options=list(PATCH_MODES), value="cropped", description="patches")
        views = list(VIEWS) if data.heatmaps else [VIEWS[0]]
        self.view = w.ToggleButtons(options=views, value=VIEWS[0], description="view")
        self.image = w.Image(format="png")
        self.scores = w.HTML()
        self.scores.add_class("puretools-scores")
        for control in (self.neuron, self.k, self.method, self.mode, self.view):
            control.observe(self.update, names="value")
        controls = w.VBox([w.HBox([self.neuron, self.k]), w.HBox([self.method, self.mode]), self.view])
        self.widget = w.VBox([controls, self.scores, self.image])
        self.widget.add_class("puretools-explorer")
        self.update()

    def update(self, _change=None) -> None:
        """Redraw the figure and the scores for the current slider values."""
        pos, k, method = self.neuron.value, self.k.value, self.method.value
        mode = PATCH_MODES[self.mode.value]
        if self.view.value == VIEWS[1]:
            fig = explorer_heatmap_figure(self.data, pos, k)
        else:
            fig = explorer_figure(self.data, pos, k, method, mode)
        self.image.value = _figure_png(fig)
        scores = explorer_scores(self.data, pos, k, method)
        # the label uses the slider's own numbers: rank 0 is the most polysemantic neuron
        parts = [f"<b>neuron {self.data.neurons[pos]}</b> (neuron rank {pos} of 0-{len(self.data.neurons) - 1}, "
                 f"0 = most polysemantic; polysemanticity {self.data.scores[pos]:.2f})", f"k = {k}", method]
        if "ari" in scores:
            left_out = int(scores.get("n_excluded", 0))
            parts.append(f"ARI vs ground truth {scores['ari']:.2f}, purity {scores['purity']:.2f} "
                         f"({self.data.concepts_name}" + (f"; {left_out} references without one left out)"
                                                          if left_out else ")"))
        if "intra" in scores:
            parts.append(f"distances intra {scores['intra']:.2f} / inter {scores['inter']:.2f} "
                         f"(unclustered {scores['unclustered']:.2f})")
        self.scores.value = " &middot; ".join(parts)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        """The widget view plus the current figure as ``image/png`` (shown where widgets cannot be)."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude, **kwargs) or {})
        png = base64.b64encode(self.image.value).decode("ascii")
        bundle["image/png"] = png
        # a static page (no widget state) shows the scores line and the figure
        bundle["text/html"] = f'<div class="puretools-scores">{self.scores.value}</div><img src="data:image/png;base64,{png}">'
        bundle["text/plain"] = f"Explorer of {len(self.data.neurons)} neurons (static image of the current view)"
        return bundle
