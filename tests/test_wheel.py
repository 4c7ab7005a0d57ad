"""The wheel works outside the checkout: the toy checkpoint, the notebooks and saved results travel in it.

The slow test builds the wheel from a copy of the source tree, installs it into a fresh virtual
environment whose only other path is this interpreter's site-packages (the dependencies, reused,
not reinstalled) and runs a small pipeline there, from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from (build/ and *.egg-info land in the copy, not in the checkout)
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "puretools", "data", "notebooks", "benchmarks/results"]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_and_shipped_folder_is_in_the_wheel_configuration():
    config = _pyproject()["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "puretools").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= set(config["packages"]), f"add {sorted(on_disk - set(config['packages']))} to pyproject's packages"
    from puretools.resources import FOLDERS

    for package, folder in FOLDERS.items():
        assert config["package-dir"][f"puretools.{package}"] == folder
        assert f"puretools.{package}" in config["packages"] and (ROOT / folder).is_dir()


def test_resources_are_the_top_level_folders_in_a_checkout():
    import puretools
    from puretools import toyworld
    from puretools.resources import load_benchmark_results, notebook_files, resource_path

    if Path(puretools.__file__).resolve().parents[1] != ROOT:
        pytest.skip("puretools is not imported from this checkout")
    assert toyworld.DATA_DIR.resolve() == (ROOT / "data" / "toyworld").resolve()
    assert [p.name for p in notebook_files()] == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert resource_path("_results", "disentangle.json").resolve() == (ROOT / "benchmarks/results/disentangle.json")
    assert load_benchmark_results("disentangle")["argv"] is not None
    with pytest.raises(puretools.PuretoolsError, match="no saved results.*disentangle"):
        load_benchmark_results("no_such_benchmark")


PIPELINE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    import puretools as pt
    from puretools import toyworld
    from puretools.resources import notebook_files, resource_path

    torch.set_num_threads(1)
    site = Path(sys.argv[1]).resolve()
    here = Path(pt.__file__).resolve()
    assert site in here.parents, f"puretools imported from {here}, not from the installed wheel in {site}"
    assert site in toyworld.DATA_DIR.resolve().parents, toyworld.DATA_DIR
    assert site in resource_path("_results").resolve().parents
    notebooks = notebook_files()
    assert len(notebooks) >= 9 and all(site in p.resolve().parents for p in notebooks), notebooks
    assert pt.load_benchmark_results("disentangle")["machine"]

    model = pt.load_model("toy")
    data = toyworld.ToyWorld(split="test", n=64)
    refs = pt.collect_references(model, data, toyworld.LAYER, n_ref=8, batch_size=32, progress=False)
    circuits = pt.circuit_attributions(model, data, toyworld.LAYER, toyworld.LOWER_LAYER, refs, neurons=[0, 1],
                                       progress=False)
    vn = pt.VirtualNeurons(seed=0).fit(circuits, k=2)
    assert refs.indices.shape == (refs.n_channels, 8) and circuits.shape[:2] == (2, 8)
    assert vn.labels.shape == (2, 8) and set(vn.labels.unique().tolist()) <= {0, 1}
    print("ok", here)
    """
)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    for name in SOURCES:
        src, dst = ROOT / name, source / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
        else:
            shutil.copy(src, dst)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PURETOOLS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, cwd=source, env=env, timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("puretools-*.whl")

    # a fresh environment that sees this interpreter's packages (torch, zennit, ...) but not its puretools:
    # a plain path line in a .pth file adds the directory without running the .pth files inside it,
    # so the checkout's editable install there stays out
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    (site / "_reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --target: pip only writes the wheel's files there (it never touches the packages it can see)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(site), str(wheel)], check=True, env=env, timeout=600)  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(python), "-c", PIPELINE, str(site)], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok ")
    demo = subprocess.run([str(python), "-m", "puretools", "demo", "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert demo.returncode == 0 and "--out" in demo.stdout, demo.stderr
