"""Caches: fingerprints, atomic writes, resumable runs after SIGKILL, determinism across processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from failing_data import FailAfterCheckpoint
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import puretools as pt
from puretools import cache, files

HERE = Path(__file__).parent


def worker(what, cache_dir, out, delay=0.0):
    return subprocess.Popen([sys.executable, str(HERE / "resume_worker.py"), what, str(cache_dir), str(out), str(delay)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(proc, pattern_dir, pattern, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(Path(pattern_dir).glob(pattern)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker finished before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


@pytest.mark.subprocess
@pytest.mark.parametrize("what, partial", [("references", "references-partial-*"), ("circuits", "circuits-partial-*")])
def test_killed_run_resumes_to_identical_result(tmp_path, what, partial):
    clean = worker(what, tmp_path / "clean", tmp_path / "clean.safetensors")
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]

    proc = worker(what, tmp_path / "cache", tmp_path / "killed.safetensors", delay=0.01)
    kill_when(proc, tmp_path / "cache", partial + ".safetensors")
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.safetensors").exists()

    resumed = worker(what, tmp_path / "cache", tmp_path / "resumed.safetensors")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    a, b = load_file(tmp_path / "clean.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not list((tmp_path / "cache").glob("*-partial-*"))  # checkpoints are removed when done


@pytest.mark.subprocess
def test_determinism_across_processes(tmp_path):
    outs = []
    for i in range(2):
        p = worker("circuits", tmp_path / f"c{i}", tmp_path / f"{i}.safetensors")
        assert p.wait(timeout=300) == 0
        outs.append(load_file(tmp_path / f"{i}.safetensors"))
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k])
    vn = [pt.VirtualNeurons(seed=0).fit(o["circuits"], k=2).labels for o in outs]
    assert torch.equal(vn[0], vn[1])


KILL_DURING_WRITE = """
import os, signal, sys, torch
import safetensors.torch as st
from puretools import cache, files
def half_then_die(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"partial garbage")
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
files.save_file = half_then_die
cache.save_cached(sys.argv[1], "references", "k" * 64, {"x": torch.zeros(3)})
"""


@pytest.mark.subprocess
def test_kill_during_cache_write_keeps_previous_cache(tmp_path):
    cache.save_cached(tmp_path, "references", "k" * 64, {"x": torch.arange(3.0)})
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)])
    assert proc.returncode == -signal.SIGKILL
    hit = cache.load_cached(tmp_path, "references", "k" * 64)
    assert hit is not None and torch.equal(hit["x"], torch.arange(3.0))


def test_stale_fingerprint_is_not_reused(tmp_path):
    cache.save_cached(tmp_path, "circuits", "a" * 64, {"x": torch.ones(2)})
    path = next(tmp_path.glob("circuits-*.safetensors"))
    # the same file name but another fingerprint inside (e.g. a hash-prefix collision): not a hit
    path.rename(tmp_path / path.name.replace("a" * 20, "b" * 20))
    assert cache.load_cached(tmp_path, "circuits", "b" * 64) is None


def test_dataset_fingerprint_sees_content_and_length():
    x = torch.zeros(5, 3, 4, 4)
    base = cache.dataset_fingerprint(TensorDataset(x))
    y = x.clone()
    y[-1, 0, 0, 0] = 1
    assert cache.dataset_fingerprint(TensorDataset(y)) != base
    assert cache.dataset_fingerprint(TensorDataset(x[:4])) != base
    assert cache.dataset_fingerprint(TensorDataset(x.clone())) == base


def test_fingerprint_covers_every_part():
    base = dict(model="m", dataset="d", layer="layer4", n_ref=100, method="gradient", precision="float32")
    key = cache.fingerprint(**base)
    for name, other in [("model", "m2"), ("dataset", "d2"), ("layer", "layer3"), ("n_ref", 99),
                        ("method", "lrp"), ("precision", "bfloat16")]:
        assert cache.fingerprint(**{**base, name: other}) != key, name


def test_no_unsafe_torch_load_in_package():
    root = Path(pt.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"


# --------------------------------------------------------------------------- issue 11: never stale

import stat  # noqa: E402
import warnings  # noqa: E402

from torch import nn  # noqa: E402

from puretools.toyworld import ToyWorld  # noqa: E402


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).eval()


def collect(model, data, cache_dir=None, **kw):
    kw = {"n_ref": 5, "batch_size": 256, "progress": False, **kw}
    return pt.collect_references(model, data, "1", cache_dir=cache_dir, **kw)


def same(a, b):
    return torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


def test_changing_one_image_of_generated_data_is_a_cache_miss(tmp_path):
    world = ToyWorld("test")  # 3000 generated images, neither tensors nor files
    world.pixels = world.pixels.clone()  # leave the per-process generation cache alone
    model = tiny_model()
    before = collect(model, world, tmp_path)
    # image 2429 becomes the pattern that excites channel 0 most: its top reference now
    pattern = (model[0].weight[0] > 0).to(torch.uint8) * 255  # [3, 3, 3]
    world.pixels[2429] = pattern.repeat(1, 11, 11)[:, :32, :32]
    fresh = collect(model, world)  # no cache: the truth
    assert not same(before, fresh) and fresh.indices[0, 0] == 2429
    assert same(collect(model, world, tmp_path), fresh)
    assert len(list(tmp_path.glob("references-*.safetensors"))) == 1  # the same entry, rewritten


def test_fingerprint_of_any_image_of_a_generic_data_set():
    class Generated(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i] * 2, 0

    x = torch.randn(7, 3, 4, 4)
    base = cache.dataset_fingerprint(Generated(x))
    for i in range(7):
        y = x.clone()
        y[i, 1, 2, 3] += 1e-3
        assert cache.dataset_fingerprint(Generated(y)) != base, i
    assert cache.dataset_fingerprint(Generated(x.clone())) == base
    # a Subset is fingerprinted by its own items only
    sub = torch.utils.data.Subset(TensorDataset(x), [1, 3])
    assert cache.dataset_fingerprint(sub) == cache.dataset_fingerprint(torch.utils.data.Subset(TensorDataset(x), [1, 3]))
    assert cache.dataset_fingerprint(sub) != cache.dataset_fingerprint(torch.utils.data.Subset(TensorDataset(x), [1, 4]))


def test_image_rewritten_in_place_under_the_same_name(tmp_path):
    from PIL import Image

    from puretools.data import image_folder, make_image_folder

    root = make_image_folder(tmp_path / "images", n=4, size=32)
    model = tiny_model()
    data = image_folder(root, size=16)
    before = collect(model, data, tmp_path / "cache", n_ref=2)
    path, _ = data.samples[1]  # not the first, middle or last image
    Image.new("RGB", (32, 32), (255, 255, 255)).save(path, quality=90)  # same name, new content
    data = image_folder(root, size=16)
    fresh = collect(model, data, n_ref=2)
    assert not same(before, fresh)
    assert same(collect(model, data, tmp_path / "cache", n_ref=2), fresh)


def test_same_weights_other_activation_is_another_model(tmp_path):
    relu = tiny_model()
    with torch.no_grad():
        relu[0].bias.fill_(-10.0)  # every pre-activation is negative: ReLU gives 0, LeakyReLU does not
    leaky = nn.Sequential(relu[0], nn.LeakyReLU(0.5)).eval()  # the very same conv weights
    assert cache.model_fingerprint(relu) != cache.model_fingerprint(leaky)
    assert cache.model_fingerprint(relu) != cache.model_fingerprint(nn.Sequential(relu[0], nn.ReLU(inplace=True)))
    data = TensorDataset(torch.rand(20, 3, 6, 6))
    a = collect(relu, data, tmp_path)
    b = collect(leaky, data, tmp_path)
    assert same(b, collect(leaky, data))  # not relu's result from the cache
    assert not same(a, b)


def test_composites_with_other_parameters_are_other_entries(tmp_path, vgg, small_images):
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import SequentialMergeBatchNorm

    fp = cache.object_fingerprint
    assert fp(EpsilonPlusFlat()) == fp(EpsilonPlusFlat())
    assert fp(EpsilonPlusFlat()) != fp(EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))
    assert fp(EpsilonGammaBox(low=-3.0, high=3.0)) != fp(EpsilonGammaBox(low=-1.0, high=1.0))

    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=3, progress=False)
    maps = {}
    for name, make in [("wide", lambda: EpsilonGammaBox(low=-3.0, high=3.0)),
                       ("narrow", lambda: EpsilonGammaBox(low=-0.5, high=0.5))]:
        maps[name] = pt.reference_heatmaps(vgg, small_images, "features.9", refs, [0, 1], composite=make(),
                                           cache_dir=tmp_path)
        fresh = pt.reference_heatmaps(vgg, small_images, "features.9", refs, [0, 1], composite=make())
        torch.testing.assert_close(maps[name], fresh)
    assert not torch.allclose(maps["wide"], maps["narrow"])
    assert len(list(tmp_path.glob("heatmaps-*.safetensors"))) == 2


@pytest.mark.subprocess
def test_composite_fingerprint_is_stable_across_processes():
    code = ("from zennit.composites import EpsilonGammaBox; from zennit.torchvision import ResNetCanonizer; "
            "from puretools import cache; "
            "print(cache.object_fingerprint(EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[ResNetCanonizer()])))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(outs) == 1


def test_dict_items_with_a_cache_dir_give_a_clear_error(tmp_path):
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 6, 6), "label": i}

    with pytest.raises(pt.PuretoolsError, match=r"(dict|image tensor).*\(image"):
        collect(tiny_model(), Dicts(), tmp_path, n_ref=2)
    with pytest.raises(pt.PuretoolsError, match=r"item 0 is a dict with keys \['image', 'label'\]"):
        cache.dataset_fingerprint(Dicts())


def test_random_augmentation_is_detected_and_not_cached(tmp_path):
    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.randn(3, 6, 6), i

    for _ in range(2):
        with pytest.warns(UserWarning, match="differs between two reads"):
            collect(tiny_model(), Augmented(), tmp_path, n_ref=2)
    assert not list(tmp_path.glob("*.safetensors"))  # not one file per call


# --------------------------------------------------------------------------- issue 11: never lost


def test_cache_dir_that_is_a_file_only_warns(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    data = TensorDataset(torch.randn(20, 3, 6, 6))
    with pytest.warns(RuntimeWarning, match="Could not write the cache file"):
        refs = collect(tiny_model(), data, blocker)
    assert same(refs, collect(tiny_model(), data))


def test_entry_path_that_is_a_directory_only_warns(tmp_path):
    data = TensorDataset(torch.randn(20, 3, 6, 6))
    first = collect(tiny_model(), data, tmp_path)
    (path,) = tmp_path.glob("references-*.safetensors")
    path.unlink()
    path.mkdir()
    with pytest.warns(RuntimeWarning, match="Could not write the cache file"), \
            pytest.warns(RuntimeWarning, match="is not a file; recomputing"):
        assert same(collect(tiny_model(), data, tmp_path), first)


@pytest.mark.parametrize("what", ["references", "circuits"])
def test_checkpoint_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, monkeypatch, vgg, small_images, what):
    real = files.save_file

    def full_disk(tensors, path, metadata=None):
        if "-partial-" in str(path):
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    refs = pt.collect_references(vgg, small_images, "features.9", n_ref=4, progress=False)
    clean = pt.circuit_attributions(vgg, small_images, "features.9", "features.6", refs, image_chunk=4,
                                    progress=False)
    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        if what == "references":
            got = pt.collect_references(vgg, small_images, "features.9", n_ref=4, batch_size=4, cache_dir=tmp_path,
                                        checkpoint_every=1, progress=False)
            assert same(got, refs)
        else:
            got = pt.circuit_attributions(vgg, small_images, "features.9", "features.6", refs, image_chunk=4,
                                          cache_dir=tmp_path, checkpoint_every=1, progress=False)
            assert torch.equal(got, clean)
    assert len(list(tmp_path.glob(f"{what}-*.safetensors"))) == 1  # the final result is cached


def test_final_write_that_fails_returns_the_result(tmp_path, monkeypatch):
    def full_disk(tensors, path, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", full_disk)
    data = TensorDataset(torch.randn(20, 3, 6, 6))
    with pytest.warns(RuntimeWarning, match="No space left"):
        refs = collect(tiny_model(), data, tmp_path)
    assert same(refs, collect(tiny_model(), data))
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*.tmp"))


KILL_DURING_FINAL_WRITE = """
import os, signal, sys, torch
from torch.utils.data import TensorDataset
import puretools as pt
from puretools import cache, files
real = files.save_file
def half_then_die(tensors, path, metadata=None):
    if "-partial-" not in str(path):  # the final write: half a file, then kill -9
        with open(path, "wb") as f:
            f.write(b"x" * 100000)
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, path, metadata=metadata)
files.save_file = half_then_die
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU()).eval()
data = TensorDataset(torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(3)))
pt.collect_references(model, data, "1", n_ref=5, batch_size=8, checkpoint_every=1, cache_dir=sys.argv[1], progress=False)
"""


@pytest.mark.subprocess
def test_kill_during_final_write_leaves_no_temp_file_after_the_next_run(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_FINAL_WRITE, str(tmp_path)], cwd=HERE)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".*.tmp"))) == 1  # the killed write's temporary file
    data = TensorDataset(torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(3)))
    refs = collect(tiny_model(), data, tmp_path, batch_size=8)
    assert same(refs, collect(tiny_model(), data))
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(list(tmp_path.glob("references-*.safetensors"))) == 1
    assert not list(tmp_path.glob("*-partial-*"))


def test_temp_file_of_a_live_writer_is_kept(tmp_path):
    live = tmp_path / f".references-x.safetensors.{cache._HOST}.{os.getpid()}.abcd.tmp"
    live.write_bytes(b"being written")
    cache.load_cached(tmp_path, "references", "k" * 64)
    assert live.exists()


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    data = TensorDataset(torch.randn(20, 3, 6, 6))
    refs = collect(tiny_model(), data, "~/puretools-cache")
    assert len(list((tmp_path / "home" / "puretools-cache").glob("references-*.safetensors"))) == 1
    assert not (tmp_path / "cwd" / "~").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same(collect(tiny_model(), data, "~/puretools-cache"), refs)


def test_cache_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = cache.save_cached(tmp_path, "references", "k" * 64, {"x": torch.zeros(3)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # group and others may read a shared cache


# --------------------------------------------------------------------------- issue 11: hits verified


def test_flipped_bytes_are_detected_and_recomputed(tmp_path):
    data = TensorDataset(torch.randn(20, 3, 6, 6))
    first = collect(tiny_model(), data, tmp_path)
    (path,) = tmp_path.glob("references-*.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checksum"):
        again = collect(tiny_model(), data, tmp_path)
    assert same(again, first)


def test_forged_file_of_another_shape_is_recomputed(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = TensorDataset(torch.randn(20, 3, 6, 6))
    first = collect(tiny_model(), data, tmp_path)
    (path,) = tmp_path.glob("references-*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    forged = {"indices": torch.zeros(6, 2, dtype=torch.long), "values": torch.zeros(6, 2)}
    meta["checksum"] = cache._checksum(forged)  # consistent in itself, but not what the call computes
    save_file(forged, str(path), metadata=meta)
    with pytest.warns(RuntimeWarning, match="not what this call computes"):
        again = collect(tiny_model(), data, tmp_path)
    assert same(again, first)


def test_old_orphans_are_removed_and_other_files_kept(tmp_path):
    old = tmp_path / ".circuits-abc.safetensors.x1y2z3.tmp"  # an older version's temporary name
    other = tmp_path / ".notes.tmp"  # not ours
    for f in (old, other):
        f.write_bytes(b"x")
        os.utime(f, (time.time() - 2 * cache.STALE_TEMP_SECONDS,) * 2)
    cache.load_cached(tmp_path, "circuits", "k" * 64)
    assert not old.exists() and other.exists()


def test_image_folder_fingerprint_names_a_missing_file(tmp_path):
    from puretools.data import image_folder, make_image_folder

    data = image_folder(make_image_folder(tmp_path, n=3, size=16), size=8)
    path, _ = data.samples[2]
    os.unlink(path)
    with pytest.raises(pt.PuretoolsError, match=rf"{Path(path).name} \(data-set index 2\).*deleted"):
        cache.dataset_fingerprint(data)


def test_changing_a_reference_image_is_a_circuits_cache_miss(tmp_path, vgg):
    class Generated(torch.utils.data.Dataset):  # neither tensors nor files: every image is hashed
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], i

    data = Generated(torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    refs = pt.collect_references(vgg, data, "features.9", n_ref=3, progress=False)
    kw = dict(neurons=[0], progress=False)
    before = pt.circuit_attributions(vgg, data, "features.9", "features.6", refs.indices, cache_dir=tmp_path, **kw)
    changed = next(int(i) for i in refs.indices[0] if int(i) not in (0, 15, 29))  # not a sampled image
    data.x[changed] *= -1  # a reference image of neuron 0 changes
    fresh = pt.circuit_attributions(vgg, data, "features.9", "features.6", refs.indices, **kw)
    assert not torch.allclose(before, fresh)
    torch.testing.assert_close(
        pt.circuit_attributions(vgg, data, "features.9", "features.6", refs.indices, cache_dir=tmp_path, **kw), fresh)
    with pytest.raises(pt.PuretoolsError, match="another data set"):  # the References know the old images
        pt.circuit_attributions(vgg, data, "features.9", "features.6", refs, **kw)


def test_a_forged_circuits_checkpoint_is_not_trusted(tmp_path):
    """A checkpoint with a valid checksum but another prefix hash (other images) is recomputed, not resumed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, data = pt.load_model("toy"), pt.toyworld.ToyWorld(split="test", n=120)
    refs = pt.collect_references(model, data, "layer4", n_ref=10, progress=False)
    kw = dict(batch_size=16, image_chunk=10, progress=False)
    clean = pt.circuit_attributions(model, data, "layer4", "layer3", refs, **kw)
    with pytest.raises(OSError, match="disk error"):  # the same data set type in both runs: the same cache key
        pt.circuit_attributions(model, FailAfterCheckpoint(data, tmp_path / "circuits-partial-*"), "layer4", "layer3", refs.indices,
                                cache_dir=tmp_path, checkpoint_every=1, **kw)
    (partial,) = tmp_path.glob("circuits-partial-*.safetensors")
    with safe_open(partial, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["hash"], tensors["out"] = torch.flip(tensors["hash"], [0]), tensors["out"] + 1
    meta["checksum"] = cache._checksum(tensors)  # consistent in itself: only the prefix hash can tell
    save_file(tensors, str(partial), metadata=meta)
    with pytest.warns(RuntimeWarning, match="does not match the reference images"):
        again = pt.circuit_attributions(model, FailAfterCheckpoint(data, tmp_path / "never" / "x"), "layer4", "layer3",
                                        refs.indices, cache_dir=tmp_path, checkpoint_every=1, **kw)
    assert torch.equal(again, clean)
