"""The installed SDK's operations, discovered from the SDK itself (never a hand-kept list).

``mistralai.client.Mistral`` is a tree of namespaces (``chat``, ``beta.conversations``,
``batch.jobs`` ...), each a ``BaseSDK`` class whose public methods are operations. For each
operation this module finds, from the SDK's own code:

* its HTTP method and path (the ``method=``/``path=`` the SDK passes to ``_build_request``;
  a path ending in ``#stream`` is the SDK's mark of a server-sent-events stream);
* whether it returns a stream (``EventStream[...]``) and what it returns (the type a cached
  body is rebuilt into);
* whether it is *derived*: it sends nothing itself but calls other operations of its own
  namespace (``chat.parse`` calls ``complete``), so the wrapper can run the SDK's own code
  with its namespace in place of the SDK's and every inner call goes through the pipeline.

Discovery is lazy and per namespace (importing and reading every SDK module costs seconds;
one namespace costs milliseconds), cached for the process. ``mistralai`` is imported only
inside functions, so importing this module imports nothing heavy.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mistral_nbenv._forksafe import RLock

__all__ = ["Operation", "Space", "operations", "space", "walk"]

_lock = RLock()


@dataclass(frozen=True)
class Operation:
    """One public operation of the SDK (its sync name; ``has_async``: an ``_async`` twin)."""

    namespace: tuple[str, ...]  # ("beta", "conversations")
    name: str  # "start"
    http_method: str | None  # "POST"; None for a derived operation
    http_path: str | None  # "/v1/conversations" (without "#stream")
    stream: bool  # always answers with a server-sent-events stream
    calls: tuple[str, ...]  # the operations of its own namespace a derived one calls
    has_async: bool
    owner: type  # the SDK class that defines it
    mixed: bool = False  # a stream only when called with stream=True (audio.speech.complete)
    success: str = "200"  # the HTTP status of its answer (the SDK's first 2XX match_response)
    content_type: str = "application/json"  # the content type of that answer

    def streams(self, params: typing.Mapping[str, Any]) -> bool:
        """Whether a call with these arguments answers with a stream."""
        return self.stream or (self.mixed and params.get("stream") is True)

    @property
    def qualname(self) -> str:
        """``beta.conversations.start``: also the cache namespace of the operation."""
        return ".".join((*self.namespace, self.name))

    @property
    def derived(self) -> bool:
        """Sends nothing itself (``chat.parse``): runs over the wrapper's namespace."""
        return self.http_method is None

    def function(self, *, is_async: bool = False) -> Any:
        """The SDK's (unbound) function of this operation."""
        return getattr(self.owner, self.name + ("_async" if is_async else ""))

    @functools.cached_property
    def _annotation(self) -> Any:
        try:
            hints = typing.get_type_hints(self.function())
        except Exception:
            hints = getattr(self.function(), "__annotations__", {})
        found = hints.get("return")
        return None if isinstance(found, str) else found

    @functools.cached_property
    def returns(self) -> Any:
        """What the operation returns (a stream: its event type; a mixed one: its answer
        without ``stream=True``); None when unknown."""
        return _unwrap(self._annotation, stream=self.stream)

    @functools.cached_property
    def event_type(self) -> Any:
        """The event type of its stream (a stream or mixed operation), else None."""
        if not (self.stream or self.mixed):
            return None
        return _unwrap(self._annotation, stream=True)

    @functools.cached_property
    def wrapped(self) -> bool:
        """Returns an object the SDK builds around the body: ``result`` plus a page's
        ``next()`` or the HTTP ``headers``. The body is the ``result``."""
        fields = getattr(self.returns, "model_fields", None) or {}
        return "result" in fields and ("next" in fields or "headers" in fields)

    @property
    def body_type(self) -> Any:
        """The type of the body of a wrapped operation (its ``result``)."""
        return self.returns.model_fields["result"].annotation

    @property
    def raw(self) -> bool:
        """Returns the HTTP response itself (a download): nothing to rebuild from JSON."""
        kind = self.returns
        return isinstance(kind, type) and kind.__name__ == "Response" and "httpx" in kind.__module__


