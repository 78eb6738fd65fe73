"""The bare baseline: a Django async view relaying the upstream stream byte for byte.

Same site, same middleware as the demo, none of copilotedge's work (no auth, limits,
parsing, re-encoding or ledger): the gap to it is what copilotedge's features cost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

_clients: dict[int, httpx.AsyncClient] = {}


@csrf_exempt
async def relay(request: HttpRequest) -> StreamingHttpResponse:
    client = _clients.get(0)
    if client is None:
        # The same connection limit as copilotedge's client (COPILOTEDGE_MAX_CONNECTIONS).
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        client = _clients[0] = httpx.AsyncClient(timeout=60, limits=limits)
    url = f"{settings.COPILOTEDGE_API_BASE_URL}/accounts/bench/ai/v1/chat/completions"
    upstream = await client.send(
        client.build_request(
            "POST",
            url,
            content=request.body,
            headers={"Authorization": "Bearer bench", "Content-Type": "application/json"},
        ),
        stream=True,
    )

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingHttpResponse(body(), content_type="text/event-stream")


urlpatterns = [path("copilotedge/v1/chat/completions", relay)]
