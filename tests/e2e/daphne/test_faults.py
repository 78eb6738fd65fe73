"""Fault injection end to end: the real emulator upstream, the app under real daphne.

For every fault: what the client sees, that no upstream stream is left open (the
emulator's ``open_streams`` and the outcomes in its request log), and the usage row.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from django.db import OperationalError
from django.test import AsyncClient

from copilotedge import lifecycle
from copilotedge.models import UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.servers import DaphneServer, RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

PATH = "/copilotedge/v1/chat/completions"
TOKENS = 12
FIRST_TOKEN_TIMEOUT = 1.0
READ_TIMEOUT = 1.0


def reliability(api_base_url: str, **extra: Any) -> dict[str, Any]:
    """Settings for a server under test: quick retries and timeouts, a high breaker bar."""
    return {
        "COPILOTEDGE_API_BASE_URL": api_base_url,
        "COPILOTEDGE_RETRY_ATTEMPTS": 3,
        "COPILOTEDGE_RETRY_BASE_DELAY": 0.05,
        "COPILOTEDGE_RETRY_MAX_DELAY": 2.0,
        "COPILOTEDGE_RETRY_DEADLINE": 8.0,
        "COPILOTEDGE_FIRST_TOKEN_TIMEOUT": FIRST_TOKEN_TIMEOUT,
        "COPILOTEDGE_READ_TIMEOUT": READ_TIMEOUT,
        "COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD": 1000,
        "COPILOTEDGE_RESPONSE_CACHE": True,
        **extra,
    }


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorApp(tokens=TOKENS, token_delay=0.01)) as server:
        yield server


@pytest.fixture(scope="module")
def site(django_db_setup: None, emulator: EmulatorServer) -> Iterator[DaphneServer]:
    server = DaphneServer(reliability(emulator.api_base_url)).start()
    yield server
    errors = server.stop()
    assert "Traceback" not in errors, errors


@pytest.fixture(autouse=True)
def clean_emulator(emulator: EmulatorServer) -> Iterator[None]:
    emulator.app.clear_faults()
    emulator.app.clear_requests()
    yield
    emulator.app.clear_faults()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def body(content: str = "Tell me something", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def events_of(raw: str) -> list[Any]:
    lines = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


async def settled(emulator: EmulatorServer, count: int, within: float = 5.0) -> list[Any]:
    """The emulator's log once ``count`` requests ended and no stream is open."""
    app = emulator.app
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        log = list(app.requests)
        if len(log) >= count and all(e["outcome"] for e in log) and app.open_streams == 0:
            return log
        await asyncio.sleep(0.02)
    raise AssertionError(f"upstream not settled: {app.requests!r}, open {app.open_streams}")


