"""Figures: the paper's summary bars, patch grids per virtual neuron, UMAP of circuits with thumbnails."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .errors import PuretoolsError
from .evaluate import DistanceTable, MeanSem

__all__ = [
    "cluster_colors",
    "method_color",
    "patch_grid",
    "plot_cluster_distances",
    "plot_concept_mix",
    "plot_distance_correlation",
    "plot_umap",
    "umap_embedding",
    "virtual_neuron_grids",
]

_INTRA_COLOR = "#0094FF"  # the paper's colours
_INTER_COLOR = "#E33FDD"


def cluster_colors(k: int) -> list[tuple[float, float, float, float]]:
    """The colour of each virtual neuron 0..k-1, shared by all figures (matplotlib ``tab10``).

    Examples
    --------
    >>> len(cluster_colors(3)), cluster_colors(12)[10] == cluster_colors(12)[0]
    (3, True)
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(k)]


def _new_figure(ax, figsize, dpi):
    """``(fig, ax)``: ``ax``'s figure, or a new figure closed in pyplot.

    Closing it keeps Jupyter from drawing it a second time: it shows as a cell's value or
    with ``display(fig)``.
    """
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    plt.close(fig)
    return fig, ax


def _save(fig, path: str | os.PathLike | None):
    """Save as PNG at the figure's own dpi (so the file is ``figsize * dpi`` pixels)."""
    if path is not None:
        fig.savefig(path, dpi=fig.dpi)
    return fig


def _as_mean_sem(value) -> MeanSem:
    if isinstance(value, MeanSem):
        return value
    if isinstance(value, (tuple, list)):
        return MeanSem(float(value[0]), float(value[1]) if len(value) > 1 else math.nan)
    return MeanSem(float(value), math.nan)


def _err(sem: float) -> float:
    return 0.0 if sem is None or math.isnan(sem) else sem


def method_color(method: str) -> str:
    """The colour of a clustering method, the same in every figure and panel.

    The methods the notebooks compare have fixed colours (PURE blue, activations orange,
    DINOv2 green, k-means in the evaluation space / ground truth grey); any other name gets
    one of the remaining ``tab10`` colours, picked from a hash of the name, so a method keeps
    its colour whatever its position in a figure.

    Examples
    --------
    >>> method_color("PURE"), method_color("activations")
    ('tab:blue', 'tab:orange')
    >>> method_color("my method") == method_color("my method")
    True
    """
    import zlib

    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    return _OTHER_COLORS[zlib.crc32(method.encode()) % len(_OTHER_COLORS)]


_METHOD_COLORS = {
    "PURE": "tab:blue",
    "activations": "tab:orange",
    "DINOv2": "tab:green",
    "eval-space k-means": "tab:gray",
    "ground truth": "tab:gray",
}
_OTHER_COLORS = ("tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:red", "tab:pink")


def _bar_tops(ax) -> float:
    """Highest point of the bars, their error bars and the texts on them, in data units."""
    tops = [p.get_y() + p.get_height() for p in ax.patches]
    for line in ax.lines:  # error bars and horizontal lines
        y = np.asarray(line.get_ydata(), dtype=float)
        if y.size and np.isfinite(y).any():
            tops.append(float(np.nanmax(y)))
    for coll in ax.collections:  # error-bar line collections
        for seg in getattr(coll, "get_segments", lambda: [])():
            if len(seg):
                tops.append(float(np.max(np.asarray(seg)[:, 1])))
    return max(tops) if tops else 0.0


def _legend_above_bars(ax, legend, max_rounds: int = 8) -> None:
    """Raise the top of the y axis until ``legend`` (at the top of the axes) clears every bar.

    The legend sits in head room above the bars, error bars and value labels; this draws the
    figure and grows the head room until the legend's lower edge is above all of them.
    """
    from matplotlib.backends.backend_agg import RendererAgg

    fig = ax.figure
    renderer = RendererAgg(fig.bbox.width, fig.bbox.height, fig.dpi)  # measures text, draws nothing
    for _ in range(max_rounds):
        box = legend.get_window_extent(renderer)
        occupied = [ax.transData.transform((0, _bar_tops(ax)))[1]]
        for text in ax.texts:
            occupied.append(text.get_window_extent(renderer).y1)
        if box.y0 >= max(occupied) + 2:
            return
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.25 * (hi - lo))


