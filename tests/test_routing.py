"""The WebSocket routes a site mounts, at the default path or under its own prefix."""

from __future__ import annotations

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from copilotedge.models import ApiKey
from copilotedge.routing import websocket_routes, websocket_urlpatterns
from tests.helpers import ORIGIN

pytestmark = pytest.mark.django_db(transaction=True)


async def authenticated(routes: list, path: str, key: str) -> dict:
    """The socket at ``path`` (under ``routes``) after an API key's ``auth`` message."""
    socket = WebsocketCommunicator(AuthMiddlewareStack(URLRouter(routes)), path, headers=[ORIGIN])
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "auth", "token": key})
    ready = await socket.receive_json_from()
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from() == {"type": "pong"}
    await socket.disconnect()
    return ready


def test_the_default_routes_serve_the_chat_at_ws_copilotedge_chat() -> None:
    assert [str(p.pattern) for p in websocket_urlpatterns] == ["ws/copilotedge/chat/"]
    assert [str(p.pattern) for p in websocket_routes()] == ["ws/copilotedge/chat/"]


@pytest.mark.parametrize(
    ("prefix", "route"),
    [("ws/ai/", "ws/ai/chat/"), ("/ws/ai", "ws/ai/chat/"), ("", "chat/")],
)
def test_a_prefix_moves_the_chat(prefix: str, route: str) -> None:
    assert [str(p.pattern) for p in websocket_routes(prefix)] == [route]


async def test_a_site_serves_the_chat_under_its_own_prefix(
    api_key: tuple[ApiKey, str],
) -> None:
    ready = await authenticated(websocket_routes("ws/ai/"), "/ws/ai/chat/", api_key[1])
    assert ready == {"type": "ready", "user": "alice"}
    moved = WebsocketCommunicator(
        URLRouter(websocket_routes("ws/ai/")), "/ws/copilotedge/chat/", headers=[ORIGIN]
    )
    with pytest.raises(ValueError, match="No route found"):
        await moved.connect()


async def test_the_default_path_still_serves(api_key: tuple[ApiKey, str]) -> None:
    ready = await authenticated(websocket_urlpatterns, "/ws/copilotedge/chat/", api_key[1])
    assert ready["type"] == "ready"
