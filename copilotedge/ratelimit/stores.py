"""Where the limiter keeps its buckets: Redis (exact across processes) or any Django cache.

:class:`RedisStore` runs :data:`GCRA_SCRIPT` with ``EVALSHA``, one round trip a check,
atomic because Redis runs a script alone. Sync callers use django-redis' raw client (what
``get_redis_connection`` returns); async callers, so the event loop never blocks, a
``redis.asyncio`` client built from the same cache settings, one per event loop.

:class:`CacheStore` runs the same algorithm in Python over ``get_many`` and ``set`` of
any other Django cache, under a lock: exact within one process only (Django's
``incr``/``aincr`` are not atomic either), which system check ``copilotedge.W010`` says.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from django.core.cache import BaseCache, caches
from django.core.cache.backends.locmem import LocMemCache

from copilotedge.conf import settings
from copilotedge.ratelimit.gcra import Bucket, Op, StoreUnavailable, apply_gcra

# KEYS: the buckets. ARGV[1]: now (epoch seconds); then per key: limit, period, cost, force.
# Returns per key: allowed (0/1), remaining, reset and retry-after in microseconds.
# Stored values are written with 17 significant digits: Lua's tostring keeps 14, which
# at epoch magnitudes would round away whole tokens of a fast bucket.
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local eps = 1e-6
local tats = redis.call('MGET', unpack(KEYS))
local steps = {}
local refused = false
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local limit, period = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cost, force = tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local interval = period / limit
  local tat = math.max(tonumber(tats[i]) or now, now)
  local new_tat = math.max(tat + cost * interval, now)
  local ok = force or cost <= 0 or new_tat - now <= period + eps
  if not ok then refused = true end
  steps[i] = {limit, period, interval, tat, new_tat, ok}
end
local out = {}
for i = 1, #KEYS do
  local limit, period, interval, tat, new_tat, ok = unpack(steps[i])
  local after = new_tat
  if refused then after = tat end
  local remaining = math.floor((period + eps - (after - now)) / interval)
  remaining = math.min(limit, math.max(0, remaining))
  local retry = 0
  if not ok then retry = math.max(0, math.ceil((new_tat - period - now) * 1e6 - 1e-3)) end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = math.max(0, math.ceil((after - now) * 1e6 - 1e-3))
  out[#out + 1] = retry
  if not refused then
    if new_tat > now then
      local ttl = math.ceil((new_tat - now) * 1000) + 1000
      redis.call('SET', KEYS[i], string.format('%.17g', new_tat), 'PX', ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return out
"""
SCRIPT_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()

# Used when the cache's OPTIONS set none: fail fast, so failing open is quick too.
DEFAULT_TIMEOUT = 0.5
#: Connections per event loop to the limiter's Redis.
POOL_SIZE = 32
#: What the async client takes over from the sync client's connection parameters.
_SERVER_PARAMS = (
    "host",
    "port",
    "path",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
)


def _args(ops: Sequence[Op], now: float) -> list[str]:
    args = [repr(float(now))]
    for op in ops:
        force = "1" if op.force else "0"
        args += [str(op.rate.limit), repr(float(op.rate.period)), str(op.cost), force]
    return args


def _buckets(ops: Sequence[Op], reply: Sequence[int]) -> list[Bucket]:
    return [
        Bucket(
            limit=op.rate.limit,
            allowed=bool(reply[4 * i]),
            remaining=int(reply[4 * i + 1]),
            reset=int(reply[4 * i + 2]) / 1_000_000,
            retry_after=int(reply[4 * i + 3]) / 1_000_000,
        )
        for i, op in enumerate(ops)
    ]


def is_redis(cache: BaseCache) -> bool:
    """Whether ``cache`` is a django-redis cache (the one kind shared atomically)."""
    client = getattr(cache, "client", None)
    return hasattr(client, "get_client") and hasattr(client, "connection_factory")


