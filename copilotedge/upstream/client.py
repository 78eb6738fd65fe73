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
import math
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


#: Connections per pool. httpcore 1.0's pool looks at all its connections, for every
#: idle one, each time a request starts or ends (encode/httpcore#1035), so its work grows
#: with the square of its size: hundreds of held streams in one pool cost more CPU in it
#: than in everything else a stream does. The process's ``COPILOTEDGE_MAX_CONNECTIONS``
#: are spread over pools of at most this many, each request to the least busy one.
POOL_SIZE = 32
#: Idle connections kept for reuse, over all pools.
KEEPALIVE = 100


class _Pools:
    """One event loop's upstream clients, each with a pool of its own."""

    def __init__(self) -> None:
        total = settings.MAX_CONNECTIONS
        count = max(1, math.ceil(total / POOL_SIZE))
        # Pool i gets its share of the connections and of the idle ones (the shares add up
        # to the totals).
        limits = [
            httpx.Limits(
                max_connections=_share(total, count, index),
                max_keepalive_connections=max(1, _share(KEEPALIVE, count, index)),
            )
            for index in range(count)
        ]
        timeout = httpx.Timeout(
            connect=settings.CONNECT_TIMEOUT,
            read=settings.READ_TIMEOUT,
            write=settings.CONNECT_TIMEOUT,
            pool=settings.CONNECT_TIMEOUT,
        )
        # One TLS context for all (loading the CA bundle takes milliseconds).
        tls = httpx.create_ssl_context()
        self.clients = [
            httpx.AsyncClient(
                timeout=timeout,
                transport=httpx.AsyncHTTPTransport(limits=pool_limits, verify=tls),
                headers={"User-Agent": "copilotedge"},
            )
            for pool_limits in limits
        ]
        #: Requests sent and not yet closed, by pool.
        self.busy = [0] * count

    @property
    def closed(self) -> bool:
        return self.clients[0].is_closed

    def least_busy(self) -> int:
        return min(range(len(self.busy)), key=self.busy.__getitem__)

    def lease(self) -> _Lease:
        return _Lease(self, self.least_busy())

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))


def _share(total: int, count: int, index: int) -> int:
    """Pool ``index``'s share of ``total`` split over ``count`` pools."""
    return total // count + (1 if index < total % count else 0)


class _Lease:
    """A request's place in one of the pools, from its send to its response's close."""

    def __init__(self, pools: _Pools, index: int) -> None:
        self.pools = pools
        self.index = index
        self.client = pools.clients[index]
        pools.busy[index] += 1
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.pools.busy[self.index] -= 1


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pools] = weakref.WeakKeyDictionary()


def _loop_pools() -> _Pools:
    loop = asyncio.get_running_loop()
    pools = _pools.get(loop)
    if pools is None or pools.closed:
        pools = _pools[loop] = _Pools()
    return pools


def get_client() -> httpx.AsyncClient:
    """The client this event loop's next request goes out with (a client is bound to its
    loop; each has a pool of its own, and the least busy one is next)."""
    pools = _loop_pools()
    return pools.clients[pools.least_busy()]


async def close_client() -> None:
    """Close this loop's clients; call at shutdown (the ASGI lifespan does)."""
    pools = _pools.pop(asyncio.get_running_loop(), None)
    if pools is not None:
        await pools.aclose()


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

    def __init__(self, response: httpx.Response, deadline: float, lease: _Lease) -> None:
        self._response = response
        self._deadline = deadline
        self._lease = lease
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
            await self._close_response()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self._close_response()

    async def _close_response(self) -> None:
        try:
            await self._response.aclose()
        finally:
            self._lease.release()


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
) -> tuple[httpx.Response, _Lease]:
    """The response, once its headers came, and its place in the pools (released once it
    is closed)."""
    route = route_for(model) if upstream.account_id else "openai"
    lease = _loop_pools().lease()
    try:
        request = lease.client.build_request(
            "POST",
            upstream.url(route, model),
            content=_json_body(build_payload(route, model, messages, params, stream)),
            headers={"Authorization": f"Bearer {upstream.api_token}", "Content-Type": JSON},
        )
        response = await lease.client.send(request, stream=True)
    except httpx.TimeoutException:
        lease.release()
        raise exceptions.UpstreamTimeout() from None
    except httpx.HTTPError:
        lease.release()
        raise exceptions.UpstreamError(
            "The model provider could not be reached.", code="upstream_unreachable"
        ) from None
    except BaseException:
        lease.release()
        raise
    if response.status_code >= 400:
        try:
            body = await _read_limited(response)
        finally:
            try:
                await response.aclose()
            finally:
                lease.release()
        error = error_for(response.status_code, body)
        error.retry_after = _retry_after(response)
        raise error
    return response, lease


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
    response, lease = await _send(
        upstream or Upstream.default(), model, messages, params, stream=True
    )
    return UpstreamStream(response, deadline, lease)


async def complete(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    upstream: Upstream | None = None,
) -> Delta:
    """A non-streamed request: the whole answer as one :class:`Delta`."""
    response, lease = await _send(
        upstream or Upstream.default(), model, messages, params, stream=False
    )
    try:
        async with asyncio.timeout(settings.TOTAL_TIMEOUT):
            body = await response.aread()
    except (TimeoutError, httpx.TimeoutException):
        raise exceptions.UpstreamTimeout() from None
    except httpx.HTTPError:
        raise exceptions.UpstreamError(code="upstream_incomplete") from None
    finally:
        try:
            await response.aclose()
        finally:
            lease.release()
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
