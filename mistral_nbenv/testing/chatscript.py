"""Chat answers with tools and structured outputs, as a model would give them.

* tools: a declared tool is called when the prompt asks for it (words of its name or
  description appear in the last user message, or ``tool_choice`` is ``any`` / ``required``
  / that function), with arguments valid for its JSON schema, taken from the prompt where
  they can be (a quoted value, a code such as ``T1001``, a number); after a ``tool`` message
  the answer is text again;
* ``response_format``: ``json_schema`` answers with JSON valid for the schema (so
  ``chat.parse`` works end to end), ``json_object`` with a JSON object.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["json_for_schema", "scripted_message"]

_WORD = re.compile(r"[A-Za-z0-9_]+")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return _text(value.get("content") or value.get("text") or "")
    return ""


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 3}


def _value_for(schema: Mapping[str, Any], name: str, prompt: str, defs: Mapping[str, Any]) -> Any:
    """A value valid for ``schema``, taken from the prompt where it can be."""
    if "$ref" in schema:
        return _value_for(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), name, prompt, defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _value_for(options[0], name, prompt, defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {
            key: _value_for(sub, key, prompt, defs)
            for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [_value_for(schema.get("items", {}), name, prompt, defs)]
    if kind in ("integer", "number"):
        found = re.search(r"-?\d+(?:\.\d+)?", prompt)
        number = float(found.group()) if found else 1
        return int(number) if kind == "integer" else number
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    quoted = re.search(r"[\"']([^\"']+)[\"']", prompt)
    coded = re.search(r"\b[A-Za-z]*\d[A-Za-z0-9-]*\b", prompt)
    return quoted.group(1) if quoted else coded.group() if coded else f"{name} example"


def json_for_schema(schema: Mapping[str, Any], prompt: str = "") -> Any:
    """An instance valid for a JSON schema (every property filled in, ``$defs`` followed)."""
    return _value_for(schema, "value", prompt, schema.get("$defs", {}))


def _tool_call(body: Mapping[str, Any], prompt: str) -> dict[str, Any] | None:
    tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, Mapping)]
    choice = body.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return None
    chosen = None
    if isinstance(choice, Mapping):  # {"type": "function", "function": {"name": ...}}
        wanted = (choice.get("function") or {}).get("name")
        chosen = next((t for t in tools if t.get("name") == wanted), None)
    else:
        asked = _words(prompt)
        scores = [
            len(asked & _words(f"{t.get('name', '').replace('_', ' ')} {t.get('description', '')}"))
            for t in tools
        ]
        best = max(range(len(tools)), key=lambda i: scores[i])
        if scores[best] > 0 or choice in ("any", "required"):
            chosen = tools[best]
    if chosen is None:
        return None
    parameters = chosen.get("parameters") or {}
    arguments = json_for_schema(parameters, prompt) if parameters else {}
    return {
        "id": uuid.uuid4().hex[:9],
        "type": "function",
        "function": {"name": chosen.get("name", ""), "arguments": json.dumps(arguments)},
    }


def scripted_message(body: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The assistant message for a chat body with tools or a JSON ``response_format``
    (with its finish reason), or None for the plain echo."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], Mapping) else {}
    prompt = _text(last.get("content")) if last.get("role") == "user" else ""
    if prompt:
        call = _tool_call(body, prompt)
        if call is not None:
            return {"role": "assistant", "content": "", "tool_calls": [call]}, "tool_calls"
    response_format = body.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        content = json.dumps(json_for_schema(schema, prompt or _text(messages)))
        return {"role": "assistant", "content": content}, "stop"
    if kind == "json_object":
        content = json.dumps({"answer": prompt or _text(messages)})
        return {"role": "assistant", "content": content}, "stop"
    if last.get("role") == "tool":
        content = f"The tool answered: {_text(last.get('content'))}"
        return {"role": "assistant", "content": content}, "stop"
    return None