class RedisStore:
    """Buckets in Redis through django-redis, one ``EVALSHA`` per operation."""

    # redis.asyncio connections belong to the loop that opened them: a client per
    # event loop, then per server URL.
    _async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def _keys(self, ops: Sequence[Op]) -> list[str]:
        return [str(self.cache.make_key(op.key)) for op in ops]

    def apply(self, ops: Sequence[Op], now: float) -> list[Bucket]:
        from redis.exceptions import NoScriptError, RedisError

        keys, args = self._keys(ops), _args(ops, now)
        try:
            # What django_redis.get_redis_connection(alias) returns: the raw client.
            client = self.cache.client.get_client(write=True)  # type: ignore[attr-defined]
            try:
                reply = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except NoScriptError:  # first use on this server: EVAL loads it
                reply = client.eval(GCRA_SCRIPT, len(keys), *keys, *args)
        except (RedisError, OSError) as error:
            raise StoreUnavailable(str(error)) from error
        return _buckets(ops, reply)

    async def aapply(self, ops: Sequence[Op], now: float) -> list[Bucket]:
        from redis.exceptions import NoScriptError, RedisError

        keys, args = self._keys(ops), _args(ops, now)
        try:
            client = self._async_client()
            try:
                reply = await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except NoScriptError:
                reply = await client.eval(GCRA_SCRIPT, len(keys), *keys, *args)
        except (RedisError, OSError) as error:
            raise StoreUnavailable(str(error)) from error
        return _buckets(ops, reply)

    def _async_client(self) -> Any:
        import redis

        loop = asyncio.get_running_loop()
        # The primary (what get_redis_connection(alias, write=True) returns), and where it
        # is, as redis-py resolved it from the cache's LOCATION and OPTIONS.
        primary = self.cache.client.get_client(write=True)  # type: ignore[attr-defined]
        params = primary.get_connection_kwargs()
        server = {name: params[name] for name in _SERVER_PARAMS if name in params}
        if issubclass(primary.connection_pool.connection_class, redis.SSLConnection):
            server.update((name, v) for name, v in params.items() if name.startswith("ssl_"))
        key = repr(sorted(server.items()))
        per_loop = self._async_clients.get(loop)
        if per_loop is None:
            per_loop = self._async_clients[loop] = {}
        connection = per_loop.get(key)
        if connection is None:
            connection = per_loop[key] = self._connect(primary, server)
        return connection

    @staticmethod
    def _connect(primary: Any, server: dict[str, Any]) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        sync_class = primary.connection_pool.connection_class
        if issubclass(sync_class, redis.SSLConnection):
            connection_class: type[redis.asyncio.connection.AbstractConnection]
            connection_class = redis.asyncio.SSLConnection
        elif issubclass(sync_class, redis.UnixDomainSocketConnection):
            connection_class = redis.asyncio.UnixDomainSocketConnection
        else:
            connection_class = redis.asyncio.Connection
        options = dict(server)
        options.setdefault("socket_timeout", DEFAULT_TIMEOUT)
        options.setdefault("socket_connect_timeout", DEFAULT_TIMEOUT)
        # No retries: a down Redis must cost one failed attempt, then fail open or closed.
        # A bounded pool that makes a burst queue for a connection: a check takes a
        # fraction of a millisecond, and a thousand requests at once must not open (or,
        # past redis-py's default cap, fail for want of) a thousand connections.
        pool = redis.asyncio.BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=POOL_SIZE,
            timeout=options["socket_timeout"],
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        return redis.asyncio.Redis(connection_pool=pool)

    @classmethod
    async def aclose(cls) -> None:
        """Close this event loop's clients (tests; a server's shutdown)."""
        for connection in cls._async_clients.pop(asyncio.get_running_loop(), {}).values():
            await connection.aclose()


class CacheStore:
    """Buckets in any Django cache, exact within this process (a lock serialises us).

    On the local-memory cache the sync path serves async callers too: it never waits
    on I/O, and one thread lock then covers every thread and event loop of the process.
    """

    _thread_lock = threading.Lock()
    _loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def apply(self, ops: Sequence[Op], now: float) -> list[Bucket]:
        with self._thread_lock:
            stored = self.cache.get_many([op.key for op in ops])
            tats, buckets = apply_gcra([stored.get(op.key) for op in ops], ops, now)
            for op, tat in zip(ops, tats or (), strict=False):
                if tat is None:
                    self.cache.delete(op.key)
                else:
                    self.cache.set(op.key, tat, timeout=math.ceil(tat - now) + 1)
        return buckets

    async def aapply(self, ops: Sequence[Op], now: float) -> list[Bucket]:
        if isinstance(self.cache, LocMemCache):
            return self.apply(ops, now)
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        async with lock:
            stored = await self.cache.aget_many([op.key for op in ops])
            tats, buckets = apply_gcra([stored.get(op.key) for op in ops], ops, now)
            for op, tat in zip(ops, tats or (), strict=False):
                if tat is None:
                    await self.cache.adelete(op.key)
                else:
                    await self.cache.aset(op.key, tat, timeout=math.ceil(tat - now) + 1)
        return buckets


def get_store() -> RedisStore | CacheStore:
    """The store on ``COPILOTEDGE_CACHE_ALIAS``: Redis when it is django-redis."""
    alias = settings.CACHE_ALIAS
    cache = caches[alias]
    if is_redis(cache):
        return RedisStore(cache)
    return CacheStore(cache)
