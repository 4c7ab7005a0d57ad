"""UMAP of a neuron's circuits, drawn by virtual neuron with density contours and patch thumbnails."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..checks import check_int, check_number
from ..errors import PuretoolsError
from ._common import _check_patches, _new_figure, _save
from .bars import cluster_colors

__all__ = ["plot_umap", "umap_embedding"]


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
    if not np.isfinite(x).all():
        raise PuretoolsError("features contain NaN or Inf values; UMAP needs finite features.")
    check_number(min_dist, "min_dist", 0)
    n = len(x)
    if n < 4:
        raise PuretoolsError(f"UMAP needs at least 4 points, got {n}.")
    neighbours = min(15, n - 1) if n_neighbors is None else check_int(n_neighbors, "n_neighbors")
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
