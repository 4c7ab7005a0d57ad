"""Self-checks of notebook 05b (ground truth and baselines)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..reference_type import References
from ..toyworld import ToyWorld, causal_effects
from . import report

__all__ = ["check_causal_label", "check_unlabelled_count"]


def check_unlabelled_count(answer: Any, model: nn.Module, data: ToyWorld, layer: str, refs: References,
                           neuron: int) -> bool:
    """Exercise 1: how many references of ``neuron`` no single object's removal halves.

    Computed from the relative drops of :func:`puretools.toyworld.causal_effects`, not from its labels.

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=10, progress=False)
    >>> check_unlabelled_count(..., model, data, "layer4", refs, 0)
    Exercise 1: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    """
    effects = causal_effects(model, data, layer, refs, neurons=[neuron])
    best_drop = torch.nan_to_num(effects.drop[0], nan=-1.0).amax(-1)  # [n_ref]
    expected = int((best_drop < effects.min_drop).sum())
    return report("Exercise 1", answer, expected,
                  hint="count the references whose causal label is -1 (causal[neuron] holds one label per reference)")


def check_causal_label(answer: Any, model: nn.Module, data: ToyWorld, layer: str, neuron: int, image: int) -> bool:
    """Exercise 2: the causal label of one image for one neuron, found by removing each object.

    The expected label comes from :func:`puretools.toyworld.causal_effects` (batched, one
    forward for all variants); the solution re-renders and measures each variant by hand.
    """
    refs = torch.full((neuron + 1, 1), int(image), dtype=torch.long)  # row `neuron`: this one image
    expected = int(causal_effects(model, data, layer, refs, neurons=[neuron]).concepts[0, 0])
    return report("Exercise 2", answer, expected,
                  hint="remove one object at a time (data.render_without(image, [slot])), take the neuron's "
                       "spatial max, and keep the object whose removal lowers it most, if it lowers it by >= half")
