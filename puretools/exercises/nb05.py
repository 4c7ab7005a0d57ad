"""Self-checks for notebook 05 (evaluation with embeddings).

The expected distances come from plain loops over pairs with scipy's Euclidean distance and
Pearson correlation, not from :mod:`puretools.evaluate`, so a check is an independent second
route to the numbers in the notebook's tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import euclidean, pdist
from scipy.stats import pearsonr

from . import report

__all__ = ["check_distance_correlation", "check_inter", "check_intra"]


def _rows(x: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).detach().double().cpu())


def _labels(x: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(np.asarray(x)).cpu()).astype(np.int64).reshape(-1)


def check_intra(answer: Any, embeddings: torch.Tensor, labels: Any, exercise: str = "Exercise 2") -> bool:
    """Exercise: the intra-cluster distance of one neuron, mean over virtual neurons.

    For each virtual neuron with at least two references: the mean Euclidean distance over
    its pairs of different references; then the unweighted mean over virtual neurons.

    Parameters
    ----------
    answer : float or 0-d tensor
    embeddings : Tensor [n_ref, D]
    labels : LongTensor [n_ref]

    Returns
    -------
    bool

    Examples
    --------
    >>> x = torch.tensor([[0.0], [2.0], [4.0], [10.0], [11.0]])  # (8/3 + 1) / 2
    >>> check_intra(torch.tensor(11 / 6), x, torch.tensor([0, 0, 0, 1, 1]))
    Exercise 2: correct!
    True
    """
    x, lab = _rows(embeddings), _labels(labels)
    per_cluster = []
    for c in sorted(set(lab.tolist())):
        members = [i for i in range(len(lab)) if lab[i] == c]
        pairs = [euclidean(x[i], x[j]) for i in members for j in members if i < j]
        if pairs:
            per_cluster.append(sum(pairs) / len(pairs))
    return report(exercise, answer, float(np.mean(per_cluster)),
                  hint="mean over pairs i != j *within* each virtual neuron (leave out the zero diagonal), "
                       "then the plain mean over the virtual neurons")


def check_inter(answer: Any, embeddings: torch.Tensor, labels: Any, exercise: str = "Exercise 1") -> bool:
    """Exercise: the inter-cluster distance of one neuron (mean over pairs in different virtual neurons).

    Parameters
    ----------
    answer : float or 0-d tensor
    embeddings : Tensor [n_ref, D]
    labels : LongTensor [n_ref]

    Returns
    -------
    bool

    Examples
    --------
    >>> x = torch.tensor([[0.0], [2.0], [4.0], [10.0], [11.0]])
    >>> check_inter(8.5, x, [0, 0, 0, 1, 1])
    Exercise 1: correct!
    True
    """
    x, lab = _rows(embeddings), _labels(labels)
    pairs = [euclidean(x[i], x[j]) for i in range(len(lab)) for j in range(len(lab)) if lab[i] != lab[j]]
    return report(exercise, answer, float(np.mean(pairs)),
                  hint="the mean distance over every pair of references whose virtual neurons differ")


def check_distance_correlation(answer: Any, eval_space: torch.Tensor, method_space: torch.Tensor,
                               exercise: str = "Exercise 3") -> bool:
    """Exercise: Pearson r between one neuron's pairwise distances in two spaces.

    Parameters
    ----------
    answer : float or 0-d tensor
    eval_space : Tensor [n_ref, D]
    method_space : Tensor [n_ref, D_m]

    Returns
    -------
    bool

    Examples
    --------
    >>> x = torch.randn(6, 3)
    >>> check_distance_correlation(1.0, x, 2 * x)  # scaling keeps the order of distances
    Exercise 3: correct!
    True
    """
    r = pearsonr(pdist(_rows(eval_space)), pdist(_rows(method_space))).statistic
    return report(exercise, answer, float(r),
                  hint="one distance per pair of references (each pair once, e.g. torch.pdist) in each "
                       "space, then the Pearson correlation of the two lists")
