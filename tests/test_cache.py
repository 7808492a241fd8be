"""The response cache on its own: keys, JSON values, privacy, degradation, stats/clear."""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_nbenv import cache as cache_module
from mistral_nbenv.cache import (
    DIGEST_FROM,
    ResponseCache,
    _json_default,
    _key_text,
    canonical_json,
    request_key,
)
from mistral_nbenv.client.request import canonical
from mistral_nbenv.store import local as store_local
from mistral_nbenv.store.local import DiskStore


def disk_cache(directory: Path, namespace: str = "n", ttl: float | None = 60) -> ResponseCache:
    return ResponseCache(DiskStore(directory), namespace=namespace, ttl_seconds=ttl)


@pytest.fixture
def rc(tmp_path: Path) -> ResponseCache:
    return disk_cache(tmp_path / "root" / "staging", namespace="staging\0")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"model": "m", "temperature": None}, {"model": "m"}),
        ({"b": 1, "a": {"y": 2, "x": 1}}, {"a": {"x": 1, "y": 2}, "b": 1}),
        (
            {"messages": [{"role": "user", "content": "é"}]},
            {"messages": [{"content": "é", "role": "user"}]},
        ),
    ],
)
def test_canonical_json_normalises(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert canonical_json(a) == canonical_json(b)
    assert request_key("ns", "chat.complete", a) == request_key("ns", "chat.complete", b)


@pytest.mark.parametrize(
    ("ns", "endpoint", "params"),
    [
        ("production\0", "chat.complete", {"model": "m"}),
        ("staging\0http://other", "chat.complete", {"model": "m"}),
        ("staging\0", "fim.complete", {"model": "m"}),
        ("staging\0", "chat.complete", {"model": "m2"}),
    ],
)
def test_key_changes_with_namespace_endpoint_and_params(
    ns: str, endpoint: str, params: dict[str, Any]
) -> None:
    assert request_key(ns, endpoint, params) != request_key(
        "staging\0", "chat.complete", {"model": "m"}
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities too: json writes them as NaN / Infinity
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=5))
def test_canonical_json_is_the_text_json_dumps_writes(params: dict[str, Any]) -> None:
    """The encoder made once must write what ``json.dumps`` with the same options writes."""
    expected = json.dumps(
        {k: v for k, v in params.items() if v is not None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    )
    assert canonical_json(params) == expected


def test_canonical_json_writes_sets_sorted_and_infinity_as_json_does() -> None:
    assert canonical_json({"y": math.inf, "x": {2, 1}, "z": None}) == '{"x":[1,2],"y":Infinity}'


def test_a_request_with_a_cycle_has_no_canonical_form() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(RecursionError):
        canonical_json({"messages": cycle})


def test_keys_stay_those_earlier_releases_stored(tmp_path: Path) -> None:
    """A new key form would orphan every stored entry (and split a shared Redis cache)."""
    params = {"model": "m", "messages": [{"role": "user", "content": "é"}], "temperature": None}
    ns = "staging\0http://127.0.0.1:1"
    expected = "8577e1cc7970f8926de987302e162a2e6cf35085286e33583195a2ae86b38928"
    assert request_key(ns, "chat.complete", params) == expected
    rc = disk_cache(tmp_path, namespace=ns)
    given = canonical(params)  # what the pipeline hands the cache: no None at the top
    assert rc.key("chat.complete", given) == rc.key("chat.complete", given) == expected
    assert rc.key("fim.complete", given) == request_key(ns, "fim.complete", params) != expected


_SHORT = st.text(max_size=DIGEST_FROM - 1)
_LONG = st.text(min_size=DIGEST_FROM, max_size=DIGEST_FROM + 40)
_KEYED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _SHORT | _LONG,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_SHORT | _LONG, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=5))
def test_a_request_of_short_strings_keeps_the_key_of_its_json(params: dict[str, Any]) -> None:
    """Below DIGEST_FROM the key is the SHA-256 of the canonical JSON, as before long strings
    were hashed apart: every entry an earlier release stored for such a request is found."""
    text = canonical_json(params)
    if any(len(s) >= DIGEST_FROM for s in re.findall(r'"(?:[^"\\]|\\.)*"', text)):
        return  # (the strategy's strings are short; this guards the premise)
    try:
        body = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: earlier releases made no key at all
        return
    expected = hashlib.sha256(b"ns\0chat.complete\0" + body).hexdigest()
    assert request_key("ns", "chat.complete", params) == expected


