"""The limiter (ratelimit, ratelimit_gcra, ratelimit_stores) on a fake clock, on both stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django.utils import timezone
from django_redis.cache import RedisCache

from copilotedge import exceptions, lifecycle, ratelimit
from copilotedge.auth import Principal
from copilotedge.chat.types import ChatRequest
from copilotedge.checks import check_settings
from copilotedge.models import ApiKey, UsageRecord
from copilotedge.ratelimit import Limiter
from copilotedge.ratelimit.gcra import Op, Rate, StoreUnavailable, format_duration, parse_rate
from copilotedge.ratelimit.stores import CacheStore, RedisStore
from copilotedge.usage.ledger import estimate_prompt_tokens
from tests.helpers import redis_cache_settings
from tests.servers import free_port

T0 = 1_700_000_000.0  # a Tuesday in November 2023, mid-month


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "local":
        yield CacheStore(LocMemCache(f"rl-{uuid.uuid4()}", {}))
        return
    server = request.getfixturevalue("redis_server")
    yield RedisStore(RedisCache(server.url, {"KEY_PREFIX": f"t-{uuid.uuid4().hex}"}))
    await RedisStore.aclose()


def limiter(store: Any, clock: FakeClock, spend: Any = None) -> Limiter:
    return Limiter(store, clock, spend)


IP = Principal(ip="203.0.113.7")


async def burst(store: Any, ops: list[Op], now: float, n: int) -> list[bool]:
    return [(await store.aapply(ops, now))[0].allowed for _ in range(n)]


def test_parse_rate() -> None:
    assert parse_rate("60/m") == Rate(60, 60.0)
    assert parse_rate("1000/h") == Rate(1000, 3600.0)
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert parse_rate("5000/d") == Rate(5000, 86400.0)
    assert parse_rate(" 100 / 5m ") == Rate(100, 300.0)
    assert parse_rate("9/MIN") == Rate(9, 60.0)
    for bad in ("", "60", "60/x", "0/m", "-1/m", "1.5/m", "m/60", "60/0m"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_reset_durations_read_like_openai() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(1) == "1s"
    assert format_duration(59.472) == "59.472s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3723.5) == "1h2m3.5s"


async def test_burst_at_the_window_edge_is_refused(store: Any) -> None:
    # A fixed one-minute window would allow 10 at 59.9 s and 10 more at 60.1 s.
    op = Op("edge", Rate(10, 60.0), 1)
    assert await burst(store, [op], T0 + 59.9, 10) == [True] * 10
    assert await burst(store, [op], T0 + 60.1, 10) == [False] * 10


async def test_refill_is_gradual(store: Any) -> None:
    op = Op("refill", Rate(10, 60.0), 1)
    assert all(await burst(store, [op], T0, 10))
    (refused,) = await store.aapply([op], T0 + 1.5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(4.5)
    assert refused.remaining == 0
    assert await burst(store, [op], T0 + 6, 2) == [True, False]  # one every 6 s
    assert await burst(store, [op], T0 + 6 + 60, 11) == [True] * 10 + [False]


async def test_remaining_and_reset(store: Any) -> None:
    op = Op("count", Rate(10, 60.0), 1)
    for _ in range(3):
        (bucket,) = await store.aapply([op], T0)
    assert (bucket.limit, bucket.remaining, bucket.reset) == (10, 7, pytest.approx(18.0))
    (peek,) = await store.aapply([Op("count", Rate(10, 60.0), 0)], T0 + 12)
    assert (peek.remaining, peek.reset) == (9, pytest.approx(6.0))


async def test_one_refused_op_changes_nothing(store: Any) -> None:
    requests, tokens = Rate(5, 60.0), Rate(100, 60.0)
    both = [Op("all:req", requests, 1), Op("all:tok", tokens, 101)]
    req, tok = await store.aapply(both, T0)
    assert req.allowed and not tok.allowed
    (after,) = await store.aapply([Op("all:req", requests, 0)], T0)
    assert after.remaining == 5


async def test_fast_token_buckets_keep_whole_tokens(store: Any) -> None:
    # 100 000/min is one token every 0.6 ms: the stored time must not round tokens away.
    op = Op("fast", Rate(100_000, 60.0), 1_000)
    assert await burst(store, [op], T0, 101) == [True] * 100 + [False]
    peek = Op("fast", Rate(100_000, 60.0), 0)
    assert (await store.aapply([peek], T0 + 0.0006))[0].remaining == 1
    assert (await store.aapply([peek], T0 + 0.6))[0].remaining == 1000


async def test_sync_and_async_share_buckets(store: Any) -> None:
    op = Op("twins", Rate(2, 60.0), 1)
    assert store.apply([op], T0)[0].allowed
    assert (await store.aapply([op], T0))[0].allowed
    assert not store.apply([op], T0)[0].allowed


async def test_concurrent_checks_in_one_process_are_exact(tmp_path: Path) -> None:
    # The file cache answers aget/aset from threads; only the store's lock makes this exact.
    store = CacheStore(FileBasedCache(str(tmp_path), {}))
    op = Op("race", Rate(10, 60.0), 1)
    results = await asyncio.gather(*(store.aapply([op], T0) for _ in range(50)))
    assert sum(bucket.allowed for (bucket,) in results) == 10


async def test_redis_keys_expire_when_the_bucket_refills(redis_server: Any) -> None:
    cache = RedisCache(redis_server.url, {"KEY_PREFIX": f"t-{uuid.uuid4().hex}"})
    store = RedisStore(cache)
    await store.aapply([Op("ttl", Rate(10, 60.0), 4)], T0)
    raw = cache.client.get_client(write=True)
    assert 24_000 < raw.pttl(cache.make_key("ttl")) <= 25_000
    await RedisStore.aclose()


async def test_async_checks_write_to_the_primary_and_its_database(redis_server: Any) -> None:
    # django-redis writes to the first LOCATION; the second (a replica) is not even up.
    primary = redis_server.url.rsplit("/", 1)[0] + "/5"
    replica = f"redis://127.0.0.1:{free_port()}/5"
    cache = RedisCache(f"{primary},{replica}", {"KEY_PREFIX": f"t-{uuid.uuid4().hex}"})
    store = RedisStore(cache)
    assert (await store.aapply([Op("primary", Rate(10, 60.0), 4)], T0))[0].remaining == 6
    assert store.apply([Op("primary", Rate(10, 60.0), 1)], T0)[0].remaining == 5
    raw = cache.client.get_client(write=True)
    assert raw.get_connection_kwargs()["db"] == 5
    assert raw.exists(cache.make_key("primary"))
    await RedisStore.aclose()


@override_settings(COPILOTEDGE_RATE_LIMIT="3/m", COPILOTEDGE_TOKEN_RATE_LIMIT="1000/m")
async def test_request_decision(store: Any, clock: FakeClock) -> None:
    checks = [await limiter(store, clock).acheck_request(IP) for _ in range(4)]
    assert [c.allowed for c in checks] == [True, True, True, False]
    refused = checks[-1]
    assert isinstance(refused.error, exceptions.RateLimited)
    assert refused.error.code == "rate_limit_exceeded"
    assert refused.error.retry_after == pytest.approx(20.0)
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0s",
    }


@override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="1000/m")
async def test_tokens_reserved_then_debited_with_real_usage(store: Any, clock: FakeClock) -> None:
    limits = limiter(store, clock)
    reserved = await limits.reserve(IP, 300)
    assert reserved.allowed and reserved.reserved == 300
    assert reserved.tokens is not None and reserved.tokens.remaining == 700
    await limits.asettle(IP, 300, 120)  # the answer was shorter: 180 back
    assert (await limits.acheck_request(IP)).tokens.remaining == 880  # type: ignore[union-attr]
    await limits.asettle(IP, 0, 1000)  # past the limit: charged anyway, nothing left
    after = await limits.acheck_request(IP)
    assert after.tokens is not None and after.tokens.remaining == 0
    assert after.tokens.reset == pytest.approx(67.2)  # 1120 tokens at 60 s / 1000


@override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="1000/m")
async def test_tokens_refused_up_front(store: Any, clock: FakeClock) -> None:
    limits = limiter(store, clock)
    assert (await limits.reserve(IP, 850)).allowed
    refused = await limits.reserve(IP, 200)
    assert isinstance(refused.error, exceptions.RateLimited)
    assert refused.error.retry_after == pytest.approx(3.0)  # 50 more tokens at 60 ms each
    assert refused.tokens is not None and refused.tokens.remaining == 150
    assert refused.reserved == 0
    clock.advance(3.0)
    assert (await limits.reserve(IP, 200)).allowed


@override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="1000/m")
async def test_a_request_bigger_than_the_limit_is_refused_outright(
    store: Any, clock: FakeClock
) -> None:
    refused = await limiter(store, clock).reserve(IP, 1001)
    assert isinstance(refused.error, exceptions.RateLimited)
    assert refused.error.param == "max_tokens"


def test_reservation_estimate_uses_max_tokens() -> None:
    messages = [{"role": "user", "content": "x" * 40}]
    prompt = estimate_prompt_tokens(messages)
    assert ratelimit.estimate_tokens(ChatRequest("m", messages, {"max_tokens": 50})) == prompt + 50
    assert ratelimit.estimate_tokens(ChatRequest("m", messages)) == prompt + 256


@override_settings(COPILOTEDGE_RATE_LIMIT="1/m")
async def test_key_overrides_apply_per_key(store: Any, clock: FakeClock) -> None:
    roomy = Principal(api_key=ApiKey(pk=1, requests_per_minute=3, tokens_per_minute=50))
    tight = Principal(api_key=ApiKey(pk=2))
    limits = limiter(store, clock)
    assert [(await limits.acheck_request(roomy)).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert [(await limits.acheck_request(tight)).allowed for _ in range(2)] == [True, False]
    assert (await limits.acheck_request(roomy)).tokens_rate == Rate(50, 60.0)


async def test_budget(store: Any, clock: FakeClock) -> None:
    spent = {"key:1": Decimal("4.99"), "key:2": Decimal("5.00")}

    async def spend(principal: Principal, start: datetime) -> Decimal:
        assert start == datetime(2023, 11, 1, tzinfo=start.tzinfo)
        return spent[principal.identity]

    limits = limiter(store, clock, spend)
    under = Principal(api_key=ApiKey(pk=1, monthly_budget=Decimal(5)))
    over = Principal(api_key=ApiKey(pk=2, monthly_budget=Decimal(5)))
    assert (await limits.reserve(under, 10)).allowed
    refused = await limits.reserve(over, 10)
    assert isinstance(refused.error, exceptions.BudgetExceeded)
    assert refused.error.code == "budget_exceeded"
    assert refused.error.status_code == 429
    # Until the first of December.
    assert refused.error.retry_after == pytest.approx(datetime(2023, 12, 1).timestamp() - T0, 1)
    assert (await limits.reserve(IP, 10)).allowed  # an IP has no ledger, no budget


async def test_store_down_fails_open_or_closed(clock: FakeClock, caplog: Any) -> None:
    dead = RedisStore(RedisCache(f"redis://127.0.0.1:{free_port()}/0", {}))
    with pytest.raises(StoreUnavailable):
        await dead.aapply([Op("x", Rate(1, 1.0), 1)], T0)
    with pytest.raises(StoreUnavailable):
        dead.apply([Op("x", Rate(1, 1.0), 1)], T0)
    limits = limiter(dead, clock)
    opened = await limits.acheck_request(IP)
    assert opened.allowed
    assert opened.headers()["x-ratelimit-remaining-requests"] == "60"
    assert any(r.levelname == "ERROR" and "fail open" in r.message for r in caplog.records)
    with override_settings(COPILOTEDGE_RATE_LIMIT_FAIL_OPEN=False):
        closed = await limits.acheck_request(IP)
        assert isinstance(closed.error, exceptions.ServiceUnavailable)
        assert closed.error.status_code == 503
        reserved = await limits.reserve(IP, 10)
        assert isinstance(reserved.error, exceptions.ServiceUnavailable)
    await RedisStore.aclose()


# The ledger behind the budget.


async def spend_row(key: ApiKey, cost: str, when: datetime | None = None) -> None:
    await UsageRecord.objects.acreate(
        user_id=key.user_id,
        api_key=key,
        protocol="openai",
        model_requested="m",
        outcome="ok",
        cost=Decimal(cost),
        created_at=when or timezone.now(),
    )


@pytest.mark.django_db(transaction=True)
async def test_month_spend_reads_this_month_of_the_ledger_briefly_cached(user: Any) -> None:
    key, _ = await ApiKey.objects.acreate(user=user, prefix="ce_ledger1", hashed_key="1"), None
    other, _ = await ApiKey.objects.acreate(user=user, prefix="ce_ledger2", hashed_key="2"), None
    start = ratelimit.month_start(timezone.now().timestamp())
    await spend_row(key, "0.40")
    await spend_row(key, "9", when=start - timedelta(seconds=1))  # last month
    await spend_row(other, "3")  # the same user's other key
    by_key = Principal(user=user, api_key=key)
    assert await ratelimit.month_spend(by_key, start) == Decimal("0.40")
    assert await ratelimit.month_spend(Principal(user=user), start) == Decimal("3.40")
    await spend_row(key, "1")
    assert await ratelimit.month_spend(by_key, start) == Decimal("0.40")  # cached
    ratelimit.forget_spend()
    assert await ratelimit.month_spend(by_key, start) == Decimal("1.40")


@pytest.mark.django_db(transaction=True)
@override_settings(COPILOTEDGE_MONTHLY_BUDGET="2.50")
async def test_session_users_get_the_budget_setting(user: Any, clock: FakeClock) -> None:
    key = await ApiKey.objects.acreate(user=user, prefix="ce_ledger3", hashed_key="3")
    await spend_row(key, "2.50")
    limits = Limiter(CacheStore(LocMemCache(f"rl-{uuid.uuid4()}", {})))  # the real clock
    refused = await limits.reserve(Principal(user=user), 10)
    assert isinstance(refused.error, exceptions.BudgetExceeded)
    assert "$2.50" in refused.error.message


# The limiter's system checks.


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


def test_unparsable_limits_are_errors() -> None:
    with override_settings(COPILOTEDGE_RATE_LIMIT="sixty a minute"):
        assert "copilotedge.E010" in ids(check_settings())
        with pytest.raises(SystemCheckError, match=r"copilotedge\.E010"):
            call_command("check")
    with override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="100000"):
        assert "copilotedge.E010" in ids(check_settings())


def test_bad_budget_and_unknown_cache_are_errors() -> None:
    with override_settings(COPILOTEDGE_MONTHLY_BUDGET="lots"):
        assert "copilotedge.E012" in ids(check_settings())
    with override_settings(COPILOTEDGE_MONTHLY_BUDGET=-5):
        assert "copilotedge.E012" in ids(check_settings())
    with override_settings(COPILOTEDGE_MONTHLY_BUDGET="12.50"):
        assert "copilotedge.E012" not in ids(check_settings())
    with override_settings(COPILOTEDGE_CACHE_ALIAS="limits"):
        assert "copilotedge.E011" in ids(check_settings())
        with pytest.raises(SystemCheckError, match=r"copilotedge\.E011"):
            call_command("check")


def test_a_cache_not_shared_between_processes_is_a_warning(redis_server: Any) -> None:
    local = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    with override_settings(CACHES=local):
        (warning,) = [m for m in check_settings() if m.id == "copilotedge.W010"]
        assert "LocMemCache" in warning.msg
        assert "CACHES" in (warning.hint or "")
        assert "REDIS_URL" not in (warning.hint or "")
    with override_settings(CACHES=dummy):
        assert "copilotedge.W011" in ids(check_settings())
    with override_settings(CACHES=redis_cache_settings(redis_server.url, "checks")):
        assert not {"copilotedge.W010", "copilotedge.W011"} & set(ids(check_settings()))


def test_the_benchmark_measures_allowed_checks(redis_server: Any) -> None:
    from bench.ratelimit import run

    result = run(redis_server.url, n=50)
    assert result["n"] == result["allowed"] == 50
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["redis_ping_p50_ms"] > 0


@pytest.mark.django_db(transaction=True)
async def test_a_finished_turn_counts_against_the_budget_at_once(user: Any) -> None:
    key = await ApiKey.objects.acreate(
        user=user, prefix="ce_ledger4", hashed_key="4", monthly_budget=Decimal("1.00")
    )
    await spend_row(key, "0.90")
    principal = Principal(user=user, api_key=key)
    limits = Limiter(CacheStore(LocMemCache(f"rl-{uuid.uuid4()}", {})))
    first = await limits.reserve(principal, 10)
    assert first.allowed
    # The ledger row is written later; the cached spend counts the turn meanwhile.
    ratelimit.settle(ratelimit.Reservation(principal, 10, limits), 12, Decimal("0.10"))
    await lifecycle.drain()
    refused = await limits.reserve(principal, 10)
    assert isinstance(refused.error, exceptions.BudgetExceeded)
