"""ASGI routing pieces a site mounts: the WebSocket routes and a lifespan handler.

A site wires them as::

    ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(copilotedge.routing.websocket_urlpatterns))
        ),
        "lifespan": copilotedge.routing.lifespan,
    })
"""

from __future__ import annotations

from typing import Any

from django.urls import path

from copilotedge.upstream.client import aclose_client
from copilotedge.websocket.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/copilotedge/chat/", ChatConsumer.as_asgi(), name="copilotedge-chat"),
]


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
