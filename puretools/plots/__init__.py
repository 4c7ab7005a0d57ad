"""Figures: the paper's summary bars, patch grids per virtual neuron, UMAP of circuits with thumbnails.

One module per kind of figure: :mod:`.bars` (summary bars and the shared colours),
:mod:`.grids` (patch grids, concept mix), :mod:`.umap` (UMAP with thumbnails). Every public
name is importable from ``puretools.plots``.
"""

from .bars import cluster_colors, method_color, plot_cluster_distances, plot_distance_correlation
from .grids import patch_grid, plot_concept_mix, virtual_neuron_grids
from .umap import plot_umap, umap_embedding

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
