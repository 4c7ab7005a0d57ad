"""Summary bar charts of the paper (cluster distances, distance correlation) and the shared colours."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from ..errors import PuretoolsError
from ..evaluate import DistanceTable, MeanSem
from ._common import _new_figure, _save

__all__ = [
    "cluster_colors",
    "method_color",
    "plot_cluster_distances",
    "plot_distance_correlation",
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
    if not isinstance(table, DistanceTable):
        raise PuretoolsError(
            f"table must be a DistanceTable (from evaluate_clusterings), got {type(table).__name__}."
        )
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
    if not isinstance(correlations, Mapping) or not correlations:
        raise PuretoolsError(
            f"correlations must be a non-empty dict name -> MeanSem (from distance_correlation), got {correlations!r:.80}."
        )
    for name, value in correlations.items():
        try:
            mean = _as_mean_sem(value).mean
        except (TypeError, ValueError, IndexError):
            raise PuretoolsError(f"correlations[{name!r}]={value!r} is not a MeanSem, a (mean, sem) pair or a number.") from None
        if not math.isfinite(mean):
            raise PuretoolsError(f"correlations[{name!r}] has mean {mean}; a bar needs a finite value.")
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
