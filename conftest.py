"""Root conftest: settings for every test and doctest, so nothing reaches the network, a display
or the user's cache.

``PURETOOLS_CACHE`` points at a fresh temporary folder for the whole session (set here, at
import, before any test module or doctest imports puretools; notebook kernels started by the
tests inherit it). Every test then starts from the same empty cache, whatever
``~/.cache/puretools`` holds, and the notebooks share their results with each other through
it. Set ``PURETOOLS_TEST_CACHE=DIR`` to use (and keep) another folder, e.g. a warm one while
working. At the end of the session the user's cache must be as it was, or the run fails.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PURETOOLS_SMOKE", "1")  # notebook 07 runs with random weights and tiny data

USER_CACHE = Path(os.environ.get("PURETOOLS_CACHE") or Path.home() / ".cache" / "puretools").expanduser()
_KEEP = bool(os.environ.get("PURETOOLS_TEST_CACHE"))
# the folder is named "puretools", as the default one (a doctest of config.cache_dir checks the name)
TEST_CACHE = (Path(os.environ["PURETOOLS_TEST_CACHE"]) if _KEEP
              else Path(tempfile.mkdtemp(prefix="puretools-tests-")) / "puretools").expanduser().resolve()
os.environ["PURETOOLS_CACHE"] = str(TEST_CACHE)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        try:
            st = path.stat()
        except OSError:
            continue
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


_USER_CACHE_BEFORE = _listing(USER_CACHE) if USER_CACHE != TEST_CACHE else None


def pytest_report_header(config):
    return f"PURETOOLS_CACHE={TEST_CACHE} (the user's cache {USER_CACHE} is not touched)"


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any test wrote to or removed from the user's cache; drop the temporary cache."""
    if _USER_CACHE_BEFORE is not None:
        after = _listing(USER_CACHE)
        if after != _USER_CACHE_BEFORE:
            changed = sorted(set(after) ^ set(_USER_CACHE_BEFORE)
                             | {k for k in after if _USER_CACHE_BEFORE.get(k, after[k]) != after[k]})
            session.config.get_terminal_writer().line(
                f"FAILED: the tests changed the user's cache {USER_CACHE}: {changed[:10]}", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not _KEEP:
        shutil.rmtree(TEST_CACHE.parent, ignore_errors=True)
