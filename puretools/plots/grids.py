"""Patch grids: reference patches per neuron and per virtual neuron, and the concept-mix heatmap."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..checks import check_int, check_names
from ..errors import PuretoolsError
from ._common import _check_patches, _new_figure, _save
from .bars import cluster_colors

__all__ = ["patch_grid", "plot_concept_mix", "virtual_neuron_grids"]


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
    ncols = check_int(ncols, "ncols", low=1)
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
    per_cluster = check_int(per_cluster, "per_cluster", low=1)
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
    concept_names = check_names(concept_names, "concept_names")
    mix = np.asarray(torch.as_tensor(mix, dtype=torch.float32))
    if mix.ndim != 2 or mix.shape[1] != len(concept_names):
        raise PuretoolsError(
            f"mix must have shape [k, {len(concept_names)}] (one column per name in concept_names), got {mix.shape}."
        )
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
