"""Atomic writes: a kill -9 mid-write leaves at most a temporary file, which the next run removes;
the command line checks --out before any work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puretools import cache
from puretools.__main__ import main
from puretools.files import TEMP_MARK, atomic_save_file, remove_stale_temps, temp_path

HERE = Path(__file__).parent

# writes half a file, says so, then hangs inside the write until it is killed
KILLED_WRITE = """
import sys, time
import safetensors.torch
import puretools.files as files
from pathlib import Path
import torch

def hang(tensors, path, metadata=None):
    Path(path).write_bytes(b"half a safetensors file")
    print("writing", flush=True)
    time.sleep(600)

files.save_file = hang
target = sys.argv[2]
if sys.argv[1] == "cache":
    from puretools import cache
    cache.save_cached(target, "references", "k" * 64, {"x": torch.zeros(1000)})
else:
    files.atomic_save_file({"x": torch.zeros(1000)}, target)
"""


def kill_during_write(kind, target):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, kind, str(target)], stdout=subprocess.PIPE, text=True,
                            cwd=HERE)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def temps(folder):
    return [p for p in Path(folder).iterdir() if TEMP_MARK in p.name]


def test_kill_during_an_out_write_leaves_only_a_temp_file_that_the_next_run_removes(tmp_path):
    out = tmp_path / "refs.safetensors"
    atomic_save_file({"x": torch.ones(3)}, out)  # an earlier result
    kill_during_write("out", out)
    assert len(temps(tmp_path)) == 1
    assert torch.equal(load_file(out)["x"], torch.ones(3))  # the old file is whole
    with pytest.raises(SystemExit):  # the next run: --out is checked (and its folder cleaned) first
        main(["collect", "--out", str(out), "--device", "gpu"])
    assert temps(tmp_path) == []


def test_kill_during_a_cache_write_leaves_only_a_temp_file_that_the_next_read_removes(tmp_path):
    kill_during_write("cache", tmp_path)
    assert len(temps(tmp_path)) == 1 and not list(tmp_path.glob("references-*.safetensors"))
    assert cache.load_cached(tmp_path, "references", "k" * 64) is None
    assert temps(tmp_path) == []


def test_temp_files_of_live_writers_and_of_other_machines_are_kept_until_stale(tmp_path):
    live = temp_path(tmp_path / "a.safetensors")  # this process: alive
    live.write_bytes(b"x")
    other = tmp_path / f".b.safetensors{TEMP_MARK}otherhost-123-abcdef01.tmp"
    other.write_bytes(b"x")
    foreign = tmp_path / ".c.safetensors.tmp"  # not ours
    foreign.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == []
    old = time.time() - 2 * 3600
    os.utime(other, (old, old))
    os.utime(foreign, (old, old))
    assert remove_stale_temps(tmp_path) == [other]
    assert live.exists() and foreign.exists()


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path):
    with pytest.raises(Exception):
        atomic_save_file({"x": "not a tensor"}, tmp_path / "x.safetensors")  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, phrase", [
    (["toy", "train", "--out", "/proc/puretools-toy"], "not writable"),
    (["collect", "--out", "/proc/refs.safetensors"], "not writable"),
    (["attribute", "--out", "/"], "must end in .safetensors"),
])  # fmt: skip
def test_out_is_checked_before_any_work(argv, phrase, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert time.perf_counter() - start < 5  # no training, no collection first
    assert phrase in str(info.value.code)


def test_cli_writes_out_through_the_atomic_writer(tmp_path, monkeypatch):
    seen = []
    real = atomic_save_file

    def spy(tensors, path, metadata=None):
        seen.append(Path(path))
        return real(tensors, path, metadata)

    monkeypatch.setattr("puretools.__main__.atomic_save_file", spy)  # imported at the top of __main__
    out = tmp_path / "refs.safetensors"
    main(["collect", "--n-ref", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert out in seen and set(load_file(out)) == {"indices", "values"}
    assert temps(tmp_path) == []
