"""HTTP faces: OpenAI Chat Completions, the model list and Workers AI ``/ai/run``.

Each view authenticates, validates, hands a :class:`~copilotedge.chat.turn.Turn` the work and
renders what comes back. Every failure is an OpenAI error object with a 4xx/5xx status.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import WSGIRequest
from django.db import OperationalError
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from copilotedge import openapi
from copilotedge.auth import aauthenticate
from copilotedge.chat import faces, sse, wire
from copilotedge.chat.agents import named_agent, with_agent
from copilotedge.chat.turn import Turn
from copilotedge.chat.validation import (
    parse_chat,
    parse_include_tool_steps,
    parse_include_usage,
    parse_json,
    parse_model,
)
from copilotedge.conf import settings
from copilotedge.exceptions import (
    AsgiRequired,
    CopilotEdgeError,
    DatabaseUnavailable,
    InvalidRequest,
    RequestTooLarge,
)
from copilotedge.upstream import response_cache as cache

logger = logging.getLogger(__name__)

CONVERSATION_HEADER = "X-CopilotEdge-Conversation"

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def error_response(error: CopilotEdgeError, body: dict[str, Any] | None = None) -> JsonResponse:
    response = JsonResponse(body or error.to_dict(), status=error.status_code)
    if error.retry_after is not None:
        # Whole seconds, rounded up: a client that waits exactly this long gets in.
        response["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


def api_view(*methods: str) -> Callable[[View], View]:
    """Allow ``methods`` only and turn any :class:`CopilotEdgeError` into its response.

    Views are CSRF-exempt here because :func:`aauthenticate` enforces CSRF itself for
    session-authenticated requests (bearer-key requests need none).
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if request.method not in methods:
                error = InvalidRequest(f"Use {' or '.join(methods)}.", code="method_not_allowed")
                response = error_response(error)
                response.status_code = 405
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return await view(request, *args, **kwargs)
            except CopilotEdgeError as error:
                return error_response(error)
            except OperationalError:
                # The database is down or its pool had no connection in time: a
                # capacity problem to retry, not a crash.
                logger.exception("Database unavailable for %s", request.path)
                return error_response(DatabaseUnavailable())

        return csrf_exempt(wrapper)

    return decorator


def read_json(request: HttpRequest) -> dict[str, Any]:
    """The JSON object body, refusing oversized bodies before reading them."""
    limit = settings.MAX_BODY_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    too_large = RequestTooLarge(f"The body is larger than {limit} bytes.")
    if length > limit:
        raise too_large
    try:
        return parse_json(request.body)
    except RequestDataTooBig:
        raise too_large from None


def require_asgi(request: HttpRequest) -> None:
    """Refuse to stream over WSGI: its handler cannot serve an async stream as it goes,
    so the answer would come late or cut short."""
    if isinstance(request, WSGIRequest):
        raise AsgiRequired()


def event_stream(frames: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        wire.with_keepalive(frames, settings.KEEPALIVE_SECONDS),
        content_type=sse.CONTENT_TYPE,
    )
    for name, value in sse.HEADERS.items():
        response[name] = value
    return response


@api_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    principal = await aauthenticate(request)
    body = read_json(request)
    # ``model: "agent:<id>"``: that agent's model, prompt and params, and its server tools.
    agent = named_agent(body.get("model"))
    chat = parse_chat({**body, "model": None} if agent else body)
    if agent is not None:
        chat = with_agent(chat, agent)
    chat.cache = cache.parse_directive(request.headers)
    turn = Turn(
        chat,
        principal,
        protocol="openai",
        server_tools=agent.server_tools() if agent is not None else (),
    )
    response: HttpResponseBase
    if turn.request.stream:
        require_asgi(request)
        include_usage = parse_include_usage(body)
        include_tool_steps = parse_include_tool_steps(body)
        await faces.aopen(turn)
        frames = wire.openai_stream(
            turn, include_usage=include_usage, include_tool_steps=include_tool_steps
        )
        response = event_stream(frames)
    else:
        await faces.acomplete(turn)
        response = JsonResponse(wire.openai_completion(turn))
    if turn.transcript is not None:
        response[CONVERSATION_HEADER] = str(turn.transcript.conversation_id)
    response[cache.HEADER] = turn.cache_status
    return response


@api_view("GET")
async def models(request: HttpRequest) -> HttpResponseBase:
    await aauthenticate(request)
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "cloudflare"}
        for model in settings.MODELS
    ]
    return JsonResponse({"object": "list", "data": data})


@api_view("POST")
async def ai_run(request: HttpRequest, model: str) -> HttpResponseBase:
    try:
        principal = await aauthenticate(request)
        body = read_json(request)
        turn = Turn(parse_chat(body, model=parse_model(model)), principal, protocol="run")
        turn.request.cache = cache.parse_directive(request.headers)
        response: HttpResponseBase
        if turn.request.stream:
            require_asgi(request)
            await faces.aopen(turn)
            response = event_stream(wire.run_stream(turn))
        else:
            await faces.acomplete(turn)
            response = JsonResponse(wire.run_envelope(turn))
    except CopilotEdgeError as error:
        return error_response(error, wire.run_error(error))
    if turn.transcript is not None:
        response[CONVERSATION_HEADER] = str(turn.transcript.conversation_id)
    response[cache.HEADER] = turn.cache_status
    return response


@api_view("GET")
async def openapi_description(request: HttpRequest) -> HttpResponseBase:
    """The OpenAPI 3.1 description of this API (public: it holds no secrets)."""
    return JsonResponse(openapi.describe(), json_dumps_params={"indent": 1})
