"""One cache entry for a request, streamed or not: converting between the two forms.

``chat.complete`` and ``chat.stream`` (and FIM's pair) send the same request; the cache
keeps each under its own endpoint. On a miss, :class:`~mistral_nbenv.client.pipeline.
Pipeline` looks for the twin's entry and converts it:

* a plain answer as stream events: one chunk carrying the whole message, then the usage;
* stream events as a plain answer: the deltas joined.

Only answers of one choice whose content is text convert (a tool call or structured
content stays a miss), so a conversion is exact: the same text, model, id and usage.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TWINS", "as_body", "as_events"]

#: endpoint -> the endpoint answering the same request in the other form
TWINS = {
    "chat.complete": "chat.stream",
    "chat.stream": "chat.complete",
    "fim.complete": "fim.stream",
    "fim.stream": "fim.complete",
}


def as_events(body_text: str) -> str | None:
    """A cached plain answer as the lines of a stream recording (None: not convertible)."""
    try:
        body = json.loads(body_text)
        (choice,) = body["choices"]
        message = choice["message"]
    except (ValueError, KeyError, TypeError):
        return None
    content = message.get("content")
    if not isinstance(content, str) or message.get("tool_calls"):
        return None
    delta = {"role": "assistant", "content": content}
    chunk = _answer(body, "chat.completion.chunk", "delta", delta, choice.get("finish_reason"))
    if body.get("usage") is not None:
        chunk["usage"] = body["usage"]
    return json.dumps({"data": chunk})


def as_body(events_text: str) -> str | None:
    """A stream recording as one plain answer (None: not convertible)."""
    pieces: list[str] = []
    first: dict[str, Any] | None = None
    usage: Any = None
    finish: str | None = None
    try:
        for line in events_text.splitlines():
            chunk = json.loads(line)["data"]
            first = first or chunk
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:
                    return None
                delta = choice.get("delta") or {}
                if delta.get("tool_calls"):
                    return None
                content = delta.get("content")
                if isinstance(content, list):
                    return None
                if isinstance(content, str):
                    pieces.append(content)
                finish = choice.get("finish_reason") or finish
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if first is None:
        return None
    message = {"role": "assistant", "content": "".join(pieces), "tool_calls": None}
    body = _answer(first, "chat.completion", "message", message, finish)
    body["usage"] = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return json.dumps(body)


def _answer(
    source: dict[str, Any], kind: str, field: str, content: dict[str, Any], finish: Any
) -> dict[str, Any]:
    """One answer of one choice (``kind``: a body or a chunk; ``field``: message or delta),
    its id, time and model taken from ``source``."""
    return {
        "id": source.get("id") or "cached",
        "object": kind,
        "created": source.get("created"),
        "model": source.get("model"),
        "choices": [{"index": 0, field: content, "finish_reason": finish or "stop"}],
    }
