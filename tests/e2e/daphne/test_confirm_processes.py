"""A ``confirm`` answered on another server process: the chat waits on daphne A, the
client's answer arrives on daphne B and reaches A through the Redis channel layer."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.e2e.daphne.test_resume_processes import open_socket, read_until
from tests.servers import DaphneServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not getattr(settings, "REDIS_URL", ""),
        reason="needs REDIS_URL: two server processes share a confirm through Redis",
    ),
]


@pytest.mark.parametrize(("approve", "told"), [(True, "deleted memo"), (False, "did not approve")])
async def test_a_confirm_sent_to_another_process_resumes_the_turn(user, approve, told):
    _, token = await sync_to_async(ApiKey.create_key)(user, name="two-process")
    with EmulatorServer(EmulatorApp()) as emulator:
        overrides = {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            # Both processes must use one channel-layer prefix (the default is per process).
            "CHANNEL_LAYERS": settings.CHANNEL_LAYERS,
            "COPILOTEDGE_AGENTS": {
                "default": {"name": "default"},
                "helper": {"name": "helper", "tools": ["tests.sample_tools.delete_note_tool"]},
            },
        }
        with DaphneServer(overrides) as a, DaphneServer(overrides) as b:
            waiting = await open_socket(a, token)
            await waiting.send(
                json.dumps(
                    {"type": "chat", "id": "c", "model": "agent:helper",
                     "messages": [{"role": "user", "content": 'CALL:delete_note{"note": "memo"}'}]}
                )
            )  # fmt: skip
            ask = (await read_until(waiting, "confirm"))[-1]
            assert ask["name"] == "delete_note"

            answering = await open_socket(b, token)
            await answering.send(
                json.dumps(
                    {"type": "confirm", "id": "c", "tool_call_id": ask["tool_call_id"],
                     "approve": approve}
                )
            )  # fmt: skip
            seen = await read_until(waiting, "done")
            await answering.close()
            await waiting.close()
    [result] = [m for m in seen if m["type"] == "tool_result"]
    assert result["tool_call_id"] == ask["tool_call_id"]
    assert told in result["content"]
    text = "".join(m["content"] for m in seen if m["type"] == "delta")
    assert text.startswith("Tool result:") and told in text
    row = await UsageRecord.objects.aget(protocol="websocket")
    assert (row.steps, row.tool_calls, row.outcome) == (2, 1, "ok")
