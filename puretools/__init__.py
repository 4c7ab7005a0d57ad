"""puretools: PURE in notebooks. Turn polysemantic neurons into pure virtual neurons by clustering their circuits."""

__version__ = "0.1.0"

from .circuits import circuit_attributions, subnetwork
from .errors import CacheError, PuretoolsError, WeightsNotFoundError
from .models import canonizer_report, canonizers_for, get_module, layer_names, load_model, lrp_composite
from .references import References, collect_references
from .virtual import VirtualNeurons, activation_features

__all__ = [
    "CacheError",
    "PuretoolsError",
    "References",
    "VirtualNeurons",
    "WeightsNotFoundError",
    "__version__",
    "activation_features",
    "canonizer_report",
    "canonizers_for",
    "circuit_attributions",
    "collect_references",
    "get_module",
    "layer_names",
    "load_model",
    "lrp_composite",
    "subnetwork",
]
