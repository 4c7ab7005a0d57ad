"""Reference collection and circuits under torch.distributed (2 gloo processes) equal one process.

One spawned pair of processes (``torch.multiprocessing.spawn``, gloo, 1 thread each) runs every
scenario and saves what each rank got; the tests compare that with one process, computed here
with the same arguments and one thread. Bit-identical (``torch.equal``) throughout: these are
CPU float32 runs with the same batch sizes.
"""

import dataclasses
import datetime
import os
import random
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from failing_data import FailAfterCheckpoint
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import puretools as pt
from puretools import distributed, toyworld

WORLD = 2
TOY_N = 1001  # not divisible by the world size; 21 batches of 50 images: 10 and 11 per rank
TOY = dict(n_ref=50, batch_size=50)
TOY_CIRCUITS = dict(batch_size=40, image_chunk=100)  # several chunks and batches, odd batch sizes
RN_N = 31
RN = dict(n_ref=6, batch_size=8)
RN_NEURONS = list(range(0, 512, 32))
RN_CIRCUITS = dict(batch_size=5, image_chunk=12)

pytestmark = pytest.mark.filterwarnings("ignore:Neuron\\(s\\).*dead neurons:RuntimeWarning")  # random weights


# --------------------------------------------------------------------------- models and data (both sides)


def toy():
    return pt.load_model("toy"), toyworld.ToyWorld(split="test", n=TOY_N)


