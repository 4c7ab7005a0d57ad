"""Private helpers shared by the figure modules: new figures, saving, checking patches."""

from __future__ import annotations

import os

import torch

from ..errors import PuretoolsError


def _new_figure(ax, figsize, dpi):
    """``(fig, ax)``: ``ax``'s figure, or a new figure closed in pyplot.

    Closing it keeps Jupyter from drawing it a second time: it shows as a cell's value or
    with ``display(fig)``.
    """
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    plt.close(fig)
    return fig, ax


def _save(fig, path: str | os.PathLike | None):
    """Save as PNG at the figure's own dpi (so the file is ``figsize * dpi`` pixels)."""
    if path is not None:
        fig.savefig(path, dpi=fig.dpi)
    return fig


def _check_patches(patches: torch.Tensor) -> torch.Tensor:
    patches = torch.as_tensor(patches).detach().float().cpu()
    if patches.ndim != 4 or patches.shape[1] not in (1, 3):
        raise PuretoolsError(f"Expected patches [n, 3, s, s], got shape {tuple(patches.shape)}.")
    return patches.clamp(0, 1)
