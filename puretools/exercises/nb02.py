"""Self-checks for notebook 02 (circuits with conditional relevance).

The circuit drawn by hand is checked against :func:`puretools.circuit_attributions` run
afresh for that one (neuron, reference) pair (no cache), the batched engine the notebook
compares with zennit-crp; the top channel is recomputed with a plain loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..circuits import circuit_attributions
from . import report

__all__ = ["check_circuit", "check_top_channel"]


def check_circuit(answer: Any, model: nn.Module, dataset: Dataset, layer: str, lower_layer: str,
                  references: Any, neuron: int, reference: int, exercise: str = "Exercise 2") -> bool:
    """Exercise: the L1-normalised circuit of one (neuron, reference) pair, computed by hand.

    Parameters
    ----------
    answer : Tensor [C_lower] (or a list / array of that length)
    model, dataset, layer, lower_layer
        As for :func:`puretools.circuit_attributions`.
    references : References or LongTensor [channels, n_ref]
        ``refs``; the pair is ``(neuron, references.indices[neuron, reference])``.
    neuron : int
    reference : int
        Position in the neuron's reference list (0 = most activating).

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1))
    >>> data = torch.utils.data.TensorDataset(torch.randn(3, 1, 2, 2), torch.zeros(3))
    >>> refs = torch.tensor([[0, 1], [2, 0]])  # or a References
    >>> check_circuit(..., model, data, "2", "1", refs, neuron=0, reference=1)
    Exercise 2: not attempted yet. Replace `...` with your answer; open the 'Solution' cell right below this one to compare.
    False
    """
    if answer is ...:
        return report(exercise, answer)
    indices = references if isinstance(references, torch.Tensor) else references.indices
    one = indices[:, reference:reference + 1]  # [channels, 1]: only that reference
    expected = circuit_attributions(model, dataset, layer, lower_layer, one, neurons=[neuron],
                                    cache_dir=None)[0, 0].double()  # [C_lower]

    def correct(a: Any) -> bool:
        a = torch.as_tensor(np.asarray(a.detach() if isinstance(a, torch.Tensor) else a)).double().reshape(-1)
        return a.shape == expected.shape and bool(torch.allclose(a, expected, atol=1e-4, rtol=1e-3))

    return report(exercise, answer, correct=correct, like=expected,
                  hint="start the backward pass with relu(a_k) on channel k only, multiply the gradient by the "
                       "lower activations, sum over space and divide by the L1 norm (section 1)")


def check_top_channel(answer: Any, circuits: torch.Tensor, concepts: torch.Tensor, concept: int,
                      exercise: str = "Exercise 1") -> bool:
    """Exercise: the lower-layer channel with the largest mean relevance over one concept's references.

    Parameters
    ----------
    answer : int or 0-d tensor
    circuits : Tensor [n_ref, C_lower]
        One neuron's circuits.
    concepts : LongTensor [n_ref]
        Dominant concept of each reference.
    concept : int

    Returns
    -------
    bool

    Examples
    --------
    >>> c = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.2, 0.8]])
    >>> check_top_channel(1, c, torch.tensor([3, 5, 3]), concept=3)
    Exercise 1: correct!
    True
    """
    x = np.asarray(torch.as_tensor(circuits).detach().double())
    members = [i for i, c in enumerate(np.asarray(concepts)) if int(c) == concept]
    means = [sum(x[i, ch] for i in members) / max(1, len(members)) for ch in range(x.shape[1])]
    best = {ch for ch, m in enumerate(means) if np.isclose(m, max(means), rtol=1e-9, atol=1e-12)}

    def correct(a: Any) -> bool:
        value = a.item() if hasattr(a, "item") else a
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in best

    return report(exercise, answer, correct=correct, like=min(best),
                  hint="keep the rows whose dominant concept is the one asked, average them per channel, "
                       "take the argmax (signed relevance, not its absolute value)")
