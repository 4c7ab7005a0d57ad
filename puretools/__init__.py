"""puretools: PURE in notebooks. Turn polysemantic neurons into pure virtual neurons by clustering their circuits."""

__version__ = "0.1.0"

from .circuits import circuit_attributions, memory_plan, subnetwork
from .disentangle import compare_on_toy
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
from .labels import clip_text_labels, concept_labels
from .models import (
    canonizer_report,
    canonizers_for,
    get_module,
    layer_names,
    load_model,
    lrp_composite,
)
from .patches import (
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
from .references import References, check_references, collect_references
from .routing import route_images, virtual_activations, virtual_heatmaps
from .sae import sae_split, train_layer_sae
from .virtual import VirtualNeurons, activation_features

__all__ = [
    "PAPER_CORRELATIONS",
    "PAPER_DISTANCES",
    "CacheError",
    "ClipEmbedder",
    "ConceptEmbedder",
    "DinoEmbedder",
    "DistanceTable",
    "Embedder",
    "MeanSem",
    "Pipeline",
    "PuretoolsError",
    "References",
    "VirtualNeurons",
    "WeightsNotFoundError",
    "__version__",
    "activation_features",
    "canonizer_report",
    "canonizers_for",
    "class_activation_units",
    "circuit_attributions",
    "memory_plan",
    "cluster_distances",
    "check_references",
    "collect_references",
    "compare_on_toy",
    "crop_box",
    "crop_patch",
    "distance_correlation",
    "embed_dataset",
    "evaluate_clusterings",
    "evaluate_toy_world",
    "get_module",
    "layer_names",
    "load_model",
    "lrp_composite",
    "masked_patch",
    "patch_grid",
    "patches_from_heatmaps",
    "plant_neurons",
    "planted_sources",
    "plot_cluster_distances",
    "plot_concept_mix",
    "plot_distance_correlation",
    "plot_umap",
    "polysemanticity_scores",
    "rank_polysemantic",
    "reference_heatmaps",
    "reference_patches",
    "relevance_map",
    "sae_split",
    "subnetwork",
    "train_layer_sae",
    "umap_embedding",
    "virtual_neuron_grids",
    "clip_text_labels",
    "concept_labels",
    "edit_virtual_neurons",
    "route_images",
    "virtual_activations",
    "virtual_heatmaps",
]
