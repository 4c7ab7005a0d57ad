"""The static pages `make demo` writes and the runtimes the docs state.

- Every runtime stated in a notebook's header and in the README table is within 1.5x of the
  time `make demo` measured and `python docs/time_notebooks.py` took as the record (``docs/notebook_times.json``).
- A built page (``build/NN_*.html``) shows no progress bar stuck at its first frame ("0%"),
  no stray ``Out:`` of a bool or a matplotlib ``Text`` object, and no raw warning text. The
  scanner is tested here on made-up pages; the built pages are scanned when ``make demo`` has
  written them after the notebook's last change.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def _time_notebooks():
    spec = importlib.util.spec_from_file_location("time_notebooks", ROOT / "docs" / "time_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- runtimes -----------------------------------------------------------------------------

def test_every_notebook_has_a_measured_time():
    record = _time_notebooks().load_times()
    assert {p.stem for p in NOTEBOOKS} <= set(record["notebooks"]), "run `make demo` to record every notebook"
    assert all(v["seconds"] > 0 for v in record["notebooks"].values())
    assert {"date", "cpu_count"} <= set(record["machine"])


def test_stated_runtimes_are_within_1_5x_of_the_measured_ones():
    tn = _time_notebooks()
    bad = tn.problems(tn.load_times())
    assert not bad, "stated runtimes off (run `python docs/time_notebooks.py` after `make demo`):\n" + "\n".join(bad)


def test_runtime_check_catches_a_stale_statement(tmp_path):
    tn = _time_notebooks()
    record = tn.load_times()
    stem = NOTEBOOKS[0].stem
    slow = {**record, "notebooks": {stem: {**record["notebooks"][stem],
                                           "seconds": 10 * record["notebooks"][stem]["seconds"]}}}
    assert any(stem in p and "header" in p for p in tn.problems(slow))
    assert any(stem in p and "readme" in p for p in tn.problems(slow))


@pytest.mark.parametrize("seconds", [2, 7, 33, 61, 97, 99, 151, 400])
def test_rounded_runtime_stays_within_the_tolerance(seconds):
    tn = _time_notebooks()
    value, unit = tn.format_runtime(seconds)
    stated = tn.stated_seconds(value, unit)
    assert seconds / tn.TOLERANCE <= stated <= seconds * tn.TOLERANCE or seconds < 5


# --- page scanner -------------------------------------------------------------------------

STUCK_BAR = re.compile(r"(?<![\d.])0%\s*(?:\|[^|\n]*\|)?\s*0/\d+")
STRAY_OUT = re.compile(r"^(?:True|False|Text\(-?[\d.]+, -?[\d.]+, .*\)|<Figure size [^>]*>|"
                       r"\[?<matplotlib[^>]*>\]?|None)$")
WARNING = re.compile(r"\b\w*Warning\b: |^WARNING:|^Warning:|No pretrained weights loaded|warnings\.warn\(",
                     re.M)


def page_problems(page: str) -> list[str]:
    """What a built HTML page (nbconvert) shows that a student should not see."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.S | re.I)  # CSS ("0% {"), widget JSON
    text = html.unescape(re.sub(r"<[^>]+>", "\n", page))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [f"progress bar stuck at 0%: {m[0]!r}" for m in STUCK_BAR.finditer(text)]
    # stray results: an execute_result whose text is a bare bool, a Text(...) or a figure's repr
    for block in re.findall(r'<div class="[^"]*jp-OutputArea-output[^"]*"[^>]*data-mime-type="text/plain"[^>]*>'
                            r"(.*?)</div>", page, re.S):
        value = html.unescape(re.sub(r"<[^>]+>", "", block)).strip()
        if STRAY_OUT.match(value):
            found.append(f"stray output: {value!r}")
    found += [f"warning text: {ln!r}" for ln in lines if WARNING.search(ln)]
    found += ["stderr output block" for _ in re.finditer(r'data-mime-type="application/vnd\.jupyter\.stderr"', page)]
    return found


def _output(mime: str, text: str) -> str:
    return (f'<div class="jp-RenderedText jp-OutputArea-output jp-OutputArea-executeResult" '
            f'data-mime-type="{mime}"><pre>{html.escape(text)}</pre></div>')


@pytest.mark.parametrize("bad", [
    "<pre>2-D map of PURE:   0%|          | 0/8 [00:00&lt;?, ?it/s]</pre>",
    "<pre>virtual heatmaps:   0%  0/8</pre>",
    _output("text/plain", "False"),
    _output("text/plain", "Text(0.5, 0.98, 'neuron 7: causal labels')"),
    "<pre>UserWarning: No pretrained weights loaded for model 'ViT-B-32'</pre>",
    "<pre>WARNING:root:No pretrained weights loaded for model 'ViT-B-32'. Model initialized randomly.</pre>",
    _output("application/vnd.jupyter.stderr", "something on stderr"),
])
def test_page_scanner_finds_each_kind_of_noise(bad):
    assert page_problems(f"<html><body>{bad}</body></html>")


def test_page_scanner_passes_finished_bars_and_real_outputs():
    good = ("<pre>2-D map of PURE: 100% 8/8 [00:03&lt;00:00, 2.5it/s]</pre>"
            "<pre>accuracy 100% of 3,000 images; 0 of 10 concepts below 90%</pre>"
            + _output("text/plain", "Explorer of 8 neurons (static image of the current view)")
            + _output("text/plain", "{'ari': 1.0, 'purity': 1.0}"))
    assert page_problems(good) == []


BUILD = ROOT / "build"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_built_page_is_clean(path):
    page = BUILD / path.with_suffix(".html").name
    if not page.is_file() or page.stat().st_mtime < path.stat().st_mtime:
        pytest.skip(f"{page.relative_to(ROOT)} is missing or older than the notebook: run `make demo`")
    assert page_problems(page.read_text()) == []


def test_explorer_page_shows_its_figure_and_scores_line():
    nb = json.loads((ROOT / "notebooks" / "06_explorer.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "live kernel" in text and "**view**" in text and "virtual heatmaps" in text
    page = BUILD / "06_explorer.html"
    if not page.is_file() or page.stat().st_mtime < (ROOT / "notebooks" / "06_explorer.ipynb").stat().st_mtime:
        pytest.skip("build/06_explorer.html is missing or stale: run `make demo`")
    content = page.read_text()
    assert "data:image/png;base64" in content and "(causal labels" in content and "ARI vs ground truth" in content
