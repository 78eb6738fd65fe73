"""``GET metrics``: Prometheus text for staff or the metrics token, fed by the usage ledger."""

from __future__ import annotations

import asyncio
import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings
from prometheus_client import REGISTRY

from copilotedge.conf import settings
from copilotedge.models import UsageRecord
from copilotedge.upstream.breakers import CircuitBreaker
from copilotedge.usage import metrics
from tests.helpers import OPENAI_URL, UpstreamBody, openai_chunk, respond_with, sse_chunks
from tests.servers import DaphneServer, free_port

URL = "/copilotedge/metrics"
TOKEN = "metrics-token-0123456789abcdef"
MODEL = "@cf/meta/llama-3.1-8b-instruct"

pytestmark = pytest.mark.django_db


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@override_settings(COPILOTEDGE_METRICS_TOKEN=TOKEN)
def test_the_bearer_token_or_a_staff_session_gets_in(user: Any) -> None:
    response = Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "# TYPE copilotedge_requests_total counter" in response.content.decode()
    staff = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(URL).status_code == 200


@override_settings(COPILOTEDGE_METRICS_TOKEN=TOKEN)
def test_everyone_else_gets_an_openai_error(user: Any) -> None:
    anonymous = Client().get(URL)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    wrong = Client().get(URL, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    signed_in = Client()
    signed_in.force_login(user)  # not staff
    refused = signed_in.get(URL)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert Client().post(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_no_configured_token_means_no_token_gets_in() -> None:
    assert Client().get(URL, headers={"Authorization": "Bearer "}).status_code == 401
    assert Client().get(URL, headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_usage_record_updates_every_request_metric() -> None:
    labels = {"protocol": "websocket", "model": MODEL}
    before = {
        "requests": sample("copilotedge_requests_total", **labels, outcome="incomplete"),
        "prompt": sample("copilotedge_tokens_total", **labels, kind="prompt"),
        "completion": sample("copilotedge_tokens_total", **labels, kind="completion"),
        "cost": sample("copilotedge_cost_usd_total", model=MODEL),
        "latency": sample("copilotedge_request_duration_seconds_count", protocol="websocket"),
        "slow": sample(
            "copilotedge_request_duration_seconds_bucket", protocol="websocket", le="2.5"
        ),
        "ttft": sample("copilotedge_time_to_first_token_seconds_sum", protocol="websocket"),
        "miss": sample("copilotedge_cache_lookups_total", result="miss"),
        "errors": sample("copilotedge_upstream_errors_total", code="upstream_timeout"),
    }
    record = UsageRecord(
        protocol="websocket",
        model_requested=MODEL,
        model_served=MODEL,
        prompt_tokens=30,
        completion_tokens=12,
        cost=Decimal("0.25"),
        outcome="incomplete",
        latency_ms=3000,
        ttft_ms=400,
    )
    metrics.observe_record(
        record, cache_status=metrics.CACHE_MISS, upstream_error="upstream_timeout"
    )
    assert sample("copilotedge_requests_total", **labels, outcome="incomplete") == (
        before["requests"] + 1
    )
    assert sample("copilotedge_tokens_total", **labels, kind="prompt") == before["prompt"] + 30
    assert sample("copilotedge_tokens_total", **labels, kind="completion") == (
        before["completion"] + 12
    )
    assert sample("copilotedge_cost_usd_total", model=MODEL) == pytest.approx(before["cost"] + 0.25)
    assert sample("copilotedge_request_duration_seconds_count", protocol="websocket") == (
        before["latency"] + 1
    )
    # 3 s is above the 2.5 s bucket.
    assert (
        sample("copilotedge_request_duration_seconds_bucket", protocol="websocket", le="2.5")
        == before["slow"]
    )
    assert sample("copilotedge_time_to_first_token_seconds_sum", protocol="websocket") == (
        pytest.approx(before["ttft"] + 0.4)
    )
    assert sample("copilotedge_cache_lookups_total", result="miss") == before["miss"] + 1
    assert sample("copilotedge_upstream_errors_total", code="upstream_timeout") == (
        before["errors"] + 1
    )


@override_settings(COPILOTEDGE_METRICS_TOKEN=TOKEN)
async def test_a_scrape_reports_the_breakers_current_state() -> None:
    breaker = CircuitBreaker("workers-ai")
    for _ in range(settings.CIRCUIT_FAILURE_THRESHOLD):
        await breaker.record_failure(probe=False)
    scrape = await AsyncClient().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert 'copilotedge_circuit_state{upstream="workers-ai"} 2.0' in scrape.content.decode()
    breaker.reset()
    scrape = await AsyncClient().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert 'copilotedge_circuit_state{upstream="workers-ai"} 0.0' in scrape.content.decode()


def test_streams_rejections_and_circuit_state() -> None:
    before = sample("copilotedge_open_streams", protocol="agui")
    with metrics.track_stream("agui"):
        assert sample("copilotedge_open_streams", protocol="agui") == before + 1
    assert sample("copilotedge_open_streams", protocol="agui") == before
    rejected = sample("copilotedge_rate_limit_rejections_total", limit="tokens")
    metrics.observe_rejection("tokens")
    assert sample("copilotedge_rate_limit_rejections_total", limit="tokens") == rejected + 1
    metrics.set_circuit_state("workers-ai", metrics.CIRCUIT_OPEN)
    assert sample("copilotedge_circuit_state", upstream="workers-ai") == 2
    metrics.set_circuit_state("workers-ai", metrics.CIRCUIT_CLOSED)
    assert sample("copilotedge_circuit_state", upstream="workers-ai") == 0


@pytest.mark.django_db(transaction=True)
async def test_a_stream_is_open_while_it_is_being_served(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    # "b" and the end come 0.5 s after "a": the turn is streaming in between.
    body = UpstreamBody(*sse_chunks(openai_chunk("a"), openai_chunk("b")), delay=0.5)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    before = sample("copilotedge_open_streams", protocol="openai")
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ),
        content_type="application/json",
        headers=auth,
    )
    chunks = aiter(response.streaming_content)
    received = b""
    while b'"a"' not in received:
        received += await anext(chunks)
    assert sample("copilotedge_open_streams", protocol="openai") == before + 1
    async for _ in chunks:
        pass
    assert sample("copilotedge_open_streams", protocol="openai") == before


async def test_the_event_loop_lag_is_measured_once_streams_run() -> None:
    before = sample("copilotedge_event_loop_lag_seconds_count")
    with metrics.track_stream("openai"):
        await asyncio.sleep(0)  # the monitor starts its first 100 ms timer
        time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop on purpose: the timer fires late
        await asyncio.sleep(0.35)
    count = sample("copilotedge_event_loop_lag_seconds_count")
    assert count >= before + 2
    # The blocked wake-up was later than 25 ms.
    assert sample("copilotedge_event_loop_lag_seconds_bucket", le="0.025") < count


@pytest.mark.django_db(transaction=True)
async def test_rate_limit_rejections_are_counted(
    upstream: respx.MockRouter, api_key: Any, auth: dict[str, str]
) -> None:
    key, _ = api_key
    key.requests_per_minute = 1
    await key.asave()
    upstream.post(OPENAI_URL).respond(
        200, json={"choices": [{"message": {"content": "Hi"}}], "usage": {"prompt_tokens": 1}}
    )
    before = sample("copilotedge_rate_limit_rejections_total", limit="requests")
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    client = AsyncClient()
    statuses = [
        (
            await client.post(
                "/copilotedge/v1/chat/completions",
                body,
                content_type="application/json",
                headers=auth,
            )
        ).status_code
        for _ in range(2)
    ]
    assert statuses == [200, 429]
    assert sample("copilotedge_rate_limit_rejections_total", limit="requests") == before + 1
    # Scrapes are not rate limited (nor counted against anyone).
    with override_settings(COPILOTEDGE_METRICS_TOKEN=TOKEN):
        scrape = await client.get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert scrape.status_code == 200 and "x-ratelimit-limit-requests" not in scrape


def _requests_total(text: str, protocol: str, outcome: str) -> float:
    pattern = (
        rf'^copilotedge_requests_total\{{[^}}]*model="{re.escape(MODEL)}"'
        rf'[^}}]*outcome="{outcome}"[^}}]*protocol="{protocol}"[^}}]*\}} (\S+)$'
    )
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


@pytest.mark.django_db(transaction=True)
def test_multi_process_servers_report_the_sum_of_every_process(
    api_key: Any, tmp_path: Path
) -> None:
    """Two daphne processes share PROMETHEUS_MULTIPROC_DIR; either one's scrape counts both."""
    unreachable = f"http://127.0.0.1:{free_port()}/client/v4"  # nothing listens there
    overrides = {
        "COPILOTEDGE_API_BASE_URL": unreachable,
        "COPILOTEDGE_METRICS_TOKEN": TOKEN,
        # One attempt each and no breaker in the way: one error row per request.
        "COPILOTEDGE_RETRY_ATTEMPTS": 1,
        "COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD": 100,
    }
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with DaphneServer(overrides, env=env) as first, DaphneServer(overrides, env=env) as second:
        for server in (first, second, second):
            answer = httpx.post(
                f"{server.url}/copilotedge/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {api_key[1]}"},
                timeout=10,
            )
            assert answer.status_code == 502  # upstream unreachable: an error row each
        scrape = httpx.get(f"{first.url}{URL}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scrape.status_code == 200
    assert _requests_total(scrape.text, "openai", "error") == 3
    assert len(list(tmp_path.glob("*.db"))) >= 2  # each process wrote its own file
