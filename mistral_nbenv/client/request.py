"""What a request is: its endpoint, canonical parameters, the token estimate, usage.

Every operation of the installed SDK is an :class:`Endpoint` (:func:`endpoint_for`, from
:mod:`mistral_nbenv.client.surface`'s discovery and :mod:`.policy`'s table). :data:`ENDPOINTS` is
not a list of what the wrapper serves: it holds only what discovery cannot know, the
setting that gives an operation's default model and the SDK model its cached body is
rebuilt into by name (the fast path of the hot endpoints).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.client.policy import CACHED_READ, INFERENCE, Policy, RetryMode, policy_for
from mistral_nbenv.client.transport import SDK

if TYPE_CHECKING:
    from mistral_nbenv.client.surface import Operation

__all__ = [
    "ENDPOINTS",
    "TRANSPORT_PARAMS",
    "Endpoint",
    "Prepared",
    "canonical",
    "endpoint_for",
    "estimate_prompt",
    "estimate_tokens",
    "usage_of",
]

#: Parameters that change how a request travels, not what it answers.
TRANSPORT_PARAMS = frozenset({"timeout_ms", "http_headers", "retries"})
#: Parameters given as dicts or SDK objects, validated into one normal form for the key.
_NORMALISED = ("messages", "tools", "tool_choice", "response_format", "prediction")


@dataclass(frozen=True)
class Endpoint:
    """One SDK operation the wrapper serves."""

    group: str  # SDK namespace, dotted: chat, fim, beta.conversations, batch.jobs
    method: str  # SDK method (sync name); the async one is method + "_async"
    response: str | None  # SDK model a cached body is rebuilt into, by name (a stream: its
    # event model); None: the operation's discovered return type
    default_model: str | None  # Settings attribute giving the model when none is passed
    stream: bool = False
    doc: str = ""
    policy: Policy = INFERENCE
    operation: Operation | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def name(self) -> str:
        """``chat.complete``: also the cache namespace of the endpoint."""
        return f"{self.group}.{self.method}"

    @functools.cached_property
    def cacheable(self) -> bool:
        """Whether an answer can be stored as JSON and rebuilt (not a raw HTTP response)."""
        if not self.policy.cacheable:
            return False
        if self.response is not None:
            return True
        op = self.operation
        if op is None or op.wrapped or op.raw:  # built around the body / raw bytes: not JSON
            return False
        returns = op.event_type if self.stream else op.returns
        return returns is not None and returns is not type(None) and _is_model(returns)

    def rebuild(self, text: str) -> Any:
        """One cached JSON body (a stream: one event) as the SDK's object."""
        if self.response is not None:
            return SDK.model(self.response).model_validate_json(text)
        return _adapter(self).validate_json(text)


def _is_model(annotation: Any) -> bool:
    """A pydantic model, or a union / list of them: what a JSON body rebuilds into."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    args = typing.get_args(annotation)
    return bool(args) and all(_is_model(a) or a is type(None) for a in args)


_adapters: dict[str, Any] = {}
_adapters_lock = Lock()


def _adapter(ep: Endpoint) -> Any:
    """A pydantic ``TypeAdapter`` of the operation's return type (made once per process)."""
    name = ep.name + ("#stream" if ep.stream else "")
    found = _adapters.get(name)
    if found is None:
        from pydantic import TypeAdapter

        op = ep.operation
        assert op is not None
        with _adapters_lock:
            found = _adapters[name] = TypeAdapter(op.event_type if ep.stream else op.returns)
    return found


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "chat",
        "complete",
        "ChatCompletionResponse",
        "chat_model",
        doc="``Mistral.chat.complete`` with cache, retries and limits (default ``model``).",
    ),
    Endpoint(
        "chat",
        "stream",
        "CompletionEvent",
        "chat_model",
        stream=True,
        doc="``Mistral.chat.stream``: yields the SDK's ``CompletionEvent``s.",
    ),
    Endpoint(
        "fim",
        "complete",
        "FIMCompletionResponse",
        "fim_model",
        doc="``Mistral.fim.complete``; ``model`` defaults to ``fim_model``.",
    ),
    Endpoint(
        "fim",
        "stream",
        "CompletionEvent",
        "fim_model",
        stream=True,
        doc="``Mistral.fim.stream``.",
    ),
    Endpoint(
        "embeddings",
        "create",
        "EmbeddingResponse",
        "embedding_model",
        doc="``Mistral.embeddings.create``; ``model`` defaults to ``embedding_model``.",
    ),
    Endpoint(
        "models",
        "list",
        "ModelList",
        None,
        doc="``Mistral.models.list`` (cached like any other call).",
        policy=CACHED_READ,
    ),
)
_KNOWN = {ep.name: ep for ep in ENDPOINTS}


def endpoint_for(op: Operation, *, stream: bool | None = None) -> Endpoint:
    """The endpoint of a discovered operation: its row of :data:`ENDPOINTS` when it has
    one, else its policy from the HTTP method and path and its discovered return type.
    ``stream``: for a mixed operation (``stream=True`` makes it a stream), which form."""
    known = _KNOWN.get(op.qualname)
    policy = policy_for(op.http_method, op.http_path)
    if known is not None:
        return Endpoint(
            known.group,
            known.method,
            known.response,
            known.default_model,
            stream=known.stream,
            doc=(op.function().__doc__ or known.doc),
            policy=known.policy,
            operation=op,
        )
    return Endpoint(
        ".".join(op.namespace),
        op.name,
        None,
        None,
        stream=op.stream if stream is None else stream,
        doc=op.function().__doc__ or "",
        policy=policy,
        operation=op,
    )


