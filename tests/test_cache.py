"""The response cache on its own: keys, JSON values, privacy, degradation, stats/clear."""

from __future__ import annotations

import hashlib
import json
import math
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_nbenv.client.request import canonical
from mistral_nbenv.policies.cache import (
    ResponseCache,
    _json_default,
    canonical_json,
    request_key,
)
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
    with pytest.raises(ValueError, match="Circular"):
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


_STRINGS = st.text(max_size=300)
_KEYED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_STRINGS, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _KEYED, max_size=5))
def test_a_key_is_one_sha256_of_one_canonical_json_text(params: dict[str, Any]) -> None:
    text = "ns\0chat.complete\0" + canonical_json(params)
    expected = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert request_key("ns", "chat.complete", params) == expected


def test_one_character_more_or_less_anywhere_in_a_long_prompt_is_another_key() -> None:
    long = "Summarise this report.\n" * 200

    def key(content: str) -> str:
        return request_key(
            "ns",
            "chat.complete",
            {"model": "m", "messages": [{"role": "user", "content": content}]},
        )

    first = key(long)
    assert key("".join(list(long))) == first  # equal text, another object: the same key
    for other in (long + " ", long[1:], long[:2000] + "X" + long[2001:]):
        assert key(other) != first
    assert request_key("ns", "e", {long: 1}) != request_key("ns", "e", {"k": long})


def test_a_lone_surrogate_gets_a_key_of_its_own() -> None:
    first = request_key("ns", "e", {"prompt": "a\ud800b"})
    assert first != request_key("ns", "e", {"prompt": "a\ud801b"})


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
    from mistral_nbenv.store.layout import cache_dir
    from mistral_nbenv.ui.reports import cache_stats, clear_cache

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
    from mistral_nbenv.store.layout import cache_root

    project("")
    assert "mistral-nbenv" in str(cache_root(workspace.get_settings("staging")))
