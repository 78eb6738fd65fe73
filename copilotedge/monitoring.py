"""The operator's endpoints: ``GET health`` (load balancers) and ``GET metrics`` (Prometheus).

Health is open to anyone and says nothing secret (no URLs, hosts, versions or error
messages, only what is up). Readiness means this process can serve a chat turn: its
database answers (the ledger, keys and conversations live there) and its cache answers
when the rate limiter is set to fail closed without it. An open upstream circuit is
reported but does not make a process unready: every process shares the same upstream,
so taking them out of the load balancer would not help, and the breaker's half-open
probes need traffic to close the circuit again.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from . import metrics, ratelimit
from .auth import BEARER
from .cloudflare import Upstream
from .conf import settings
from .exceptions import AuthenticationFailed, PermissionDenied
from .views import api_view

STATUS_OK = "ok"
STATUS_DEGRADED = "degraded"
STATUS_UNAVAILABLE = "unavailable"
PROBE_LIVENESS = "liveness"

#: Returns each upstream's circuit state (``metrics.CIRCUIT_*``), e.g. ``{"workers-ai": "open"}``.
CircuitSource = Callable[[], Awaitable[Mapping[str, str]]]
_circuit_source: CircuitSource | None = None


def register_circuit_source(source: CircuitSource | None) -> None:
    """Tell health where circuit states come from (the circuit breaker calls this once)."""
    global _circuit_source
    _circuit_source = source


async def acircuit_states() -> tuple[dict[str, str], bool]:
    """The circuit state of each upstream, and whether a circuit breaker reported it.

    With no breaker registered, nothing ever stops a request from going upstream: the
    circuit is closed by construction, and the answer says no breaker exists.
    """
    if _circuit_source is None:
        return {Upstream.default().name: metrics.CIRCUIT_CLOSED}, False
    return dict(await _circuit_source()), True


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _database() -> None:
    await sync_to_async(_select_one)()


async def _cache() -> None:
    cache = caches[settings.CACHE_ALIAS]
    key, value = f"copilotedge:health:{uuid.uuid4().hex}", uuid.uuid4().hex
    await cache.aset(key, value, timeout=30)
    try:
        if await cache.aget(key) != value:
            raise RuntimeError("the cache did not return what was stored")
    finally:
        await cache.adelete(key)


async def _probe(check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(settings.HEALTH_TIMEOUT):
            await check()
    except asyncio.CancelledError:
        raise
    except Exception as error:
        # The exception's class only: messages can carry hosts, users or DSNs.
        outcome: dict[str, Any] = {"ok": False, "error": type(error).__name__}
    else:
        outcome = {"ok": True}
    outcome["ms"] = round((time.monotonic() - started) * 1000, 1)
    return outcome


@ratelimit.exempt
@api_view("GET", "HEAD")
async def health(request: HttpRequest) -> HttpResponse:
    """Liveness and readiness as JSON: 200 when ready, 503 when not.

    ``?probe=liveness`` skips the dependency checks (the process answers, so it is live).
    """
    if request.GET.get("probe") == PROBE_LIVENESS:
        return JsonResponse({"status": STATUS_OK, "live": True})
    database, cache = await asyncio.gather(_probe(_database), _probe(_cache))
    circuits, has_breaker = await acircuit_states()
    cache_required = not settings.RATE_LIMIT_FAIL_OPEN
    ready = database["ok"] and (cache["ok"] or not cache_required)
    open_circuit = any(state != metrics.CIRCUIT_CLOSED for state in circuits.values())
    if not ready:
        status = STATUS_UNAVAILABLE
    elif not cache["ok"] or open_circuit:
        status = STATUS_DEGRADED
    else:
        status = STATUS_OK
    body = {
        "status": status,
        "live": True,
        "ready": ready,
        "checks": {
            "database": database,
            "cache": {**cache, "required": cache_required},
            "upstream": {"circuit_breaker": has_breaker, "circuits": circuits},
        },
    }
    response = JsonResponse(body, status=200 if ready else 503)
    response["Cache-Control"] = "no-store"
    return response


async def _authorize_metrics(request: HttpRequest) -> None:
    header = request.headers.get("Authorization", "")
    if header[: len(BEARER)].lower() == BEARER:
        token, expected = header[len(BEARER) :].strip(), settings.METRICS_TOKEN
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return
        raise AuthenticationFailed("Invalid metrics token.")
    user = await request.auser() if hasattr(request, "auser") else None
    if user is None or not user.is_authenticated:
        raise AuthenticationFailed("Sign in as staff or send the metrics bearer token.")
    if not user.is_staff:
        raise PermissionDenied("Metrics are for staff only.")


@ratelimit.exempt
@api_view("GET")
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text; for staff sessions or ``Authorization: Bearer <METRICS_TOKEN>``."""
    await _authorize_metrics(request)
    body = await sync_to_async(metrics.exposition, thread_sensitive=False)()
    return HttpResponse(body, content_type=metrics.CONTENT_TYPE)
