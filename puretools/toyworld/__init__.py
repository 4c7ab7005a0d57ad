"""The toy world: seeded synthetic concepts with ground truth, their toy ResNet, training and scores.

One module per part: :mod:`.world` (the images and their scenes), :mod:`.model` (the toy ResNet,
its layer of interest, the shipped checkpoint), :mod:`.vit` (the toy ViT, likewise),
:mod:`.training` (``train``, either architecture) and
:mod:`.ground_truth` (which concept each reference holds, and scores against it) and
:mod:`.causal` (causal labels: which object's removal lowers a neuron's activation most). Every public
name is importable from ``puretools.toyworld`` directly.
"""

from .causal import CausalEffects, causal_concepts, causal_effects, reference_concepts
from .ground_truth import (
    clearest_two_concept_neuron,
    concept_mix,
    dominant_concepts,
    dominant_shares,
    ground_truth_scores,
    label_shares,
    polysemantic_neurons,
)
from .model import (
    DATA_DIR,
    DEFAULT_STRIDES,
    DEFAULT_WIDTHS,
    LAYER,
    LOWER_LAYER,
    ToyResNet,
    build_model,
    load_toy_model,
)
from .training import train
from .vit import DEFAULT_VIT, VIT_LAYER, VIT_LOWER_LAYER, build_vit, load_toy_vit
from .world import (
    CONCEPTS,
    IMAGE_SIZE,
    MEAN,
    SPLIT_SIZES,
    STD,
    VARIANTS,
    ToyWorld,
    denormalize,
)

__all__ = [
    "CONCEPTS",
    "DATA_DIR",
    "DEFAULT_STRIDES",
    "DEFAULT_VIT",
    "DEFAULT_WIDTHS",
    "IMAGE_SIZE",
    "LAYER",
    "LOWER_LAYER",
    "MEAN",
    "SPLIT_SIZES",
    "STD",
    "VARIANTS",
    "VIT_LAYER",
    "VIT_LOWER_LAYER",
    "ToyResNet",
    "CausalEffects",
    "ToyWorld",
    "build_model",
    "build_vit",
    "causal_concepts",
    "causal_effects",
    "clearest_two_concept_neuron",
    "concept_mix",
    "denormalize",
    "dominant_concepts",
    "dominant_shares",
    "ground_truth_scores",
    "label_shares",
    "load_toy_model",
    "load_toy_vit",
    "polysemantic_neurons",
    "reference_concepts",
    "train",
]