async def ledger(count: int = 1, within: float = 5.0) -> list[UsageRecord]:
    """The usage rows, once the server process has written ``count`` of them."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = [r async for r in UsageRecord.objects.order_by("created_at")]
        if len(rows) >= count:
            await asyncio.sleep(0.1)  # nothing more arrives
            rows = [r async for r in UsageRecord.objects.order_by("created_at")]
            assert len(rows) == count, rows
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} usage rows")


async def stream_chat(
    http: httpx.AsyncClient, site: DaphneServer, auth: dict[str, str], **extra: Any
) -> tuple[httpx.Response, list[Any]]:
    payload = body(**extra) | {"stream": True}
    async with http.stream("POST", site.url + PATH, json=payload, headers=auth) as response:
        raw = (await response.aread()).decode()
    return response, events_of(raw) if response.status_code == 200 else []


# -- Upstream errors before the first byte --


async def test_a_500_is_retried_and_the_client_never_knows(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("error:500:0")
    response, events = await stream_chat(http, site, auth)
    assert response.status_code == 200
    assert len(text_of(events).split()) == TOKENS
    assert events[-1] == "[DONE]"
    log = await settled(emulator, 2)
    assert [e["outcome"] for e in log] == ["error", "completed"]
    [row] = await ledger()
    assert (row.outcome, row.attempts, row.status_code, row.error_code) == ("ok", 2, 200, "")
    assert row.completion_tokens == TOKENS


async def test_a_500_that_persists_is_a_502_after_every_attempt(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await http.post(site.url + PATH, json=body("[[fault:error:500:0]] hi"), headers=auth)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    log = await settled(emulator, 3)
    assert [e["outcome"] for e in log] == ["error"] * 3
    [row] = await ledger()
    assert (row.outcome, row.attempts, row.status_code) == ("error", 3, 502)


async def test_capacity_429_with_retry_after_is_retried_after_waiting(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("error:429:3040", retry_after=0.7)
    started = time.monotonic()
    response = await http.post(site.url + PATH, json=body(), headers=auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(response.json()["choices"][0]["message"]["content"].split()) == TOKENS
    log = await settled(emulator, 2)
    assert [e["outcome"] for e in log] == ["error", "completed"]
    assert log[1]["started"] - log[0]["ended"] >= 0.7  # never sooner than Retry-After
    assert elapsed < 0.7 + 1.0
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("ok", 2)


async def test_daily_quota_3036_is_a_429_at_once(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await http.post(
        site.url + PATH, json=body("[[fault:error:429:3036]] hi", stream=True), headers=auth
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_quota_exceeded"
    log = await settled(emulator, 1)
    assert len(log) == 1
    [row] = await ledger()
    assert (row.outcome, row.attempts, row.status_code) == ("error", 1, 429)
    assert row.error_code == "upstream_quota_exceeded"


async def test_connection_refused_is_retried_then_a_502(
    emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # Bound but not listening: connections are refused, and the port cannot be handed
    # to the site itself (a free port alone once was, and the site answered its own 404).
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{refusing.getsockname()[1]}/client/v4"
        with DaphneServer(reliability(closed)) as site:
            started = time.monotonic()
            response = await http.post(site.url + PATH, json=body(stream=True), headers=auth)
            elapsed = time.monotonic() - started
            [row] = await ledger()  # before the server stops: the ledger writes in batches
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert elapsed < 2.0
    assert (row.outcome, row.attempts, row.status_code) == ("error", 3, 502)


async def test_a_hang_before_the_first_byte_is_cut_and_retried(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("hang:30")
    started = time.monotonic()
    response, events = await stream_chat(http, site, auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(text_of(events).split()) == TOKENS
    assert FIRST_TOKEN_TIMEOUT <= elapsed < FIRST_TOKEN_TIMEOUT + 1.5
    log = await settled(emulator, 2)
    assert [e["outcome"] for e in log] == ["client_disconnected", "completed"]
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("ok", 2)


async def test_a_whole_answer_that_hangs_is_cut_by_the_read_timeout_and_retried(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # Not streamed, the upstream says nothing until its answer is whole: a hang and a long
    # generation look the same, so the read timeout (longest silence) bounds the attempt.
    emulator.app.add_fault("hang:30")
    started = time.monotonic()
    response = await http.post(site.url + PATH, json=body(), headers=auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 1.5
    log = await settled(emulator, 2)
    assert [e["outcome"] for e in log] == ["client_disconnected", "completed"]
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("ok", 2)


async def test_a_stall_before_the_first_token_is_retried_too(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("stall:0:30")  # headers and the role frame, then nothing
    _, events = await stream_chat(http, site, auth)
    assert len(text_of(events).split()) == TOKENS
    log = await settled(emulator, 2)
    assert [e["outcome"] for e in log] == ["client_disconnected", "completed"]
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("ok", 2)


# -- Faults after the first byte: in-band errors, never a hang, never a fake "stop" --


def assert_in_band_error(events: list[Any], code: str, tokens: int) -> None:
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == code
    assert len(text_of(events).split()) == tokens
    finishes = [
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
    ]
    assert not any(finishes)


async def test_a_stall_mid_stream_ends_with_an_in_band_timeout(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    started = time.monotonic()
    response, events = await stream_chat(http, site, auth, content="[[fault:stall:5:30]] hi")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert_in_band_error(events, "upstream_timeout", 5)
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 1.5
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] == "client_disconnected"
    [row] = await ledger()
    assert (row.outcome, row.error_code, row.attempts) == ("incomplete", "upstream_timeout", 1)
    assert row.completion_tokens > 0


async def test_a_dropped_stream_ends_with_an_in_band_error(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    _, events = await stream_chat(http, site, auth, content="[[fault:drop:4]] hi")
    assert_in_band_error(events, "upstream_incomplete", 4)
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] == "dropped"
    [row] = await ledger()
    assert (row.outcome, row.error_code) == ("incomplete", "upstream_incomplete")


async def test_a_malformed_frame_ends_with_an_in_band_error(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    _, events = await stream_chat(http, site, auth, content="[[fault:malformed:3]] hi")
    assert_in_band_error(events, "upstream_malformed", 3)
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] in ("completed", "client_disconnected")
    [row] = await ledger()
    assert (row.outcome, row.error_code) == ("incomplete", "upstream_malformed")


async def test_a_broken_whole_answer_is_retried_as_nothing_was_sent_yet(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("malformed:0")
    emulator.app.add_fault("drop:2")
    response = await http.post(site.url + PATH, json=body(), headers=auth)
    assert response.status_code == 200
    assert len(response.json()["choices"][0]["message"]["content"].split()) == TOKENS
    log = await settled(emulator, 3)
    assert [e["outcome"] for e in log] == ["completed", "dropped", "completed"]
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("ok", 3)


# -- The client goes away --


async def test_client_gone_while_upstream_has_not_answered(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            site.url + PATH,
            json=body("[[fault:hang:0.8]] hi", stream=True),
            headers=auth,
            timeout=httpx.Timeout(5, read=0.3),
        )
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] == "client_disconnected"
    [row] = await ledger()
    assert (row.outcome, row.status_code, row.attempts) == ("cancelled", 499, 1)


async def test_client_gone_while_waiting_to_retry(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.app.add_fault("error:429:3040", retry_after=1.5)
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            site.url + PATH, json=body(), headers=auth, timeout=httpx.Timeout(5, read=0.4)
        )
    await asyncio.sleep(1.6)
    log = await settled(emulator, 1)
    assert len(log) == 1  # the retry was never made
    [row] = await ledger()
    assert (row.outcome, row.attempts) == ("cancelled", 1)


async def test_client_gone_mid_stream(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    payload = body("[[fault:slow:0.1]] hi", stream=True)
    async with http.stream("POST", site.url + PATH, json=payload, headers=auth) as response:
        assert response.status_code == 200
        seen = ""
        async for chunk in response.aiter_text():
            seen += chunk
            if text_of(events_of(seen)).count(" ") >= 2:
                break
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] == "client_disconnected"
    assert 2 <= entry["tokens_sent"] < TOKENS
    [row] = await ledger()
    assert (row.outcome, row.status_code) == ("cancelled", 499)
    assert 0 < row.completion_tokens < TOKENS


async def test_client_gone_while_a_whole_answer_is_prepared(
    site: DaphneServer, emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            site.url + PATH,
            json=body("[[fault:slow:0.1]] hi"),
            headers=auth,
            timeout=httpx.Timeout(5, read=0.3),
        )
    [entry] = await settled(emulator, 1)
    assert entry["outcome"] == "client_disconnected"
    [row] = await ledger()
    assert row.outcome == "cancelled"


# -- Redis dies and comes back --


@pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed")
async def test_redis_killed_mid_run_requests_still_succeed(
    emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    redis = RedisServer().start()
    server = DaphneServer(reliability(emulator.api_base_url), env={"REDIS_URL": redis.url})
    try:
        server.start()
        deterministic = body("What is the answer?", temperature=0)

        async def ask() -> httpx.Response:
            return await http.post(server.url + PATH, json=deterministic, headers=auth)

        first, second = await ask(), await ask()
        assert (first.status_code, first.headers["X-CopilotEdge-Cache"]) == (200, "MISS")
        assert (second.status_code, second.headers["X-CopilotEdge-Cache"]) == (200, "HIT")
        redis.kill()
        for _ in range(3):
            response = await ask()
            assert response.status_code == 200
            assert response.headers["X-CopilotEdge-Cache"] == "BYPASS"
            assert response.json()["choices"][0]["message"]["content"]
        streamed, events = await stream_chat(http, server, auth, content="And streamed?")
        assert streamed.status_code == 200 and events[-1] == "[DONE]"
        redis.start()  # same port: the server reconnects by itself
        after = await ask()
        assert (after.status_code, after.headers["X-CopilotEdge-Cache"]) == (200, "MISS")
        assert (await ask()).headers["X-CopilotEdge-Cache"] == "HIT"
        rows = await ledger(8)
    finally:
        errors = server.stop()
        redis.kill()
    # Logged (once per 30 s), never raised.
    assert "Response cache 'default' unavailable (read); serving without it." in errors
    assert "Exception inside application" not in errors
    assert "Internal Server Error" not in errors
    assert [r.cache_hit for r in rows] == [False, True, False, False, False, False, False, True]
    assert all(r.outcome == "ok" for r in rows)
    assert len(emulator.app.requests) == 6


@pytest.mark.skipif(not RedisServer.available(), reason="redis-server is not installed")
async def test_an_open_circuit_is_shared_by_every_process_through_redis(
    emulator: EmulatorServer, http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with RedisServer() as redis:
        caches = {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis.url,
                "KEY_PREFIX": "circuit-sharing",  # the same for both processes
            }
        }
        overrides = reliability(
            emulator.api_base_url,
            CACHES=caches,
            COPILOTEDGE_RETRY_ATTEMPTS=1,
            COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD=2,
            COPILOTEDGE_CIRCUIT_COOLDOWN=30,
        )
        with DaphneServer(overrides) as one, DaphneServer(overrides) as two:
            emulator.app.add_fault("error:500:0", count=2)
            for _ in range(2):
                assert (
                    await http.post(one.url + PATH, json=body(), headers=auth)
                ).status_code == 502
            timings = []
            for _ in range(5):
                started = time.monotonic()
                response = await http.post(two.url + PATH, json=body(), headers=auth)
                timings.append(time.monotonic() - started)
                assert response.status_code == 503
                assert 25 <= int(response.headers["Retry-After"]) <= 30
            rows = await ledger(7)
        assert len(emulator.app.requests) == 2  # process two never called upstream
        assert [(r.status_code, r.attempts) for r in rows] == [(502, 1)] * 2 + [(503, 0)] * 5
        # Failing fast costs a key lookup, not an upstream timeout (loaded CI: generous bound).
        assert sorted(timings)[2] < 0.1, timings
        print(f"fail-fast 503 from the other process: {[round(t * 1000) for t in timings]} ms")


# -- The database fails while usage is recorded (in process, where it can be patched) --


async def test_a_failing_usage_write_never_reaches_the_client(
    emulator: EmulatorServer,
    auth: dict[str, str],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in reliability(emulator.api_base_url).items():
        setattr(settings, name, value)

    def broken_batch(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("disk I/O error")

    async def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OperationalError("disk I/O error")

    # The database is down: the batch insert fails, and so does each record on its own.
    monkeypatch.setattr(UsageRecord.objects, "bulk_create", broken_batch)
    monkeypatch.setattr(UsageRecord, "asave", broken)
    client = AsyncClient()
    whole = await client.post(PATH, body(), content_type="application/json", headers=auth)
    assert whole.status_code == 200
    streamed: Any = await client.post(
        PATH, body(stream=True), content_type="application/json", headers=auth
    )
    raw = b"".join([chunk async for chunk in streamed.streaming_content]).decode()
    assert events_of(raw)[-1] == "[DONE]"
    await lifecycle.drain()
    failures = [r for r in caplog.records if r.getMessage().startswith("Could not save usage")]
    assert len(failures) == 2
    assert "'completion_tokens': 12" in failures[0].getMessage()  # the record, logged whole
    monkeypatch.undo()
    assert await UsageRecord.objects.acount() == 0
    await settled(emulator, 2)


async def test_a_transient_usage_write_failure_is_retried(
    emulator: EmulatorServer, auth: dict[str, str], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in reliability(emulator.api_base_url).items():
        setattr(settings, name, value)
    real = UsageRecord.objects.bulk_create
    failures = iter([OperationalError("database is locked")])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(UsageRecord.objects, "bulk_create", flaky)
    response = await AsyncClient().post(PATH, body(), content_type="application/json", headers=auth)
    assert response.status_code == 200
    await lifecycle.drain()
    [row] = [r async for r in UsageRecord.objects.all()]
    assert (row.outcome, row.completion_tokens) == ("ok", TOKENS)
