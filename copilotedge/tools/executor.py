"""Running the model's tool calls: validate, check permission, ask approval, run, time out.

Whatever happens, a call ends as a :class:`ToolResult` whose ``content`` the model reads:
a refusal, a denial, a validation error, an exception or a timeout is told to the model,
logged and counted (``copilotedge_tool_calls_total{tool,outcome}``), and the turn goes on.
Only cancellation (a client gone, a stop) propagates.

An approver that cannot wait for its answer (a face whose person answers in a later
request) raises :class:`ApprovalDeferred`: the call then ends ``deferred``, without a
result for the model yet; :func:`deny` ends a call nobody approved without running it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
import pydantic_core
from asgiref.sync import iscoroutinefunction, sync_to_async

from copilotedge.conf import settings
from copilotedge.tools.registry import Tool, ToolContext
from copilotedge.usage import metrics

logger = logging.getLogger(__name__)

OK = "ok"
ERROR = "error"
TIMEOUT = "timeout"
INVALID = "invalid"
FORBIDDEN = "forbidden"
DENIED = "denied"
CANCELLED = "cancelled"
#: Approval was deferred to a later request: the call has no result yet.
DEFERRED = "deferred"

#: Asks a person whether a ``confirm=True`` call may run; True approves. It may raise
#: :class:`ApprovalDeferred` when the answer will come later, in another request.
Approver = Callable[["ToolCallRequest"], Awaitable[bool]]


class ApprovalDeferred(Exception):
    """Raised by an :class:`Approver` whose answer comes in a later request: the call
    ends ``deferred`` (the caller keeps it until then)."""


class ToolError(Exception):
    """Raised by a tool, its message is what the model is told (other exceptions are not
    shown to the model beyond their class name)."""


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A call the model asked for: its id, the tool's name and the arguments' JSON."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """How a call ended: ``content`` goes back to the model as a ``role: tool`` message."""

    tool_call_id: str
    name: str
    content: str
    outcome: str
    seconds: float = 0.0

    def message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.tool_call_id, "content": self.content}


@dataclass(frozen=True, slots=True)
class Approval:
    """A person's answer, given in a later request, about a call whose approval was
    deferred: the call as the model made it (kept server-side) and whether it may run."""

    call: ToolCallRequest
    approved: bool


def _parse(tool: Tool, arguments: str) -> pydantic.BaseModel:
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
    except ValueError as error:
        raise ToolError(f"The arguments are not valid JSON: {error}.") from None
    if not isinstance(raw, dict):
        raise ToolError("The arguments must be a JSON object.")
    try:
        return tool.arguments.model_validate(raw)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in error.errors()
        )
        raise ToolError(f"Invalid arguments: {problems}.") from None


async def allowed(tool: Tool, user: Any) -> bool:
    """Whether ``user`` may run ``tool``."""
    permission = tool.permission
    if permission is None:
        return True
    if user is None:
        return False
    if isinstance(permission, str):
        return bool(await user.ahas_perm(permission))
    if iscoroutinefunction(permission):
        return bool(await permission(user))
    return bool(await sync_to_async(permission)(user))


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value).decode()


async def _invoke(tool: Tool, values: pydantic.BaseModel, context: ToolContext) -> Any:
    kwargs = {name: getattr(values, name) for name in type(values).model_fields}
    if tool.context_parameter is not None:
        kwargs[tool.context_parameter] = context
    if tool.is_async:
        return await tool.function(**kwargs)
    # In a thread, so the ORM may be used; Django's thread-sensitive default keeps a
    # sync tool in the same thread as the rest of the request's sync code.
    return await sync_to_async(tool.function)(**kwargs)


async def _approved(call: ToolCallRequest, approve: Approver | None) -> bool:
    if approve is None:
        return False
    try:
        async with asyncio.timeout(settings.TOOL_CONFIRM_TIMEOUT):
            return await approve(call)
    except TimeoutError:
        return False


async def arun(
    tool: Tool,
    call: ToolCallRequest,
    context: ToolContext,
    approve: Approver | None = None,
) -> ToolResult:
    """Run one call of ``tool`` for ``context.user``; never raises but ``CancelledError``."""
    started = time.monotonic()
    outcome = CANCELLED
    content = ""
    try:
        try:
            values = _parse(tool, call.arguments)
        except ToolError as error:
            outcome, content = INVALID, str(error)
            return _result(call, tool, content, outcome, started)
        if not await allowed(tool, context.user):
            outcome = FORBIDDEN
            content = f"Permission denied: this user may not use the tool {tool.name!r}."
            return _result(call, tool, content, outcome, started)
        try:
            approved = not tool.confirm or await _approved(call, approve)
        except ApprovalDeferred:
            outcome = DEFERRED
            return _result(call, tool, content, outcome, started)
        if not approved:
            outcome, content = DENIED, _denial(tool)
            return _result(call, tool, content, outcome, started)
        try:
            async with asyncio.timeout(tool.timeout):
                value = await _invoke(tool, values, context)
        except TimeoutError:
            outcome = TIMEOUT
            content = f"The tool {tool.name!r} timed out after {tool.timeout:g} seconds."
            logger.warning("Tool %r timed out after %gs.", tool.name, tool.timeout)
            return _result(call, tool, content, outcome, started)
        except ToolError as error:
            outcome, content = ERROR, f"The tool {tool.name!r} failed: {error}"
            logger.warning("Tool %r failed: %s", tool.name, error)
            return _result(call, tool, content, outcome, started)
        except Exception as error:
            outcome = ERROR
            content = f"The tool {tool.name!r} failed ({type(error).__name__})."
            logger.exception("Tool %r raised.", tool.name)
            return _result(call, tool, content, outcome, started)
        outcome, content = OK, _content(value)
        return _result(call, tool, content, outcome, started)
    finally:
        metrics.observe_tool_call(tool.name, outcome, time.monotonic() - started)


def _denial(tool: Tool) -> str:
    return f"The user did not approve this call of {tool.name!r}; it did not run."


def deny(tool: Tool, call: ToolCallRequest) -> ToolResult:
    """End a call nobody approved (a denial, an expired or unknown approval) without
    running it; counted like :func:`arun`'s denials. (A call of a tool that needs no
    approval, left without a result, ends ``cancelled``.)"""
    if not tool.confirm:
        content = f"This call of {tool.name!r} was interrupted; it did not run."
        metrics.observe_tool_call(tool.name, CANCELLED, 0.0)
        return ToolResult(call.id, tool.name, content, CANCELLED)
    metrics.observe_tool_call(tool.name, DENIED, 0.0)
    return ToolResult(call.id, tool.name, _denial(tool), DENIED)


def _result(
    call: ToolCallRequest, tool: Tool, content: str, outcome: str, started: float
) -> ToolResult:
    return ToolResult(call.id, tool.name, content, outcome, time.monotonic() - started)


async def run_step(
    calls: Sequence[tuple[Tool, ToolCallRequest]],
    context: Callable[[ToolCallRequest], ToolContext],
    approve: Approver | None = None,
) -> list[ToolResult]:
    """Run one step's calls concurrently; results in the calls' order.

    Cancelling the caller cancels every call still running.
    """
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(arun(t, call, context(call), approve)) for t, call in calls]
    return [task.result() for task in tasks]
