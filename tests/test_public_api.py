"""The public API: ``puretools.__all__`` is sorted and complete, and the notebooks use only what it exports.

Notebooks may also import the documented subpackages ``puretools.toyworld``,
``puretools.widgets`` and ``puretools.exercises``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import puretools as pt

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = {"toyworld", "widgets", "exercises"}


def test_all_is_sorted_and_every_name_exists():
    assert pt.__all__ == sorted(pt.__all__)
    assert len(set(pt.__all__)) == len(pt.__all__)
    assert [name for name in pt.__all__ if not hasattr(pt, name)] == []


def _code(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _private_uses(code: str) -> set[str]:
    """Modules of puretools that ``code`` reaches into other than through ``puretools``'s exports."""
    found = set(re.findall(r"^\s*from puretools\.(\w+)", code, re.M))
    found |= set(re.findall(r"^\s*import puretools\.(\w+)", code, re.M))
    found |= {m for m in re.findall(r"\bpt\.(\w+)\.", code) if m not in pt.__all__ or m in ("distributed",)}
    return found - DOCUMENTED


def test_the_scan_finds_reaches_into_modules():
    code = "import puretools as pt\nfrom puretools.references import x\nimport puretools.config\ny = pt.patches.A\n"
    assert _private_uses(code) == {"references", "config", "patches"}
    assert _private_uses("from puretools.widgets import Explorer\nz = pt.layer_output(m, l, x)\n") == set()


def test_notebooks_use_only_the_public_api():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    leaks = [f"{nb.name}: puretools.{module}" for nb in notebooks for module in sorted(_private_uses(_code(nb)))]
    assert not leaks, "export these names from puretools (or use a documented subpackage):\n" + "\n".join(leaks)


@pytest.mark.parametrize("old, new", [("CASES", "COMPARISON_CASES"), ("METHODS", "COMPARISON_METHODS"),
                                      ("aggregate", "aggregate_comparisons"),
                                      ("format_table", "format_comparison_table")])  # fmt: skip
def test_vague_top_level_names_still_work_for_one_release(old, new):
    assert old not in pt.__all__ and new in pt.__all__
    with pytest.warns(DeprecationWarning, match=f"puretools.{old} is now puretools.{new}"):
        assert getattr(pt, old) is getattr(pt, new)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        pt.nothing_here  # noqa: B018