def _is_event_stream(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return getattr(origin, "__name__", "") == "EventStream"


def _unwrap(annotation: Any, *, stream: bool) -> Any:
    """``Optional[X]`` -> X; ``EventStream[E]`` -> E (for a stream); for a union of an answer
    and a stream, the answer (or, ``stream=True``, the events)."""
    if annotation is None:
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if getattr(typing.get_origin(annotation), "__name__", "") == "JsonLStream":
        return list[args[0]] if args else annotation  # type: ignore[valid-type]  # all lines
    if _is_event_stream(annotation):
        return args[0] if stream and args else annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        streams = [a for a in args if _is_event_stream(a)]
        if stream and streams:
            return _unwrap(streams[0], stream=True)
        plain = [a for a in args if not _is_event_stream(a)]
        if streams or len(plain) == 1:
            return plain[0] if len(plain) == 1 else typing.Union[tuple(plain)]  # noqa: UP007
    return annotation


@dataclass(frozen=True)
class Space:
    """One namespace of the SDK: its class, its operations and its child namespaces."""

    path: tuple[str, ...]
    cls: type
    operations: dict[str, Operation]
    children: dict[str, typing.Callable[[], type]]  # name -> its class (imported on call)


def _root() -> type:
    from mistralai.client import Mistral

    return Mistral


def _lazy(module: str, class_name: str) -> typing.Callable[[], type]:
    return lambda: getattr(importlib.import_module(module), class_name)


def _known(cls: type) -> typing.Callable[[], type]:
    return lambda: cls


def _children(cls: type) -> dict[str, typing.Callable[[], type]]:
    """A namespace's child namespaces (the root's are imported only when used)."""
    from mistralai.client.basesdk import BaseSDK

    found: dict[str, typing.Callable[[], type]] = {}
    for name, (module, class_name) in getattr(cls, "_sub_sdk_map", {}).items():
        found[name] = _lazy(module, class_name)
    for name, annotation in vars(cls).get("__annotations__", {}).items():
        if isinstance(annotation, type) and issubclass(annotation, BaseSDK):
            found[name] = _known(annotation)
    return found


def _class_node(cls: type) -> ast.ClassDef | None:
    """The class statement of ``cls``, parsed from its module's file (None: no source).

    The module is read and parsed once, and the class found among its top-level statements.
    ``inspect.getsource`` would find the same text but costs several times as much: on first
    use it maps every loaded module to its file, and it parses the whole module to find
    where the class ends, before the class is parsed again.
    """
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, "__file__", None)
    if filename:
        try:
            with tokenize.open(filename) as file:
                tree = ast.parse(file.read(), filename)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            tree = None
        for node in tree.body if tree is not None else ():
            if isinstance(node, ast.ClassDef) and node.name == cls.__qualname__:
                return node
    try:  # not a top-level class of a plain source file: inspect's general search
        node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    return node if isinstance(node, ast.ClassDef) else None


def _read_source(cls: type) -> dict[str, dict[str, Any]]:
    """Per function of ``cls``: the method/path given to ``_build_request``, self-calls."""
    tree = _class_node(cls)
    if tree is None:  # no source: every operation is a write
        return {}
    found: dict[str, dict[str, Any]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        info: dict[str, Any] = {"calls": set()}
        for call in ast.walk(node):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            if call.func.attr in ("_build_request", "_build_request_async"):
                for kw in call.keywords:
                    if kw.arg in ("method", "path") and isinstance(kw.value, ast.Constant):
                        info[kw.arg] = kw.value.value
            elif call.func.attr == "match_response" and "success" not in info:
                values = [a.value for a in call.args[1:3] if isinstance(a, ast.Constant)]
                if len(values) == 2 and str(values[0]).startswith("2"):
                    info["success"] = (str(values[0]), str(values[1]))
            elif isinstance(call.func.value, ast.Name) and call.func.value.id == "self":
                info["calls"].add(call.func.attr)
        found[node.name] = info
    return found


def _stream_kind(fn: Any, path: str | None) -> tuple[bool, bool]:
    """``(stream, mixed)``: always a stream, or one only when called with ``stream=True``."""
    if path is not None and path.endswith("#stream"):
        return True, False
    annotation = getattr(fn, "__annotations__", {}).get("return")
    text = annotation if isinstance(annotation, str) else repr(annotation)
    if "EventStream" not in text:
        return False, False
    # Union[Answer, EventStream[E]] (the SDK's overloads on stream: bool): mixed
    mixed = "Union[" in text or "|" in text
    return not mixed, mixed


def _discover(path: tuple[str, ...], cls: type) -> Space:
    ops: dict[str, Operation] = {}
    if path:  # the root's own methods (dynamic_import ...) are not operations
        source = _read_source(cls)
        for name, fn in vars(cls).items():
            if name.startswith("_") or name.endswith("_async") or not inspect.isfunction(fn):
                continue
            info = source.get(name, {})
            http_path = info.get("path")
            stream, mixed = _stream_kind(fn, http_path)
            status, content_type = info.get("success", ("200", "application/json"))
            ops[name] = Operation(
                namespace=path,
                name=name,
                http_method=info.get("method"),
                http_path=http_path.partition("#")[0] if http_path else None,
                stream=stream,
                calls=tuple(sorted(c for c in info.get("calls", ()) if not c.startswith("_"))),
                has_async=inspect.isfunction(vars(cls).get(name + "_async")),
                owner=cls,
                mixed=mixed,
                success=status,
                content_type=content_type,
            )
    return Space(path, cls, ops, _children(cls))


_spaces: dict[tuple[str, ...], Space] = {}


def space(path: tuple[str, ...]) -> Space:
    """The namespace at ``path`` (``()`` is the root), discovered on first use."""
    found = _spaces.get(path)
    if found is not None:
        return found
    with _lock:
        found = _spaces.get(path)
        if found is None:
            if not path:
                cls = _root()
            else:
                parent = space(path[:-1])
                if path[-1] not in parent.children:
                    raise AttributeError(
                        f"the installed mistralai has no namespace {'.'.join(path)!r}"
                    )
                cls = parent.children[path[-1]]()
            found = _spaces[path] = _discover(path, cls)
    return found


def operations(path: tuple[str, ...]) -> dict[str, Operation]:
    """The operations of the namespace at ``path``."""
    return space(path).operations


def walk(path: tuple[str, ...] = ()) -> Iterator[Operation]:
    """Every operation at and below ``path`` (imports every SDK module: seconds, not ms)."""
    node = space(path)
    yield from node.operations.values()
    for child in node.children:
        yield from walk((*path, child))
