"""``GET health``: liveness and readiness for load balancers, with nothing secret in it."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.db.utils import OperationalError
from django.test import AsyncClient, override_settings

from copilotedge import monitoring
from copilotedge.conf import settings
from copilotedge.upstream.breakers import CircuitBreaker

URL = "/copilotedge/health"
BROKEN_CACHE = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Nothing listens on port 1: every operation fails fast with a connection error.
    "broken": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
    },
}

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ready_when_the_database_and_cache_answer() -> None:
    response = await AsyncClient().get(URL)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["status"] == "ok" and body["live"] is True and body["ready"] is True
    checks = body["checks"]
    assert checks["database"]["ok"] is True and checks["database"]["ms"] >= 0
    assert checks["cache"]["ok"] is True and checks["cache"]["required"] is False
    assert checks["upstream"] == {"circuits": {"workers-ai": "closed"}}
    assert "x-ratelimit-limit-requests" not in response  # load balancers are never limited


async def test_says_nothing_secret() -> None:
    text = json.dumps((await AsyncClient().get(URL)).json())
    for secret in ("test-account", "test-token", "upstream.test", "sqlite", "copilotedge-tests"):
        assert secret not in text


async def test_unready_when_the_database_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def down() -> None:
        raise OperationalError("could not connect to server at db.internal:5432 as admin")

    monkeypatch.setattr(monitoring, "_select_one", down)
    response = await AsyncClient().get(URL)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["ready"] is False
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert "db.internal" not in response.content.decode()


@override_settings(COPILOTEDGE_HEALTH_TIMEOUT=0.2)
async def test_a_hanging_database_counts_as_down(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(monitoring, "_database", hang)
    started = asyncio.get_running_loop().time()
    response = await AsyncClient().get(URL)
    assert asyncio.get_running_loop().time() - started < 2
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["error"] == "TimeoutError"


@override_settings(CACHES=BROKEN_CACHE, COPILOTEDGE_CACHE_ALIAS="broken")
async def test_a_broken_cache_degrades_while_rate_limits_fail_open() -> None:
    response = await AsyncClient().get(URL)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded" and body["ready"] is True
    assert body["checks"]["cache"]["ok"] is False


@override_settings(
    CACHES=BROKEN_CACHE, COPILOTEDGE_CACHE_ALIAS="broken", COPILOTEDGE_RATE_LIMIT_FAIL_OPEN=False
)
async def test_a_broken_cache_is_unready_when_rate_limits_fail_closed() -> None:
    response = await AsyncClient().get(URL)
    assert response.status_code == 503
    assert response.json()["checks"]["cache"] == {
        **response.json()["checks"]["cache"],
        "ok": False,
        "required": True,
    }


GATEWAY = "https://gateway.example/v1/acct-1234secret/edge/openai"


@override_settings(
    COPILOTEDGE_FALLBACKS={"@cf/meta/llama-3.1-8b-instruct": [{"model": "m", "base_url": GATEWAY}]}
)
async def test_an_open_circuit_is_reported_and_degrades() -> None:
    breaker = CircuitBreaker("workers-ai")
    for _ in range(settings.CIRCUIT_FAILURE_THRESHOLD):
        await breaker.record_failure(probe=False)
    response = await AsyncClient().get(URL)
    assert response.status_code == 200  # every process shares the upstream: stay in rotation
    body = response.json()
    assert body["status"] == "degraded"
    # A fallback named by its URL is shown by host only: the path holds an account id.
    assert body["checks"]["upstream"] == {
        "circuits": {"workers-ai": "open", "gateway.example": "closed"}
    }
    assert "acct-1234secret" not in response.content.decode()


async def test_liveness_probe_skips_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    def down() -> None:
        raise OperationalError("down")

    monkeypatch.setattr(monitoring, "_select_one", down)
    response = await AsyncClient().get(URL, {"probe": "liveness"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "live": True}


async def test_only_get() -> None:
    response = await AsyncClient().post(URL)
    assert response.status_code == 405 and response["Allow"] == "GET"
