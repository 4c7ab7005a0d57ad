"""The interactive explorer: sliders for the neuron and k over precomputed, tested pieces.

It only draws: :func:`prepare_explorer` and :class:`ExplorerData` (re-exported here) compute,
in :mod:`puretools.explore`.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch  # noqa: F401  (the doctests use it)

from .errors import PuretoolsError
from .evaluate import cluster_distances
from .explore import METHODS, ExplorerData, VirtualHeatmapView, prepare_explorer
from .plots import cluster_colors, patch_grid, plot_umap
from .toyworld import ground_truth_scores

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

PATCH_MODES = {"cropped": "crop", "masked": "mask"}
VIEWS = ("patches", "virtual heatmaps")
#: How the scores line names the activation baseline (``ExplorerData.baseline``).
BASELINE_NAMES = {"peak": "the layer at the neuron's peak", "mean": "spatial mean"}


def explorer_scores(data: ExplorerData, position: int, k: int, method: str) -> dict[str, float]:
    """Scores of one clustering: ground-truth ARI and purity, intra/inter distances.

    Examples
    --------
    >>> data = ExplorerData([7], [1.0], {"PURE": torch.tensor([[[0.0], [0.1], [5.0], [5.1]]])},
    ...                     {}, {}, concepts=torch.tensor([[2, 2, 4, 4]]))
    >>> explorer_scores(data, 0, 2, "PURE")["ari"]
    1.0
    """
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
                 f"0 = most polysemantic; polysemanticity {self.data.scores[pos]:.2f})", f"k = {k}",
                 method if method == "PURE" else f"{method} ({BASELINE_NAMES[self.data.baseline]})"]
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
