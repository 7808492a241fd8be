"""The EnvironmentSwitcher widget without a browser: set traits, click buttons, check the core."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv import current_environment, get_client, use_environment, workspace
from mistral_nbenv.testing import MistralTestServer
from mistral_nbenv.ui.widget import EnvironmentSwitcher
from tests._browser_project import (
    KEYS,
    assert_no_key,
    use_project,
)


@pytest.fixture
def switcher(lproject: MistralTestServer) -> Iterator[EnvironmentSwitcher]:
    """A switcher; after the test, no key may appear in any of its widgets' state."""
    widget = EnvironmentSwitcher()
    yield widget
    assert_no_key(_state(widget))
    widget.close()


def _descendants(widget: Any) -> list[Any]:
    found, stack = [], [widget]
    while stack:
        w = stack.pop()
        found.append(w)
        stack.extend(getattr(w, "children", ()))
    return found


def _state(widget: Any) -> str:
    """Every synced trait of every descendant (values, descriptions, HTML, options, tooltips)."""
    return "\n".join(json.dumps(w.get_state(), default=str) for w in _descendants(widget))


def _confirm_visible(w: EnvironmentSwitcher) -> bool:
    return w.confirm_box.layout.display != "none"


def test_initial_state_shows_the_active_environment(switcher: EnvironmentSwitcher) -> None:
    assert list(switcher.picker.options) == ["development", "staging", "production", "qa"]
    assert switcher.picker.value == "development"
    assert 'data-environment="development"' in switcher.badge.value
    assert "#2e7d32" in switcher.badge.value
    assert "…0001" in switcher.status.value
    assert "settings.toml" in switcher.status.value  # the key's source
    assert "mistral-medium-latest" in switcher.status.value
    # the model sent, with why it is not `model` (issue 35: wherever a model is shown)
    assert "new_model, because features.use_new_model is on" in switcher.status.value
    assert "req/min" in switcher.status.value
    # development's cache is off by default: said, and nothing to clear
    assert "cache off in development" in switcher.cache_info.value
    assert switcher.clear_button.layout.display == "none"
    assert switcher.error.value == ""
    assert not _confirm_visible(switcher)


def test_picking_an_unprotected_environment_switches(switcher: EnvironmentSwitcher) -> None:
    switcher.picker.value = "staging"
    assert current_environment() == "staging"
    assert 'data-environment="staging"' in switcher.badge.value
    assert "#f59e0b" in switcher.badge.value
    assert "…0002" in switcher.status.value
    assert not _confirm_visible(switcher)


def test_protected_environment_waits_for_confirm(switcher: EnvironmentSwitcher) -> None:
    switcher.picker.value = "production"
    assert current_environment() == "development"  # nothing switched yet
    assert _confirm_visible(switcher)
    assert switcher.pending == "production"
    assert "protected" in switcher.confirm_message.value
    switcher.confirm_button.click()
    assert current_environment() == "production"
    assert not _confirm_visible(switcher)
    assert switcher.picker.value == "production"
    assert "#c62828" in switcher.badge.value
    assert "…0003" in switcher.status.value


