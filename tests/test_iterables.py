"""Arguments are read once (issue 41): a generator is keyed and sent as the same list.

The SDK accepts any iterable for its list parameters. Building the cache key must not use
up an iterator (the request would go out empty and its answer be cached under the real
request's key). Staging has the cache on; the loopback server records what was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import mistral_nbenv
from mistral_nbenv.testing import MistralTestServer

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the weather in Paris?"},
]

# (operation path, its other arguments, the list parameter, its value, the body field)
CASES: list[tuple[str, dict[str, Any], str, list[Any], str]] = [
    ("chat.complete", {}, "messages", MESSAGES, "messages"),
    ("chat.complete", {"messages": MESSAGES}, "tools", [TOOL], "tools"),
    ("chat.complete", {"messages": MESSAGES}, "stop", ["\n\n", "END"], "stop"),
    ("fim.complete", {"prompt": "def f():"}, "stop", ["\n\n", "END"], "stop"),
    ("embeddings.create", {}, "inputs", ["first text", "second text"], "input"),
    ("agents.complete", {"agent_id": "ag-1"}, "messages", MESSAGES, "messages"),
    ("agents.complete", {"agent_id": "ag-1", "messages": MESSAGES}, "tools", [TOOL], "tools"),
    ("agents.complete", {"agent_id": "ag-1", "messages": MESSAGES}, "stop", ["END"], "stop"),
]
ONE_SHOT: dict[str, Callable[[list[Any]], Any]] = {
    "generator": lambda items: (item for item in items),
    "iter": iter,
    "map": lambda items: map(lambda item: item, items),
    "tuple": tuple,
}


def _operation(client: Any, path: str) -> Any:
    target = client
    for part in path.split("."):
        target = getattr(target, part)
    return target


@pytest.mark.parametrize("kind", list(ONE_SHOT))
@pytest.mark.parametrize(
    ("path", "others", "param", "value", "field"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_a_one_shot_iterable_is_sent_whole_and_cached_under_what_was_sent(
    lproject: MistralTestServer,
    kind: str,
    path: str,
    others: dict[str, Any],
    param: str,
    value: list[Any],
    field: str,
) -> None:
    client = mistral_nbenv.get_client("staging")
    assert client.settings.cache.enabled
    call = _operation(client, path)
    first = call(**others, **{param: ONE_SHOT[kind](value)})
    sent = lproject.last_request.body
    assert sent[field] == value  # the whole list went out, not []
    requests = lproject.count()
    again = call(**others, **{param: list(value)})  # the same request written as a list
    assert lproject.count() == requests  # a hit: keyed under the request actually sent
    assert again.model_dump() == first.model_dump()
    other = value[:-1] if len(value) > 1 else value * 2
    call(**others, **{param: ONE_SHOT[kind](other)})  # a different request is not that hit
    assert lproject.count() == requests + 1
    assert lproject.last_request.body[field] == other


def test_a_nested_generator_is_read_once_too(lproject: MistralTestServer) -> None:
    client = mistral_nbenv.get_client("staging")
    content = ({"type": "text", "text": t} for t in ("Hello ", "there"))
    client.chat.complete(messages=[{"role": "user", "content": content}])
    assert lproject.last_request.body["messages"][0]["content"] == [
        {"type": "text", "text": "Hello "},
        {"type": "text", "text": "there"},
    ]


@pytest.mark.parametrize("first", ["complete", "stream"])
def test_a_streamed_and_a_plain_call_of_one_request_share_its_answer(
    lproject: MistralTestServer, first: str
) -> None:
    """%%mistral streams, a script calls chat.complete: the same request is one answer."""
    client = mistral_nbenv.get_client("staging")
    messages = [{"role": "user", "content": "one answer for both forms"}]

    def plain() -> str:
        return str(client.chat.complete(messages=messages).choices[0].message.content)

    def streamed() -> str:
        events = list(client.chat.stream(messages=messages))
        return "".join(e.data.choices[0].delta.content or "" for e in events)

    calls = (plain, streamed) if first == "complete" else (streamed, plain)
    answers = [call() for call in calls]
    assert answers == ["Echo: one answer for both forms"] * 2
    assert lproject.count() == 1  # the second form was a hit
    assert client.stats.hits == 1


def test_a_tool_call_answer_is_not_converted(lproject: MistralTestServer) -> None:
    client = mistral_nbenv.get_client("staging")
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.complete(messages=messages, tools=[TOOL])
    assert answer.choices[0].message.tool_calls  # the loopback server calls the tool
    list(client.chat.stream(messages=messages, tools=[TOOL]))
    assert lproject.count() == 2  # not replayed from a conversion that would lose the call
