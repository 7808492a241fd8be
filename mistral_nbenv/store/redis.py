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

#: The rate budget's one step (:meth:`~mistral_nbenv.policies.ratelimit.RateLimiter._step`
#: is its twin): a window of 1-second slots ``{"w": [[slot, requests, tokens], ...],
#: "until": t}`` as JSON text, the clock Redis's own. ARGV: requests/min and tokens/min (0:
#: none), this request's token estimate, admit (1) or only correct (0), token corrections
#: ``[[slot, tokens], ...]`` as JSON, the requests and tokens the API says remain (-1: not
#: known; they only fill the window), seconds to pause from now (0: none). The state expires
#: once nothing in it counts. Returns {wait seconds, slot admitted in or -1} as strings (a
#: Lua number would be truncated to an integer).
ADMIT = """
local key = KEYS[1]
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, admit = tonumber(ARGV[3]), ARGV[4] == '1'
local corrections = cjson.decode(ARGV[5])
local seen_r, seen_t, pause = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local WINDOW, SLOT = 60, 1
local MAX_WAIT = WINDOW + SLOT
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_slot = math.floor(now / SLOT)
local first = now_slot - WINDOW / SLOT
local function finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', key) end  -- an earlier form
local window, paused = {}, 0
local raw = redis.call('GET', key)
if raw then
  -- a state no admission could have written (tampered with): an empty window
  local ok, state = pcall(cjson.decode, raw)
  local good = ok and type(state) == 'table' and type(state.w) == 'table'
  if good then
    paused = tonumber(state['until']) or 0
    good = finite(paused) and paused >= 0 and paused <= now + MAX_WAIT
  end
  if good then
    for _, e in ipairs(state.w) do
      local s, r, k = tonumber(e[1]), tonumber(e[2]), tonumber(e[3])
      if not (finite(s) and finite(r) and finite(k)) or r < 0 or k < 0
         or r > 1e7 or k > 1e11 then
        good = false
        break
      end
      if s > now_slot + 1 then s = now_slot end  -- a clock stepped back: counted as now
      if s >= first then table.insert(window, {s, r, k}) end
    end
  end
  if not good then window, paused = {}, 0 end
end
table.sort(window, function(a, b) return a[1] < b[1] end)
for _, c in ipairs(corrections) do
  for _, e in ipairs(window) do
    if e[1] == c[1] then e[3] = math.max(0, e[3] + c[2]) end
  end
end
local used_r, used_t = 0, 0
for _, e in ipairs(window) do
  used_r = used_r + e[2]
  used_t = used_t + e[3]
end
local extra_r, extra_t = 0, 0
if rpm > 0 and seen_r >= 0 then extra_r = math.max(0, (rpm - used_r) - seen_r) end
if tpm > 0 and seen_t >= 0 then extra_t = math.max(0, (tpm - used_t) - seen_t) end
if pause > 0 then paused = math.max(paused, now + math.min(pause, WINDOW)) end
local function fits(r, k)
  return (rpm <= 0 or r + 1 <= rpm + 1e-9)
     and (tpm <= 0 or k + cost <= tpm * (1 + 1e-12) or k <= 0)
end
local wait, admitted = 0, -1
if admit then
  local r, k = used_r + extra_r, used_t + extra_t
  if not fits(r, k) then
    wait = MAX_WAIT
    for _, e in ipairs(window) do
      r = r - e[2]
      k = k - e[3]
      if fits(r, k) then
        wait = math.max(0, (e[1] + 1) * SLOT + WINDOW - now)
        break
      end
    end
  end
  if paused > now then wait = math.max(wait, paused - now) end
end
if extra_r > 0 or extra_t > 0 or (admit and wait <= 0) then
  local current = nil
  for _, e in ipairs(window) do
    if e[1] == now_slot then current = e end
  end
  if current == nil then
    current = {now_slot, 0, 0}
    table.insert(window, current)
  end
  current[2] = current[2] + extra_r
  current[3] = current[3] + extra_t
  if admit and wait <= 0 then
    current[2] = current[2] + 1
    current[3] = current[3] + cost
    admitted = now_slot
  end
end
local out = {}
for _, e in ipairs(window) do
  if e[2] > 0 or e[3] > 0 then table.insert(out, e) end
end
if #out == 0 and paused <= now then
  redis.call('DEL', key)
else
  -- kept while anything in it counts: the newest slot for a window, the pause until it ends
  local ttl = math.max(paused - now, 0) + WINDOW + 2 * SLOT
  redis.call('SET', key, cjson.encode({w = out, ['until'] = paused}),
             'PX', math.ceil(ttl * 1000))
end
return {string.format('%.17g', math.min(wait, MAX_WAIT)), string.format('%.17g', admitted)}
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
