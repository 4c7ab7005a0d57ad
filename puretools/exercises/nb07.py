"""Self-checks for notebook 07 (your own model).

The agreement of two splits is an adjusted Rand index computed from the contingency table here
(not with scikit-learn); the sizes by counting labels.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from . import report

__all__ = ["check_agreement", "check_cluster_sizes"]


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


def _ari(a: list[int], b: list[int]) -> float:
    """Adjusted Rand index from the contingency table (Hubert and Arabie), without scikit-learn."""
    n = len(a)
    pairs = lambda x: x * (x - 1) / 2
    table = Counter(zip(a, b))
    index = sum(pairs(v) for v in table.values())
    rows = sum(pairs(v) for v in Counter(a).values())
    cols = sum(pairs(v) for v in Counter(b).values())
    expected = rows * cols / pairs(n) if n > 1 else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def check_agreement(answer: Any, labels: Any, baseline_labels: Any, exercise: str = "Exercise 2") -> bool:
    """Exercise: per neuron, the adjusted Rand index between PURE's split and the activation baseline's.

    Parameters
    ----------
    answer : list of float or Tensor [N]
        One ARI per neuron, in the order of ``labels``.
    labels, baseline_labels : LongTensor [N, n_ref]
        ``vn.labels`` and ``baseline.labels``.

    Returns
    -------
    bool

    Examples
    --------
    >>> pure, base = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]), torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    >>> check_agreement([1.0, -0.5], pure, base)
    Exercise 2: correct!
    True
    """
    a = np.asarray(torch.as_tensor(labels)).tolist()
    b = np.asarray(torch.as_tensor(baseline_labels)).tolist()
    expected = [_ari(x, y) for x, y in zip(a, b)]
    return report(exercise, answer, expected,
                  hint="one number per neuron: sklearn.metrics.adjusted_rand_score(vn.labels[j], baseline.labels[j]); "
                       "1 means the same split (whatever the cluster numbers), about 0 unrelated splits")
