"""Scores and ranking of polysemantic neurons: how clearly each neuron's references split into groups.

Builds on the distances of :mod:`puretools.evaluate` (one way: evaluate never imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from .checks import check_choice, check_ids, check_int
from .errors import PuretoolsError
from .evaluate import (
    Average,
    _check_average,
    _distances_from_matrix,
    _labels_array,
    pairwise_distances,
)
from .virtual import kmeans_labels

__all__ = ["polysemanticity_scores", "rank_polysemantic"]


def polysemanticity_scores(
    eval_space: torch.Tensor,
    k: int = 2,
    kind: Literal["ratio", "difference"] = "ratio",
    average: Average = "clusters",
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """How clearly each neuron's references split into ``k`` groups in the evaluation space.

    The references' embeddings are clustered with k-means (:func:`puretools.virtual.kmeans_labels`,
    seeded), unless ``labels`` are given; then, from :func:`puretools.evaluate.cluster_distances`,
    ``kind="ratio"``: ``inter / intra`` (scale-free, comparable across neurons; about 1 when
    the references form one blob, larger when they form separate groups, inf when every
    group is a single point), or ``kind="difference"``: ``inter - intra`` (in the space's
    units). Higher means more polysemantic.

    The score measures how *separable* the references are, not how *evenly* they are shared
    between concepts: a neuron whose references are mostly one concept plus a clean minority
    of another (two tight, distant groups) scores higher than one split evenly between
    concepts that overlap in the evaluation space.

    Parameters
    ----------
    eval_space : Tensor [N, n_ref, D]
    k : int
    kind : {"ratio", "difference"}
    average : {"clusters", "pairs"}
    seed : int
    labels : LongTensor [N, n_ref] or None

    Returns
    -------
    Tensor [N]
        float64 scores (NaN where undefined).

    Examples
    --------
    >>> one_blob = torch.randn(1, 20, 2)
    >>> two_blobs = torch.cat([torch.randn(1, 10, 2), torch.randn(1, 10, 2) + 20], 1)
    >>> s = polysemanticity_scores(torch.cat([one_blob, two_blobs]))
    >>> bool(s[1] > s[0])
    True
    """
    _check_average(average)
    check_choice(kind, "kind", ("ratio", "difference"))
    k = check_int(k, "k", low=2, fix="A neuron is split into k >= 2 clusters to measure it.")
    x = torch.as_tensor(eval_space)
    if x.ndim != 3:
        raise PuretoolsError(f"Expected eval_space [N, n_ref, D], got {tuple(x.shape)}.")
    if labels is not None:
        lab = _labels_array(labels)
        if lab.shape != tuple(x.shape[:2]):
            raise PuretoolsError(f"labels must have shape {tuple(x.shape[:2])}, got {lab.shape}.")
    dist = pairwise_distances(x).numpy()
    scores = []
    for i in range(len(x)):
        li = lab[i] if labels is not None else kmeans_labels(x[i].double().cpu().numpy(), k, seed)[0]
        d = _distances_from_matrix(dist[i], li, average)
        if kind == "difference":
            scores.append(d.inter - d.intra)
        elif d.intra > 0:
            scores.append(d.inter / d.intra)
        else:
            scores.append(math.inf if d.inter > 0 else math.nan)
    return torch.tensor(scores, dtype=torch.float64)


def rank_polysemantic(
    scores: torch.Tensor | Sequence[float], neurons: Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Neurons sorted from most to least polysemantic (NaN scores last, ties by position).

    Parameters
    ----------
    scores : Tensor [N]
    neurons : sequence of int or None
        The neuron id of each score; None: positions ``0..N-1``.

    Returns
    -------
    LongTensor [N]

    Examples
    --------
    >>> rank_polysemantic(torch.tensor([1.2, float("nan"), 3.0, 1.2]), neurons=[10, 11, 12, 13])
    tensor([12, 10, 13, 11])
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    key = torch.where(torch.isnan(s), torch.tensor(-math.inf, dtype=torch.float64), s)
    # NaN after -inf: sort by (is_nan, -score) with a stable sort
    order = torch.sort(-key, stable=True).indices
    order = torch.cat([order[~torch.isnan(s[order])], order[torch.isnan(s[order])]])
    ids = torch.arange(len(s)) if neurons is None else torch.tensor(check_ids(neurons, "neurons", allow_empty=True),
                                                                         dtype=torch.long)
    if len(ids) != len(s):
        raise PuretoolsError(f"Got {len(ids)} neuron ids for {len(s)} scores.")
    return ids[order]
