"""Caches: fingerprints, atomic writes, resumable runs after SIGKILL, determinism across processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import puretools as pt
from puretools import cache

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
from puretools import cache
def half_then_die(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"partial garbage")
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
cache.save_file = half_then_die
cache.save_cached(sys.argv[1], "references", "k" * 64, {"x": torch.zeros(3)})
"""


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