def test_a_long_string_is_hashed_apart_and_still_names_one_request() -> None:
    long = "Summarise this report.\n" * 20  # 480 characters
    digest = hashlib.sha256(long.encode()).hexdigest()
    text = _key_text({"messages": [{"role": "user", "content": long}], "model": "m"})
    assert text == f'{{"messages":[{{"content":#{digest},"role":"user"}}],"model":"m"}}'
    key = request_key(
        "ns", "chat.complete", {"model": "m", "messages": [{"role": "user", "content": long}]}
    )
    # a string that spells the digest is a JSON string, not the digest: another request
    spelled = {"model": "m", "messages": [{"role": "user", "content": f"#{digest}"}]}
    assert request_key("ns", "chat.complete", spelled) != key
    # one character more or less, at either end or in the middle: another key
    for other in (long + " ", long[1:], long[:200] + "X" + long[201:]):
        assert (
            request_key(
                "ns",
                "chat.complete",
                {"model": "m", "messages": [{"role": "user", "content": other}]},
            )
            != key
        )
    # a long dict key is hashed apart too, and differs from the same text as a value
    assert _key_text({long: 1}) == f"{{#{digest}:1}}"
    assert request_key("ns", "e", {long: 1}) != request_key("ns", "e", {"k": long})


def test_keys_of_long_strings_stay_those_this_release_stores() -> None:
    """Pinned, as for short strings: a change here orphans every stored long-prompt entry."""
    params = {"model": "m", "messages": [{"role": "user", "content": "é" * 300}]}
    expected = "7a6aa201b1a0b1eff677d72f59370a1a3df94a25f5ba76f7fa4b42cd79d8809c"
    assert request_key("staging\0http://127.0.0.1:1", "chat.complete", params) == expected


def test_a_lone_surrogate_gets_a_key_of_its_own() -> None:
    """Earlier releases could not encode one (no key, not cached); now it is hashed as it is."""
    first = request_key("ns", "e", {"prompt": "a\ud800b"})
    assert first != request_key("ns", "e", {"prompt": "a\ud801b"})
    assert request_key("ns", "e", {"prompt": "x\ud800" * DIGEST_FROM}) != request_key(
        "ns", "e", {"prompt": "x\ud801" * DIGEST_FROM}
    )


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_SHORT | _LONG, _KEYED, max_size=4))
def test_the_key_text_is_the_same_without_json_s_c_accelerator(params: dict[str, Any]) -> None:
    with_c = _key_text(params)
    with mock.patch.object(cache_module, "_c_key_text", None):
        assert _key_text(params) == with_c


def test_a_request_s_names_are_remembered_in_key_form_and_its_text_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    real = cache_module._key_string
    monkeypatch.setattr(
        cache_module, "_key_string", lambda value: made.append(value) or real(value)
    )
    cache_module._key_strings.clear()
    long = "Summarise this report.\n" * 20

    def text(question: str) -> str:
        messages = [{"role": "system", "content": long}, {"role": "user", "content": question}]
        return _key_text({"model": "m", "messages": messages})

    first = text("why?")
    assert set(made) == {
        "model",
        "m",
        "messages",
        "role",
        "system",
        "user",
        "content",
        long,
        "why?",
    }
    made.clear()
    assert text("why?") == first
    assert made == [long]  # names, roles and the short question came from the memo
    with mock.patch.object(cache_module, "_c_key_text", None):  # no memo: the same text
        assert text("why?") == first


def test_the_key_memo_keeps_short_strings_only_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache_module, "_REMEMBER_AT_MOST", 3)
    memo = cache_module._KeyStrings()
    long, middling = "x" * DIGEST_FROM, "y" * cache_module._REMEMBER_BELOW
    assert memo[long] == "#" + hashlib.sha256(long.encode()).hexdigest()
    assert memo[middling] == json.dumps(middling)
    assert memo == {}
    for word in ("a", "b", "c", "d", "\u00e9\n"):
        assert memo[word] == json.dumps(word, ensure_ascii=False)
    assert len(memo) <= 3
    assert memo["\u00e9\n"] == '"\u00e9\\n"'


_REAL_SHA256 = hashlib.sha256  # (the fixture below replaces hashlib.sha256 itself)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the cache module hashes, in order (with an empty memo)."""
    lengths: list[int] = []
    real = _REAL_SHA256
    monkeypatch.setattr(
        cache_module.hashlib, "sha256", lambda data: lengths.append(len(data)) or real(data)
    )
    monkeypatch.setattr(cache_module, "_recent", cache_module._RecentDigests())
    return lengths


def test_a_document_sent_again_is_hashed_once_and_keys_stay_exact(hashed: list[int]) -> None:
    real = _REAL_SHA256
    document = "Quarterly report: revenue, costs and outlook.\n" * 2000
    expected = "#" + real(document.encode()).hexdigest()
    assert cache_module._key_string(document) == expected
    assert cache_module._key_string(document) == expected
    assert hashed == [len(document)]  # the same object again: not hashed again
    copy = "".join(list(document))  # equal text, another object: hashed, the same key form
    assert copy is not document
    assert cache_module._key_string(copy) == expected
    assert len(hashed) == 2
    # an id freed and taken by another string never gets a remembered digest
    for i in range(200):
        other = f"{i}: " + "x" * cache_module.RECENT_FROM
        assert cache_module._key_string(other) == "#" + real(other.encode()).hexdigest()
        del other