def test_a_switch_reads_the_status_once(
    switcher: EnvironmentSwitcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistral_nbenv.ui import widget as widget_module

    calls: list[str | None] = []
    real = widget_module.collect_status

    def counting(env: str | None = None, **kwargs: Any) -> Any:
        calls.append(env)
        return real(env, **kwargs)

    monkeypatch.setattr(widget_module, "collect_status", counting)
    switcher.picker.value = "staging"
    assert calls == ["staging"]
    switcher.picker.value = "production"
    switcher.confirm_button.click()
    assert calls == ["staging", "production"]


def test_cancel_leaves_everything_as_it_was(switcher: EnvironmentSwitcher) -> None:
    switcher.picker.value = "staging"
    before = (switcher.badge.value, switcher.status.value)
    switcher.picker.value = "production"
    switcher.cancel_button.click()
    assert current_environment() == "staging"
    assert switcher.picker.value == "staging"  # the picker snaps back
    assert (switcher.badge.value, switcher.status.value) == before
    assert not _confirm_visible(switcher)
    assert switcher.pending is None
    switcher.confirm_button.click()  # a stale confirm does nothing
    assert current_environment() == "staging"


def test_picking_elsewhere_while_confirming_drops_the_pending_switch(
    switcher: EnvironmentSwitcher,
) -> None:
    switcher.picker.value = "production"
    switcher.picker.value = "qa"
    assert current_environment() == "qa"
    assert not _confirm_visible(switcher)
    switcher.confirm_button.click()
    assert current_environment() == "qa"


def test_follows_switches_made_elsewhere(switcher: EnvironmentSwitcher) -> None:
    use_environment("qa")
    assert switcher.picker.value == "qa"
    assert 'data-environment="qa"' in switcher.badge.value
    assert "#6b7280" in switcher.badge.value  # extra environments are grey
    use_environment("production", confirm=True)
    assert switcher.picker.value == "production"
    assert current_environment() == "production"


def test_switch_elsewhere_while_confirming_hides_the_confirm(
    switcher: EnvironmentSwitcher,
) -> None:
    switcher.picker.value = "production"
    use_environment("staging")
    assert not _confirm_visible(switcher)
    assert switcher.picker.value == "staging"
    assert current_environment() == "staging"


def test_follows_the_magic(switcher: EnvironmentSwitcher) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell()
    try:
        shell.run_line_magic("load_ext", "mistral_nbenv")
        shell.run_line_magic("mistral_env", "use production --confirm")
        assert switcher.picker.value == "production"
        shell.run_line_magic("unload_ext", "mistral_nbenv")
    finally:
        InteractiveShell.clear_instance()


def test_two_switchers_stay_in_sync(switcher: EnvironmentSwitcher) -> None:
    other = EnvironmentSwitcher()
    try:
        other.picker.value = "staging"
        assert switcher.picker.value == "staging"
        switcher.picker.value = "production"
        assert other.picker.value == "staging"  # not confirmed yet: nothing switched
        switcher.confirm_button.click()
        assert other.picker.value == "production"
    finally:
        other.close()


def test_close_removes_the_listener(lproject: MistralTestServer) -> None:
    before = list(workspace.workspace()._listeners)
    widget = EnvironmentSwitcher()
    assert len(workspace.workspace()._listeners) == len(before) + 1
    widget.close()
    assert workspace.workspace()._listeners == before
    use_environment("staging")
    assert widget.picker.value == "development"


def test_errors_show_one_line_and_the_picker_snaps_back(
    tmp_path: Path, lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_project(
        tmp_path / "broken",
        lproject.url,
        monkeypatch,
        extra='[qa.features]\nmax_concurrent_requests = "many"\n',
    )
    widget = EnvironmentSwitcher()
    try:
        widget.picker.value = "qa"
        assert current_environment() == "development"
        assert widget.picker.value == "development"
        assert "max_concurrent_requests" in widget.error.value
        assert "Traceback" not in widget.error.value
        widget.picker.value = "staging"  # the next action clears the error
        assert widget.error.value == ""
    finally:
        widget.close()


def test_missing_key_is_shown_in_the_status(
    tmp_path: Path, lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_project(
        tmp_path / "nokeys", lproject.url, monkeypatch, keys={"development": KEYS["development"]}
    )
    widget = EnvironmentSwitcher()
    try:
        widget.picker.value = "staging"
        assert current_environment() == "staging"
        assert "not available" in widget.status.value
        assert "MISTRAL_API_KEY_STAGING" in widget.status.value
    finally:
        widget.close()


def test_cache_stats_and_clear_button(
    switcher: EnvironmentSwitcher, lproject: MistralTestServer
) -> None:
    switcher.picker.value = "staging"
    client = get_client()
    client.chat.complete(messages=[{"role": "user", "content": "cache me"}])
    client.chat.complete(messages=[{"role": "user", "content": "and me"}])
    switcher.refresh_button.click()
    assert "cached: 2 responses" in switcher.cache_info.value
    assert switcher.clear_button.layout.display == ""
    switcher.clear_button.click()
    assert "cached: 0 responses" in switcher.cache_info.value
    assert "removed 2 cached responses" in switcher.error.value
    client.chat.complete(messages=[{"role": "user", "content": "cache me"}])
    assert lproject.count("/v1/chat/completions") == 3  # really cleared


def test_no_key_in_any_widget_state_after_every_action(switcher: EnvironmentSwitcher) -> None:
    for env in ("staging", "production", "qa", "development"):
        switcher.picker.value = env
        if switcher.pending:
            switcher.confirm_button.click()
        assert_no_key(_state(switcher))
    assert current_environment() == "development"


def test_clearing_a_protected_cache_asks_first(
    switcher: EnvironmentSwitcher, lproject: MistralTestServer
) -> None:
    switcher.picker.value = "production"
    switcher.confirm_button.click()
    get_client().chat.complete(messages=[{"role": "user", "content": "billed once"}])
    switcher.clear_button.click()
    assert switcher.pending_clear == "production"
    assert "Nothing was removed yet" in switcher.confirm_message.value
    assert switcher.confirm_button.description == "Clear production's cache"  # not "switch"
    switcher.cancel_button.click()
    assert switcher.pending_clear is None
    switcher.clear_button.click()
    switcher.confirm_button.click()
    assert "removed 1 cached response" in switcher.error.value
    switcher.picker.value = "staging"
    switcher.picker.value = "production"
    assert switcher.confirm_button.description == "Confirm switch"


def test_usage_chart_shows_tokens_per_day_after_refresh(
    switcher: EnvironmentSwitcher, lproject: MistralTestServer
) -> None:
    assert switcher.usage.value == ""  # nothing recorded: no empty chart
    switcher.picker.value = "staging"
    answer = get_client().chat.complete(messages=[{"role": "user", "content": "chart me"}])
    tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
    switcher.refresh_button.click()
    chart = switcher.usage.value
    assert chart.startswith("<svg")
    assert re.search(f'data-environment="staging" data-day="[0-9-]+" data-tokens="{tokens}"', chart)
    assert "#f59e0b" in chart  # the bar in staging's badge colour


@pytest.mark.parametrize("days", [1, 30])
def test_the_usage_chart_has_a_title_an_axis_and_the_pickers_order(days: int) -> None:
    import datetime as dt
    import re

    from mistral_nbenv.ui.display import usage_chart_svg
    from mistral_nbenv.ui.reports import UsageReport, UsageRow

    today = dt.date(2026, 12, 7)
    rows = [
        UsageRow(str(today - dt.timedelta(days=d)), env, "m", requests=1, prompt_tokens=10 + d)
        for d in range(days)
        for env in ("qa", "production", "development", "staging")
    ]
    svg = usage_chart_svg(UsageReport(rows=rows), days=days)
    span = "last 1 day" if days == 1 else f"last {days} days"
    assert f"Tokens per day ({span}, UTC)" in svg
    assert '<text class="axis-label"' in svg
    assert ">tokens</text>" in svg
    legend = re.findall(r'class="legend" data-environment="([a-z]+)"', svg)
    assert legend == ["development", "staging", "production", "qa"]  # the picker's order
    width = int(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    assert width == 360 if days == 1 else width == 560  # one day: not a wide empty axis
    assert svg.count("<rect ") == 4 * days
