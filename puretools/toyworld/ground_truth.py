"""Ground truth of the toy world: which concepts a neuron's references hold, and scores against it."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import PuretoolsError

__all__ = [
    "concept_mix",
    "dominant_concepts",
    "dominant_shares",
    "clearest_two_concept_neuron",
    "ground_truth_scores",
    "label_shares",
    "polysemantic_neurons",
]


def concept_mix(labels: torch.Tensor) -> torch.Tensor:
    """Share of the references that contain each concept.

    Parameters
    ----------
    labels : Tensor [..., n_ref, n_concepts]
        Multi-hot ground truth of the references (e.g. ``ds.labels[refs.indices[k]]``).

    Returns
    -------
    Tensor [..., n_concepts]
        In [0, 1]; sums to more than 1 when images hold several concepts.

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])  # 4 references
    >>> concept_mix(labels)
    tensor([0.7500, 0.5000, 0.2500])
    """
    return (labels > 0).float().mean(-2)


def dominant_concepts(labels: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """One ground-truth concept per reference: the neuron's favourite among those in the image.

    An image may hold up to three concepts. Each reference gets the concept, among those
    present in it, with the largest share in the neuron's reference mix (:func:`concept_mix`
    of the same references unless ``mix`` is given): the concept most plausibly responsible
    for the neuron firing. Ties go to the lower concept index; an image without concepts
    gets -1.

    Parameters
    ----------
    labels : Tensor [n_ref, n_concepts]
        Multi-hot ground truth of one neuron's references.
    mix : Tensor [n_concepts], optional
        The preference order (default ``concept_mix(labels)``).

    Returns
    -------
    LongTensor [n_ref]

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])
    >>> dominant_concepts(labels)  # concept 0 is in 3 of 4 references, so it wins in image 1
    tensor([0, 0, 1, 0])
    """
    present = labels > 0
    mix = concept_mix(labels) if mix is None else mix.float()
    score = torch.where(present, mix.expand_as(present), torch.tensor(-1.0))
    # ties: argmax returns the first maximum, i.e. the lower concept index
    return torch.where(present.any(-1), score.argmax(-1), torch.tensor(-1))


def dominant_shares(labels: torch.Tensor) -> torch.Tensor:
    """Share of one neuron's references whose :func:`dominant_concepts` is each concept.

    Unlike :func:`concept_mix` this counts every reference once, so it sums to 1.

    Parameters
    ----------
    labels : Tensor [n_ref, n_concepts]

    Returns
    -------
    Tensor [n_concepts]

    Examples
    --------
    >>> labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]])
    >>> dominant_shares(labels)
    tensor([0.7500, 0.2500, 0.0000])
    """
    dom = dominant_concepts(labels)
    counts = torch.bincount(dom[dom >= 0], minlength=labels.shape[-1]).float()
    return counts / len(dom)


def polysemantic_neurons(
    reference_indices: torch.Tensor,
    labels: torch.Tensor,
    min_share: float = 0.2,
    concepts: torch.Tensor | None = None,
) -> list[int]:
    """Neurons whose references split between at least two concepts, in the ground-truth sense.

    Each reference counts once, for its :func:`dominant_concepts` (or for its label in
    ``concepts``, e.g. :func:`causal_concepts`); a neuron is polysemantic when at least two
    concepts each take a share ``>= min_share`` of its references (:func:`dominant_shares`,
    or :func:`label_shares` of ``concepts``: shares among the labelled references).

    Parameters
    ----------
    reference_indices : LongTensor [channels, n_ref] or References
        Reference samples per neuron (``collect_references(...).indices``).
    labels : Tensor [N, n_concepts]
        Multi-hot ground truth of the whole data set (``ToyWorld.labels``).
    min_share : float
        Smallest share a concept needs to count.
    concepts : LongTensor [channels, n_ref], optional
        One concept per reference (-1: unlabelled, left out), e.g. the causal labels of every
        channel; default: the dominant concepts of ``labels``.

    Returns
    -------
    list of int
        The polysemantic neurons, in increasing order.

    Examples
    --------
    >>> labels = torch.eye(3)[[0, 0, 1, 1, 2, 2]]  # 6 images, one concept each: 0 0 1 1 2 2
    >>> refs = torch.tensor([[0, 1, 2, 3],   # neuron 0: concepts 0 and 1, half each
    ...                      [0, 1, 4, 5],   # neuron 1: concepts 0 and 2
    ...                      [0, 1, 2, 1]])  # neuron 2: concept 0 75 %, concept 1 25 %
    >>> polysemantic_neurons(refs, labels), polysemantic_neurons(refs, labels, min_share=0.3)
    ([0, 1, 2], [0, 1])
    >>> causal = torch.tensor([[0, 0, 0, -1], [0, 0, 2, 2], [0, 0, 0, 1]])  # one label per reference
    >>> polysemantic_neurons(refs, labels, concepts=causal, min_share=0.3)  # 50/50 and 75/25
    [1]
    """
    if not isinstance(reference_indices, torch.Tensor):  # References
        reference_indices = reference_indices.indices
    if concepts is not None:
        concepts = torch.as_tensor(concepts)
        if concepts.shape != reference_indices.shape:
            raise PuretoolsError(
                f"concepts has shape {tuple(concepts.shape)}, but the references have shape "
                f"{tuple(reference_indices.shape)}: pass one label per reference of every channel."
            )
        shares = label_shares(concepts, labels.shape[-1])
    else:
        shares = torch.stack([dominant_shares(labels[idx]) for idx in reference_indices])
    return [k for k, row in enumerate(shares) if int((row >= min_share).sum()) >= 2]


def label_shares(concepts: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """Share of each concept among the labelled references (label >= 0); -1 labels are left out.

    Parameters
    ----------
    concepts : LongTensor [..., n_ref]
        One concept per reference, -1 where there is none (e.g. :func:`causal_concepts`).
    n_concepts : int

    Returns
    -------
    Tensor [..., n_concepts]
        Sums to 1 over concepts (0 everywhere when no reference is labelled).

    Examples
    --------
    >>> label_shares(torch.tensor([2, 2, 0, -1]), 3)  # 3 labelled references
    tensor([0.3333, 0.0000, 0.6667])
    """
    concepts = torch.as_tensor(concepts).long()
    onehot = torch.nn.functional.one_hot(concepts.clamp(min=0), n_concepts).float()
    onehot = onehot * (concepts >= 0).unsqueeze(-1)
    counts = onehot.sum(-2)
    return counts / counts.sum(-1, keepdim=True).clamp(min=1)


def clearest_two_concept_neuron(concepts: torch.Tensor, n_concepts: int, min_share: float = 0.2) -> int:
    """The neuron that two concepts explain most cleanly and most evenly: a good one to show a split.

    Among the neurons with exactly two concepts of share ``>= min_share`` (:func:`label_shares`),
    the one with the largest ``coverage x minority share``, where coverage is the share of *all*
    its references labelled with one of the two concepts (unlabelled ones count against it) and
    the minority share is the smaller concept's share. Chosen from ground truth only, never from
    how well a method splits it.

    Parameters
    ----------
    concepts : LongTensor [channels, n_ref]
        One label per reference of every channel, -1 for none (e.g. :func:`causal_concepts`).
    n_concepts : int
    min_share : float

    Returns
    -------
    int
        The neuron (row of ``concepts``).

    Examples
    --------
    >>> concepts = torch.tensor([[0, 0, 0, 1, 2, -1],   # 3 concepts: not a two-concept neuron
    ...                          [0, 0, 0, 0, 1, 1],    # coverage 1, minority 1/3
    ...                          [0, 0, 1, 1, -1, -1]]) # coverage 2/3, minority 1/2
    >>> clearest_two_concept_neuron(concepts, 3)
    1
    """
    concepts = torch.as_tensor(concepts).long()
    shares = label_shares(concepts, n_concepts)
    best, best_score = None, -1.0
    for k, row in enumerate(shares):
        top = row.argsort(descending=True)[:2]
        if int((row >= min_share).sum()) != 2:
            continue
        coverage = float(((concepts[k] == top[0]) | (concepts[k] == top[1])).float().mean())
        score = coverage * float(row[top[1]])
        if score > best_score:
            best, best_score = k, score
    if best is None:
        raise PuretoolsError(f"No neuron has exactly two concepts with a share >= {min_share}.")
    return best


def ground_truth_scores(cluster_labels, concept_labels) -> dict[str, float]:
    """Agreement of a clustering of references (virtual neurons) with the ground-truth concepts.

    References whose concept is -1 (e.g. a causal label where no single object explains the
    activation, see :func:`causal_concepts`) are left out of both scores and counted in
    ``n_excluded``.

    Parameters
    ----------
    cluster_labels : array-like [n_ref]
        Virtual neuron of every reference.
    concept_labels : array-like [n_ref] or [n_ref, n_concepts]
        Ground-truth concept per reference (-1: none); a multi-hot matrix is first reduced
        with :func:`dominant_concepts` (the older, heuristic labels).

    Returns
    -------
    dict
        ``ari``: scikit-learn's adjusted Rand index (1 for a perfect match, about 0 for
        chance); ``purity``: share of references whose concept is the most common one of
        their cluster (1 when every cluster holds one concept); both NaN when no reference is
        labelled. ``n_scored`` and ``n_excluded``: references scored and left out.

    Examples
    --------
    >>> ground_truth_scores([0, 0, 1, 1], [5, 5, 2, 2])
    {'ari': 1.0, 'purity': 1.0, 'n_scored': 4, 'n_excluded': 0}
    >>> ground_truth_scores([0, 1, 0, 1], [5, 5, 2, 2])
    {'ari': -0.5, 'purity': 0.5, 'n_scored': 4, 'n_excluded': 0}
    >>> ground_truth_scores([0, 0, 1, 1, 1], [5, 5, 2, 2, -1])  # the last reference is unlabelled
    {'ari': 1.0, 'purity': 1.0, 'n_scored': 4, 'n_excluded': 1}
    """
    from sklearn.metrics import adjusted_rand_score

    concept_labels = torch.as_tensor(np.asarray(concept_labels))
    if concept_labels.ndim == 2:
        concept_labels = dominant_concepts(concept_labels)
    truth = concept_labels.numpy().astype(np.int64)
    clusters = np.asarray(cluster_labels).astype(np.int64)
    if clusters.shape != truth.shape:
        raise PuretoolsError(
            f"{len(clusters)} cluster labels for {len(truth)} concept labels: pass one of each per reference."
        )
    keep = truth >= 0
    truth, clusters = truth[keep], clusters[keep]
    n_excluded = int((~keep).sum())
    if not len(truth):
        return {"ari": float("nan"), "purity": float("nan"), "n_scored": 0, "n_excluded": n_excluded}
    majority = sum(np.bincount(truth[clusters == c]).max() for c in np.unique(clusters))
    ari = adjusted_rand_score(truth, clusters)
    return {"ari": float(ari), "purity": float(majority / len(truth)), "n_scored": len(truth),
            "n_excluded": n_excluded}  # fmt: skip
