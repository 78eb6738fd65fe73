"""AG-UI interrupts: ``confirm=True`` server tool calls a person approves in the next run.

A run whose model calls a ``confirm=True`` tool does not wait: the call is kept
server-side (:mod:`copilotedge.tools.approvals`, for ``COPILOTEDGE_TOOL_CONFIRM_TIMEOUT``)
and the run ends with ``RUN_FINISHED`` whose outcome is an interrupt per waiting call.
The client answers in its next run with ``resume`` entries: each one, if it is the
caller's own for this agent and thread, becomes a :class:`~copilotedge.tools.Approval`
the turn acts on (``status: "resolved"`` with ``payload: {"approved": true}`` runs the
call; anything else denies it). Unknown, expired or another caller's ids approve
nothing: the call they meant is denied like any other call left without a result.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ag_ui.core import Interrupt, RunAgentInput

from copilotedge import tools
from copilotedge.exceptions import InvalidRequest

logger = logging.getLogger(__name__)

#: The ``reason`` of an interrupt asking to approve a server tool call.
REASON = "tool_confirmation"
#: The answer an interrupt expects, in the resume entry's ``payload``.
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}


def approval_scope(agent_id: str, thread_id: str) -> str:
    """Where an interrupt may be answered: a run of the same agent on the same thread."""
    return f"agui\n{agent_id}\n{thread_id}"


def deferring_approver(
    owner: str, scope: str, waiting: list[tools.PendingApproval]
) -> tools.Approver:
    """An approver that keeps each call for a later run (appended to ``waiting``)."""

    async def approve(call: tools.ToolCallRequest) -> bool:
        try:
            pending = await tools.adefer(call, owner=owner, scope=scope)
        except Exception:  # the cache is down: nobody could answer it, so it is denied
            logger.warning("Could not keep tool call %s for approval.", call.id, exc_info=True)
            return False
        waiting.append(pending)
        raise tools.ApprovalDeferred

    return approve


def _approved(status: str, payload: Any, param: str) -> bool:
    if status == "cancelled":
        return False
    approved = payload.get("approved") if isinstance(payload, dict) else None
    if not isinstance(approved, bool):
        raise InvalidRequest(
            "A resolved resume entry's payload must be an object with a boolean 'approved'.",
            param=f"{param}.payload",
            code="invalid_resume",
        )
    return approved


def _tool_call_ids(run_input: RunAgentInput) -> set[str]:
    return {
        call.id
        for message in run_input.messages
        for call in getattr(message, "tool_calls", None) or []
    }


def resumed_approvals(
    run_input: RunAgentInput, owner: str, scope: str
) -> Callable[[], Awaitable[list[tools.Approval]]]:
    """The run's ``resume`` entries, checked now (a bad payload or an id twice is a 400),
    and a function that takes their waiting calls out (once) as approvals: the turn calls
    it when it answers them, once admitted, so a refused run leaves them waiting."""
    answers: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for i, entry in enumerate(run_input.resume or []):
        param = f"resume[{i}]"
        if entry.interrupt_id in seen:
            raise InvalidRequest(
                "Each interrupt may be answered once per run.",
                param=f"{param}.interruptId",
                code="invalid_resume",
            )
        seen.add(entry.interrupt_id)
        answers.append((entry.interrupt_id, _approved(entry.status, entry.payload, param)))
    calls = _tool_call_ids(run_input)

    async def take() -> list[tools.Approval]:
        approvals = []
        for interrupt_id, approved in answers:
            try:
                pending = await tools.atake(
                    interrupt_id, owner=owner, scope=scope, tool_call_ids=calls
                )
            except Exception:  # the cache is down: the call is denied like an unknown one
                logger.warning("Could not look up interrupt %r.", interrupt_id, exc_info=True)
                continue
            if pending is not None:
                approvals.append(tools.Approval(pending.call, approved and not pending.expired))
        return approvals

    return take


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def interrupt(pending: tools.PendingApproval) -> Interrupt:
    """The interrupt asking a person to approve one waiting call."""
    call = pending.call
    return Interrupt(
        id=pending.id,
        reason=REASON,
        message=f"Allow the tool {call.name!r} to run with the arguments {call.arguments or '{}'}?",
        tool_call_id=call.id,
        response_schema=RESPONSE_SCHEMA,
        expires_at=_iso(pending.expires_at),
        metadata={"toolName": call.name, "arguments": call.arguments or "{}"},
    )
