"""The loopback server's routes beyond chat, FIM, embeddings and models.

Hand-scripted, where tests need behaviour and state (chat with tools and structured
outputs is :mod:`.chatscript`):

* moderation (``/v1/moderations``, ``/v1/chat/moderations``): a category is flagged when a
  word of :data:`MODERATION_WORDS` is in the text;
* OCR (``/v1/ocr``): one markdown page per document (``pages=[...]`` picks pages);
* files: upload (multipart) / list / retrieve / download / delete, kept in memory;
* batch jobs: create, then each ``get`` moves it on (QUEUED -> RUNNING -> SUCCESS); cancel;
* agents completions (a chat answer), conversations (start / append / restart, and their
  streams), audio transcriptions (multipart).

Every other operation of the installed SDK is answered by :mod:`.generated`: a
schema-valid body made from the SDK's own response model.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from mistral_nbenv.testing.reply import Reply

# A route reads a recorded request (server.RecordedRequest) and answers with a Reply; the
# server is given as Any so that this module never imports it (it imports this one).
RecordedRequest = Any
MistralTestServer = Any
_Reply = Reply

__all__ = ["MODERATION_WORDS", "Routes"]

#: Moderation category -> words that flag it.
MODERATION_WORDS: dict[str, tuple[str, ...]] = {
    "sexual": ("explicit",),
    "hate_and_discrimination": ("hate",),
    "violence_and_threats": ("kill", "attack", "hurt"),
    "dangerous_and_criminal_content": ("bomb", "weapon", "steal"),
    "selfharm": ("selfharm",),
    "health": ("diagnose", "medicine"),
    "financial": ("invest", "stocks"),
    "law": ("lawsuit", "legal"),
    "pii": ("passport", "ssn"),
}
_WORD = re.compile(r"[A-Za-z0-9_]+")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return _text(value.get("content") or value.get("text") or "")
    return ""


def _event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
    """One SSE event: its ``event:`` name and its ``data`` (which repeats it as ``type``)."""
    return kind, {"type": kind, **data}


# -- multipart -----------------------------------------------------------------------------


def _multipart(record: RecordedRequest) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body."""
    content_type = record.header("content-type", "") or ""
    if "multipart/form-data" not in content_type:
        return {}
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + record.raw_body)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            parts[str(name)] = (part.get_filename(), data)
    return parts


def _field(parts: Mapping[str, tuple[str | None, bytes]], name: str, default: str) -> str:
    found = parts.get(name)
    return found[1].decode(errors="replace") if found else default


# -- the routes ----------------------------------------------------------------------------


