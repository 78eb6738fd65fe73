"""The response cache: complete answers on the Django cache, and single flight.

Only an answer that ended normally is stored (never an error, never a partial answer),
under a SHA-256 of what determines it: the model, the messages sent upstream and the
sampling parameters and tools, and whose request it is (the user, a key's user too, or for
anonymous callers the client address), so that a ``HIT`` never tells one user what another
asked; ``COPILOTEDGE_RESPONSE_CACHE_SHARED`` shares answers across callers. Ids,
timestamps, ``stream`` and the conversation id are not part of it, so a streamed request
can be answered from a non-streamed one's entry.

Caching is on by default only for deterministic requests (``temperature`` 0 or a
``seed``). A client overrides that per request with the ``X-CopilotEdge-Cache`` header:

- ``use``: read and store even though the request is not deterministic;
- ``refresh``: do not read, ask upstream and store the fresh answer;
- ``bypass``: neither read nor store.

Responses carry ``X-CopilotEdge-Cache: HIT`` (answered from the cache, no upstream call),
``MISS`` (looked up, answered upstream, stored if complete) or ``BYPASS`` (not used).

Single flight: identical cacheable requests in one process that arrive while the first
is still being answered wait for its answer instead of calling upstream again, then are
served it as a cache hit. (Across processes they do not coalesce: each process makes at
most one call per answer, and the shared cache serves every later request.)

A cache that fails is logged and skipped; it never fails a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches

from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage

# The statuses the X-CopilotEdge-Cache response header says.
from copilotedge.chat.types import BYPASS as BYPASS
from copilotedge.chat.types import HIT as HIT
from copilotedge.chat.types import MISS as MISS
from copilotedge.chat.types import Answer, ChatRequest
from copilotedge.conf import settings
from copilotedge.exceptions import CopilotEdgeError, InvalidRequest
from copilotedge.log_limits import Throttle
from copilotedge.upstream.requests import OPENAI_PARAMS

logger = logging.getLogger(__name__)

HEADER = "X-CopilotEdge-Cache"
USE, REFRESH = "use", "refresh"
DIRECTIVES = frozenset({USE, REFRESH, BYPASS.lower()})

_KEY_PREFIX = "copilotedge:response:"
_VERSION = 1
_FLOAT_PARAMS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_errors = Throttle()

Entry = dict[str, Any]


def parse_directive(headers: Mapping[str, str]) -> str:
    """The request's ``X-CopilotEdge-Cache`` value (``""`` when absent), or a 400."""
    value = (headers.get(HEADER) or "").strip().lower()
    if value and value not in DIRECTIVES:
        raise InvalidRequest(
            f"{HEADER} must be one of: use, refresh, bypass.", code="invalid_cache_directive"
        )
    return value


