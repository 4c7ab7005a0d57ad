"""Evaluation as in the paper: intra/inter-cluster distances, distance correlation, the toy-world evaluation.

Polysemanticity scores, built on these distances, are in :mod:`puretools.polysemanticity`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from . import toyworld
from .checks import check_choice, check_int, check_optional_int
from .circuits import Method
from .errors import PuretoolsError
from .models import load_model
from .pipeline import DEFAULT_K, DEFAULT_METHOD, Pipeline
from .virtual import VirtualNeurons

__all__ = [
    "ToyEvaluation",
    "evaluate_toy_world",
    "PAPER_CORRELATIONS",
    "PAPER_DISTANCES",
    "ClusterDistances",
    "DistanceRow",
    "DistanceTable",
    "MeanSem",
    "cluster_distances",
    "distance_correlation",
    "evaluate_clusterings",
    "mean_sem",
    "pairwise_distances",
]

Average = Literal["clusters", "pairs"]


class MeanSem(NamedTuple):
    """A mean over neurons (or subsets) and its standard error ``std(ddof=1) / sqrt(n)``."""

    mean: float
    sem: float


def mean_sem(values: Sequence[float] | np.ndarray | torch.Tensor) -> MeanSem:
    """Mean and standard error of the finite entries (NaN where there are none / only one).

    Examples
    --------
    >>> mean_sem([1.0, 2.0, 3.0, float("nan")])
    MeanSem(mean=2.0, sem=0.5773502691896258)
    """
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return MeanSem(math.nan, math.nan)
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return MeanSem(float(v.mean()), sem)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` [..., n, D] -> [..., n, n], in float64.

    Examples
    --------
    >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[0., 5.],
            [5., 0.]], dtype=torch.float64)
    """
    x = torch.as_tensor(x).detach().double().cpu()
    if not torch.isfinite(x).all():
        raise PuretoolsError("The embeddings contain NaN or Inf values; check the embedder's inputs and outputs.")
    diff = x[..., :, None, :] - x[..., None, :, :]
    return diff.pow(2).sum(-1).sqrt()


@dataclass(frozen=True)
class ClusterDistances:
    """Mean Euclidean distances among one neuron's references, see :func:`cluster_distances`."""

    intra: float
    inter: float
    unclustered: float


def _labels_array(labels) -> np.ndarray:
    if hasattr(labels, "labels") and not isinstance(labels, (np.ndarray, torch.Tensor)):
        labels = labels.labels  # VirtualNeurons
    if labels is None:
        raise PuretoolsError("The VirtualNeurons are not fitted yet: call vn.fit(circuits, k, neurons=...) first.")
    t = torch.as_tensor(labels).cpu()
    if t.is_floating_point() and not (torch.isfinite(t).all() and (t == t.round()).all()):
        raise PuretoolsError(f"labels must be integer cluster ids, got values such as {t.reshape(-1)[:3].tolist()}.")
    return np.asarray(t).astype(np.int64)


def _distances_from_matrix(dist: np.ndarray, labels: np.ndarray, average: Average) -> ClusterDistances:
    n = len(labels)
    off = ~np.eye(n, dtype=bool)
    same = (labels[:, None] == labels[None, :]) & off
    other = labels[:, None] != labels[None, :]
    unclustered = float(dist[off].mean()) if n > 1 else math.nan
    inter = float(dist[other].mean()) if other.any() else math.nan
    if average == "pairs":
        intra = float(dist[same].mean()) if same.any() else math.nan
    else:
        per_cluster = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            if len(members) > 1:
                block = dist[np.ix_(members, members)]
                per_cluster.append(block[~np.eye(len(members), dtype=bool)].mean())
        intra = float(np.mean(per_cluster)) if per_cluster else math.nan
    return ClusterDistances(intra, inter, unclustered)


def _check_average(average: str) -> None:
    check_choice(average, "average", ("clusters", "pairs"))


