"""Who is calling: an API key (``Authorization: Bearer ce_…``), a session user, or an IP."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from copilotedge import exceptions, lifecycle
from copilotedge.conf import settings
from copilotedge.models import KEY_PREFIX, ApiKey, hash_key

logger = logging.getLogger(__name__)

BEARER = "bearer "
#: ``ApiKey.last_used_at`` is written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """The caller a request is made for; ``identity`` keys rate limits and ownership."""

    user: Any = None
    api_key: ApiKey | None = None
    ip: str = ""

    @property
    def identity(self) -> str:
        if self.api_key is not None:
            return f"key:{self.api_key.pk}"
        if self.user is not None:
            return f"user:{self.user.pk}"
        return f"ip:{self.ip}"

    @property
    def user_id(self) -> int | None:
        return self.user.pk if self.user is not None else None


def client_ip(request: HttpRequest) -> str:
    if settings.TRUST_X_FORWARDED_FOR:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            # The last entry is the one our proxy appended; earlier ones are the client's
            # own claim, which would let it pick a fresh IP (and rate limit) per request.
            return forwarded.rsplit(",", 1)[-1].strip()
    return str(request.META.get("REMOTE_ADDR") or "")


# hash -> (key, monotonic expiry). Keys are looked up on every request; caching them for
# a few seconds keeps the database off the hot path. A change made in this process
# (revoking in the admin) clears the entry at once, other processes within the TTL.
_key_cache: dict[str, tuple[ApiKey, float]] = {}
_KEY_CACHE_MAX = 10_000


def forget_key(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    """Signal receiver: drop a saved or deleted key from this process's cache."""
    _key_cache.pop(instance.hashed_key, None)


async def _alookup(hashed: str) -> ApiKey | None:
    ttl = settings.API_KEY_CACHE_SECONDS
    now = time.monotonic()
    cached = _key_cache.get(hashed)
    if cached is not None and cached[1] > now:
        return cached[0]
    key = await ApiKey.objects.select_related("user").filter(hashed_key=hashed).afirst()
    if key is not None and ttl > 0:
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[hashed] = (key, now + ttl)
    return key


async def akey_for_token(token: str) -> ApiKey:
    """The active key for a raw ``ce_…`` token, or :class:`AuthenticationFailed`."""
    if not token.startswith(KEY_PREFIX):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    hashed = hash_key(token)
    key = await _alookup(hashed)
    # The lookup is by hash; compare again in constant time so timing says nothing.
    if key is None or not hmac.compare_digest(key.hashed_key, hashed):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if not key.is_active or not key.user.is_active:
        raise exceptions.AuthenticationFailed("This API key is revoked or expired.")
    touch(key)
    return key


def check_model(principal: Principal, model: str) -> None:
    """Refuse (403) a model outside the key's ``allowed_models`` (empty: any model)."""
    key = principal.api_key
    if key is not None and key.allowed_models and model not in key.allowed_models:
        raise exceptions.PermissionDenied(
            f"This API key may not use the model {model!r}.",
            param="model",
            code="model_not_allowed",
        )


# When this process last scheduled a write per key: a burst of requests that all read
# the old value from the database schedules one write, not one each.
_touched: dict[int, datetime] = {}


def touch(key: ApiKey) -> None:
    """Record the key's use, at most once a minute, without the request waiting for it."""
    now = timezone.now()
    stale = now - LAST_USED_RESOLUTION
    last = max(filter(None, (key.last_used_at, _touched.get(key.pk))), default=None)
    if last is not None and last > stale:
        return
    _touched[key.pk] = now
    lifecycle.spawn(_atouch(key.pk, now, stale))


async def _atouch(pk: int, now: datetime, stale: datetime) -> None:
    # The condition makes concurrent requests (and processes) write once a minute at most.
    recent = Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale)
    try:
        await ApiKey.objects.filter(recent, pk=pk).aupdate(last_used_at=now)
    except Exception:
        logger.warning("Could not record the use of API key %s.", pk, exc_info=True)


def forget_touches() -> None:
    """Forget which keys this process recorded lately (tests reuse primary keys)."""
    _touched.clear()


def _csrf_view(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
    raise AssertionError("only used to run the CSRF check")


def _enforce_csrf(request: HttpRequest) -> None:
    """Session-authenticated requests must pass Django's CSRF check (as DRF does)."""
    check = CsrfViewMiddleware(_csrf_view)
    check.process_request(request)
    if check.process_view(request, _csrf_view, (), {}) is not None:
        raise exceptions.PermissionDenied("CSRF check failed.", code="csrf_failed")


async def aauthenticate(request: HttpRequest) -> Principal:
    """Resolve the caller once per request (cached on it) or raise ``AuthenticationFailed``."""
    cached: Principal | None = getattr(request, "copilotedge_principal", None)
    if cached is not None:
        return cached
    ip = client_ip(request)
    header = request.headers.get("Authorization", "")
    if header[: len(BEARER)].lower() == BEARER:
        key = await akey_for_token(header[len(BEARER) :].strip())
        principal = Principal(user=key.user, api_key=key, ip=ip)
    else:
        user = await request.auser() if hasattr(request, "auser") else AnonymousUser()
        if user.is_authenticated:
            _enforce_csrf(request)
            principal = Principal(user=user, ip=ip)
        elif settings.ALLOW_ANONYMOUS:
            principal = Principal(ip=ip)
        else:
            raise exceptions.AuthenticationFailed()
    request.copilotedge_principal = principal  # type: ignore[attr-defined]
    return principal
