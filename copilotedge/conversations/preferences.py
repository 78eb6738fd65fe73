"""A user's :class:`~copilotedge.models.Preference`, applied where a request says nothing.

Every turn needs its caller's preferences, so they are cached in the process for
:data:`CACHE_SECONDS` (users without any too): a change made in this process (the
preferences endpoint, the admin) clears the entry at once, other processes see it within
that time, as with API keys.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from copilotedge.conf import settings
from copilotedge.models import Preference

if TYPE_CHECKING:
    from copilotedge.auth import Principal
    from copilotedge.chat.types import ChatRequest

CACHE_SECONDS = 5.0
_CACHE_MAX = 10_000

# user pk -> (preference or None, monotonic expiry)
_cache: dict[Any, tuple[Preference | None, float]] = {}


def forget_preference(sender: Any, instance: Preference, **kwargs: Any) -> None:
    """Signal receiver: drop a saved or deleted preference from this process's cache."""
    _cache.pop(instance.user_id, None)


def forget_all() -> None:
    _cache.clear()


async def load_preference(principal: Principal) -> Preference | None:
    """The caller's preferences (``None`` for an anonymous caller or a user without any)."""
    if principal.user is None:
        return None
    user_id = principal.user.pk
    now = time.monotonic()
    cached = _cache.get(user_id)
    if cached is not None and cached[1] > now:
        return cached[0]
    preference = await Preference.objects.filter(user_id=user_id).afirst()
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[user_id] = (preference, now + CACHE_SECONDS)
    return preference


def apply_preference(request: ChatRequest, preference: Preference | None) -> ChatRequest:
    """``request`` with what it left unsaid filled in from the caller's preferences."""
    if preference is None:
        return request
    model = request.model
    if not request.model_given and preference.model in settings.MODELS:
        model = preference.model
    params = dict(request.params)
    if preference.temperature is not None:
        params.setdefault("temperature", preference.temperature)
    if preference.max_tokens is not None:
        params.setdefault("max_tokens", preference.max_tokens)
    return dataclasses.replace(request, model=model, params=params)
