"""The command line: help texts, --out files, errors that name flags, and runs under torchrun (2 processes)."""

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import puretools as pt
from puretools import __main__ as cli
from puretools import toyworld
from puretools.__main__ import _parser, cli_message, main


def run(*args):
    """``python -m puretools ARGS`` in this process (a subprocess costs seconds of imports): rc, stdout, stderr.

    The torchrun tests below run ``-m puretools`` in real processes.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) or exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)  # what the interpreter prints for sys.exit(message)
    return subprocess.CompletedProcess(args, code or 0, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("command", [[], ["collect"], ["attribute"], ["toy", "train"], ["demo"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout


def test_collect_and_attribute_on_image_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.jpg")
    common = ["--model", "resnet18", "--weights", "none", "--data", str(tmp_path / "imgs"), "--size", "32",
              "--n-ref", "4", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = run("collect", *common)
    assert result.returncode == 0, result.stderr
    assert "references: (512, 4)" in result.stdout
    result = run("attribute", *common, "--neurons", "0,5,9", "--max-memory", "0.05")
    assert result.returncode == 0, result.stderr
    assert "circuits: (3, 4, 256)" in result.stdout
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_bad_layer_is_one_line_error(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "imgs" / "a" / "0.png")
    result = run("collect", "--model", "resnet18", "--weights", "none", "--data", str(tmp_path / "imgs"),
                 "--layer", "layer9", "--n-ref", "1", "--cache-dir", str(tmp_path / "c"), "--device", "cpu")
    assert result.returncode != 0
    assert "error: The model has no layer named 'layer9'" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- help, --out, errors, torchrun


def subcommands():
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


@pytest.mark.parametrize("command", ["collect", "attribute", "demo"])  # `toy` belongs to the toy world's CLI
def test_every_option_has_help(command):
    _, choices = subcommands()
    missing = [a.option_strings for a in choices[command]._actions if a.option_strings and not a.help]
    assert not missing, f"options without help in {command!r}: {missing}"


def test_top_level_help_is_plain_text():
    parser, _ = subcommands()
    text = parser.format_help()
    for markup in ("``", ":func:", ":class:", ":mod:", ".. "):
        assert markup not in text, markup
    assert "torchrun" in text and "--out" in text


def test_out_must_be_a_safetensors_file():
    result = run("collect", "--out", "refs.pt")
    assert result.returncode == 1 and "must end in .safetensors" in result.stderr


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(before)


def test_out_files_hold_the_results(tmp_path, one_thread):
    common = ["--model", "toy", "--data", "toy:test", "--n-ref", "20", "--cache-dir", str(tmp_path / "c"),
              "--device", "cpu"]
    main(["collect", *common, "--out", str(tmp_path / "refs.safetensors")])
    main(["attribute", *common, "--neurons", "1,5", "--method", "lrp", "--out", str(tmp_path / "circ.safetensors")])
    model, data = pt.load_model("toy"), toyworld.ToyWorld(split="test")
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=20, progress=False)
    circuits = pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=[1, 5],
                                       method="lrp", progress=False)
    saved = load_file(tmp_path / "refs.safetensors")
    assert set(saved) == {"indices", "values"}
    assert torch.equal(saved["indices"], refs.indices) and torch.equal(saved["values"], refs.values)
    saved = load_file(tmp_path / "circ.safetensors")
    assert set(saved) == {"circuits", "neurons", "indices"}
    assert torch.equal(saved["circuits"], circuits) and saved["neurons"].tolist() == [1, 5]
    assert torch.equal(saved["indices"], refs.indices[[1, 5]])
    with safe_open(str(tmp_path / "circ.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["puretools"])
    assert meta["method"] == "lrp" and meta["layer"] == toyworld.LAYER and meta["data"] == "toy:test"


def test_errors_name_the_flags_not_the_python_arguments(tmp_path):
    result = run("collect", "--model", "toy", "--data", "toy:test", "--n-ref", "5000", "--cache-dir", str(tmp_path),
                 "--device", "cpu")
    err = result.stderr
    assert result.returncode == 1 and err.startswith("error: ")
    assert "--n-ref 5000" in err and "n_ref" not in err
    assert cli_message("batch_size and image_chunk must be positive", "attribute").startswith("--pair-batch-size")
    assert cli_message("Raise max_memory to at least 0.5 GiB.") == "Raise --max-memory to at least 0.5 GiB."
    assert cli_message("The model has no layer named 'layer9'") == "The model has no layer named 'layer9'"


def torchrun(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "puretools",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.subprocess
@pytest.mark.distributed
def test_torchrun_writes_the_one_process_file(tmp_path, one_thread):
    """The issue's check: torchrun --nproc_per_node 2 -m puretools attribute --model toy --data toy:test."""
    common = ["attribute", "--model", "toy", "--data", "toy:test", "--device", "cpu"]
    result = torchrun(*common, "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "two.safetensors"))
    assert result.returncode == 0, result.stderr[-3000:]
    main([*common, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.safetensors")])
    assert (tmp_path / "two.safetensors").read_bytes() == (tmp_path / "one.safetensors").read_bytes()
    assert result.stdout.count("circuits: (8, 100, 64)") == 1  # printed once, by rank 0
    totals = set(re.findall(r"circuits layer3<-layer4: +\d+%\|[^|]*\| *\d+/(\d+)", result.stderr))
    assert len(totals) == 1 and int(totals.pop()) < 800  # one progress bar: rank 0's share of 800 pairs
    assert sorted(p.name for p in (tmp_path / "c2").iterdir()) == sorted(p.name for p in (tmp_path / "c1").iterdir())


@pytest.mark.subprocess
@pytest.mark.distributed
def test_a_failing_rank_stops_torchrun_with_a_clear_message(tmp_path):
    root = pt.data.make_image_folder(tmp_path / "imgs", n=8, size=32)
    files = sorted(root.rglob("*.jpg"), key=lambda p: (p.parent.name, p.name))
    files[6].write_bytes(b"not a jpeg")  # in rank 1's shard (images 4-7), not one the fingerprint reads
    start = time.perf_counter()
    result = torchrun("collect", "--model", "resnet18", "--weights", "none", "--data", str(root), "--size", "32",
                      "--n-ref", "2", "--batch-size", "2", "--cache-dir", str(tmp_path / "c"), "--device", "cpu",
                      "--timeout", "5")
    assert result.returncode != 0
    assert time.perf_counter() - start < 120
    # the data set's own clear error (puretools.data), naming the file, reaches rank 0's message
    failed = f"error: Rank 1 of 2 failed (PuretoolsError: Could not read the image file '{files[6]}'"
    assert failed in result.stderr, result.stderr[-3000:]


def test_demo_records_its_times_beside_the_pages_not_in_the_checkout(tmp_path, monkeypatch):
    """`make demo` then `make test` must pass on any machine: the demo never rewrites docs/notebook_times.json."""
    args = cli._parser().parse_args(["demo", "--out", str(tmp_path / "pages")])
    assert args.times is None
    monkeypatch.setattr(cli, "notebook_files", lambda: [])  # stop before executing anything
    with pytest.raises(SystemExit, match="No notebooks found"):
        cli._demo(args)
    assert args.times == str(tmp_path / "pages" / "notebook_times.json")
