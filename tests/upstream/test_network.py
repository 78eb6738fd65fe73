"""The asyncio network backend, through httpcore's pool against real loopback servers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import pytest
import trustme

from copilotedge.upstream.network import AsyncioBackend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reply(body: bytes, *, close: bool = False) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s" % (
        len(body),
        connection,
        body,
    )


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def pool() -> AsyncIterator[httpcore.AsyncConnectionPool]:
    async with httpcore.AsyncConnectionPool(network_backend=AsyncioBackend()) as pool:
        yield pool


async def test_a_request_and_a_reused_connection(pool: httpcore.AsyncConnectionPool) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(reply(b"hello"))
            await writer.drain()
        writer.close()

    server = await serve(handler)
    url = f"http://127.0.0.1:{port_of(server)}/"
    for _ in range(3):
        response = await pool.request("GET", url)
        assert (response.status, response.content) == (200, b"hello")
    assert connections == 1
    server.close()


async def test_an_idle_connection_the_server_closed_is_not_reused(
    pool: httpcore.AsyncConnectionPool,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply(b"once"))  # says keep-alive, then hangs up anyway
        await writer.drain()
        writer.close()

    server = await serve(handler)
    url = f"http://127.0.0.1:{port_of(server)}/"
    assert (await pool.request("GET", url)).content == b"once"
    await asyncio.sleep(0.05)  # the hang-up arrives while the connection is idle
    assert (await pool.request("GET", url)).content == b"once"
    server.close()


async def test_tls(pool: httpcore.AsyncConnectionPool) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply(b"secret", close=True))
        await writer.drain()
        writer.close()

    server = await serve(handler, server_context)
    async with httpcore.AsyncConnectionPool(
        ssl_context=client_context, network_backend=AsyncioBackend()
    ) as tls_pool:
        response = await tls_pool.request("GET", f"https://localhost:{port_of(server)}/")
    assert (response.status, response.content) == (200, b"secret")
    # An untrusted certificate is a connection error, not a response.
    with pytest.raises(httpcore.ConnectError):
        await pool.request("GET", f"https://localhost:{port_of(server)}/")
    server.close()


async def test_nothing_listening_is_a_connect_error(pool: httpcore.AsyncConnectionPool) -> None:
    server = await serve(lambda reader, writer: asyncio.sleep(0))
    port = port_of(server)
    server.close()
    await server.wait_closed()
    with pytest.raises(httpcore.ConnectError):
        await pool.request("GET", f"http://127.0.0.1:{port}/")


async def test_a_silent_server_is_a_read_timeout(pool: httpcore.AsyncConnectionPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server = await serve(handler)
    with pytest.raises(httpcore.ReadTimeout):
        await pool.request(
            "GET", f"http://127.0.0.1:{port_of(server)}/", extensions={"timeout": {"read": 0.1}}
        )
    server.close()


async def test_a_broken_connection_is_a_read_error(pool: httpcore.AsyncConnectionPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()  # a reset, mid-exchange

    server = await serve(handler)
    with pytest.raises((httpcore.ReadError, httpcore.RemoteProtocolError)):
        await pool.request("GET", f"http://127.0.0.1:{port_of(server)}/")
    server.close()
