"""What every face does around a turn: its database and limit work, then letting go.

A turn's :meth:`~copilotedge.chat.turn.Turn.prepare` is the request's last use of the
database and of the CPU it was admitted for; from there on it waits for upstream. So a face
prepares the turn, then hands back the request thread's database connections (not held for
a whole stream) and its place in :class:`~copilotedge.admission.AdmissionLimit` (the next
request may start its setup), then opens the answer. The turn itself knows neither.
"""

from __future__ import annotations

from copilotedge import admission
from copilotedge import background as db
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import Answer


async def release_request() -> None:
    """Hand back what the request holds while it waits: its connections, its admission."""
    await db.release_connections()
    admission.release()


async def aopen(turn: Turn) -> None:
    """Prepare ``turn``, let the request go, then open its answer (errors raise here)."""
    await turn.prepare()
    await release_request()
    await turn.open()


async def acomplete(turn: Turn) -> Answer:
    """Prepare ``turn``, let the request go, then wait for its whole answer."""
    await turn.prepare()
    await release_request()
    return await turn.complete()
