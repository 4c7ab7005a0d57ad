"""Names for virtual neurons: the ground-truth concept mix (toy world) or CLIP text probing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checks import check_names, check_number, check_virtual_neurons
from .embed import ClipEmbedder
from .errors import PuretoolsError, WeightsNotFoundError
from .virtual import VirtualNeurons

__all__ = ["TextLabels", "VirtualLabels", "clip_text_labels", "concept_labels"]


@dataclass(frozen=True)
class VirtualLabels:
    """Ground-truth names of the virtual neurons of every fitted neuron.

    Attributes
    ----------
    names : list of list of str
        ``names[i][j]``: name of virtual neuron j of fitted neuron ``neurons[i]``, e.g.
        ``"disc 96%"`` or ``"disc 60% + ring 55%"``.
    mix : list of Tensor [k_i, n_concepts]
        Share of the virtual neuron's references that contain each concept.
    neurons : list of int
    """

    names: list[list[str]]
    mix: list[torch.Tensor]
    neurons: list[int]


def concept_labels(
    vn: VirtualNeurons,
    reference_labels: torch.Tensor,
    concept_names: Sequence[str],
    min_share: float = 0.5,
) -> VirtualLabels:
    """Name each virtual neuron by the ground-truth concepts of its references.

    The name lists every concept present in at least ``min_share`` of the virtual neuron's
    references (most frequent first), or the most frequent one if none reaches it, each with
    its share.

    Parameters
    ----------
    vn : VirtualNeurons
        Fitted on the references whose labels are given.
    reference_labels : Tensor [N, n_ref, n_concepts]
        Multi-hot ground truth of each fitted neuron's references, in the order of the fit,
        e.g. ``ds.labels[refs.indices[vn.neurons]]``.
    concept_names : sequence of str
        ``n_concepts`` names.
    min_share : float
        In (0, 1].

    Returns
    -------
    VirtualLabels

    Examples
    --------
    >>> circuits = torch.tensor([[[0.0], [0.1], [5.0], [5.1]]])  # 1 neuron, 4 references
    >>> vn = VirtualNeurons().fit(circuits, k=2, neurons=[3])
    >>> labels = torch.tensor([[[1.0, 0, 0], [1, 0, 1], [0, 1, 0], [0, 1, 0]]])  # concepts a b c
    >>> concept_labels(vn, labels, ["a", "b", "c"]).names
    [['a 100% + c 50%', 'b 100%']]
    """
    check_virtual_neurons(vn)
    concept_names = check_names(concept_names, "concept_names")
    min_share = check_number(min_share, "min_share", 0, 1, low_open=True)
    labels = torch.as_tensor(reference_labels)
    if labels.dtype == torch.bool:
        labels = labels.float()
    if not (labels.is_floating_point() or labels.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                            torch.int64)) or not torch.isfinite(labels.float()).all():
        raise PuretoolsError("reference_labels must be finite numbers (1 or True: the concept is present).")
    if labels.ndim == 2:
        labels = labels[None]
    if labels.shape[:2] != vn.labels.shape:
        raise PuretoolsError(
            f"reference_labels must have shape [{vn.labels.shape[0]}, {vn.labels.shape[1]}, n_concepts] "
            f"(one row per fitted neuron and reference), got {tuple(labels.shape)}."
        )
    if labels.shape[-1] != len(concept_names):
        raise PuretoolsError(f"{labels.shape[-1]} concepts in the labels but {len(concept_names)} concept_names.")
    names, mixes = [], []
    for i, k in enumerate(vn.ks):
        present = (labels[i] > 0).float()
        mix = torch.stack([present[vn.labels[i] == j].mean(0) for j in range(k)]).nan_to_num(0.0)
        row = []
        for share in mix:
            order = torch.argsort(share, descending=True, stable=True)
            keep = [int(c) for c in order if share[c] >= min_share] or [int(order[0])]
            row.append(" + ".join(f"{concept_names[c]} {float(share[c]):.0%}" for c in keep))
        names.append(row)
        mixes.append(mix)
    return VirtualLabels(names, mixes, list(vn.neurons))


@dataclass(frozen=True)
class TextLabels:
    """CLIP text probing of virtual neurons.

    Attributes
    ----------
    words : list of str
        Best word per virtual neuron.
    scores : Tensor [k, n_words]
        Cosine similarity of each virtual neuron's mean image embedding to each word's
        text embedding.
    vocabulary : list of str
    random_weights : bool
        True when CLIP ran with random weights (offline): then the words mean nothing.
    """

    words: list[str]
    scores: torch.Tensor
    vocabulary: list[str]
    random_weights: bool


def clip_text_labels(
    images: Sequence[torch.Tensor],
    words: Sequence[str],
    model: str = "ViT-B-32",
    pretrained: str | os.PathLike | None = "openai",
    template: str = "a photo of a {}.",
    device: str | torch.device = "cpu",
) -> TextLabels:
    """Name virtual neurons with the word whose CLIP text embedding best matches their images.

    For each virtual neuron, its images (e.g. its reference patches) are embedded with
    :class:`puretools.ClipEmbedder` (projected pooling) and averaged after L2 normalisation;
    each word is put in ``template`` and embedded with CLIP's text tower (open_clip); the
    label is the word of highest cosine similarity. When the weights cannot be loaded
    (offline), both towers run with random weights, a warning says so and
    ``random_weights`` is True.

    Parameters
    ----------
    images : sequence of Tensor [n_j, 3, H, W]
        One batch per virtual neuron, values in [0, 1].
    words : sequence of str
        The vocabulary.
    model, pretrained : str
        As for :class:`puretools.ClipEmbedder`; ``pretrained=None`` asks for random weights.

    Returns
    -------
    TextLabels

    Examples
    --------
    Not run as a doctest (building ViT-B/32 takes seconds)::

        out = clip_text_labels([patches_0, patches_1], ["disc", "stripes"], pretrained=None)
        out.words, out.random_weights   # (['stripes', 'stripes'], True): random weights
    """
    import open_clip  # heavy and optional: loaded only by the functions that use CLIP

    words = check_names(words, "words")
    if len(set(words)) != len(words):
        raise PuretoolsError(f"words={words!r} holds a word more than once; give each word once.")
    if not isinstance(template, str) or template.count("{}") != 1:
        raise PuretoolsError(
            f"template={template!r} must hold exactly one '{{}}' where the word goes, e.g. 'a photo of a {{}}.'."
        )
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        raise PuretoolsError(
            "images must be a list with one batch [n, 3, H, W] per virtual neuron, got one tensor of shape "
            f"{tuple(images.shape)}; wrap it: images=[batch] for one virtual neuron."
        )
    if not len(images) or any(torch.as_tensor(b).ndim != 4 or not len(b) for b in images):
        raise PuretoolsError("images must hold one non-empty batch [n, 3, H, W] per virtual neuron.")
    random_weights = pretrained is None
    try:
        embedder = ClipEmbedder(model, pretrained=pretrained, device=device)
    except WeightsNotFoundError as err:
        warnings.warn(
            f"CLIP weights could not be loaded ({str(err).splitlines()[0]}); probing with RANDOM "
            "weights, so the text labels mean nothing.", UserWarning, stacklevel=2,
        )  # fmt: skip
        random_weights, pretrained = True, None
        embedder = ClipEmbedder(model, pretrained=None, device=device)
    quick_gelu = False  # as ClipEmbedder: follow the pretrained tag's activation
    if pretrained is not None and not os.path.exists(str(pretrained)):
        from open_clip.pretrained import get_pretrained_cfg

        quick_gelu = bool((get_pretrained_cfg(model, str(pretrained)) or {}).get("quick_gelu", False))
    clip = open_clip.create_model(model, pretrained=None if pretrained is None else str(pretrained),
                                  device=embedder.device, force_quick_gelu=quick_gelu)  # fmt: skip
    clip.eval()
    tokenizer = open_clip.get_tokenizer(model)
    with torch.inference_mode():
        text = clip.encode_text(tokenizer([template.format(w) for w in words]).to(embedder.device)).float()
        text = torch.nn.functional.normalize(text, dim=-1).cpu()
        means = []
        for batch in images:
            emb = torch.nn.functional.normalize(embedder.embed(torch.as_tensor(batch).float()), dim=-1)
            means.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    scores = torch.stack(means) @ text.T
    return TextLabels([words[int(i)] for i in scores.argmax(1)], scores, words, random_weights)
