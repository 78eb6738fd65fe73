"""CopilotKit faces under real daphne against the emulator: a client hanging up mid-answer."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorServer
from tests.servers import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

HANG_UP_WITHIN = 2.0


def entry_for(emulator: EmulatorServer, tag: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for entry in emulator.app.requests:
            if tag in str(entry):
                return entry
        time.sleep(0.02)
    raise AssertionError(f"the emulator saw no request tagged {tag}")


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def hang_up_after(request: dict[str, Any], marker: bytes) -> float:
    with httpx.Client(timeout=10) as http, http.stream(**request) as response:
        assert response.status_code == 200
        seen = b""
        for chunk in response.iter_raw():
            seen += chunk
            if marker in seen:
                break
        response.close()
        return time.time()


def assert_hung_up(emulator: EmulatorServer, tag: str, hung_up: float, protocol: str) -> None:
    entry = entry_for(emulator, tag)
    assert wait_until(lambda: entry["outcome"] is not None, HANG_UP_WITHIN + 1)
    assert entry["outcome"] == "client_disconnected"
    assert entry["ended"] - hung_up < HANG_UP_WITHIN
    assert wait_until(lambda: UsageRecord.objects.filter(protocol=protocol).exists(), 3)
    assert UsageRecord.objects.get(protocol=protocol).outcome == "cancelled"


def test_agui_client_hanging_up_reaches_upstream(
    e2e_server: DaphneServer, emulator: EmulatorServer, api_key: tuple[ApiKey, str]
) -> None:
    tag = uuid.uuid4().hex
    request = {
        "method": "POST",
        "url": f"{e2e_server.url}/copilotedge/copilotkit/agent/default/run",
        "headers": {"Authorization": f"Bearer {api_key[1]}"},
        "json": {
            "threadId": "t",
            "runId": "r",
            "messages": [{"id": "1", "role": "user", "content": f"{tag} [[fault:slow:0.2]]"}],
        },
    }
    hung_up = hang_up_after(request, b"TEXT_MESSAGE_CONTENT")
    assert_hung_up(emulator, tag, hung_up, "agui")


def test_graphql_client_hanging_up_reaches_upstream(
    e2e_server: DaphneServer, emulator: EmulatorServer, api_key: tuple[ApiKey, str]
) -> None:
    tag = uuid.uuid4().hex
    query = """mutation($data: GenerateCopilotResponseInput!) {
      generateCopilotResponse(data: $data) {
        threadId
        messages @stream { ... on TextMessageOutput { content @stream } }
      }
    }"""
    message = {
        "id": "1",
        "createdAt": "2025-01-01T00:00:00Z",
        "textMessage": {"role": "user", "content": f"{tag} [[fault:slow:0.2]]"},
    }
    data = {"metadata": {}, "messages": [message], "frontend": {"actions": []}}
    request = {
        "method": "POST",
        "url": f"{e2e_server.url}/copilotedge/copilotkit",
        "headers": {"Authorization": f"Bearer {api_key[1]}", "Accept": "multipart/mixed"},
        "json": {"query": query, "variables": {"data": data}},
    }
    hung_up = hang_up_after(request, b'"items":["Hello')
    assert_hung_up(emulator, tag, hung_up, "graphql")
