"""HTTP faces of stored conversations and of the caller's preferences.

``GET conversations/`` lists the caller's conversations, most recently active first,
``?limit=`` at a time (default ``COPILOTEDGE_CONVERSATIONS_PAGE_SIZE``, at most 100); the
answer's ``next_cursor``, passed back as ``?cursor=``, fetches the next page (``null`` on
the last). ``GET``/``DELETE conversations/<uuid>/`` read (with messages) or delete one.
Another caller's conversation is 404, never 403, so ids leak nothing.

``GET preferences/`` returns the caller's defaults; ``PUT preferences/`` changes the
fields it names (others are kept) and answers with the result.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from copilotedge.auth import Principal, aauthenticate
from copilotedge.chat.validation import _is_int, _is_number
from copilotedge.conf import settings
from copilotedge.conversations import history
from copilotedge.exceptions import AuthenticationFailed, InvalidRequest
from copilotedge.models import Conversation, Message, Preference
from copilotedge.views import api_view, read_json

MAX_PAGE_SIZE = 100
MAX_SYSTEM_PROMPT = 20_000


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "object": "conversation",
        "title": conversation.title,
        "model": conversation.model,
        "metadata": conversation.metadata,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "sequence": message.sequence,
        "role": message.role,
        "content": message.content,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id or None,
        "status": message.status,
        "finish_reason": message.finish_reason or None,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "created_at": message.created_at.isoformat(),
    }


#: Longer than any cursor :func:`_encode_cursor` writes (about 90 characters).
MAX_CURSOR_LENGTH = 200


def _encode_cursor(conversation: Conversation) -> str:
    raw = json.dumps([conversation.updated_at.isoformat(), conversation.id.hex])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError(cursor)
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, pk = json.loads(raw)
        return datetime.fromisoformat(when), uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise InvalidRequest(
            "'cursor' is not a cursor this API returned.", param="cursor"
        ) from None


def _limit(request: HttpRequest) -> int:
    raw = request.GET.get("limit")
    if raw is None:
        return min(settings.CONVERSATIONS_PAGE_SIZE, MAX_PAGE_SIZE)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidRequest(
            f"'limit' must be an integer from 1 to {MAX_PAGE_SIZE}.", param="limit"
        )
    return int(raw)


def _owner_filter(principal: Principal) -> dict[str, Any]:
    # Anonymous callers own nothing; a filter that matches no row keeps one code path.
    return {"user": principal.user} if principal.user is not None else {"pk__in": []}


@api_view("GET")
async def conversation_list(request: HttpRequest) -> HttpResponseBase:
    principal = await aauthenticate(request)
    limit = _limit(request)
    rows = Conversation.objects.filter(**_owner_filter(principal)).order_by("-updated_at", "-id")
    cursor = request.GET.get("cursor")
    if cursor:
        when, pk = _decode_cursor(cursor)
        rows = rows.filter(updated_at__lte=when).exclude(updated_at=when, id__gte=pk)
    page = [c async for c in rows[: limit + 1]]
    more = len(page) > limit
    page = page[:limit]
    return JsonResponse(
        {
            "object": "list",
            "data": [conversation_json(c) for c in page],
            "has_more": more,
            "next_cursor": _encode_cursor(page[-1]) if more else None,
        }
    )


@api_view("GET", "DELETE")
async def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponseBase:
    principal = await aauthenticate(request)
    conversation = await history.owned_conversation(principal, conversation_id)
    if request.method == "DELETE":
        await conversation.adelete()
        return HttpResponse(status=204)
    body = conversation_json(conversation)
    body["messages"] = [message_json(m) async for m in conversation.messages.order_by("sequence")]
    return JsonResponse(body)


def preference_json(preference: Preference) -> dict[str, Any]:
    return {
        "agent": preference.agent,
        "model": preference.model,
        "system_prompt": preference.system_prompt,
        "temperature": preference.temperature,
        "max_tokens": preference.max_tokens,
        "store_conversations": preference.store_conversations,
    }


def _choice(name: str, value: Any, allowed: list[str]) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name)
    if value and value not in allowed:
        raise InvalidRequest(f"'{name}' must be empty or one of: {', '.join(allowed)}.", param=name)
    return value


def parse_preference(body: dict[str, Any]) -> dict[str, Any]:
    """The fields ``body`` changes, validated, or a 400 naming the bad one."""
    fields: dict[str, Any] = {}
    for name, value in body.items():
        if name == "agent":
            fields[name] = _choice(name, value, list(settings.AGENTS))
        elif name == "model":
            fields[name] = _choice(name, value, settings.MODELS)
        elif name == "system_prompt":
            if not isinstance(value, str) or len(value) > MAX_SYSTEM_PROMPT:
                raise InvalidRequest(
                    f"'system_prompt' must be a string of at most {MAX_SYSTEM_PROMPT} characters.",
                    param=name,
                )
            fields[name] = value
        elif name == "temperature":
            if value is not None and (not _is_number(value) or not 0 <= value <= 5):
                raise InvalidRequest("'temperature' must be null or from 0 to 5.", param=name)
            fields[name] = value
        elif name == "max_tokens":
            if value is not None and (not _is_int(value) or not 1 <= value <= 2**31 - 1):
                raise InvalidRequest("'max_tokens' must be null or a positive integer.", param=name)
            fields[name] = value
        elif name == "store_conversations":
            if not isinstance(value, bool):
                raise InvalidRequest("'store_conversations' must be a boolean.", param=name)
            fields[name] = value
        else:
            raise InvalidRequest(f"Unknown field {name!r}.", param=name)
    return fields


@api_view("GET", "PUT")
async def preferences(request: HttpRequest) -> HttpResponseBase:
    principal = await aauthenticate(request)
    if principal.user is None:
        raise AuthenticationFailed("Preferences belong to a signed-in user or an API key.")
    if request.method == "PUT":
        fields = parse_preference(read_json(request))
        preference, _ = await Preference.objects.aupdate_or_create(
            user=principal.user, defaults=fields
        )
    else:
        preference = await Preference.objects.filter(user=principal.user).afirst() or Preference(
            user=principal.user
        )
    return JsonResponse(preference_json(preference))
