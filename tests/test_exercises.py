"""Every notebook's exercises: a placeholder for the student, a solution one click away, and
every solution passing its own self-check (the notebook executed up to its last exercise with
each placeholder replaced by its solution, checks in strict mode so a wrong answer raises)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
PLACEHOLDER = re.compile(r"^(?P<indent>\s*)answer\s*=\s*\.\.\.(\s*#.*)?$", re.M)
SOLUTION = re.compile(r"<details>\s*<summary>[^<]*Solution[^<]*</summary>.*?```python\n(?P<code>.*?)```",
                      re.S | re.I)


def exercises(nb) -> list[tuple[int, str]]:
    """(cell index, solution code) for every cell tagged ``exercise``."""
    found = []
    for i, cell in enumerate(nb.cells):
        if "exercise" not in cell.get("metadata", {}).get("tags", []):
            continue
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        match = SOLUTION.search(nxt.source) if nxt is not None and nxt.cell_type == "markdown" else None
        found.append((i, match.group("code") if match else ""))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_hold_a_placeholder_and_their_solution_is_one_click_away(path):
    nb = nbformat.read(path, as_version=4)
    found = exercises(nb)
    assert found, f"{path.name}: no cell tagged 'exercise'"
    for index, solution in found:
        cell = nb.cells[index]
        assert cell.cell_type == "code", f"{path.name} cell {index}: an exercise must be a code cell"
        assert len(PLACEHOLDER.findall(cell.source)) == 1, (
            f"{path.name} cell {index}: the exercise needs exactly one placeholder line `answer = ...`")
        assert "check" in cell.source, f"{path.name} cell {index}: the exercise must call its self-check"
        assert solution.strip(), (
            f"{path.name} cell {index}: the next cell must be markdown with a <details> Solution block")
        body = [ln.strip() for ln in solution.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert not all(ln in cell.source for ln in body), (
            f"{path.name} cell {index}: the exercise cell already holds its solution")


def with_solutions(nb):
    """The notebook up to its last exercise, each placeholder replaced by its solution."""
    found = exercises(nb)
    for index, solution in found:
        cell = nb.cells[index]

        def fill(m, solution=solution):
            return "\n".join(m.group("indent") + ln for ln in solution.rstrip("\n").splitlines())

        cell.source = PLACEHOLDER.sub(fill, cell.source)
    nb.cells = nb.cells[: found[-1][0] + 1]
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_solution_passes_its_self_check(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PURETOOLS_EXERCISES", "strict")
    nb = with_solutions(nbformat.read(path, as_version=4))
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # a wrong solution raises ExerciseError inside its cell -> CellExecutionError
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.get("output_type") == "stream")
    assert "not attempted yet" not in outputs and "not quite" not in outputs
    assert outputs.count("correct!") >= len(exercises(nbformat.read(path, as_version=4)))
    assert os.environ["PURETOOLS_EXERCISES"] == "strict"
