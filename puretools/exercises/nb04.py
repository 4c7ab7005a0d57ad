"""Self-checks for notebook 04 (reference patches).

The crop box drawn by hand is checked against :func:`puretools.crop_box` (whose tests compare it
with the patches :func:`puretools.crop_patch` cuts); the count of boxes at the border and the
area kept per threshold use the same boxes. Each check runs in well under a second on the
toy world's 100 references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..patches import _box, crop_box, relevance_map
from . import answers_equal, report

__all__ = ["check_border_boxes", "check_crop_area", "check_crop_box", "interior_case"]


def check_border_boxes(answer: Any, heatmaps: torch.Tensor, threshold: float = 0.3,
                       exercise: str = "Exercise 1") -> bool:
    """Exercise: how many crop boxes at ``threshold`` touch the border of their image.

    A box touches the border when it starts in the first row or column or ends in the last
    one; these are the boxes that :func:`puretools.crop_box` may have shifted inwards.

    Parameters
    ----------
    answer : int, numpy integer or 0-d tensor
    heatmaps : Tensor [n_ref, H, W]
    threshold : float

    Returns
    -------
    bool

    Examples
    --------
    >>> h = torch.zeros(2, 10, 10); h[0, 0, 0] = 1.0; h[1, 5, 5] = 1.0  # a corner and the middle
    >>> check_border_boxes(1, h)
    Exercise 1: correct!
    True
    """
    height, width = heatmaps.shape[-2:]
    touching = 0
    for top, left, size in _boxes(heatmaps, threshold):
        touching += top == 0 or left == 0 or top + size == height or left + size == width
    return report(exercise, answer, int(touching),
                  hint=f"for each reference, (top, left, size) = pt.crop_box(heat[r], threshold={threshold}); "
                       "count the boxes with top == 0, left == 0, top + size == H or left + size == W")


def _boxes(heatmaps: torch.Tensor, threshold: float) -> list[tuple[int, int, int]]:
    """``crop_box`` of every heatmap [n, H, W], with the n maps blurred in one batched call."""
    rel = relevance_map(torch.as_tensor(heatmaps))  # [n, H, W]
    return [_box(r, threshold) for r in rel]


def interior_case(heatmaps: torch.Tensor, threshold: float) -> int:
    """The first reference whose crop box at ``threshold`` lies inside the image (no shift) and is
    widened by an odd number of pixels: the case where the rounding rule decides the box.

    Returns -1 when no reference qualifies.

    Examples
    --------
    >>> h = torch.zeros(2, 12, 12); h[0, 0, :] = 1.0; h[1, 5, 4:8] = 1.0  # 1 x 4 in the middle
    >>> interior_case(h, 0.5)
    1
    """
    rel_threshold = float(threshold)
    height, width = heatmaps.shape[-2:]
    for r, heatmap in enumerate(heatmaps):
        rel = relevance_map(heatmap) > rel_threshold
        rows, cols = rel.any(1).nonzero().flatten(), rel.any(0).nonzero().flatten()
        if not len(rows):
            continue
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        top, left, size = crop_box(heatmap, threshold=threshold)
        inside = 0 < top and 0 < left and top + size < height and left + size < width
        if inside and (size - min(h, w)) % 2 == 1:
            return r
    return -1


def check_crop_box(answer: Any, heatmap: torch.Tensor, threshold: float, exercise: str = "Exercise 2") -> bool:
    """Exercise: the square crop box ``(top, left, size)`` of one heatmap, written by hand.

    Parameters
    ----------
    answer : tuple, list or LongTensor of (top, left, size)
    heatmap : Tensor [H, W]
    threshold : float

    Returns
    -------
    bool

    Examples
    --------
    >>> h = torch.zeros(10, 10); h[2:4, 5:9] = 1.0
    >>> check_crop_box(torch.tensor([1, 5, 5]), h, 0.5)  # the blur widens the 2 x 4 block
    Exercise 2: correct!
    True
    >>> check_crop_box((2, 5, 4), h, 0.5) is False  # doctest: +ELLIPSIS
    Exercise 2: not quite...
    True
    """
    expected = list(crop_box(heatmap, threshold=threshold))
    return report(exercise, answer, correct=lambda a: answers_equal([_plain_int(v) for v in a], expected),
                  like=expected, hint="the box of the *blurred* map pt.relevance_map(h): rows and columns holding a pixel "
                       "above the threshold, widened to a square (odd surplus to the bottom/right), then "
                       "shifted inside the image")


def _plain_int(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def check_crop_area(answer: Any, heatmaps: torch.Tensor, thresholds: Sequence[float],
                    exercise: str = "Exercise 3") -> bool:
    """Exercise: ``{threshold: mean share of the image area the crop keeps}``.

    Parameters
    ----------
    answer : dict float -> float (or 0-d tensor)
    heatmaps : Tensor [n_ref, H, W]
    thresholds : sequence of float

    Returns
    -------
    bool

    Examples
    --------
    >>> h = torch.zeros(1, 4, 4)  # no relevance: the whole image
    >>> check_crop_area({0.1: 1.0}, h, [0.1])
    Exercise 3: correct!
    True
    """
    area = heatmaps.shape[-2] * heatmaps.shape[-1]
    expected = {t: float(np.mean([size ** 2 / area for _, _, size in _boxes(heatmaps, t)])) for t in thresholds}
    return report(exercise, answer, expected,
                  hint="one dict entry per threshold: the mean over references of size**2 / (H * W)")
