"""Self-checks for notebook 01 (the toy world and its polysemantic neurons).

Each check computes the expected answer on its own, by a route other than the one the
notebook shows (numpy counts instead of :func:`~puretools.toyworld.concept_mix`, a forward
hook on the full model instead of :func:`~puretools.forward.layer_output`), and hands it to
:func:`puretools.exercises.report`, which never prints it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from . import report

__all__ = ["check_top_neuron", "check_top_references"]


def check_top_neuron(answer: Any, labels: torch.Tensor, reference_indices: torch.Tensor,
                     concept: int, exercise: str = "Exercise 1") -> bool:
    """Exercise: the neuron whose references most often contain ``concept``.

    Parameters
    ----------
    answer : int, 0-d tensor or numpy integer
        The student's neuron.
    labels : Tensor [n_images, n_concepts]
        Multi-hot ground truth of the data set (``data.labels``).
    reference_indices : LongTensor [channels, n_ref]
        ``refs.indices``.
    concept : int
        Index of the concept in ``toyworld.CONCEPTS``.

    Returns
    -------
    bool
        Whether the answer is right (any neuron tied for the largest share counts).

    Examples
    --------
    >>> labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    >>> check_top_neuron(torch.tensor(1), labels, torch.tensor([[0, 1], [0, 2]]), concept=0)
    Exercise 1: correct!
    True
    """
    has = np.asarray(labels)[:, concept] > 0  # [n_images]
    counts = np.array([sum(bool(has[int(i)]) for i in row) for row in np.asarray(reference_indices)])
    best = set(np.flatnonzero(counts == counts.max()).tolist())

    def correct(a: Any) -> bool:
        value = a.item() if hasattr(a, "item") else a
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in best

    return report(exercise, answer, correct=correct, like=min(best),
                  hint="for each neuron, the share of its references whose label has the concept; take the argmax")


def check_top_references(answer: Any, model: nn.Module, images: torch.Tensor, layer: str, neuron: int,
                         n: int = 5, batch_size: int = 500, candidates: torch.Tensor | None = None,
                         exercise: str = "Exercise 2") -> bool:
    """Exercise: the ``n`` most activating images of ``neuron`` (by spatial max), best first.

    The expected indices come from a forward hook on ``layer`` (not from ``collect_references``),
    over all ``images``, or, to answer in a fraction of a second, over ``candidates`` and the
    answer's own indices only.

    Parameters
    ----------
    answer : list of int or LongTensor [n]
        Data-set indices, most activating first.
    model : nn.Module
    images : Tensor [n_images, 3, H, W]
        The whole data set (``data.images``).
    layer : str
    neuron : int
        Channel of ``layer``.
    n : int
    candidates : LongTensor or None
        Data-set indices known to hold the ``n`` most activating images (e.g. the neuron's
        reference samples ``refs.indices[neuron]``); None: run the model on every image.

    Returns
    -------
    bool

    Examples
    --------
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
    >>> _ = model[0].weight.data.fill_(1.0)
    >>> images = torch.arange(4.0).reshape(4, 1, 1, 1)
    >>> check_top_references([3, 2], model, images, "0", neuron=0, n=2)
    Exercise 2: correct!
    True
    """
    pool = None
    if candidates is not None:
        given = _indices(answer)
        given = given[(given >= 0) & (given < len(images))]
        pool = torch.unique(torch.cat([torch.as_tensor(candidates).flatten().long(), given]))
        images = images[pool]
    module = dict(model.named_modules())[layer]
    maxima: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: maxima.append(out[:, neuron].flatten(1).amax(1)))
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
    finally:
        handle.remove()
    expected = torch.cat(maxima).topk(n).indices
    if pool is not None:
        expected = pool[expected]
    return report(exercise, answer, expected,
                  hint=f"one value per image: the maximum of channel {neuron} over its spatial positions; "
                       f"then the {n} largest, best first (torch.topk)")


def _indices(answer: Any) -> torch.Tensor:
    """The integer entries of an answer as a flat LongTensor (empty when it holds none)."""
    try:
        t = torch.as_tensor(np.asarray(answer)).flatten()
    except (TypeError, ValueError, RuntimeError):
        return torch.empty(0, dtype=torch.long)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return torch.empty(0, dtype=torch.long)
    return t.long()