def cluster_distances(
    embeddings: torch.Tensor, labels: torch.Tensor | np.ndarray, average: Average = "clusters"
) -> ClusterDistances:
    """Mean Euclidean distances within clusters, between clusters and overall, for one neuron.

    With d(i, j) the Euclidean distance between the embeddings of references i and j:

    - ``intra`` (lower is purer). ``average="clusters"`` (default): for each cluster with at
      least two members, the mean of d(i, j) over its ordered pairs i != j; then the
      unweighted mean over those clusters (singleton clusters have no pairs and are left
      out). ``average="pairs"``: the mean of d(i, j) over all pairs i != j in the same
      cluster, pooled across clusters, so large clusters weigh more -- the PURE reference
      code's ``compute_distances``.
    - ``inter`` (higher is better separated): the mean of d(i, j) over all pairs in
      different clusters.
    - ``unclustered``: the mean of d(i, j) over all pairs i != j.

    Undefined values (no cluster with two members; a single cluster) are NaN.

    Parameters
    ----------
    embeddings : Tensor [n_ref, D]
    labels : Tensor [n_ref]
        Cluster (virtual neuron) of each reference.
    average : {"clusters", "pairs"}

    Returns
    -------
    ClusterDistances

    Examples
    --------
    >>> x = torch.tensor([[0.0], [2.0], [4.0], [10.0], [11.0]])
    >>> cluster_distances(x, torch.tensor([0, 0, 0, 1, 1]))  # intra = (8/3 + 1) / 2
    ClusterDistances(intra=1.8333333333333333, inter=8.5, unclustered=6.0)
    >>> cluster_distances(x, torch.tensor([0, 0, 0, 1, 1]), average="pairs").intra  # 9 / 4
    2.25
    """
    _check_average(average)
    x = torch.as_tensor(embeddings)
    lab = _labels_array(labels).reshape(-1)
    if x.ndim != 2 or len(x) != len(lab):
        raise PuretoolsError(
            f"Expected embeddings [n_ref, D] and labels [n_ref], got {tuple(x.shape)} and {lab.shape}."
        )
    return _distances_from_matrix(pairwise_distances(x).numpy(), lab, average)


@dataclass(frozen=True)
class DistanceRow:
    """One clustering method's intra/inter distances, mean and sem over neurons."""

    method: str
    intra: MeanSem
    inter: MeanSem
    n_neurons: int | None = None


