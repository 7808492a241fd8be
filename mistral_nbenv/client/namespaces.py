"""``client.chat``, ``client.beta.conversations`` ...: the installed SDK's namespaces, mirrored.

Nothing here lists operations: a :class:`Namespace` asks :mod:`mistral_nbenv.client.surface` what
its SDK namespace offers the first time an attribute is looked up, and binds it:

* an operation that sends a request (``chat.complete``, ``files.upload``) runs the pipeline
  (``call``/``call_async``, or ``stream``/``stream_async`` for a stream);
* a *derived* operation (``chat.parse``, which calls ``complete``) runs the SDK's own code
  with this namespace as its ``self``, so each inner call goes through the pipeline too;
* a child namespace is another :class:`Namespace`;
* anything else (``audio.realtime``, a websocket client) is the SDK object's own attribute:
  :attr:`Client.raw`'s territory, reached without the pipeline.

A bound method is kept on the instance, so the second lookup is a plain attribute read.
A new SDK release's operations appear here without a code change.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from mistral_nbenv.client import surface
from mistral_nbenv.client.request import Endpoint, endpoint_for

if TYPE_CHECKING:
    from mistral_nbenv.client.pipeline import Pipeline

__all__ = ["Namespace", "build_namespaces"]

#: Keywords the wrapper adds to every operation.
EXTRA_KEYWORDS = ("cache", "retry")


class Namespace:
    """One SDK namespace (``chat``, ``beta.conversations``) on a wrapped client."""

    def __init__(self, pipeline: Pipeline, path: tuple[str, ...], owner: str) -> None:
        self._pipeline = pipeline
        self._path = path
        self._owner = owner

    def __repr__(self) -> str:
        return f"<{'.'.join(self._path)} of {self._owner}>"

    def __dir__(self) -> list[str]:
        node = surface.space(self._path)
        names = set(node.children)
        for op in node.operations.values():
            names.add(op.name)
            if op.has_async:
                names.add(op.name + "_async")
        return sorted(names)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        node = surface.space(self._path)
        base, is_async = (
            (name[: -len("_async")], True) if name.endswith("_async") else (name, False)
        )
        op = node.operations.get(base)
        found: Any
        if op is not None and (op.has_async or not is_async):
            found = _bind(self, op, is_async=is_async)
        elif name in node.children:
            found = Namespace(self._pipeline, (*self._path, name), self._owner)
        else:  # not an operation (audio.realtime, sdk_configuration): the SDK object's own
            raw = self._pipeline.transport.raw
            for part in self._path:
                raw = getattr(raw, part)
            return getattr(raw, name)
        setattr(self, name, found)
        return found


def _bind(space: Namespace, op: surface.Operation, *, is_async: bool) -> Callable[..., Any]:
    """The wrapper's method for ``op`` on ``space``."""
    pipeline = space._pipeline
    if op.derived:
        fn = op.function(is_async=is_async)
        method: Callable[..., Any] = functools.partial(fn, space)
        functools.update_wrapper(method, fn)
        return method
    ep = endpoint_for(op)
    if op.mixed:  # one SDK method, a stream only with stream=True (audio.speech.complete)
        streamed = endpoint_for(op, stream=True)
        bound: Any = (
            _async_mixed(pipeline, ep, streamed)
            if is_async
            else _sync_mixed(pipeline, ep, streamed)
        )
    else:
        bound = _async(pipeline, ep) if is_async else _sync(pipeline, ep)
    fn = op.function(is_async=is_async)
    bound.__doc__ = fn.__doc__ or ep.doc
    bound.__signature__ = _signature(fn)
    notice = getattr(fn, "__deprecated__", None)
    if isinstance(notice, str):  # the SDK's @deprecated (the transport runs the body)
        return _warning_first(bound, notice, is_async=is_async)
    return bound


def _warning_first(method: Any, notice: str, *, is_async: bool) -> Callable[..., Any]:
    """``method`` that first gives the SDK's deprecation warning, at the user's line."""
    warned: Callable[..., Any]
    if is_async:

        async def warned(**kwargs: Any) -> Any:
            warnings.warn(notice, DeprecationWarning, stacklevel=2)
            return await method(**kwargs)

    else:

        def warned(**kwargs: Any) -> Any:
            warnings.warn(notice, DeprecationWarning, stacklevel=2)
            return method(**kwargs)

    return functools.update_wrapper(warned, method)


def _signature(fn: Any) -> inspect.Signature:
    """The SDK method's signature without ``self``, plus the wrapper's ``cache``/``retry``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return inspect.Signature()
    params = [p for p in sig.parameters.values() if p.name != "self"]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in EXTRA_KEYWORDS
        if name not in sig.parameters
    ]
    kwargs = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return sig.replace(parameters=[*params, *extra, *kwargs])


def _sync(pipeline: Pipeline, ep: Endpoint) -> Callable[..., Any]:
    run = pipeline.stream if ep.stream else pipeline.call

    def method(**kwargs: Any) -> Any:
        return run(ep, kwargs)

    method.__name__ = ep.method
    method.__qualname__ = ep.name
    return method


def _async(pipeline: Pipeline, ep: Endpoint) -> Callable[..., Coroutine[Any, Any, Any]]:
    run = pipeline.stream_async if ep.stream else pipeline.call_async

    async def method(**kwargs: Any) -> Any:
        return await run(ep, kwargs)

    method.__name__ = ep.method + "_async"
    method.__qualname__ = ep.name + "_async"
    return method


def _sync_mixed(pipeline: Pipeline, ep: Endpoint, streamed: Endpoint) -> Callable[..., Any]:
    def method(**kwargs: Any) -> Any:
        if kwargs.get("stream") is True:
            return pipeline.stream(streamed, kwargs)
        return pipeline.call(ep, kwargs)

    method.__name__ = ep.method
    method.__qualname__ = ep.name
    return method


def _async_mixed(
    pipeline: Pipeline, ep: Endpoint, streamed: Endpoint
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(**kwargs: Any) -> Any:
        if kwargs.get("stream") is True:
            return await pipeline.stream_async(streamed, kwargs)
        return await pipeline.call_async(ep, kwargs)

    method.__name__ = ep.method + "_async"
    method.__qualname__ = ep.name + "_async"
    return method


def build_namespaces(pipeline: Pipeline, owner: str) -> Namespace:
    """The root namespace: ``client.chat`` etc. are its children, made on first use."""
    return Namespace(pipeline, (), owner)
