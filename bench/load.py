"""Load generators: streamed chat completions, measured from the client's side."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .rawhttp import Connection

BODY = {
    "model": "@cf/meta/llama-3.1-8b-instruct",
    "messages": [{"role": "user", "content": "Tell me about the benchmark."}],
    "stream": True,
}


@dataclass
class Stream:
    ttft: float
    total: float
    ok: bool


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


async def one_stream(connection: Connection) -> Stream:
    """One streamed completion; time to first token is to the first non-empty content delta."""
    started = time.perf_counter()
    try:
        ttft, ok = await connection.post_stream(BODY)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        await connection.close()
        ttft, ok = 0.0, False
    return Stream(ttft=ttft, total=time.perf_counter() - started, ok=ok)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(statistics.median(values) * 1000, 3),
        "p95": round(cuts[94] * 1000, 3),
        "p99": round(cuts[98] * 1000, 3),
    }


#: "raw" (bench.rawhttp), "httpx" (bench.httpxclient) or "openai" (bench.openaiclient);
#: set by ``--client``.
CLIENT = "raw"


def connect(target: Target) -> Connection:
    if CLIENT == "httpx":
        from .httpxclient import HttpxConnection

        return HttpxConnection(target.url, target.headers)  # type: ignore[return-value]
    if CLIENT == "openai":
        from .openaiclient import OpenAIConnection

        return OpenAIConnection(target.url, target.headers)  # type: ignore[return-value]
    return Connection(target.url, target.headers)


async def ttft_sequential(target: Target, n: int, warmup: int = 20) -> dict[str, Any]:
    connection = connect(target)
    for _ in range(warmup):
        await one_stream(connection)
    results = [await one_stream(connection) for _ in range(n)]
    await connection.close()
    return {
        "requests": n,
        "errors": sum(not r.ok for r in results),
        "ttft_ms": percentiles([r.ttft for r in results if r.ok]),
    }


async def throughput(targets: list[Target], concurrency: int, seconds: float) -> dict[str, Any]:
    """Streamed completions per second with ``concurrency`` clients looping for ``seconds``.

    Clients are spread evenly over ``targets`` (several server processes).
    """
    connections = [connect(targets[i % len(targets)]) for i in range(concurrency)]
    for connection in connections:
        await one_stream(connection)
    deadline = time.perf_counter() + seconds
    results: list[Stream] = []

    async def worker(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            results.append(await one_stream(connection))

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    ok = [r for r in results if r.ok]
    return {
        "concurrency": concurrency,
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "per_second": round(len(ok) / elapsed, 1),
        "ttft_ms": percentiles([r.ttft for r in ok]),
    }


async def open_streams(target: Target, count: int, read_timeout: float = 120.0) -> dict[str, Any]:
    """``count`` streams opened at once and held to their end; how many completed."""
    connections = [connect(target) for _ in range(count)]
    started = time.perf_counter()
    async with asyncio.timeout(read_timeout):
        results = await asyncio.gather(
            *(one_stream(c) for c in connections), return_exceptions=True
        )
    elapsed = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    ok = [r for r in results if isinstance(r, Stream) and r.ok]
    return {
        "streams": count,
        "completed": len(ok),
        "errors": count - len(ok),
        "seconds": round(elapsed, 2),
        "ttft_ms": percentiles([r.ttft for r in ok]),
    }
