"""Several processes (``torchrun``): reference collection and circuits split across ranks, equal to one process.

When a ``torch.distributed`` process group is initialised (and holds more than one process),
:func:`puretools.collect_references` and :func:`puretools.circuit_attributions` hand their work
to this module (they ask :func:`puretools.ranks.split_step`, which returns what this module
registered with :func:`puretools.ranks.register_split` when it was imported; the engines never
import it); every rank calls them with the same arguments and gets the same result, equal
to what one process computes:

- **Reference collection.** The data set is cut into contiguous shards by index, along the
  batches one process would read (``batch_size`` images each), one run of batches per rank,
  so every image goes through the model in the same batch as in one process. Each rank keeps
  its shard's top ``n_ref`` per channel (with global data-set indices); the shards' lists are
  all-gathered and merged in the order (activation descending, data-set index ascending). One
  process breaks ties the same way: its streaming merge is a stable sort of the running top
  (lower indices) followed by the new batch (in index order), so among equal activations the
  lower data-set index wins; the top ``n_ref`` of a total order does not depend on how the
  candidates were grouped, hence the same references in the same order. The merged
  :class:`~puretools.References` carry the layer, its channel count and the fingerprint of
  the whole data set, as one process's do: for a data set hashed image by image, each rank
  hashes its shard's images as they stream by and the digests are chained in index order (a
  shard resumed from a checkpoint or taken from its cache entry reads its images once more
  for this).
- **Circuits.** One process walks the distinct reference images in chunks of ``image_chunk``
  and, within a chunk, in batches of ``batch_size`` images sorted by their number of pairs.
  Those batches are the units of work: they are dealt to the ranks, largest first, each to
  the rank with the fewest pairs so far (balanced by pair count); each rank runs the engine's
  own batch routine on its units; the rows are all-gathered, so every rank returns the whole
  tensor. On the CPU, a rank computes the lower-layer activations of its images in forward
  passes of the same sizes as one process does (PyTorch's CPU kernels give bit-identical
  per-image results for equal batch sizes, whatever the other images: observed, not
  promised by PyTorch, and checked by tests/test_distributed.py), so the result is bit-identical
  to one process with the same ``batch_size``, ``image_chunk`` and threads per process. On
  other devices the lower-layer forward passes hold only the rank's images of a chunk (no
  padding work), so results agree to float32 rounding (different batch sizes can pick
  different kernels), not bit for bit.
- **Cache and checkpoints.** Rank 0 looks up and writes the final result under the same
  cache key as one process (one file). Each rank checkpoints its own part (reference shards
  through the single-process checkpoints, circuits in ``circuits-partial-rank<r>of<w>-*``
  files): re-running the same command after a rank was killed resumes every rank's part; the
  partial files are removed once the result is written.
- **Failures.** A rank whose work raises tells the others at the next exchange; every rank
  then raises (the failing one its own exception, the others :class:`RankFailedError` naming
  it) instead of waiting forever. A rank that dies outright breaks the connection, which the
  others report as :class:`RankFailedError` too; a rank that hangs is caught by the process
  group's timeout (``timeout=`` of ``init_process_group``, ``--timeout`` on the command line).

Both paths start with the engine's own preparation (``references.prepare_references``,
``circuits.prepare_circuits``: the argument checks, the plan, the cache key and the verified
hit) and use its per-chunk work (``circuits.lower_activations``: load, check, forward, check
the activations), so a check added to one process holds under torchrun too.

Results travel as CPU tensors through a gloo group (created beside an NCCL default group), so
this works the same with NCCL on GPUs and gloo on CPUs. ``with local():`` turns all of this off
(each rank then computes on its own).

The pieces: :mod:`.group` (the process group, exchanges that fail together), :mod:`.shards`
(reference collection), :mod:`.pairs` (circuits).
"""

from .group import (
    RankFailedError,
    active,
    local,
    rank,
    rank_zero_first,
    setup,
    teardown,
    world_size,
)
from .pairs import balance, plan_split, split_circuits
from .shards import merge_top, shard_bounds, sharded_references

__all__ = [
    "RankFailedError",
    "active",
    "balance",
    "local",
    "merge_top",
    "plan_split",
    "rank",
    "rank_zero_first",
    "setup",
    "shard_bounds",
    "sharded_references",
    "split_circuits",
    "teardown",
    "world_size",
]
