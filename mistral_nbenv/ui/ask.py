"""The one timed chat call behind ``%%mistral`` and the demo, and its answer."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ChatAnswer", "ask"]


class ChatAnswer:
    """A chat answer plus where it came from (what ``%%mistral`` returns, so ``_`` holds it).

    ``.response`` is the SDK's ``ChatCompletionResponse``; any other attribute (``.choices``,
    ``.usage``, ``.model``, ...) is read from it.  ``.content`` is the answer text,
    ``.environment``/``.cached``/``.elapsed_ms`` describe the call, ``.model_sent`` is the
    model the request named (pins applied) and ``.model_reason`` why it is not the
    ``model`` setting (empty when it is, or when the call named its model).
    """

    def __init__(
        self,
        response: Any,
        *,
        environment: str,
        model: str,
        cached: bool,
        elapsed_ms: float,
        model_reason: str = "",
    ) -> None:
        self.response = response
        self.environment = environment
        self.model_sent = model
        self.model_reason = model_reason
        self.cached = cached
        self.elapsed_ms = elapsed_ms

    @property
    def requested_model(self) -> str:
        """The model sent (the name of earlier releases)."""
        return self.model_sent

    @property
    def model_answered(self) -> str:
        """The model the API says answered (``response.model``)."""
        answered = getattr(self.response, "model", None)
        return answered if isinstance(answered, str) else ""

    @property
    def content(self) -> str:
        """The text of the first choice."""
        try:
            content = self.response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            return ""
        if isinstance(content, str):
            return content
        # structured content: join the text chunks
        return "".join(getattr(c, "text", "") or "" for c in content or [])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "response":
            raise AttributeError(name)
        return getattr(self.response, name)

    def _repr_markdown_(self) -> str:
        return self.content

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.content)

    def __repr__(self) -> str:
        return (
            f"ChatAnswer(environment={self.environment!r}, model={self.model_sent!r}, "
            f"cached={self.cached}, content={self.content[:60]!r})"
        )


def ask(client: Any, **kwargs: Any) -> ChatAnswer:
    """``client.chat.complete(**kwargs)``, timed, noting whether the cache answered it."""
    settings = client.settings
    named = kwargs.get("model")
    sent = settings.send(named) if isinstance(named, str) else settings.model_sent
    hits_before = client.stats.hits
    started = time.perf_counter()
    response = client.chat.complete(**kwargs)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return ChatAnswer(
        response,
        environment=client.environment,
        model=sent,
        model_reason=settings.model_reason if named is None else "",
        cached=client.stats.hits > hits_before,
        elapsed_ms=elapsed_ms,
    )
