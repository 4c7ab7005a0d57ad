"""The command line: help texts and a collect/attribute run on a random model and a tiny folder."""

import subprocess
import sys

import pytest
import torch
from PIL import Image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "puretools", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


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
