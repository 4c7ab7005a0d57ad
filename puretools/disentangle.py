"""Disentanglement benchmark: PURE and its rivals split polysemantic neurons, scored against ground truth.

Methods (every one scored against the same ground truth, none tuned on it):

- ``PURE-gradient``: k-means on the gradient circuits from the lower layer (the paper's PURE).
- ``PURE-LRP``: k-means on LRP circuits (EpsilonPlusFlat with the ResNet canonizer, CRP-style).
- ``PURE-cosine``: k-means on the gradient circuits scaled to unit length (cosine distance): a
  circuit says where the relevance comes from, so its direction, not its size, should count.
- ``activations``: k-means on the spatial mean activations of the layer's own channels (the
  paper's baseline).
- ``SAE``: a TopK sparse autoencoder (:mod:`puretools.sae`, overcomplete) trained on the train
  split's activations of the layer; each reference goes to the latent contributing most to
  the neuron at its max location (no k to choose).

Cases, on a toy model (:func:`compare_on_toy`):

- ``natural``: the model's own polysemantic neurons (at least two concepts with >= 20 % of the
  causally labelled references), scored against causal labels (references without one are
  left out and counted); k = the neuron's number of such concepts. ``natural-dominant``: the
  same clusterings scored against the older dominant-concept labels.
- ``planted``: rectified class-activation maps of two concepts summed into an extra channel
  (:mod:`puretools.planted`), scored against each reference's true source; k = 2. All concept
  pairs are planted and the ones whose top references split most evenly between the two
  sources are kept: chosen by ground-truth balance, never by a method's score.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import cache, toyworld
from .checks import check_int, check_number
from .circuits import circuit_attributions
from .errors import PuretoolsError
from .models import get_module
from .pipeline import Pipeline
from .planted import class_activation_units, plant_neurons, planted_sources
from .progress import tqdm
from .reference_type import References
from .references import collect_references
from .sae import LayerSAE, activations_at_max, sae_split, train_layer_sae
from .virtual import VirtualNeurons, activation_features

__all__ = ["CASES", "METHODS", "ToyComparison", "aggregate", "compare_on_toy", "format_table", "split_neurons"]

METHODS = ("PURE-gradient", "PURE-LRP", "PURE-cosine", "activations", "SAE")
CASES = ("natural", "planted", "natural-dominant")


@dataclass(frozen=True)
class ToyComparison:
    """Scores of every method on one toy model (:func:`compare_on_toy`).

    Attributes
    ----------
    scores : dict
        ``scores[method][case]``: mean ``ari`` and ``purity`` over the neurons,
        ``per_neuron_ari``, and the references ``scored`` and ``excluded`` (unlabelled).
    natural_neurons, natural_k : list of int
        The polysemantic neurons and the k used for each.
    planted_pairs : list of (str, str)
        Concepts of each planted neuron, most balanced first, with ``planted_balance``: the
        smaller source's share of its references.
    sae : dict
        The SAE's size, sparsity, reconstruction R2 on its training positions, dead latents.
    unlabelled : dict
        References without a causal label (natural) or without a source (planted).
    times_s : dict
        Wall time of each stage.
    """

    scores: dict
    natural_neurons: list[int]
    natural_k: list[int]
    planted_pairs: list[tuple[str, str]]
    planted_balance: list[float]
    sae: dict
    unlabelled: dict
    times_s: dict = field(default_factory=dict)

    def ari(self, method: str, case: str) -> float:
        """Mean ARI of ``method`` on ``case`` (NaN when the case has no neuron)."""
        return self.scores[method].get(case, {}).get("ari", float("nan"))


def _unit_length(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _score(labels: torch.Tensor, truth: torch.Tensor) -> dict:
    per = [toyworld.ground_truth_scores(c, t) for c, t in zip(labels, truth)]
    ari = [s["ari"] for s in per]
    return {"ari": float(np.nanmean(ari)), "purity": float(np.nanmean([s["purity"] for s in per])),
            "per_neuron_ari": [round(a, 4) for a in ari], "scored": sum(s["n_scored"] for s in per),
            "excluded": sum(s["n_excluded"] for s in per)}  # fmt: skip


def split_neurons(
    model: nn.Module,
    dataset,
    layer: str,
    lower_layer: str,
    references: References,
    neurons: list[int],
    ks: list[int],
    sae: LayerSAE,
    read_layer: str | None = None,
    readouts: list | None = None,
) -> dict[str, torch.Tensor]:
    """Cluster labels [len(neurons), n_ref] of every method of :data:`METHODS`.

    Parameters
    ----------
    model, dataset, layer, lower_layer, references
        As in :func:`puretools.circuit_attributions`.
    neurons : list of int
        Channels of ``layer`` to split.
    ks : list of int
        k-means clusters per neuron.
    sae : LayerSAE
        Trained on ``read_layer`` (default ``layer``).
    read_layer : str, optional
        The layer whose channels the activation baseline and the SAE read (its spatial size
        must match ``layer``'s), e.g. the original layer under planted channels.
    readouts : list, optional
        Per neuron, the SAE readout (:func:`puretools.sae.sae_contributions`): a channel of
        ``read_layer`` (default: the neuron itself) or a function of its vector.

    Returns
    -------
    dict
        Method name -> LongTensor [len(neurons), n_ref] of cluster labels.

    Examples
    --------
    >>> import puretools as pt
    >>> model, data = pt.load_model("toy"), toyworld.ToyWorld("test", n=300)
    >>> refs = pt.collect_references(model, data, "layer4", n_ref=20, progress=False)
    >>> sae = train_layer_sae(model, toyworld.ToyWorld("train", n=100), "layer4", epochs=1)
    >>> labels = split_neurons(model, data, "layer4", "layer3", refs, [1, 5], [2, 2], sae)
    >>> list(labels) == list(METHODS), labels["PURE-gradient"].shape
    (True, torch.Size([2, 20]))
    """
    read_layer = layer if read_layer is None else read_layer
    readouts = list(neurons) if readouts is None else readouts
    grad = circuit_attributions(model, dataset, layer, lower_layer, references, neurons=neurons, progress=False)
    lrp = circuit_attributions(model, dataset, layer, lower_layer, references, neurons=neurons, method="lrp",
                               progress=False)  # fmt: skip
    acts = activation_features(model, dataset, read_layer, references.indices[neurons])
    h = activations_at_max(model, dataset, layer, references, neurons, read_layer=read_layer)

    def kmeans(x):
        return VirtualNeurons(seed=0).fit(x, k=ks).labels

    return {
        "PURE-gradient": kmeans(grad),
        "PURE-LRP": kmeans(lrp),
        "PURE-cosine": kmeans(_unit_length(grad)),
        "activations": kmeans(acts),
        "SAE": torch.stack([sae_split(sae, h[j], readouts[j]) for j in range(len(neurons))]),
    }


def compare_on_toy(
    model: nn.Module,
    dataset: toyworld.ToyWorld,
    train: toyworld.ToyWorld,
    n_pairs: int = 12,
    n_ref: int = 100,
    min_share: float = 0.2,
    sae_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> ToyComparison:
    """Every method of :data:`METHODS` on a toy model's natural and planted polysemantic neurons.

    Parameters
    ----------
    model : nn.Module
        A toy model (``load_model("toy")`` or ``toyworld.load_toy_model(path)``).
    dataset : ToyWorld
        Where the references come from and the scores are measured (the test split).
    train : ToyWorld
        Images the SAE is trained on (the train split).
    n_pairs : int
        Planted neurons: the most balanced concept pairs.
    n_ref : int
        References per neuron.
    min_share : float
        Share of the causally labelled references a concept needs to count for a neuron.
    sae_seed : int
    cache_dir : path or None
        Store/reuse the whole comparison (and the trained SAE), fingerprinted by the model,
        every image of both data sets, the methods and every setting above: a rerun reads it
        back in a fraction of a second (``times_s`` then holds the times of the run that made it).
    progress : bool
        Show a progress bar over the four stages (references and causal labels, SAE training,
        natural neurons, planted neurons).

    Returns
    -------
    ToyComparison

    Examples
    --------
    >>> import puretools as pt
    >>> model = pt.load_model("toy")
    >>> small = compare_on_toy(model, toyworld.ToyWorld("test", n=500), toyworld.ToyWorld("train", n=100),
    ...                        n_pairs=1, n_ref=20)
    >>> sorted(small.scores) == sorted(METHODS), len(small.planted_pairs)
    (True, 1)
    >>> -1 <= small.ari("PURE-gradient", "planted") <= 1
    True
    """
    n_pairs = check_int(n_pairs, "n_pairs", low=1)
    n_ref = check_int(n_ref, "n_ref", low=2, fix="A neuron needs at least 2 references to be split.")
    min_share = check_number(min_share, "min_share", 0, 1, low_open=True)
    sae_seed = check_int(sae_seed, "sae_seed", low=0)
    for name, value, split in (("dataset", dataset, "test"), ("train", train, "train")):
        if not isinstance(value, toyworld.ToyWorld):
            raise PuretoolsError(
                f"{name} must be a toyworld.ToyWorld split (its ground truth is what the methods are scored on), "
                f"got {type(value).__name__}; e.g. {name}=toyworld.ToyWorld({split!r})."
            )
    key = None
    if cache_dir is not None:
        key = cache.fingerprint(kind="toy-comparison", model=cache.model_fingerprint(model),
                                dataset=cache.dataset_fingerprint(dataset), train=cache.dataset_fingerprint(train),
                                n_pairs=n_pairs, n_ref=n_ref, min_share=min_share, sae_seed=sae_seed,
                                methods=list(METHODS), cases=list(CASES))  # fmt: skip
        found = cache.load_entry(cache_dir, "toy-comparison", key)
        if found is not None:
            info = found[1]
            info["planted_pairs"] = [tuple(p) for p in info["planted_pairs"]]
            return ToyComparison(**info)
    bar = tqdm(total=4, desc="benchmark stages", unit="stage", disable=not progress)
    try:
        result = _compare_on_toy(model, dataset, train, n_pairs, n_ref, min_share, sae_seed, cache_dir, bar)
    finally:
        bar.close()
    if key is not None:
        cache.save_cached(cache_dir, "toy-comparison", key, {"done": torch.ones(1)}, dataclasses.asdict(result))
    return result


def _compare_on_toy(model, dataset, train, n_pairs, n_ref, min_share, sae_seed, cache_dir, bar) -> ToyComparison:
    """The body of :func:`compare_on_toy`; ``bar`` advances once per stage."""
    layer, lower = toyworld.LAYER, toyworld.LOWER_LAYER
    times = {}
    start = time.perf_counter()
    bar.set_postfix_str("references and causal labels")
    refs = Pipeline(model, dataset, layer, lower, n_ref=n_ref, progress=False).references()
    causal = toyworld.causal_concepts(model, dataset, layer, refs)  # [C, n_ref]
    n_concepts = len(toyworld.CONCEPTS)
    shares = toyworld.label_shares(causal, n_concepts)
    natural = toyworld.polysemantic_neurons(refs, dataset.labels, min_share=min_share, concepts=causal)
    ks = [int((shares[n] >= min_share).sum()) for n in natural]
    times["references_and_causal_labels"] = time.perf_counter() - start
    bar.update()

    start = time.perf_counter()
    bar.set_postfix_str("SAE training")
    sae = train_layer_sae(model, train, layer, seed=sae_seed, cache_dir=cache_dir)
    times["sae_training"] = time.perf_counter() - start
    bar.update()
    bar.set_postfix_str("natural neurons")

    scores: dict = {m: {} for m in METHODS}
    start = time.perf_counter()
    if natural:
        labels = split_neurons(model, dataset, layer, lower, refs, natural, ks, sae)
        dominant = torch.stack([toyworld.dominant_concepts(dataset.labels[refs.indices[n]]) for n in natural])
        for m in METHODS:
            scores[m]["natural"] = _score(labels[m], causal[natural])
            scores[m]["natural-dominant"] = _score(labels[m], dominant)
    times["natural"] = time.perf_counter() - start
    bar.update()
    bar.set_postfix_str("planted neurons")

    start = time.perf_counter()
    pairs_all = [(a, b) for a in range(n_concepts) for b in range(a + 1, n_concepts)]
    units = class_activation_units(model.fc)
    everything = plant_neurons(model, layer, units, pairs_all)
    prefs = collect_references(everything.model, dataset, everything.layer, n_ref=n_ref, progress=False)
    sources = planted_sources(everything, dataset, prefs.indices[everything.channels])  # [n_pairs_all, n_ref]
    balance = []
    for p, (a, _) in enumerate(pairs_all):
        known = sources[p][sources[p] >= 0]
        share = float((known == a).float().mean()) if len(known) else 0.0
        balance.append(min(share, 1 - share))
    order = sorted(range(len(pairs_all)), key=lambda p: (-balance[p], p))[:n_pairs]
    pairs = [pairs_all[p] for p in order]
    planted = plant_neurons(model, layer, units, pairs)
    prefs = collect_references(planted.model, dataset, planted.layer, n_ref=n_ref, progress=False)
    truth = planted_sources(planted, dataset, prefs.indices[planted.channels])
    plant = get_module(planted.model, planted.layer)
    readouts = [lambda x, c=c: plant(x[:, :, None, None])[:, c, 0, 0] for c in planted.channels]
    labels = split_neurons(planted.model, dataset, planted.layer, lower, prefs, planted.channels,
                           [2] * len(pairs), sae, read_layer=planted.inner, readouts=readouts)  # fmt: skip
    for m in METHODS:
        scores[m]["planted"] = _score(labels[m], truth)
    times["planted"] = time.perf_counter() - start
    bar.update()
    bar.set_postfix_str("")

    names = toyworld.CONCEPTS
    return ToyComparison(
        scores=scores,
        natural_neurons=natural,
        natural_k=ks,
        planted_pairs=[(names[a], names[b]) for a, b in pairs],
        planted_balance=[round(balance[p], 3) for p in order],
        sae={"n_latents": sae.n_latents, "top_k": sae.top_k, "r2_train": round(sae.r2, 4),
             "dead_latents": round(sae.dead, 4), "train_images": len(train)},  # fmt: skip
        unlabelled={"natural": int((causal[natural] < 0).sum()), "planted": int((truth < 0).sum())},
        times_s={k: round(v, 1) for k, v in times.items()},
    )


def aggregate(results: list[ToyComparison]) -> dict:
    """Mean, spread (sample sd), min and max over models of each method's mean ARI, per case.

    Returns
    -------
    dict
        ``table[method][case]`` = ``{"mean", "sd", "min", "max", "per_model"}`` (``sd`` None
        for one model).

    Examples
    --------
    >>> a = ToyComparison({m: {"natural": {"ari": 0.8}} for m in METHODS}, [], [], [], [], {}, {})
    >>> b = ToyComparison({m: {"natural": {"ari": 0.6}} for m in METHODS}, [], [], [], [], {}, {})
    >>> aggregate([a, b])["SAE"]["natural"]
    {'mean': 0.7, 'sd': 0.1414, 'min': 0.6, 'max': 0.8, 'per_model': [0.8, 0.6]}
    """
    if isinstance(results, ToyComparison) or not isinstance(results, (list, tuple)) or not results or not all(
        isinstance(r, ToyComparison) for r in results
    ):
        raise PuretoolsError(
            f"results must be a non-empty list of ToyComparison (from compare_on_toy), got {type(results).__name__}; "
            "pass [compare_on_toy(...)] for one model."
        )
    table: dict = {}
    for m in METHODS:
        table[m] = {}
        for case in CASES:
            values = [r.scores[m][case]["ari"] for r in results if case in r.scores[m]]
            if values:
                table[m][case] = {
                    "mean": round(float(np.mean(values)), 4),
                    "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None,
                    "min": round(float(np.min(values)), 4),
                    "max": round(float(np.max(values)), 4),
                    "per_model": [round(v, 4) for v in values],
                }
    return table


def format_table(table: dict) -> str:
    """The table of :func:`aggregate` as text: one row per method, one column per case.

    Examples
    --------
    >>> a = ToyComparison({m: {"natural": {"ari": 0.8}} for m in METHODS}, [], [], [], [], {}, {})
    >>> print(format_table(aggregate([a])).splitlines()[1])
    PURE-gradient                0.80                 -                 -
    """
    if not isinstance(table, dict) or not table or not all(isinstance(row, dict) for row in table.values()):
        raise PuretoolsError(f"table must be the dict that aggregate() returns, got {type(table).__name__}.")
    many = any(c.get("sd") is not None for row in table.values() for c in row.values())
    width = 28 if many else 18
    lines = [f"{'method':15s}" + "".join(f"{c:>{width}s}" for c in CASES)]
    for m, row in table.items():
        cells = []
        for case in CASES:
            c = row.get(case)
            if c is None:
                cells.append(f"{'-':>{width}s}")
            elif c.get("sd") is not None:
                cells.append(f"{c['mean']:.2f} +- {c['sd']:.2f} ({c['min']:.2f}-{c['max']:.2f})".rjust(width))
            else:
                cells.append(f"{c['mean']:{width}.2f}")
        lines.append(f"{m:15s}" + "".join(cells))
    return "\n".join(lines)
