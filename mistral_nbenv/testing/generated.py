"""Schema-valid answers for the long tail of the SDK's operations, made from its own models.

The installed SDK's operations (:func:`mistral_nbenv.client.surface.walk`) give each route's HTTP
method, path template and response model; ``polyfactory`` builds an instance of that model
(seeded by the path, so the same request gets the same body) and it is sent as JSON. A
stream gets three generated events. An operation that returns nothing gets ``204``.

``polyfactory`` is a test dependency (``pip install mistral-nbenv[testing]``); without it
these routes answer ``501`` saying so, and the hand-scripted routes still work.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from typing import Any

from mistral_nbenv.testing.reply import Reply

__all__ = ["body_for", "find"]

_lock = threading.Lock()
_table: list[tuple[str, re.Pattern[str], Any]] | None = None
_factories: dict[Any, Any] = {}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def _routes() -> list[tuple[str, re.Pattern[str], Any]]:
    """``(method, path pattern, operation)``, literal paths before templated ones."""
    global _table
    with _lock:
        if _table is None:
            from mistral_nbenv.client import surface

            found: dict[tuple[str, str, bool], Any] = {}
            for op in surface.walk():
                if op.http_method and op.http_path:
                    found.setdefault((op.http_method, op.http_path, op.stream), op)
            ordered = sorted(
                found.items(), key=lambda item: (item[0][1].count("{"), -len(item[0][1]))
            )
            _table = [(method, _pattern(path), op) for (method, path, _s), op in ordered]
        return _table


def find(method: str, path: str, *, stream: bool) -> Any:
    """The SDK operation a request is for (a stream's own operation when there is one)."""
    matches = [op for m, pattern, op in _routes() if m == method and pattern.fullmatch(path)]
    for op in matches:
        if op.stream == stream:
            return op
    return matches[0] if matches else None


def _factory(kind: Any) -> Any:
    """A polyfactory factory for ``kind``: a model, or any annotation (wrapped in one)."""
    found = _factories.get(kind)
    if found is None:
        from polyfactory.factories.pydantic_factory import ModelFactory
        from pydantic import BaseModel, ConfigDict, create_model

        if isinstance(kind, type) and issubclass(kind, BaseModel):
            model: Any = kind
        else:
            config = ConfigDict(arbitrary_types_allowed=True)
            model = create_model("Generated", __config__=config, value=(kind, ...))
        found = _factories[kind] = ModelFactory.create_factory(model, __check_model__=False)
    return found


def _instance(kind: Any, seed: int) -> Any:
    """A generated value of ``kind`` (a model, a union, a list, a dict, ``Any`` ...)."""
    from pydantic import BaseModel

    factory = _factory(kind)
    factory.seed_random(seed)
    built = factory.build()
    return built if isinstance(kind, type) and issubclass(kind, BaseModel) else built.value


def _dump(kind: Any, value: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(kind).dump_python(value, mode="json", by_alias=True)


def body_for(op: Any, path: str, *, stream: bool = False) -> Reply:
    """The answer of ``op`` at ``path`` (``stream``: the request asked for a stream)."""
    import warnings

    status = int(op.success) if op.success.isdigit() else 200
    kind = op.event_type if stream and op.event_type is not None else op.returns
    if kind is None or kind is type(None) or status == 204:
        return Reply(204 if status in (200, 204) else status, b"")
    if op.raw:  # a download: bytes of the declared content type
        content_type = "application/octet-stream" if op.content_type == "*" else op.content_type
        return Reply(
            status, b"generated %s" % path.encode(), headers={"Content-Type": content_type}
        )
    try:
        import polyfactory  # noqa: F401
    except ImportError:
        message = "this route is generated with polyfactory: pip install mistral-nbenv[testing]"
        return Reply(501, {"object": "error", "message": message})
    if op.wrapped:  # the SDK builds its object (result + next() / headers)
        kind = op.body_type
    seed = zlib.crc32(path.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's open enums warn on generated strings
        if stream and (op.stream or op.mixed):  # an SSE event's model is {event, data}
            fields = getattr(kind, "model_fields", {})
            if "data" not in fields:
                return Reply(
                    status, events=[_dump(kind, _instance(kind, seed + i)) for i in range(3)]
                )
            # an SSE event model ({event, data, id, retry}): sent as "event:" and "data:" lines.
            # Only events of a stream that goes well: named (every such SDK model's ``event``
            # holds a name), and never an "error" event or an error payload, which is how a
            # server ends a failed stream (the SDK raises StreamDisconnectedError for them)
            named = []
            for i in range(48):
                event = _instance(kind, seed + i)
                name, data = getattr(event, "event", None), getattr(event, "data", None)
                failed = name == "error" or type(data).__name__.endswith("Error")
                if data is None or failed or (name is None and "event" in fields):
                    continue
                dumped = _dump(kind, event)
                named.append((dumped.get("event"), dumped["data"]))
                if len(named) == 3:
                    break
            return Reply(status, events=named)
        body = _dump(kind, _instance(kind, seed))
    if op.content_type == "application/x-ndjson":
        lines = body if isinstance(body, list) else [body]
        text = "".join(json.dumps(line) + "\n" for line in lines)
        return Reply(status, text, headers={"Content-Type": op.content_type})
    return Reply(status, json.dumps(body).encode())  # a str / number body is JSON too
