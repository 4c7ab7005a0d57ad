"""Self-checks for notebook 04 (reference patches).

The crop box drawn by hand is checked against :func:`puretools.crop_box`; the check of every
box and the area kept per threshold use the patches :func:`puretools.crop_patch` cuts, not
the boxes, so they do not share the student's route.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..patches import crop_box, crop_patch
from . import answers_equal, report

__all__ = ["check_all_boxes_inside", "check_crop_area", "check_crop_box"]


def check_all_boxes_inside(answer: Any, images: torch.Tensor, heatmaps: torch.Tensor,
                           exercise: str = "Exercise 1") -> bool:
    """Exercise: whether every crop box is a square lying inside its image (True or False).

    Parameters
    ----------
    answer : bool, numpy bool or 0-d bool tensor
    images : Tensor [n_ref, 3, H, W]
    heatmaps : Tensor [n_ref, H, W]

    Returns
    -------
    bool

    Examples
    --------
    >>> check_all_boxes_inside(np.bool_(True), torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))
    Exercise 1: correct!
    True
    """
    height, width = heatmaps.shape[-2:]
    ok = True
    for image, heatmap in zip(images, heatmaps):
        patch = crop_patch(image, heatmap)  # cut by the package, checked here
        top, left, size = crop_box(heatmap)
        ok &= patch.shape[-1] == patch.shape[-2] == size and 0 <= top <= top + size <= height
        ok &= 0 <= left <= left + size <= width
    return report(exercise, answer, bool(ok), hint="check each box's side and its four borders, then combine with all()")


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
    Exercise 2: not quite. Hint: ...
    True
    """
    expected = list(crop_box(heatmap, threshold=threshold))
    return report(exercise, answer, correct=lambda a: answers_equal([_plain_int(v) for v in a], expected),
                  hint="the box of the *blurred* map pt.relevance_map(h): rows and columns holding a pixel "
                       "above the threshold, widened to a square (odd surplus to the bottom/right), then "
                       "shifted inside the image")


def _plain_int(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def check_crop_area(answer: Any, images: torch.Tensor, heatmaps: torch.Tensor, thresholds: Sequence[float],
                    exercise: str = "Exercise 3") -> bool:
    """Exercise: ``{threshold: mean share of the image area the crop keeps}``.

    Parameters
    ----------
    answer : dict float -> float (or 0-d tensor)
    images : Tensor [n_ref, 3, H, W]
    heatmaps : Tensor [n_ref, H, W]
    thresholds : sequence of float

    Returns
    -------
    bool

    Examples
    --------
    >>> im, h = torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4)  # no relevance: the whole image
    >>> check_crop_area({0.1: 1.0}, im, h, [0.1])
    Exercise 3: correct!
    True
    """
    expected = {t: float(np.mean([crop_patch(im, h, threshold=t).shape[-1] ** 2 / im[0].numel()
                                  for im, h in zip(images, heatmaps)])) for t in thresholds}
    return report(exercise, answer, expected,
                  hint="one dict entry per threshold: the mean over references of size**2 / (H * W)")
