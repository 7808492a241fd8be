"""The shared store: Redis (or Valkey) for many hosts, through redis-py.

One :class:`Connection` per URL and timeout in a process (a sync client, and an async one
per event loop from ``redis.asyncio``), and three views of it:

* :class:`RedisKeyValue`: the :class:`~mistral_nbenv.store.KeyValue` protocol under a key
  prefix (``mistral-nbenv:cache:<environment>:``), TTL kept by Redis (``SET ... PX``);
* :class:`RedisLedger`: the :class:`~mistral_nbenv.store.Ledger` protocol, one hash per
  bucket (``HINCRBYFLOAT``, one pipelined round trip per call);
* :class:`RedisScript`: the rate budget's admission (:data:`ADMIT`) and the spending caps
  (:data:`SPEND`), each one Lua script run atomically with Redis's own clock (``TIME``), so
  the hosts' clocks do not matter; one round trip (``EVALSHA``) per admission.

Commands are never retried by redis-py (``retries=0``): a script whose reply was lost is
not sent twice, so nothing is counted twice after a reconnect. Connect and read wait at most
``timeout`` seconds. Every failure raises (redis-py's errors); the caller decides what an
unavailable store means (:mod:`mistral_nbenv.store.shared`). The URL is never part of a message
here: :attr:`Connection.location` is it without its password.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.store import counter_value, warn_tampered

__all__ = [
    "ADMIT",
    "SPEND",
    "Connection",
    "RedisKeyValue",
    "RedisLedger",
    "RedisScript",
    "connect",
]

#: The admission: two token buckets (requests, tokens) in one hash, refilled from Redis's
#: clock, and a pause every admission waits out (a 429's ``Retry-After``). ARGV: request
#: rate/s, request cap, token rate/s, token cap, this request's token estimate, a token
#: correction (actual - estimated, from earlier calls), admit (1) or only correct (0), the
#: requests and tokens the API says remain (-1: not known; they only lower the buckets), and
#: seconds to pause from now (0: none). The state expires once both buckets would be full
#: again and the pause is over. Returns {wait seconds, Redis time} as strings (a Lua number
#: would be truncated to an integer).
ADMIT = """
local key = KEYS[1]
local req_rate, req_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_rate, tok_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, adjust, admit = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local seen_req, seen_tok, pause = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'req', 'tok', 'last', 'until')
local req, tok, last = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local paused = tonumber(s[4]) or 0
local function bad(x) return x == nil or x ~= x or x == math.huge or x == -math.huge end
-- a state no admission could have written (tampered with): a full budget, never a long wait
if bad(req) or bad(tok) or bad(last) or last < 0 or req > 1e6 or tok > 1e10
   or (req_rate > 0 and (1 - req) / req_rate > 60)
   or (tok_rate > 0 and -tok / tok_rate > 60) then
  req, tok, last = req_cap, tok_cap, now
end
if bad(paused) or paused - now > 60 then paused = 0 end
if last > now then last = now end
local elapsed = now - last
req = math.min(req_cap, req + elapsed * req_rate)
tok = math.max(-tok_rate * 60, math.min(tok_cap, tok + elapsed * tok_rate - adjust))
if req_rate > 0 and seen_req >= 0 then req = math.min(req, seen_req) end
if tok_rate > 0 and seen_tok >= 0 then tok = math.min(tok, seen_tok) end
if pause > 0 then paused = math.max(paused, now + math.min(pause, 60)) end
local wait = 0
if admit then
  if req_rate > 0 and req < 1 - 1e-6 then wait = (1 - req) / req_rate end
  if tok_rate > 0 then
    local need = math.min(cost, tok_cap)
    if tok < need - 1e-6 * math.max(1, need) then
      wait = math.max(wait, (need - tok) / tok_rate)
    end
  end
  if paused > now then wait = math.max(wait, paused - now) end
  if wait <= 0 then
    if req_rate > 0 then req = req - 1 end
    if tok_rate > 0 then tok = tok - cost end
  end
end
redis.call('HSET', key, 'req', string.format('%.17g', req),
           'tok', string.format('%.17g', tok), 'last', string.format('%.17g', now),
           'until', string.format('%.17g', paused))
