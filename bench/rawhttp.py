"""A minimal HTTP/1.1 client for the load generator.

httpx costs more CPU per streamed frame than the servers it measures, and on a 2-core
machine the client's CPU is taken from them; this one only frames the body and looks
for two markers in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

CONTENT = b'"content":"'
DONE = b"data: [DONE]"


class Connection:
    """One keep-alive connection to ``url``'s host, reopened when the server closes it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path
        self.headers = headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def post_stream(
        self, body: dict[str, object], *, hang_up_early: bool = False
    ) -> tuple[float, bool]:
        """POST ``body``; returns (seconds to the first non-empty content, saw [DONE]).

        ``hang_up_early`` closes the connection after the first piece of the body, as a
        client that goes away mid-stream does.
        """
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        started = time.perf_counter()
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = await self.reader.readline()
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        ok = status_line.split(b" ", 2)[1:2] == [b"200"]
        ttft, done = 0.0, False
        async for data in self._body(headers):
            if hang_up_early:
                await self.close()
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
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return ttft, ok and done

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        assert self.reader is not None
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
            return
        if headers.get("transfer-encoding", "").lower() != "chunked":
            yield await self.reader.read()
            await self.close()
            return
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return
            chunk = await self.reader.readexactly(size + 2)
            yield chunk[:-2]
