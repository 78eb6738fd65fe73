"""Circuit breakers: opening, failing fast, the half-open probe, sharing, fallbacks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import respx
from django.core.cache import caches
from django.test import AsyncClient

from copilotedge import lifecycle
from copilotedge.exceptions import ServiceUnavailable
from copilotedge.models import UsageRecord
from copilotedge.upstream import breaker_stores
from copilotedge.upstream import breakers as breaker
from copilotedge.upstream.breaker_stores import CacheStore, LocalStore
from copilotedge.upstream.breakers import CircuitBreaker
from tests.helpers import OPENAI_URL, capacity_error, reset_circuits

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/copilotedge/v1/chat/completions"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
SMALL = "@cf/meta/llama-3.2-3b-instruct"


@pytest.fixture(autouse=True)
def small_circuit(settings: Any) -> Any:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 1
    settings.COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.COPILOTEDGE_CIRCUIT_COOLDOWN = 0.5
    settings.COPILOTEDGE_RESPONSE_CACHE = False
    reset_circuits()
    yield settings
    reset_circuits()


def whole(model: str = MODEL) -> httpx.Response:
    return httpx.Response(
        200,
        json={"model": model, "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]},
    )


async def chat(auth: dict[str, str]) -> Any:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    return await AsyncClient().post(URL, body, content_type="application/json", headers=auth)


async def test_failures_open_the_circuit_and_then_it_fails_fast(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=httpx.Response(500))
    for _ in range(3):
        assert (await chat(auth)).status_code == 502
    assert breaker.circuit_states() == {"workers-ai": "open"}
    started = time.monotonic()
    response = await chat(auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response["Retry-After"] == "1"
    assert route.call_count == 3  # the fourth request never left
    assert elapsed < 0.1
    await lifecycle.drain()
    last = await UsageRecord.objects.order_by("-created_at").afirst()
    assert last is not None
    assert (last.status_code, last.attempts, last.error_code) == (503, 0, "service_unavailable")


async def test_errors_that_are_not_the_upstreams_fault_do_not_open_it(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    upstream.post(OPENAI_URL).mock(
        side_effect=[capacity_error(3036), httpx.Response(400), capacity_error(3040)] * 2
    )
    for _ in range(6):
        assert (await chat(auth)).status_code in (400, 429)
    assert breaker.circuit_states()["workers-ai"] == "closed"


async def test_after_the_cooldown_one_probe_closes_it(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    upstream.post(OPENAI_URL).mock(side_effect=[httpx.Response(500)] * 3 + [whole()] * 5)
    for _ in range(3):
        await chat(auth)
    assert (await chat(auth)).status_code == 503
    await asyncio.sleep(0.55)
    assert breaker.circuit_states()["workers-ai"] == "half_open"
    assert (await chat(auth)).status_code == 200
    assert breaker.circuit_states()["workers-ai"] == "closed"
    assert (await chat(auth)).status_code == 200


async def test_a_failed_probe_opens_it_again(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=httpx.Response(500))
    for _ in range(3):
        await chat(auth)
    await asyncio.sleep(0.55)
    assert (await chat(auth)).status_code == 502  # the probe
    assert breaker.circuit_states()["workers-ai"] == "open"
    assert (await chat(auth)).status_code == 503
    assert route.call_count == 4


async def test_only_one_probe_at_a_time(settings: Any) -> None:
    circuit = CircuitBreaker("probe-test")
    for _ in range(3):
        await circuit.record_failure(False)
    await asyncio.sleep(0.55)
    assert await circuit.allows_call() is True
    with pytest.raises(Exception) as refused:
        await circuit.allows_call()
    assert getattr(refused.value, "status_code", None) == 503
    await circuit.arelease(True)  # the probe was cancelled: the slot is free again
    assert await circuit.allows_call() is True
    await circuit.record_success(True)
    assert circuit.state() == breaker.CLOSED
    circuit.reset()


async def test_an_open_circuit_sends_requests_to_the_fallback(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_FALLBACKS = {
        MODEL: [{"model": "backup", "base_url": "https://backup.test/v1", "name": "backup"}]
    }
    primary = upstream.post(OPENAI_URL).mock(return_value=httpx.Response(500))
    backup = upstream.post("https://backup.test/v1/chat/completions").mock(
        return_value=whole("backup")
    )
    for _ in range(3):
        assert (await chat(auth)).json()["model"] == "backup"
    assert breaker.circuit_states() == {"workers-ai": "open", "backup": "closed"}
    response = await chat(auth)
    assert response.json()["model"] == "backup"
    assert (primary.call_count, backup.call_count) == (3, 4)


async def test_failures_outside_the_window_do_not_add_up(settings: Any) -> None:
    settings.COPILOTEDGE_CIRCUIT_FAILURE_WINDOW = 0.2
    circuit = CircuitBreaker("window-test")
    await circuit.record_failure(False)
    await circuit.record_failure(False)
    await asyncio.sleep(0.25)
    await circuit.record_failure(False)
    assert circuit.state() == breaker.CLOSED
    circuit.reset()


def test_local_store_expires_and_counts() -> None:
    store = LocalStore()
    assert store.incr("k", 0.05) == 1
    assert store.incr("k", 0.05) == 2
    assert store.add("p", 1, 10) is True
    assert store.add("p", 1, 10) is False
    time.sleep(0.06)
    assert store.get("k") is None
    assert store.incr("k", 1) == 1


async def test_state_is_shared_through_redis_when_the_cache_is_redis(settings: Any) -> None:
    if not breaker_stores.is_shared_cache("default"):
        pytest.skip("the suite's cache is not Redis (REDIS_URL unset)")
    circuit = CircuitBreaker("shared-test")
    for _ in range(3):
        await circuit.record_failure(False)
    # What every other process reads: the key in Redis, not this process's memory.
    open_until = caches["default"].get("copilotedge:circuit:shared-test:open_until")
    assert open_until is not None and open_until > time.time()
    assert breaker_stores._local.get("copilotedge:circuit:shared-test:open_until") is None
    circuit.reset()


async def test_a_dead_shared_cache_falls_back_to_memory(settings: Any) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "dead": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        },
    }
    settings.COPILOTEDGE_CACHE_ALIAS = "dead"
    circuit = CircuitBreaker("dead-cache-test")
    assert isinstance(circuit._store, CacheStore)
    for _ in range(3):
        await circuit.record_failure(False)
    assert circuit.state() == breaker.OPEN
    with pytest.raises(Exception) as refused:
        await circuit.allows_call()
    assert getattr(refused.value, "status_code", None) == 503
    circuit.reset()
    assert circuit.state() == breaker.CLOSED


async def test_a_few_failures_among_many_answers_do_not_open_the_circuit() -> None:
    circuit = breaker.CircuitBreaker("ratio-test")
    for _ in range(40):
        await circuit.record_success(await circuit.allows_call())
    for _ in range(10):  # 10 of 50 failed: 20%, under the default 50%
        await circuit.record_failure(await circuit.allows_call())
    assert await circuit.astate() == "closed"
    for _ in range(40):  # now 50 of 90 failed
        await circuit.record_failure(await circuit.allows_call())
        if await circuit.astate() == "open":
            break
    assert await circuit.astate() == "open"


def needs_redis() -> None:
    if not breaker_stores.is_shared_cache("default"):
        pytest.skip("the suite's cache is not Redis (REDIS_URL unset)")


async def test_on_redis_healthy_calls_read_the_state_once_and_count_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_redis()
    circuit = CircuitBreaker("quiet-test")
    circuit.reset()
    reads: list[str] = []
    read = CacheStore.get
    monkeypatch.setattr(CacheStore, "get", lambda store, key: reads.append(key) or read(store, key))
    for _ in range(10):
        await circuit.record_success(await circuit.allows_call())
    await lifecycle.drain()
    assert len(reads) == 1  # then trusted for STATE_TTL
    assert caches["default"].get(circuit._window_key("calls")) == 10  # every success counted
    circuit.reset()


async def test_on_redis_another_process_opening_the_circuit_is_seen_within_the_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_redis()
    monkeypatch.setattr(breaker, "STATE_TTL", 0.1)
    circuit = CircuitBreaker("elsewhere-test")
    circuit.reset()
    assert await circuit.allows_call() is False
    # Another process opens it: its key appears in Redis.
    caches["default"].set(circuit._key("open_until"), time.time() + 30, timeout=60)
    await asyncio.sleep(0.15)
    with pytest.raises(ServiceUnavailable):
        await circuit.allows_call()
    circuit.reset()