def test_a_long_prompt_under_a_document_s_size_is_hashed_each_time_and_never_held(
    hashed: list[int],
) -> None:
    real, recent = _REAL_SHA256, cache_module._recent
    prompt = "Summarise this report. " * 40  # 920 characters: hashed apart, not a document
    assert DIGEST_FROM <= len(prompt) < cache_module.RECENT_FROM
    expected = "#" + real(prompt.encode()).hexdigest()
    assert cache_module._key_string(prompt) == cache_module._key_string(prompt) == expected
    assert hashed == [len(prompt)] * 2  # hashed each time...
    assert not recent  # ...and nothing held
    document = "x" * cache_module.RECENT_FROM  # from RECENT_FROM on: held, hashed once
    cache_module._key_string(document)
    cache_module._key_string(document)
    assert hashed[2:] == [len(document)]
    assert list(recent) == [id(document)]


def test_remembered_documents_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "RECENT_CHARS", 3 * 1000)
    monkeypatch.setattr(cache_module, "RECENT_FROM", 1000)
    recent = cache_module._RecentDigests()
    monkeypatch.setattr(cache_module, "_recent", recent)
    texts = [f"{i}" * 1000 for i in range(1, 5)]  # four strings of 1,000 characters
    for text in texts:
        cache_module._key_string(text)
    held = [value for value, _ in recent.values()]
    assert held == texts[1:]  # the oldest went first; 3,000 characters held
    assert recent._chars == 3000
    huge = "y" * 3001  # longer than the whole budget: hashed, never held
    cache_module._key_string(huge)
    assert [value for value, _ in recent.values()] == texts[1:]


def test_roundtrip_private_and_json(rc: ResponseCache) -> None:
    key = rc.key("chat.complete", {"model": "m"})
    assert rc.get(key) is None
    rc.set(key, '{"id": "x"}')
    assert rc.get(key) == '{"id": "x"}'
    directory = Path(rc.store.location)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_big_values_also_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_local, "DISK_MIN_FILE_SIZE", 16)
    rc = disk_cache(tmp_path / "big", ttl=None)
    rc.set("k", "x" * 10_000)
    assert rc.get("k") == "x" * 10_000
    files = [p for p in (tmp_path / "big").rglob("*.val")]
    assert files
    for path in (tmp_path / "big").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    store_local.close_all()


def test_non_text_values_are_ignored(rc: ResponseCache) -> None:
    assert isinstance(rc.store, DiskStore)
    rc.store.db().set("k", ["pickled", "list"])
    assert rc.get("k") is None  # never unpickled into a response


def test_stats_and_clear(rc: ResponseCache) -> None:
    for i in range(3):
        rc.set(f"k{i}", "{}")
    assert rc.stats()["entries"] == 3
    assert rc.clear() == 3
    assert rc.stats()["entries"] == 0


def test_unusable_directory_warns_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    rc = disk_cache(tmp_path / "file" / "staging", ttl=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            rc.set("k", "{}")
            assert rc.get("k") is None
        again = disk_cache(tmp_path / "file" / "staging", ttl=1)
        again.get("k")
    assert len(caught) == 1
    assert "unavailable" in str(caught[0].message)
    assert not rc.available


def test_cache_stats_and_clear_touch_one_environment(project: Any, tmp_path: Path) -> None:
    from mistral_nbenv import workspace
    from mistral_nbenv.cache import cache_dir
    from mistral_nbenv.stores import cache_stats, clear_cache

    root = tmp_path / "shared-cache"
    project(f'[default.cache]\ndirectory = "{root}"\n')
    for env in ("staging", "production"):
        s = workspace.get_settings(env)
        rc = disk_cache(cache_dir(s), namespace=env)
        rc.set("a", "{}")
        rc.set("b", "{}")
    stats = cache_stats("staging")
    assert stats["entries"] == 2
    assert stats["directory"] == str(root / "staging")
    assert stats["environment"] == "staging"
    assert clear_cache("staging") == 2
    assert cache_stats("staging")["entries"] == 0
    assert cache_stats("production")["entries"] == 2
    assert clear_cache("development") == 0  # never created: nothing to do
    store_local.close_all()


def test_default_root_is_user_cache_dir(project: Any) -> None:
    from mistral_nbenv import workspace
    from mistral_nbenv.cache import cache_root

    project("")
    assert "mistral-nbenv" in str(cache_root(workspace.get_settings("staging")))
