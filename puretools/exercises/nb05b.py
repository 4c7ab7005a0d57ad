"""Self-checks of notebook 05b (ground truth and baselines)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..toyworld import CausalEffects, ToyWorld, causal_effects
from . import report

__all__ = ["check_causal_label", "check_labelled_at"]


def check_labelled_at(answer: Any, effects: CausalEffects, neuron: int, min_drop: float = 0.3) -> bool:
    """Exercise 1: how many references of ``neuron`` would get a causal label at a lower threshold.

    A reference gets a causal label when removing one of its objects lowers the neuron's
    activation by at least ``min_drop`` of it (the notebook's labels use 0.5). The student
    reads the relative drops (``effects.drop``); the check counts from the activations with and
    without each object (``activation - without >= min_drop * activation``, one object lowering
    it most), the rule :func:`puretools.toyworld.causal_effects` labels by. No model is run.

    Parameters
    ----------
    answer : int
    effects : CausalEffects
        ``toyworld.causal_effects(model, data, layer, refs)`` (any ``min_drop``).
    neuron : int
        A neuron of ``effects.neurons``.
    min_drop : float

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=10, progress=False)
    >>> check_labelled_at(..., causal_effects(model, data, "layer4", refs, neurons=[0]), 0)
    Exercise 1: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    """
    row = list(effects.neurons).index(int(neuron))
    activation = effects.activation[row]  # [n_ref]
    lowered = torch.nan_to_num(activation[:, None] - effects.without[row], nan=-float("inf"))  # [n_ref, 3]
    best = lowered.max(-1).values
    single = (lowered == best[:, None]).sum(-1) == 1  # one object lowers it most
    has_object = (effects.object_concepts[row] >= 0).any(-1)
    expected = int((has_object & single & (activation > 0) & (best >= min_drop * activation)).sum())
    return report("Exercise 1", answer, expected,
                  hint=f"per reference, the largest relative drop over its objects (effects.drop[neuron]: "
                       f"[n_ref, slots], NaN for empty slots); count the references where it is >= {min_drop}")


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
