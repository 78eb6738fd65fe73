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
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from copilotedge import ratelimit
from copilotedge.auth import BEARER
from copilotedge.conf import settings
from copilotedge.exceptions import AuthenticationFailed, PermissionDenied
from copilotedge.upstream.breakers import acircuit_states
from copilotedge.usage import metrics
from copilotedge.views import api_view

STATUS_OK = "ok"
STATUS_DEGRADED = "degraded"
STATUS_UNAVAILABLE = "unavailable"
PROBE_LIVENESS = "liveness"

_SEVERITY = {metrics.CIRCUIT_CLOSED: 0, metrics.CIRCUIT_HALF_OPEN: 1, metrics.CIRCUIT_OPEN: 2}


async def public_circuit_states() -> dict[str, str]:
    """Each upstream's circuit state under a name fit to publish.

    An unnamed fallback upstream is named by its base URL, whose path can hold an account
    id: such names are cut to the host. Upstreams that then share a name report the worst
    state among them.
    """
    states: dict[str, str] = {}
    for name, state in (await acircuit_states()).items():
        parts = urlsplit(name)
        public = (parts.hostname or name) if parts.scheme and parts.netloc else name
        if _SEVERITY.get(state, 2) >= _SEVERITY.get(states.get(public, ""), -1):
            states[public] = state
    return states


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
@api_view("GET")
async def health(request: HttpRequest) -> HttpResponse:
    """Liveness and readiness as JSON: 200 when ready, 503 when not.

    ``?probe=liveness`` skips the dependency checks (the process answers, so it is live).
    """
    if request.GET.get("probe") == PROBE_LIVENESS:
        return JsonResponse({"status": STATUS_OK, "live": True})
    database, cache = await asyncio.gather(_probe(_database), _probe(_cache))
    circuits = await public_circuit_states()
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
            "upstream": {"circuits": circuits},
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
    # The breakers' state lives in the (shared) cache: read it now, not at the last transition.
    for upstream, state in (await public_circuit_states()).items():
        metrics.set_circuit_state(upstream, state)
    body = await sync_to_async(metrics.exposition, thread_sensitive=False)()
    return HttpResponse(body, content_type=metrics.CONTENT_TYPE)