def plot_cluster_distances(
    table: DistanceTable,
    ax=None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: float = 100,
    zero: bool = True,
):
    """The paper's first summary figure: intra and inter distance per method, unclustered as a line.

    Bars are side by side per method (intra: blue, lower is purer; inter: pink, higher is
    better separated) with error bars of one standard error and their value written on
    top, and the mean distance without clustering as a dashed horizontal line. The y axis
    starts at zero (``zero=True``), so bar heights compare as ratios; the legend sits in
    head room above the bars and never covers them.

    Parameters
    ----------
    table : DistanceTable
        From :func:`puretools.evaluate.evaluate_clusterings`, or ``PAPER_DISTANCES``.
    ax : matplotlib Axes or None
        Draw into this axes (e.g. a widget's); None makes a new figure.
    path : path or None
        Save the figure as PNG there (the whole figure ``ax`` belongs to, at its dpi).
    title : str or None
        Default: the table's evaluation space.
    figsize, dpi
        Of a new figure (``figsize * dpi`` pixels when saved).
    zero : bool
        False: the y axis starts just below the smallest value, to show differences of a few
        percent (as the paper's figure does); the axis label then says that it does not
        start at zero.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from puretools.evaluate import PAPER_DISTANCES
    >>> fig = plot_cluster_distances(PAPER_DISTANCES)
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['DINOv2', 'PURE', 'activations']
    >>> float(fig.axes[0].get_ylim()[0])
    0.0
    """
    fig, ax = _new_figure(ax, figsize, dpi)
    methods = table.methods
    x = np.arange(len(methods))
    width = 0.38
    intra = [r.intra for r in table.rows]
    inter = [r.inter for r in table.rows]
    for offset, values, color, label in ((-width / 2, intra, _INTRA_COLOR, "intra (lower: purer)"),
                                         (width / 2, inter, _INTER_COLOR, "inter (higher: better separated)")):
        ax.bar(x + offset, [m.mean for m in values], width, yerr=[_err(m.sem) for m in values],
               color=color, label=label, capsize=3)
        for xi, m in zip(x + offset, values):
            if math.isfinite(m.mean):
                ax.annotate(f"{m.mean:.2f}", (xi, m.mean + _err(m.sem)), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize="x-small",
                            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    values = [m.mean + _err(m.sem) for m in intra + inter] + [m.mean for m in intra + inter]
    if not math.isnan(table.unclustered.mean):
        ax.axhline(table.unclustered.mean, color="black", linestyle="--", linewidth=1,
                   label=f"unclustered ({table.unclustered.mean:.2f})")
        values.append(table.unclustered.mean)
    finite = [v for v in values if math.isfinite(v)]
    ylabel = "mean Euclidean distance"
    if finite:
        lo, hi = min(finite), max(finite)
        span = (hi - lo) or abs(hi) or 1.0
        if zero and lo >= 0:
            ax.set_ylim(0.0, hi * 1.3 or 1.0)
        else:
            bottom = lo - 0.6 * span
            ax.set_ylim(bottom, hi + 0.6 * span)
            if bottom != 0:
                ylabel += f"\n(axis starts at {bottom:.2f}, not 0)"
    ax.set_xticks(x, methods)
    ax.set_ylabel(ylabel)
    ax.set_title(title if title is not None else table.space)
    legend = ax.legend(loc="upper center", ncol=2, fontsize="x-small", frameon=False)
    _legend_above_bars(ax, legend)
    return _save(fig, path)


def plot_distance_correlation(
    correlations: Mapping[str, MeanSem | tuple[float, float] | float],
    ax=None,
    path: str | os.PathLike | None = None,
    title: str | None = "correlation of pairwise distances with CLIP",
    figsize: tuple[float, float] = (5.0, 4.0),
    dpi: float = 100,
):
    """The paper's second summary figure: Pearson r per space, with one standard error.

    Each bar has its method's colour (:func:`method_color`), so PURE is the same colour in
    every panel whatever the other methods are; its value is written on top.

    Parameters
    ----------
    correlations : mapping of name -> MeanSem, (mean, sem) or mean
        From :func:`puretools.evaluate.distance_correlation`, or ``PAPER_CORRELATIONS``.
    ax, path, title, figsize, dpi
        As in :func:`plot_cluster_distances`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_distance_correlation({"PURE": (0.38, 0.02), "activations": 0.17})
    >>> [round(float(p.get_height()), 2) for p in fig.axes[0].patches]
    [0.38, 0.17]
    """
    fig, ax = _new_figure(ax, figsize, dpi)
    names = list(correlations)
    values = [_as_mean_sem(correlations[n]) for n in names]
    ax.bar(np.arange(len(names)), [v.mean for v in values], yerr=[_err(v.sem) for v in values],
           color=[method_color(n) for n in names], capsize=3)
    for i, v in enumerate(values):
        if math.isfinite(v.mean):
            top = v.mean + (_err(v.sem) if v.mean >= 0 else -_err(v.sem))
            ax.annotate(f"{v.mean:.2f}", (i, top), xytext=(0, 2 if v.mean >= 0 else -2),
                        textcoords="offset points", ha="center", va="bottom" if v.mean >= 0 else "top",
                        fontsize="small")
    ax.set_xticks(np.arange(len(names)), names)
    ax.axhline(0, color="black", linewidth=0.8)
    finite = [v.mean + _err(v.sem) for v in values if math.isfinite(v.mean)]
    low = min([v.mean - _err(v.sem) for v in values if math.isfinite(v.mean)] + [0.0])
    ax.set_ylim(min(low * 1.15, 0.0), max(finite + [0.0]) * 1.15 or 1.0)
    ax.set_ylabel("Pearson r")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _check_patches(patches: torch.Tensor) -> torch.Tensor:
    patches = torch.as_tensor(patches).detach().float().cpu()
    if patches.ndim != 4 or patches.shape[1] not in (1, 3):
        raise PuretoolsError(f"Expected patches [n, 3, s, s], got shape {tuple(patches.shape)}.")
    return patches.clamp(0, 1)


def _mosaic(patches: torch.Tensor, ncols: int, pad: int = 2) -> np.ndarray:
    """Patches [n, 3, s, s] laid out in rows of ``ncols`` on white: array [H, W, 3]."""
    n, c, h, w = patches.shape
    nrows = max(1, math.ceil(n / ncols))
    out = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i, p in enumerate(patches):
        r, q = divmod(i, ncols)
        out[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = p
    if c == 1:
        out = out.expand(3, -1, -1)
    return out.permute(1, 2, 0).numpy()


def patch_grid(
    patches: torch.Tensor,
    ncols: int = 10,
    title: str | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
):
    """Reference patches in a grid, row by row in the given order.

    Parameters
    ----------
    patches : Tensor [n, 3, s, s]
        Values in [0, 1] (e.g. :func:`puretools.patches.reference_patches`).
    ncols : int
    title : str or None
    ax, path, dpi
        As in :func:`plot_cluster_distances`.
    figsize : (float, float) or None
        Default: 1 inch per patch, plus room for the title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = patch_grid(torch.rand(12, 3, 8, 8), ncols=6, title="neuron 3")
    >>> fig.axes[0].images[0].get_array().shape  # 2 rows x 6 columns of 8 px, 2 px padding
    (22, 62, 3)
    """
    patches = _check_patches(patches)
    ncols = max(1, min(ncols, len(patches))) if len(patches) else max(1, ncols)
    nrows = max(1, math.ceil(len(patches) / ncols))
    if figsize is None:
        figsize = (max(2.0, ncols * 1.0), nrows * 1.0 + (0.4 if title else 0.1))
    own_figure = ax is None
    fig, ax = _new_figure(ax, figsize, dpi)
    if len(patches):
        ax.imshow(_mosaic(patches, ncols), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if own_figure:
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 if not title else 1 - 0.35 / figsize[1])
    return _save(fig, path)


def virtual_neuron_grids(
    patches: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    per_cluster: int = 8,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
):
    """One row of reference patches per virtual neuron.

    Each row shows the first ``per_cluster`` references of that virtual neuron in reference
    order (most activating first), labelled with its number and size and framed in its
    colour (:func:`cluster_colors`, the same as in :func:`plot_umap`).

    Parameters
    ----------
    patches : Tensor [n_ref, 3, s, s]
        Values in [0, 1].
    labels : LongTensor [n_ref]
        Virtual neuron of each reference, 0..k-1.
    per_cluster : int
    title, path, figsize, dpi
        As in :func:`patch_grid`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = virtual_neuron_grids(torch.rand(10, 3, 8, 8), torch.tensor([0, 1] * 5), per_cluster=3)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['VN 0\\n(n=5)', 'VN 1\\n(n=5)']
    """
    import matplotlib.pyplot as plt

    patches = _check_patches(patches)
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if len(labels) != len(patches):
        raise PuretoolsError(f"Got {len(patches)} patches but {len(labels)} labels.")
    if per_cluster < 1:
        raise PuretoolsError("per_cluster must be a positive integer.")
    clusters = list(range(int(labels.max()) + 1)) if len(labels) else []
    k = max(1, len(clusters))
    if figsize is None:
        figsize = (per_cluster * 1.0 + 0.8, k * 1.05 + (0.4 if title else 0.1))
    fig, axes = plt.subplots(k, 1, figsize=figsize, dpi=dpi, squeeze=False)
    plt.close(fig)
    colors = cluster_colors(k)
    blank = torch.ones(1, *patches.shape[1:])
    for row, c in enumerate(clusters or [0]):
        ax = axes[row, 0]
        members = np.flatnonzero(labels == c)
        shown = patches[members[:per_cluster]] if len(members) else patches[:0]
        if len(shown) < per_cluster:
            shown = torch.cat([shown, blank.expand(per_cluster - len(shown), -1, -1, -1)])
        ax.imshow(_mosaic(shown, per_cluster), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colors[row])
            spine.set_linewidth(3)
        ax.set_ylabel(f"VN {c}\n(n={len(members)})", rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.75 / figsize[0], right=0.99, bottom=0.02, hspace=0.08,
                        top=1 - (0.4 if title else 0.05) / figsize[1])
    return _save(fig, path)


def umap_embedding(
    features: torch.Tensor | np.ndarray,
    seed: int = 0,
    n_neighbors: int | None = None,
    min_dist: float = 0.1,
    metric: str = "euclidean",
) -> np.ndarray:
    """2-D UMAP of one neuron's circuits (or any per-reference features), seeded.

    umap-learn is imported here, not at module import: its first import and first fit take
    5-20 s (numba compiles its kernels); later calls in the same process are fast. Cache the
    result (e.g. per neuron in a widget) and redraw with :func:`plot_umap`. With a seed UMAP
    runs single-threaded and is reproducible.

    Parameters
    ----------
    features : Tensor [n, D]
    seed : int
        UMAP's ``random_state``.
    n_neighbors : int or None
        Default ``min(15, n - 1)`` (fits the 100 references of a neuron).
    min_dist : float
    metric : str

    Returns
    -------
    ndarray [n, 2]
    """
    x = np.asarray(torch.as_tensor(features).detach().double().cpu(), dtype=np.float64)
    if x.ndim != 2:
        raise PuretoolsError(f"Expected features [n, D], got shape {x.shape}.")
    n = len(x)
    if n < 4:
        raise PuretoolsError(f"UMAP needs at least 4 points, got {n}.")
    neighbours = min(15, n - 1) if n_neighbors is None else int(n_neighbors)
    if not 2 <= neighbours < n:
        raise PuretoolsError(f"n_neighbors must lie in 2..{n - 1} for {n} points.")
    import warnings

    import umap  # slow first import (numba)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*spectral initialisation.*")
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=min_dist, metric=metric,
                            random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _spread_points(coords: np.ndarray, m: int, min_gap: float = 0.0) -> list[int]:
    """Up to ``m`` indices covering ``coords``, at least ``min_gap`` apart (max-norm).

    Farthest-point order starting from point 0 (deterministic); a point closer than
    ``min_gap`` to one already taken is skipped, so thumbnails placed there do not overlap.
    """
    n = len(coords)
    if m <= 0 or n == 0:
        return []
    order = [0]
    dist = np.abs(coords - coords[0]).max(1)
    while len(order) < n:
        nxt = int(dist.argmax())
        if dist[nxt] <= 0:  # only duplicates left
            break
        order.append(nxt)
        dist = np.minimum(dist, np.abs(coords - coords[nxt]).max(1))
    chosen: list[int] = []
    for i in order:
        if all(np.abs(coords[i] - coords[j]).max() >= min_gap for j in chosen):
            chosen.append(i)
            if len(chosen) == m:
                break
    return chosen


def _density_contours(ax, points: np.ndarray, color, extent) -> bool:
    from scipy.stats import gaussian_kde

    if len(points) < 3:
        return False
    try:
        kde = gaussian_kde(points.T)
    except (np.linalg.LinAlgError, ValueError):  # collinear or duplicate points
        return False
    (x0, x1), (y0, y1) = extent
    gx, gy = np.meshgrid(np.linspace(x0, x1, 80), np.linspace(y0, y1, 80))
    density = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    peak = density.max()
    if not np.isfinite(peak) or peak <= 0:
        return False
    ax.contour(gx, gy, density, levels=peak * np.array([0.2, 0.45, 0.7]), colors=[color],
               linewidths=1.0, alpha=0.8)
    return True


def plot_umap(
    coords: np.ndarray | torch.Tensor,
    labels: torch.Tensor | np.ndarray | None = None,
    thumbnails: torch.Tensor | None = None,
    n_thumbnails: int = 12,
    contours: bool = True,
    zoom: float | None = None,
    title: str | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
    figsize: tuple[float, float] = (6.0, 6.0),
    dpi: float = 100,
):
    """A neuron's references in 2-D (e.g. :func:`umap_embedding` of their circuits), by virtual neuron.

    Points are coloured by virtual neuron (:func:`cluster_colors`), with per-cluster density
    contours (Gaussian KDE at 20/45/70 % of its peak) and reference-patch thumbnails framed in
    their cluster's colour on up to ``n_thumbnails`` points chosen to cover the plot without
    overlapping (farthest-point order starting from the most activating reference; points
    too close to a thumbnail already placed are skipped, so tight clusters get fewer).

    Parameters
    ----------
    coords : array [n, 2]
    labels : LongTensor [n] or None
        Virtual neuron per reference; None: all one colour.
    thumbnails : Tensor [n, 3, s, s] or None
        Patches in [0, 1] (e.g. :func:`puretools.patches.reference_patches`).
    n_thumbnails : int
    contours : bool
    zoom : float or None
        Thumbnail scale; default: 0.5 inch wide.
    title, ax, path, figsize, dpi
        As in :func:`plot_cluster_distances`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> coords = np.random.default_rng(0).normal(size=(20, 2))
    >>> fig = plot_umap(coords, labels=np.arange(20) % 2, thumbnails=torch.rand(20, 3, 8, 8), n_thumbnails=4)
    >>> len(fig.axes[0].artists)  # the thumbnails
    4
    """
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    xy = np.asarray(torch.as_tensor(coords).detach().double().cpu(), dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise PuretoolsError(f"Expected coords [n, 2], got shape {xy.shape}.")
    n = len(xy)
    lab = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if n == 0:
        raise PuretoolsError("No points to plot.")
    if len(lab) != n:
        raise PuretoolsError(f"Got {n} points but {len(lab)} labels.")
    if thumbnails is not None:
        thumbnails = _check_patches(thumbnails)
        if len(thumbnails) != n:
            raise PuretoolsError(f"Got {n} points but {len(thumbnails)} thumbnails.")
    fig, ax = _new_figure(ax, figsize, dpi)
    k = int(lab.max()) + 1
    colors = cluster_colors(k)
    # thumbnail side as a fraction of the axes; the limits leave half of it as margin
    box = ax.get_position()
    ax_inches = min(box.width * fig.get_figwidth(), box.height * fig.get_figheight())
    thumb_inches = 0.0
    if thumbnails is not None:
        side = thumbnails.shape[-1]
        zoom = (0.5 * 72 / side) if zoom is None else zoom  # OffsetImage: zoom 1 = 1 px per point
        thumb_inches = side * zoom / 72 + 0.06  # image plus frame
    frac = min(0.45, thumb_inches / ax_inches) if ax_inches > 0 else 0.0
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    margin = span * (0.06 + frac / 2) / (1 - 2 * (0.06 + frac / 2))
    extent = ((lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1]))
    handles = []
    for c in range(k):
        pts = xy[lab == c]
        if not len(pts):
            continue
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colors[c], alpha=0.85, linewidths=0, zorder=2)
        if contours:
            _density_contours(ax, pts, colors[c], extent)
        handles.append(Line2D([], [], marker="o", linestyle="", color=colors[c], label=f"VN {c} (n={len(pts)})"))
    if thumbnails is not None:
        full = np.array([extent[0][1] - extent[0][0], extent[1][1] - extent[1][0]])
        for i in _spread_points((xy - lo) / full, n_thumbnails, min_gap=frac):
            image = OffsetImage(thumbnails[i].permute(1, 2, 0).numpy(), zoom=zoom)
            box = AnnotationBbox(image, (xy[i, 0], xy[i, 1]), frameon=True, pad=0.15,
                                 bboxprops={"edgecolor": colors[lab[i]], "linewidth": 2})
            box.set_zorder(3)
            ax.add_artist(box)
    ax.set_xlim(*extent[0])
    ax.set_ylim(*extent[1])
    ax.set_xticks([])
    ax.set_yticks([])
    if labels is not None and handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(k, 5),
                  fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_concept_mix(
    mix: torch.Tensor | np.ndarray,
    concept_names: Sequence[str],
    neurons: Sequence[int] | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    min_label: float = 0.1,
):
    """Share of each concept among each neuron's references, as a neurons x concepts heatmap.

    Cells with a share of at least ``min_label`` carry it in percent, in white on dark
    cells and black on light ones.

    Parameters
    ----------
    mix : Tensor [N, n_concepts]
        E.g. :func:`puretools.toyworld.concept_mix` of each neuron's references, in [0, 1].
    concept_names : sequence of str
    neurons : sequence of int or None
        Row labels (default 0..N-1).
    ax, path, figsize, dpi
        As in :func:`plot_cluster_distances` (default size: 0.45 inch per cell).
    min_label : float
        Smallest share written into its cell.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_concept_mix(torch.rand(3, 4), ["a", "b", "c", "d"])
    >>> len(fig.axes)
    2
    """
    mix = np.asarray(torch.as_tensor(mix, dtype=torch.float32))
    n, c = mix.shape
    neurons = list(range(n)) if neurons is None else list(neurons)
    fig, ax = _new_figure(ax, figsize or (0.45 * c + 2.2, 0.4 * n + 1.6), dpi)
    image = ax.imshow(mix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(c), list(concept_names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), [str(v) for v in neurons], fontsize=8)
    ax.set_xlabel("concept")
    ax.set_ylabel("neuron")
    for i in range(n):
        for j in range(c):
            if mix[i, j] >= min_label:  # white on the dark (low) end of viridis, black on the light end
                ax.text(j, i, f"{100 * mix[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if mix[i, j] < 0.55 else "black")
    fig.colorbar(image, ax=ax, label="share of references (cells: %)")
    _save(fig, path)
    return fig
