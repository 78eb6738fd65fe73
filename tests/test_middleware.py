"""RateLimitMiddleware as clients see it: headers, 429s, who is counted, Redis outages."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import respx
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory, override_settings
from django.urls import include, path

from copilotedge import lifecycle, ratelimit
from copilotedge.middleware import RateLimitMiddleware
from copilotedge.models import ApiKey, UsageRecord
from copilotedge.usage.ledger import estimate_prompt_tokens
from tests.helpers import OPENAI_URL, openai_chunk, redis_cache_settings, sse_body
from tests.servers import DaphneServer, RedisServer

MODELS = "/copilotedge/v1/models"
COMPLETIONS = "/copilotedge/v1/chat/completions"
HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
HELLO = [{"role": "user", "content": "Hello there"}]

pytestmark = pytest.mark.django_db(transaction=True)


def completion(prompt_tokens: int = 5, completion_tokens: int = 7) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


async def chat(headers: dict[str, str], **body: Any) -> Any:
    payload = {"messages": HELLO, **body}
    return await AsyncClient().post(
        COMPLETIONS, json.dumps(payload), content_type="application/json", headers=headers
    )


async def get_from(ip: str, path: str = MODELS, headers: dict[str, str] | None = None) -> Any:
    """A GET whose TCP peer is ``ip`` (the test client otherwise always is 127.0.0.1)."""
    raw = [(b"host", b"testserver")]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return await AsyncClient().request(
        method="GET", path=path, query_string="", client=[ip, 0], headers=raw
    )


def limits_of(response: Any) -> dict[str, str]:
    return {name: response[name] for name in HEADERS}


async def test_every_response_carries_the_headers(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).mock(
        side_effect=[
            httpx.Response(200, json=completion()),
            httpx.Response(200, content=sse_body(openai_chunk("Hi"), openai_chunk(None, "stop"))),
            # A 5xx is retried (three attempts in all) before the client gets its 502.
            *[httpx.Response(500, json={"errors": [{"message": "boom", "code": 3000}]})] * 3,
        ]
    )
    ok = await chat(auth, max_tokens=100)
    stream = await chat(auth, stream=True)
    frames = b"".join([chunk async for chunk in stream.streaming_content])
    failed = await chat(auth)
    invalid = await AsyncClient().post(
        COMPLETIONS, b"{", content_type="application/json", headers=auth
    )
    wrong_method = await AsyncClient().get(COMPLETIONS, headers=auth)
    listed = await AsyncClient().get(MODELS, headers=auth)
    statuses = [r.status_code for r in (ok, stream, failed, invalid, wrong_method, listed)]
    assert statuses == [200, 200, 502, 400, 405, 200]
    assert b"data: [DONE]" in frames
    remaining = [int(r["x-ratelimit-remaining-requests"]) for r in (ok, stream, failed, invalid)]
    assert remaining == [59, 58, 57, 56]
    assert limits_of(listed) | {"x-ratelimit-reset-requests": "~"} == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "54",
        "x-ratelimit-reset-requests": "~",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": listed["x-ratelimit-remaining-tokens"],
        "x-ratelimit-reset-tokens": listed["x-ratelimit-reset-tokens"],
    }
    assert listed["x-ratelimit-reset-requests"].endswith("s")
    # The completion's headers show its reservation: the prompt estimate plus max_tokens.
    reserved = estimate_prompt_tokens(HELLO) + 100
    assert ok["x-ratelimit-remaining-tokens"] == str(100_000 - reserved)


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
async def test_over_the_limit_is_a_429_with_retry_after(auth: dict[str, str]) -> None:
    client = AsyncClient()
    first, second, third = [await client.get(MODELS, headers=auth) for _ in range(3)]
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert 29 <= int(third["Retry-After"]) <= 30
    error = third.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert error["param"] is None
    assert "2 per 1m0s" in error["message"]
    assert third["x-ratelimit-remaining-requests"] == "0"
    assert third["x-ratelimit-limit-requests"] == "2"


# Per day, so the bucket does not visibly refill while the test runs.
@override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="1000/d")
async def test_tokens_refused_up_front_and_debited_after(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    route = upstream.post(OPENAI_URL).respond(200, json=completion(20, 30))
    ok = await chat(auth, max_tokens=600)
    assert ok.status_code == 200
    assert ok["x-ratelimit-remaining-tokens"] == str(1000 - estimate_prompt_tokens(HELLO) - 600)
    await lifecycle.drain()
    await lifecycle.drain()  # the real 50 tokens are charged, the rest given back
    listed = await AsyncClient().get(MODELS, headers=auth)
    assert listed["x-ratelimit-remaining-tokens"] == "950"
    refused = await chat(auth, max_tokens=960)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "tokens" in refused.json()["error"]["message"]
    missing = estimate_prompt_tokens(HELLO) + 960 - 950  # one token every 86.4 s
    assert int(refused["Retry-After"]) == math.ceil(missing * 86.4)
    assert refused["x-ratelimit-remaining-tokens"] == "950"
    assert route.call_count == 1  # the refused request never went upstream
    assert await UsageRecord.objects.acount() == 1


async def test_spent_budget_is_a_429_budget_exceeded(user: Any, upstream: respx.MockRouter) -> None:
    key, raw = await _akey(user, monthly_budget=Decimal("0.50"))
    await UsageRecord.objects.acreate(
        user=user,
        api_key=key,
        protocol="openai",
        model_requested="m",
        outcome="ok",
        cost=Decimal("0.50"),
    )
    route = upstream.post(OPENAI_URL).respond(200, json=completion())
    refused = await chat({"Authorization": f"Bearer {raw}"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert int(refused["Retry-After"]) > 0
    assert route.call_count == 0
    assert refused["x-ratelimit-limit-requests"] == "60"


async def _akey(user: Any, **fields: Any) -> tuple[ApiKey, str]:
    raw, prefix, hashed = ApiKey.generate()
    key = await ApiKey.objects.acreate(user=user, prefix=prefix, hashed_key=hashed, **fields)
    return key, raw


@override_settings(COPILOTEDGE_RATE_LIMIT="1/m")
async def test_limits_are_per_key_with_overrides(user: Any) -> None:
    _, plain = await _akey(user)
    _, roomy = await _akey(user, requests_per_minute=3)
    client = AsyncClient()
    plain_codes = [
        (await client.get(MODELS, headers={"Authorization": f"Bearer {plain}"})).status_code
        for _ in range(2)
    ]
    roomy_codes = [
        (await client.get(MODELS, headers={"Authorization": f"Bearer {roomy}"})).status_code
        for _ in range(4)
    ]
    assert plain_codes == [200, 429]
    assert roomy_codes == [200, 200, 200, 429]


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
async def test_session_users_are_limited_per_user(user: Any, other_user: Any) -> None:
    alice, bob = AsyncClient(), AsyncClient()
    await alice.aforce_login(user)
    await bob.aforce_login(other_user)
    codes = [(await alice.get(MODELS)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert (await bob.get(MODELS)).status_code == 200  # another user, another bucket
    second_tab = AsyncClient()
    await second_tab.aforce_login(user)
    assert (await second_tab.get(MODELS)).status_code == 429  # the same user


async def test_unauthenticated_requests_reach_the_view(db: None) -> None:
    response = await AsyncClient().get(MODELS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response["x-ratelimit-remaining-requests"] == "59"  # counted against the IP
    wrong = await AsyncClient().get(MODELS, headers={"Authorization": "Bearer ce_nope"})
    assert wrong.status_code == 401
    assert wrong["x-ratelimit-remaining-requests"] == "58"


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
async def test_guessing_keys_is_limited_per_ip(db: None, auth: dict[str, str]) -> None:
    guesses = [
        await get_from("198.51.100.7", headers={"Authorization": f"Bearer ce_guess{i}"})
        for i in range(3)
    ]
    assert [r.status_code for r in guesses] == [401, 401, 429]
    assert "Retry-After" in guesses[-1]
    # Another address, and the key's own owner, are not affected.
    other = await get_from("198.51.100.8", headers={"Authorization": "Bearer ce_guess"})
    assert other.status_code == 401
    assert (await get_from("198.51.100.7", headers=auth)).status_code == 200


async def test_other_urls_are_left_alone(auth: dict[str, str]) -> None:
    response = await AsyncClient().get("/admin/login/", headers=auth)
    assert response.status_code == 200
    assert "x-ratelimit-limit-requests" not in response


@override_settings(COPILOTEDGE_ALLOW_ANONYMOUS=True, COPILOTEDGE_RATE_LIMIT="1/m")
async def test_anonymous_callers_are_limited_by_ip() -> None:
    assert (await get_from("198.51.100.1")).status_code == 200
    assert (await get_from("198.51.100.1")).status_code == 429
    assert (await get_from("198.51.100.2")).status_code == 200
    # Without a trusted proxy, a forged X-Forwarded-For changes nothing.
    forged = await get_from("198.51.100.1", headers={"X-Forwarded-For": "192.0.2.9"})
    assert forged.status_code == 429


@override_settings(
    COPILOTEDGE_ALLOW_ANONYMOUS=True,
    COPILOTEDGE_RATE_LIMIT="1/m",
    COPILOTEDGE_TRUST_X_FORWARDED_FOR=True,
)
async def test_behind_a_trusted_proxy_the_forwarded_ip_counts() -> None:
    # The proxy appends the address it saw; what the client put before it is not trusted.
    proxy = "10.0.0.1"
    first = await get_from(proxy, headers={"X-Forwarded-For": "203.0.113.7, 192.0.2.1"})
    again = await get_from(proxy, headers={"X-Forwarded-For": "192.0.2.1"})
    other = await get_from(proxy, headers={"X-Forwarded-For": "192.0.2.2"})
    assert [first.status_code, again.status_code, other.status_code] == [200, 429, 200]


@override_settings(
    COPILOTEDGE_ALLOW_ANONYMOUS=True,
    COPILOTEDGE_RATE_LIMIT="1/m",
    COPILOTEDGE_TRUST_X_FORWARDED_FOR=True,
)
@pytest.mark.parametrize("peer", ["10.0.0.1", ""])
async def test_a_forwarded_header_without_an_address_does_not_escape_the_limit(peer: str) -> None:
    statuses = [
        (await get_from(peer, headers={"X-Forwarded-For": forged})).status_code
        for forged in (", x", ", y", "", ",")
    ]
    assert statuses == [200, 429, 429, 429]


@override_settings(COPILOTEDGE_RATE_LIMIT="1/m")
def test_sync_mode(api_key: tuple[ApiKey, str]) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    middleware = RateLimitMiddleware(view)
    assert not asyncio.iscoroutinefunction(middleware)
    factory = RequestFactory(headers={"Authorization": f"Bearer {api_key[1]}"})
    first, second = middleware(factory.get(MODELS)), middleware(factory.get(MODELS))
    assert (first.status_code, second.status_code) == (200, 429)  # type: ignore[union-attr]
    assert first["x-ratelimit-remaining-requests"] == "0"  # type: ignore[index]
    assert json.loads(second.content)["error"]["code"] == "rate_limit_exceeded"  # type: ignore[union-attr]
    untouched = middleware(factory.get("/admin/login/"))
    assert "x-ratelimit-limit-requests" not in untouched  # type: ignore[operator]


async def test_async_mode_is_detected() -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    assert asyncio.iscoroutinefunction(RateLimitMiddleware(view))


@ratelimit.exempt
async def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong")


async def counted(request: HttpRequest) -> HttpResponse:
    return HttpResponse("counted")


# A URLconf for the test below: an app view marked exempt next to one that is not.
urlpatterns = [
    path(
        "copilotedge/",
        include(
            ([path("ping", ping), path("counted", counted)], "copilotedge"),
        ),
    )
]


@override_settings(ROOT_URLCONF=__name__, COPILOTEDGE_RATE_LIMIT="1/m")
async def test_exempt_views_are_not_counted(auth: dict[str, str]) -> None:
    client = AsyncClient()
    exempt = [await client.get("/copilotedge/ping", headers=auth) for _ in range(3)]
    assert [r.status_code for r in exempt] == [200, 200, 200]
    assert "x-ratelimit-limit-requests" not in exempt[0]
    counted = [await client.get("/copilotedge/counted", headers=auth) for _ in range(2)]
    assert [r.status_code for r in counted] == [200, 429]


# Redis outages, on a private redis-server this test stops.


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with (
        RedisServer() as server,
        override_settings(CACHES=redis_cache_settings(server.url, f"t-{uuid.uuid4().hex}")),
    ):
        yield server


async def test_redis_down_fails_open_by_default(
    own_redis: RedisServer, auth: dict[str, str], caplog: Any
) -> None:
    client = AsyncClient()
    assert (await client.get(MODELS, headers=auth))["x-ratelimit-remaining-requests"] == "59"
    own_redis.stop()
    with caplog.at_level(logging.ERROR, logger="copilotedge.ratelimit"):
        response = await client.get(MODELS, headers=auth)
    assert response.status_code == 200
    assert response["x-ratelimit-remaining-requests"] == "60"  # unknown: the full limit
    assert [r.levelname for r in caplog.records if r.name == "copilotedge.ratelimit"] == ["ERROR"]
    own_redis.start()
    assert (await client.get(MODELS, headers=auth))["x-ratelimit-remaining-requests"] == "59"


@override_settings(COPILOTEDGE_RATE_LIMIT_FAIL_OPEN=False)
async def test_redis_down_fails_closed_with_a_503(
    own_redis: RedisServer, auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    own_redis.stop()
    listed = await AsyncClient().get(MODELS, headers=auth)
    assert listed.status_code == 503
    assert listed.json()["error"]["code"] == "rate_limiter_unavailable"
    assert listed["Retry-After"] == "1"
    assert listed["x-ratelimit-limit-requests"] == "60"


# Exact across processes: two daphne servers on one Redis.

needs_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"),
    reason="needs REDIS_URL: the limit is shared across server processes only through Redis",
)


class Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream reporting usage equal to what the proxy reserves.

    Equal usage means settling changes nothing, so the count of successes does not
    depend on which requests finish before others start.
    """

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = estimate_prompt_tokens(body["messages"])
        payload = json.dumps(completion(prompt, body["max_tokens"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fixed_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def fire(urls: list[str], raw: str, count: int) -> list[int]:
    """``count`` chat requests at once, alternating between the servers."""
    body = {"messages": HELLO, "max_tokens": 20}
    headers = {"Authorization": f"Bearer {raw}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(f"{urls[i % 2]}{COMPLETIONS}", json=body, headers=headers)
                for i in range(count)
            )
        )
    return [response.status_code for response in responses]


@pytest.fixture
def two_servers(fixed_upstream: str) -> Iterator[list[str]]:
    from django.conf import settings

    overrides = {
        "COPILOTEDGE_API_BASE_URL": fixed_upstream,
        "COPILOTEDGE_ACCOUNT_ID": "",
        "CACHES": redis_cache_settings(settings.REDIS_URL, f"t-{uuid.uuid4().hex}"),
    }
    servers = [DaphneServer(overrides).start(), DaphneServer(overrides).start()]
    try:
        yield [server.url for server in servers]
    finally:
        logs = [server.stop() for server in servers]
        assert not any("Traceback" in log for log in logs), logs


@needs_redis
async def test_request_limit_is_exact_across_processes(user: Any, two_servers: list[str]) -> None:
    _, raw = await _akey(user, requests_per_minute=10)
    codes = await fire(two_servers, raw, 50)
    assert (codes.count(200), codes.count(429)) == (10, 40)


@needs_redis
async def test_token_limit_is_exact_across_processes(user: Any, two_servers: list[str]) -> None:
    per_request = estimate_prompt_tokens(HELLO) + 20
    _, raw = await _akey(user, requests_per_minute=1000, tokens_per_minute=10 * per_request)
    codes = await fire(two_servers, raw, 50)
    assert (codes.count(200), codes.count(429)) == (10, 40)
