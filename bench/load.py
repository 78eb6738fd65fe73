"""Load generators: streamed chat completions, measured from the client's side."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from copilotedge.sse import DONE, SSEParser

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


async def one_stream(client: httpx.AsyncClient, target: Target) -> Stream:
    """One streamed completion; time to first token is to the first non-empty content delta."""
    started = time.perf_counter()
    ttft = 0.0
    done = False
    parser = SSEParser()
    async with client.stream("POST", target.url, json=BODY, headers=target.headers) as response:
        async for chunk in response.aiter_bytes():
            for event in parser.feed(chunk):
                if event.data == DONE:
                    done = True
                    continue
                if not ttft:
                    payload = json.loads(event.data)
                    choices = payload.get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - started
        ok = response.status_code == 200 and done
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


async def ttft_sequential(target: Target, n: int, warmup: int = 20) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(warmup):
            await one_stream(client, target)
        results = [await one_stream(client, target) for _ in range(n)]
    return {
        "requests": n,
        "errors": sum(not r.ok for r in results),
        "ttft_ms": percentiles([r.ttft for r in results if r.ok]),
    }


async def throughput(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """Streamed completions per second with ``concurrency`` clients looping for ``seconds``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(concurrency):
            await one_stream(client, target)
        deadline = time.perf_counter() + seconds
        results: list[Stream] = []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                results.append(await one_stream(client, target))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = [r for r in results if r.ok]
    return {
        "concurrency": concurrency,
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "per_second": round(len(ok) / elapsed, 1),
        "ttft_ms": percentiles([r.ttft for r in ok]),
    }
