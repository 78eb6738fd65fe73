"""The rate limiter's cost per request on Redis: one check and its headers, p50/p99.

    from bench.ratelimit import run
    run("redis://127.0.0.1:6379/0")   # {"p50_ms": …, "p99_ms": …, …}; or await arun(…)

or ``python -m bench.ratelimit [--redis-url URL] [-n 2000]``. Each sample is what the
middleware adds to a request: ``Limiter.acheck_request`` (one ``EVALSHA`` round trip
over the request and token buckets) plus rendering the six ``x-ratelimit-*`` headers.
The limit is set high so every sample takes the common, allowed path. A bare ``PING``
on the same connection is measured too, to show how much of the cost is the network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any

TARGET_P50_MS = 0.5
WARMUP = 200


def _setup_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "copilotedge"],
            DATABASES={},
            USE_TZ=True,
        )
    django.setup()


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(_percentile(ms, 0.50), 4),
        "p90_ms": round(_percentile(ms, 0.90), 4),
        "p99_ms": round(_percentile(ms, 0.99), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


async def _measure(redis_url: str, n: int) -> dict[str, Any]:
    from django.test import override_settings
    from django_redis.cache import RedisCache

    from copilotedge.auth import Principal
    from copilotedge.ratelimit import Limiter
    from copilotedge.ratelimit.stores import RedisStore

    run_id = uuid.uuid4().hex
    cache = RedisCache(redis_url, {"KEY_PREFIX": f"copilotedge-bench-{run_id}"})
    store = RedisStore(cache)
    limiter = Limiter(store)
    principal = Principal(ip=f"bench-{run_id}")
    checks: list[float] = []
    pings: list[float] = []
    allowed = 0
    huge = f"{10**9}/m"
    try:
        with override_settings(COPILOTEDGE_RATE_LIMIT=huge, COPILOTEDGE_TOKEN_RATE_LIMIT=huge):
            client = store._async_client()
            for i in range(WARMUP + n):
                started = time.perf_counter()
                decision = await limiter.acheck_request(principal)
                decision.headers()
                elapsed = time.perf_counter() - started
                started = time.perf_counter()
                await client.ping()
                ping = time.perf_counter() - started
                if i >= WARMUP:
                    checks.append(elapsed)
                    pings.append(ping)
                    allowed += decision.allowed
    finally:
        raw = cache.client.get_client(write=True)
        for kind in ("req", "tok"):
            raw.delete(cache.make_key(Limiter.key(principal, kind)))
        await RedisStore.aclose()
    result: dict[str, Any] = {"n": n, "allowed": allowed, **_summary(checks)}
    result["redis_ping_p50_ms"] = _summary(pings)["p50_ms"]
    result["target_p50_ms"] = TARGET_P50_MS
    result["meets_target"] = result["p50_ms"] <= TARGET_P50_MS
    return result


def run(redis_url: str, n: int = 2000) -> dict[str, Any]:
    """Added latency of one rate-limit check on Redis at ``redis_url`` over ``n`` samples.

    Runs its own event loop; from inside a running one, ``await arun(...)`` instead.
    """
    _setup_django()
    return asyncio.run(_measure(redis_url, n))


async def arun(redis_url: str, n: int = 2000) -> dict[str, Any]:
    """:func:`run` for callers already in an event loop."""
    _setup_django()
    return await _measure(redis_url, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(run(args.redis_url, args.n), indent=2))


if __name__ == "__main__":
    main()
