# ruff: noqa: ASYNC109 - the timeout parameters are httpcore's interface
"""An httpcore network backend on plain asyncio streams, for the upstream client.

httpx reaches the network through httpcore, whose default backend on asyncio is anyio.
anyio wraps every read and write in a cancel scope, and httpcore asks every idle pooled
connection whether it is still usable (``is_readable``) each time it hands one out,
which anyio answers with a ``select`` call and a fresh attribute table. With a thousand
streams open that is a thousand checks per new request. Here a read is one
``StreamReader.read`` and the check is two attribute reads; the protocol work (h11,
pooling, timeouts' meaning) stays httpcore's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore

_READ_LIMIT = 2**16


@contextlib.asynccontextmanager
async def _timeout(
    seconds: float | None, timeout_error: type[Exception], error: type[Exception]
) -> AsyncIterator[None]:
    """Map a deadline and OS errors to httpcore's exceptions."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise timeout_error(str(exc) or "timed out") from exc
    except (OSError, EOFError, ssl.SSLError) as exc:
        raise error(str(exc) or type(exc).__name__) from exc


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection as an asyncio reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if timeout is None:
            # The common case costs no timer; the turn's own limits still apply above.
            try:
                return await self._reader.read(max_bytes)
            except (OSError, ssl.SSLError) as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        async with _timeout(timeout, httpcore.ReadTimeout, httpcore.ReadError):
            return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        async with _timeout(timeout, httpcore.WriteTimeout, httpcore.WriteError):
            self._writer.write(buffer)
            await self._writer.drain()

    async def aclose(self) -> None:
        # Not waiting for the close handshake: hanging up must be immediate.
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncioStream:
        async with _timeout(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
            await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle pooled connection that saw EOF (or is closing) is not reusable.
            return self._reader.at_eof() or self._writer.transport.is_closing()
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return self._writer.get_extra_info(info)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections for :class:`httpcore.AsyncConnectionPool` (``network_backend=``)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncioStream:
        local_addr = (local_address, 0) if local_address else None
        async with _timeout(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=local_addr, limit=_READ_LIMIT
            )
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncioStream:
        async with _timeout(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
            reader, writer = await asyncio.open_unix_connection(path, limit=_READ_LIMIT)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
