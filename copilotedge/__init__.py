"""copilotedge: Cloudflare Workers AI for Django sites (OpenAI, CopilotKit, WebSocket).

``copilotedge.tool`` is :func:`copilotedge.tools.tool`, imported on first use so that
``import copilotedge`` needs no configured Django.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copilotedge.tools import tool

__version__ = "0.1.0"

__all__ = ["tool"]


def __getattr__(name: str) -> Any:
    if name == "tool":
        from copilotedge.tools import tool

        return tool
    raise AttributeError(f"module 'copilotedge' has no attribute {name!r}")