def resnet():
    torch.manual_seed(0)
    model = pt.load_model("resnet18", weights=None)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial batch-norm statistics, so the LRP canonizer has work
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    data = TensorDataset(torch.randn(RN_N, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model, data


class Flaky(Dataset):
    """The toy data set, counting item reads; raises after ``fail_after`` reads if set."""

    def __init__(self, data, fail_after=None):
        self.data, self.fail_after, self.reads = data, fail_after, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError(f"disk error reading item {i}")
        return self.data[i]

    fingerprint = "flaky toy"  # the same cache entries whether it fails or not


class Plain(Flaky):
    """Flaky without a fingerprint: hashed image by image as the images stream by (like ToyWorld)."""

    fingerprint = None


def fields(refs):
    """Every field of a References, in order (a tuple that torch.save can store)."""
    return tuple(getattr(refs, f.name) for f in dataclasses.fields(refs))


def scenarios(rank: int, tmp: Path) -> dict:
    """Everything the ranks run; the same code computes the one-process answers (rank None)."""
    out = {}
    model, data = toy()
    refs = pt.collect_references(model, data, toyworld.LAYER, progress=False, **TOY)
    out["toy_refs"] = fields(refs)
    for method in ("gradient", "lrp"):
        out[f"toy_{method}"] = pt.circuit_attributions(
            model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, method=method, progress=False, **TOY_CIRCUITS)
    # one unit of work for two ranks: a rank with no reference image; ten images in one batch: a rank
    # with no images
    out["toy_one_neuron"] = pt.circuit_attributions(
        model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=[3], progress=False)
    small = pt.collect_references(model, toyworld.ToyWorld(split="test", n=10), toyworld.LAYER, n_ref=4,
                                  batch_size=16, progress=False)
    out["toy_ten_images"] = fields(small)
    plain = toyworld.ToyWorld(split="test", n=200)
    out["plain_refs"] = fields(pt.collect_references(model, Plain(plain), toyworld.LAYER, progress=False, **TOY))

    rn, rn_data = resnet()
    rn_refs = pt.collect_references(rn, rn_data, "layer4", progress=False, **RN)
    out["rn_refs"] = fields(rn_refs)
    for method in ("gradient", "lrp"):
        out[f"rn_{method}"] = pt.circuit_attributions(
            rn, rn_data, "layer4", "layer3", rn_refs, neurons=RN_NEURONS, method=method, progress=False,
            **RN_CIRCUITS)
    for what in ("references", "circuits"):
        fresh = Flaky(data)  # how many images are read without a cache (by this rank)
        if what == "references":
            pt.collect_references(model, fresh, toyworld.LAYER, progress=False, **TOY)
        else:
            # the indices only: Flaky has its own fingerprint, so References of `data` are refused
            pt.circuit_attributions(model, fresh, toyworld.LAYER, toyworld.LOWER_LAYER, refs.indices,
                                    progress=False, **TOY_CIRCUITS)
        out[f"fresh_{what}_reads"] = fresh.reads
    # a bad argument: every rank raises what one process raises (the same checks, not a copy of them)
    bad_calls = {
        "repeated_neuron": lambda: pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs,
                                                           neurons=[3, 3], progress=False),
        "other_layer": lambda: pt.circuit_attributions(model, data, toyworld.LOWER_LAYER, "layer2", refs,
                                                       progress=False),
        "batch_size": lambda: pt.collect_references(model, data, toyworld.LAYER, n_ref=5, batch_size=0,
                                                    progress=False),
    }
    for name, call in bad_calls.items():
        try:
            call()
            out[f"error_{name}"] = "no error"
        except Exception as err:
            out[f"error_{name}"] = f"{type(err).__name__}: {err}"
    if rank is None:
        out["plain_circuits"] = pt.circuit_attributions(model, Plain(plain), toyworld.LAYER, toyworld.LOWER_LAYER,
                                                        out["plain_refs"][0], progress=False, batch_size=40, image_chunk=25)
        return out

    # cache: one entry per result, under the one-process name; a second call reads it
    cache_dir = tmp / "cache"
    r = pt.collect_references(model, Flaky(data), toyworld.LAYER, cache_dir=cache_dir, progress=False, **TOY)
    pt.circuit_attributions(model, Flaky(data), toyworld.LAYER, toyworld.LOWER_LAYER, r, cache_dir=cache_dir,
                            progress=False, **TOY_CIRCUITS)
    dist.barrier()
    out["cache_files"] = sorted(p.name for p in cache_dir.iterdir())
    out["cache_dir"] = str(cache_dir)
    out["computed_refs"] = fields(r)
    out["cached_refs"] = fields(pt.collect_references(model, Flaky(data), toyworld.LAYER, cache_dir=cache_dir,
                                                      progress=False, **TOY))
    counting = Flaky(data)
    again = pt.circuit_attributions(model, counting, toyworld.LAYER, toyworld.LOWER_LAYER, r,
                                    cache_dir=cache_dir, progress=False, **TOY_CIRCUITS)
    out["cached_again"], out["cached_reads"] = again, counting.reads

    # rank 1 fails part-way: both ranks stop (no hang); a re-run resumes each rank's part
    resume_dir = tmp / "resume"
    for what in ("references", "circuits"):
        flaky = Flaky(data, fail_after=150 if rank == 1 else None)
        start = time.perf_counter()
        try:
            if what == "references":
                pt.collect_references(model, flaky, toyworld.LAYER, cache_dir=resume_dir, checkpoint_every=1,
                                      progress=False, **TOY)
            else:
                pt.circuit_attributions(model, flaky, toyworld.LAYER, toyworld.LOWER_LAYER, refs.indices,
                                        cache_dir=resume_dir, checkpoint_every=1, progress=False,
                                        **TOY_CIRCUITS)
            out[f"fail_{what}"] = "no error"
        except Exception as err:
            out[f"fail_{what}"] = f"{type(err).__name__}: {err}"
        out[f"fail_{what}_seconds"] = time.perf_counter() - start
        dist.barrier()
        out[f"partial_{what}"] = sorted(p.name for p in resume_dir.iterdir())
        dist.barrier()
        flaky = Flaky(data)
        if what == "references":
            r = pt.collect_references(model, flaky, toyworld.LAYER, cache_dir=resume_dir, checkpoint_every=1,
                                      progress=False, **TOY)
            out["resumed_references"] = fields(r)
        else:
            out["resumed_circuits"] = pt.circuit_attributions(
                model, flaky, toyworld.LAYER, toyworld.LOWER_LAYER, refs.indices, cache_dir=resume_dir,
                checkpoint_every=1, progress=False, **TOY_CIRCUITS)
        out[f"resumed_{what}_reads"] = flaky.reads
        dist.barrier()
    out["resume_files"] = sorted(p.name for p in resume_dir.iterdir())

    # the same with a data set hashed image by image: the shards' digests make the whole data set's fingerprint,
    # also when rank 0's shard comes from its cache entry and rank 1 resumes from a checkpoint
    plain_dir = tmp / "plain"
    try:
        pt.collect_references(model, Plain(plain, fail_after=60 if rank == 1 else None), toyworld.LAYER,
                              cache_dir=plain_dir, checkpoint_every=1, progress=False, **TOY)
        out["plain_fail"] = "no error"
    except Exception as err:
        out["plain_fail"] = f"{type(err).__name__}: {err}"
    dist.barrier()
    out["plain_partial"] = sorted(p.name for p in plain_dir.iterdir())
    dist.barrier()
    out["plain_resumed"] = fields(pt.collect_references(model, Plain(plain), toyworld.LAYER, cache_dir=plain_dir,
                                                        checkpoint_every=1, progress=False, **TOY))
    dist.barrier()
    out["plain_files"] = sorted(p.name for p in plain_dir.iterdir())

    # circuits on it, resumable: rank 1 fails part-way; its checkpoint, forged with a valid checksum (the
    # prefix hash of other images), is not trusted: the re-run warns and recomputes that rank's part
    forge_dir = tmp / "forge"
    try:
        # rank 1 fails at its first read after its first checkpoint (small chunks: it has several)
        failing = FailAfterCheckpoint(plain, forge_dir / f"circuits-partial-rank1of{WORLD}-*") if rank == 1 else plain
        pt.circuit_attributions(model, Plain(failing), toyworld.LAYER, toyworld.LOWER_LAYER, out["plain_refs"][0],
                                cache_dir=forge_dir, checkpoint_every=1, progress=False, batch_size=40, image_chunk=25)
        out["forge_fail"] = "no error"
    except Exception as err:
        out["forge_fail"] = f"{type(err).__name__}: {err}"
    dist.barrier()
    partial = sorted(forge_dir.glob(f"circuits-partial-rank{rank}of{WORLD}-*.safetensors"))
    out["forged"] = rank == 1 and len(partial) == 1
    out["forge_files"] = sorted(p.name for p in forge_dir.iterdir())
    if out["forged"]:
        with safe_open(partial[0], "pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        # other images' hash and other rows: trusted, the rows would end up in the result
        tensors["hash"], tensors["out"] = torch.flip(tensors["hash"], [0]), tensors["out"] + 1
        meta["checksum"] = pt.cache._checksum(tensors)  # consistent in itself: only the prefix hash can tell
        save_file(tensors, str(partial[0]), metadata=meta)
    dist.barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["forged_circuits"] = pt.circuit_attributions(
            model, Plain(plain), toyworld.LAYER, toyworld.LOWER_LAYER, out["plain_refs"][0], cache_dir=forge_dir,
            checkpoint_every=1, progress=False, batch_size=40, image_chunk=25)
    out["forged_warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    with distributed.local():
        out["local_active"] = distributed.active()
    out["active"] = distributed.active()
    return out


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.save(scenarios(rank, Path(tmp)), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single(one_thread):
    return scenarios(None, None)


def equal(a, b):
    if isinstance(a, tuple):
        return all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["toy_refs", "toy_gradient", "toy_lrp", "rn_refs", "rn_gradient", "rn_lrp",
                                  "toy_one_neuron", "toy_ten_images", "plain_refs"])
def test_every_rank_gets_the_one_process_result(ranks, single, name):
    for r, got in enumerate(ranks):
        assert equal(got[name], single[name]), f"rank {r}: {name} differs from one process"


@pytest.mark.distributed
def test_references_carry_every_field_of_one_process(ranks, single):
    """layer, channels and the WHOLE data set's fingerprint, not a shard's (field by field above)."""
    model, data = toy()
    indices, values, layer, channels, dataset, token_reduce = single["toy_refs"]
    assert token_reduce == "max"
    assert (layer, channels) == (toyworld.LAYER, values.shape[0])
    assert dataset == pt.cache.dataset_fingerprint(data)  # ToyWorld: hashed image by image
    assert single["rn_refs"][4] == pt.cache.dataset_fingerprint(resnet()[1])  # tensors: hashed up front
    assert single["plain_refs"][4] == pt.cache.dataset_fingerprint(Plain(toyworld.ToyWorld(split="test", n=200)))
    for got in ranks:
        assert equal(got["computed_refs"], got["cached_refs"])  # a cache hit carries them too
        assert got["computed_refs"][4] == pt.cache.dataset_fingerprint(Flaky(data))


@pytest.mark.distributed
def test_a_resumed_run_of_a_data_set_hashed_image_by_image(ranks, single):
    assert ranks[1]["plain_fail"].startswith("OSError: disk error"), ranks[1]["plain_fail"]
    assert ranks[0]["plain_fail"].startswith("RankFailedError: Rank 1 of 2 failed"), ranks[0]["plain_fail"]
    assert any("references-partial" in n for n in ranks[0]["plain_partial"])  # rank 1's checkpoint
    for got in ranks:
        assert equal(got["plain_resumed"], single["plain_refs"])
        assert len(got["plain_files"]) == 1  # the final result only


@pytest.mark.distributed
def test_a_forged_circuits_checkpoint_of_a_rank_is_not_trusted(ranks, single):
    assert ranks[1]["forged"], (ranks[1]["forge_files"], ranks[1]["forge_fail"])  # rank 1 had a checkpoint to forge
    for got in ranks:
        assert equal(got["forged_circuits"], single["plain_circuits"])
    assert any("does not match the reference images" in m for m in ranks[1]["forged_warnings"])
    assert not any("does not match" in m for m in ranks[0]["forged_warnings"])


@pytest.mark.distributed
def test_one_process_reads_what_the_ranks_cached(ranks, single):
    model, data = toy()
    counting = Flaky(data)
    refs = pt.collect_references(model, counting, toyworld.LAYER, cache_dir=ranks[0]["cache_dir"], progress=False,
                                 **TOY)
    assert counting.reads <= 3  # a hit: nothing recomputed
    assert equal(fields(refs), ranks[0]["computed_refs"])


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["repeated_neuron", "other_layer", "batch_size"])
def test_bad_arguments_raise_on_every_rank_what_one_process_raises(ranks, single, name):
    assert single[f"error_{name}"].startswith("PuretoolsError: "), single[f"error_{name}"]
    for got in ranks:
        assert got[f"error_{name}"] == single[f"error_{name}"]


@pytest.mark.distributed
def test_the_work_is_split(ranks, single):
    """Each rank reads about half of the images one process reads (none twice)."""
    for what in ("references", "circuits"):
        reads = [r[f"fresh_{what}_reads"] for r in ranks]
        # circuits: every rank, as one process, reads image 0 twice: to find the layers' layouts and to
        # check the layer's channel count
        twice = 2 * (WORLD - 1) if what == "circuits" else 0
        assert sum(reads) == single[f"fresh_{what}_reads"] + twice, what
        assert max(reads) < 0.6 * single[f"fresh_{what}_reads"], (what, reads)


@pytest.mark.distributed
def test_results_are_not_trivial(single):
    assert single["toy_gradient"].abs().sum() > 0 and single["rn_lrp"].abs().sum() > 0
    assert not torch.equal(single["rn_gradient"], single["rn_lrp"])


@pytest.mark.distributed
def test_the_cache_holds_one_entry_per_result_under_the_one_process_name(ranks, single, tmp_path):
    model, data = toy()
    refs = pt.collect_references(model, Flaky(data), toyworld.LAYER, cache_dir=tmp_path, progress=False, **TOY)
    pt.circuit_attributions(model, Flaky(data), toyworld.LAYER, toyworld.LOWER_LAYER, refs, cache_dir=tmp_path,
                            progress=False, **TOY_CIRCUITS)
    expected = sorted(p.name for p in tmp_path.iterdir())
    assert len(expected) == 2
    for got in ranks:
        assert got["cache_files"] == expected
        assert equal(got["cached_again"], single["toy_gradient"])
        # the data set's fingerprint and image 0 for the layers' layouts: nothing recomputed
        assert got["cached_reads"] <= 4


@pytest.mark.distributed
def test_a_failing_rank_stops_the_others_and_a_rerun_resumes(ranks, single):
    for what in ("references", "circuits"):
        assert ranks[1][f"fail_{what}"].startswith("OSError: disk error"), ranks[1][f"fail_{what}"]
        assert ranks[0][f"fail_{what}"].startswith("RankFailedError: Rank 1 of 2 failed (OSError: disk error")
        assert max(r[f"fail_{what}_seconds"] for r in ranks) < 60  # stopped, not waiting for the timeout
    # the ranks' partial work was kept: rank 0's finished shard / part, rank 1's checkpoints
    assert any(n.startswith("references-") for n in ranks[0]["partial_references"])
    assert {"circuits-partial-rank0of2", "circuits-partial-rank1of2"} <= {
        n.rsplit("-", 1)[0] for n in ranks[0]["partial_circuits"]}
    for got in ranks:
        assert equal(got["resumed_references"][:4], single["toy_refs"][:4])  # Flaky has its own fingerprint
        assert equal(got["resumed_references"], got["computed_refs"])
        assert equal(got["resumed_circuits"], single["toy_gradient"])
    # resumed: rank 0 reads only the fingerprints' images again, rank 1 skips what it had done
    assert ranks[0]["resumed_references_reads"] < 20 and ranks[0]["resumed_circuits_reads"] < 20
    for what in ("references", "circuits"):
        assert ranks[1][f"resumed_{what}_reads"] < ranks[1][f"fresh_{what}_reads"] - 50
    for got in ranks:  # only the final results are left
        assert len(got["resume_files"]) == 2 and not any("partial" in n for n in got["resume_files"])


@pytest.mark.distributed
def test_local_turns_it_off(ranks):
    assert all(r["active"] and not r["local_active"] for r in ranks)


def _crashing_worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    model, data = toy()
    if rank == 1:
        os._exit(3)  # dies without a word, as a killed process
    start = time.perf_counter()
    try:
        pt.collect_references(model, data, toyworld.LAYER, progress=False, **TOY)
        message = "no error"
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
    Path(tmp, "rank0.txt").write_text(f"{time.perf_counter() - start:.1f}\n{message}")


@pytest.mark.distributed
def test_a_rank_that_dies_does_not_leave_the_others_waiting(tmp_path):
    context = mp.spawn(_crashing_worker, args=(str(tmp_path),), nprocs=WORLD, join=False)
    for process in context.processes:
        process.join(120)
    assert [p.exitcode for p in context.processes] == [0, 3]
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("RankFailedError: Rank 0 lost contact with the other ranks"), message
    assert float(seconds) < 30  # well before the 60 s timeout: the broken connection is noticed


# --------------------------------------------------------------------------- the pieces, in one process


def test_shards_cover_the_data_set_once_in_whole_batches():
    for n, batch, world in [(1001, 50, 2), (10, 16, 2), (7, 1, 3), (100, 7, 4), (1, 64, 8)]:
        bounds = [distributed.shard_bounds(n, batch, r, world) for r in range(world)]
        covered = [i for a, b in bounds for i in range(a, b)]
        assert covered == list(range(n))
        assert all(a % batch == 0 for a, b in bounds if b > a)
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= batch


def test_merging_shards_breaks_ties_like_the_streaming_merge():
    """Many ties: the merged top-n of shards equals one process's collect_references."""
    rng = random.Random(0)
    for trial in range(20):
        n, n_ref, batch, world = rng.randint(4, 40), None, rng.randint(1, 6), rng.randint(2, 4)
        n_ref = rng.randint(1, n)
        acts = torch.tensor([[float(rng.randint(0, 3)) for _ in range(3)] for _ in range(n)])  # [n, 3 channels]
        data = TensorDataset(acts[:, :, None, None])
        model = nn.Sequential(nn.Identity()).eval()
        refs = pt.collect_references(model, data, "0", n_ref=n_ref, batch_size=batch, progress=False)
        parts_v, parts_i = [], []
        for r in range(world):
            a, b = distributed.shard_bounds(n, batch, r, world)
            v = torch.full((3, n_ref), float("-inf"))
            i = torch.full((3, n_ref), n)
            if b > a:
                k = min(n_ref, b - a)
                local = pt.collect_references(model, torch.utils.data.Subset(data, range(a, b)), "0", n_ref=k,
                                              batch_size=batch, progress=False)
                v[:, :k], i[:, :k] = local.values, local.indices + a
            parts_v.append(v)
            parts_i.append(i)
        values, indices = distributed.merge_top(torch.cat(parts_v, 1), torch.cat(parts_i, 1), n_ref)
        assert torch.equal(indices, refs.indices) and torch.equal(values, refs.values), trial
        # the brute-force order: activation descending, then index ascending
        brute = sorted(range(n), key=lambda j: (-acts[j, 0].item(), j))[:n_ref]
        assert refs.indices[0].tolist() == brute


def test_balance_deals_units_by_pair_count():
    assert distributed.balance([10, 10, 10, 10], 2) == [[0, 2], [1, 3]]
    loads = [sum(p for u, p in enumerate([90, 5, 40, 40, 3, 2]) if u in units)
             for units in distributed.balance([90, 5, 40, 40, 3, 2], 2)]
    assert sorted(loads) == [90, 90]


def test_without_a_process_group_nothing_changes():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.setup("cpu") == torch.device("cpu")
