"""A loopback HTTP server speaking the Mistral API, for tests and local experiments.

The real SDK (and :func:`mistral_nbenv.get_client`) talks to it over real HTTP::

    from mistral_nbenv.testing import Fault, MistralTestServer

    with MistralTestServer() as server:             # 127.0.0.1, a free port
        client = Mistral(api_key="test-key", server_url=server.url)
        client.chat.complete(model="m", messages=[{"role": "user", "content": "hi"}])
        # -> content "Echo: hi"; usage filled in (about 4 characters per token)

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE when ``"stream": true``: a role
event, one event per word, the last with ``finish_reason`` and ``usage``, then
``data: [DONE]``), ``POST /v1/fim/completions`` (same, answer ``"Echo: <prompt>"``),
``POST /v1/embeddings`` (deterministic unit vectors from :func:`fake_embedding`, one per
input), ``GET /v1/models`` and ``GET /v1/models/{id}``.

Scripted faults, each consumed by one request (first queued, first served; ``path=``
restricts a fault to one endpoint)::

    server.enqueue(Fault.rate_limit(retry_after=1))        # 429 + Retry-After: 1
    server.enqueue(Fault.rate_limit(2, http_date=True))    # Retry-After as an HTTP-date
    server.enqueue(Fault.status(503), path="/v1/embeddings")  # 4xx/5xx, real-API bodies
    server.enqueue(Fault.slow(2.0, chunk_delay=0.1))       # wait, then answer normally
    server.enqueue(Fault.drop())                           # close the socket, no response
    server.enqueue(Fault.drop_mid_stream(after_chunks=2))  # partial stream, then close
    server.enqueue(Fault.malformed())                      # 200 with a body the SDK rejects
    server.fail_next(3, Fault.status(500))

Settings (constructor keywords, also plain attributes): ``latency`` (seconds added to every
request), ``chunk_delay`` (seconds between stream events), ``expected_api_key`` (anything
else gets 401), ``responder`` (``(RecordedRequest) -> str | dict | None`` scripting chat/FIM
answers: a string is the answer text, a dict the whole JSON body, None the default echo),
``models``, ``embedding_dimensions``.

Observation: ``requests`` (:class:`RecordedRequest`: method, path, lower-cased headers incl.
``authorization``, parsed JSON ``body``, ``timestamp``; ``api_key`` property),
``last_request``, ``count(path)``, ``wait_for_requests(n)``, ``in_flight``,
``max_in_flight``, ``clear()``, ``pending_faults``, ``clear_faults()``.

pytest: the ``mistral_server`` fixture (fresh per test) and ``mistral_server_session``
come from this package's plugin. Command line: ``python -m mistral_nbenv.testing --port N``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mistral_nbenv.testing.server import (
        DEFAULT_CATALOG,
        DEFAULT_MODELS,
        Fault,
        MistralTestServer,
        ModelSpec,
        RecordedRequest,
        Responder,
        echo_answer,
        estimate_tokens,
        fake_embedding,
    )

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_MODELS",
    "Fault",
    "MistralTestServer",
    "ModelSpec",
    "RecordedRequest",
    "Responder",
    "echo_answer",
    "estimate_tokens",
    "fake_embedding",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that the pytest plugin (imported by every pytest run) stays cheap.
    if name in __all__:
        from mistral_nbenv.testing import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
