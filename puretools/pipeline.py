"""PURE end to end on one model and data set: references -> circuits -> virtual neurons -> patches, heatmaps.

:class:`Pipeline` holds the model, the data set, the two layers and the settings, and computes
each step on first use, from the public functions, keeping the result on the object (and,
with a ``cache_dir``, on disk, fingerprinted as those functions do). The toy-world evaluation
(:func:`puretools.evaluate_toy_world`), the disentanglement benchmark
(:func:`puretools.compare_on_toy`), the explorer (:func:`puretools.widgets.prepare_explorer`),
the command line and the benchmarks all run it, so its defaults are the package's:

- ``n_ref = 100`` reference samples per neuron (the paper's);
- ``method = "gradient"``: the attribution rule of the **circuits** (gradient x activation, the
  PURE code; ``"lrp"``: zennit's EpsilonPlusFlat with the model's canonizers, as CRP);
- ``heatmap_method = None``: the rule of the **virtual heatmaps**, by default the circuits'
  rule, so a virtual neuron is drawn with the relevance it was clustered on;
- ``k = 2`` virtual neurons per neuron, k-means with ``seed = 0``.

The reference heatmaps behind the patches are CRP's (LRP, the model's canonizers), whatever
``method`` is: :func:`puretools.reference_heatmaps`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from .circuits import Method, circuit_attributions
from .data import denormalize as imagenet_denormalize
from .errors import PuretoolsError
from .forward import collate_images
from .patches import PatchMode, patches_from_heatmaps, reference_heatmaps
from .reference_type import References
from .references import collect_references
from .routing import virtual_heatmaps
from .subnet import Precision
from .virtual import VirtualNeurons, activation_features

__all__ = ["DEFAULT_K", "DEFAULT_METHOD", "DEFAULT_N_REF", "Pipeline"]

DEFAULT_N_REF = 100
DEFAULT_METHOD: Method = "gradient"
DEFAULT_K = 2

Neurons = Sequence[int] | torch.Tensor | None


class Pipeline:
    """PURE on one model, data set and pair of layers; every step computed once, on first use.

    Parameters
    ----------
    model : torch.nn.Module
    dataset : torch.utils.data.Dataset
        Items are ``(image, ...)``; the references index into it.
    layer, lower_layer : str
        The layer whose neurons are split and the layer the circuits are read at, e.g.
        ``"layer4"`` and ``"layer3"``.
    references : References or None
        Already collected references of ``layer`` on ``dataset`` (checked); None: collected
        with :func:`puretools.collect_references` on first use.
    n_ref : int
        Reference samples per neuron.
    method : {"gradient", "lrp"}
        Attribution rule of the circuits (:func:`puretools.circuit_attributions`).
    heatmap_method : {"gradient", "lrp"} or None
        Rule of the virtual heatmaps (:func:`puretools.virtual_heatmaps`); None: ``method``.
    k : int, sequence of int or "auto"
        Virtual neurons per neuron (:meth:`puretools.VirtualNeurons.fit`).
    seed : int
        k-means seed.
    cache_dir : path or None
        Where references, circuits and reference heatmaps are cached (None: not cached).
    device : str, torch.device or None
        None: the model's device.
    batch_size : int
        Images per forward pass when collecting references.
    pair_batch_size, max_memory, precision
        The circuits' ``batch_size``, ``max_memory`` and ``precision``.
    num_workers : int
        Data-loading processes.
    progress : bool
        Progress bars.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import TensorDataset
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU())
    >>> data = TensorDataset(torch.randn(30, 3, 8, 8))
    >>> pipe = Pipeline(model.eval(), data, "3", "1", n_ref=10)
    >>> pipe.references().indices.shape  # 4 neurons, 10 references each
    torch.Size([4, 10])
    >>> pipe.circuits([0, 2]).shape  # [neurons, n_ref, channels of the lower layer]
    torch.Size([2, 10, 6])
    >>> vn = pipe.virtual_neurons(neurons=[0, 2])
    >>> vn.neurons, vn.ks, pipe.virtual_neurons(neurons=[0, 2]) is vn
    ([0, 2], [2, 2], True)
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        layer: str,
        lower_layer: str,
        references: References | None = None,
        *,
        n_ref: int = DEFAULT_N_REF,
        method: Method = DEFAULT_METHOD,
        heatmap_method: Method | None = None,
        k: int | Sequence[int] | Literal["auto"] = DEFAULT_K,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        pair_batch_size: int | None = None,
        max_memory: float | None = None,
        precision: Precision = "float32",
        num_workers: int = 0,
        progress: bool = False,
    ) -> None:
        for name, value in (("method", method), ("heatmap_method", heatmap_method)):
            if value not in ("gradient", "lrp") and not (name == "heatmap_method" and value is None):
                raise PuretoolsError(f"{name} must be 'gradient' or 'lrp', not {value!r}.")
        if references is not None and not isinstance(references, References):
            raise PuretoolsError(
                f"references must be puretools.References (from collect_references) or None, "
                f"not {type(references).__name__}.")
        self.model, self.dataset, self.layer, self.lower_layer = model, dataset, layer, lower_layer
        self.n_ref = references.n_ref if references is not None else n_ref
        self.method: Method = method
        self.heatmap_method: Method = method if heatmap_method is None else heatmap_method
        self.k, self.seed = k, seed
        self.cache_dir, self.device, self.progress = cache_dir, device, progress
        self.batch_size, self.pair_batch_size, self.num_workers = batch_size, pair_batch_size, num_workers
        self.max_memory, self.precision = max_memory, precision
        self._references = references
        self._circuits: dict[tuple, torch.Tensor] = {}
        self._activations: dict[tuple, torch.Tensor] = {}
        self._virtual: dict[tuple, VirtualNeurons] = {}
        self._heatmaps: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"Pipeline(layer={self.layer!r}, lower_layer={self.lower_layer!r}, n_ref={self.n_ref}, "
                f"method={self.method!r}, heatmap_method={self.heatmap_method!r}, k={self.k!r})")

    # ------------------------------------------------------------------ steps

    def references(self) -> References:
        """The top ``n_ref`` references of every neuron of ``layer`` (:func:`puretools.collect_references`)."""
        if self._references is None:
            self._references = collect_references(
                self.model, self.dataset, self.layer, n_ref=self.n_ref, batch_size=self.batch_size,
                device=self.device, num_workers=self.num_workers, cache_dir=self.cache_dir, progress=self.progress,
            )
        return self._references

    def neurons(self, neurons: Neurons = None) -> list[int]:
        """``neurons`` as a list of channels (None: every channel of ``layer``)."""
        if neurons is None:
            return list(range(self.references().n_channels))
        return [int(n) for n in torch.as_tensor(neurons).reshape(-1)]

    def circuits(self, neurons: Neurons = None, method: Method | None = None) -> torch.Tensor:
        """Circuits [len(neurons), n_ref, C_lower] (:func:`puretools.circuit_attributions`).

        ``method`` (default: the pipeline's) is the attribution rule. When the circuits of
        every neuron were computed already, a subset is read from them.
        """
        method = self.method if method is None else method
        ids = self.neurons(neurons)
        key = (tuple(ids), method)
        if key not in self._circuits:
            everything = (tuple(range(self.references().n_channels)), method)
            if everything in self._circuits and neurons is not None:
                return self._circuits[everything][ids]
            self._circuits[key] = circuit_attributions(
                self.model, self.dataset, self.layer, self.lower_layer, self.references(),
                neurons=None if neurons is None else ids, method=method, batch_size=self.pair_batch_size, max_memory=self.max_memory, device=self.device,
                precision=self.precision, cache_dir=self.cache_dir, progress=self.progress,
                num_workers=self.num_workers,
            )
        return self._circuits[key]

    def activations(self, neurons: Neurons = None) -> torch.Tensor:
        """The activation baseline's features [len(neurons), n_ref, C_layer] (:func:`puretools.activation_features`)."""
        ids = self.neurons(neurons)
        if tuple(ids) not in self._activations:
            self._activations[tuple(ids)] = activation_features(
                self.model, self.dataset, self.layer, self.references(), neurons=None if neurons is None else ids,
                device=self.device)
        return self._activations[tuple(ids)]

    def virtual_neurons(
        self, k: int | Sequence[int] | Literal["auto"] | None = None, neurons: Neurons = None,
        method: Method | None = None,
    ) -> VirtualNeurons:
        """k-means virtual neurons of ``neurons``, fitted on their circuits (``k`` default: the pipeline's)."""
        k = self.k if k is None else k
        method = self.method if method is None else method
        ids = self.neurons(neurons)
        key = (tuple(ids), k if isinstance(k, (int, str)) else tuple(int(v) for v in k), method)
        if key not in self._virtual:
            self._virtual[key] = VirtualNeurons(seed=self.seed).fit(
                self.circuits(neurons, method), k=k, neurons=ids, layer=self.layer, lower_layer=self.lower_layer)
        return self._virtual[key]

    def reference_heatmaps(self, neurons: Neurons = None, batch_size: int = 256) -> torch.Tensor:
        """CRP heatmaps [len(neurons), n_ref, H, W] of each neuron on its references (:func:`puretools.reference_heatmaps`)."""
        ids = self.neurons(neurons)
        if tuple(ids) not in self._heatmaps:
            self._heatmaps[tuple(ids)] = reference_heatmaps(
                self.model, self.dataset, self.layer, self.references(), None if neurons is None else ids,
                batch_size=batch_size,
                device=self.device, cache_dir=self.cache_dir)
        return self._heatmaps[tuple(ids)]

    def reference_images(self, neurons: Neurons = None,
                         denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The reference images [len(neurons), n_ref, 3, H, W], mapped by ``denormalize`` (default: ImageNet's) to [0, 1]."""
        ids = self.neurons(neurons)
        idx = self.references().indices[ids]
        denormalize = imagenet_denormalize if denormalize is None else denormalize
        images = denormalize(collate_images([self.dataset[int(i)] for i in idx.reshape(-1)]))
        return images.reshape(*idx.shape, *images.shape[1:])

    def patches(
        self, neurons: Neurons = None, mode: PatchMode = "crop", size: int | None = None,
        denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Reference patches [len(neurons), n_ref, 3, s, s] in [0, 1] (:func:`puretools.patches_from_heatmaps`
        on :meth:`reference_images` and :meth:`reference_heatmaps`)."""
        images = self.reference_images(neurons, denormalize)
        heat = self.reference_heatmaps(neurons)
        out = patches_from_heatmaps(images.flatten(0, 1), heat.flatten(0, 1), mode=mode, size=size)
        return out.reshape(*images.shape[:2], *out.shape[1:])

    def heatmaps(
        self, neuron: int, images: torch.Tensor | Dataset, k: int | None = None, neurons: Neurons = None,
        return_full: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps [k, M, H, W] of the virtual neurons of ``neuron`` on ``images`` [M, 3, H, W].

        :func:`puretools.virtual_heatmaps` with ``heatmap_method``, for the virtual neurons
        :meth:`virtual_neurons` ``(k, neurons)`` (``neurons`` default: ``[neuron]``);
        ``return_full``: also the whole neuron's heatmap [M, H, W].
        """
        vn = self.virtual_neurons(k, [int(neuron)] if neurons is None else neurons)
        return virtual_heatmaps(self.model, images, self.layer, self.lower_layer, vn, int(neuron),
                                method=self.heatmap_method, return_full=return_full, device=self.device)
