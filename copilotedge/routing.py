"""ASGI routing pieces a site mounts: the WebSocket routes and a lifespan handler."""

from __future__ import annotations

from typing import Any

from .cloudflare import aclose_client


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Close the shared upstream client at shutdown (servers that speak ASGI lifespan)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await aclose_client()
            await send({"type": "lifespan.shutdown.complete"})
            return
