"""Causal labels: which object of a reference image makes a neuron fire, found by removing it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..checks import resolve_device
from ..errors import PuretoolsError
from ..forward import layer_output, prepare_model
from ..layouts import Layout, check_token_reduce, layer_layout
from ..reference_type import References, check_references
from .ground_truth import dominant_concepts
from .world import ToyWorld

__all__ = ["CausalEffects", "causal_concepts", "causal_effects", "reference_concepts"]

#: The share of a neuron's activation that removing one object must take away to explain it.
MIN_DROP = 0.5


@dataclass(frozen=True)
class CausalEffects:
    """What removing each object of each reference image does to a neuron (:func:`causal_effects`).

    Attributes
    ----------
    neurons : list of int
        The neurons (channels of the layer), one row each.
    indices : LongTensor [N, n_ref]
        Data-set index of every reference.
    activation : Tensor [N, n_ref]
        The neuron's activation on the reference image: its spatial max (a token layer's max
        over tokens, or as ``token_reduce`` says).
    without : Tensor [N, n_ref, 3]
        The same with the object in each slot removed (NaN where the slot holds no object).
    object_concepts : LongTensor [N, n_ref, 3]
        Concept of the object in each slot (-1: no object).
    slots : LongTensor [N, n_ref]
        Slot whose removal lowers the activation most (-1: the image has no object).
    concepts : LongTensor [N, n_ref]
        The causal label: that object's concept where its removal lowers the activation by at
        least ``min_drop`` of it, else -1 (no single object explains the activation, or two
        removals lower it exactly as much).
    min_drop : float
    """

    neurons: list[int]
    indices: torch.Tensor
    activation: torch.Tensor
    without: torch.Tensor
    object_concepts: torch.Tensor
    slots: torch.Tensor
    concepts: torch.Tensor
    min_drop: float

    @property
    def drop(self) -> torch.Tensor:
        """Relative drop ``1 - without / activation`` [N, n_ref, 3] (NaN: no object or no activation)."""
        act = self.activation.unsqueeze(-1)
        return torch.where(act > 0, 1 - self.without / act.clamp(min=1e-30), torch.tensor(float("nan")))


def _neuron_rows(references: References | torch.Tensor, neurons, dataset=None, layer=None) -> tuple[torch.Tensor, list[int]]:
    """The references' rows of ``neurons`` [N, n_ref] and the neuron ids, checked by :func:`check_references`."""
    idx, neurons_t = check_references(references, dataset, layer, neurons)
    return idx[neurons_t], neurons_t.tolist()


