"""Self-checks for notebook 06 (the explorer).

The checks read the explorer's clusterings (``ExplorerData.labels``) and ground-truth concepts
and score them with their own loops (scikit-learn's ARI, purity by counting), not through
:func:`puretools.widgets.explorer_scores`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from . import report

__all__ = ["check_best_gap", "check_purity"]


def _int(a: Any) -> Any:
    value = a.item() if hasattr(a, "item") else a
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def check_best_gap(answer: Any, explorer_data: Any, k: int = 2, exercise: str = "Exercise 1") -> bool:
    """Exercise: the rank position where PURE's ARI exceeds the activation baseline's by the most.

    Parameters
    ----------
    answer : int or 0-d tensor
        A position in ``explorer_data.neurons`` (0 = most polysemantic), not a neuron id.
    explorer_data : ExplorerData
        With ground-truth ``concepts``.
    k : int

    Returns
    -------
    bool
        Any position tied for the largest gap counts.

    Examples
    --------
    >>> import torch
    >>> from puretools.widgets import ExplorerData
    >>> f = {"PURE": torch.tensor([[[0.0], [0.1], [5.0], [5.1]]]),
    ...      "activations": torch.tensor([[[0.0], [5.0], [0.1], [5.1]]])}
    >>> data = ExplorerData([7], [1.0], f, {}, {}, concepts=torch.tensor([[2, 2, 4, 4]]))
    >>> check_best_gap(0, data)
    Exercise 1: correct!
    True
    """
    gaps = []
    for position in range(len(explorer_data.neurons)):
        truth = np.asarray(explorer_data.concepts[position])
        keep = truth >= 0  # references without a label (-1) are not scored
        ari = {m: adjusted_rand_score(truth[keep], explorer_data.labels(position, m, k)[keep])
               for m in ("PURE", "activations")}
        gaps.append(ari["PURE"] - ari["activations"])
    best = {p for p, g in enumerate(gaps) if np.isclose(g, max(gaps), rtol=0, atol=1e-12)}
    return report(exercise, answer, correct=lambda a: _int(a) in best, like=min(best),
                  hint="one ARI gap per rank position (PURE minus activations); the answer is the position "
                       "of the largest, not the neuron id")


def check_purity(answer: Any, explorer_data: Any, position: int, k: int, method: str = "PURE",
                 exercise: str = "Exercise 2") -> bool:
    """Exercise: the purity of one clustering, by hand.

    Purity: for each virtual neuron, count the references of its most common ground-truth
    concept; sum over virtual neurons and divide by the number of references.

    Parameters
    ----------
    answer : float or 0-d tensor
    explorer_data : ExplorerData
    position, k, method
        Which clustering (as for ``explorer_data.labels``).

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch
    >>> from puretools.widgets import ExplorerData
    >>> f = {"PURE": torch.tensor([[[0.0], [0.1], [0.2], [5.1]]])}
    >>> data = ExplorerData([7], [1.0], f, {}, {}, concepts=torch.tensor([[2, 2, 4, 4]]))
    >>> check_purity(0.75, data, 0, 2)
    Exercise 2: correct!
    True
    """
    truth = np.asarray(explorer_data.concepts[position])
    keep = truth >= 0  # references without a label (-1) are not scored
    labels = np.asarray(explorer_data.labels(position, method, k))[keep].tolist()
    truth = truth[keep].tolist()
    majority = 0
    for c in set(labels):
        majority += Counter(t for t, lab in zip(truth, labels) if lab == c).most_common(1)[0][1]
    return report(exercise, answer, majority / len(labels),
                  hint="leave out the references without a label (-1); per virtual neuron, the count of its "
                       "most common concept (collections.Counter); add them up and divide by the number of "
                       "labelled references")
