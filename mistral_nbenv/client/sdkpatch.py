"""Remove the mistralai SDK's per-call CPU costs that async throughput is bound by
(optional, self-checking).

The SDK (mistralai 3.x, Speakeasy-generated) rebuilds, on every call, things that never
change. :func:`install` keeps four of them, each measured to matter (benchmarks/README.md):

* ``utils/serializers.py`` calls pydantic ``create_model`` on every marshal and unmarshal
  (about 8 per chat call): memoised by (model name, field type);
* ``utils/queryparams.py``, ``url.py`` and ``forms.py`` call ``typing.get_type_hints`` on the
  request class on every call: memoised by class;
* ``serializers._coerce_iterables_for_type`` walks the request's type tree to turn tuples
  and generators into lists: skipped when the data is already plain JSON (dicts, lists,
  strings, numbers), where it would return an equal copy;
* the async path runs every hook in a worker thread (``asyncio.to_thread``) twice per call:
  for SDK instances marked with :func:`inline_hooks` (ours: hooks are in-memory header
  edits, the key is always passed explicitly) they run inline.

The same functions are called with the same arguments; only their results are reused.

**Confined to the wrapper's own calls.** The patches are module-wide (that is where the SDK
looks the functions up), but each serves from its memo only while the context variable
:data:`SCOPE` is set, which the pipeline does around its own SDK calls and stream reads.
Everywhere else, a plain ``Mistral(...)`` that a user builds in the same process included,
the original SDK function runs unchanged.

**Self-checking, any SDK version.** :func:`check` verifies the internals this relies on;
where they differ (another SDK release), :func:`install` changes nothing, logs one debug
line, returns False, and the plain SDK path is used. The ``fast_sdk`` setting turns it off.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import typing
from collections.abc import Callable
from typing import Any

from mistral_nbenv._forksafe import Lock

__all__ = ["SCOPE", "check", "inline_hooks", "install", "installed", "uninstall"]

log = logging.getLogger(__name__)

_SERIALIZERS = "mistralai.client.utils.serializers"
_BASESDK = "mistralai.client.basesdk"
_TYPE_HINT_MODULES = (
    "mistralai.client.utils.queryparams",
    "mistralai.client.utils.url",
    "mistralai.client.utils.forms",
)
_INLINE_MARK = "_mistral_nbenv_inline_hooks"

_lock = Lock()
_saved: list[tuple[object, str, object]] = []
_installed = False
_refused: list[str] | None = None  # the problems found by the last failed check

#: Set (True) while the wrapper runs its own SDK call; the patches act only then.
SCOPE: contextvars.ContextVar[bool] = contextvars.ContextVar("mistral_nbenv_fastsdk", default=False)


def check() -> list[str]:
    """Problems with the SDK internals this module patches (empty list: all as expected)."""
    problems: list[str] = []
    try:
        ser = importlib.import_module(_SERIALIZERS)
    except ImportError as exc:
        return [f"cannot import {_SERIALIZERS}: {exc}"]
    for name in ("create_model", "unmarshal", "marshal_json", "_coerce_iterables_for_type"):
        if not hasattr(ser, name):
            problems.append(f"{_SERIALIZERS}.{name} is missing")
    for fname in ("unmarshal", "marshal_json"):
        fn = getattr(ser, fname, None)
        code = getattr(fn, "__code__", None)
        if code is None or "create_model" not in code.co_names:
            problems.append(f"{_SERIALIZERS}.{fname} no longer calls create_model")
    for modname in _TYPE_HINT_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:
            problems.append(f"cannot import {modname}: {exc}")
            continue
        hints = getattr(mod, "get_type_hints", None)
        if hints is not typing.get_type_hints and not getattr(hints, "_mistral_nbenv", False):
            problems.append(f"{modname}.get_type_hints is not typing.get_type_hints")
    try:
        basesdk = importlib.import_module(_BASESDK)
    except ImportError as exc:
        problems.append(f"cannot import {_BASESDK}: {exc}")
    else:
        if not callable(getattr(basesdk, "run_sync_in_thread", None)):
            problems.append(f"{_BASESDK}.run_sync_in_thread is missing")
        code = getattr(getattr(basesdk.BaseSDK, "do_request_async", None), "__code__", None)
        if code is None or "run_sync_in_thread" not in code.co_names:
            problems.append(f"{_BASESDK}.BaseSDK.do_request_async no longer runs hooks in a thread")
    return problems


def installed() -> bool:
    """Whether the speed-ups are active in this process."""
    return _installed


def install() -> bool:
    """Apply the speed-ups once per process; False (and nothing changed) if the SDK differs."""
    global _installed, _refused
    with _lock:
        if _installed:
            return True
        if _refused is not None:
            return False  # checked once already: the SDK does not change within a process
        problems = check()
        if problems:
            _refused = problems
            log.debug(
                "mistral_nbenv: SDK fast path off for this SDK version, using the plain path: %s",
                "; ".join(problems),
            )
            return False
        _patch_create_model()
        _patch_type_hints()
        _patch_coerce_iterables()
        _patch_run_sync_in_thread()
        _installed = True
        return True


def uninstall() -> None:
    """Restore every patched SDK attribute (for benchmarks comparing with the raw SDK)."""
    global _installed, _refused
    with _lock:
        _refused = None
        while _saved:
            owner, name, value = _saved.pop()
            if value is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)
        _installed = False


def inline_hooks(sdk: Any) -> None:
    """Run this SDK instance's hooks inline on the event loop instead of in a thread."""
    hooks = getattr(sdk, "sdk_configuration", None)
    hooks = getattr(hooks, "__dict__", {}).get("_hooks")
    if hooks is not None:
        setattr(hooks, _INLINE_MARK, True)


