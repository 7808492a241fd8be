"""The environment switcher widget that ``%mistral_env`` displays (ipywidgets).

It drives the same core functions as the magic and the CLI (``use_environment``,
``cache_stats``, ``clear_cache``, ``collect_usage`` for its tokens-per-day chart) and
follows switches made elsewhere through
``add_switch_listener``.  A protected environment is switched to only after the explicit
confirm button; cancelling snaps the picker back and changes nothing.  Errors appear as a
single line in the error area, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from mistral_nbenv.errors import MistralEnvError, ProductionConfirmationRequired
from mistral_nbenv.ui.display import (
    badge_html,
    cache_line_html,
    cleared_text,
    colour_for,
    error_html,
    message_html,
    status_html,
    usage_chart_svg,
)
from mistral_nbenv.ui.reports import cache_stats, clear_cache, collect_usage
from mistral_nbenv.ui.status import collect_status, one_line
from mistral_nbenv.workspace import (
    add_switch_listener,
    awaiting_confirmation,
    current_environment,
    list_environments,
    use_environment,
)

__all__ = ["EnvironmentSwitcher"]


def _one_line(exc: BaseException) -> str:
    """Our own errors as their message; anything else prefixed with its type."""
    text = one_line(exc)
    return text if isinstance(exc, MistralEnvError) else f"{type(exc).__name__}: {text}"


class EnvironmentSwitcher(widgets.VBox):
    """Pick the active Mistral environment, see its status, manage its cache."""

    def __init__(self, **kwargs: Any) -> None:
        self.pending: str | None = None  # a protected environment waiting for Confirm
        self.pending_clear: str | None = None  # a protected cache waiting for Confirm
        self._syncing = False
        self.picker = widgets.ToggleButtons(
            options=list_environments(),
            value=current_environment(),
            description="Environment",
            style={"button_width": "auto", "description_width": "initial"},
        )
        self.badge = widgets.HTML()
        self.status = widgets.HTML()
        self.confirm_message = widgets.HTML()
        self.confirm_button = widgets.Button(
            description="Confirm switch", button_style="danger", icon="exclamation-triangle"
        )
        self.cancel_button = widgets.Button(description="Cancel", icon="times")
        self.confirm_box = widgets.VBox(
            [self.confirm_message, widgets.HBox([self.confirm_button, self.cancel_button])],
            layout=widgets.Layout(display="none", padding="4px 0"),
        )
        self.cache_info = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.clear_button = widgets.Button(description="Clear cache", icon="trash")
        self.usage = widgets.HTML()  # tokens per day per environment (the usage ledger)
        self.error = widgets.HTML()
        super().__init__(
            children=[
                self.picker,
                self.badge,
                self.confirm_box,
                self.status,
                widgets.HBox(
                    [self.cache_info, self.clear_button, self.refresh_button],
                    layout=widgets.Layout(align_items="center"),
                ),
                self.usage,
                self.error,
            ],
            layout=widgets.Layout(padding="6px 10px", border="1px solid #e5e7eb"),
            **kwargs,
        )
        self.add_class("mistral-nbenv-switcher")
        self.picker.observe(self._on_pick, names="value")
        self.confirm_button.on_click(self._on_confirm)
        self.cancel_button.on_click(self._on_cancel)
        self.clear_button.on_click(self._on_clear)
        self.refresh_button.on_click(lambda _b: self._guarded(self.refresh))
        self._remove_listener: Callable[[], None] | None = add_switch_listener(self._on_switch)
        self._guarded(self.refresh)

    # ------------------------------------------------------------------ rendering
    def refresh(self) -> None:
        """Re-read the active environment's status and cache statistics."""
        env = current_environment()
        self._set_picker(env)
        st = collect_status(env)
        self.badge.value = badge_html(env, protected=st.protected, detail="active")
        self.status.value = status_html(st, badge=False)
        self.layout.border_left = f"6px solid {colour_for(env)}"
        self._refresh_cache(env)
        self._refresh_usage()

    def _refresh_usage(self) -> None:
        try:
            report = collect_usage()
        except Exception as exc:  # an unreadable ledger is shown, not raised
            self.usage.value = message_html(f"usage unavailable: {_one_line(exc)}")
            return
        self.usage.value = usage_chart_svg(report) if report.rows else ""

    def _refresh_cache(self, env: str) -> None:
        try:
            stats = cache_stats(env)
        except Exception as exc:  # an unreadable cache is shown, not raised
            self.cache_info.value = message_html(f"cache unavailable: {_one_line(exc)}")
            self.clear_button.layout.display = "none"
            return
        if not stats.get("enabled") and not stats.get("entries"):
            # nothing cached, nothing to clear: say so instead of "0 responses" and a button
            self.cache_info.value = message_html(
                f"cache off in {env}: every call goes to the API (cache=True per call, or "
                f"[{env}.cache] enabled = true)"
            )
            self.clear_button.layout.display = "none"
            return
        self.cache_info.value = cache_line_html(stats)
        self.clear_button.layout.display = ""

    def _set_picker(self, env: str) -> None:
        """Move the picker without triggering a switch."""
        self._syncing = True
        try:
            if env not in self.picker.options:
                self.picker.options = list_environments()
            self.picker.value = env
        finally:
            self._syncing = False

    def _show_error(self, message: str) -> None:
        self.error.value = error_html(message)

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run a UI action; any error lands in the error area as one line."""
        try:
            action()
        except Exception as exc:
            self._show_error(_one_line(exc))

    def _ask_confirm(self, html_text: str, *, button: str, icon: str) -> None:
        self.confirm_message.value = html_text
        self.confirm_button.description = button
        self.confirm_button.icon = icon
        self.confirm_box.layout.display = "flex"

    def _hide_confirm(self) -> None:
        self.pending = None
        self.pending_clear = None
        self.confirm_message.value = ""
        self.confirm_box.layout.display = "none"

    # ------------------------------------------------------------------ events
    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        self.error.value = ""
        target = change["new"]
        self._hide_confirm()
        if target == current_environment() and awaiting_confirmation() != target:
            return
        try:
            use_environment(target)  # on success the switch listener refreshes
        except ProductionConfirmationRequired:
            self.pending = target
            self._ask_confirm(
                f"<div>{badge_html(target, protected=True)} "
                "is protected: calls there use the production key and may bill it. "
                "Nothing has switched yet — confirm to switch, or cancel.</div>",
                button="Confirm switch",
                icon="exclamation-triangle",
            )
            return
        except Exception as exc:
            self._show_error(_one_line(exc))
            self._set_picker(current_environment())

    def _on_confirm(self, _button: Any = None) -> None:
        target, clear_env = self.pending, self.pending_clear
        self._hide_confirm()
        if clear_env is not None:
            self._guarded(lambda: self._clear(clear_env, confirm=True))
            return
        if target is None:
            return
        try:
            use_environment(target, confirm=True)  # on success the switch listener refreshes
        except Exception as exc:
            self._show_error(_one_line(exc))
            self._set_picker(current_environment())

    def _on_cancel(self, _button: Any = None) -> None:
        self._hide_confirm()
        self._set_picker(current_environment())

    def _clear(self, env: str, *, confirm: bool) -> None:
        removed = clear_cache(env, confirm=confirm)
        self._refresh_cache(env)
        self.error.value = message_html(cleared_text(removed), env)

    def _on_clear(self, _button: Any = None) -> None:
        env = current_environment()
        self._hide_confirm()
        try:
            self._clear(env, confirm=False)
        except ProductionConfirmationRequired:
            self.pending_clear = env
            self._ask_confirm(
                f"<div>{badge_html(env, protected=True)} is protected: clearing its cache "
                "means the next calls are billed again. Nothing was removed yet — clear it, "
                "or cancel.</div>",
                button=f"Clear {env}'s cache",
                icon="trash",
            )
        except Exception as exc:
            self._show_error(_one_line(exc))

    def _on_switch(self, old: str, new: str) -> None:
        """Core listener: another switch happened (magic, ``use_environment``, another widget)."""
        self._hide_confirm()
        self._guarded(self.refresh)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop following switches and close the widget and its children."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for child in self._descendants():
            if child is not self:
                child.close()
        super().close()

    def _descendants(self) -> list[Any]:
        out: list[Any] = []
        stack: list[Any] = [self]
        while stack:
            w = stack.pop()
            out.append(w)
            stack.extend(getattr(w, "children", ()))
        return out
