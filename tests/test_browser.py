"""Real-browser test: JupyterLab on 127.0.0.1, driven by Playwright in Debian's headless Chromium.

Opens notebooks/06_explorer.ipynb, runs all cells, checks that the explorer's widgets render
(not their text fallback), moves the k slider and checks that the rendered output changes.
Screenshots go to test-artifacts/.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/06_explorer.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium).")
    port, token = free_port(), secrets.token_hex(16)
    root = tmp_path_factory.mktemp("lab")  # a copy: the lab's autosave must not touch the repository
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / NOTEBOOK, root / NOTEBOOK)
    log = open(root / "lab.log", "w")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("jupyter-config"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", token
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            try:  # JupyterLab may ask which kernel to start: accept its proposal (Python 3)
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=20_000)
            except PlaywrightTimeout:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-StatusBar", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            k_slider = page.locator(".widget-slider:has(.widget-label:text-is('k'))")
            k_slider.wait_for(timeout=300_000)
            image = page.locator(".puretools-explorer .widget-image").first
            image.wait_for(timeout=120_000)
            # every cell has run: no input prompt still shows "[*]"
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-InputPrompt')].every(p => !p.innerText.includes('*'))"
                " && [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].pop().innerText.match(/\\d/)",
                timeout=300_000,
            )
            # rendered widgets, not the text fallback of a widget
            assert page.locator(".puretools-explorer .widget-slider").count() >= 2
            assert "IntSlider(" not in page.locator(".jp-Notebook").inner_text()
            image.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "explorer-before.png"), full_page=False)
            before_src = image.get_attribute("src")
            before_scores = page.locator(".puretools-explorer .puretools-scores").first.inner_text()
            before_k = k_slider.locator(".widget-readout").inner_text()

            handle = k_slider.locator(".noUi-handle")
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_function(
                "(src) => { const i = document.querySelector('.puretools-explorer .widget-image');"
                " return i && i.getAttribute('src') !== src; }",
                arg=before_src,
                timeout=60_000,
            )
            page.wait_for_function(
                "(t) => document.querySelector('.puretools-explorer .puretools-scores').innerText.includes(t)",
                arg=f"k = {int(before_k) + 1}",
                timeout=60_000,
            )
            after_src = image.get_attribute("src")
            after_k = k_slider.locator(".widget-readout").inner_text()
            after_scores = page.locator(".puretools-explorer .puretools-scores").first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "explorer-after.png"), full_page=False)
        finally:
            page.screenshot(path=str(ARTIFACTS / "explorer-last.png"))
            browser.close()
    assert int(after_k) == int(before_k) + 1
    assert before_src and after_src and after_src != before_src  # the figure was redrawn
    assert f"k = {after_k}" in after_scores and after_scores != before_scores
