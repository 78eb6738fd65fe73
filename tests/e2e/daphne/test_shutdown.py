"""A stop loses nothing: a real server process gets a real SIGTERM with answers in flight.

Answers finished before the signal, answers that finish within the grace period and
answers still streaming after it (OpenAI and ``/ai/run`` SSE, AG-UI, an attached and a
detached WebSocket chat): every client sees a whole answer or the ``shutting_down``
error, the process exits soon after the grace period, and then the ledger has a row for
every answer and no stored answer is left ``streaming``. Under daphne (no ASGI lifespan:
the signal handler drains) and uvicorn (the lifespan's shutdown drains too).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection, connect

from copilotedge.models import ApiKey, Message, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.helpers import WS_PATH
from tests.servers import DaphneServer, UvicornServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

GRACE = 4.0
#: Past the grace: interrupted answers end and are written, then the server exits.
EXIT_MARGIN = 6.0
TOKENS = 20
SLOW = "[[fault:slow:1.0]]"  # 20 tokens 1 s apart: still streaming after the grace
BRISK = "[[fault:slow:0.08]]"  # 20 tokens 0.08 s apart: done within the grace
FINISHED = 5  # answers finished before the signal
CHAT = "/copilotedge/v1/chat/completions"
RUN = "/copilotedge/ai/run/@cf/meta/llama-3.1-8b-instruct"
AGUI = "/copilotedge/copilotkit/agent/default/run"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorApp(tokens=TOKENS)) as server:
        yield server


def chat_body(content: str) -> dict[str, Any]:
    return {"stream": True, "messages": [{"role": "user", "content": content}]}


def agui_body(content: str) -> dict[str, Any]:
    return {
        "threadId": str(uuid.uuid4()),
        "runId": "r",
        "messages": [{"id": "1", "role": "user", "content": content}],
    }


def sse_data(lines: list[str]) -> list[Any]:
    """The ``data:`` payloads of an event stream: JSON, or ``[DONE]`` as is."""
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


class Client:
    """One streaming HTTP client; ``started`` is set at its first token."""

    def __init__(self, http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        self.started = asyncio.Event()
        self.status = 0
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._run(http, url, body))

    async def _run(self, http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        async with http.stream("POST", url, json=body) as response:
            self.status = response.status_code
            async for line in response.aiter_lines():
                self.lines.append(line)
                if '"content"' in line or '"response"' in line or "TEXT_MESSAGE_CONTENT" in line:
                    self.started.set()
        self.started.set()  # or ended without a token: the caller checks the status

    def payloads(self) -> list[Any]:
        return sse_data(self.lines)


def openai_outcome(payloads: list[Any]) -> str:
    """``complete`` or ``shutting_down``; anything else fails the assertion."""
    assert payloads[-1] == "[DONE]", payloads[-3:]
    last = payloads[-2]
    if "error" in last:
        return str(last["error"]["code"])
    assert last["choices"][0]["finish_reason"] == "stop", last
    return "complete"


def run_outcome(payloads: list[Any]) -> str:
    assert payloads[-1] == "[DONE]", payloads[-3:]
    last = payloads[-2]
    if "error" in last:
        assert last["success"] is False
        return str(last["error"]["code"])
    assert "usage" in last, last
    return "complete"


async def open_socket(server: DaphneServer, token: str) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + WS_PATH
    socket = await connect(url, origin=server.url)  # type: ignore[arg-type]
    await socket.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await socket.recv())["type"] == "ready"
    return socket


async def chat_until_first_delta(socket: ClientConnection, content: str) -> None:
    message = {"type": "chat", "id": "c", "messages": [{"role": "user", "content": content}]}
    await socket.send(json.dumps(message))
    async with asyncio.timeout(30):
        while json.loads(await socket.recv())["type"] != "delta":
            pass


async def socket_end(socket: ClientConnection) -> dict[str, Any]:
    """The frame that ended the chat (``done``, ``error`` or ``cancelled``)."""
    async with asyncio.timeout(30):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] in ("done", "error", "cancelled"):
                return dict(frame)


@pytest.mark.parametrize("server_class", [DaphneServer, UvicornServer], ids=["daphne", "uvicorn"])
async def test_sigterm_with_answers_in_flight_loses_nothing(
    server_class: type[DaphneServer],
    emulator: EmulatorServer,
    api_key: tuple[ApiKey, str],
) -> None:
    token = api_key[1]
    overrides = {
        "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
        "COPILOTEDGE_SHUTDOWN_GRACE": GRACE,
        "COPILOTEDGE_READ_TIMEOUT": 30.0,
        "COPILOTEDGE_TOTAL_TIMEOUT": 60.0,
    }
    server = server_class(overrides).start()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
            # Answered before the signal.
            finished = [Client(http, CHAT, chat_body(f"Done {i}")) for i in range(FINISHED)]
            await asyncio.gather(*(client.task for client in finished))
            # Streaming at the signal: two WebSocket chats, one of them detached.
            attached = await open_socket(server, token)
            await chat_until_first_delta(attached, f"Attached {SLOW}")
            detached = await open_socket(server, token)
            await chat_until_first_delta(detached, f"Detached {SLOW}")
            await detached.close()  # the chat goes on without its socket

            # And HTTP streams: the last one finishes within the grace, the rest are cut. Each
            # is under way before the next starts (SQLite refuses concurrent first writes).
            in_flight: list[Client] = []
            for path, body in [
                (CHAT, chat_body(f"Slow {SLOW}")),
                (CHAT, chat_body(f"Slow too {SLOW}")),
                (RUN, chat_body(f"Run {SLOW}")),
                (AGUI, agui_body(f"AG-UI {SLOW}")),
                (CHAT, chat_body(f"Brisk {BRISK}")),
            ]:
                client = Client(http, path, body)
                async with asyncio.timeout(30):
                    await client.started.wait()
                assert client.status == 200, client.lines
                in_flight.append(client)
            *slow, run, agui, brisk = in_flight
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.5)
            # A request arriving during the stop is refused.
            refused = await http.post(CHAT, json=chat_body("Too late"))
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"

            attached_end = await socket_end(attached)
            async with asyncio.timeout(GRACE + EXIT_MARGIN):
                await asyncio.gather(*(client.task for client in in_flight))
        exit_code = await asyncio.to_thread(server.process.wait, GRACE + EXIT_MARGIN)
        exited_after = time.monotonic() - signalled
    finally:
        errors = server.stop()
    assert "Traceback" not in errors, errors
    assert exit_code is not None
    assert exited_after < GRACE + EXIT_MARGIN

    # What each client saw.
    assert [openai_outcome(c.payloads()) for c in finished] == ["complete"] * FINISHED
    assert openai_outcome(brisk.payloads()) == "complete"
    assert [openai_outcome(c.payloads()) for c in slow] == ["shutting_down"] * 2
    assert run_outcome(run.payloads()) == "shutting_down"
    agui_events = agui.payloads()
    assert agui_events[-1]["type"] == "RUN_ERROR"
    assert agui_events[-1]["code"] == "shutting_down"
    assert attached_end["type"] == "error"
    assert attached_end["error"]["code"] == "shutting_down"

    # What the server wrote before it exited.
    rows = await sync_to_async(list)(UsageRecord.objects.order_by("created_at"))
    answers = FINISHED + len(in_flight) + 2  # and the two WebSocket chats
    assert len(rows) == answers, [(r.protocol, r.outcome) for r in rows]
    outcomes = sorted(row.outcome for row in rows)
    assert outcomes == sorted(["ok"] * (FINISHED + 1) + ["incomplete"] * (len(in_flight) + 1))
    cut = [row for row in rows if row.outcome == "incomplete"]
    assert {row.error_code for row in cut} == {"shutting_down"}
    assert all(0 < row.completion_tokens < TOKENS for row in cut)
    assert sorted(row.protocol for row in cut) == sorted(
        ["openai", "openai", "run", "agui", "websocket", "websocket"]
    )
    statuses = await sync_to_async(list)(
        Message.objects.filter(role=Message.Role.ASSISTANT).values_list("status", flat=True)
    )
    assert Message.Status.STREAMING not in statuses
    assert sorted(statuses).count(Message.Status.INCOMPLETE) == len(cut)
    assert len(statuses) == answers
