"""CopilotKit's runtime endpoints: AG-UI (``info``, ``agent/run|connect|stop``) and legacy GraphQL.

CopilotKit ≥ 1.50 first tries ``GET copilotkit/info`` and then uses the REST routes; when
that fails it falls back to the single route, ``POST copilotkit`` with an envelope
``{"method", "params", "body"}``. CopilotKit ≤ 1.10 posts GraphQL to that same URL, so a
body with a ``query`` is GraphQL and a body with a ``method`` is an envelope.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from graphql import (
    ExecutionResult,
    ExperimentalIncrementalExecutionResults,
    GraphQLError,
    experimental_execute_incrementally,
)

from copilotedge.auth import aauthenticate
from copilotedge.chat import faces
from copilotedge.chat.agents import all_agents, get_agent
from copilotedge.chat.turn import Turn
from copilotedge.copilotkit.agui import interrupts
from copilotedge.copilotkit.agui import run as agui
from copilotedge.copilotkit.agui import runs as agui_runs
from copilotedge.copilotkit.graphql import resolve as copilotkit_gql
from copilotedge.copilotkit.graphql.incremental import CONTENT_TYPE as MULTIPART
from copilotedge.copilotkit.graphql.incremental import PathFormat, multipart
from copilotedge.copilotkit.graphql.limits import Operation, aparse_operation
from copilotedge.copilotkit.graphql.schema import get_schema
from copilotedge.exceptions import CopilotEdgeError, InvalidRequest, UpstreamError
from copilotedge.models import Message
from copilotedge.tools import PendingApproval
from copilotedge.views import api_view, event_stream, read_json, require_asgi

# Reported as the runtime's version in ``info``; CopilotKit only displays it.
RUNTIME_VERSION = "1.50.0"
METHODS = ("info", "agent/run", "agent/connect", "agent/stop")


def runtime_info() -> dict[str, Any]:
    return {
        "version": RUNTIME_VERSION,
        "agents": {agent_id: agent.info() for agent_id, agent in all_agents().items()},
        "audioFileTranscriptionEnabled": False,
        # Asks CopilotKit's browser code not to send telemetry to CopilotKit's servers.
        "telemetryDisabled": True,
    }


async def arun(request: HttpRequest, agent_id: str, body: Any) -> HttpResponseBase:
    principal = await aauthenticate(request)
    require_asgi(request)
    agent = get_agent(agent_id)
    run_input = agui.parse_run_input(body)
    # A confirm=True call waits for the caller's answer in a later run of this agent and
    # thread (an interrupt); the run's resume entries are the answers.
    owner, scope = principal.identity, interrupts.approval_scope(agent_id, run_input.thread_id)
    approvals = interrupts.resumed_approvals(run_input, owner, scope)
    waiting: list[PendingApproval] = []
    # The thread is stored as a conversation (started by its first run), so that
    # `connect` can replay it.
    chat = agui.chat_request(
        agent, run_input, agui.thread_conversation_id(principal, run_input.thread_id)
    )
    chat.create_conversation = True
    turn = Turn(
        chat,
        principal,
        protocol="agui",
        server_tools=agent.server_tools(),
        approve=interrupts.deferring_approver(owner, scope, waiting),
        approvals=approvals,
    )
    opened = True
    try:
        await faces.aopen(turn)
    except UpstreamError:
        opened = False  # told in-band as RUN_ERROR; limits and auth stay HTTP errors

    async def frames() -> AsyncIterator[bytes]:
        async with agui_runs.running(
            run_input.thread_id, run_input.run_id, principal.identity
        ) as running:
            events = agui.run_events(
                turn, run_input, running.stopped, opened=opened, waiting=waiting
            )
            async for frame in events:
                yield frame

    return event_stream(frames())


async def aconnect(request: HttpRequest, agent_id: str, body: Any) -> HttpResponseBase:
    principal = await aauthenticate(request)
    get_agent(agent_id)
    run_input = agui.parse_run_input(body)
    conversation = await agui.owned_thread(principal, run_input.thread_id)

    async def frames() -> AsyncIterator[bytes]:
        if conversation is None:
            return  # nothing stored for this thread: an empty replay
        messages = [m async for m in Message.objects.filter(conversation=conversation)]
        async for frame in agui.connect_events(run_input, messages):
            yield frame

    return event_stream(frames())


async def astop(request: HttpRequest, agent_id: str, thread_id: str, body: Any) -> HttpResponseBase:
    principal = await aauthenticate(request)
    get_agent(agent_id)
    run_id = body.get("runId") if isinstance(body, dict) else None
    if run_id is not None and not isinstance(run_id, str):
        raise InvalidRequest("'runId' must be a string.", param="runId")
    stopped = await agui_runs.astop(thread_id, principal.identity, run_id)
    return JsonResponse({"threadId": thread_id, "stopped": stopped > 0})


def _optional_body(request: HttpRequest) -> dict[str, Any]:
    return read_json(request) if request.body.strip() else {}


@api_view("GET")
async def info(request: HttpRequest) -> HttpResponseBase:
    await aauthenticate(request)
    return JsonResponse(runtime_info())


@api_view("POST")
async def agent_run(request: HttpRequest, agent_id: str) -> HttpResponseBase:
    return await arun(request, agent_id, read_json(request))


@api_view("POST")
async def agent_connect(request: HttpRequest, agent_id: str) -> HttpResponseBase:
    return await aconnect(request, agent_id, read_json(request))


@api_view("POST")
async def agent_stop(request: HttpRequest, agent_id: str, thread_id: str) -> HttpResponseBase:
    return await astop(request, agent_id, thread_id, _optional_body(request))


def _envelope_params(envelope: dict[str, Any]) -> dict[str, Any]:
    params = envelope.get("params", {})
    if not isinstance(params, dict):
        raise InvalidRequest("'params' must be an object.", param="params")
    return params


def _string_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'params.{name}' must be a non-empty string.", param=f"params.{name}")
    return value


@api_view("POST")
async def single_route(request: HttpRequest) -> HttpResponseBase:
    """``POST copilotkit``: a GraphQL operation or an AG-UI single-route envelope."""
    body = read_json(request)
    if "query" in body:
        return await graphql(request, body)
    method = body.get("method")
    if method not in METHODS:
        raise InvalidRequest(
            f"'method' must be one of {', '.join(METHODS)} (or send a GraphQL 'query').",
            param="method",
        )
    if method == "info":
        await aauthenticate(request)
        return JsonResponse(runtime_info())
    params = _envelope_params(body)
    agent_id = _string_param(params, "agentId")
    payload = body.get("body", {})
    if method == "agent/run":
        return await arun(request, agent_id, payload)
    if method == "agent/connect":
        return await aconnect(request, agent_id, payload)
    thread_id = params.get("threadId") or (
        payload.get("threadId") if isinstance(payload, dict) else None
    )
    if not isinstance(thread_id, str) or not thread_id:
        raise InvalidRequest(
            "'params.threadId' must be a non-empty string.", param="params.threadId"
        )
    return await astop(request, agent_id, thread_id, payload)


def graphql_error_response(
    errors: list[dict[str, Any]], status: int, cause: CopilotEdgeError | None = None
) -> JsonResponse:
    response = JsonResponse({"errors": errors}, status=status)
    if cause is not None and cause.retry_after is not None:
        response["Retry-After"] = str(max(1, round(cause.retry_after)))
    return response


def _app_error(errors: list[GraphQLError]) -> CopilotEdgeError | None:
    """The first error the app raised (auth, limits, bad input), which sets the status."""
    for error in errors:
        if isinstance(error.original_error, CopilotEdgeError):
            return error.original_error
    return None


async def _execute(
    operation: Operation, context: copilotkit_gql.Context
) -> ExecutionResult | ExperimentalIncrementalExecutionResults:
    outcome = experimental_execute_incrementally(
        get_schema(),
        operation.document,
        root_value=copilotkit_gql.ROOT,
        context_value=context,
        variable_values=operation.variables,
        operation_name=operation.name,
    )
    if isinstance(outcome, ExecutionResult | ExperimentalIncrementalExecutionResults):
        return outcome
    return await outcome


async def graphql(request: HttpRequest, body: dict[str, Any]) -> HttpResponseBase:
    """Execute a GraphQL operation; incremental results go out as ``multipart/mixed``."""
    try:
        principal = await aauthenticate(request)
        if "multipart/mixed" in request.headers.get("Accept", ""):
            require_asgi(request)
    except CopilotEdgeError as error:
        formatted = {"message": error.message, "extensions": {"code": error.code}}
        return graphql_error_response([formatted], error.status_code, error)
    try:
        operation = await aparse_operation(body)
    except GraphQLError as error:
        return graphql_error_response([dict(error.formatted)], 400)
    context = copilotkit_gql.Context(principal)
    try:
        result = await _execute(operation, context)
    except BaseException:  # a client gone before the first payload: hang up upstream too
        await context.cancel()
        raise
    if isinstance(result, ExecutionResult):
        errors = [copilotkit_gql.format_error(e) for e in result.errors or []]
        cause = _app_error(result.errors or [])
        if cause is not None:
            return graphql_error_response(errors, cause.status_code, cause)
        code = 400 if result.data is None else 200
        return JsonResponse(
            {"data": result.data, **({"errors": errors} if errors else {})}, status=code
        )
    initial = result.initial_result
    cause = _app_error(initial.errors or [])
    if cause is not None and initial.data is None:
        await result.subsequent_results.aclose()
        await context.cancel()
        errors = [copilotkit_gql.format_error(e) for e in initial.errors or []]
        return graphql_error_response(errors, cause.status_code, cause)
    rewrite = PathFormat()

    async def payloads() -> AsyncIterator[dict[str, Any]]:
        try:
            yield rewrite.initial(initial.formatted)  # type: ignore[arg-type]
            async for subsequent in result.subsequent_results:
                payload = rewrite.subsequent(subsequent.formatted)  # type: ignore[arg-type]
                if payload is not None:
                    yield payload
        finally:
            # Stopping the runs first closes the feeds graphql-core is waiting on.
            await context.cancel()
            with contextlib.suppress(RuntimeError):  # still running if we were cancelled in it
                await result.subsequent_results.aclose()

    if "multipart/mixed" in request.headers.get("Accept", ""):
        response = StreamingHttpResponse(multipart(payloads()), content_type=MULTIPART)
        response["Cache-Control"] = "no-cache"
        return response
    errors = [copilotkit_gql.format_error(e) for e in initial.errors or []]
    async for payload in payloads():
        for entry in payload.get("incremental") or []:
            errors += entry.get("errors") or []
    return JsonResponse(rewrite.final(errors))