-- kept until both buckets would be full again (then a missing state means the same)
local full = math.max(1, paused - now)
if req_rate > 0 then full = math.max(full, (req_cap - req) / req_rate) end
if tok_rate > 0 then full = math.max(full, (tok_cap - tok) / tok_rate) end
redis.call('PEXPIRE', key, math.ceil((full + 1) * 1000))
return {string.format('%.17g', wait), string.format('%.17g', now)}
"""

#: The spending caps of one environment: what the current UTC day and month have spent,
#: checked and added to in one step with Redis's clock. ARGV: the amount in USD (a
#: reservation, or a correction when negative), the daily and monthly caps (0: none), check
#: (1: refuse an amount that would cross a cap; 0: only add). Returns {'' or the cap that
#: refused ('daily' / 'monthly'), spent today, spent this month, Redis time} as strings.
SPEND = """
local key = KEYS[1]
local amount, daily, monthly = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local check = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local days = math.floor(now / 86400)
-- the civil month of a day count (H. Hinnant's days_from_civil, inverted)
local z = days + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                        - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local m = mp < 10 and mp + 3 or mp - 9
local y = yoe + era * 400 + (m <= 2 and 1 or 0)
local month = y * 100 + m
local s = redis.call('HMGET', key, 'day', 'day_usd', 'month', 'month_usd')
local function usd(x)
  x = tonumber(x)
  if x == nil or x ~= x or x < 0 or x > 1e12 then return 0 end
  return x
end
local d = (tonumber(s[1]) == days) and usd(s[2]) or 0
local mo = (tonumber(s[3]) == month) and usd(s[4]) or 0
local refused = ''
if check and amount > 0 then
  local slack = 1e-9
  if monthly > 0 and mo + amount > monthly + slack then refused = 'monthly'
  elseif daily > 0 and d + amount > daily + slack then refused = 'daily' end
end
if refused == '' then
  d = math.max(0, d + amount)
  mo = math.max(0, mo + amount)
  redis.call('HSET', key, 'day', days, 'day_usd', string.format('%.17g', d),
             'month', month, 'month_usd', string.format('%.17g', mo))
  redis.call('EXPIRE', key, 40 * 86400)
end
return {refused, string.format('%.17g', d), string.format('%.17g', mo),
        string.format('%.17g', now)}
"""

_SCAN_COUNT = 500
#: Usage buckets are kept this long (about 13 months).
LEDGER_TTL = 400 * 86_400


class Connection:
    """A Redis server at one URL: a sync client and one async client per event loop."""

    def __init__(self, url: str, *, timeout: float, location: str) -> None:
        self._url = url
        self.timeout = timeout
        self.location = location
        self._lock = Lock()
        self._sync: Any = None
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        self._pid = os.getpid()

    def _own(self) -> None:
        """In a forked child, forget the parent's clients (never closed here: their sockets
        are the parent's); caller holds ``_lock``."""
        if self._pid != os.getpid():
            self._sync, self._async, self._pid = None, {}, os.getpid()

    def __repr__(self) -> str:
        return f"Connection({self.location!r})"

    def _options(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "socket_connect_timeout": self.timeout,
            "socket_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
            "health_check_interval": 0,
        }

    def sync(self) -> Any:
        """The ``redis.Redis`` client (made on first use)."""
        client = self._sync
        if client is None or self._pid != os.getpid():
            import redis

            with self._lock:
                self._own()
                if self._sync is None:
                    self._sync = redis.Redis.from_url(self._url, **self._options())
                client = self._sync
        return client

    def async_(self) -> Any:
        """The ``redis.asyncio.Redis`` client of the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._own()
            found = self._async.get(id(loop))
            if found is not None and found[0] is loop:
                return found[1]
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self._url, **self._options())
            for key in [k for k, (lp, _) in self._async.items() if lp.is_closed()]:
                del self._async[key]
            self._async[id(loop)] = (loop, client)
            return client

    def close(self) -> None:
        """Drop the connections (they reopen on next use)."""
        with self._lock:
            client, self._sync = self._sync, None
            self._async.clear()
        if client is not None:
            client.close()


_connections: dict[tuple[str, float], Connection] = {}
_connections_lock = Lock()


def connect(url: str, *, timeout: float, location: str) -> Connection:
    """The process's :class:`Connection` to ``url`` (made once per URL and timeout; redis-py
    opens new sockets in a forked child by itself)."""
    with _connections_lock:
        found = _connections.get((url, timeout))
        if found is None:
            found = _connections[url, timeout] = Connection(url, timeout=timeout, location=location)
        return found


def close_all() -> None:
    """Close every connection this process opened (tests)."""
    with _connections_lock:
        connections = list(_connections.values())
        _connections.clear()
    for connection in connections:
        connection.close()


class RedisKeyValue:
    """JSON text under ``prefix + key``, TTL kept by Redis."""

    def __init__(self, connection: Connection, prefix: str) -> None:
        self.connection = connection
        self.prefix = prefix

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.connection.location

    def get(self, key: str) -> str | None:
        """One GET."""
        value = self.connection.sync().get(self.prefix + key)
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """One SET, with PX when ``ttl`` is given."""
        px = max(1, int(ttl * 1000)) if ttl else None
        self.connection.sync().set(self.prefix + key, value, px=px)

    def delete(self, key: str) -> None:
        """One DEL."""
        self.connection.sync().delete(self.prefix + key)

    def count(self) -> tuple[int, int]:
        """``(entries, bytes)``: SCAN, then STRLEN of each (pipelined)."""
        keys = _scan(self.connection, self.prefix)
        if not keys:
            return 0, 0
        pipe = self.connection.sync().pipeline(transaction=False)
        for key in keys:
            pipe.strlen(key)
        sizes = [int(n or 0) for n in pipe.execute()]
        live = [n for n in sizes if n > 0]
        return len(live), sum(live)

    def clear(self) -> int:
        """UNLINK every key under the prefix; return how many."""
        keys = _scan(self.connection, self.prefix)
        client = self.connection.sync()
        removed = 0
        for start in range(0, len(keys), _SCAN_COUNT):
            removed += int(client.unlink(*keys[start : start + _SCAN_COUNT]))
        return removed


#: Add a batch of counters once: the batch's marker and every increment in one script, so a
#: batch sent twice (its reply lost, the sender restarted) counts once. KEYS[1]: the marker;
#: ARGV: the marker's TTL, the buckets' TTL, the key prefix, then the batch as JSON
#: ``{bucket: {counter: amount}}``. Returns 1 when added, 0 when it already was.
MERGE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
for bucket, counters in pairs(cjson.decode(ARGV[4])) do
  local key = ARGV[3] .. bucket
  for name, amount in pairs(counters) do
    redis.call('HINCRBYFLOAT', key, name, string.format('%.17g', amount))
  end
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return 1
"""


