"""Self-checks for notebook 08 (PURE on a vision transformer)."""

from __future__ import annotations

from typing import Any

import torch

from ..references import References
from . import report

__all__ = ["check_circuit_by_hand", "check_patch_map", "check_token_max_references"]


def check_token_max_references(answer: Any, acts: torch.Tensor, refs: References, neuron: int) -> bool:
    """Exercise 1: the indices of the ``n_ref`` images with the largest token max of ``neuron``.

    ``acts`` [N, T, C] is the layer's output on every image of the data set. The expected set
    is computed here from ``acts`` and must also be the set :func:`puretools.collect_references`
    found (``refs.indices[neuron]``); the order of the answer does not matter.
    """
    n_ref = refs.indices.shape[1]
    by_hand = acts[:, :, neuron].amax(1)  # [N]: the max over all tokens
    expected = set(by_hand.topk(n_ref).indices.tolist())
    if expected != set(refs.indices[neuron].tolist()):  # the two routes must agree (ties aside)
        threshold = float(by_hand.topk(n_ref).values[-1])
        expected = {i for i in range(len(by_hand)) if float(by_hand[i]) >= threshold}

    def correct(a: Any) -> bool:
        ids = torch.as_tensor(a).flatten().long().tolist()
        return len(ids) == n_ref and len(set(ids)) == n_ref and set(ids) <= expected

    return report("Exercise 1", answer, correct=correct, like=sorted(expected)[:n_ref],
                  hint="take acts[:, :, neuron], its max over the token axis (axis 1, CLS included), then "
                       "the n_ref largest (torch.topk)")  # fmt: skip


def check_patch_map(answer: Any, values: torch.Tensor, grid: tuple[int, int], prefix: int) -> bool:
    """Exercise 2: one image's per-token ``values`` [T] as a map [rows, columns] on the patch grid.

    Expected: token ``prefix + r * columns + c`` at row r, column c (timm's row-major patch
    order), built here entry by entry.
    """
    rows, cols = grid
    expected = torch.empty(rows, cols, dtype=values.dtype)
    for r in range(rows):
        for c in range(cols):
            expected[r, c] = values[prefix + r * cols + c]
    return report("Exercise 2", answer, expected,
                  hint="drop the prefix (CLS) token first, then reshape the patch tokens row by row")  # fmt: skip


def check_circuit_by_hand(answer: Any, circuits: torch.Tensor, neuron: int, reference: int) -> bool:
    """Exercise 3: the gradient circuit [C_lower] of one reference, by hand.

    Compared with ``circuits[neuron, reference]`` from :func:`puretools.circuit_attributions`
    (the batched engine).
    """
    expected = circuits[neuron, reference].double()
    return report("Exercise 3", answer, correct=lambda a: (
        torch.as_tensor(a).shape == expected.shape
        and bool(torch.allclose(torch.as_tensor(a).detach().double(), expected, atol=1e-4, rtol=1e-3))),
        like=expected,
        hint="start from relu(a_k) at every token of the layer, take gradient x activation at the residual "
             "stream, sum over the tokens (axis 1) and divide by the L1 norm")  # fmt: skip

