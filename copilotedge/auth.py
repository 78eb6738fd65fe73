"""Who is calling: an API key (``Authorization: Bearer ce_…``), a session user, or an IP."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from types import SimpleNamespace
from typing import Any, cast

from django.conf import settings as django_settings
from django.contrib.auth import aget_user
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
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

    @property
    def scope(self) -> str:
        """Whose private data a request's results are: the user (a key's user too), else
        the client address; ``""`` for the site's own code."""
        if self.user is not None:
            return f"user:{self.user.pk}"
        return f"ip:{self.ip}" if self.ip else ""


#: The address of a client whose address is not known: one more client, limited like any.
UNKNOWN_CLIENT = "unknown"
FORWARDED_FOR = "X-Forwarded-For"


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest | Mapping[str, Any]) -> str:
    """The caller's IP address, from a Django request or an ASGI scope (a WebSocket's).

    Behind a proxy (``COPILOTEDGE_TRUST_X_FORWARDED_FOR``) it is the last
    ``X-Forwarded-For`` entry, the one the proxy wrote; entries before it are the
    client's own claim. Without a usable address it is :data:`UNKNOWN_CLIENT`, never
    empty: an empty address would be the site's own code, which is not limited.
    """
    if isinstance(request, HttpRequest):
        forwarded = request.headers.get(FORWARDED_FOR)
        peer = request.META.get("REMOTE_ADDR")
    else:
        name = FORWARDED_FOR.lower().encode()
        values = [v for n, v in request.get("headers", []) if n.lower() == name]
        forwarded = b",".join(values).decode("latin-1") if values else None
        client = request.get("client")
        peer = client[0] if client else None
    if settings.TRUST_X_FORWARDED_FOR and forwarded:
        address = _address(forwarded.rsplit(",", 1)[-1])
        if address is not None:
            return address
    if isinstance(peer, str) and peer:
        return _address(peer) or peer
    return UNKNOWN_CLIENT


# hash -> (key, monotonic expiry). Keys are looked up on every request; caching them for
# a few seconds keeps the database off the hot path. A change made in this process
# (revoking in the admin) clears the entry at once, other processes within the TTL.
_key_cache: dict[str, tuple[ApiKey, float]] = {}
# hash -> monotonic expiry of a lookup that found no key: a client retrying a wrong key
# costs no query. Apart from the keys, so a flood of guesses cannot evict them.
_missing: dict[str, float] = {}
_KEY_CACHE_MAX = 10_000


def forget_key(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    """Signal receiver: drop a saved or deleted key from this process's cache."""
    _key_cache.pop(instance.hashed_key, None)
    _missing.pop(instance.hashed_key, None)


def forget_user_keys(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Signal receiver: drop a saved or deleted user's keys (they carry the old user)."""
    for hashed, (key, _) in list(_key_cache.items()):
        if key.user_id == instance.pk:
            _key_cache.pop(hashed, None)


async def _alookup(hashed: str) -> ApiKey | None:
    ttl = settings.API_KEY_CACHE_SECONDS
    now = time.monotonic()
    cached = _key_cache.get(hashed)
    if cached is not None and cached[1] > now:
        return cached[0]
    if _missing.get(hashed, 0.0) > now:
        return None
    key = await ApiKey.objects.select_related("user").filter(hashed_key=hashed).afirst()
    if ttl <= 0:
        return key
    if key is None:
        if len(_missing) >= _KEY_CACHE_MAX:
            _missing.clear()
        _missing[hashed] = now + ttl
    else:
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[hashed] = (key, now + ttl)
    return key


async def key_for_token(token: str) -> ApiKey:
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


async def _asession_user(session: SessionBase | None) -> Any:
    """The user a session is still signed in as (Django's own check), or ``None``."""
    session_key = session.session_key if session is not None else None
    if session is None or not session_key:
        return None
    # A fresh store: the socket's copy was loaded at connect and outlives a logout.
    fresh = import_module(django_settings.SESSION_ENGINE).SessionStore(session_key)
    user = await aget_user(cast(HttpRequest, SimpleNamespace(session=fresh)))
    return user if user.is_authenticated else None


async def refresh_principal(principal: Principal, session: SessionBase | None = None) -> Principal:
    """``principal`` as it stands now, or ``AuthenticationFailed`` if it is no more.

    A key is looked up again (through the short key cache, so a change shows within
    ``COPILOTEDGE_API_KEY_CACHE_SECONDS``): revoked, expired, deleted or its owner
    deactivated, it fails; else its current limits and models apply. A session user must
    still be signed in with that ``session`` and active.
    """
    key = principal.api_key
    if key is not None:
        current = await _alookup(key.hashed_key)
        if current is None or not current.is_active or not current.user.is_active:
            raise exceptions.AuthenticationFailed("This API key is revoked or expired.")
        return Principal(user=current.user, api_key=current, ip=principal.ip)
    if principal.user is not None:
        user = await _asession_user(session)
        if user is None or user.pk != principal.user.pk:
            raise exceptions.AuthenticationFailed(
                "The session has ended; sign in again.", code="session_expired"
            )
        return Principal(user=user, ip=principal.ip)
    return principal


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
        key = await key_for_token(header[len(BEARER) :].strip())
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
