"""Training of the toy model on the toy world, and the record written beside the checkpoint."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import PuretoolsError
from ..files import atomic_save_file
from .model import DATA_DIR, DEFAULT_STRIDES, DEFAULT_WIDTHS, _config, build_model
from .vit import DEFAULT_VIT, VIT_FILE, VIT_RECORD, _vit_config, build_vit
from .world import CONCEPTS, VARIANTS, ToyWorld, _normalize

__all__ = ["ARCHITECTURES", "train"]

#: Per architecture: checkpoint and record file names, and the optimiser defaults
#: (each those of its shipped checkpoint; a ViT wants a smaller learning rate and more weight
#: decay; the shipped ViT: 15 epochs, 352 s of CPU time on one thread, see vit_record.json).
ARCHITECTURES = {
    "resnet": {"files": ("model.safetensors", "record.json"), "epochs": 10, "lr": 4e-3, "weight_decay": 5e-4,
               "batch_size": 128},
    "vit": {"files": (VIT_FILE, VIT_RECORD), "epochs": 15, "lr": 1e-3, "weight_decay": 0.05, "batch_size": 64},
}


def _check_merge(merge) -> tuple[tuple[str, str], ...]:
    """``merge`` as a tuple of concept-name pairs, validated (names known, pairs disjoint)."""
    if merge is None:
        return ()
    if isinstance(merge, (str, bytes)) or not isinstance(merge, Sequence):
        raise PuretoolsError(f"merge must be a list of concept pairs such as [('disc', 'checkerboard')], "
                             f"not {merge!r}.")  # fmt: skip
    pairs, seen = [], set()
    for pair in merge:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise PuretoolsError(f"merge must hold pairs of two concept names such as ('disc', 'checkerboard'), "
                                 f"got {pair!r}.")  # fmt: skip
        a, b = pair
        for name in (a, b):
            if name not in CONCEPTS:
                raise PuretoolsError(f"merge names the concept {name!r}, which the toy world does not have; "
                                     f"choose from {list(CONCEPTS)}.")  # fmt: skip
        if a == b:
            raise PuretoolsError(f"merge pairs need two different concepts, got {pair!r}.")
        for name in (a, b):
            if name in seen:
                raise PuretoolsError(f"merge names {name!r} in two pairs, got {merge!r}: give each concept to "
                                     "at most one pair (pairs are merged, not chained).")  # fmt: skip
            seen.add(name)
        pairs.append((a, b))
    return tuple(pairs)


def _merged_targets(labels: torch.Tensor, merge: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Training targets with each merged pair's two columns replaced by their OR (one label for both).

    The model keeps its 16 outputs; for a pair ``(a, b)`` both outputs learn "a or b is in the
    image", so nothing in the loss asks the network to tell ``a`` from ``b``.

    Examples
    --------
    >>> y = torch.zeros(3, len(CONCEPTS)); y[0, 0] = 1; y[1, 8] = 1; y[2, 1] = 1
    >>> _merged_targets(y, [("disc", "checkerboard")])[:, [0, 8, 1]].tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    out = labels.clone()
    for a, b in merge:
        i, j = CONCEPTS.index(a), CONCEPTS.index(b)
        either = torch.maximum(labels[:, i], labels[:, j])
        out[:, i], out[:, j] = either, either
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def _evaluate(model: nn.Module, ds: ToyWorld, batch_size: int = 500, merge=()) -> dict:
    model.eval()
    preds = torch.cat([model(_normalize(ds.pixels[i : i + batch_size])) > 0
                       for i in range(0, len(ds), batch_size)])  # fmt: skip
    truth = _merged_targets(ds.labels, merge).bool()
    per_concept = (preds == truth).float().mean(0)
    tp = (preds & truth).sum(0).float()
    f1 = 2 * tp / (preds.sum(0) + truth.sum(0)).clamp(min=1)
    return {
        "mean_per_concept_accuracy": per_concept.mean().item(),
        "per_concept_accuracy": dict(zip(CONCEPTS, [round(v, 4) for v in per_concept.tolist()])),
        "exact_match_accuracy": (preds == truth).all(1).float().mean().item(),
        "macro_f1": f1.mean().item(),
        "per_concept_f1": dict(zip(CONCEPTS, [round(v, 4) for v in f1.tolist()])),
        "all_absent_per_concept_accuracy": (~truth).float().mean().item(),
    }


#: Why the record reports three metrics, and ``all_absent_per_concept_accuracy`` beside them.
METRICS_NOTE = (
    "Each image holds 1-3 of the 16 concepts, so a model that predicts 'absent' everywhere already "
    "scores all_absent_per_concept_accuracy: mean_per_concept_accuracy is inflated by the many "
    "negatives. exact_match_accuracy (all 16 decisions right for an image) and macro_f1 (F1 per "
    "concept, averaged; per_concept_f1) are not."
)


def train(
    out_dir: str | os.PathLike = DATA_DIR,
    epochs: int | None = None,
    seed: int = 0,
    n_train: int | None = None,
    max_batches: int | None = None,
    verbose: bool = True,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    strides: Sequence[int] = DEFAULT_STRIDES,
    threads: int = 1,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    overwrite: bool = False,
    arch: str = "resnet",
    vit_config: dict | None = None,
    merge: Sequence[tuple[str, str]] | None = None,
    variant: str | None = None,
) -> dict:
    """Train a toy model on the toy world; write ``model.safetensors`` and ``record.json``.

    ``arch="vit"`` trains the toy ViT (:func:`puretools.toyworld.build_vit`) instead and writes
    ``vit.safetensors`` and ``vit_record.json``.

    AdamW with a one-cycle learning rate, BCE-with-logits on the multi-hot concepts (multi-label),
    about 80 s on one CPU core. The data are the world of seed 0 (so the test split is the
    one the notebooks use); ``seed`` seeds the initialisation and the shuffling, so a run is
    reproducible on the same torch build and thread count (other thread counts change the
    rounding of convolutions, hence the weights a little).

    Parameters
    ----------
    out_dir : path
        Where to write ``model.safetensors`` (architecture in its metadata) and ``record.json``.
    epochs : int, optional
        Passes over the train split (default 10; ViT: 3).
    seed : int
        Seed of initialisation and shuffling.
    n_train : int, optional
        Train images (default ``SPLIT_SIZES["train"]``).
    max_batches : int, optional
        Stop after this many batches (for quick tests); the schedule is shortened to match.
    verbose : bool
        Show a tqdm progress bar.
    widths : sequence of 4 int
        Channels of layer1..layer4.
    strides : sequence of 5 int
        Strides of the stem and layer1..layer4.
    threads : int
        CPU threads (restored afterwards). One by default: on a 2-core machine shared with other
        jobs, two threads that wait on each other ran up to 60 times slower, and the thread count
        changes the rounding of convolutions, so one thread reproduces the shipped checkpoint.
    batch_size, lr, weight_decay
        Optimiser settings (defaults per architecture: :data:`ARCHITECTURES`).
    overwrite : bool
        Replace a checkpoint already in ``out_dir``. Off by default, so training never
        overwrites the shipped checkpoint (or any other) unless asked.
    arch : {"resnet", "vit"}
        The toy ResNet (``widths``, ``strides``) or the toy ViT (``vit_config``).
    vit_config : dict, optional
        Overrides of :data:`puretools.toyworld.DEFAULT_VIT` (``arch="vit"`` only).
    merge : list of (str, str), optional
        Concept pairs that share one label (variant V1 of ``benchmarks/README.md``): for a pair
        ``(a, b)`` both outputs are trained on "a or b" (the OR of the two labels), so the
        network has no reason to tell them apart. The images are unchanged, and the test
        metrics in the record are against the merged labels (``record["merge"]``); causal
        labels and the benchmark still use the original concepts. Each concept in at most one pair.
    variant : str, optional
        Train and test on a variant of the toy world (a key of
        :data:`puretools.toyworld.VARIANTS`, e.g. ``"v2"`` of ``benchmarks/README.md``), recorded
        as ``record["variant"]`` so that the benchmark builds the same world. None: the default world.

    Returns
    -------
    dict
        The record written to ``record.json``: config, seed, epochs, wall time, the metric
        (``mean_per_concept_accuracy`` on the test split) and its value, per-concept and
        exact-match accuracy, macro-F1 and per-concept F1 (see ``METRICS_NOTE``), ``loss_history`` (mean training loss per logged step) and the
        checkpoint's ``sha256``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     record = train(d, n_train=64, max_batches=2, widths=(4, 4, 8, 4), verbose=False)
    >>> record["metric"], len(record["loss_history"])
    ('mean_per_concept_accuracy', 2)
    """
    if arch not in ARCHITECTURES:
        raise PuretoolsError(f"arch must be one of {sorted(ARCHITECTURES)}, not {arch!r}.")
    if vit_config and arch != "vit":
        raise PuretoolsError("vit_config only applies to arch='vit'; the ResNet takes widths and strides.")
    merge = _check_merge(merge)
    if variant is not None and variant not in VARIANTS:
        raise PuretoolsError(f"variant must be None (the default world) or one of {sorted(VARIANTS)}, not {variant!r}.")
    defaults = ARCHITECTURES[arch]
    epochs = defaults["epochs"] if epochs is None else int(epochs)
    lr = defaults["lr"] if lr is None else float(lr)
    weight_decay = defaults["weight_decay"] if weight_decay is None else float(weight_decay)
    batch_size = defaults["batch_size"] if batch_size is None else int(batch_size)
    if arch == "vit":
        vit_config = {**DEFAULT_VIT, **(vit_config or {})}
        build_vit(**vit_config)  # a bad setting fails here, before the data are rendered
        builder = functools.partial(build_vit, len(CONCEPTS), **vit_config)
        configure = _vit_config
    else:
        builder = functools.partial(build_model, len(CONCEPTS), widths, strides)
        configure = _config
    files = defaults["files"]
    target = Path(out_dir) / files[0]
    if target.exists() and not overwrite:
        raise PuretoolsError(
            f"{str(target)!r} already exists and training would overwrite it. Write the new model "
            "elsewhere (out_dir, or --out DIR on the command line), or pass overwrite=True "
            "(--force) to replace it on purpose; the shipped checkpoint's numbers are quoted in the notebooks."
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(Path(out_dir), epochs, seed, n_train, max_batches, verbose, builder, configure, files,
                      batch_size, lr, weight_decay, merge, variant)  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_dir, epochs, seed, n_train, max_batches, verbose, builder, configure, files, batch_size, lr,
           weight_decay, merge=(), variant=None) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    ds = ToyWorld("train", n=n_train, variant=variant)
    test = ToyWorld("test", variant=variant)
    targets = _merged_targets(ds.labels, merge)  # the labels themselves when nothing is merged
    model = builder()
    n_batches = len(ds) // batch_size if len(ds) >= batch_size else 1
    total = epochs * n_batches if max_batches is None else min(int(max_batches), epochs * n_batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    log_every = 1 if total <= 200 else 20
    history, running, step = [], [], 0
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=f"toy {configure(model)['architecture']}", disable=not verbose)
    model.train()
    while step < total:
        order = torch.randperm(len(ds), generator=gen)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = loss_fn(model(_normalize(ds.pixels[idx])), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running.append(loss.item())
            step += 1
            if len(running) == log_every or step == total:
                history.append(round(sum(running) / len(running), 5))
                running = []
                bar.set_postfix(loss=history[-1])
            bar.update()
            if step == total:
                break
    bar.close()
    metrics = _evaluate(model, test, merge=merge)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    out_dir.mkdir(parents=True, exist_ok=True)
    config = configure(model)
    checkpoint, record_file = (out_dir / name for name in files)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save_file(state, checkpoint, metadata={"config": json.dumps(config)})
    record = {
        "config": config,
        "seed": seed,
        "world_seed": 0,
        **({"merge": [list(p) for p in merge]} if merge else {}),
        **({"variant": variant} if variant is not None else {}),
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "n_train": len(ds),
        "n_test": len(test),
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),  # on a shared machine, wall time also counts the other jobs
        "threads": threads,
        "torch": torch.__version__,
        "metric": "mean_per_concept_accuracy",
        "value": round(metrics["mean_per_concept_accuracy"], 4),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        "loss_log_every": log_every,
        "loss_history": history,
        "sha256": _sha256(checkpoint),
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record
