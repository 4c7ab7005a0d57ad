"""PURE against its strongest simple rivals, with a protocol that never tunes on scored images.

The methods (:data:`PROTOCOL_METHODS`), each a set of per-reference features clustered with
k-means, or an SAE split:

- ``PURE-gradient``, ``PURE-LRP``: the circuits from the lower layer (the paper's PURE).
- ``act-mean``: the spatial mean of the layer's channels (the paper's activation baseline).
- ``act-peak``: the layer's activation vector at the neuron's own peak location
  (:func:`puretools.activation_features` with ``where="peak"``).
- ``act-peak-lower``: the lower layer's vector at the corresponding location.
- ``SAE``: TopK SAEs of several sizes on the layer (train split), split by each rule of
  :data:`puretools.sae.SPLIT_RULES`; the size, sparsity and rule are chosen on validation.

The protocol (:func:`compare_protocol`), per toy model:

1. **Validation** (``val``: images of another toy world, never scored): references, causal
   labels and polysemantic neurons are found there, and every setting is chosen there by the
   mean ARI (unlabelled references left out) under label-free k: the k-selection rule (one
   rule for every method, :data:`K_RULES`), each method's distance (Euclidean or cosine) and
   the SAE's size, sparsity and split rule (:func:`choose_settings`, which receives only the
   validation run).
2. **Test** (``test``, the scored images): the chosen settings are applied once, with
   ``n_seeds`` k-means seeds; label-free k (the chosen rule) is the main setting,
   ground-truth k an oracle row.

Scores per neuron: ``ari`` (unlabelled references left out, as before), ``ari_all`` (every
reference scored, the unlabelled ones as one more class "unknown", so a cluster made of them
is no longer free) and the ``coverage`` (share of references with a causal label).
:func:`summarize` gives mean, sd over models and over seeds, and paired bootstrap
confidence intervals of PURE-gradient minus each other method (resampling neurons within
each model).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from torch import nn

from . import toyworld
from .circuits import circuit_attributions
from .errors import PuretoolsError
from .references import collect_references
from .sae import SPLIT_RULES, sae_split, train_layer_sae
from .virtual import activation_features, kmeans_labels

__all__ = [
    "FEATURE_METHODS",
    "K_RULES",
    "PROTOCOL_METHODS",
    "ProtocolRun",
    "SplitRun",
    "ari_counting_unlabelled",
    "choose_k",
    "choose_settings",
    "compare_protocol",
    "format_protocol_table",
    "image_digests",
    "pair_ari",
    "run_split",
    "summarize",
]

FEATURE_METHODS = ("PURE-gradient", "PURE-LRP", "act-mean", "act-peak", "act-peak-lower")
PROTOCOL_METHODS = (*FEATURE_METHODS, "SAE")
#: Label-free k-selection rules over k = 2..5; the protocol picks one on validation for all methods.
K_RULES = ("silhouette", "calinski-harabasz", "davies-bouldin")
K_RANGE = (2, 3, 4, 5)
DISTANCES = ("euclidean", "cosine")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def choose_k(x: np.ndarray, labels_by_k: dict[int, np.ndarray], rule: str) -> int:
    """The k a label-free rule picks from clusterings ``labels_by_k`` (k -> labels [n]) of ``x`` [n, d].

    ``silhouette`` and ``calinski-harabasz``: the largest score; ``davies-bouldin``: the
    smallest. Ties go to the smaller k; a clustering with one cluster scores worst.

    Examples
    --------
    >>> x = np.array([[0.0], [0.1], [5.0], [5.1], [10.0], [10.1]])
    >>> labels = {2: np.array([0, 0, 1, 1, 1, 1]), 3: np.array([0, 0, 1, 1, 2, 2])}
    >>> [choose_k(x, labels, r) for r in K_RULES]
    [3, 3, 3]
    """
    if rule not in K_RULES:
        raise PuretoolsError(f"rule must be one of {K_RULES}, not {rule!r}.")
    best, best_score = None, None
    for k in sorted(labels_by_k):
        lab = labels_by_k[k]
        if len(np.unique(lab)) < 2:
            score = -np.inf
        elif rule == "silhouette":
            score = silhouette_score(x, lab)
        elif rule == "calinski-harabasz":
            score = calinski_harabasz_score(x, lab)
        else:
            score = -davies_bouldin_score(x, lab)
        if best_score is None or score > best_score:
            best, best_score = k, score
    return int(best)


def ari_counting_unlabelled(clusters, truth) -> float:
    """ARI over every reference, the unlabelled ones (-1) counted as one more class, "unknown".

    Unlike :func:`puretools.toyworld.ground_truth_scores` (which leaves them out), a cluster
    made only of unlabelled references, or unlabelled references spread over the concepts'
    clusters, now costs.

    Examples
    --------
    >>> ari_counting_unlabelled([0, 0, 1, 1, 2, 2], [3, 3, 5, 5, -1, -1])
    1.0
    >>> round(ari_counting_unlabelled([0, 0, 1, 1, 1, 1], [3, 3, 5, 5, -1, -1]), 3)  # dropped ARI would be 1
    0.444
    """
    truth = np.asarray(truth).astype(np.int64)
    truth = np.where(truth < 0, truth.max(initial=0) + 1, truth)
    return float(adjusted_rand_score(truth, np.asarray(clusters)))


def pair_ari(clusters, truth, concepts: Sequence[int]) -> float:
    """ARI of ``clusters`` against ``truth`` on the references whose label is one of ``concepts`` only.

    How well a split separates the members of a merged pair (variant V1 of
    ``benchmarks/README.md``), whatever it does with the neuron's other concepts. NaN when fewer
    than two of ``concepts`` occur among the references.

    Examples
    --------
    >>> pair_ari([0, 0, 1, 1, 2, 2], [3, 3, 5, 5, 7, -1], [3, 5])
    1.0
    >>> pair_ari([0, 0, 0, 0, 1, 1], [3, 3, 5, 5, 7, -1], [3, 5])  # the pair in one cluster
    0.0
    """
    truth, clusters = np.asarray(truth), np.asarray(clusters)
    keep = np.isin(truth, list(concepts))
    if len(np.unique(truth[keep])) < 2:
        return float("nan")
    return float(adjusted_rand_score(truth[keep], clusters[keep]))


def image_digests(dataset, indices) -> set[str]:
    """SHA-256 of the pixels of ``dataset[i]`` for every ``i`` in ``indices``: image identities.

    Used to check that no image used to choose a setting is scored (:func:`compare_protocol`).
    """
    out = set()
    for i in sorted({int(i) for i in torch.as_tensor(indices).reshape(-1)}):
        x = dataset[i][0]
        out.add(hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest())
    return out


@dataclass
class SplitRun:
    """Features and ground truth of one split of images for one model (:func:`run_split`).

    Attributes
    ----------
    name : str
        ``"val"`` or ``"test"``.
    neurons : list of int
        Polysemantic neurons on this split (causal labels, >= 2 concepts with >= 20 %).
    true_k : list of int
    truth : LongTensor [N, n_ref]
        Causal labels (-1: none).
    features : dict
        Method (or ``"SAE-codes:<config>"``) -> array [N, n_ref, D].
    sae_direct : dict
        ``"<config>:<rule>"`` -> labels [N, n_ref] of the SAE rules that need no k.
    reference_indices : LongTensor [N, n_ref]
        Indices of the references in the split's dataset.
    digests : set of str
        Pixel hashes of the reference images (:func:`image_digests`).
    """

    name: str
    neurons: list[int]
    true_k: list[int]
    truth: torch.Tensor
    features: dict
    sae_direct: dict
    reference_indices: torch.Tensor
    digests: set = field(default_factory=set)


def run_split(model: nn.Module, dataset, name: str, saes: dict, n_ref: int = 100, min_share: float = 0.2) -> SplitRun:
    """References, causal labels, polysemantic neurons and every method's features on one split.

    Parameters
    ----------
    model : nn.Module
        A toy model.
    dataset : ToyWorld
    name : str
        ``"val"`` or ``"test"`` (recorded).
    saes : dict
        SAE config name -> :class:`puretools.sae.LayerSAE` (trained on other images).
    n_ref, min_share
        References per neuron; share a concept needs to count.
    """
    layer, lower = toyworld.LAYER, toyworld.LOWER_LAYER
    refs = collect_references(model, dataset, layer, n_ref=n_ref, progress=False)
    causal = toyworld.causal_concepts(model, dataset, layer, refs)
    neurons = toyworld.polysemantic_neurons(refs, dataset.labels, min_share=min_share, concepts=causal)
    if not neurons:
        raise PuretoolsError(f"No polysemantic neuron on the {name} split: nothing to split.")
    shares = toyworld.label_shares(causal, len(toyworld.CONCEPTS))
    true_k = [int((shares[n] >= min_share).sum()) for n in neurons]
    feats = {
        "PURE-gradient": circuit_attributions(model, dataset, layer, lower, refs, neurons=neurons, progress=False),
        "PURE-LRP": circuit_attributions(model, dataset, layer, lower, refs, neurons=neurons, method="lrp",
                                         progress=False),  # fmt: skip
        "act-mean": activation_features(model, dataset, layer, refs, neurons=neurons),
        "act-peak": activation_features(model, dataset, layer, refs, neurons=neurons, where="peak"),
        "act-peak-lower": activation_features(model, dataset, layer, refs, neurons=neurons, where="peak",
                                              read_layer=lower),  # fmt: skip
    }
    h = feats["act-peak"]  # [N, n_ref, C]: the layer's vector at each neuron's peak (the SAE's input)
    feats = {m: v.double().numpy() for m, v in feats.items()}
    direct = {}
    for cfg, sae in saes.items():
        with torch.no_grad():
            feats[f"SAE-codes:{cfg}"] = torch.stack([sae.encode(h[j]) for j in range(len(neurons))]).double().numpy()
        for rule in SPLIT_RULES:
            if rule != "kmeans":
                direct[f"{cfg}:{rule}"] = torch.stack(
                    [sae_split(sae, h[j], neurons[j], rule=rule) for j in range(len(neurons))]
                )
    idx = refs.indices[neurons]
    return SplitRun(name, neurons, true_k, causal[neurons], feats, direct, idx, image_digests(dataset, idx))


def _cluster_grid(run: SplitRun, key: str, distance: str, seeds: Sequence[int], rules: Sequence[str]) -> dict:
    """Per neuron and seed: labels for every k in K_RANGE and the k each rule picks."""
    x_all = run.features[key]
    out = []
    for j in range(len(run.neurons)):
        x = x_all[j]
        x = _unit(x) if distance == "cosine" else x
        per_seed = []
        for s in seeds:
            by_k = {k: kmeans_labels(x, k, seed=s)[0] for k in K_RANGE if k < len(x)}
            per_seed.append({"labels": by_k, "chosen": {r: choose_k(x, by_k, r) for r in rules}})
        out.append(per_seed)
    return out


def _scores(clusters, truth) -> tuple[float, float]:
    s = toyworld.ground_truth_scores(clusters, truth)
    return s["ari"], ari_counting_unlabelled(clusters, truth)


def _grid_scores(run: SplitRun, grid, mode: str) -> np.ndarray:
    """[N, n_seeds, 2] (ari, ari_all) for k mode ``mode`` (a rule name or ``"oracle"``)."""
    res = np.zeros((len(run.neurons), len(grid[0]), 2))
    for j, per_seed in enumerate(grid):
        for s, g in enumerate(per_seed):
            k = run.true_k[j] if mode == "oracle" else g["chosen"][mode]
            res[j, s] = _scores(g["labels"][k], run.truth[j])
    return res


def _direct_scores(run: SplitRun, key: str, n_seeds: int) -> np.ndarray:
    lab = run.sae_direct[key]
    res = np.array([_scores(lab[j], run.truth[j]) for j in range(len(run.neurons))])
    return np.repeat(res[:, None], n_seeds, axis=1)


def choose_settings(val: SplitRun, seeds: Sequence[int] = (0, 1, 2)) -> dict:
    """Every setting of the protocol, chosen on the validation run only (mean dropped ARI).

    1. The k rule: the one of :data:`K_RULES` with the best mean ARI over the feature methods
       (Euclidean distance) and the SAE code clusterings; the same rule for every method.
    2. Per feature method, the distance (Euclidean or cosine, under that rule).
    3. The SAE: the config and split rule with the best ARI.

    Returns
    -------
    dict
        ``k_rule``, ``distance`` (method -> name), ``sae`` (``"<config>:<rule>"``) and
        ``validation`` (the ARIs every choice was made from), ``val_neurons``.
    """
    if val.name != "val":
        raise PuretoolsError(f"Settings are chosen on the validation run only, got the {val.name!r} run.")
    keys = [m for m in FEATURE_METHODS] + [k for k in val.features if k.startswith("SAE-codes:")]
    grids = {(key, d): _cluster_grid(val, key, d, seeds, K_RULES) for key in keys for d in DISTANCES}
    table = {f"{key}|{d}|{r}": float(_grid_scores(val, g, r)[..., 0].mean())
             for (key, d), g in grids.items() for r in K_RULES}  # fmt: skip
    rule_score = {r: float(np.mean([table[f"{key}|euclidean|{r}"] for key in keys])) for r in K_RULES}
    k_rule = max(K_RULES, key=lambda r: (rule_score[r], -K_RULES.index(r)))
    distance = {m: max(DISTANCES, key=lambda d: (table[f"{m}|{d}|{k_rule}"], -DISTANCES.index(d)))
                for m in FEATURE_METHODS}  # fmt: skip
    sae_options = {f"{key.split(':', 1)[1]}:kmeans|{d}": table[f"{key}|{d}|{k_rule}"]
                   for key in keys if key.startswith("SAE-codes:") for d in DISTANCES}  # fmt: skip
    for key in val.sae_direct:
        sae_options[key] = float(_direct_scores(val, key, 1)[..., 0].mean())
    sae = max(sorted(sae_options), key=lambda o: sae_options[o])
    return {"k_rule": k_rule, "distance": distance, "sae": sae, "val_neurons": val.neurons,
            "validation": {"k_rules": rule_score, "grid": table, "sae": sae_options}}  # fmt: skip


@dataclass
class ProtocolRun:
    """One model's protocol (:func:`compare_protocol`).

    Attributes
    ----------
    settings : dict
        :func:`choose_settings`'s choices (on validation).
    scores : dict
        ``scores[method][mode]`` = array [N_test, n_seeds, 2] of (ari, ari_all) per neuron and
        seed; mode ``"label-free"`` (the chosen rule) or ``"oracle"`` (ground-truth k).
    chosen_k : dict
        ``chosen_k[method]`` = array [N_test, n_seeds] of the label-free k on test.
    neurons, true_k : list of int
        The scored (test) polysemantic neurons and their ground-truth k.
    coverage : float
        Share of their test references with a causal label.
    n_unlabelled, n_references : int
    selection_digests_overlap : int
        Images both used to choose settings and scored (must be 0).
    sae : dict
        The SAE configs trained (size, top-k, R2, dead share).
    times_s : dict
    pair_scores : dict
        With ``merged_pairs``: ``pair_scores[method][mode]`` = array [N_test, n_seeds] of
        :func:`pair_ari` over the references labelled with a member of a merged pair that the
        neuron mixes (NaN for neurons that mix no pair).
    pair_neurons : dict
        Test neuron -> the merged pairs it mixes (both members with >= ``min_share`` of its
        labelled references).
    """

    settings: dict
    scores: dict
    chosen_k: dict
    neurons: list[int]
    true_k: list[int]
    coverage: float
    n_unlabelled: int
    n_references: int
    selection_digests_overlap: int
    sae: dict
    times_s: dict
    pair_scores: dict = field(default_factory=dict)
    pair_neurons: dict = field(default_factory=dict)


def compare_protocol(
    model: nn.Module,
    val,
    test,
    train,
    n_ref: int = 100,
    n_seeds: int = 10,
    sae_grid: Sequence[tuple[int, int]] = ((16, 2), (32, 4), (64, 4)),
    sae_epochs: int = 20,
    choose_seeds: Sequence[int] = (0, 1, 2),
    merged_pairs: Sequence[tuple[str, str]] = (),
    min_share: float = 0.2,
) -> ProtocolRun:
    """The leak-free comparison on one toy model: settings chosen on ``val``, scored on ``test``.

    Parameters
    ----------
    model : nn.Module
    val, test : ToyWorld
        Validation images (never scored; e.g. ``ToyWorld("test", seed=1)``) and scored images
        (``ToyWorld("test")``). They must not share an image (checked on the pixels).
    train : ToyWorld
        Images the SAEs are trained on.
    n_ref : int
    n_seeds : int
        k-means seeds on test.
    sae_grid : sequence of (n_latents, top_k)
        SAE configs to choose from on validation.
    sae_epochs : int
    choose_seeds : sequence of int
        k-means seeds on validation.
    merged_pairs : sequence of (str, str)
        Concept pairs the model was trained to give one label (``toyworld.train(merge=...)``);
        adds ``pair_scores`` (how well each method separates the pair's members on the neurons
        that mix them). Nothing else changes: settings, scores and labels are the same.
    min_share : float
        Share of a neuron's labelled references a concept needs to count (polysemantic neurons,
        ground-truth k, and the neurons that mix a pair).

    Returns
    -------
    ProtocolRun
    """
    shared = len(image_digests(val, torch.arange(len(val))) & image_digests(test, torch.arange(len(test))))
    if shared:
        raise PuretoolsError(f"{shared} images are both in val and in test, so they would be both validation "
                             "references and scored references: give disjoint image sets (e.g. "
                             "ToyWorld('test', seed=1) for val).")  # fmt: skip
    times = {}
    t = time.perf_counter()
    saes = {f"{n}x{k}": train_layer_sae(model, train, toyworld.LAYER, n_latents=n, top_k=k, epochs=sae_epochs)
            for n, k in sae_grid}  # fmt: skip
    times["sae_training"] = time.perf_counter() - t
    t = time.perf_counter()
    v = run_split(model, val, "val", saes, n_ref=n_ref, min_share=min_share)
    times["val_features"] = time.perf_counter() - t
    t = time.perf_counter()
    settings = choose_settings(v, seeds=choose_seeds)
    times["val_choice"] = time.perf_counter() - t
    t = time.perf_counter()
    te = run_split(model, test, "test", saes, n_ref=n_ref, min_share=min_share)
    overlap = len(v.digests & te.digests)
    if overlap:
        raise PuretoolsError(f"{overlap} images are both validation references and scored references: "
                             "give val and test disjoint image sets (e.g. ToyWorld('test', seed=1) for val).")  # fmt: skip
    times["test_features"] = time.perf_counter() - t
    t = time.perf_counter()
    seeds = list(range(n_seeds))
    scores, chosen_k, pair_scores = {}, {}, {}
    rule = settings["k_rule"]
    mixed = _mixed_pairs(te, merged_pairs, min_share)
    for m in FEATURE_METHODS:
        g = _cluster_grid(te, m, settings["distance"][m], seeds, [rule])
        scores[m] = {"label-free": _grid_scores(te, g, rule), "oracle": _grid_scores(te, g, "oracle")}
        chosen_k[m] = np.array([[s["chosen"][rule] for s in per] for per in g])
        pair_scores[m] = {mode: _grid_pair_scores(te, g, mode, mixed) for mode in (rule, "oracle")}
    sae_key = settings["sae"]
    if "|" in sae_key:  # "<config>:kmeans|<distance>"
        cfg_rule, dist = sae_key.split("|")
        g = _cluster_grid(te, f"SAE-codes:{cfg_rule.split(':')[0]}", dist, seeds, [rule])
        scores["SAE"] = {"label-free": _grid_scores(te, g, rule), "oracle": _grid_scores(te, g, "oracle")}
        chosen_k["SAE"] = np.array([[s["chosen"][rule] for s in per] for per in g])
        pair_scores["SAE"] = {mode: _grid_pair_scores(te, g, mode, mixed) for mode in (rule, "oracle")}
    else:
        direct = _direct_scores(te, sae_key, n_seeds)
        scores["SAE"] = {"label-free": direct, "oracle": direct}  # no k to choose: the same labels
        lab = te.sae_direct[sae_key]
        chosen_k["SAE"] = np.repeat(np.array([[len(lab[j].unique())] for j in range(len(te.neurons))]), n_seeds, 1)
        direct_pair = np.array([[pair_ari(lab[j].numpy(), te.truth[j].numpy(), mixed[j]) if mixed[j] else np.nan]
                                for j in range(len(te.neurons))]).repeat(n_seeds, 1)  # fmt: skip
        pair_scores["SAE"] = {rule: direct_pair, "oracle": direct_pair}
    pair_scores = {m: {"label-free": v[rule], "oracle": v["oracle"]} for m, v in pair_scores.items()}
    times["test_scoring"] = time.perf_counter() - t
    n_unl = int((te.truth < 0).sum())
    return ProtocolRun(
        settings=settings, scores=scores, chosen_k=chosen_k, neurons=te.neurons, true_k=te.true_k,
        coverage=1 - n_unl / te.truth.numel(), n_unlabelled=n_unl, n_references=int(te.truth.numel()),
        selection_digests_overlap=overlap,
        sae={cfg: {"n_latents": s.n_latents, "top_k": s.top_k, "r2_train": round(s.r2, 4), "dead": round(s.dead, 4)}
             for cfg, s in saes.items()},
        times_s={k: round(x, 1) for k, x in times.items()},
        pair_scores=pair_scores if merged_pairs else {},
        pair_neurons={n: [list(merged_pairs[i]) for i in sorted(_pairs_of(te, j, merged_pairs, min_share))]
                      for j, n in enumerate(te.neurons) if _pairs_of(te, j, merged_pairs, min_share)},
    )  # fmt: skip


def _pairs_of(run: SplitRun, j: int, merged_pairs, min_share: float) -> set[int]:
    """Indices of the merged pairs whose two members both hold >= min_share of neuron j's labelled references."""
    shares = toyworld.label_shares(run.truth[j], len(toyworld.CONCEPTS))
    ids = [(toyworld.CONCEPTS.index(a), toyworld.CONCEPTS.index(b)) for a, b in merged_pairs]
    return {i for i, (a, b) in enumerate(ids) if shares[a] >= min_share and shares[b] >= min_share}