class RedisLedger:
    """Usage counters: one hash per bucket under ``prefix``."""

    def __init__(self, connection: Connection, prefix: str) -> None:
        self.connection = connection
        self.prefix = prefix

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.connection.location

    def add(self, bucket: str, amounts: Mapping[str, float]) -> None:
        """HINCRBYFLOAT each counter and EXPIRE the bucket, in one round trip."""
        key = self.prefix + bucket
        pipe = self.connection.sync().pipeline(transaction=False)
        for name, amount in amounts.items():
            if amount:
                pipe.hincrbyfloat(key, name, float(amount))
        pipe.expire(key, LEDGER_TTL)
        pipe.execute()

    def merge(self, batch: str, buckets: Mapping[str, Mapping[str, float]]) -> bool:
        """Add a batch recorded elsewhere (while Redis was down), exactly once by its name."""
        import json

        marker = f"{self.prefix.rstrip(':')}-merged:{batch}"  # outside the counters' prefix
        added = self.connection.sync().eval(
            MERGE, 1, marker, LEDGER_TTL, LEDGER_TTL, self.prefix, json.dumps(buckets)
        )
        return bool(added)

    def totals(self) -> dict[str, dict[str, float]]:
        """Every bucket's counters (SCAN, then HGETALL pipelined)."""
        keys = _scan(self.connection, self.prefix)
        pipe = self.connection.sync().pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        out: dict[str, dict[str, float]] = {}
        for key, fields in zip(keys, pipe.execute() if keys else [], strict=True):
            counters = {}
            for name, value in (fields or {}).items():
                number = counter_value(value)
                if number is None:
                    warn_tampered(self.connection.location, "the usage ledger")
                    continue
                counters[name] = number
            if counters:
                out[key[len(self.prefix) :]] = counters
        return out


class RedisScript:
    """One Lua script run atomically on one key (hash-tagged: one cluster slot): the rate
    budget's :data:`ADMIT`, the spending caps' :data:`SPEND`."""

    def __init__(self, connection: Connection, key: str, source: str) -> None:
        self.connection = connection
        self.key = key
        self.source = source
        self._script: Any = None
        self._async_scripts: dict[int, Any] = {}

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.connection.location

    def run(self, args: Sequence[float | int | str]) -> list[str]:
        """Run the script (``EVALSHA``, loaded on first use); its reply."""
        script = self._script
        if script is None:
            script = self._script = self.connection.sync().register_script(self.source)
        return list(script(keys=[self.key], args=list(args)))

    async def run_async(self, args: Sequence[float | int | str]) -> list[str]:
        """:meth:`run` on the running loop's async client."""
        client = self.connection.async_()
        script = self._async_scripts.get(id(client))
        if script is None:
            script = self._async_scripts[id(client)] = client.register_script(self.source)
        return list(await script(keys=[self.key], args=list(args)))


def _scan(connection: Connection, prefix: str) -> list[str]:
    """Every key under ``prefix`` (SCAN, never KEYS: the server is not blocked)."""
    pattern = _glob(prefix) + "*"
    return list(connection.sync().scan_iter(match=pattern, count=_SCAN_COUNT))


def _glob(prefix: str) -> str:
    """``prefix`` with SCAN's pattern characters escaped."""
    out = []
    for char in prefix:
        out.append("\\" + char if char in "*?[]\\" else char)
    return "".join(out)
