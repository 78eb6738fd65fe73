"""ASGI routing pieces a site mounts: the WebSocket routes and the stop handling.

A site wires them in its ``asgi.py``, after ``get_asgi_application()`` (these import
models, so Django must be set up first)::

    application = Lifespan(
        ProtocolTypeRouter({
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(copilotedge.routing.websocket_urlpatterns))
            ),
        })
    )

:class:`Lifespan` makes a stop lose nothing (see :mod:`copilotedge.lifecycle`): it drains
at the ASGI lifespan's shutdown (uvicorn, hypercorn) and, for servers without lifespan
(daphne), on SIGTERM/SIGINT before the server's own handler runs.

``websocket_urlpatterns`` serves the chat socket at ``ws/copilotedge/chat/``;
``websocket_routes(prefix="ws/ai/")`` serves it under a path of the site's choosing
(``ws/ai/chat/``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.urls import URLPattern, path

from copilotedge import lifecycle
from copilotedge.exceptions import ShuttingDown
from copilotedge.upstream.client import close_client
from copilotedge.websocket.consumers import ChatConsumer

DEFAULT_PREFIX = "ws/copilotedge/"


def websocket_routes(prefix: str = DEFAULT_PREFIX) -> list[URLPattern]:
    """The app's WebSocket routes under ``prefix`` (the chat socket is ``<prefix>chat/``),
    for ``URLRouter``; ``prefix`` is a path without a leading slash, like ``"ws/ai/"``."""
    prefix = prefix.strip("/")
    route = f"{prefix}/chat/" if prefix else "chat/"
    return [path(route, ChatConsumer.as_asgi(), name="copilotedge-chat")]


websocket_urlpatterns = websocket_routes()

#: The close code a WebSocket opened during a stop is refused with ("service restart").
CLOSE_SHUTTING_DOWN = 1012


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI lifespan: at shutdown, drain the background work and close the upstream client."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.shut_down()
            await close_client()
            await send({"type": "lifespan.shutdown.complete"})
            return


class Lifespan:
    """Wraps a site's ASGI application so that a stop loses nothing.

    - ``lifespan`` scopes: :func:`lifespan` (drain at shutdown);
    - the first request or connection chains a drain onto the server's SIGTERM/SIGINT
      handlers (:func:`copilotedge.lifecycle.handle_signals`);
    - HTTP requests are counted in flight, so a stop waits for their last bytes;
    - during a stop, new requests get a 503 ``shutting_down`` error object and new
      WebSockets are closed with 1012.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(scope, receive, send)
            return
        lifecycle.handle_signals()
        if lifecycle.stopping():
            await _refuse(kind, receive, send)
        elif kind == "http":
            with lifecycle.serving():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _refuse(kind: str, receive: Any, send: Any) -> None:
    error = ShuttingDown()
    if kind == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": CLOSE_SHUTTING_DOWN})
        return
    if kind != "http":
        return
    body = json.dumps(error.to_dict()).encode()
    retry_after = str(max(1, math.ceil(error.retry_after or 1)))
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", retry_after.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
