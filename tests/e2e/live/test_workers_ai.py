"""One short answer streamed from the real Cloudflare Workers AI through the app.

Runs only when CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN are set (and
CLOUDFLARE_API_BASE_URL, if set, names the upstream, e.g. an AI Gateway).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import AsyncClient, override_settings

from copilotedge.chat import sse
from copilotedge.defaults import DEFAULT_MODEL
from copilotedge.models import ApiKey
from copilotedge.upstream import client as cloudflare

pytestmark = [
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("drain_usage"),
]


async def test_stream_a_short_answer_from_workers_ai(
    workers_ai_settings: dict[str, str], api_key: tuple[ApiKey, str]
) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Reply with the single word: pong"}],
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with override_settings(**workers_ai_settings):
        try:
            response: Any = await AsyncClient().post(
                "/copilotedge/v1/chat/completions",
                json.dumps(body),
                content_type="application/json",
                headers={"Authorization": f"Bearer {api_key[1]}"},
            )
            assert response.status_code == 200, response.content
            raw = b"".join([chunk async for chunk in response.streaming_content])
        finally:
            await cloudflare.close_client()
    parser = sse.SSEParser()
    events = [e.data for e in [*parser.feed(raw), *parser.close()]]
    assert events[-1] == sse.DONE
    chunks = [json.loads(data) for data in events[:-1]]
    assert not any("error" in chunk for chunk in chunks), chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
