"""One execution of each notebook serves every notebook test (the ``notebook_run`` fixture).

A notebook executes once per session, with nbclient (as ``make demo`` does: widget state
stored), in a kernel that inherits this process's environment (so the temporary
``PURETOOLS_CACHE`` of the root conftest). Each exercise runs twice inside that one execution:

1. its solution in strict mode (``PURETOOLS_EXERCISES=strict``: a wrong answer raises
   :class:`puretools.exercises.ExerciseError`, so the cell fails), then the kernel's global
   names are put back as they were before it, so no later cell can lean on what only the
   solution defines;
2. the cell as shipped, with its placeholder, in the default mode: it must print "not
   attempted yet" and let the rest of the notebook run, as a student who skips it sees it.

Every other cell runs once, as shipped. An error in any cell ends the execution and is kept
in :attr:`NotebookRun.error`, for the test of that notebook to report.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
PLACEHOLDER = re.compile(r"^(?P<indent>\s*)answer\s*=\s*\.\.\.(\s*#.*)?$", re.M)
SOLUTION = re.compile(r"<details>\s*<summary>[^<]*Solution[^<]*</summary>.*?```python\n(?P<code>.*?)```",
                      re.S | re.I)
TIMEOUT_S = 900  # per cell
ROLE = "puretools_test_role"  # cell metadata key marking the cells this module adds or rewrites

# Before a solution: remember the global names, switch checks to strict mode.
SAVE = """\
__pt_saved = {k: v for k, v in globals().items() if not k.startswith("_")}
import os as __pt_os
__pt_os.environ["PURETOOLS_EXERCISES"] = "strict"
"""
# After it: back to the default mode and to the global names as they were.
RESTORE = """\
__pt_os.environ.pop("PURETOOLS_EXERCISES", None)
for __pt_k in [k for k in globals() if not k.startswith("_") and k not in __pt_saved]:
    del globals()[__pt_k]
globals().update(__pt_saved)
globals().pop("__pt_k", None)
del __pt_saved
"""
# Last cell: what the kernel used as its cache folder.
CACHE_PROBE = """\
import puretools.config as __pt_config
print("PURETOOLS_CACHE_SEEN=" + str(__pt_config.cache_dir().resolve()))
"""


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


def with_solution(source: str, solution: str) -> str:
    """The exercise cell's source with its placeholder line replaced by ``solution`` (indented alike)."""

    def fill(m):
        return "\n".join(m.group("indent") + ln for ln in solution.rstrip("\n").splitlines())

    return PLACEHOLDER.sub(fill, source)


def _code(source: str, role: str, **meta) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata[ROLE] = role
    cell.metadata.update(meta)
    return cell


def instrumented(nb) -> nbformat.NotebookNode:
    """A copy of ``nb`` where each exercise runs first with its solution (strict), then as shipped."""
    nb = copy.deepcopy(nb)
    solutions = dict(exercises(nb))
    cells = []
    for i, cell in enumerate(nb.cells):
        if i in solutions:
            cells.append(_code(SAVE, "save"))
            cells.append(_code(with_solution(cell.source, solutions[i]), "solution", exercise=i))
            cells.append(_code(RESTORE, "restore"))
            cell.metadata[ROLE] = "placeholder"
            cell.metadata["exercise"] = i
        cells.append(cell)
    cells.append(_code(CACHE_PROBE, "cache-probe"))
    nb.cells = cells
    return nb


def stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@dataclass
class NotebookRun:
    """The executed notebook (``nb``, instrumented as above), the error that stopped it, if any."""

    path: Path
    nb: nbformat.NotebookNode
    error: Exception | None
    seconds: float

    def cells(self, role: str) -> list:
        return [c for c in self.nb.cells if c.get("metadata", {}).get(ROLE) == role]

    def shipped(self) -> nbformat.NotebookNode:
        """The executed notebook without the added cells: the shipped cells with their outputs."""
        nb = copy.deepcopy(self.nb)
        nb.cells = [c for c in nb.cells if c.get("metadata", {}).get(ROLE) in (None, "placeholder")]
        return nb


def execute(path: Path) -> NotebookRun:
    nb = instrumented(nbformat.read(path, as_version=4))
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    env_before = os.environ.get("PURETOOLS_EXERCISES")
    assert env_before is None or env_before.strip().lower() != "strict", (
        "PURETOOLS_EXERCISES=strict is set: the shipped exercise cells would raise")
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        error = err
    return NotebookRun(path, nb, error, time.perf_counter() - start)


class NotebookRuns:
    """Executes each notebook on first request and keeps the result for the session."""

    def __init__(self) -> None:
        self._runs: dict[str, NotebookRun] = {}

    def __call__(self, name: str) -> NotebookRun:
        path = next((p for p in NOTEBOOKS if p.stem == name or p.name == name or p.stem.startswith(name + "_")),
                    None)
        if path is None:
            raise KeyError(f"no notebook {name!r} among {[p.stem for p in NOTEBOOKS]}")
        if path.stem not in self._runs:
            self._runs[path.stem] = execute(path)
        return self._runs[path.stem]