@dataclass(slots=True)  # one per call: no instance dict to allocate
class Prepared:
    """One call after *prepare*: its arguments, where to store it, what a hit found."""

    endpoint: Endpoint
    kwargs: dict[str, Any]
    key: str | None = None  # the cache key to store the answer under (None: don't store)
    hit: Any = None  # a cache hit, rebuilt: the SDK's response, or a stream's list of events
    cached: bool = False  # whether the cache answered (hit is then set)
    estimate: int = 0
    admitted: int = 0  # attempts the rate budget admitted (each counted at ``estimate``)
    slots: list[int] = field(default_factory=list)  # the window's slot of each admission
    seen: list[Any] = field(default_factory=list)  # HTTP responses of the current attempt
    seconds: float = 0.0  # the deadline of one attempt (and a stream's idle limit)
    ends: float | None = None  # a stream's total deadline (time.monotonic()), if any
    retry: RetryMode = "always"  # what is retried (the policy's, or the call's retry=)
    worst: float = 0.0  # USD this call can cost at most (computed when caps or asking apply)
    reserved: float = 0.0  # USD reserved from the spending caps (given back on failure)
    cost: float | None = None  # USD the answer cost (None: no price), set by the accounting


def _simple_messages(messages: Any) -> bool:
    """Plain user/system dicts with text content are already in canonical form."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        if (
            type(message) is not dict
            or len(message) != 2
            or message.get("role") not in ("user", "system")
            or type(message.get("content")) is not str
        ):
            return False
    return True


#: Re-readable, but not lists: made lists so the key and the body see one form.
_SEQUENCES: tuple[type, ...] = (tuple, range, type({}.keys()), type({}.values()), type({}.items()))


def _once(value: Any, depth: int = 0) -> Any:
    """``value`` with every one-shot iterable in it (a generator, ``iter()``, ``map``) and
    every tuple, range or dict view made a list, so it can be read twice (for the cache
    key, then by the SDK); a file and anything else is left as it is. A list or dict with
    nothing to change is returned as it is (no copy: this runs on every call)."""
    if depth > 50 or isinstance(value, str | bytes | bytearray):
        return value
    kind = type(value)
    if kind is list:
        for index, item in enumerate(value):
            fixed = _once(item, depth + 1)
            if fixed is not item:  # the first change: copy from here on
                return [*value[:index], fixed, *(_once(i, depth + 1) for i in value[index + 1 :])]
        return value
    if kind is dict:
        for name, item in value.items():
            fixed = _once(item, depth + 1)
            if fixed is not item:
                return {k: (fixed if k == name else _once(v, depth + 1)) for k, v in value.items()}
        return value
    if isinstance(value, _SEQUENCES) and not hasattr(value, "_fields"):  # not a namedtuple
        sequence = cast(Iterable[Any], value)
        return [_once(item, depth + 1) for item in sequence]
    if isinstance(value, Iterator) and not hasattr(value, "read"):  # never a file
        return [_once(item, depth + 1) for item in value]
    return value


def read_once(params: dict[str, Any]) -> None:
    """Make every parameter readable twice, in place (:func:`_once`): the cache key is
    built from the very list the SDK sends."""
    for name, value in params.items():
        if type(value) not in (str, int, float, bool) and value is not None:
            fixed = _once(value)
            if fixed is not value:
                params[name] = fixed


def canonical(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that change the answer, dicts and SDK objects in one normal form."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in TRANSPORT_PARAMS:
            continue
        if name in _NORMALISED and not (name == "messages" and _simple_messages(value)):
            adapter = SDK.adapter(name)
            try:
                if name in ("messages", "tools"):
                    value = list(value)
                value = adapter.dump_python(
                    adapter.validate_python(value), mode="json", by_alias=True, exclude_none=True
                )
            except Exception:  # invalid input: the SDK call will report it
                pass
        out[name] = value
    return out


def estimate_tokens(params: Mapping[str, Any]) -> int:
    """Rough token count of a request: characters / 4 of its text plus ``max_tokens``."""
    max_tokens = params.get("max_tokens")
    return estimate_prompt(params) + (max_tokens if isinstance(max_tokens, int) else 0)


def estimate_prompt(params: Mapping[str, Any]) -> int:
    """Rough token count of a request's text: its characters / 4."""
    chars = 0
    for name in ("messages", "prompt", "suffix", "inputs", "input"):
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    chars += len(item)
                else:
                    content = (  # type() first: an ABC isinstance check is slow
                        item.get("content")
                        if type(item) is dict or isinstance(item, Mapping)
                        else getattr(item, "content", None)
                    )
                    chars += len(content) if isinstance(content, str) else len(str(content or ""))
    return chars // 4


def usage_of(result: Any) -> tuple[int, int, int]:
    """``(prompt, completion, total)`` tokens of a response (zeros when it has no usage)."""
    usage = getattr(result, "usage", None)
    if usage is None:
        return 0, 0, 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    completion = getattr(usage, "completion_tokens", None) or 0
    total = getattr(usage, "total_tokens", None) or (prompt + completion)
    return int(prompt), int(completion), int(total)
