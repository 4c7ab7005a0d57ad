"""Polysemanticity scores and ranking: two-group neurons first, hand-computed ratio, NaN and inf order."""

import pytest
import torch

from puretools.polysemanticity import polysemanticity_scores, rank_polysemantic

# Five points on a line: cluster A = {0, 2, 4} (intra 8/3), cluster B = {10, 11} (intra 1);
# between: 10 11 8 9 6 7 (mean 8.5).
POINTS = torch.tensor([[0.0], [2.0], [4.0], [10.0], [11.0]])
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_polysemanticity_ranks_two_group_neurons_first():
    g = torch.Generator().manual_seed(0)
    mono = torch.randn(3, 30, 4, generator=g)
    poly = torch.randn(2, 30, 4, generator=g)
    poly[:, 15:] += torch.tensor([12.0, 0, 0, 0])
    space = torch.cat([mono[:1], poly[:1], mono[1:], poly[1:]])  # poly at positions 1 and 4
    scores = polysemanticity_scores(space)
    assert scores.shape == (5,)
    assert set(rank_polysemantic(scores)[:2].tolist()) == {1, 4}
    assert (scores[[1, 4]] > 3).all() and (scores[[0, 2, 3]] < 2).all()
    diff = polysemanticity_scores(space, kind="difference")
    assert set(rank_polysemantic(diff)[:2].tolist()) == {1, 4}
    # explicit labels: the hand-computed example, inter / intra
    one = polysemanticity_scores(POINTS[None], labels=LABELS[None])
    assert one[0] == pytest.approx(8.5 / ((8 / 3 + 1) / 2))


def test_rank_polysemantic_nan_and_inf():
    scores = torch.tensor([1.0, float("nan"), float("inf"), 2.0, 1.0])
    assert rank_polysemantic(scores).tolist() == [2, 3, 0, 4, 1]
    assert rank_polysemantic(scores, neurons=[50, 51, 52, 53, 54]).tolist() == [52, 53, 50, 54, 51]


def test_polysemanticity_imports_evaluation_one_way():
    """Data flow one way: polysemanticity builds on evaluate; evaluate never imports polysemanticity."""
    import ast
    import inspect

    import puretools.evaluate as evaluate

    tree = ast.parse(inspect.getsource(evaluate))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m and m.split(".")[-1] == "polysemanticity"}, imported
