"""The upstream client: Workers AI (or any OpenAI-compatible server) over httpx.

This is the only module that imports httpx. It sends the requests
:mod:`copilotedge.upstream.requests` shapes, reads both upstream stream shapes
(``{"response": …}`` frames from ``/ai/run`` and OpenAI ``choices[].delta`` frames) and
hands each payload to :mod:`copilotedge.chat.deltas`, which turns it into a
:class:`~copilotedge.chat.deltas.Delta`; every upstream failure becomes an exception from
:mod:`copilotedge.exceptions`. Upstream bodies and credentials never leave it.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from copilotedge import exceptions
from copilotedge.chat import sse
from copilotedge.chat.deltas import Delta, error_for, parse_payload
from copilotedge.conf import settings
from copilotedge.upstream.requests import Upstream, build_payload, route_for

_MAX_ERROR_BODY = 64 * 1024
JSON = "application/json"


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def get_client() -> httpx.AsyncClient:
    """The process's shared client (one per event loop, since a client is bound to its loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.CONNECT_TIMEOUT,
                read=settings.READ_TIMEOUT,
                write=settings.CONNECT_TIMEOUT,
                pool=settings.CONNECT_TIMEOUT,
            ),
            transport=_transport(),
            headers={"User-Agent": "copilotedge"},
        )
        _clients[loop] = client
    return client


def _transport() -> httpx.AsyncHTTPTransport:
    limits = httpx.Limits(max_connections=settings.MAX_CONNECTIONS, max_keepalive_connections=100)
    return httpx.AsyncHTTPTransport(limits=limits)


async def close_client() -> None:
    """Close this loop's client; call at shutdown (the ASGI lifespan does)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


_draining: set[asyncio.Task[None]] = set()  # strong references, so they are not collected


class UpstreamStream:
    """An open upstream event stream; ``aclose`` hangs up at once.

    ``batches()`` yields the deltas of each network read together, so a face can send
    them to its client in one write; iterating the stream itself yields single deltas.
    """

    def __init__(self, response: httpx.Response, deadline: float) -> None:
        self._response = response
        self._deadline = deadline
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[Delta]:
        batches = self.batches()
        try:
            async for batch in batches:
                for delta in batch:
                    yield delta
        finally:
            await batches.aclose()  # hang up now, not when the generator is collected

    async def batches(self) -> AsyncGenerator[list[Delta], None]:
        parser = sse.SSEParser()
        finished = False
        try:
            chunks = self._response.aiter_bytes()
            async for chunk in chunks:
                batch = []
                for event in parser.feed(chunk):
                    if event.data == sse.DONE:
                        finished = True
                        break
                    try:
                        batch.append(parse_payload(_load_frame(event.data)))
                    except exceptions.UpstreamError:
                        if batch:
                            yield batch  # the frames before a bad one are the answer so far
                        raise
                if batch:
                    yield batch
                if finished:
                    self._drain_soon(chunks)
                    break
                if time.monotonic() > self._deadline:
                    raise exceptions.UpstreamTimeout("The answer took longer than allowed.")
        except httpx.TimeoutException:
            raise exceptions.UpstreamTimeout("The model provider stalled mid-answer.") from None
        except httpx.HTTPError:
            raise exceptions.UpstreamError(
                "The connection to the model provider broke mid-answer.", code="upstream_incomplete"
            ) from None
        finally:
            await self.aclose()
        if not finished:
            raise exceptions.UpstreamError(
                "The model provider ended the answer early.", code="upstream_incomplete"
            )

    def _drain_soon(self, chunks: AsyncIterator[bytes]) -> None:
        # Reading the body to its end after [DONE] hands the connection back to the
        # pool; closing it half-read would cost a new connection per request. It runs
        # in the background: an upstream slow to end its body must not hold up the
        # end of the answer. The stream counts as closed from here on.
        self.closed = True
        task = asyncio.get_running_loop().create_task(self._drain(chunks))
        _draining.add(task)
        task.add_done_callback(_draining.discard)

    async def _drain(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async with asyncio.timeout(1.0):
                async for _ in chunks:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self._response.aclose()


def _load_frame(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise exceptions.UpstreamError(
            "The model provider sent a malformed stream frame.", code="upstream_malformed"
        ) from None


async def _send(
    upstream: Upstream,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    stream: bool,
) -> httpx.Response:
    route = route_for(model) if upstream.account_id else "openai"
    request = get_client().build_request(
        "POST",
        upstream.url(route, model),
        content=_json_body(build_payload(route, model, messages, params, stream)),
        headers={"Authorization": f"Bearer {upstream.api_token}", "Content-Type": JSON},
    )
    try:
        response = await get_client().send(request, stream=True)
    except httpx.TimeoutException:
        raise exceptions.UpstreamTimeout() from None
    except httpx.HTTPError:
        raise exceptions.UpstreamError(
            "The model provider could not be reached.", code="upstream_unreachable"
        ) from None
    if response.status_code >= 400:
        try:
            body = await _read_limited(response)
        finally:
            await response.aclose()
        error = error_for(response.status_code, body)
        error.retry_after = _retry_after(response)
        raise error
    return response


def _json_body(payload: dict[str, Any]) -> bytes:
    # Not httpx's json=: it encodes to UTF-8 unescaped, which fails on a lone surrogate
    # (valid JSON from a client, "\ud83d"); such a body goes out ASCII-escaped instead.
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return body.encode()
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode()


async def _read_limited(response: httpx.Response) -> bytes:
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    return body


async def open_stream(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    upstream: Upstream | None = None,
) -> UpstreamStream:
    """Send a streaming request; errors before the first byte raise here."""
    deadline = time.monotonic() + settings.TOTAL_TIMEOUT
    response = await _send(upstream or Upstream.default(), model, messages, params, stream=True)
    return UpstreamStream(response, deadline)


async def complete(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    upstream: Upstream | None = None,
) -> Delta:
    """A non-streamed request: the whole answer as one :class:`Delta`."""
    response = await _send(upstream or Upstream.default(), model, messages, params, stream=False)
    try:
        async with asyncio.timeout(settings.TOTAL_TIMEOUT):
            body = await response.aread()
    except (TimeoutError, httpx.TimeoutException):
        raise exceptions.UpstreamTimeout() from None
    except httpx.HTTPError:
        raise exceptions.UpstreamError(code="upstream_incomplete") from None
    finally:
        await response.aclose()
    try:
        payload = json.loads(body)
    except ValueError:
        raise exceptions.UpstreamError(
            "The model provider sent a malformed answer.", code="upstream_malformed"
        ) from None
    delta = parse_payload(payload)
    if delta.finish_reason is None:
        delta.finish_reason = "tool_calls" if delta.tool_calls else "stop"
    return delta
