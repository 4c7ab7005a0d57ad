"""Every notebook executes without an error, in the session's one execution (notebook_runs.py),
and sees the temporary cache, never the user's."""

import os
from pathlib import Path

import pytest
from notebook_runs import NOTEBOOKS, stream_text

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_an_error(path, notebook_run):
    run = notebook_run(path.stem)
    if run.error is not None:
        pytest.fail(f"{path.name} failed after {run.seconds:.0f} s:\n{run.error}", pytrace=False)
    assert all(c.get("execution_count") for c in run.nb.cells if c.cell_type == "code"), "a cell did not run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_used_the_temporary_cache(path, notebook_run):
    run = notebook_run(path.stem)
    if run.error is not None:
        pytest.skip("the notebook failed (reported by test_notebook_runs_without_an_error)")
    (probe,) = run.cells("cache-probe")
    seen = stream_text(probe).split("PURETOOLS_CACHE_SEEN=")[1].strip()
    assert Path(seen) == Path(os.environ["PURETOOLS_CACHE"]).resolve()
    assert Path(seen) != (Path.home() / ".cache" / "puretools").resolve()
