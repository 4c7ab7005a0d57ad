"""puretools: PURE in notebooks. Turn polysemantic neurons into pure virtual neurons by clustering their circuits."""

# distributed registers the several-process steps (puretools.ranks) and toyworld the toy model and
# data set (models.register_model, data.register_dataset): importing puretools makes both available.
import warnings as _warnings

from . import distributed, toyworld
from ._version import __version__
from .baselines import PROTOCOL_METHODS, format_protocol_table
from .circuits import circuit_attributions, memory_plan, subnetwork
from .config import cache_dir, smoke
from .data import denormalize, image_folder, make_image_folder
from .disentangle import CASES as COMPARISON_CASES
from .disentangle import METHODS as COMPARISON_METHODS
from .disentangle import aggregate as aggregate_comparisons
from .disentangle import compare_on_toy
from .disentangle import format_table as format_comparison_table
from .editing import edit_virtual_neurons
from .embed import ClipEmbedder, ConceptEmbedder, DinoEmbedder, Embedder, embed_dataset
from .errors import CacheError, PuretoolsError, WeightsNotFoundError
from .evaluate import (
    PAPER_CORRELATIONS,
    PAPER_DISTANCES,
    DistanceTable,
    MeanSem,
    cluster_distances,
    distance_correlation,
    evaluate_clusterings,
    evaluate_toy_world,
)
from .forward import layer_output
from .labels import clip_text_labels, concept_labels
from .layouts import Layout, layer_layout, prefix_tokens, token_grid
from .models import (
    canonizer_report,
    canonizers_for,
    get_module,
    layer_names,
    load_model,
    lrp_composite,
    register_model,
)
from .patches import (
    CROP_THRESHOLD,
    MASK_ALPHA,
    VISIBILITY_THRESHOLD,
    crop_box,
    crop_patch,
    masked_patch,
    patches_from_heatmaps,
    reference_heatmaps,
    reference_patches,
    relevance_map,
)
from .pipeline import Pipeline
from .planted import class_activation_units, plant_neurons, planted_sources
from .plots import (
    patch_grid,
    plot_cluster_distances,
    plot_concept_mix,
    plot_distance_correlation,
    plot_umap,
    umap_embedding,
    virtual_neuron_grids,
)
from .polysemanticity import polysemanticity_scores, rank_polysemantic
from .reference_type import References, check_references
from .references import collect_references
from .resources import load_benchmark_results
from .routing import route_images, virtual_activations, virtual_heatmaps
from .sae import sae_split, train_layer_sae
from .virtual import VirtualNeurons, activation_features

# sorted (tests/test_public_api.py)
__all__ = [
    "COMPARISON_CASES",
    "COMPARISON_METHODS",
    "CROP_THRESHOLD",
    "CacheError",
    "ClipEmbedder",
    "ConceptEmbedder",
    "DinoEmbedder",
    "DistanceTable",
    "Embedder",
    "Layout",
    "MASK_ALPHA",
    "MeanSem",
    "PAPER_CORRELATIONS",
    "PAPER_DISTANCES",
    "PROTOCOL_METHODS",
    "Pipeline",
    "PuretoolsError",
    "References",
    "VISIBILITY_THRESHOLD",
    "VirtualNeurons",
    "WeightsNotFoundError",
    "__version__",
    "activation_features",
    "aggregate_comparisons",
    "cache_dir",
    "canonizer_report",
    "canonizers_for",
    "check_references",
    "circuit_attributions",
    "class_activation_units",
    "clip_text_labels",
    "cluster_distances",
    "collect_references",
    "compare_on_toy",
    "concept_labels",
    "crop_box",
    "crop_patch",
    "denormalize",
    "distance_correlation",
    "distributed",
    "edit_virtual_neurons",
    "embed_dataset",
    "evaluate_clusterings",
    "evaluate_toy_world",
    "format_comparison_table",
    "format_protocol_table",
    "get_module",
    "image_folder",
    "layer_layout",
    "layer_names",
    "layer_output",
    "load_benchmark_results",
    "load_model",
    "lrp_composite",
    "make_image_folder",
    "masked_patch",
    "memory_plan",
    "patch_grid",
    "patches_from_heatmaps",
    "plant_neurons",
    "planted_sources",
    "plot_cluster_distances",
    "plot_concept_mix",
    "plot_distance_correlation",
    "plot_umap",
    "polysemanticity_scores",
    "prefix_tokens",
    "rank_polysemantic",
    "reference_heatmaps",
    "reference_patches",
    "register_model",
    "relevance_map",
    "route_images",
    "sae_split",
    "smoke",
    "subnetwork",
    "token_grid",
    "toyworld",
    "train_layer_sae",
    "umap_embedding",
    "virtual_activations",
    "virtual_heatmaps",
    "virtual_neuron_grids",
]


#: Old names, kept for one release (they said too little at the top level of the package).
_RENAMED = {"CASES": "COMPARISON_CASES", "METHODS": "COMPARISON_METHODS", "aggregate": "aggregate_comparisons",
            "format_table": "format_comparison_table"}


def __getattr__(name: str):
    if name in _RENAMED:
        new = _RENAMED[name]
        _warnings.warn(f"puretools.{name} is now puretools.{new} (the old name goes in the next release).",
                      DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'puretools' has no attribute {name!r}")