@torch.inference_mode()
def causal_effects(
    model: nn.Module,
    dataset: ToyWorld,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int] | torch.Tensor | None = None,
    min_drop: float = MIN_DROP,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    token_reduce: str = "max",
    layout: str | Layout | None = None,
) -> CausalEffects:
    """Render every reference image again without each of its objects and measure the neuron.

    For each reference image, each of its objects is removed in turn
    (:meth:`ToyWorld.render_without`, everything else identical) and the neuron's spatial max
    activation at ``layer`` measured again. The object whose removal lowers it most is the
    cause; it counts as the label when that removal takes away at least ``min_drop`` of the
    activation. All images and variants go through the model in batches, so a whole layer
    takes seconds.

    Parameters
    ----------
    model : nn.Module
    dataset : ToyWorld
        The data set the references index (its scenes are re-rendered).
    layer : str
        The layer of the references (e.g. ``toyworld.LAYER``).
    references : References or LongTensor [channels, n_ref]
    neurons : sequence of int, optional
        Channels to label (default: all).
    min_drop : float
        Share of the activation one removal must take away (default 0.5: halve it).
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
    token_reduce : {"max", "mean", "cls"}
        How a token layer's neuron becomes one value per image (as in
        :func:`puretools.collect_references`; default the max over all tokens). Spatial
        layers always take the max.
    layout : str or Layout, optional
        The layer's layout (:func:`puretools.layouts.layer_layout`); detected by default.

    Returns
    -------
    CausalEffects

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=20, progress=False)
    >>> effects = causal_effects(model, data, "layer4", refs, neurons=[2])
    >>> effects.activation.shape, effects.without.shape  # [neurons, n_ref], [neurons, n_ref, 3 slots]
    (torch.Size([1, 20]), torch.Size([1, 20, 3]))
    >>> labelled = effects.concepts[0] >= 0
    >>> bool((effects.drop[0, labelled].nan_to_num(-1).amax(-1) >= 0.5).all())  # the cause halves it
    True
    """
    if not isinstance(dataset, ToyWorld):
        raise PuretoolsError(
            f"Causal labels re-render scenes, so dataset must be a ToyWorld, not {type(dataset).__name__}."
        )
    if not 0 < min_drop <= 1:
        raise PuretoolsError(f"min_drop must lie in (0, 1], got {min_drop}.")
    check_token_reduce(token_reduce)
    idx, neurons = _neuron_rows(references, neurons, dataset, layer)
    device = resolve_device(device, model)
    model = prepare_model(model, device)

    unique = torch.unique(idx)
    placed = dataset._scenes["placed"][unique.numpy()]  # [U, 3]
    rows = [(int(u), []) for u in unique]  # the full image first, then one variant per object
    variant = np.full((len(unique), placed.shape[1]), -1, dtype=np.int64)
    for r, u in enumerate(unique.tolist()):
        for slot in np.nonzero(placed[r])[0]:
            variant[r, slot] = len(rows)
            rows.append((u, [int(slot)]))
    maxima = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        images = dataset._render_rows([u for u, _ in chunk], [d for _, d in chunk])
        images = images.to(device)
        if s == 0:
            layout = layer_layout(model, layer, images[:2], layout)
        out = layer_output(model, images, layer).float()
        maxima.append(layout.reduce(out, token_reduce if layout.is_tokens else "max").cpu())
    maxima = torch.cat(maxima)  # [rows, C]
    full = maxima[: len(unique)]  # [U, C]
    variant_t = torch.from_numpy(variant)
    without_u = torch.where(variant_t[..., None] >= 0, maxima[variant_t.clamp(min=0)],
                            torch.tensor(float("nan")))  # [U, 3, C]  # fmt: skip
    position = torch.searchsorted(unique, idx)  # [N, n_ref] -> row in unique
    channel = torch.tensor(neurons)[:, None].expand_as(idx)
    activation = full[position, channel]  # [N, n_ref]
    without = without_u[position, :, channel]  # [N, n_ref, 3]
    concept_u = torch.from_numpy(np.where(placed, dataset._scenes["concept"][unique.numpy()], -1))
    object_concepts = concept_u[position]  # [N, n_ref, 3]

    lowered = activation.unsqueeze(-1) - without  # NaN for empty slots
    score = torch.nan_to_num(lowered, nan=-torch.inf)
    best = score.max(-1)
    has_object = (object_concepts >= 0).any(-1)
    tie = (score == best.values.unsqueeze(-1)).sum(-1) > 1
    explained = has_object & ~tie & (activation > 0) & (best.values >= min_drop * activation)
    slots = torch.where(has_object, best.indices, torch.tensor(-1))
    label = object_concepts.gather(-1, best.indices.unsqueeze(-1)).squeeze(-1)
    concepts = torch.where(explained, label, torch.tensor(-1))
    return CausalEffects(neurons, idx, activation, without, object_concepts, slots, concepts, float(min_drop))


def causal_concepts(
    model: nn.Module,
    dataset: ToyWorld,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int] | torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Causal label of every reference: the concept of the object whose removal lowers the neuron most.

    For each reference image the neuron's spatial max activation is measured again with each
    object removed (:func:`causal_effects`); the label is the concept of the object whose
    removal lowers it most, or -1 where that removal lowers it by less than half (no single
    object explains the activation).

    Parameters
    ----------
    model, dataset, layer, references, neurons
        As in :func:`puretools.circuit_attributions`; ``dataset`` must be a :class:`ToyWorld`.
    **kwargs
        ``min_drop``, ``batch_size``, ``device`` of :func:`causal_effects`.

    Returns
    -------
    LongTensor [len(neurons), n_ref]

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=20, progress=False)
    >>> labels = causal_concepts(model, data, "layer4", refs)  # [8 channels, 20 references]
    >>> labels.shape, bool((labels >= -1).all())
    (torch.Size([8, 20]), True)
    """
    return causal_effects(model, dataset, layer, references, neurons, **kwargs).concepts


def reference_concepts(
    model: nn.Module,
    dataset: ToyWorld,
    layer: str,
    references: References | torch.Tensor,
    neurons: Sequence[int] | torch.Tensor | None = None,
    kind: Literal["causal", "dominant"] = "causal",
) -> torch.Tensor:
    """One ground-truth concept per reference, causal (default) or dominant.

    ``"causal"``: :func:`causal_concepts` (-1 where no single object explains the
    activation). ``"dominant"``: the older heuristic, :func:`dominant_concepts` (the neuron's
    favourite concept among those in the image, whichever object made it fire).

    Returns
    -------
    LongTensor [len(neurons), n_ref]

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=20, progress=False)
    >>> causal = reference_concepts(model, data, "layer4", refs, neurons=[0, 1])
    >>> dominant = reference_concepts(model, data, "layer4", refs, neurons=[0, 1], kind="dominant")
    >>> causal.shape == dominant.shape == (2, 20), bool((dominant >= 0).all())
    (True, True)
    """
    if kind == "causal":
        return causal_concepts(model, dataset, layer, references, neurons)
    if kind == "dominant":
        idx, _ = _neuron_rows(references, neurons, dataset, layer)
        return torch.stack([dominant_concepts(dataset.labels[row]) for row in idx])
    raise PuretoolsError(f"kind must be 'causal' or 'dominant', not {kind!r}.")