_MISSING = object()


def _set(owner: object, name: str, value: object) -> None:
    _saved.append((owner, name, getattr(owner, name, _MISSING)))
    setattr(owner, name, value)


def _patch_create_model() -> None:
    ser = importlib.import_module(_SERIALIZERS)
    original: Callable[..., Any] = ser.create_model
    cache: dict[tuple[str, Any], Any] = {}
    known_config: dict[str, Any] = {"populate_by_name": True, "arbitrary_types_allowed": True}

    def create_model(__model_name: str, **kwargs: Any) -> Any:
        if not SCOPE.get():
            return original(__model_name, **kwargs)
        body = kwargs.get("body")
        config = kwargs.get("__config__")
        if (
            len(kwargs) == 2
            and isinstance(body, tuple)
            and len(body) == 2
            and config == known_config
        ):
            try:
                key = (__model_name, body[0])
                return cache[key]
            except KeyError:
                model = cache[key] = original(__model_name, **kwargs)
                return model
            except TypeError:  # unhashable type expression
                pass
        return original(__model_name, **kwargs)

    create_model._mistral_nbenv = True  # type: ignore[attr-defined]
    _set(ser, "create_model", create_model)


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _plain_json(data: Any, depth: int = 0) -> bool:
    """Only dicts with str keys, lists and JSON scalars (so coercion would change nothing)."""
    kind = type(data)
    if kind in _PLAIN_SCALARS:
        return True
    if depth > 32:
        return False
    if kind is list:
        return all(_plain_json(item, depth + 1) for item in data)
    if kind is dict:
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in data.items())
    return False


def _patch_coerce_iterables() -> None:
    ser = importlib.import_module(_SERIALIZERS)
    original: Callable[..., Any] = ser._coerce_iterables_for_type

    def _coerce_iterables_for_type(data: Any, typ: Any) -> Any:
        if SCOPE.get() and _plain_json(data):
            return data
        return original(data, typ)

    _set(ser, "_coerce_iterables_for_type", _coerce_iterables_for_type)


def _patch_type_hints() -> None:
    cache: dict[Any, Any] = {}

    def get_type_hints(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(obj, type) or not SCOPE.get():
            return typing.get_type_hints(obj, *args, **kwargs)
        try:
            return cache[obj]
        except KeyError:
            hints = cache[obj] = typing.get_type_hints(obj)
            return hints

    get_type_hints._mistral_nbenv = True  # type: ignore[attr-defined]
    for modname in _TYPE_HINT_MODULES:
        _set(importlib.import_module(modname), "get_type_hints", get_type_hints)


def _patch_run_sync_in_thread() -> None:
    basesdk = importlib.import_module(_BASESDK)
    original = basesdk.run_sync_in_thread

    async def run_sync_in_thread(func: Callable[..., Any], *args: Any) -> Any:
        owner = getattr(func, "__self__", None)
        if owner is not None and getattr(owner, _INLINE_MARK, False):
            return func(*args)
        return await original(func, *args)

    _set(basesdk, "run_sync_in_thread", run_sync_in_thread)