def normalised_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that change an answer, with numbers in one spelling (0 == 0.0)."""
    result = {
        name: value for name, value in params.items() if name in OPENAI_PARAMS and value is not None
    }
    for name in _FLOAT_PARAMS:
        if name in result:
            result[name] = float(result[name])
    return result


def key_for(
    model: str, messages: list[dict[str, Any]], params: Mapping[str, Any], scope: str = ""
) -> str:
    """The cache key of an answer; ``scope`` (whose it is) is ``""`` for a shared one."""
    material = json.dumps(
        {
            "v": _VERSION,
            "model": model,
            "messages": messages,
            "params": normalised_params(params),
            "scope": scope,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return _KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()


def is_deterministic(params: Mapping[str, Any]) -> bool:
    temperature = params.get("temperature")
    return (temperature is not None and float(temperature) == 0.0) or params.get("seed") is not None


@dataclass(frozen=True, slots=True)
class Plan:
    """What the cache does for one turn: which key, whether to read, whether to store."""

    key: str | None = None
    read: bool = False
    write: bool = False


def plan_for(request: ChatRequest) -> Plan:
    """What the cache does for ``request`` (as it goes upstream, history included)."""
    directive = request.cache
    if not settings.RESPONSE_CACHE or directive == BYPASS.lower():
        return Plan()
    params = request.params
    scope = "" if settings.RESPONSE_CACHE_SHARED else request.scope
    key = key_for(request.model, request.messages, params, scope)
    if directive == REFRESH:
        return Plan(key, read=False, write=True)
    if directive == USE or is_deterministic(params):
        return Plan(key, read=True, write=True)
    return Plan()


def _log_failure(action: str) -> None:
    if _errors.ready():
        logger.warning(
            "Response cache %r unavailable (%s); serving without it.",
            settings.CACHE_ALIAS,
            action,
            exc_info=True,
        )


class CacheUnavailable(Exception):
    """The cache could not be read; the turn goes on without it."""


async def lookup_entry(key: str) -> Entry | None:
    try:
        cache = caches[settings.CACHE_ALIAS]
        entry = await sync_to_async(cache.get, thread_sensitive=False)(key)
    except Exception:
        _log_failure("read")
        raise CacheUnavailable from None
    if isinstance(entry, dict) and entry.get("v") == _VERSION:
        return entry
    return None


async def astore(key: str, entry: Entry) -> None:
    try:
        cache = caches[settings.CACHE_ALIAS]
        await sync_to_async(cache.set, thread_sensitive=False)(
            key, entry, settings.RESPONSE_CACHE_TTL
        )
    except Exception:
        _log_failure("write")


def _usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "neurons": usage.neurons,
    }


def entry_from_answer(model: str, answer: Answer) -> Entry:
    """An entry from a folded :class:`~copilotedge.chat.types.Answer`."""
    return {
        "v": _VERSION,
        "model": model,
        "text": answer.text,
        "tool_calls": [
            {"id": call.id, "name": call.name, "arguments": call.arguments}
            for call in answer.tool_calls.values()
        ],
        "finish_reason": answer.final_finish_reason(),
        "usage": _usage_dict(answer.usage),
    }


def entry_from_delta(model: str, delta: Delta) -> Entry:
    """An entry from a whole (non-streamed) answer."""
    return {
        "v": _VERSION,
        "model": model,
        "text": delta.text,
        "tool_calls": [
            {"id": piece.id, "name": piece.name or "", "arguments": piece.arguments}
            for piece in delta.tool_calls
        ],
        "finish_reason": delta.finish_reason or ("tool_calls" if delta.tool_calls else "stop"),
        "usage": _usage_dict(delta.usage),
    }


def delta_from_entry(entry: Entry) -> Delta:
    """The whole cached answer as one delta (text, tool calls, finish reason, usage)."""
    usage = entry.get("usage")
    return Delta(
        text=entry.get("text") or "",
        tool_calls=[
            ToolCallDelta(index=i, id=c["id"], name=c["name"], arguments=c["arguments"])
            for i, c in enumerate(entry.get("tool_calls") or [])
        ],
        finish_reason=entry.get("finish_reason") or "stop",
        usage=Usage(**usage) if isinstance(usage, dict) else None,
    )


class ReplayStream:
    """A cached answer served as a stream: the content, then the end with usage."""

    def __init__(self, entry: Entry) -> None:
        self._entry = entry
        self.closed = False

    async def batches(self) -> AsyncIterator[list[Delta]]:
        whole = delta_from_entry(self._entry)
        end = Delta(finish_reason=whole.finish_reason, usage=whole.usage)
        if whole.text or whole.tool_calls:
            yield [Delta(text=whole.text, tool_calls=whole.tool_calls), end]
        else:
            yield [end]

    async def aclose(self) -> None:
        self.closed = True

    async def abort(self, error: BaseException) -> None:
        await self.aclose()


def served_model(entry: Entry, requested: str) -> str:
    """The model that made the cached answer ``entry`` (``requested`` if it does not say)."""
    return str(entry.get("model") or requested)


class Flight:
    """One in-flight upstream call that identical requests wait for.

    It ends with the answer's entry, or with the leader's upstream error (shared, so that
    a failing upstream is not asked again by every follower), or with neither when the
    leader was cancelled (a follower then leads a new call).
    """

    def __init__(self) -> None:
        self.entry: Entry | None = None
        self.error: CopilotEdgeError | None = None
        self._done = asyncio.Event()

    def finish(self, entry: Entry | None, error: BaseException | None = None) -> None:
        self.entry = entry
        if isinstance(error, CopilotEdgeError):
            self.error = error
        self._done.set()

    async def wait(self) -> Entry | None:
        await self._done.wait()
        return self.entry


_flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Flight]] = (
    weakref.WeakKeyDictionary()
)


def _loop_flights() -> dict[str, Flight]:
    loop = asyncio.get_running_loop()
    flights = _flights.get(loop)
    if flights is None:
        flights = _flights[loop] = {}
    return flights


def join(key: str) -> tuple[Flight, bool]:
    """The flight for ``key`` and whether the caller leads it (makes the upstream call)."""
    flights = _loop_flights()
    flight = flights.get(key)
    if flight is not None:
        return flight, False
    flight = flights[key] = Flight()
    return flight, True


def land(key: str, flight: Flight, entry: Entry | None, error: BaseException | None = None) -> None:
    """The leader is done: wake the followers with its entry or its error."""
    flights = _loop_flights()
    if flights.get(key) is flight:
        del flights[key]
    flight.finish(entry, error)
