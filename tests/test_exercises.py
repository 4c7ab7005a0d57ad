"""Every notebook's exercises: a placeholder for the student, a solution one click away, and
every solution passing its own self-check.

The solutions run inside the session's one execution of each notebook (notebook_runs.py):
each placeholder replaced by its solution, checks in strict mode so a wrong answer raises, then
the cell as shipped, which must say "not attempted yet" without stopping the notebook.
"""

from __future__ import annotations

import nbformat
import pytest
from notebook_runs import NOTEBOOKS, PLACEHOLDER, exercises, stream_text


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


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_solution_passes_its_self_check(path, notebook_run):
    run = notebook_run(path.stem)
    solutions, placeholders = run.cells("solution"), run.cells("placeholder")
    expected = [i for i, _ in exercises(nbformat.read(path, as_version=4))]
    if run.error is not None:  # a wrong solution raises ExerciseError inside its cell
        pytest.fail(f"{path.name} stopped before its last exercise passed:\n{run.error}", pytrace=False)
    assert [c.metadata["exercise"] for c in solutions] == expected
    assert [c.metadata["exercise"] for c in placeholders] == expected
    for cell in solutions:
        text = stream_text(cell)
        assert "correct!" in text and "not quite" not in text and "not attempted yet" not in text, (
            f"{path.name} cell {cell.metadata['exercise']}: the solution printed {text[-500:]!r}")
    for cell in placeholders:  # the shipped cell after it: the student's view, nothing raised
        assert "not attempted yet" in stream_text(cell), (
            f"{path.name} cell {cell.metadata['exercise']}: the placeholder printed {stream_text(cell)[-500:]!r}")