def _mixed_pairs(run: SplitRun, merged_pairs, min_share: float) -> list[list[int]]:
    """Per test neuron: the concept ids of the merged pairs it mixes (empty: none)."""
    out = []
    for j in range(len(run.neurons)):
        pairs = sorted(_pairs_of(run, j, merged_pairs, min_share))
        out.append([toyworld.CONCEPTS.index(c) for i in pairs for c in merged_pairs[i]])
    return out


def _grid_pair_scores(run: SplitRun, grid, mode: str, mixed: list[list[int]]) -> np.ndarray:
    """[N, n_seeds] :func:`pair_ari` for k mode ``mode`` (NaN for neurons that mix no pair)."""
    res = np.full((len(run.neurons), len(grid[0])), np.nan)
    for j, per_seed in enumerate(grid):
        if not mixed[j]:
            continue
        for s, g in enumerate(per_seed):
            k = run.true_k[j] if mode == "oracle" else g["chosen"][mode]
            res[j, s] = pair_ari(g["labels"][k], run.truth[j].numpy(), mixed[j])
    return res


def _bootstrap(diffs: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % interval of the mean over models of the mean over neurons, neurons resampled within models."""
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = np.mean([d[rng.integers(0, len(d), len(d))].mean() for d in diffs])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(runs: list[ProtocolRun], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean and spreads of every method, k mode and score over models and seeds, with bootstrap CIs.

    For each method, mode (``"label-free"``, ``"oracle"``) and score (``"ari"``, ``"ari_all"``):
    ``mean`` (over models of the mean over neurons and seeds), ``sd_models`` (sample sd of
    the per-model means; None for one model), ``sd_seeds`` (sd over the 10 seeds of the mean
    over neurons, averaged over models), ``per_model``; and ``ci_pure_minus`` (for methods
    other than PURE-gradient): the paired bootstrap 95 % interval of PURE-gradient minus the
    method (per neuron, seed-averaged; neurons resampled within each model) and the mean
    difference.

    Examples
    --------
    >>> s = {"label-free": np.full((2, 3, 2), 0.8), "oracle": np.full((2, 3, 2), 0.9)}
    >>> b = {"label-free": np.full((2, 3, 2), 0.5), "oracle": np.full((2, 3, 2), 0.6)}
    >>> run = ProtocolRun({}, {m: (s if m == "PURE-gradient" else b) for m in PROTOCOL_METHODS}, {},
    ...                   [1, 2], [2, 2], 0.9, 1, 10, 0, {}, {})
    >>> out = summarize([run], n_boot=50)
    >>> out["act-peak"]["label-free"]["ari"]["mean"], out["act-peak"]["label-free"]["ari"]["ci_pure_minus"]
    (0.5, [0.3, 0.3, 0.3])
    """
    rng = np.random.default_rng(seed)
    out: dict = {}
    for m in PROTOCOL_METHODS:
        out[m] = {}
        for mode in ("label-free", "oracle"):
            out[m][mode] = {}
            for si, score in enumerate(("ari", "ari_all")):
                per_model = [float(np.nanmean(r.scores[m][mode][..., si])) for r in runs]
                sd_seeds = [float(np.std(np.nanmean(r.scores[m][mode][..., si], axis=0), ddof=1))
                            if r.scores[m][mode].shape[1] > 1 else 0.0 for r in runs]  # fmt: skip
                cell = {
                    "mean": round(float(np.mean(per_model)), 4),
                    "sd_models": round(float(np.std(per_model, ddof=1)), 4) if len(runs) > 1 else None,
                    "sd_seeds": round(float(np.mean(sd_seeds)), 4),
                    "per_model": [round(v, 4) for v in per_model],
                }
                if m != "PURE-gradient":
                    diffs = [np.nanmean(r.scores["PURE-gradient"][mode][..., si], axis=1)
                             - np.nanmean(r.scores[m][mode][..., si], axis=1) for r in runs]  # fmt: skip
                    lo, hi = _bootstrap(diffs, n_boot, rng)
                    mean_diff = float(np.mean([d.mean() for d in diffs]))
                    cell["ci_pure_minus"] = [round(mean_diff, 4), round(lo, 4), round(hi, 4)]
                out[m][mode][score] = cell
    return out


def format_protocol_table(summary: dict, coverage: Sequence[float]) -> str:
    """One table: every method under label-free and oracle k, both scores, spreads and CIs.

    Columns: mode, method, ARI (labelled references) mean +- sd over models [sd over seeds],
    ARI counting the unlabelled as a class, and PURE-gradient minus the method with its 95 %
    bootstrap interval (on the ARI of labelled references). ``coverage``: per model, the
    share of scored references with a causal label (``ProtocolRun.coverage``).
    """
    if not isinstance(summary, dict) or not summary:
        raise PuretoolsError(
            f"summary must be the non-empty dict of a protocol run's summary, got {type(summary).__name__}."
        )
    cov = ", ".join(f"{c:.2f}" for c in coverage)
    lines = [f"coverage (share of scored references with a causal label), per model: {cov}",
             f"{'k':10s} {'method':16s} {'ARI (labelled)':>26s} {'ARI (unlabelled = class)':>26s} "
             f"{'PURE-grad minus method [95% CI]':>34s}"]  # fmt: skip

    def cell(c):
        sd = f" +- {c['sd_models']:.2f}" if c["sd_models"] is not None else ""
        return f"{c['mean']:.3f}{sd} [{c['sd_seeds']:.3f}]"

    for mode in ("label-free", "oracle"):
        for m in PROTOCOL_METHODS:
            c, a = summary[m][mode]["ari"], summary[m][mode]["ari_all"]
            ci = c.get("ci_pure_minus")
            ci_text = f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]" if ci else "-"
            lines.append(f"{mode:10s} {m:16s} {cell(c):>26s} {cell(a):>26s} {ci_text:>34s}")
    return "\n".join(lines)
