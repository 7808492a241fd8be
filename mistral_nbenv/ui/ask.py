"""The one timed chat call behind ``%%mistral`` and the demo, its answer and its provenance."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["ChatAnswer", "ask", "ask_stream"]


class ChatAnswer:
    """A chat answer plus where it came from (what ``%%mistral`` returns, so ``_`` holds it).

    ``.response`` is the SDK's ``ChatCompletionResponse`` (for a streamed answer, one built
    from its events); any other attribute (``.choices``, ``.usage``, ``.model``, ...) is
    read from it. ``.content`` is the answer text, ``.environment``/``.cached``/
    ``.elapsed_ms`` describe the call, ``.model_sent`` is the model the request named (pins
    applied) and ``.model_reason`` why it is not the ``model`` setting (empty when it is, or
    when the call named its model). ``.provenance`` is what a notebook records with it.
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
        request_key: str | None = None,
        cost_usd: float | None = None,
        cache_on: bool = True,
        streamed: bool = False,
        interrupted: bool = False,
    ) -> None:
        self.response = response
        self.environment = environment
        self.model_sent = model
        self.model_reason = model_reason
        self.cached = cached
        self.elapsed_ms = elapsed_ms
        self.request_key = request_key
        self.cost_usd = cost_usd
        self.cache_on = cache_on
        self.streamed = streamed
        self.interrupted = interrupted
        self._shown = False  # the magic displayed it already (streamed): Out[n] stays empty

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

    @property
    def tokens(self) -> dict[str, int]:
        """``prompt``, ``completion`` and ``total`` tokens of the answer."""
        usage = getattr(self.response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        total = int(getattr(usage, "total_tokens", 0) or (prompt + completion))
        return {"prompt": prompt, "completion": completion, "total": total}

    @property
    def provenance(self) -> dict[str, Any]:
        """Where this answer came from, as a notebook output's metadata records it: never a
        key; the request is named by a digest of its cache key (a one-way hash)."""
        return {
            "environment": self.environment,
            "model_sent": self.model_sent,
            "model_answered": self.model_answered,
            "model_reason": self.model_reason,
            "source": "cache" if self.cached else "api",
            "cache_on": self.cache_on,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "request_digest": self.request_key[:16] if self.request_key else None,
            "streamed": self.streamed,
            "interrupted": self.interrupted,
        }

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("response", "_shown"):
            raise AttributeError(name)
        return getattr(self.response, name)

    def _repr_markdown_(self) -> str:
        return self.content

    def _ipython_display_(self) -> None:
        """Out[n] of a ``%%mistral`` cell whose answer was already shown is empty; any other
        display of it shows the Markdown."""
        if self._shown:
            self._shown = False
            return
        from IPython.display import Markdown, display

        display(Markdown(self.content))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.content)

    def __repr__(self) -> str:
        return (
            f"ChatAnswer(environment={self.environment!r}, model={self.model_sent!r}, "
            f"cached={self.cached}, content={self.content[:60]!r})"
        )


def _context(client: Any, kwargs: dict[str, Any]) -> tuple[str, str]:
    """``(model sent, why it is not the model setting)`` for a chat call."""
    settings = client.settings
    named = kwargs.get("model")
    sent = settings.send(named) if isinstance(named, str) else settings.model_sent
    return sent, settings.model_reason if named is None else ""


def _cache_on(client: Any, kwargs: dict[str, Any]) -> bool:
    option = kwargs.get("cache")
    cache = client.settings.cache
    on = bool(cache.enabled) if option is None else option is not False
    return on and float(cache.ttl_seconds) > 0


def ask(client: Any, **kwargs: Any) -> ChatAnswer:
    """``client.chat.complete(**kwargs)``, timed, noting whether the cache answered it."""
    hits_before, started = client.stats.hits, time.perf_counter()
    response = client.chat.complete(**kwargs)
    return _answer(client, "chat.complete", kwargs, response, hits_before, started)


def _answer(
    client: Any,
    operation: str,
    kwargs: dict[str, Any],
    response: Any,
    hits_before: int,
    started: float,
    **extra: Any,
) -> ChatAnswer:
    """The :class:`ChatAnswer` of a call that started at ``started`` (perf_counter)."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    sent, reason = _context(client, kwargs)
    return ChatAnswer(
        response,
        environment=client.environment,
        model=sent,
        model_reason=reason,
        cached=client.stats.hits > hits_before,
        elapsed_ms=elapsed_ms,
        request_key=client.request_key(operation, **kwargs),
        cost_usd=client.cost_of(response),
        cache_on=_cache_on(client, kwargs),
        **extra,
    )


def ask_stream(
    client: Any, on_text: Callable[[str], None] | None = None, **kwargs: Any
) -> ChatAnswer:
    """``client.chat.stream(**kwargs)`` read to the end (or until interrupted), calling
    ``on_text(text so far)`` after each piece; the answer is built from the events.

    ``KeyboardInterrupt`` (Ctrl-C, a notebook's interrupt) stops the stream and keeps what
    arrived (``.interrupted``); a stream cut short is not cached.
    """
    sent, _reason = _context(client, kwargs)
    hits_before, started = client.stats.hits, time.perf_counter()
    pieces: list[str] = []
    last: Any = None
    usage: Any = None
    interrupted = False
    stream = client.chat.stream(**kwargs)
    try:
        for event in stream:
            data = getattr(event, "data", None)
            last = data or last
            usage = getattr(data, "usage", None) or usage
            for choice in getattr(data, "choices", None) or []:
                text = getattr(getattr(choice, "delta", None), "content", None)
                if isinstance(text, str) and text:
                    pieces.append(text)
                    if on_text is not None:
                        on_text("".join(pieces))
    except KeyboardInterrupt:
        interrupted = True
        stream.close()
    response = _response(last, "".join(pieces), usage, sent)
    return _answer(
        client,
        "chat.stream",
        kwargs,
        response,
        hits_before,
        started,
        streamed=True,
        interrupted=interrupted,
    )


def _response(last: Any, text: str, usage: Any, model: str) -> Any:
    """A ``ChatCompletionResponse`` made of a stream's events (the SDK's own model)."""
    from mistral_nbenv.client.transport import SDK

    body: dict[str, Any] = {
        "id": getattr(last, "id", None) or "stream",
        "object": "chat.completion",
        "model": getattr(last, "model", None) or model,
        "created": getattr(last, "created", None) or int(time.time()),
        "usage": (
            usage.model_dump()
            if usage is not None
            else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        ),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    return SDK.model("ChatCompletionResponse").model_validate(body)
