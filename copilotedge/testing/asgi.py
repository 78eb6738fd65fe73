"""The bits of ASGI the emulator needs, without a framework: types, body reading, replies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value; ``name`` in lower case, as ASGI servers give them."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client hung up first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def start(
    send: Send, status: int, content_type: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    headers: Headers = [(b"content-type", content_type), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def reply(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """A whole response in two sends."""
    await start(send, status, content_type, [(b"content-length", str(len(body)).encode()), *extra])
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def reply_json(send: Send, status: int, payload: Any) -> None:
    await reply(send, status, json.dumps(payload).encode())


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the emulator holds nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
