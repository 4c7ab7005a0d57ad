"""The layering of puretools: the import-linter contract in pyproject.toml holds, and no import hides in a function.

A function-level import of a puretools module is how an import circle gets hidden (the module
imports fine, the circle bites later); the package has none, and a new one must be argued for
in ``ALLOWED`` below.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "puretools"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: (file relative to puretools/, imported module) -> why it must be imported inside a function.
#: Heavy optional third-party libraries (open_clip, timm, ...) may be imported lazily without
#: an entry: this list is only for puretools' own modules.
ALLOWED: dict[tuple[str, str], str] = {}


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under ``root`` (its cwd goes first on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "puretools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_linter_contract_holds():
    assert LINT_IMPORTS.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import"),
    [
        ("models.py", "from . import toyworld"),  # a low module reaching up
        ("circuits.py", "from . import distributed"),  # the circle issue 21 removed
        ("references.py", "from . import circuits"),  # two modules of one layer
    ],
)
def test_the_contract_catches_an_import_against_the_layers(tmp_path, module, bad_import):
    root = _copy_package(tmp_path)
    path = root / "puretools" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def _function_level_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a puretools module inside a function or method."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").split(".")[0] == "puretools"):
                found.append((inner.lineno, "." * inner.level + (inner.module or "")))
            elif isinstance(inner, ast.Import):
                found += [(inner.lineno, a.name) for a in inner.names if a.name.split(".")[0] == "puretools"]
    return found


def test_the_scan_finds_function_level_imports():
    source = "import os\nfrom . import a\n\ndef f():\n    from .b import c\n    import puretools.d\n    import json\n"
    assert _function_level_imports(source) == [(5, ".b"), (6, "puretools.d")]


def test_no_function_level_import_of_puretools_modules():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, module in _function_level_imports(path.read_text()):
            if (rel, module) not in ALLOWED:
                offenders.append(f"puretools/{rel}:{line} imports {module} inside a function")
    assert not offenders, "\n".join(offenders) + "\nMove them to the top of the module (see pyproject's layers)."
