"""Many WebSockets streaming at once against one server process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import connect

from . import capacity, load


async def one_socket(url: str, origin: str, key: str) -> tuple[bool, float]:
    """Authenticate, ask one question, read to ``done``: (completed, seconds to first delta)."""
    started = time.perf_counter()
    first = 0.0
    async with connect(url, origin=origin, open_timeout=120, max_size=2**20) as socket:  # type: ignore[arg-type]
        await socket.send(json.dumps({"type": "auth", "token": key}))
        while json.loads(await socket.recv()).get("type") != "ready":
            pass
        await socket.send(
            json.dumps({"type": "chat", "id": "1", "messages": [{"role": "user", "content": "Hi"}]})
        )
        while True:
            message = json.loads(await socket.recv())
            kind = message.get("type")
            if kind == "delta" and not first:
                first = time.perf_counter() - started
            elif kind == "done":
                return True, first
            elif kind in ("error", "cancelled"):
                return False, first


async def hold_sockets(port: int, pid: int, key: str, count: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/ws/copilotedge/chat/"
    origin = f"http://127.0.0.1:{port}"
    await asyncio.gather(*(one_socket(url, origin, key) for _ in range(10)))  # warm up
    baseline = capacity.rss_kib(pid)
    stop = asyncio.Event()
    sampler = asyncio.create_task(capacity.sample_peaks(pid, stop))
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_socket(url, origin, key) for _ in range(count)), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    stop.set()
    peak, peak_threads = await sampler
    done = [r for r in results if isinstance(r, tuple) and r[0]]
    return {
        "sockets": count,
        "completed": len(done),
        "errors": count - len(done),
        "seconds": round(elapsed, 2),
        "first_delta_ms": load.percentiles([r[1] for r in done if r[1]]),
        "rss_growth_per_socket_kib": round((peak - baseline) / count, 1),
        "threads_peak": peak_threads,
    }
