"""The emulator's control API under ``/__emulator/``, for tests in another process.

- ``GET health``; ``GET requests`` (the log) and ``DELETE requests`` (clear it)
- ``POST faults`` with ``{"fault": SPEC, "count"?: N, "path_contains"?: str,
  "retry_after"?: seconds}`` or a list of those; ``GET faults``; ``DELETE faults``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from copilotedge.testing import asgi
from copilotedge.testing.asgi import Receive, Scope, Send
from copilotedge.testing.faults import Fault, parse_faults

if TYPE_CHECKING:
    from copilotedge.testing.state import EmulatorState

PREFIX = "/__emulator/"


@dataclass(frozen=True, slots=True)
class _Request:
    faults: list[Fault]
    count: int
    path_contains: str | None
    retry_after: float | None


def _validated(spec: Any) -> _Request:
    if not isinstance(spec, dict) or not isinstance(spec.get("fault"), str):
        raise ValueError('each fault must be an object with a "fault" spec string')
    count = spec.get("count", 1)
    retry_after = spec.get("retry_after")
    path_contains = spec.get("path_contains")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError('"count" must be a positive integer')
    if retry_after is not None and not isinstance(retry_after, int | float):
        raise ValueError('"retry_after" must be a number of seconds')
    if path_contains is not None and not isinstance(path_contains, str):
        raise ValueError('"path_contains" must be a string')
    faults = parse_faults(spec["fault"])
    if not faults:
        raise ValueError('"fault" is empty')
    return _Request(faults, count, path_contains, retry_after)


async def _queue_faults(app: EmulatorState, receive: Receive, send: Send) -> None:
    raw = await asgi.read_body(receive)
    if raw is None:
        return
    try:
        payload = json.loads(raw)
        # Validate all before queueing any, so a bad list changes nothing.
        requests = [
            _validated(spec) for spec in (payload if isinstance(payload, list) else [payload])
        ]
    except ValueError as error:
        await asgi.reply_json(send, 400, {"error": str(error)})
        return
    queued = [
        app.faults.add(
            r.faults, count=r.count, path_contains=r.path_contains, retry_after=r.retry_after
        ).as_dict()
        for r in requests
    ]
    await asgi.reply_json(send, 200, {"queued": queued})


async def handle(app: EmulatorState, scope: Scope, receive: Receive, send: Send) -> None:
    action = scope["path"].partition(PREFIX)[2].strip("/")
    method = scope["method"]
    if (action, method) == ("health", "GET"):
        status = {"status": "ok", "open_streams": app.open_streams, "requests": len(app.requests)}
        await asgi.reply_json(send, 200, status)
    elif (action, method) == ("requests", "GET"):
        await asgi.reply_json(send, 200, app.requests)
    elif (action, method) == ("requests", "DELETE"):
        app.clear_requests()
        await asgi.reply_json(send, 200, {"cleared": True})
    elif (action, method) == ("faults", "GET"):
        await asgi.reply_json(send, 200, app.faults.pending())
    elif (action, method) == ("faults", "POST"):
        await _queue_faults(app, receive, send)
    elif (action, method) == ("faults", "DELETE"):
        app.clear_faults()
        await asgi.reply_json(send, 200, {"cleared": True})
    else:
        await asgi.reply_json(send, 404, {"error": f"no control action {method} {action!r}"})
