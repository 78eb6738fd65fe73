"""Server-side tools: Python functions the model may call, run as the turn's user.

- :mod:`copilotedge.tools.registry`: ``@tool``, :class:`Tool` (name, description and JSON
  Schema from the function), :class:`ToolContext`, and lookup by name or dotted path.
- :mod:`copilotedge.tools.executor`: runs the model's calls (validation, permission,
  approval, timeout) into :class:`ToolResult` values the model reads.
- :mod:`copilotedge.tools.approvals`: calls whose approval is answered in a later
  request, kept in the Django cache where any process finds them.
- :mod:`copilotedge.tools.checks`: the tool settings' system checks.

A service: it takes calls and returns results, and knows nothing of the turn.
"""

from __future__ import annotations

from copilotedge.tools.approvals import PendingApproval, adefer, atake
from copilotedge.tools.executor import (
    DEFERRED,
    Approval,
    ApprovalDeferred,
    Approver,
    ToolCallRequest,
    ToolError,
    ToolResult,
    arun,
    deny,
    run_step,
)
from copilotedge.tools.registry import (
    Tool,
    ToolContext,
    UnknownTool,
    get_tool,
    make_tool,
    registered_tools,
    tool,
)

__all__ = [
    "DEFERRED",
    "Approval",
    "ApprovalDeferred",
    "Approver",
    "PendingApproval",
    "Tool",
    "ToolCallRequest",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "UnknownTool",
    "adefer",
    "arun",
    "atake",
    "deny",
    "get_tool",
    "make_tool",
    "registered_tools",
    "run_step",
    "tool",
]
