"""The one owner of background work: the drain's order, work added during it, a stop's grace."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from io import StringIO
from typing import Any

import httpx
import pytest
import respx
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from copilotedge import lifecycle
from copilotedge.exceptions import ShuttingDown
from copilotedge.models import Message, UsageRecord
from copilotedge.routing import CLOSE_SHUTTING_DOWN, Lifespan
from tests.helpers import OPENAI_URL, SlowStream, openai_chunk, read_stream, sse_body

pytestmark = pytest.mark.django_db(transaction=True)


class Turn:
    """Stands for a chat turn: the owner only needs an object to count."""


async def drip(log: list[str], count: int, delay: float) -> AsyncIterator[int]:
    for i in range(count):
        await asyncio.sleep(delay)
        log.append(f"read {i}")
        yield i


# The drain ----------------------------------------------------------------------------


async def test_the_drain_waits_for_the_turn_then_its_save_then_the_write() -> None:
    log: list[str] = []

    def write() -> None:
        log.append("written")

    async def save() -> None:
        await asyncio.sleep(0.05)
        log.append("saved")
        lifecycle.writer().submit(write)

    async def run_turn() -> None:
        turn = Turn()
        async for _ in lifecycle.interruptible(turn, drip(log, 3, 0.05)):
            pass
        log.append("turn ended")
        lifecycle.finished(turn)
        lifecycle.spawn(save())

    task = asyncio.create_task(run_turn())
    await asyncio.sleep(0.01)  # the turn has started its first read
    await lifecycle.drain()
    assert log == ["read 0", "read 1", "read 2", "turn ended", "saved", "written"]
    await task


async def test_work_added_during_the_drain_is_drained_too() -> None:
    log: list[str] = []

    async def later(depth: int) -> None:
        await asyncio.sleep(0.02)
        log.append(f"task {depth}")
        if depth < 3:
            lifecycle.spawn(later(depth + 1))
        else:
            lifecycle.writer().submit(lambda: log.append("write"))

    lifecycle.spawn(later(1))
    await lifecycle.drain()
    assert log == ["task 1", "task 2", "task 3", "write"]


async def test_a_chat_is_in_flight_until_its_task_ends() -> None:
    ended = asyncio.Event()

    async def chat() -> None:
        await asyncio.sleep(0.1)
        ended.set()

    lifecycle.track_chat(asyncio.create_task(chat()))
    await lifecycle.drain()
    assert ended.is_set()


async def test_a_drain_with_a_deadline_stops_waiting_for_turns_but_not_for_writes() -> None:
    turn = Turn()
    reads = lifecycle.interruptible(turn, drip([], 100, 0.05))
    reader = asyncio.create_task(anext(reads))
    written: list[int] = []
    lifecycle.writer().submit(lambda: written.append(1))
    started = time.monotonic()
    await lifecycle.drain(until=asyncio.get_running_loop().time() + 0.2)
    assert 0.15 < time.monotonic() - started < 1.0
    assert written == [1]
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


# A stop ---------------------------------------------------------------------------------


async def test_a_turn_that_finishes_within_the_grace_is_not_interrupted(settings: Any) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 5
    turn = Turn()

    async def run_turn() -> list[int]:
        got = [i async for i in lifecycle.interruptible(turn, drip([], 4, 0.05))]
        lifecycle.finished(turn)
        return got

    task = asyncio.create_task(run_turn())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await lifecycle.shut_down()
    assert time.monotonic() - started < 2.0
    assert await task == [0, 1, 2, 3]


async def test_past_the_grace_each_read_ends_with_shutting_down(settings: Any) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0.2
    turns = [Turn(), Turn()]

    async def run_turn(turn: Turn) -> BaseException | None:
        try:
            async for _ in lifecycle.interruptible(turn, drip([], 1000, 0.05)):
                pass
        except ShuttingDown as error:
            return error
        finally:
            lifecycle.finished(turn)
        return None

    # A face may read each batch in a task of its own (AG-UI does): the stop must find it.
    async def read_in_tasks(turn: Turn) -> BaseException | None:
        reads = lifecycle.interruptible(turn, drip([], 1000, 0.05))
        try:
            while True:
                await asyncio.ensure_future(anext(reads))
        except ShuttingDown as error:
            return error
        finally:
            lifecycle.finished(turn)

    tasks = [asyncio.create_task(run_turn(turns[0])), asyncio.create_task(read_in_tasks(turns[1]))]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await lifecycle.shut_down()
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < lifecycle.INTERRUPT_MARGIN
    results = await asyncio.gather(*tasks)
    assert [type(error) for error in results] == [ShuttingDown, ShuttingDown]
    assert results[0].code == "shutting_down"  # type: ignore[union-attr]


async def test_a_client_leaving_during_the_stop_stays_a_cancellation(settings: Any) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0
    turn = Turn()
    reads = lifecycle.interruptible(turn, drip([], 1000, 0.5))
    reader = asyncio.create_task(anext(reads))
    await asyncio.sleep(0.01)
    reader.cancel()  # the client hangs up...
    lifecycle.background().interrupt()  # ...as the stop interrupts the read
    with pytest.raises(asyncio.CancelledError):
        await reader
    lifecycle.finished(turn)


async def test_once_stopping_new_turns_are_refused(settings: Any) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0
    lifecycle.accepting()
    await lifecycle.shut_down()
    with pytest.raises(ShuttingDown):
        lifecycle.accepting()
    with pytest.raises(ShuttingDown), lifecycle.reading(Turn()):
        pass


async def test_a_stop_ends_a_streamed_answer_in_band_and_records_it(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any, user: Any
) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0.3
    # Two tokens, then upstream says nothing more for longer than the grace.
    body = SlowStream(sse_body(openai_chunk("Hello"), openai_chunk(" there"), done=False), 30.0)
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"})
    )
    from django.test import AsyncClient

    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        {"model": "@cf/meta/llama-3.1-8b-instruct", "stream": True,
         "messages": [{"role": "user", "content": "Hi"}]},
        content_type="application/json",
        headers=auth,
    )  # fmt: skip
    assert response.status_code == 200
    reading = asyncio.create_task(read_stream(response))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await lifecycle.shut_down()
    assert 0.25 < time.monotonic() - started < 0.3 + lifecycle.INTERRUPT_MARGIN
    frames = await reading
    assert frames[-2] == {
        "error": {
            "message": "The server is shutting down; try again shortly.",
            "type": "server_error",
            "param": None,
            "code": "shutting_down",
        }
    }
    assert frames[-1] == "[DONE]"
    [row] = [row async for row in UsageRecord.objects.all()]
    assert (row.outcome, row.error_code, row.completion_tokens) == (
        "incomplete",
        "shutting_down",
        2,
    )
    [answer] = [m async for m in Message.objects.filter(role=Message.Role.ASSISTANT)]
    assert (answer.status, answer.content) == (Message.Status.INCOMPLETE, "Hello there")
    assert body.closed  # upstream was hung up on


async def test_a_stop_ends_a_whole_answer_with_a_503_and_records_it(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0.2
    body = SlowStream(30.0, b"{}")  # upstream thinks for longer than the grace
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, stream=body, headers={"content-type": "application/json"})
    )
    from django.test import AsyncClient

    asking = asyncio.create_task(
        AsyncClient().post(
            "/copilotedge/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}]},
            content_type="application/json",
            headers=auth,
        )
    )
    await asyncio.sleep(0.1)
    await lifecycle.shut_down()
    response = await asking
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "shutting_down"
    [row] = [row async for row in UsageRecord.objects.all()]
    assert (row.outcome, row.error_code) == ("incomplete", "shutting_down")
    [answer] = [m async for m in Message.objects.filter(role=Message.Role.ASSISTANT)]
    assert answer.status == Message.Status.INCOMPLETE


# The ASGI wrapper -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.called = 0

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def test_during_a_stop_new_requests_get_a_503_and_new_sockets_are_closed(
    settings: Any,
) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0
    recorder = Recorder()
    site = Lifespan(recorder.app)

    async def connect() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    await site({"type": "http", "path": "/"}, connect, recorder.send)
    assert recorder.called == 1
    await lifecycle.shut_down()
    await site({"type": "http", "path": "/"}, connect, recorder.send)
    await site({"type": "websocket", "path": "/ws/"}, connect, recorder.send)
    assert recorder.called == 1
    start, body, close = recorder.sent
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "shutting_down"
    assert close == {"type": "websocket.close", "code": CLOSE_SHUTTING_DOWN}


async def test_the_lifespan_shutdown_drains_before_it_completes() -> None:
    written: list[str] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.shutdown.complete":
            sent.append(f"written: {written}")

    async def slow_save() -> None:
        await asyncio.sleep(0.1)
        lifecycle.writer().submit(lambda: written.append("row"))

    for message in ("lifespan.startup", "lifespan.shutdown"):
        queue.put_nowait({"type": message})
    lifecycle.spawn(slow_save())
    await Lifespan(Recorder().app)({"type": "lifespan"}, queue.get, send)
    assert sent == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "written: ['row']",
    ]


# Signals --------------------------------------------------------------------------------


@pytest.fixture
def server_handler() -> Iterator[list[int]]:
    """A SIGTERM handler standing for the server's own; restored afterwards."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_sigterm_drains_then_hands_the_signal_to_the_server(
    server_handler: list[int], settings: Any
) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = 0.2
    written: list[int] = []
    seen_by_server: list[list[int]] = []
    handed_on = asyncio.Event()

    def server(signum: int, frame: Any) -> None:
        seen_by_server.append(list(written))
        server_handler.append(signum)
        handed_on.set()

    async def save() -> None:
        await asyncio.sleep(0.1)
        lifecycle.writer().submit(lambda: written.append(1))

    lifecycle.handle_signals()
    chained = signal.getsignal(signal.SIGTERM)
    assert isinstance(chained, lifecycle._Chained)
    chained.previous = server
    lifecycle.spawn(save())
    signal.raise_signal(signal.SIGTERM)
    async with asyncio.timeout(5):
        await handed_on.wait()
    assert server_handler == [signal.SIGTERM]
    assert seen_by_server == [[1]]  # the drain was over when the server heard of it
    assert lifecycle.stopping()


async def test_a_signal_without_a_server_handler_is_left_alone() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        lifecycle.handle_signals()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


# Settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("grace", [-1, "soon", None])
def test_e070_a_bad_shutdown_grace(settings: Any, grace: Any) -> None:
    settings.COPILOTEDGE_SHUTDOWN_GRACE = grace
    assert [m.id for m in lifecycle.check_lifecycle()] == ["copilotedge.E070"]
    with pytest.raises(SystemCheckError, match="COPILOTEDGE_SHUTDOWN_GRACE"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_the_default_shutdown_grace_is_ten_seconds() -> None:
    from copilotedge.conf import settings

    assert settings.SHUTDOWN_GRACE == 10.0
    assert lifecycle.check_lifecycle() == []
