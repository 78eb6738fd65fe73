"""The load generator's client as httpx: ``--client httpx``.

The default client (:mod:`bench.rawhttp`) costs almost no CPU. An httpx client costs
more per frame than the servers it measures, so on two cores it slows the direct path
most; the streaming-core issue's reference numbers (a bare Django relay at about 42% of
direct) only come out with a client like this one, so it is here to compare with them.
"""

from __future__ import annotations

import time

import httpx

from .rawhttp import CONTENT, DONE


class HttpxConnection:
    """One keep-alive connection (an ``httpx.AsyncClient`` limited to one)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.client = httpx.AsyncClient(
            headers=headers, timeout=300, limits=httpx.Limits(max_connections=1)
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def post_stream(
        self, body: dict[str, object], *, hang_up_early: bool = False
    ) -> tuple[float, bool]:
        started = time.perf_counter()
        ttft, done = 0.0, False
        async with self.client.stream("POST", self.url, json=body) as response:
            async for data in response.aiter_raw():
                if hang_up_early:
                    return 0.0, False
                if not ttft:
                    at = data.find(CONTENT)
                    while at != -1:
                        if data[at + len(CONTENT) : at + len(CONTENT) + 1] != b'"':
                            ttft = time.perf_counter() - started
                            break
                        at = data.find(CONTENT, at + 1)
                if DONE in data:
                    done = True
        return ttft, response.status_code == 200 and done
