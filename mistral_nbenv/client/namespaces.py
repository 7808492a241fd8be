"""``client.chat``, ``client.fim`` ...: generated from the endpoint table, never hand-kept.

Each endpoint of :data:`~mistral_nbenv.client.request.ENDPOINTS` becomes a method on its
group's namespace, with an ``_async`` twin: ``complete`` / ``complete_async`` run
:meth:`Pipeline.call` / ``call_async``, a streaming endpoint runs ``stream`` /
``stream_async``. A new endpoint is one row in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .request import ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["Namespace", "build_namespaces"]


class Namespace:
    """One SDK group (``chat``, ``fim``, ``embeddings``, ``models``) on a wrapped client."""

    def __init__(self, group: str, owner: str) -> None:
        self._group = group
        self._owner = owner

    def __repr__(self) -> str:
        return f"<{self._group} of {self._owner}>"


def _sync(pipeline: Pipeline, ep: Endpoint) -> Callable[..., Any]:
    run = pipeline.stream if ep.stream else pipeline.call

    def method(**kwargs: Any) -> Any:
        return run(ep, kwargs)

    method.__name__ = ep.method
    method.__doc__ = ep.doc
    return method


def _async(pipeline: Pipeline, ep: Endpoint) -> Callable[..., Coroutine[Any, Any, Any]]:
    run = pipeline.stream_async if ep.stream else pipeline.call_async

    async def method(**kwargs: Any) -> Any:
        return await run(ep, kwargs)

    method.__name__ = ep.method + "_async"
    method.__doc__ = f"Async ``{ep.name}`` (works on any event loop)."
    return method


def build_namespaces(pipeline: Pipeline, owner: str) -> dict[str, Namespace]:
    """One namespace per group of the endpoint table, its methods bound to ``pipeline``."""
    spaces: dict[str, Namespace] = {}
    for ep in ENDPOINTS:
        space = spaces.setdefault(ep.group, Namespace(ep.group, owner))
        setattr(space, ep.method, _sync(pipeline, ep))
        setattr(space, ep.method + "_async", _async(pipeline, ep))
    return spaces
