"""Server-side tools the tests give their agents (registered on import)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import Field

import copilotedge
from copilotedge.tools import ToolContext, ToolError

#: The call ids of ``wait_forever`` calls that were cancelled.
cancelled_waits: list[str] = []


@copilotedge.tool
def caller(context: ToolContext) -> str:
    """The calling user's username."""
    return str(context.user.get_username())


@copilotedge.tool
async def repeat(text: Annotated[str, Field(description="What to repeat")], times: int = 2) -> str:
    """Repeat a text."""
    return " ".join([text] * times)


@copilotedge.tool(permission="copilotedge.view_usagerecord")
def staff_secret() -> dict[str, int]:
    """A number only users with the usage permission may see."""
    return {"secret": 42}


@copilotedge.tool(permission=lambda user: user.get_username() == "alice")
async def alice_only() -> str:
    """Only alice may call this."""
    return "hello alice"


@copilotedge.tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("internal details the model must not see")


@copilotedge.tool
def refuse() -> str:
    """Fails with a message for the model."""
    raise ToolError("the archive is closed on Sundays")


@copilotedge.tool(timeout=0.2)
async def too_slow() -> str:
    """Takes longer than its timeout."""
    await asyncio.sleep(30)
    return "never"


@copilotedge.tool(timeout=60)
async def wait_forever(context: ToolContext) -> str:
    """Waits until cancelled."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled_waits.append(context.tool_call_id)
        raise
    return "never"


@copilotedge.tool(confirm=True, name="delete_note", description="Delete a note.")
def delete_note_tool(note: str) -> str:
    return f"deleted {note}"


#: What ``archive_note`` archived, as (username, note), in this process.
archived: list[tuple[str, str]] = []


@copilotedge.tool(confirm=True)
def archive_note(context: ToolContext, note: str) -> str:
    """Archive one of the caller's notes (a person approves each call)."""
    username = str(context.user.get_username())
    archived.append((username, note))
    return f"{username} archived {note}"
