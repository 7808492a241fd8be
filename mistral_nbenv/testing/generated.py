"""Schema-valid answers for the long tail of the SDK's operations, made from its own models.

The installed SDK's operations (:func:`mistral_nbenv.surface.walk`) give each route's HTTP
method, path template and response model; ``polyfactory`` builds an instance of that model
(seeded by the path, so the same request gets the same body) and it is sent as JSON. A
stream gets three generated events. An operation that returns nothing gets ``204``.

``polyfactory`` is a test dependency (``pip install mistral-nbenv[testing]``); without it
these routes answer ``501`` saying so, and the hand-scripted routes still work.
"""

from __future__ import annotations

import re
import threading
import zlib
from typing import Any

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
            from .. import surface

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


def _factory(model: Any) -> Any:
    found = _factories.get(model)
    if found is None:
        from polyfactory.factories.pydantic_factory import ModelFactory

        found = _factories[model] = ModelFactory.create_factory(model, __check_model__=False)
    return found


def _instance(kind: Any, seed: int) -> Any:
    """A generated value of ``kind`` (a model, or a union / list of models)."""
    import typing

    from pydantic import BaseModel

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        factory = _factory(kind)
        factory.seed_random(seed)
        return factory.build()
    if typing.get_origin(kind) in (list, typing.List) and args:  # noqa: UP006
        return [_instance(args[0], seed)]
    if args:
        return _instance(args[seed % len(args)], seed)
    raise TypeError(f"no generator for {kind!r}")


def body_for(op: Any, path: str) -> tuple[int, Any, list[Any] | None]:
    """``(status, JSON body, events)`` for ``op`` at ``path``."""
    import warnings

    from pydantic import TypeAdapter

    kind = op.returns
    if kind is None or kind is type(None):
        return 204, b"", None
    try:
        import polyfactory  # noqa: F401
    except ImportError:
        message = "this route is generated with polyfactory: pip install mistral-nbenv[testing]"
        return 501, {"object": "error", "message": message}, None
    seed = zlib.crc32(path.encode())
    adapter = TypeAdapter(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's open enums warn on generated strings
        if op.stream:  # an SSE event's model is {event, data}: sent as "event:" and "data:"
            dumped = [
                adapter.dump_python(_instance(kind, seed + i), mode="json", by_alias=True)
                for i in range(3)
            ]
            events = [(d.get("event"), d.get("data")) for d in dumped]
            return 200, None, events
        return 200, adapter.dump_python(_instance(kind, seed), mode="json", by_alias=True), None