class Routes:
    """The hand-scripted routes of one server, and their in-memory state."""

    def __init__(self, app: MistralTestServer) -> None:
        self.app = app
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self._table: list[tuple[str, re.Pattern[str], Callable[..., _Reply]]] = [
            ("POST", re.compile(r"/v1/(chat/)?moderations"), self.moderate),
            ("POST", re.compile(r"/v1/ocr"), self.ocr),
            ("POST", re.compile(r"/v1/agents/completions"), self.agents),
            ("POST", re.compile(r"/v1/files"), self.upload),
            ("GET", re.compile(r"/v1/files"), self.list_files),
            ("GET", re.compile(r"/v1/files/(?P<id>[^/]+)"), self.retrieve_file),
            ("GET", re.compile(r"/v1/files/(?P<id>[^/]+)/content"), self.download),
            ("DELETE", re.compile(r"/v1/files/(?P<id>[^/]+)"), self.delete_file),
            ("POST", re.compile(r"/v1/batch/jobs"), self.create_job),
            ("GET", re.compile(r"/v1/batch/jobs"), self.list_jobs),
            ("GET", re.compile(r"/v1/batch/jobs/(?P<id>[^/]+)"), self.get_job),
            ("POST", re.compile(r"/v1/batch/jobs/(?P<id>[^/]+)/cancel"), self.cancel_job),
            ("POST", re.compile(r"/v1/conversations"), self.converse),
            ("POST", re.compile(r"/v1/conversations/(?P<id>[^/]+)"), self.converse),
            ("POST", re.compile(r"/v1/conversations/(?P<id>[^/]+)/restart"), self.converse),
            ("POST", re.compile(r"/v1/audio/transcriptions"), self.transcribe),
        ]

    def route(self, record: RecordedRequest) -> _Reply | None:
        """The reply of a hand-scripted route, or None when none matches."""
        path = record.path.rstrip("/")
        for method, pattern, handler in self._table:
            found = pattern.fullmatch(path)
            if found is not None and method == record.method:
                return handler(record, **found.groupdict())
        return None

    @staticmethod
    def _reply(body: Any = None, status: int = 200, events: list[Any] | None = None) -> _Reply:
        return Reply(status, body, events=events)

    def _not_found(self, what: str, ident: str) -> _Reply:
        return self._reply({"detail": f"{what} {ident!r} not found"}, 404)

    # moderation, OCR, agents

    def moderate(self, record: RecordedRequest) -> _Reply:
        body = record.body or {}
        inputs = body.get("inputs", body.get("input", []))
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        if (
            record.path.rstrip("/").endswith("/chat/moderations")
            and items
            and not isinstance(items[0], list)
        ):
            items = [items]  # one conversation
        results = []
        for item in items:
            words = {w.lower() for w in _WORD.findall(_text(item))}
            flags = {cat: bool(words & set(ws)) for cat, ws in MODERATION_WORDS.items()}
            scores = {cat: (0.97 if hit else 0.01) for cat, hit in flags.items()}
            results.append({"categories": flags, "category_scores": scores})
        model = str(body.get("model", "mistral-moderation-latest"))
        return self._reply({"id": uuid.uuid4().hex, "model": model, "results": results})

    def ocr(self, record: RecordedRequest) -> _Reply:
        body = record.body or {}
        document = body.get("document") or {}
        source = (
            document.get("document_url")
            or document.get("image_url")
            or document.get("file_id")
            or "document"
        )
        if isinstance(source, Mapping):
            source = source.get("url", "document")
        numbers = body.get("pages") or [0]
        pages = [
            {
                "index": n,
                "markdown": f"# Page {n + 1}\n\nText of {source}, page {n + 1}.",
                "images": [],
                "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
            }
            for n in numbers
        ]
        return self._reply(
            {
                "pages": pages,
                "model": str(body.get("model", "mistral-ocr-latest")),
                "usage_info": {"pages_processed": len(pages), "doc_size_bytes": 1024},
            }
        )

    def agents(self, record: RecordedRequest) -> _Reply:
        body = dict(record.body or {})
        body.setdefault("model", body.get("agent_id", "agent"))
        return self.app._answer(record, body)

    # files

    def upload(self, record: RecordedRequest) -> _Reply:
        parts = _multipart(record)
        if "file" not in parts:
            return self._reply({"detail": "a multipart 'file' part is required"}, 422)
        filename, data = parts["file"]
        ident = str(uuid.uuid4())
        info = {
            "id": ident,
            "object": "file",
            "size_bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename or "upload",
            "purpose": _field(parts, "purpose", "fine-tune"),
            "sample_type": "batch_request" if b'"custom_id"' in data else "instruct",
            "source": "upload",
            "num_lines": data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1),
            "mimetype": "application/jsonl",
        }
        with self._lock:
            self.files[ident] = info
            self.contents[ident] = data
        return self._reply(info)

    def list_files(self, record: RecordedRequest) -> _Reply:
        with self._lock:
            data = list(self.files.values())
        return self._reply({"data": data, "object": "list", "total": len(data)})

    def retrieve_file(self, record: RecordedRequest, id: str) -> _Reply:
        with self._lock:
            info = self.files.get(id)
        if info is None:
            return self._not_found("File", id)
        return self._reply({**info, "deleted": False})

    def download(self, record: RecordedRequest, id: str) -> _Reply:
        with self._lock:
            data = self.contents.get(id)
        if data is None:
            return self._not_found("File", id)
        return Reply(200, data, headers={"Content-Type": "application/octet-stream"})

    def delete_file(self, record: RecordedRequest, id: str) -> _Reply:
        with self._lock:
            found = self.files.pop(id, None)
            self.contents.pop(id, None)
        if found is None:
            return self._not_found("File", id)
        return self._reply({"id": id, "object": "file", "deleted": True})

    # batch jobs: each get moves a job on

    def create_job(self, record: RecordedRequest) -> _Reply:
        body = record.body or {}
        inputs = [str(f) for f in body.get("input_files") or []]
        with self._lock:
            missing = [f for f in inputs if f not in self.files]
            lines = sum(self.files[f]["num_lines"] or 0 for f in inputs if f in self.files)
        if missing:
            return self._not_found("File", missing[0])
        job = {
            "id": str(uuid.uuid4()),
            "object": "batch",
            "input_files": inputs,
            "endpoint": str(body.get("endpoint", "/v1/chat/completions")),
            "model": body.get("model"),
            "agent_id": body.get("agent_id"),
            "metadata": body.get("metadata"),
            "errors": [],
            "status": "QUEUED",
            "created_at": int(time.time()),
            "total_requests": lines,
            "completed_requests": 0,
            "succeeded_requests": 0,
            "failed_requests": 0,
        }
        with self._lock:
            self.jobs[str(job["id"])] = job
        return self._reply(job)

    def list_jobs(self, record: RecordedRequest) -> _Reply:
        with self._lock:
            data = list(self.jobs.values())
        return self._reply({"data": data, "object": "list", "total": len(data)})

    def get_job(self, record: RecordedRequest, id: str) -> _Reply:
        with self._lock:
            job = self.jobs.get(id)
            if job is None:
                return self._not_found("Batch job", id)
            if job["status"] == "QUEUED":
                job["status"] = "RUNNING"
            elif job["status"] == "RUNNING":
                total = job["total_requests"]
                output = str(uuid.uuid4())
                self.files[output] = {
                    **next(iter(self.files.values()), {}),
                    "id": output,
                    "filename": f"{id}.jsonl",
                    "purpose": "batch",
                    "sample_type": "batch_result",
                    "source": "mistral",
                }
                self.contents[output] = b""
                job.update(
                    status="SUCCESS",
                    completed_requests=total,
                    succeeded_requests=total,
                    output_file=output,
                )
            elif job["status"] == "CANCELLATION_REQUESTED":
                job["status"] = "CANCELLED"
            return self._reply(dict(job))

    def cancel_job(self, record: RecordedRequest, id: str) -> _Reply:
        with self._lock:
            job = self.jobs.get(id)
            if job is None:
                return self._not_found("Batch job", id)
            if job["status"] in ("QUEUED", "RUNNING"):
                job["status"] = "CANCELLATION_REQUESTED"
            return self._reply(dict(job))

    # conversations

    def converse(self, record: RecordedRequest, id: str | None = None) -> _Reply:
        body = record.body or {}
        with self._lock:
            if id is not None and id not in self.conversations:
                return self._not_found("Conversation", id)
            ident = id or f"conv_{uuid.uuid4().hex[:12]}"
            history = self.conversations.setdefault(ident, [])
            history.append({"role": "user", "content": _text(body.get("inputs"))})
            turns = len([h for h in history if h["role"] == "user"])
        answer = f"Echo: {_text(body.get('inputs'))}"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = {
            "object": "entry",
            "type": "message.output",
            "role": "assistant",
            "content": answer,
            "id": uuid.uuid4().hex,
            "created_at": now,
            "model": body.get("model") or "mistral-medium-latest",
        }
        tokens = max(1, len(answer) // 4)
        usage = {
            "prompt_tokens": turns,
            "completion_tokens": tokens,
            "total_tokens": turns + tokens,
        }
        if body.get("stream"):
            started = {"type": "conversation.response.started", "conversation_id": ident}
            events: list[Any] = [
                ("conversation.response.started", started),
                *(
                    (
                        "message.output.delta",
                        {
                            "type": "message.output.delta",
                            "output_index": 0,
                            "id": entry["id"],
                            "content_index": 0,
                            "content": piece,
                            "role": "assistant",
                            "model": entry["model"],
                        },
                    )
                    for piece in re.findall(r"\S+\s*", answer)
                ),
                (
                    "conversation.response.done",
                    {"type": "conversation.response.done", "usage": usage},
                ),
            ]
            return self._reply(events=events)
        return self._reply(
            {
                "object": "conversation.response",
                "conversation_id": ident,
                "outputs": [entry],
                "usage": usage,
            }
        )

    # audio

    def transcribe(self, record: RecordedRequest) -> _Reply:
        parts = _multipart(record)
        if "file" not in parts and "file_url" not in parts and "file_id" not in parts:
            return self._reply({"detail": "file, file_url or file_id is required"}, 422)
        name, data = parts.get("file", (None, b""))
        text = f"Transcript of {name or _field(parts, 'file_url', 'audio')} ({len(data)} bytes)."
        usage = {"prompt_tokens": 0, "completion_tokens": len(text) // 4, "total_tokens": 0}
        usage["total_tokens"] = usage["completion_tokens"]
        model = _field(parts, "model", "voxtral-mini-latest")
        language = _field(parts, "language", "en")
        if _field(parts, "stream", "false") == "true":
            done = {"type": "transcription.done", "model": model, "text": text, "usage": usage}
            events = [
                (
                    "transcription.language",
                    {"type": "transcription.language", "audio_language": language},
                ),
                ("transcription.text.delta", {"type": "transcription.text.delta", "text": text}),
                ("transcription.done", done),
            ]
            return self._reply(events=events)
        body = {"model": model, "text": text, "language": language, "segments": [], "usage": usage}
        return self._reply(body)
