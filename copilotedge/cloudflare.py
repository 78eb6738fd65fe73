"""The upstream client: Workers AI (or any OpenAI-compatible server) over httpx.

This is the only module that imports httpx. It turns both upstream stream shapes
(``{"response": …}`` frames from ``/ai/run`` and OpenAI ``choices[].delta`` frames)
into :class:`Delta` objects, and every upstream failure into an exception from
:mod:`copilotedge.exceptions`. Upstream bodies and credentials never leave it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpcore
import httpx

from . import exceptions, sse
from .conf import settings
from .network import AsyncioBackend

logger = logging.getLogger(__name__)

Route = Literal["openai", "run"]

# Parameters each route accepts; the rest of an OpenAI request is not forwarded.
OPENAI_PARAMS = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "response_format",
    }
)
RUN_PARAMS = OPENAI_PARAMS - {"stop", "tool_choice"}
_MAX_ERROR_BODY = 64 * 1024
JSON = "application/json"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    neurons: float | None = None

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call; ``arguments`` is a JSON fragment to append."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """One normalised upstream event: text, tool-call pieces, an end, or usage."""

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where requests go: Workers AI (with an account) or a plain OpenAI-compatible base."""

    base_url: str
    api_token: str
    account_id: str = ""
    name: str = "workers-ai"

    @classmethod
    def default(cls) -> Upstream:
        return cls(settings.API_BASE_URL, settings.API_TOKEN, settings.ACCOUNT_ID)

    def url(self, route: Route, model: str) -> str:
        if not self.account_id:
            return f"{self.base_url}/chat/completions"
        prefix = f"{self.base_url}/accounts/{self.account_id}/ai"
        return f"{prefix}/v1/chat/completions" if route == "openai" else f"{prefix}/run/{model}"


def route_for(model: str) -> Route:
    for pattern, route in settings.ROUTES.items():
        if fnmatch.fnmatchcase(model, pattern):
            return "openai" if route == "openai" else "run"
    return "run"


def build_payload(
    route: Route, model: str, messages: list[dict[str, Any]], params: dict[str, Any], stream: bool
) -> dict[str, Any]:
    allowed = OPENAI_PARAMS if route == "openai" else RUN_PARAMS
    payload: dict[str, Any] = {k: v for k, v in params.items() if k in allowed and v is not None}
    payload["messages"] = messages
    payload["stream"] = stream
    if route == "openai":
        payload["model"] = model
        if stream:
            payload["stream_options"] = {"include_usage": True}
    return payload


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
    """httpx's transport, on httpcore's pool with the asyncio backend (:mod:`.network`).

    httpx takes no network backend, so its pool is swapped for one built the same way.
    """
    limits = httpx.Limits(max_connections=settings.MAX_CONNECTIONS, max_keepalive_connections=100)
    transport = httpx.AsyncHTTPTransport(limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport


async def aclose_client() -> None:
    """Close this loop's client; call at shutdown (the ASGI lifespan does)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def error_for(status: int, body: bytes) -> exceptions.UpstreamError:
    """Translate an upstream error response, keeping Cloudflare's error code only."""
    code: int | None = None
    try:
        errors = json.loads(body).get("errors") or []
        code = int(errors[0]["code"]) if errors else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    if status in (401, 403):
        logger.error(
            "Workers AI refused our credentials (HTTP %s): check COPILOTEDGE_API_TOKEN "
            "and COPILOTEDGE_ACCOUNT_ID.",
            status,
        )
        return exceptions.UpstreamConfigurationError(upstream_code=code)
    if status == 404:
        return exceptions.ModelNotFound(upstream_code=code)
    if status == 429:
        if code == 3036:
            return exceptions.UpstreamQuotaExceeded(upstream_code=code)
        return exceptions.UpstreamRateLimited(upstream_code=code)
    if 400 <= status < 500:
        suffix = f" (upstream code {code})" if code else ""
        return exceptions.UpstreamRejected(
            f"The model provider rejected the request{suffix}.", upstream_code=code
        )
    return exceptions.UpstreamError(
        f"The model provider failed (HTTP {status}).", upstream_code=code
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    neurons = raw.get("neurons")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        neurons=float(neurons) if isinstance(neurons, int | float) else None,
    )


def _tool_calls(raw: Any) -> list[ToolCallDelta]:
    calls = []
    for position, call in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(call, dict):
            continue
        nested = call.get("function")
        function: dict[str, Any] = nested if isinstance(nested, dict) else call
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):  # /ai/run gives an object, OpenAI a JSON string
            arguments = json.dumps(arguments)
        calls.append(
            ToolCallDelta(
                index=int(call.get("index", position)),
                id=call.get("id"),
                name=function.get("name"),
                arguments=arguments,
            )
        )
    return calls


def parse_payload(payload: Any) -> Delta:
    """Normalise a stream frame or a whole response body of either upstream shape."""
    try:
        return _parse_payload(payload)
    except (AttributeError, TypeError, ValueError):
        # A frame of the wrong shape (a string for an object, "seven" for a count) ends
        # the answer with an upstream error, never a traceback.
        raise exceptions.UpstreamError(
            "The model provider sent a malformed answer.", code="upstream_malformed"
        ) from None


def _parse_payload(payload: Any) -> Delta:
    if not isinstance(payload, dict):
        raise TypeError("not an object")
    if payload.get("success") is False or "error" in payload:
        raise error_for(500, json.dumps(payload).encode())
    if isinstance(payload.get("result"), dict):
        payload = payload["result"]
    delta = Delta(usage=_usage(payload.get("usage")))
    choices = payload.get("choices")
    if isinstance(choices, list):
        for choice in choices[:1]:
            part = choice.get("delta") or choice.get("message") or {}
            delta.text = part.get("content") or ""
            if not isinstance(delta.text, str):
                raise TypeError("content is not a string")
            delta.tool_calls = _tool_calls(part.get("tool_calls"))
            delta.finish_reason = choice.get("finish_reason")
    else:
        response = payload.get("response")
        if response is not None and not isinstance(response, str):
            response = json.dumps(response)  # JSON mode answers with an object
        delta.text = response or ""
        delta.tool_calls = _tool_calls(payload.get("tool_calls"))
    return delta


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
