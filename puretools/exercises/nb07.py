"""Self-checks for notebook 07 (your own model).

The nearest-centroid assignment is recomputed with a plain loop over centroids (not with
:meth:`puretools.VirtualNeurons.assign`); the sizes by counting labels.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from . import report

__all__ = ["check_cluster_sizes", "check_nearest_centroid"]


def check_cluster_sizes(answer: Any, labels: Any, exercise: str = "Exercise 1") -> bool:
    """Exercise: how many references each virtual neuron holds, as a list ``[n_0, n_1, ...]``.

    Parameters
    ----------
    answer : list of int or LongTensor [k]
    labels : LongTensor [n_ref]
        One neuron's virtual-neuron labels (``vn.labels[i]``).

    Returns
    -------
    bool

    Examples
    --------
    >>> check_cluster_sizes(torch.tensor([2, 1]), torch.tensor([0, 1, 0]))
    Exercise 1: correct!
    True
    """
    counts = Counter(np.asarray(torch.as_tensor(np.asarray(labels))).reshape(-1).tolist())
    expected = [counts.get(c, 0) for c in range(max(counts) + 1)]
    return report(exercise, answer, expected, hint="one count per virtual neuron 0, 1, ..., in that order")


def check_nearest_centroid(answer: Any, circuits: torch.Tensor, centroids: torch.Tensor,
                           exercise: str = "Exercise 2") -> bool:
    """Exercise: the virtual neuron of each sample: the index of its nearest centroid.

    Parameters
    ----------
    answer : LongTensor [M] or list of int
    circuits : Tensor [M, D]
        Circuits of one neuron's samples.
    centroids : Tensor [k, D]
        That neuron's virtual-neuron centroids (``vn.centroids[i]``).

    Returns
    -------
    bool

    Examples
    --------
    >>> check_nearest_centroid([0, 1], torch.tensor([[0.0, 0], [4, 4]]), torch.tensor([[1.0, 0], [3, 3]]))
    Exercise 2: correct!
    True
    """
    x = np.asarray(torch.as_tensor(circuits).detach().double())
    c = np.asarray(torch.as_tensor(centroids).detach().double())
    expected = [min(range(len(c)), key=lambda j, row=row: float(np.sum((row - c[j]) ** 2))) for row in x]
    return report(exercise, answer, expected,
                  hint="the Euclidean distance of every sample to every centroid (torch.cdist), then the "
                       "argmin over centroids")