@dataclass(frozen=True)
class DistanceTable:
    """Result of :func:`evaluate_clusterings`: one row per method plus the unclustered mean.

    Attributes
    ----------
    rows : tuple of DistanceRow
    unclustered : MeanSem
        Mean pairwise distance without clustering (the horizontal line of the paper's figure).
    space : str
        Name of the evaluation embedding space.
    per_neuron : dict
        ``{method: array [N, 2]}`` of per-neuron (intra, inter), and ``"unclustered"``: [N].
    """

    rows: tuple[DistanceRow, ...]
    unclustered: MeanSem
    space: str = "evaluation space"
    per_neuron: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def methods(self) -> list[str]:
        return [r.method for r in self.rows]

    def __getitem__(self, method: str) -> DistanceRow:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(f"No method {method!r}; the table has {self.methods}.")

    def to_markdown(self, digits: int = 2) -> str:
        """A Markdown table: method, intra, inter (mean +- sem), neurons; unclustered below."""

        def fmt(ms: MeanSem) -> str:
            if math.isnan(ms.mean):
                return "n/a"
            return f"{ms.mean:.{digits}f}" + ("" if math.isnan(ms.sem) else f" ± {ms.sem:.{digits}f}")

        lines = [
            "| method | intra ↓ | inter ↑ | neurons |",
            "|---|---|---|---|",
        ]
        for r in self.rows:
            n = "" if r.n_neurons is None else str(r.n_neurons)
            lines.append(f"| {r.method} | {fmt(r.intra)} | {fmt(r.inter)} | {n} |")
        lines.append(f"| unclustered | {fmt(self.unclustered)} | | |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"Mean Euclidean distance in {self.space}\n\n" + self.to_markdown()


def evaluate_clusterings(
    embeddings: torch.Tensor,
    clusterings: Mapping[str, torch.Tensor | np.ndarray],
    average: Average = "clusters",
    space: str = "evaluation space",
) -> DistanceTable:
    """Intra/inter-cluster distances of several clusterings in one evaluation space (the paper's Fig.).

    For every neuron, :func:`cluster_distances` of its references' embeddings under each
    method's labels; then mean and standard error over neurons (neurons where a value is
    undefined are skipped for that value; ``n_neurons`` counts the neurons with a finite
    intra distance).

    Parameters
    ----------
    embeddings : Tensor [N, n_ref, D]
        Evaluation-space embeddings (the paper: CLIP of the cropped reference patches).
    clusterings : mapping of name -> LongTensor [N, n_ref] or a fitted VirtualNeurons
        E.g. ``{"PURE": vn.labels, "activations": act.labels, "DINOv2": dino.labels}``.
    average : {"clusters", "pairs"}
        Definition of the intra distance, see :func:`cluster_distances`.
    space : str
        Name of the evaluation space (for printing and plots).

    Returns
    -------
    DistanceTable

    Examples
    --------
    >>> emb = torch.randn(4, 10, 3)  # 4 neurons, 10 references, 3-d embeddings
    >>> labels = torch.randint(0, 2, (4, 10))
    >>> table = evaluate_clusterings(emb, {"random": labels})
    >>> table.methods, table["random"].n_neurons
    (['random'], 4)
    """
    _check_average(average)
    if not isinstance(clusterings, Mapping) or not clusterings:
        raise PuretoolsError(
            f"clusterings must be a non-empty dict name -> labels [N, n_ref] (or a fitted VirtualNeurons), "
            f"got {clusterings!r:.80}."
        )
    x = torch.as_tensor(embeddings)
    if x.ndim != 3:
        raise PuretoolsError(f"Expected embeddings [N, n_ref, D], got {tuple(x.shape)}.")
    dist = pairwise_distances(x).numpy()
    n_neurons, n_ref = x.shape[:2]
    rows, per_neuron = [], {}
    off_diagonal = ~np.eye(n_ref, dtype=bool)
    unclustered = np.array([dist[i][off_diagonal].mean() if n_ref > 1 else np.nan for i in range(n_neurons)])
    for name, labels in clusterings.items():
        lab = _labels_array(labels)
        if lab.shape != (n_neurons, n_ref):
            raise PuretoolsError(
                f"Labels of {name!r} have shape {lab.shape}; expected [N={n_neurons}, n_ref={n_ref}] like the embeddings."
            )
        values = np.full((n_neurons, 2), np.nan)
        for i in range(n_neurons):
            d = _distances_from_matrix(dist[i], lab[i], average)
            values[i] = d.intra, d.inter
        per_neuron[name] = values
        rows.append(
            DistanceRow(name, mean_sem(values[:, 0]), mean_sem(values[:, 1]), int(np.isfinite(values[:, 0]).sum()))
        )
    per_neuron["unclustered"] = unclustered
    return DistanceTable(tuple(rows), mean_sem(unclustered), space, per_neuron)


def _upper_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise distances i < j within each neuron, concatenated: [N * n_ref * (n_ref - 1) / 2]."""
    d = pairwise_distances(x)
    n = d.shape[-1]
    iu = torch.triu_indices(n, n, offset=1)
    return d[..., iu[0], iu[1]].reshape(-1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else math.nan


def distance_correlation(
    eval_space: torch.Tensor,
    method_spaces: Mapping[str, torch.Tensor],
    n_subsets: int = 30,
    subset_size: int | None = None,
    seed: int = 0,
) -> dict[str, MeanSem]:
    """Pearson correlation between pairwise distances in the evaluation space and in each method's space.

    As in the paper: the neurons are shuffled (seeded) and split into ``n_subsets`` disjoint
    subsets of ``subset_size`` neurons (default ``N // n_subsets``, at least 1). For each
    subset, the distances between every two references of the same neuron (pairs i < j),
    pooled over the subset's neurons, are computed in the evaluation space and in a method's
    space, and their Pearson r is taken. Result: mean r over subsets and its standard error.
    If ``n_subsets * subset_size`` exceeds N, each subset is drawn independently (without
    replacement within a subset). Unlike the reference code, pairs at distance zero are kept
    (it drops them to remove self-pairs; with ground-truth concept embeddings, zero distances
    between equal concept sets are real).

    Parameters
    ----------
    eval_space : Tensor [N, n_ref, D]
        E.g. CLIP embeddings of the reference patches.
    method_spaces : mapping of name -> Tensor [N, n_ref, D_m]
        E.g. ``{"DINOv2": dino, "PURE": circuits, "activations": act_features}``.
    n_subsets, subset_size : int
    seed : int

    Returns
    -------
    dict of name -> MeanSem

    Examples
    --------
    >>> x = torch.randn(12, 6, 4)  # 12 neurons, 6 references
    >>> r = distance_correlation(x, {"same": x, "scaled": 3 * x}, n_subsets=4)
    >>> round(r["same"].mean, 6), round(r["scaled"].mean, 6)
    (1.0, 1.0)
    """
    x0 = torch.as_tensor(eval_space)
    if x0.ndim != 3:
        raise PuretoolsError(f"Expected eval_space [N, n_ref, D], got {tuple(x0.shape)}.")
    n_neurons, n_ref = x0.shape[:2]
    if n_ref < 2:
        raise PuretoolsError("At least two references per neuron are needed for pairwise distances.")
    if not isinstance(method_spaces, Mapping) or not method_spaces:
        raise PuretoolsError(f"method_spaces must be a non-empty dict name -> Tensor [N, n_ref, D], got {method_spaces!r:.80}.")
    n_subsets = check_int(n_subsets, "n_subsets", low=1)
    subset_size = check_optional_int(subset_size, "subset_size", low=1)
    seed = check_int(seed, "seed", low=0)
    spaces = {}
    for name, space in method_spaces.items():
        s = torch.as_tensor(space)
        if s.ndim != 3 or tuple(s.shape[:2]) != (n_neurons, n_ref):
            raise PuretoolsError(
                f"Space {name!r} has shape {tuple(s.shape)}; expected [N={n_neurons}, n_ref={n_ref}, D]."
            )
        spaces[name] = s
    size = max(1, n_neurons // n_subsets) if subset_size is None else subset_size
    if not 1 <= size <= n_neurons:
        raise PuretoolsError(f"subset_size={size} must lie in 1..{n_neurons} (the number of neurons).")
    rng = np.random.default_rng(seed)
    if n_subsets * size <= n_neurons:
        perm = rng.permutation(n_neurons)
        subsets = [perm[i * size : (i + 1) * size] for i in range(n_subsets)]
    else:
        subsets = [rng.choice(n_neurons, size, replace=False) for _ in range(n_subsets)]
    rs: dict[str, list[float]] = {name: [] for name in spaces}
    for subset in subsets:
        idx = torch.as_tensor(np.sort(subset))
        d0 = _upper_distances(x0[idx])
        for name, s in spaces.items():
            rs[name].append(_pearson(d0, _upper_distances(s[idx])))
    return {name: mean_sem(v) for name, v in rs.items()}


_NAN = math.nan

#: The paper's Fig. (ResNet on ImageNet, k=2 virtual neurons, distances of CLIP ViT-B/32
#: embeddings of the reference patches; arXiv 2404.06453). Standard errors are not quoted.
PAPER_DISTANCES = DistanceTable(
    rows=(
        DistanceRow("DINOv2", MeanSem(5.87, _NAN), MeanSem(6.65, _NAN)),
        DistanceRow("PURE", MeanSem(5.94, _NAN), MeanSem(6.56, _NAN)),
        DistanceRow("activations", MeanSem(6.09, _NAN), MeanSem(6.34, _NAN)),
    ),
    unclustered=MeanSem(6.20, _NAN),
    space="CLIP ViT-B/32 (paper, ResNet on ImageNet, k=2)",
)

#: The paper's correlation between pairwise distances in CLIP space and in each space.
PAPER_CORRELATIONS: dict[str, MeanSem] = {
    "DINOv2": MeanSem(0.57, _NAN),
    "PURE": MeanSem(0.38, _NAN),
    "activations": MeanSem(0.17, _NAN),
}


@dataclass(frozen=True)
class ToyEvaluation:
    """Result of :func:`evaluate_toy_world`: the paper's table and correlations, on the toy world.

    Draw them with :func:`puretools.plot_cluster_distances` (``.table``) and
    :func:`puretools.plot_distance_correlation` (``.correlations``): plotting comes after
    evaluation, so this module never imports :mod:`puretools.plots`.
    """

    neurons: list[int]
    table: DistanceTable
    correlations: dict[str, MeanSem]
    ari: dict[str, MeanSem] = field(default_factory=dict)


def evaluate_toy_world(
    k: int = DEFAULT_K,
    method: Method = DEFAULT_METHOD,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> ToyEvaluation:
    """The paper's evaluation on the toy world, in one call, with ground truth as the evaluation space.

    Loads the shipped toy model and the test split, takes the ground-truth polysemantic
    neurons of ``LAYER`` (by causal labels, :func:`puretools.toyworld.causal_concepts`),
    clusters their references into ``k`` virtual neurons with PURE (circuits from
    ``LOWER_LAYER``, by :class:`puretools.Pipeline` with its defaults), the activation baseline
    and k-means in the evaluation space itself (the ground-truth upper bound), and measures
    intra/inter distances and the distance correlation in the space of the references'
    multi-hot concept vectors, and the ARI of each clustering against the causal labels
    (references without one left out).

    Parameters
    ----------
    k : int
        Virtual neurons per neuron.
    method : {"gradient", "lrp"}
        Attribution rule of the circuits.
    cache_dir : path or None
    progress : bool

    Returns
    -------
    ToyEvaluation
        ``.neurons``, ``.table`` (:class:`DistanceTable`), ``.correlations`` and ``.ari``
        (mean and standard error over the neurons, per method).
    """
    k = check_int(k, "k", low=2, fix="PURE splits a neuron into k >= 2 virtual neurons.")
    check_choice(method, "method", ("gradient", "lrp"))
    data = toyworld.ToyWorld(split="test")
    pipe = Pipeline(load_model("toy"), data, toyworld.LAYER, toyworld.LOWER_LAYER, method=method, k=k,
                    cache_dir=cache_dir, progress=progress)
    refs = pipe.references()
    causal = toyworld.causal_concepts(pipe.model, data, toyworld.LAYER, refs)  # [channels, n_ref], -1: no single cause
    neurons = toyworld.polysemantic_neurons(refs.indices, data.labels, concepts=causal)
    if not neurons:
        raise PuretoolsError("The toy model has no polysemantic neuron to evaluate.")
    circuits, acts = pipe.circuits(neurons), pipe.activations(neurons)
    space = data.labels[refs.indices[neurons]].float()
    labels = {
        "PURE": pipe.virtual_neurons(k, neurons).labels,
        "activations": VirtualNeurons(seed=pipe.seed).fit(acts, k=k).labels,
        "ground truth": VirtualNeurons(seed=pipe.seed).fit(space, k=k).labels,
    }
    table = evaluate_clusterings(space, labels, space="ground-truth concepts")
    correlations = distance_correlation(space, {"PURE": circuits, "activations": acts},
                                        n_subsets=len(neurons), subset_size=1)
    ari = {}
    for name, lab in labels.items():
        ari[name] = mean_sem([toyworld.ground_truth_scores(lab[j], causal[n])["ari"] for j, n in enumerate(neurons)])
    return ToyEvaluation(neurons=neurons, table=table, correlations=correlations, ari=ari)
