"""Self-checks of notebook 05b (ground truth and baselines)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..references import References
from ..toyworld import ToyWorld, causal_effects
from . import report

__all__ = ["check_causal_label", "check_labelled_at"]


def check_labelled_at(answer: Any, model: nn.Module, data: ToyWorld, layer: str, refs: References,
                      neuron: int, min_drop: float = 0.3) -> bool:
    """Exercise 1: how many references of ``neuron`` would get a causal label at a lower threshold.

    A reference gets a causal label when removing one of its objects lowers the neuron's
    activation by at least ``min_drop`` (a share; the notebook's labels use 0.5). Computed
    with :func:`puretools.toyworld.causal_effects` at ``min_drop`` (its labels), while the
    student reads the relative drops of the 0.5 run.

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=10, progress=False)
    >>> check_labelled_at(..., model, data, "layer4", refs, 0)
    Exercise 1: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    """
    effects = causal_effects(model, data, layer, refs, neurons=[neuron], min_drop=min_drop)
    expected = int((effects.concepts[0] >= 0).sum())
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
