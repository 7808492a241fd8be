"""The policy table: how the pipeline treats an operation, from its HTTP method and kind.

* **inference** (POST to chat, FIM, embeddings, moderations, classifications, OCR, audio
  transcriptions and speech, agents completions, responses and their input-token count;
  ``chat.parse`` runs ``chat.complete``): rpm and tpm, cached, retried on every retryable
  error;
* **conversation** (POST to ``/v1/conversations...``: start, append, restart): rpm and tpm,
  retried only on what cannot have reached the server (a repeat would add to the stored
  conversation); ``start`` with ``store=False`` (the server keeps nothing) is cached and
  retried like inference;
* **read** (GET): rpm, no tpm, retried on every retryable error; cached for
  ``models.list`` / ``models.retrieve``, others only with ``cache=True``;
* **write** (every other POST, PUT, PATCH, DELETE: uploads, creates, updates, deletes,
  cancels): rpm, no tpm, never cached, retried only on what cannot have reached the server.

"Nothing that may have reached the server": a connect error (no byte was sent), or a 429 /
503 answer carrying ``Retry-After`` (the server said it did nothing and to come back).
Per call: ``retry=True`` retries as an inference call, ``retry=False`` never retries,
``retry="unsent"`` retries only what cannot have reached the server; ``cache=`` as always
(a write is never cached, whatever it says).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["INFERENCE_PATHS", "Policy", "RetryMode", "policy_for", "retry_mode"]

RetryMode = Literal["always", "unsent", "never"]

#: POST paths whose answer is a function of the request: admitted against tpm, cached.
INFERENCE_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/fim/completions",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/chat/moderations",
        "/v1/classifications",
        "/v1/chat/classifications",
        "/v1/ocr",
        "/v1/audio/transcriptions",
        "/v1/audio/speech",
        "/v1/agents/completions",
        "/v1/responses",
        "/v1/responses/input_tokens",
    }
)
#: GET reads cached by default (the model catalogue changes rarely).
CACHED_READS = frozenset({"/v1/models", "/v1/models/{model_id}"})


@dataclass(frozen=True)
class Policy:
    """How one operation goes through the pipeline."""

    kind: Literal["inference", "conversation", "read", "write"]
    tokens: bool  # charged against tokens_per_minute
    cache: bool  # cached by default (when the environment's cache is on)
    cacheable: bool  # may be cached at all (cache=True asks for it)
    retry: RetryMode

    def caches(self, params: Mapping[str, Any]) -> bool:
        """Cached by default for these parameters (a conversation only without ``store``)."""
        if self.kind == "conversation":
            return params.get("store") is False
        return self.cache

    def retries(self, params: Mapping[str, Any]) -> RetryMode:
        """The retry mode for these parameters (a conversation the server does not store
        retries like inference: a repeat leaves nothing behind)."""
        if self.kind == "conversation" and self.cacheable and params.get("store") is False:
            return "always"
        return self.retry


INFERENCE = Policy("inference", tokens=True, cache=True, cacheable=True, retry="always")
CONVERSATION = Policy("conversation", tokens=True, cache=False, cacheable=True, retry="unsent")
CONVERSATION_STATEFUL = Policy(
    "conversation", tokens=True, cache=False, cacheable=False, retry="unsent"
)
READ = Policy("read", tokens=False, cache=False, cacheable=True, retry="always")
CACHED_READ = Policy("read", tokens=False, cache=True, cacheable=True, retry="always")
WRITE = Policy("write", tokens=False, cache=False, cacheable=False, retry="unsent")


def policy_for(http_method: str | None, http_path: str | None) -> Policy:
    """The row of the table for one operation (an unknown one is a write: the safe side)."""
    method = (http_method or "").upper()
    path = http_path or ""
    if method == "POST" and path in INFERENCE_PATHS:
        return INFERENCE
    if method == "POST" and path == "/v1/conversations":
        return CONVERSATION
    if method == "POST" and path.startswith("/v1/conversations/"):
        return CONVERSATION_STATEFUL
    if method == "GET":
        return CACHED_READ if path in CACHED_READS else READ
    return WRITE


def retry_mode(policy: Policy, option: Any, params: Mapping[str, Any] | None = None) -> RetryMode:
    """The retry mode of one call: the per-call ``retry=`` option over the policy's."""
    if option is None:
        return policy.retries(params or {})
    if option is True:
        return "always"
    if option is False:
        return "never"
    if option in ("always", "unsent", "never"):
        return option
    raise ValueError(f"retry= must be True, False, 'always', 'unsent' or 'never', not {option!r}")
