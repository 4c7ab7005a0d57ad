"""Self-checks of notebook 03 (virtual neurons)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..toyworld import CONCEPTS
from . import report

__all__ = ["check_assignment", "check_vn_names"]


def check_vn_names(answer: Any, ref_labels: torch.Tensor, labels: torch.Tensor) -> bool:
    """Exercise 1: per virtual neuron, the concept contained in the largest share of its references.

    Examples
    --------
    >>> ref_labels = torch.eye(16)[[0, 0, 3, 3]]   # 4 references: disc, disc, ring, ring
    >>> check_vn_names(["disc", "ring"], ref_labels, torch.tensor([0, 0, 1, 1]))
    Exercise 1: correct!
    True
    """
    labels = torch.as_tensor(labels)
    expected = []
    for c in range(int(labels.max()) + 1):
        members = np.asarray(ref_labels[labels == c] > 0)
        expected.append(CONCEPTS[int(np.argmax(members.mean(0)))])
    return report("Exercise 1", answer, correct=lambda a: [str(v) for v in a] == expected, like=expected,
                  hint="one name per virtual neuron, VN 0 first; count how many references of each "
                       "cluster contain each concept")


def check_assignment(answer: Any, new_circuits: torch.Tensor, centroids: torch.Tensor) -> bool:
    """Exercise 2: the nearest centroid (Euclidean) of each new circuit.

    Computed with an explicit loop over centroids and squared distances, not with ``vn.assign``.

    Examples
    --------
    >>> check_assignment(torch.tensor([1, 0]), torch.tensor([[2.0, 2.0], [0.1, 0.0]]),
    ...                  torch.tensor([[0.0, 0.0], [2.0, 1.9]]))
    Exercise 2: correct!
    True
    """
    x = np.asarray(torch.as_tensor(new_circuits).double())
    c = np.asarray(torch.as_tensor(centroids).double())
    squared = np.stack([((x - c[j]) ** 2).sum(1) for j in range(len(c))], 1)  # [M, k]
    expected = squared.argmin(1)
    return report("Exercise 2", answer, expected,
                  hint="one virtual neuron per new circuit: the index of the nearest row of the centroids")
