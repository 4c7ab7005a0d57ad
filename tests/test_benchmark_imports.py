"""The benchmarks share ``benchmarks/common.py``: none imports another benchmark or edits ``sys.path``.

A static scan (ast) of every script in ``benchmarks/``, so it costs no import of torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module ``tree`` imports (``a`` for ``import a.b`` and ``from a.b import c``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # relative: from . import x, from .x import y
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


def path_edits(tree: ast.AST) -> list[int]:
    """Lines that touch ``sys.path`` (``sys.path.insert``, ``from sys import path``) or ``site.addsitedir``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_sees_imports_and_path_edits():
    code = ("import sys\nfrom bench_circuits import x\nimport bench_pipeline as bp\nfrom . import bench_explorer\n"
            "sys.path.insert(0, 'a')\nfrom sys import path\nimport site\nsite.addsitedir('b')\n")
    tree = ast.parse(code)
    assert {"bench_circuits", "bench_pipeline", "bench_explorer"} <= imported_modules(tree)
    assert path_edits(tree) == [5, 6, 8]
    assert path_edits(ast.parse("import sys\nprint(sys.argv)\n")) == []


def test_no_benchmark_imports_another_or_edits_sys_path():
    scripts = sorted(BENCH.glob("*.py"))
    benchmarks = {p.stem for p in scripts if p.stem.startswith("bench_")}
    assert len(benchmarks) >= 8, sorted(benchmarks)
    problems = []
    for script in scripts:
        tree = ast.parse(script.read_text(), filename=str(script))
        others = sorted(imported_modules(tree) & (benchmarks - {script.stem}))
        if others:
            problems.append(f"{script.name} imports {others}")
        if lines := path_edits(tree):
            problems.append(f"{script.name} edits sys.path on lines {lines}")
        if script.stem.startswith("bench_") and "common" not in imported_modules(tree):
            problems.append(f"{script.name} does not use the shared helpers (benchmarks/common.py)")
    assert not problems, "\n".join(problems)
