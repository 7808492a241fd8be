"""Real browser: JupyterLab + Debian chromium (Playwright) run the quickstart and the switcher.

Skips only when chromium (or Playwright) is missing on a developer machine; in CI
(``CI=true``) a missing browser is a failure, because CI installs it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.testing import MistralTestServer
from tests._browser_lab import CHROMIUM_ARGS, Lab, chromium_path, jupyterlab
from tests._browser_project import KEYS, assert_no_key, scrubbed_environ, write_project

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> str:
    """The chromium path; skip (locally) or fail (CI) when it or Playwright is missing."""
    problem = None
    path = chromium_path()
    if path is None:
        problem = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = (
                "playwright is not installed (pip install playwright; no `playwright install`)"
            )
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real-browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    assert path is not None
    return path


@pytest.fixture
def chromium() -> str:
    """The chromium executable (checked before JupyterLab is started)."""
    return _require_browser()


@pytest.fixture
def lab(tmp_path: Path, mistral_server: MistralTestServer, chromium: str) -> Iterator[Lab]:
    """JupyterLab serving a copy of the quickstart, its kernels pointed at the loopback server."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    settings = write_project(tmp_path, mistral_server.url)
    env = scrubbed_environ()
    env["MISTRAL_NBENV_SETTINGS"] = str(settings)
    with jupyterlab(root, tmp_path / "lab-home", env) as running:
        yield running


def _wait_idle(page: Any, timeout: float = 60_000) -> None:
    """The kernel status in the status bar says Idle (``[data-status=idle]`` fires too early)."""
    page.wait_for_function(
        "() => (document.querySelector('#jp-main-statusbar')?.innerText || '').includes('Idle')",
        timeout=timeout,
    )


def _menu(page: Any, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _last_cell_output(page: Any) -> str:
    return str(page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-OutputArea").inner_text())


def test_quickstart_in_jupyterlab(
    chromium: str, lab: Lab, mistral_server: MistralTestServer
) -> None:
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    mistral_server.chunk_delay = 0.25  # slow enough to watch the answer stream in
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab.page_url("tree/quickstart.ipynb"))
            page.locator(".jp-Notebook").wait_for(timeout=60_000)
            _wait_idle(page)

            _menu(page, "Run", "Run All Cells")
            # the first %%mistral answer streams in: its end is marked ▌ while it arrives
            streaming = page.locator(".jp-OutputArea .jp-RenderedMarkdown", has_text="▌")
            expect(streaming.first).to_be_visible(timeout=60_000)
            streaming.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-streaming.png"))
            last = page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-OutputArea")
            expect(last).to_contain_text("active environment: staging", timeout=60_000)
            _wait_idle(page)
            print(f"run all: {time.monotonic() - started:.1f} s")

            # the switcher rendered, and followed `%mistral_env use staging`
            switcher = page.locator(".mistral-nbenv-switcher")
            expect(switcher).to_have_count(1)
            switcher.scroll_into_view_if_needed()
            badge = switcher.locator(".mistral-nbenv-badge").first
            expect(badge).to_have_attribute("data-environment", "staging")
            expect(switcher).to_contain_text("…0002")
            answers = page.locator(".jp-OutputArea .jp-RenderedMarkdown", has_text="Echo: What is")
            expect(answers).to_have_count(2)
            expect(page.locator(".jp-RenderedMarkdown", has_text="▌")).to_have_count(0)
            cached_badge = page.locator(".jp-OutputArea", has_text="from cache").first
            cached_badge.scroll_into_view_if_needed()
            expect(cached_badge).to_be_visible()
            # money, not LaTeX: the notebook's MathJax leaves the badge's dollars alone
            expect(cached_badge).to_contain_text("$0 (saved $")
            expect(cached_badge.locator("mjx-container")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "browser-answers.png"))

            # the usage chart: a title, a labelled axis, one bar per environment and day
            switcher_chart = page.locator(".mistral-nbenv-switcher svg.mistral-nbenv-usage-chart")
            switcher.locator("button", has_text="Refresh").first.click()
            expect(switcher_chart).to_have_count(1, timeout=30_000)
            expect(switcher_chart.locator("text.title")).to_contain_text("Tokens per day")
            expect(switcher_chart.locator("text.axis-label")).to_have_text("tokens")
            expect(switcher_chart.locator("rect[data-environment=staging]")).to_have_count(1)
            switcher_chart.scroll_into_view_if_needed()
            switcher_chart.screenshot(path=str(ARTIFACTS / "browser-chart.png"))

            production = switcher.locator("button.widget-toggle-button", has_text="production")
            confirm = switcher.get_by_role("button", name="Confirm switch")
            cancel = switcher.get_by_role("button", name="Cancel")

            # production asks first; Cancel changes nothing and the picker snaps back
            production.click()
            expect(confirm).to_be_visible()
            expect(switcher).to_contain_text("Nothing has switched yet")
            cancel.click()
            expect(confirm).to_be_hidden()
            expect(badge).to_have_attribute("data-environment", "staging")
            staging = switcher.locator("button.widget-toggle-button", has_text="staging")
            expect(staging).to_have_class(_has("mod-active"))

            # production again, and this time confirm
            production.click()
            expect(confirm).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "browser-confirm.png"))
            confirm.click()
            expect(badge).to_have_attribute("data-environment", "production")
            expect(switcher).to_contain_text("…0003")
            expect(confirm).to_be_hidden()
            switcher.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-switcher.png"))

            # the kernel sees the switch: re-run the last cell
            page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Control+Enter")  # run in place (Shift+Enter adds a cell)
            expect(last).to_contain_text("active environment: production", timeout=30_000)
            _wait_idle(page)

            assert_no_key(page.content())
        finally:
            browser.close()
    elapsed = time.monotonic() - started
    print(f"browser part: {elapsed:.1f} s")
    assert mistral_server.count("/v1/chat/completions") == 1
    assert mistral_server.last_request is not None
    assert mistral_server.last_request.api_key == KEYS["staging"]


def _has(cls: str) -> Any:
    import re

    return re.compile(rf"(^|\s){re.escape(cls)}(\s|$)")
