"""Every third-party module puretools imports is a declared dependency, with a range rather than a pin."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import name -> distribution name, where they differ
DISTRIBUTION = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "crp": "zennit-crp",
    "open_clip": "open-clip-torch",
    "umap": "umap-learn",
    "huggingface_hub": "huggingface-hub",
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, str]:
    """Normalised distribution name -> its requirement string, from pyproject's dependencies."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalize(re.match(r"[A-Za-z0-9_.-]+", r)[0]): r for r in requirements}


def _third_party_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "puretools"}


def test_the_scan_finds_third_party_imports():
    source = "import os\nimport numpy as np\nfrom PIL import Image\nfrom . import cache\n\ndef f():\n    import timm.layers\n"
    assert _third_party_imports(source) == {"numpy", "PIL", "timm"}


def test_every_third_party_import_is_declared():
    declared = _declared()
    missing = {}
    for path in sorted((ROOT / "puretools").rglob("*.py")):
        for module in _third_party_imports(path.read_text()):
            if _normalize(DISTRIBUTION.get(module, module)) not in declared:
                missing.setdefault(module, []).append(path.relative_to(ROOT).as_posix())
    assert not missing, f"declare these in pyproject.toml (and environment.yml): {missing}"


#: distribution -> why only one version works (pyproject.toml says more)
ONE_VERSION = {"zennit": "zennit-crp 0.6.0 needs <=0.4.6 and fails with 0.4.5"}


def test_no_exact_pins():
    pinned = [
        name
        for name, r in _declared().items()
        if ("==" in r or re.search(r">=\s*([\w.]+)\s*,\s*<=\s*\1\b", r)) and name not in ONE_VERSION
    ]
    assert not pinned, f"use compatible ranges: {pinned}"


def test_zennit_range_is_one_zennit_crp_accepts():
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    ours = Requirement(_declared()["zennit"]).specifier
    crp = next(Requirement(r) for r in requires("zennit-crp") if Requirement(r).name == "zennit").specifier
    candidates = [f"0.4.{i}" for i in range(10)] + ["0.5.0", "0.5.1"]
    assert [v for v in candidates if v in ours] and all(v in crp for v in candidates if v in ours)
    assert isinstance(crp, SpecifierSet)
