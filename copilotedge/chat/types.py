"""The values a turn is made of: the request, the answer, and the record of a finished turn.

Everything below the turn (conversations, the limiter, upstream, the ledger) takes and
returns these, so this module imports nothing above it: only the deltas, the exceptions
and (for typing) the caller's :class:`~copilotedge.auth.Principal`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage

if TYPE_CHECKING:
    from copilotedge.auth import Principal
    from copilotedge.exceptions import CopilotEdgeError

#: How the response cache took part in a turn (the ``X-CopilotEdge-Cache`` response header):
#: answered from it, looked up and answered upstream, or not used.
HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


@dataclass
class ChatRequest:
    """A validated request, whatever protocol it came in on."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    conversation_id: uuid.UUID | None = None
    #: False when the client named no model (a user's preferred model may then apply).
    model_given: bool = True
    #: Start a conversation with ``conversation_id`` if none has it (AG-UI threadIds).
    create_conversation: bool = False
    #: The client's X-CopilotEdge-Cache directive (see copilotedge.upstream.response_cache).
    cache: str = ""
    #: Whose request it is (:attr:`copilotedge.auth.Principal.scope`), set as the turn plans
    #: it: the response cache keeps each scope's answers apart.
    scope: str = ""


@dataclass
class ToolCall:
    id: str
    name: str = ""
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def final_finish_reason(finish_reason: str | None, has_tool_calls: bool) -> str:
    """The finish reason a client is told: upstream's, else what the answer shows."""
    return finish_reason or ("tool_calls" if has_tool_calls else "stop")


class Answer:
    """Folds deltas into the complete answer: text, tool calls, finish reason, usage."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.tool_calls: dict[int, ToolCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def add(self, delta: Delta) -> None:
        if delta.text:
            self._parts.append(delta.text)
        for piece in delta.tool_calls:
            self._add_tool_call(piece)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage

    def _add_tool_call(self, piece: ToolCallDelta) -> None:
        call = self.tool_calls.get(piece.index)
        if call is None:
            call = ToolCall(id=piece.id or f"call_{uuid.uuid4().hex[:24]}")
            self.tool_calls[piece.index] = call
        if piece.name:
            call.name = piece.name
        call.arguments += piece.arguments

    def final_finish_reason(self) -> str:
        return final_finish_reason(self.finish_reason, bool(self.tool_calls))

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.as_openai() for call in self.tool_calls.values()]
        return message


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """A turn as bookkeeping sees it: who asked what, what was served, how it ended.

    The ledger, the limiter's settlement and the stored answer are all made from one of
    these, built once the turn ended (or, for a client's usage figures, when asked).
    Times are :func:`time.monotonic` readings.
    """

    id: uuid.UUID
    principal: Principal
    protocol: str
    model_requested: str
    model_served: str
    #: The messages and parameters sent upstream (an estimate of the prompt needs them).
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    conversation_id: uuid.UUID | None = None
    #: ``ok``, ``error``, ``incomplete`` or ``cancelled`` (UsageRecord.Outcome).
    outcome: str = "ok"
    error: CopilotEdgeError | None = None
    attempts: int = 0
    #: HIT, MISS or BYPASS (copilotedge.upstream.response_cache).
    cache_status: str = BYPASS
    started: float = 0.0
    first_token_at: float | None = None
    ended: float = 0.0
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    #: What upstream said, if anything (``final_finish_reason`` fills the gap).
    finish_reason: str | None = None
    #: Summed over the steps when the turn ran server tools.
    usage: Usage | None = None
    #: Upstream calls made (one, plus one per server tool step), and server tool calls run.
    steps: int = 1
    tool_calls_run: int = 0
    #: The estimated prompt tokens of every upstream call made, summed (each step's prompt
    #: holds the steps before it); ``None``: estimate them from ``messages``.
    prompt_tokens_estimate: int | None = None

    @property
    def cache_hit(self) -> bool:
        return self.cache_status == HIT

    def final_finish_reason(self) -> str:
        return final_finish_reason(self.finish_reason, bool(self.tool_calls))
