"""Approvals answered in a later request: ``confirm=True`` calls waiting for a person.

A face whose person answers after its request ended (AG-UI interrupts) keeps each
waiting call here, in the Django cache ``COPILOTEDGE_CACHE_ALIAS`` (so any server process
finds it, when that cache is shared), for ``COPILOTEDGE_TOOL_CONFIRM_TIMEOUT`` seconds:
who may answer, where (a scope the face chooses), and the call as the model made it. The
answer's request takes it out, once: a replayed answer finds nothing, and what runs is
always the call kept here, never what a client sends back.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches

from copilotedge.conf import settings
from copilotedge.tools.executor import ToolCallRequest

_PREFIX = "copilotedge.approval."


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """A call waiting for a person: its opaque id, who may answer it and where."""

    id: str
    owner: str
    scope: str
    call: ToolCallRequest
    #: When it stops being answerable (seconds since the epoch).
    expires_at: float

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


def _key(approval_id: str) -> str:
    return _PREFIX + hashlib.sha256(approval_id.encode()).hexdigest()[:40]


def _cache() -> Any:
    return caches[settings.CACHE_ALIAS]


async def adefer(call: ToolCallRequest, *, owner: str, scope: str) -> PendingApproval:
    """Keep ``call`` until ``owner`` answers it in ``scope`` (or it expires)."""
    timeout = settings.TOOL_CONFIRM_TIMEOUT
    approval = PendingApproval(secrets.token_urlsafe(24), owner, scope, call, time.time() + timeout)
    value = {
        "owner": owner,
        "scope": scope,
        "tool_call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "expires_at": approval.expires_at,
    }
    await _cache().aset(_key(approval.id), value, timeout=max(1, math.ceil(timeout)))
    return approval


def _parse(approval_id: str, value: Any) -> PendingApproval | None:
    try:
        call = ToolCallRequest(
            str(value["tool_call_id"]), str(value["name"]), str(value["arguments"])
        )
        return PendingApproval(
            approval_id, str(value["owner"]), str(value["scope"]), call,
            float(value["expires_at"]),
        )  # fmt: skip
    except (TypeError, KeyError, ValueError):
        return None


async def atake(
    approval_id: str, *, owner: str, scope: str, tool_call_ids: Container[str]
) -> PendingApproval | None:
    """The waiting call ``approval_id``, taken out, if it is ``owner``'s in ``scope`` and
    its call is one of ``tool_call_ids``; else ``None`` and it stays (another caller's
    answer must not end it). An expired one is taken too: see ``expired``."""
    cache = _cache()
    key = _key(approval_id)
    approval = _parse(approval_id, await cache.aget(key))
    if approval is None or (approval.owner, approval.scope) != (owner, scope):
        return None
    if approval.call.id not in tool_call_ids:
        return None
    if not await cache.adelete(key):
        return None  # taken meanwhile, by a concurrent answer
    return approval
